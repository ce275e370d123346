"""What can the Segment widget honestly tell a user about a box? Measured, not guessed.

    python training/advice_eval.py --json docs/results/advice_medsam_lite.json

For every object of the shared Kvasir-Sessile images and AMOS CT slices, the
default model segments boxes that are cut into the object (each side moved in by
10 % of the box's size), tight, and loose (out by 10, 25 and 50 %), plus boxes of
the same size on background (no object pixel inside). Per box it records Dice
with the truth, the backbone's predicted IoU and whether the mask is empty.

Printed: mean Dice per box kind (does a looser or tighter box help this model?),
empty masks per kind, and how well "predicted IoU below t" separates bad masks
(background boxes, Dice < 0.7) from good ones for a sweep of t.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

KINDS = {"cut 10%": -0.10, "tight": 0.0, "loose 10%": 0.10, "loose 25%": 0.25,
         "loose 50%": 0.50}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kvasir", type=Path, default=Path("../shared/data/kvasir-sessile"))
    p.add_argument("--ct", type=Path, default=Path("../shared/data/ct-slices"))
    p.add_argument("--images", type=int, default=60, help="Kvasir images used (the first N)")
    p.add_argument("--model", default="medsam_lite")
    p.add_argument("--scale", type=float, default=0.5, help="output grid / image size")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def _box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)


def _grown(box: np.ndarray, fraction: float, width: int, height: int) -> np.ndarray:
    pad = np.array([box[2] - box[0], box[3] - box[1]]) * fraction
    out = box + np.array([-pad[0], -pad[1], pad[0], pad[1]])
    return np.clip(out, 0, [width, height, width, height])


def _background_box(truth: np.ndarray, box: np.ndarray, rng: np.random.Generator
                    ) -> np.ndarray | None:
    """A box of the object's size somewhere it holds no object pixel (or None)."""
    height, width = truth.shape
    w, h = int(box[2] - box[0]), int(box[3] - box[1])
    for _ in range(50):
        x0, y0 = rng.integers(0, max(1, width - w)), rng.integers(0, max(1, height - h))
        if not truth[y0:y0 + h, x0:x0 + w].any():
            return np.array([x0, y0, x0 + w, y0 + h], np.float64)
    return None


def measure(session, name: str, image: np.ndarray, truth: np.ndarray, scale: float,  # noqa: ANN001
            rng: np.random.Generator) -> list[dict]:
    from napari_imedsam.train.metrics import dice, resize_mask

    height, width = truth.shape
    tight = _box(truth)
    boxes = {kind: _grown(tight, f, width, height) for kind, f in KINDS.items()}
    background = _background_box(truth, tight, rng)
    if background is not None:
        boxes["background"] = background
    session.set_image(image)
    rows = []
    result = session.predict(np.stack(list(boxes.values())), scale=scale)
    grid = result.shape
    small_truth = resize_mask(truth, grid)
    masks = result.masks()
    for k, kind in enumerate(boxes):
        mask = masks[k]
        rows.append({"image": name, "kind": kind, "pred_iou": float(result.iou[k]),
                     "empty": bool(not mask.any()),
                     "dice": float(dice(mask, small_truth)) if kind != "background" else 0.0})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from napari_imedsam.advice import ADVICE
    from napari_imedsam.inference.session import SegmentationSession
    from napari_imedsam.model.loading import load_model
    from napari_imedsam.train.data import load_ct_slices, load_folder

    model = load_model(args.model)
    session = SegmentationSession(model, device="cpu")
    rng = np.random.default_rng(0)
    rows = []
    for item in load_folder(args.kvasir)[: args.images]:
        rows += measure(session, item.name, item.image, item.labels > 0, args.scale, rng)
    for item in load_ct_slices(args.ct):  # one box per organ (PNG slices, already windowed)
        for organ in np.unique(item.labels)[1:]:
            rows += measure(session, f"{item.name}:{item.label_names.get(int(organ))}",
                            item.image, item.labels == organ, args.scale, rng)
    objects = [r for r in rows if r["kind"] != "background"]
    report: dict = {"model": args.model, "boxes": len(rows),
                    "mean_dice_per_kind": {k: round(float(np.mean(
                        [r["dice"] for r in objects if r["kind"] == k])), 4) for k in KINDS},
                    "empty_per_kind": {k: int(sum(r["empty"] for r in rows if r["kind"] == k))
                                       for k in [*KINDS, "background"]}}
    bad = np.array([r["kind"] == "background" or r["dice"] < 0.7 for r in rows])
    iou = np.array([r["pred_iou"] for r in rows])
    kinds = np.array([r["kind"] for r in rows])
    sweep = {}
    for t in np.arange(0.70, 0.871, 0.025):
        flagged = iou < t
        sweep[f"{t:.3f}"] = {
            "flagged": int(flagged.sum()), "precision": round(float(bad[flagged].mean()), 3)
            if flagged.any() else None, "recall": round(float(flagged[bad].mean()), 3),
            "tight_flagged": int(flagged[kinds == "tight"].sum()),
            "background_flagged": int(flagged[kinds == "background"].sum())}
    report["bad_boxes"] = {"count": int(bad.sum()), "meaning": "background box or Dice < 0.7"}
    report["low_iou_sweep"] = sweep
    thresholds = ADVICE.get(args.model)
    if thresholds is not None:
        report["in_use"] = {"min_iou": thresholds.min_iou}
    report["pred_iou_quantiles"] = {k: [round(float(q), 3) for q in np.percentile(
        [r["pred_iou"] for r in rows if r["kind"] == k], [5, 25, 50, 75, 95])]
        for k in [*KINDS, "background"]}
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
