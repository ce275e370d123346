"""The error map: for each pixel, the probability that its label is wrong.

The MC-dropout spread alone is no probability a user can read: its values peak
near 0.03, and a pixel far inside a confident mask and a pixel on a doubtful
boundary can share one. The error map turns what the decoder says about a
pixel into that probability with a logistic model of three inputs, fitted on
held-out images (:func:`fit`, ``training/error_map.py``; numbers in
docs/training.md):

- the MC-dropout standard deviation of the probability (log, floored at 1e-4);
- the probability's margin from the threshold, ``|p - 0.5|``;
- the distance to the mask's boundary in image pixels (log1p), both sides.

The fitted weights travel in the adapter's JSON (``extra.error_map``), so a
fine-tuned adapter can carry its own. Pixels outside an object's window (the
decoder never looked there) get 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: What the error map holds, for layers, files and records: one name, one quantity.
ERROR_QUANTITY = "probability that the pixel's label is wrong (calibrated, 0 to 1)"
FEATURES = ("log_std", "margin", "log1p_boundary_distance_px")


@dataclass(frozen=True)
class ErrorModel:
    """Logistic weights over :data:`FEATURES` (and a bias)."""

    weights: tuple[float, ...]
    bias: float

    @classmethod
    def from_dict(cls, data: dict) -> "ErrorModel":
        if list(data.get("features", [])) != list(FEATURES):
            raise ValueError(f"an error map needs the features {FEATURES}, got "
                             f"{data.get('features')}")
        weights = tuple(float(w) for w in data["weights"])
        if len(weights) != len(FEATURES) or not np.isfinite([*weights, data["bias"]]).all():
            raise ValueError("an error map's weights are not finite numbers, one per feature")
        return cls(weights, float(data["bias"]))

    def to_dict(self) -> dict:
        return {"features": list(FEATURES), "weights": list(self.weights), "bias": self.bias}

    def __call__(self, prob: np.ndarray, variance: np.ndarray, pixel: float = 1.0) -> np.ndarray:
        """``P(wrong)`` on a window: ``prob`` and ``variance`` ``(H, W)``; ``pixel`` the
        size of one grid step in image pixels (1 / scale)."""
        x = features(prob, variance, pixel)
        z = x @ np.asarray(self.weights, np.float32) + np.float32(self.bias)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def features(prob: np.ndarray, variance: np.ndarray, pixel: float = 1.0) -> np.ndarray:
    """``(H, W, 3)`` float32 inputs of the error model."""
    mask = prob > 0.5
    # Distance of each pixel to the nearest pixel of the other side of the boundary.
    inside = ndi.distance_transform_edt(mask) if mask.any() else np.zeros(mask.shape)
    outside = ndi.distance_transform_edt(~mask) if (~mask).any() else np.zeros(mask.shape)
    distance = np.where(mask, inside, outside) * pixel
    std = np.sqrt(np.maximum(variance, 0.0))
    return np.stack([np.log(std + 1e-4), np.abs(prob - 0.5), np.log1p(distance)],
                    axis=-1).astype(np.float32)


def fit(x: np.ndarray, wrong: np.ndarray, iterations: int = 50, l2: float = 1e-3) -> ErrorModel:
    """Logistic regression by Newton's method: ``x`` ``(P, 3)`` features, ``wrong`` ``(P,)``
    bool (the pixel's label disagrees with the ground truth)."""
    a = np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1).astype(np.float64)
    y = wrong.astype(np.float64)
    w = np.zeros(a.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        grad = a.T @ (p - y) + l2 * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return ErrorModel(tuple(float(v) for v in w[:-1]), float(w[-1]))


def calibration(predicted: np.ndarray, wrong: np.ndarray, bins: int = 15) -> dict:
    """Expected calibration error (pixel-weighted mean gap over ``bins`` equal-width
    bins), the AUROC of "the pixel is wrong", and the reliability table."""
    predicted = np.asarray(predicted, np.float64).ravel()
    wrong = np.asarray(wrong, bool).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(predicted, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        chosen = which == b
        if not chosen.any():
            continue
        mean_p, rate = float(predicted[chosen].mean()), float(wrong[chosen].mean())
        ece += chosen.mean() * abs(mean_p - rate)
        table.append({"bin": [float(edges[b]), float(edges[b + 1])], "pixels": int(chosen.sum()),
                      "predicted": mean_p, "observed": rate})
    return {"ece": float(ece), "auroc": auroc(predicted, wrong), "table": table,
            "pixels": int(len(predicted)), "error_rate": float(wrong.mean()) if len(wrong) else 0.0}


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by ranks (ties share their mean rank)."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def next_click(error: np.ndarray, mask: np.ndarray, threshold: float = 0.5
               ) -> tuple[int, int, bool] | None:
    """Where a correction would gain most: the region of likely errors (error map above
    ``threshold``) holding the most expected wrong pixels, at its centre (the point
    farthest from its edge); positive where the mask leaves it out. None when no
    pixel is likely wrong. ``(row, col, positive)`` on the map's grid."""
    likely = error > threshold
    if not likely.any():
        return None
    best = None
    for inside in (False, True):  # missed object (positive) / false mask (negative)
        side = likely & (mask if inside else ~mask)
        regions, count = ndi.label(side)
        if count == 0:
            continue
        mass = ndi.sum(error, regions, index=np.arange(1, count + 1))
        k = int(np.argmax(mass))
        if best is None or mass[k] > best[0]:
            best = (float(mass[k]), regions == k + 1, not inside)
    if best is None:
        return None
    _, region, positive = best
    distance = ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(distance >= distance.max() - 1e-6)
    pick = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return int(rows[pick]), int(cols[pick]), positive
