"""The ``local_bump`` click rule's shape, chosen on the Kvasir-Sessile validation split.

    python training/click_bump_grid.py --decoder sam --clicks 3 \
        --settings 1,2 0.75,12 1,4 --json runs/click_bump_grid.json

For each ``width,margin`` (:data:`napari_imedsam.inference.clicks.BUMP_WIDTH`,
``BUMP_MARGIN``), the Dice after the tight box and after each protocol click, and the
share of clicks that lowered Dice, on the validation split only (the test split and
the AMOS slices are measured once, by ``training/clicks_eval.py``); ``local`` measures
the rule without the push. Images are embedded once for all settings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--decoder", default="sam", choices=("sam", "imedsam"))
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=["local", "1,2", "0.75,12"],
                        help="'local' or WIDTH,MARGIN")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from napari_imedsam.inference import clicks as rule
    from napari_imedsam.inference.cache import EmbeddingCache
    from napari_imedsam.model.loading import load_model
    from napari_imedsam.train.data import load_folder
    from napari_imedsam.train.evaluate import evaluate_model, summary

    kvasir = args.data / "kvasir-sessile"
    images = load_folder(kvasir, split_csv=kvasir / "splits" /
                         "surrogate_seed4200_118tr-39val-39ts.csv", subset="val")
    model = load_model("medsam_lite")
    cache = EmbeddingCache(2 << 30)
    report = {"date": time.strftime("%Y-%m-%d"), "decoder": args.decoder, "split": "val",
              "label_size": 384, "settings": {}}
    for setting in args.settings:
        started = time.monotonic()
        if setting == "local":
            click_rule = "local"
        else:
            click_rule = "local_bump"
            rule.BUMP_WIDTH, rule.BUMP_MARGIN = (float(v) for v in setting.split(","))
        rows = evaluate_model(model, images, label_size=384, decoder=args.decoder,
                              clicks=args.clicks, with_distances=False, embeddings=cache,
                              click_rule=click_rule)
        got = summary(rows)
        entry = {"dice_by_clicks": got["dice_by_clicks"],
                 "worse_click_share": got["worse_click_share"],
                 "seconds": round(time.monotonic() - started, 1)}
        report["settings"][setting] = entry
        print(setting, json.dumps(entry), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
