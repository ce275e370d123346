"""Running one object through a volume, slice after slice (no Qt, no napari).

Propagation starts from an object's mask on the slices the user gave it (key
slices). The next slice is segmented with a box around the previous mask
(slightly enlarged, since objects change a little between slices); of the
model's answer only what looks like the object (its intensity on the user's
slice) and touches the previous mask is kept; that mask gives the box for the
slice after, and so on until the object ends: nothing like it is left, the mask
becomes tiny, jumps somewhere else, or balloons (the model found a neighbour
instead). Between two key slices each side fills its half.

Everything here works on numpy arrays and plain callbacks, so the logic is
tested without a viewer and can be reused by scripts. The napari side
(``widgets.segment.propagate``) only supplies ``segment_slice`` and writes the masks.

Boxes are in the session's pixel-edge convention (x0, y0, x1, y1), pixel
``i`` spanning ``[i, i + 1]`` (see ``boxes``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .boxes import Box, take_plane
from .session_holder import ModelSpec, SessionError, SessionHolder, explain

#: The directions a user can choose; "up" is towards higher slice indices.
DIRECTIONS = ("both", "up", "down")
#: How a run between two key slices ends when it reaches its half.
MET = "met the run from the next key slice"


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
    #: "Next to" for ``min_overlap``: within this many pixels of the previous mask,
    #: per pixel of slice gap (a surface at a given tilt moves in-plane in proportion
    #: to the gap: 2 px on the synthetic volumes' cubic voxels, 13 px on the spleen's
    #: 5 mm slices of 0.8 mm pixels, where 2 px cut 13 of its 20 slices).
    overlap_reach: int = 2
    #: The object's own appearance (None: not used). A slice's mask keeps only the
    #: pixels whose local mean intensity lies within this many standard deviations of
    #: the object's on its starting slice (see :class:`Appearance`). On the real spleen
    #: CT it took one box + propagation from volume Dice 0.54 to 0.956
    #: (training/volume_eval.py; 2.0-3.0 gave 0.92-0.956).
    appearance_k: float | None = 3.0
    #: Components of the kept mask further than this many pixels from the previous
    #: slice's mask are dropped (1, 3 and 6 gave the same spleen Dice to 0.003).
    follow_reach: int = 3


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
    #: share of the model's mask that looks like the object (:class:`Appearance`)
    likeness: float = float("nan")
    raw_area: int = 0  # pixels of the model's mask before the appearance check


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

    #: the user's slices the run started from
    keys: list[int] = field(default_factory=list)

    def describe(self) -> str:
        text = "; ".join(f"{d}: {r}" for d, r in self.reasons.items() if r != MET)
        start = (f" from your slices {', '.join(map(str, self.keys))}" if len(self.keys) > 1
                 else "")
        head = f"{self.planes} slices propagated{start}"
        return f"{head} ({text})" if text else head


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


def grey_plane(plane: np.ndarray) -> np.ndarray:
    """One slice's intensities as a float32 (H, W) array (RGB: the channels' mean)."""
    plane = np.asarray(plane)
    if plane.ndim == 3:
        plane = plane.mean(axis=-1)
    return plane.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Appearance:
    """What the object looks like: its local mean intensity on a slice the user gave.

    Organs are far more uniform inside than the boxes around them: the spleen on
    ``shared/data/ct-volumes`` is 80 +- 28 HU on its largest slice, while the model's
    masks on its tapering slices reached into fat and bowel (mean -55 to -530 HU).
    A pixel "looks like the object" when its 3 x 3 mean lies within ``k`` standard
    deviations of the object's. Intensities are the image's own (not the display
    window), so it works for CT, MR and RGB alike.
    """

    centre: float
    spread: float

    @classmethod
    def of(cls, image: np.ndarray, mask: np.ndarray) -> Appearance | None:
        """The appearance of ``mask`` on ``image`` (its inside, away from the edge where
        partial volume mixes in the neighbours); None when nothing is finite there."""
        inner = ndimage.binary_erosion(mask, iterations=2)
        if inner.sum() < 20:
            inner = np.asarray(mask, bool)
        values = smoothed(image)[inner]
        values = values[np.isfinite(values)]
        if values.size == 0:
            return None
        finite = image[np.isfinite(image)]
        # A floor on the spread: a flat synthetic object would otherwise accept only
        # its exact value.
        span = float(np.percentile(finite, 99) - np.percentile(finite, 1)) if finite.size else 0.0
        return cls(float(np.median(values)), max(float(values.std()), 0.01 * span, 1e-6))

    def like(self, image: np.ndarray, k: float) -> np.ndarray:
        """(H, W) bool: the pixels of ``image`` that look like the object."""
        with np.errstate(invalid="ignore"):
            return np.abs(smoothed(image) - self.centre) <= k * self.spread


def smoothed(image: np.ndarray) -> np.ndarray:
    """3 x 3 local mean of a slice (one pixel's noise should not decide)."""
    return ndimage.uniform_filter(np.asarray(image, np.float32), size=3, mode="nearest")


def follow(mask: np.ndarray, previous: np.ndarray, image: np.ndarray | None,
           appearance: Appearance | None, rule: StopRule) -> tuple[np.ndarray, float]:
    """The part of the model's ``mask`` that continues the object: ``(mask, likeness)``.

    With an appearance: the pixels that look like the object, opened (thin bridges
    into a neighbour of similar intensity break), the components within
    ``rule.follow_reach`` pixels of the previous slice's mask, holes filled (vessels
    inside an organ are part of it), then the one-pixel rim the 3 x 3 mean took off
    given back from the model's mask (measured: spleen Dice 0.944 -> 0.956).
    ``likeness`` is the share of the model's mask that looks like the object.
    """
    mask = np.asarray(mask, bool)
    if appearance is None or image is None or rule.appearance_k is None or not mask.any():
        return mask, float("nan")
    like = appearance.like(image, rule.appearance_k)
    likeness = float((mask & like).sum()) / float(mask.sum())
    kept = ndimage.binary_opening(mask & like)
    parts, count = ndimage.label(kept)
    if count:
        near = ndimage.binary_dilation(previous, iterations=max(1, rule.follow_reach))
        ids = np.unique(parts[kept & near])
        kept = np.isin(parts, ids[ids > 0])
    kept = ndimage.binary_fill_holes(kept)
    kept |= mask & ndimage.binary_dilation(kept)
    return kept, likeness


@dataclass
class _Leg:
    """One run from a slice the user gave, in one direction, over ``planes``."""

    origin: int
    way: str
    planes: list[int]
    #: where a run between two key slices is met by the one from the other side
    meets: int | None = None


def plan_legs(keys: Sequence[int], depth: int, direction: str,
              from_plane: int | None = None) -> list[_Leg]:
    """The runs that cover a volume from its key slices (sorted, distinct).

    Between two key slices each side fills its half, nearest first (the lower key
    going up, the upper going down), so every slice is answered from the nearer
    user slice. ``direction`` chooses the runs past the outermost keys.

    ``from_plane`` ("Propagate from here"): only the runs from that key slice, in
    ``direction``, each up to the next key slice (the whole gap) or the volume's end.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    keys = sorted(set(int(k) for k in keys))
    if not keys:
        raise ValueError("propagation needs at least one slice with the object on it")
    for k in keys:
        if not 0 <= k < depth:
            raise ValueError(f"slice {k} is outside the volume's 0..{depth - 1}")
    legs: list[_Leg] = []
    if from_plane is not None:
        if from_plane not in keys:
            raise ValueError(f"slice {from_plane} is not one of the object's slices")
        at = keys.index(from_plane)
        if direction in ("both", "up"):
            stop = keys[at + 1] if at + 1 < len(keys) else depth
            legs.append(_Leg(from_plane, "up", list(range(from_plane + 1, stop))))
        if direction in ("both", "down"):
            stop = keys[at - 1] if at > 0 else -1
            legs.append(_Leg(from_plane, "down", list(range(from_plane - 1, stop, -1))))
        return legs
    for low, high in zip(keys, keys[1:]):
        if high - low < 2:
            continue
        middle = (low + high) // 2
        legs.append(_Leg(low, "up", list(range(low + 1, middle + 1)), meets=high))
        legs.append(_Leg(high, "down", list(range(high - 1, middle, -1)), meets=low))
    if direction in ("both", "up") and keys[-1] < depth - 1:
        legs.append(_Leg(keys[-1], "up", list(range(keys[-1] + 1, depth))))
    if direction in ("both", "down") and keys[0] > 0:
        legs.append(_Leg(keys[0], "down", list(range(keys[0] - 1, -1, -1))))
    return legs


def overlap_reach(rule: StopRule, spacing: Sequence[float] | None) -> int:
    """``rule.overlap_reach`` scaled by the slice gap in pixels (``spacing``: the
    volume's (z, y, x) voxel size; None or unknown: cubic voxels)."""
    if spacing is None or len(spacing) < 3:
        return rule.overlap_reach
    dz, dy, dx = (abs(float(v)) for v in spacing[-3:])
    pixel = min(dy, dx)
    if not (np.isfinite(dz) and np.isfinite(pixel)) or dz <= 0 or pixel <= 0:
        return rule.overlap_reach
    return int(np.ceil(rule.overlap_reach * max(1.0, dz / pixel)))


def iter_propagation(
    segment_slice: Callable[[int, Box], np.ndarray | tuple[np.ndarray, float]],
    start_plane: int,
    start_mask: np.ndarray,
    depth: int,
    direction: str = "both",
    *,
    rule: StopRule = StopRule(),
    should_stop: Callable[[], bool] | None = None,
    image_of: Callable[[int], np.ndarray] | None = None,
    keys: Mapping[int, np.ndarray] | None = None,
    spacing: Sequence[float] | None = None,
    from_start_only: bool = False,
) -> Generator[Step, None, Summary]:
    """Propagate an object from ``start_plane`` (and the other ``keys``) through a volume.

    ``segment_slice(plane, box)`` returns the (H, W) bool mask the model gives
    for ``box`` on ``plane``, or ``(mask, predicted IoU)``. ``image_of(plane)``
    gives the slice's intensities (for the object's appearance, see
    :func:`follow`); without it only the model's mask and the stop rule decide.
    ``keys``: more slices the user gave, ``{plane: mask}``; the slices between
    them are filled from both ends and none of them is ever written.

    Yields one :class:`Step` per slice that belongs to the object (the ending
    slice is not yielded) and returns a :class:`Summary` saying why each
    direction ended. ``should_stop`` is polled before every slice. ``spacing``:
    the volume's (z, y, x) voxel size, which scales the overlap rule's reach.
    ``from_start_only``: run from ``start_plane`` alone, in ``direction``, each way
    up to the next key slice ("Propagate from here", see :func:`plan_legs`).
    """
    reach = overlap_reach(rule, spacing)
    given = {int(start_plane): np.asarray(start_mask, bool)}
    for plane, mask in (keys or {}).items():
        given[int(plane)] = np.asarray(mask, bool)
    for plane, mask in given.items():
        if not mask.any():
            raise ValueError(f"the object has no pixels on slice {plane}: segment it there "
                             "first (draw its box), then propagate")
    slice_order(int(start_plane), depth, direction)  # checks the start and the direction
    legs = plan_legs(list(given), depth, direction,
                     int(start_plane) if from_start_only else None)
    looks = {}
    if image_of is not None and rule.appearance_k is not None:
        looks = {plane: Appearance.of(grey_plane(image_of(plane)), mask)
                 for plane, mask in given.items()}
    summary = Summary({}, keys=[int(start_plane)] if from_start_only else sorted(given))
    done: dict[int, np.ndarray] = {}  # plane -> mask written by this run
    ended: set[tuple[int, str]] = set()
    for i, leg in enumerate(legs):
        planes = list(leg.planes)
        if leg.meets is not None:
            # The other side's run ended before its half: this one goes on to it.
            partner = next((o for o in legs if o.origin == leg.meets and o.meets == leg.origin),
                           None)
            if partner is not None and legs.index(partner) < i and (partner.origin, partner.way) \
                    in ended:
                step = 1 if leg.way == "up" else -1
                start = planes[-1] + step if planes else leg.origin + step
                planes += [p for p in range(start, partner.origin, step) if p not in done]
        start_area = int(given[leg.origin].sum())
        previous, reason = given[leg.origin], "reached the end of the volume"
        name = leg.way if leg.meets is None else f"{leg.way} from {leg.origin}"
        appearance = looks.get(leg.origin)
        for plane in planes:
            if should_stop is not None and should_stop():
                reason = f"stopped before slice {plane}"
                break
            box = box_of_mask(previous, rule)
            assert box is not None  # previous is never empty here
            answer = segment_slice(plane, box)
            raw, iou = answer if isinstance(answer, tuple) else (answer, float("nan"))
            raw = keep_in_box(np.asarray(raw, bool), box)
            image = None if appearance is None else grey_plane(image_of(plane))  # type: ignore[misc]
            mask, likeness = follow(raw, previous, image, appearance, rule)
            evidence = Evidence(iou, overlap_with(mask, previous, reach),
                                likeness, int(raw.sum()))
            why = check_mask(mask, int(previous.sum()), start_area, rule, evidence)
            if why is not None:
                reason = f"ended at slice {plane}: {why}"
                if leg.meets is None:
                    summary.ended_at[leg.way] = plane
                ended.add((leg.origin, leg.way))
                break
            summary.planes += 1
            done[plane] = mask
            yield Step(plane, leg.way, box, mask, evidence)
            previous = mask
        else:
            if leg.meets is not None or (from_start_only and planes
                                         and 0 < planes[-1] < depth - 1):
                reason = MET if leg.meets is not None \
                    else f"reached the object's slice {planes[-1] + (1 if leg.way == 'up' else -1)}"
        summary.reasons[name] = reason
    return summary


def stale_planes(summary: Summary, depth: int, keys: Sequence[int]) -> set[int]:
    """Slices where an earlier run's pixels of the object are now stale: past where a
    direction found the object's end, up to the next key slice (key slices are the
    user's and are never cleared)."""
    keys = sorted(set(int(k) for k in keys))
    stale: set[int] = set()
    for way, end in summary.ended_at.items():
        if way == "up":
            stop = next((k for k in keys if k >= end), depth)
            stale |= set(range(end, stop))
        else:
            stop = next((k for k in reversed(keys) if k <= end), -1)
            stale |= set(range(end, stop, -1))
    return stale - set(keys)


def mask_digest(mask: np.ndarray) -> bytes:
    """A fingerprint of one slice's mask (to tell a propagated slice the user has not
    touched from one they corrected)."""
    return hashlib.blake2b(np.packbits(np.asarray(mask, bool)).tobytes(), digest_size=16).digest()


def user_slices(labels: Any, object_id: int, written: Mapping[int, set[bytes]]
                ) -> dict[int, np.ndarray]:
    """``{plane: mask}`` of the slices where the user gave the object: it has pixels
    there and they are not what a propagation wrote (``written``: plane -> the
    fingerprints propagations wrote). A corrected propagated slice is the user's."""
    found = {}
    for plane in range(labels.shape[0]):
        mask = np.asarray(labels[plane]) == object_id
        if mask.any() and mask_digest(mask) not in written.get(plane, ()):
            found[plane] = mask
    return found


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
                   rule: StopRule | None = None, keys: Mapping[int, np.ndarray] | None = None,
                   spacing: Sequence[float] | None = None, from_start_only: bool = False,
                   ) -> Generator[Step, None, Summary]:
    """Worker body for "Propagate": yields :class:`Step` s, returns a :class:`Summary`
    (with ``error`` set instead of raising). ``rule``: the one measured for the
    session's backbone unless given. ``keys``: the object's other user slices."""
    try:
        session = holder.load(spec)
    except SessionError as exc:
        return Summary({}, error=str(exc))
    if rule is None:
        rule = stop_rule_for(session.model.config.variant)

    maps: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    read: dict[int, np.ndarray] = {}  # the slice last read, for its appearance

    def image_of(plane: int) -> np.ndarray:
        if plane not in read:
            read.clear()
            read[plane] = np.asarray(take_plane(data, plane))
        return read[plane]

    def segment_slice(plane: int, box: Box) -> tuple[np.ndarray, float]:
        image = image_of(plane)  # read outside the lock: lazy data may be slow
        result, _ = holder.run(spec, image, [box], window=window)
        iou = float("nan") if result.iou is None else float(result.iou[0])
        if result.uncertainty is not None:  # the slice's maps, like any box's
            maps[plane] = (result.uncertainty[0].max(axis=0),
                           None if result.error is None else result.error[0])
        return result.masks()[0], iou

    try:
        steps = iter_propagation(segment_slice, start_plane, start_mask, len(data), direction,
                                 rule=rule, should_stop=lambda: job.stopped,
                                 image_of=image_of, keys=keys, spacing=spacing,
                                 from_start_only=from_start_only)
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


def propagate_volume(session: Any, data: Any, start: int, keys: Mapping[int, Box], *,
                     window: str | None = None, spacing: Sequence[float] | None = None
                     ) -> tuple[np.ndarray, Summary]:
    """One object through a volume, from its box on ``start`` (and its boxes on the other
    ``keys`` slices, filled between from both ends), by a session of its own (the
    command line's): ``(labels (Z, H, W) uint8, 1 = the object; summary)``. A key box
    that gives an empty mask is refused, naming its slice."""
    planes: dict[int, np.ndarray] = {}
    for plane, box in keys.items():
        session.set_image(data[plane], window=window)
        mask = session.predict(np.asarray([box], np.float64)).masks()[0]
        if not mask.any():
            raise ValueError(f"the box {list(box)} on slice {plane} gives an empty mask: "
                             "draw it around the object")
        planes[plane] = mask

    def answer(plane: int, box: Box) -> tuple[np.ndarray, float]:
        session.set_image(data[plane], window=window)
        result = session.predict(np.asarray([box], np.float64))
        return result.masks()[0], float(result.iou[0])

    labels = np.zeros(data.shape[:3], np.uint8)
    for plane, mask in planes.items():
        labels[plane][mask] = 1
    steps = iter_propagation(answer, start, planes[start], data.shape[0], "both",
                             rule=stop_rule_for(session.model.config.variant),
                             image_of=lambda p: data[p], spacing=spacing,
                             keys={p: m for p, m in planes.items() if p != start})
    while True:
        try:
            step = next(steps)
        except StopIteration as finished:
            return labels, finished.value
        labels[step.plane][step.mask] = 1
