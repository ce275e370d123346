"""Corrective clicks on one object (numpy only: the widgets build them on napari's main
thread, where torch must not be imported before ``model.torch_guard`` has run)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: How a click's answer joins the object's mask. ``local``: only the connected change
#: that holds the click is taken (added on a positive click, removed on a negative
#: one); the rest stays as the steps before answered. ``replace``: the new answer
#: replaces the mask (exports made before 2026-12-05 evening). Measured with the
#: challenge's protocol clicks (docs/training.md): clicks that lowered Dice fell from
#: 54 % to 0.5 % on Kvasir-Sessile and from 76 % to 10 % on the AMOS slices (the
#: backbone's decoder, a prototype on the low resolution grid the session uses).
CLICK_RULES = ("local", "replace")
DEFAULT_CLICK_RULE = "local"
#: What the Segment widget says when a click left its object's mask as it was (under
#: the local rule, most clicks on the Kvasir-Sessile polyps do: the model keeps its
#: answer where they land).
CHANGED_NOTHING = ("The click changed nothing: only the change that holds a click joins "
                   "the mask, and the model keeps its answer there; correct it with the "
                   "brush, or click where the mask should change")


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
