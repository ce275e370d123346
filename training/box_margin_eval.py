"""Dice with tight boxes and with boxes grown by a margin: how loose a box a model expects.

    python training/box_margin_eval.py --adapter none --adapter runs/a.safetensors

For each ``--adapter`` (``none``: the base model alone), evaluates every object
of the split's ``--subset`` with the evaluation protocol (``evaluate_model``:
the tight box of the mask resized to ``--label-size``), its box grown by each
``--margins`` value (image pixels per side, clipped to the image), and prints
the mean Dice per margin.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/kvasir-sessile"))
    p.add_argument("--split", type=Path, default=None,
                   help="name,split CSV (default: the first CSV in DATA/splits)")
    p.add_argument("--subset", default="val")
    p.add_argument("--model", default="medsam_lite")
    p.add_argument("--adapter", action="append", required=True, help="file, or 'none'")
    p.add_argument("--margins", type=float, nargs="+", default=[0, 8, 16])
    p.add_argument("--label-size", type=int, default=128)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import numpy as np
    import torch

    from napari_imedsam.model.loading import load_model
    from napari_imedsam.train.data import load_folder
    from napari_imedsam.train.evaluate import evaluate_model

    split = args.split or sorted((args.data / "splits").glob("*.csv"))[0]
    items = load_folder(args.data, split_csv=split, subset=args.subset)
    for adapter in args.adapter:
        model = load_model(args.model, adapter=None if adapter == "none" else adapter)
        report: dict[str, object] = {"adapter": adapter}
        for margin in args.margins:
            rows = evaluate_model(model, items, label_size=args.label_size,
                                  device=torch.device("cpu"), with_distances=False,
                                  box_margin_px=margin)
            report["objects"] = len(rows)
            report[f"+{margin:g} px"] = round(float(np.mean([r["dice"] for r in rows])), 4)
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
