"""Fit the error map (``model.error_map``) on held-out images and store it in an adapter.

The pixels are those inside each object's tight box on a ``label_size`` grid,
decoded as ``imedsam evaluate`` decodes them; a pixel is wrong where the mask
(probability above 0.5) disagrees with the ground truth. The default model's
error map is fitted on synthetic images the decoder never saw, never on the
shared real sets (their terms); ``imedsam evaluate`` measures it on those.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..inference.session import SegmentationSession
from ..model.error_map import ErrorModel, calibration, features, fit
from ..model.modeling.imedsam import IMedSAM
from . import metrics
from .data import LabeledImage, box_of
from .samples import sample_refs, targets_for


def box_window(box: np.ndarray, image_shape: tuple[int, int], grid: tuple[int, int]
               ) -> tuple[slice, slice]:
    """The grid cells whose centres lie inside an image-pixel box."""
    height, width = image_shape
    x0, y0, x1, y1 = box
    r0 = int(np.ceil(y0 * grid[0] / height - 0.5))
    r1 = int(np.floor(y1 * grid[0] / height - 0.5)) + 1
    c0 = int(np.ceil(x0 * grid[1] / width - 0.5))
    c1 = int(np.floor(x1 * grid[1] / width - 0.5)) + 1
    return slice(max(0, r0), max(r0 + 1, r1)), slice(max(0, c0), max(c0 + 1, c1))


@torch.no_grad()
def collect(model: IMedSAM, images: list[LabeledImage], *, label_size: int = 256,
            keep: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(P, 3)`` and wrongness ``(P,)`` of the pixels inside each object's box,
    a random ``keep`` share of each: every pixel counts alike, as ``imedsam evaluate``
    pools them when it measures the map."""
    rng = np.random.default_rng(seed)
    session = SegmentationSession(model, device="cpu", mode="imedsam", precision="fp32",
                                  cache_bytes=64 << 20, seed=seed, adaptive=False)
    shape = (label_size, label_size)
    xs, ys = [], []
    for ref in sample_refs(images, 1):
        item = images[ref.index]
        session.set_image(item.image, key=("calibrate", id(item)))
        target = metrics.resize_mask(targets_for(item, ref, 1)[0], shape)
        if not target.any():
            continue
        box = np.asarray(box_of(targets_for(item, ref, 1)[0]), dtype=np.float64)
        height, width = item.image.shape[:2]
        result = session.predict(box[None], region=(0.0, 0.0, height, width), out_shape=shape)
        prob, var = result.prob[0].max(axis=0), result.uncertainty[0].max(axis=0)
        rows, cols = box_window(box, (height, width), shape)
        x = features(prob, var, height / label_size)[rows, cols].reshape(-1, 3)
        wrong = ((prob > 0.5) != target)[rows, cols].ravel()
        pick = rng.random(len(x)) < keep
        x, wrong = x[pick], wrong[pick]
        xs.append(x)
        ys.append(wrong)
    if not xs:
        raise ValueError("no objects to calibrate on")
    return np.concatenate(xs), np.concatenate(ys)


def fit_error_model(model: IMedSAM, images: list[LabeledImage], **options: Any
                    ) -> tuple[ErrorModel, dict[str, Any]]:
    """The fitted error model and its calibration on the pixels it was fitted on."""
    x, wrong = collect(model, images, **options)
    fitted = fit(x, wrong)
    z = x @ np.asarray(fitted.weights) + fitted.bias
    report = calibration(1 / (1 + np.exp(-z)), wrong)
    report.pop("table")
    return fitted, report


def main(argv: list[str] | None = None) -> int:
    """``python -m napari_imedsam.train.calibrate ADAPTER --out NEW.safetensors``: fit the
    error map on synthetic held-out images and write the adapter with it."""
    import argparse
    import json

    from ..model.checkpoint import read_adapter_config, save_adapter
    from ..model.loading import load_model
    from .synthetic import synthetic_dataset

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("adapter", help="an adapter of the default model (medsam_lite)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--label-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7000, help="not a seed training used")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    model = load_model("medsam_lite", adapter=args.adapter)
    images = [LabeledImage(f"synthetic_{i}", image, labels) for i, (image, labels)
              in enumerate(synthetic_dataset(args.images, args.size, "mixed", args.seed))]
    fitted, report = fit_error_model(model, images, label_size=args.label_size)
    print(json.dumps({"error_map": fitted.to_dict(), "fit": report}, indent=2))
    extra = dict(read_adapter_config(args.adapter).get("extra") or {})
    extra["error_map"] = {**fitted.to_dict(), "fitted_on": (
        f"{args.images} synthetic images ({args.size} px, mixed, seed {args.seed}), pixels "
        f"inside each object's tight box at label size {args.label_size}"), "fit": report}
    path = save_adapter(model, args.out, extra=extra, overwrite=args.overwrite,
                        dtype=torch.float32)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
