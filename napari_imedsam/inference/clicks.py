"""Corrective clicks on one object (numpy only: the widgets build them on napari's main
thread, where torch must not be imported before ``model.torch_guard`` has run)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: How a click's answer joins the object's mask. ``local``: only the connected change
#: that holds the click is taken (added on a positive click, removed on a negative
#: one); the rest stays as the steps before answered. ``local_bump``: the same, after
#: the click's answer is pushed towards the click wherever the model did not follow it
#: (:class:`Bump`). ``replace``: the new answer replaces the mask. Exports record the
#: rule they were made with and are made again with it: ``replace`` before the evening
#: of 2026-12-05, ``local`` until the sixth session of that day.
#:
#: Measured with the challenge's protocol clicks (docs/training.md): ``local`` cut the
#: clicks that lowered Dice from 54 % to 0.5 % on Kvasir-Sessile, but left the clicks
#: nearly inert (0.902 -> 0.903 after 5): the model followed only 5 % of them at their
#: own pixel (validation split). ``local_bump``: Kvasir-Sessile test 0.909 -> 0.940
#: after 5 clicks, the AMOS slices 0.795 -> 0.889 after 3 (implicit decoder).
CLICK_RULES = ("local", "replace", "local_bump")
DEFAULT_CLICK_RULE = "local_bump"
#: The ``local_bump`` rule's shape, chosen on the Kvasir-Sessile validation split with
#: the backbone's decoder (docs/training.md: width 0.5-2, margin 0.5-20 tried; after 3
#: clicks 0.882 with width 1 and margin 2, 0.932 with these): the bump is this many
#: times as wide as the click is far from the mask's edge, and high enough to take the
#: click's own pixel this far past the decision boundary (in logits).
BUMP_WIDTH = 0.75
BUMP_MARGIN = 12.0
#: The width in cells when the mask has no edge to measure from (a positive click on an
#: empty mask): 1/32 of LiteMedSAM's 256-cell grid. Not measured on its own.
BUMP_EDGELESS_CELLS = 8.0
#: How far (cells) a click reaches where the backbone's mask already agreed with it but
#: the implicit decoder's did not (session ``_local``): 1/16 of the 256-cell grid. On
#: the Kvasir-Sessile validation split (implicit decoder, 5 clicks) the Dice after 5
#: clicks is 0.931 with this reach and 0.932 with the bump's own 2 sigma alone, which
#: let a click on far background move pixels by the object's edge.
AGREED_REACH = 16.0
#: What the Segment widget says when a click left its object's mask as it was (under
#: the ``local`` rule most clicks on the Kvasir-Sessile polyps did; under
#: ``local_bump`` a click changes nothing only where the mask already says what it says).
CHANGED_NOTHING = ("The click changed nothing: the mask already says there what the click "
                   "says; click where the mask is wrong (Shift+N suggests where), or "
                   "correct it with the brush")


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


@dataclass(frozen=True)
class Bump:
    """A smooth push of a click's answer towards what the click says: ``sign *
    amplitude * exp(-r^2 / (2 sigma^2))`` added to the logits at distance ``r`` from the
    click's ``centre``, in cells of the backbone's ``cells`` x ``cells`` low resolution
    grid. A continuous field, so the implicit decoder takes it at any resolution, with
    its own amplitude (``implicit_amplitude``) sized on its own answer at the click.
    """

    centre: tuple[float, float]  # x, y in cells (continuous; cell (r, c) spans c..c+1)
    sigma: float  # cells
    sign: float  # +1 on a positive click, -1 on a negative one
    amplitude: float  # logits, the backbone's decoder
    implicit_amplitude: float  # logits, the implicit decoder
    cells: int

    def shape_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The bump's shape (1 at the click) at cell coordinates ``x``, ``y``."""
        r2 = (x - self.centre[0]) ** 2 + (y - self.centre[1]) ** 2
        return np.exp(-r2 / (2.0 * self.sigma ** 2))

    def field(self, n: int) -> np.ndarray:
        """``(n, n)`` float64: the push on the backbone's logits, at the cells' centres."""
        ys, xs = np.mgrid[0:n, 0:n] + 0.5
        return self.sign * self.amplitude * self.shape_at(xs, ys)

    def push_implicit(self, prob: np.ndarray, points: np.ndarray) -> np.ndarray:
        """``(K, P)`` probabilities at ``(P, 2)`` normalised points (-1..1, x then y),
        pushed in logit space by the implicit decoder's amplitude."""
        if self.implicit_amplitude == 0.0:
            return prob
        cells = (points + 1.0) * (0.5 * self.cells)
        push = self.sign * self.implicit_amplitude * self.shape_at(cells[:, 0], cells[:, 1])
        p = np.clip(np.asarray(prob, np.float64), 1e-6, 1 - 1e-6)
        return (1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) + push)))).astype(prob.dtype)


def bump_for(mask: np.ndarray, centre: tuple[float, float], positive: bool, logit: float,
             implicit_logit: float | None) -> Bump | None:
    """The push that takes a click's own pixel ``BUMP_MARGIN`` logits past the decision
    boundary, on the backbone's decoder (its ``logit`` at the click) and the implicit
    one (``implicit_logit``, None without it), or None when both already say what the
    click says by that margin.

    ``mask``: ``(n, n)`` bool, the object's mask before the click on the low resolution
    grid. The width follows the click's distance to the mask's edge (to the nearest
    object cell for a positive click, the nearest background cell for a negative one):
    a click at the middle of a wide missed region pushes a wide bump.
    """
    from scipy import ndimage

    sign = 1.0 if positive else -1.0
    n = mask.shape[0]
    row = min(max(int(centre[1]), 0), n - 1)
    col = min(max(int(centre[0]), 0), n - 1)
    side = mask if mask[row, col] else ~mask  # the side of the mask's edge it is on
    far = (float(ndimage.distance_transform_edt(side)[row, col]) if (~side).any()
           else BUMP_EDGELESS_CELLS)
    amplitude = max(0.0, BUMP_MARGIN - sign * logit)
    implicit = 0.0 if implicit_logit is None else max(0.0, BUMP_MARGIN - sign * implicit_logit)
    if amplitude == 0.0 and implicit == 0.0:
        return None
    return Bump((float(centre[0]), float(centre[1])), BUMP_WIDTH * max(far, 1.0), sign,
                amplitude, implicit, n)
