"""Corrective clicks and the error map, measured on every shared set in one command.

    python training/clicks_eval.py --json docs/results/clicks_default.json [--adapter A]

For the default model (or ``--adapter``), with tight boxes and clicks placed by the
CVPR 2025 challenge's protocol from the ground truth (``imedsam evaluate --clicks``):

- Kvasir-Sessile test split, label size 384: box then 5 clicks, both decoders;
- the AMOS CT/MR slices (every organ), label size 384: box then 3 clicks, both decoders;
- synthetic ring walls (the wall as the object, a box cannot name it): box then 3 clicks;
- the share of clicks that lowered Dice, over all of these objects (implicit decoder);
- the error map's calibration (ECE, AUROC) on the pixels inside the boxes, and the
  Dice gain of the suggested click (signed by the ground truth) against the protocol's.

The shared sets are for evaluation only: nothing here trains on them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--adapter", help="an adapter of the default model (else the shipped one)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--rings", type=int, default=12)
    parser.add_argument("--decoders", default="imedsam,sam")
    args = parser.parse_args()

    from napari_imedsam.model.error_map import calibration
    from napari_imedsam.model.loading import load_model
    from napari_imedsam.train.data import LabeledImage, load_ct_slices, load_folder
    from napari_imedsam.train.evaluate import evaluate_model, summary
    from napari_imedsam.train.synthetic_rings import WALL, ring_dataset

    model = load_model("medsam_lite", adapter=args.adapter)
    kvasir = args.data / "kvasir-sessile"
    sets = {
        "kvasir_test": (load_folder(kvasir, split_csv=kvasir / "splits" /
                                    "surrogate_seed4200_118tr-39val-39ts.csv", subset="test"), 5),
        "amos_slices": (load_ct_slices(args.data / "ct-slices"), 3),
        "ring_wall": ([LabeledImage(f"ring{i}", image, (labels == WALL).astype(np.int32))
                       for i, (image, labels) in enumerate(ring_dataset(args.rings, 101, 256))],
                      3),
    }
    report: dict = {"model": args.adapter or "medsam_lite (shipped)", "label_size": 384,
                    "date": time.strftime("%Y-%m-%d")}
    steps: list[np.ndarray] = []
    for decoder in args.decoders.split(","):
        for name, (images, clicks) in sets.items():
            started = time.monotonic()
            pixels: list = []
            rows = evaluate_model(model, images, label_size=384 if name != "ring_wall" else 256,
                                  decoder=decoder, clicks=clicks, with_distances=False,
                                  error_pixels=pixels)
            got = summary(rows)
            entry = {k: got[k] for k in ("dice_by_clicks", "dsc_auc", "worse_click_share",
                                         "clicks_made", "n_objects") if k in got}
            for k in ("suggested_click_gain", "protocol_click_gain",
                      "suggested_to_protocol_gain"):
                if k in got:
                    entry[k] = got[k]
            labels = sorted({r["label"] for r in rows if r.get("label")})
            if labels:
                entry["after_last_click_by_label"] = {
                    lab: float(np.mean([r["dice"] for r in rows if r.get("label") == lab]))
                    for lab in labels}
                entry["box_only_by_label"] = {
                    lab: float(np.mean([r["dice_c0"] for r in rows if r.get("label") == lab]))
                    for lab in labels}
            if pixels:
                measured = calibration(np.concatenate([p for p, _ in pixels]),
                                       np.concatenate([w for _, w in pixels]))
                entry["error_map_ece"], entry["error_map_auroc"] = measured["ece"], measured["auroc"]
            entry["seconds"] = round(time.monotonic() - started, 1)
            report[f"{name}/{decoder}"] = entry
            if decoder == "imedsam":
                for r in rows:
                    curve = [r[f"dice_c{c}"] for c in range(clicks + 1)]
                    made = r["clicks_made"]
                    steps.append(np.diff(curve)[:made])
            print(name, decoder, json.dumps(entry), flush=True)
    if steps:
        pooled = np.concatenate(steps)
        report["worse_click_share_all_imedsam"] = float((pooled < -1e-9).mean())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
