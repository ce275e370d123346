"""Corrective clicks on one object (numpy only: the widgets build them on napari's main
thread, where torch must not be imported before ``model.torch_guard`` has run)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Clicks:
    """Corrective clicks on one object, in the order they were made.

    ``xy``: ``(P, 2)`` float64, x and y in image pixels with 0 at the top-left
    edge (a click on pixel column c, row r is ``(c + 0.5, r + 0.5)``);
    ``labels``: ``(P,)`` int, 1 where the object is (positive), 0 where it is not.
    """

    xy: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, xy: object, labels: object) -> "Clicks":
        pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        lab = np.asarray(labels).reshape(-1)
        if len(lab) != len(pts):
            raise ValueError(f"{len(pts)} click(s) with {len(lab)} label(s): give one label "
                             "per click")
        if not np.isfinite(pts).all():
            raise ValueError("clicks contain NaN or infinite coordinates")
        if not np.isin(lab, (0, 1)).all():
            raise ValueError("click labels are 1 (positive) or 0 (negative)")
        return cls(pts, lab.astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def key(self) -> bytes:
        return self.xy.tobytes() + self.labels.tobytes()
