"""Segmentation metrics and box baselines, in pixels, for evaluation and tests.

Pure numpy/scipy/scikit-image (no torch) so benchmarks can score saved masks
without loading a model.

Empty-mask conventions (shared by ``hausdorff`` and ``hd95``): both masks empty
-> 0.0 (nothing to miss); exactly one empty -> the image diagonal, the largest
distance two pixels of that image can have, so a missed or hallucinated object
scores as badly as possible while staying finite and averageable.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.metrics import hausdorff_distance
from skimage.segmentation import find_boundaries

from ..inference.regions import resample_nearest


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"pred {a.shape} and target {b.shape} differ in shape; resize first (resize_mask)")
    if a.ndim != 2:
        raise ValueError(f"expected 2D masks, got shape {a.shape}")
    return a, b


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient 2|A and B| / (|A| + |B|); both empty -> 1.0."""
    a, b = _pair(pred, target)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary pixels; the outside of the image counts as background.

    Padding first matters: find_boundaries does not look past the image edge,
    so a mask filling the image would otherwise have no boundary at all.
    """
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    return find_boundaries(padded, mode="inner")[1:-1, 1:-1]


def _empty_case(a: np.ndarray, b: np.ndarray) -> float | None:
    """The shared empty-mask convention, or None when both masks have pixels."""
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return math.hypot(*a.shape)
    return None


def hausdorff(pred: np.ndarray, target: np.ndarray) -> float:
    """Symmetric Hausdorff distance (pixels) between the two masks' boundaries."""
    a, b = _pair(pred, target)
    special = _empty_case(a, b)
    if special is not None:
        return special
    return float(hausdorff_distance(_boundary(a), _boundary(b)))


def hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """95th percentile of the pooled symmetric surface distances (pixels).

    Distances from each boundary pixel of one mask to the nearest boundary pixel
    of the other, both directions pooled before the percentile. (MedPy instead
    takes the larger of the two directed percentiles; the two agree on
    symmetric errors and differ by little otherwise.)
    """
    a, b = _pair(pred, target)
    special = _empty_case(a, b)
    if special is not None:
        return special
    ba, bb = _boundary(a), _boundary(b)
    # EDT of the complement gives, at every pixel, the distance to the nearest boundary pixel.
    to_b = ndimage.distance_transform_edt(~bb)[ba]
    to_a = ndimage.distance_transform_edt(~ba)[bb]
    return float(np.percentile(np.concatenate([to_b, to_a]), 95))


def ellipse_in_box(box: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """Bool mask of the ellipse inscribed in ``box`` (x0, y0, x1, y1, pixel edges).

    A pixel is inside when its centre (index + 0.5) satisfies the ellipse
    equation, so the ellipse of a box is exactly symmetric within it.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    height, width = int(shape[0]), int(shape[1])
    rx, ry = (x1 - x0) / 2.0, (y1 - y0) / 2.0
    if rx <= 0 or ry <= 0:
        return np.zeros((height, width), dtype=bool)
    yy = (np.arange(height) + 0.5 - (y0 + ry)) / ry
    xx = (np.arange(width) + 0.5 - (x0 + rx)) / rx
    return yy[:, None] ** 2 + xx[None, :] ** 2 <= 1.0


def box_mask(box: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """Bool mask of the filled box: pixels whose centre lies inside (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    height, width = int(shape[0]), int(shape[1])
    ys = np.arange(height) + 0.5
    xs = np.arange(width) + 0.5
    return ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]


def boundary_band_ratio(mask: np.ndarray, std: np.ndarray, box: Sequence[float],
                        band_px: float = 3.0) -> float:
    """How much an uncertainty map concentrates on the predicted boundary.

    The mean of ``std`` (MC-dropout standard deviation of the probability) over
    the pixels within ``band_px`` of the boundary of ``mask``, divided by its
    mean over the rest of the box. Both maps are on one pixel grid; ``box`` is
    (x0, y0, x1, y1) in that grid's pixels. NaN when either part is empty or the
    rest of the box has no uncertainty at all.
    """
    mask = np.asarray(mask, dtype=bool)
    std = np.asarray(std, dtype=np.float64)
    if mask.shape != std.shape:
        raise ValueError(f"mask {mask.shape} and uncertainty {std.shape} differ in shape")
    # Both sides of every transition inside the grid (not the grid's own edge).
    edge = find_boundaries(mask, mode="thick")
    if not edge.any():
        return math.nan
    band = ndimage.distance_transform_edt(~edge) <= band_px
    inside = box_mask(box, mask.shape)
    near, rest = band & inside, ~band & inside
    if not near.any() or not rest.any():
        return math.nan
    far = float(std[rest].mean())
    return float(std[near].mean()) / far if far > 0 else math.nan


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a binary or label mask to (H, W), keeping its dtype.

    Order 0 without anti-aliasing, so no new label values appear; evaluation at a
    fixed size (e.g. 384x384) resizes the ground truth with this.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {arr.shape}")
    # By index (scikit-image's resize gives the same pixels through a float64 copy of
    # the mask: 1.15 GB for a 12000 x 12000 one in evaluate; issue 23).
    return np.ascontiguousarray(resample_nearest(arr, tuple(int(s) for s in shape)))


def summarize(rows: Sequence[dict]) -> dict:
    """Mean of every numeric key over the rows that have it, plus ``n`` = number of rows.

    Non-numeric values (names) and booleans are skipped; a key whose values are
    all numeric but some NaN averages the rest, so one undefined case does not
    blank a whole column.
    """
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (Real, np.number)) and not isinstance(value, (bool, np.bool_)):
                values.setdefault(key, []).append(float(value))
    out: dict = {}
    for key, vals in values.items():
        finite = [v for v in vals if not math.isnan(v)]
        out[key] = float(np.mean(finite)) if finite else float("nan")
    out["n"] = len(rows)
    return out
