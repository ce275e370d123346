"""Dice with tight boxes and with boxes grown by a margin: how loose a box a model expects.

    python training/box_margin_eval.py --adapter none --adapter runs/a.safetensors

For each ``--adapter`` (``none``: the base model alone), segments every object
of the split's ``--subset`` with its tight box (from the mask resized to
``--label-size``, the evaluation protocol) and with that box grown by each
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
    p.add_argument("--model", default="demo")
    p.add_argument("--adapter", action="append", required=True, help="file, or 'none'")
    p.add_argument("--margins", type=float, nargs="+", default=[0, 8, 16])
    p.add_argument("--label-size", type=int, default=128)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import numpy as np
    import torch

    from napari_imedsam.inference.session import SegmentationSession
    from napari_imedsam.model.loading import load_model
    from napari_imedsam.train import metrics
    from napari_imedsam.train.data import box_of, load_folder, object_ids

    split = args.split or sorted((args.data / "splits").glob("*.csv"))[0]
    items = load_folder(args.data, split_csv=split, subset=args.subset)
    shape = (args.label_size, args.label_size)
    for adapter in args.adapter:
        model = load_model(args.model, adapter=None if adapter == "none" else adapter)
        session = SegmentationSession(model, device=torch.device("cpu"), mode="imedsam",
                                      precision="fp32", adaptive=False, seed=0)
        dice: dict[float, list[float]] = {m: [] for m in args.margins}
        for item in items:
            height, width = item.labels.shape
            session.set_image(item.image, key=item.name)
            for obj in object_ids(item.labels):
                truth = metrics.resize_mask(item.labels == obj, shape)
                if not truth.any():
                    continue
                tight = np.asarray(box_of(truth), float) * [width, height, width, height]
                tight /= args.label_size
                for m in args.margins:
                    box = np.clip(tight + [-m, -m, m, m], 0, [width, height, width, height])
                    result = session.predict(box[None], region=(0.0, 0.0, height, width),
                                             out_shape=shape)
                    dice[m].append(metrics.dice(result.prob[0, 0] > 0.5, truth))
        means = {f"+{m:g} px": round(float(np.mean(v)), 4) for m, v in dice.items()}
        print(json.dumps({"adapter": adapter, "objects": len(dice[args.margins[0]]), **means}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
