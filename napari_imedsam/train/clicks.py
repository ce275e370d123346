"""Corrective clicks placed from the ground truth, for evaluation and training.

The protocol of the CVPR 2025 interactive segmentation challenge: after the box,
each click goes to the centre of the largest error region (the point of that
region farthest from its boundary: the maximum of its distance transform),
positive where the object was missed, negative where the prediction is false.
Training also draws random clicks inside error regions (:func:`random_click`),
so the model sees clicks that are not all at a region's centre, as a person's
are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class Click:
    """One click on a grid: row and column of the pixel, and its sign."""

    row: int
    col: int
    positive: bool

    def xy(self, grid: tuple[int, int], image: tuple[int, int]) -> tuple[float, float]:
        """The pixel's centre in pixel-edge coordinates of an ``image`` (H, W) that the
        ``grid`` (H', W') covers (the session's click convention)."""
        return ((self.col + 0.5) * image[1] / grid[1], (self.row + 0.5) * image[0] / grid[0])


def error_regions(pred: np.ndarray, target: np.ndarray) -> list[tuple[np.ndarray, bool]]:
    """Connected error regions as ``(mask, positive)``, largest first; ``positive``
    for a missed part of the object (a positive click mends it)."""
    out = []
    for wrong, positive in ((target & ~pred, True), (pred & ~target, False)):
        labels, count = ndi.label(wrong)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        out += [(labels == i + 1, positive, int(sizes[i])) for i in range(count)]
    out.sort(key=lambda r: -r[2])
    return [(mask, positive) for mask, positive, _ in out]


def _centre(region: np.ndarray) -> tuple[int, int]:
    """The region's pixel farthest from its boundary (the image edge counts as one);
    of several, the one nearest their middle (a long region's ridge is a line)."""
    distance = ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(distance >= distance.max() - 1e-6)
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return int(rows[nearest]), int(cols[nearest])


def protocol_click(pred: np.ndarray, target: np.ndarray) -> Click | None:
    """The challenge's next click for a prediction, or None when it is exact."""
    regions = error_regions(np.asarray(pred, bool), np.asarray(target, bool))
    if not regions:
        return None
    region, positive = regions[0]
    return Click(*_centre(region), positive)


def random_click(pred: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> Click | None:
    """A click at a random pixel of an error region chosen with probability growing
    with its area (the region's centre half the time, as the protocol clicks)."""
    regions = error_regions(np.asarray(pred, bool), np.asarray(target, bool))
    if not regions:
        return None
    sizes = np.array([r.sum() for r, _ in regions], np.float64)
    region, positive = regions[int(rng.choice(len(regions), p=sizes / sizes.sum()))]
    if rng.random() < 0.5:
        return Click(*_centre(region), positive)
    # Away from the region's own edge when it is wide enough: a person clicks inside.
    inner = ndi.binary_erosion(region, iterations=2)
    rows, cols = np.nonzero(inner if inner.any() else region)
    pick = int(rng.integers(len(rows)))
    return Click(int(rows[pick]), int(cols[pick]), positive)


def click_curve_summary(dice_by_click: np.ndarray, made: np.ndarray | None = None
                        ) -> dict[str, float | list[float]]:
    """From ``(objects, N + 1)`` Dice after the box and after each click: the mean
    curve, its area (trapezoid over clicks 0..N, as the challenge's DSC_AUC) and the
    share of clicks that lowered Dice. ``made`` ``(objects, N)``: which clicks were
    made (an exact mask gets none; its Dice carries over and is not counted)."""
    curve = np.asarray(dice_by_click, np.float64)
    steps = np.diff(curve, axis=1)
    made = np.ones(steps.shape, bool) if made is None else np.asarray(made, bool)
    mean = curve.mean(axis=0)
    return {"dice_by_clicks": [float(v) for v in mean],
            "dsc_auc": float(((mean[1:] + mean[:-1]) / 2).sum()),
            "worse_click_share": float((steps[made] < -1e-9).mean()) if made.any() else 0.0,
            "clicks_made": int(made.sum())}
