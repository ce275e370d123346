"""Running one object through a volume, slice after slice (no Qt, no napari).

Propagation starts from an object's mask on one slice. The next slice is
segmented with a box around that mask (slightly enlarged, since objects
change a little between slices), its mask gives the box for the slice after,
and so on until the object ends: the mask vanishes or becomes tiny, jumps
somewhere else, or balloons (the model found a neighbour instead).

Everything here works on numpy arrays and plain callbacks, so the logic is
tested without a viewer and can be reused by scripts. The napari side
(``widgets.segment.volume``) only supplies ``segment_slice`` and writes the masks.

Boxes are in the session's pixel-edge convention (x0, y0, x1, y1), pixel
``i`` spanning ``[i, i + 1]`` (see ``boxes``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .boxes import Box, take_plane
from .session_holder import ModelSpec, SessionError, SessionHolder, explain

#: The directions a user can choose; "up" is towards higher slice indices.
DIRECTIONS = ("both", "up", "down")


@dataclass(frozen=True)
class StopRule:
    """When a propagated object counts as ended.

    ``min_pixels`` / ``min_fraction``: a mask smaller than both the absolute
    floor and this fraction of the starting slice's area is the object's tip
    fading out (or noise), not the object. ``max_growth``: a mask more than this
    many times the previous slice's area almost always means the box caught a
    neighbouring structure; real organs change far less between two slices.
    ``grow``: fraction of the mask's size added on every side of the next box
    (at least ``min_pad`` pixels), so an object that widens still fits.
    """

    min_pixels: int = 4
    min_fraction: float = 0.05
    max_growth: float = 4.0
    grow: float = 0.1
    min_pad: float = 2.0
    #: The model's own evidence (None: not used; measured values per backbone in
    #: :data:`MEASURED_STOPS`): below this predicted IoU (the backbone's IoU head)
    #: the box no longer holds the object.
    min_iou: float | None = None
    #: Below this share of the mask lying on (or next to) the previous slice's mask,
    #: the mask has slid onto something else.
    min_overlap: float | None = None


#: Evidence thresholds measured per backbone (training/propagation_stop_eval.py:
#: chosen on 8 synthetic CT volumes, checked on 8 others; docs/training.md). Other
#: backbones' IoU heads were not measured, so they stop on the area rules alone.
MEASURED_STOPS: dict[str, StopRule] = {
    "medsam_lite": StopRule(min_iou=0.725, min_overlap=0.9),
}


def stop_rule_for(variant: str) -> StopRule:
    """The stop rule measured for a backbone, or the area rules alone."""
    return MEASURED_STOPS.get(variant, StopRule())


@dataclass
class Evidence:
    """What the model says about one slice's mask besides its pixels."""

    iou: float = float("nan")  # the backbone's predicted IoU for the box
    overlap: float = float("nan")  # share of the mask on or next to the previous mask


@dataclass
class Step:
    """One propagated slice: its mask and the box it was segmented with."""

    plane: int
    direction: str  # "up" or "down"
    box: Box
    mask: np.ndarray  # (H, W) bool, only the components that belong to the object
    evidence: Evidence = field(default_factory=Evidence)
    #: The slice's maps as a box's answer has them: (variance, P(wrong) or None); None
    #: from the backbone's own decoder.
    maps: tuple[np.ndarray, np.ndarray | None] | None = None


@dataclass
class Summary:
    """How each direction ended: ``{"up": "ended at slice 12 (...)", ...}``."""

    reasons: dict[str, str]
    planes: int = 0  # slices written
    error: str | None = None
    #: direction -> first slice past the object's natural end (not set when the
    #: run was stopped or reached the volume's edge)
    ended_at: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        text = "; ".join(f"{d}: {r}" for d, r in self.reasons.items())
        return f"{self.planes} slices propagated ({text})" if text else f"{self.planes} slices"


def box_of_mask(mask: np.ndarray, rule: StopRule = StopRule()) -> Box | None:
    """Next slice's box: the mask's bounding box, enlarged, clipped to the slice.

    None for an empty mask. The enlargement is a fraction of the mask's own
    size (``rule.grow``), at least ``rule.min_pad`` pixels a side.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1 = float(rows[0]), float(rows[-1] + 1)  # pixel edges
    x0, x1 = float(cols[0]), float(cols[-1] + 1)
    pad_y = max(rule.min_pad, rule.grow * (y1 - y0))
    pad_x = max(rule.min_pad, rule.grow * (x1 - x0))
    height, width = mask.shape
    return (max(0.0, x0 - pad_x), max(0.0, y0 - pad_y),
            min(float(width), x1 + pad_x), min(float(height), y1 + pad_y))


def keep_in_box(mask: np.ndarray, box: Box) -> np.ndarray:
    """The connected components of ``mask`` that reach into ``box``.

    The decoder looks a margin beyond the box, so a neighbour outside it can
    come back as a separate blob; following that blob would drift away from
    the object, so it is dropped.
    """
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool)
    x0, y0, x1, y1 = (int(np.floor(box[0])), int(np.floor(box[1])),
                      int(np.ceil(box[2])), int(np.ceil(box[3])))
    inside = np.unique(labels[y0:y1, x0:x1])
    return np.isin(labels, inside[inside > 0])


def overlap_with(mask: np.ndarray, previous: np.ndarray, reach: int = 2) -> float:
    """Share of ``mask`` within ``reach`` pixels of ``previous`` (objects move a little
    between slices; a mask that jumped to a neighbour lies mostly elsewhere)."""
    area = int(mask.sum())
    if area == 0:
        return float("nan")
    near = ndimage.binary_dilation(previous, iterations=reach) if reach > 0 else previous
    return float((mask & near).sum()) / area


def check_mask(mask: np.ndarray, previous_area: int, start_area: int,
               rule: StopRule = StopRule(), evidence: Evidence | None = None) -> str | None:
    """Why this slice's mask ends the object (a reason), or None to keep going."""
    area = int(mask.sum())
    floor = max(rule.min_pixels, rule.min_fraction * start_area)
    if area == 0:
        return "no object found"
    if area < floor:
        return f"the object faded out ({area} pixels)"
    if previous_area > 0 and area > rule.max_growth * previous_area:
        return (f"the mask grew {area / previous_area:.1f}-fold in one slice "
                "(probably a neighbouring structure)")
    if evidence is not None:
        if rule.min_iou is not None and evidence.iou < rule.min_iou:
            return (f"the model's confidence fell (predicted IoU {evidence.iou:.2f} < "
                    f"{rule.min_iou:.2f})")
        if rule.min_overlap is not None and evidence.overlap < rule.min_overlap:
            return (f"the mask slid off the object (only {evidence.overlap:.0%} of it next "
                    f"to the previous slice's, below {rule.min_overlap:.0%})")
    return None


def slice_order(start: int, depth: int, direction: str) -> dict[str, list[int]]:
    """The slices to visit from ``start`` (excluded), per direction, nearest first."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if not 0 <= start < depth:
        raise ValueError(f"slice {start} is outside the volume's 0..{depth - 1}")
    order = {}
    if direction in ("both", "up"):
        order["up"] = list(range(start + 1, depth))
    if direction in ("both", "down"):
        order["down"] = list(range(start - 1, -1, -1))
    return order


def nearby_order(current: int, depth: int, radius: int) -> list[int]:
    """Slices within ``radius`` of ``current``, nearest first: current, +1, -1, +2, ..."""
    out = [current] if 0 <= current < depth else []
    for d in range(1, max(0, radius) + 1):
        out += [p for p in (current + d, current - d) if 0 <= p < depth]
    return out


def iter_propagation(
    segment_slice: Callable[[int, Box], np.ndarray | tuple[np.ndarray, float]],
    start_plane: int,
    start_mask: np.ndarray,
    depth: int,
    direction: str = "both",
    *,
    rule: StopRule = StopRule(),
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Step, None, Summary]:
    """Propagate an object from ``start_plane`` through the volume.

    ``segment_slice(plane, box)`` returns the (H, W) bool mask the model gives
    for ``box`` on ``plane``, or ``(mask, predicted IoU)``. Yields one :class:`Step`
    per slice that belongs
    to the object (the ending slice is not yielded) and returns a
    :class:`Summary` saying why each direction ended. ``should_stop`` is
    polled before every slice.
    """
    start_mask = np.asarray(start_mask, bool)
    start_area = int(start_mask.sum())
    if start_area == 0:
        raise ValueError(f"the object has no pixels on slice {start_plane}: segment it there "
                         "first (draw its box), then propagate")
    summary = Summary({})
    for way, planes in slice_order(start_plane, depth, direction).items():
        previous, reason = start_mask, "reached the end of the volume"
        for plane in planes:
            if should_stop is not None and should_stop():
                reason = f"stopped before slice {plane}"
                break
            box = box_of_mask(previous, rule)
            assert box is not None  # previous is never empty here
            answer = segment_slice(plane, box)
            raw, iou = answer if isinstance(answer, tuple) else (answer, float("nan"))
            mask = keep_in_box(np.asarray(raw, bool), box)
            evidence = Evidence(iou, overlap_with(mask, previous))
            why = check_mask(mask, int(previous.sum()), start_area, rule, evidence)
            if why is not None:
                reason = f"ended at slice {plane}: {why}"
                summary.ended_at[way] = plane
                break
            summary.planes += 1
            yield Step(plane, way, box, mask, evidence)
            previous = mask
        summary.reasons[way] = reason
    return summary


# -- worker bodies (run in napari thread workers; never raise) --------------------

class Job:
    """Shared between a volume worker and the widget: the stop flag."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


def precompute_body(holder: SessionHolder, spec: ModelSpec, data: Any, planes: Sequence[int],
                    window: str | None, job: Job) -> Generator[int, None, tuple[int, str | None]]:
    """Embed ``planes`` of ``data`` into the session cache; yields each plane done.

    Returns ``(done, error)``. The session lock is taken per slice, so a box
    drawn meanwhile waits for at most one embedding. Keys are the slices'
    contents (as when a box is segmented), so a later box on a precomputed
    slice finds its embedding whatever path it comes by.
    """
    done = 0
    try:
        session = holder.load(spec)
    except SessionError as exc:
        return done, str(exc)
    try:
        for plane in planes:
            if job.stopped:
                break
            with holder.lock:
                done += session.precompute([lambda p=plane: take_plane(data, p)], [None],
                                           window=window, should_stop=lambda: job.stopped)
            yield plane
    except Exception as exc:  # noqa: BLE001
        return done, explain(exc, spec, loading=False)
    return done, None


def propagate_body(holder: SessionHolder, spec: ModelSpec, data: Any, start_plane: int,
                   start_mask: np.ndarray, direction: str, window: str | None, job: Job,
                   rule: StopRule | None = None) -> Generator[Step, None, Summary]:
    """Worker body for "Propagate": yields :class:`Step` s, returns a :class:`Summary`
    (with ``error`` set instead of raising). ``rule``: the one measured for the
    session's backbone unless given."""
    try:
        session = holder.load(spec)
    except SessionError as exc:
        return Summary({}, error=str(exc))
    if rule is None:
        rule = stop_rule_for(session.model.config.variant)

    maps: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def segment_slice(plane: int, box: Box) -> tuple[np.ndarray, float]:
        image = take_plane(data, plane)  # read outside the lock: lazy data may be slow
        result, _ = holder.run(spec, image, [box], window=window)
        iou = float("nan") if result.iou is None else float(result.iou[0])
        if result.uncertainty is not None:  # the slice's maps, like any box's
            maps[plane] = (result.uncertainty[0].max(axis=0),
                           None if result.error is None else result.error[0])
        return result.masks()[0], iou

    steps = iter_propagation(segment_slice, start_plane, start_mask, len(data),
                                             direction, rule=rule,
                                             should_stop=lambda: job.stopped)
    try:
        while True:
            try:
                step = next(steps)
            except StopIteration as finished:
                summary = finished.value
                break
            step.maps = maps.pop(step.plane, None)
            yield step
    except SessionError as exc:
        return Summary({}, error=str(exc))
    except Exception as exc:  # noqa: BLE001
        return Summary({}, error=explain(exc, spec, loading=False))
    return summary

