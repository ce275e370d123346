"""Many boxes on a large grid, in memory that grows with neither.

:meth:`SegmentationSession.predict` returns one full-grid map per box, which is
what an interactive box needs and what a batch cannot afford: 500 boxes on a
1348 x 1070 image would hold 7 GB of maps, one box on a 6000 x 6000 image 360 MB
before any merging. :class:`BandMerge` walks the output grid in bands of rows
and, within a band, takes as many of the boxes that reach it as fit a fixed
budget, folding each answer into the band's labels and uncertainty. A band is
final once its boxes are done, so a caller can write it out and let it go
(``imedsam segment`` streams bands into TIFF files): peak memory is then one
band plus the budget, whatever the image size or the number of boxes.
:func:`predict_merged` gathers the bands into whole arrays, for callers that
want them in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..saving import dtype_for_ids
from .session import (BYTES_PER_OUTPUT_PIXEL, SESSION_HEAD, Clicks, SegmentationSession,
                      boundary_polygons, output_grid, window_of)

#: What every merged uncertainty map holds (the command line's and the export's files,
#: the widget's layer): one name, one quantity.
UNCERTAINTY_QUANTITY = ("MC-dropout standard deviation of the mask probability (0 to 0.5; "
                        "the square root of the paper's Eq. 7 variance), maximum over objects")


def spread(variance: np.ndarray) -> np.ndarray:
    """The MC-dropout standard deviation from the session's variance (Eq. 7)."""
    return np.sqrt(np.maximum(variance, 0.0)).astype(np.float32, copy=False)


#: Bytes of per-box maps held at once while merging.
MERGE_BUDGET = 32 << 20


@dataclass
class Band:
    """Finished rows ``row0 .. row0 + len(labels)`` of the merged output."""

    row0: int
    labels: np.ndarray  # (rows, W') BandMerge.dtype
    uncertainty: np.ndarray | None  # (rows, W') float32: UNCERTAINTY_QUANTITY
    #: (rows, W') float32: ``model.error_map.ERROR_QUANTITY``, maximum over objects.
    error: np.ndarray | None = None


@dataclass
class MergedResult:
    """Every box's answer folded onto one ``H' x W'`` grid over the whole image."""

    labels: np.ndarray  # (H', W'): first_id + the box's index (or the class value); 0 background
    uncertainty: np.ndarray | None  # (H', W') float32: UNCERTAINTY_QUANTITY; None for SAM's
    boxes: np.ndarray  # (N, 4) as used (clipped to the image)
    iou: np.ndarray  # (N,) the backbone's predicted IoU per box
    mode: str
    polygons: list[list[np.ndarray]] | None = None  # per box, (M, 2) y, x image pixels


class BandMerge:
    """The merged labels of ``boxes`` on the current image's grid times ``scale``,
    band by band (iterate over it; each band comes once, top to bottom).

    Where boxes overlap the most probable box wins, as in
    ``SegmentationResult.labels``. Box ``i`` gets the id ``first_id + i`` or,
    with ``class_value``, every box's pixels get that one value (semantic
    labels). Bands no box reaches are skipped: their rows are background.
    """

    def __init__(self, session: SegmentationSession,
                 boxes: np.ndarray | Sequence[Sequence[float]], *, scale: float = 1.0,
                 first_id: int = 1, class_value: int | None = None, threshold: float = 0.5,
                 budget: int | None = None, clicks: Sequence[Clicks | None] | None = None,
                 decoder: str | None = None, head: int | None = SESSION_HEAD,  # type: ignore[assignment]
                 ) -> None:
        self.session = session
        self.boxes = session.check_boxes(boxes, clicks)
        self.clicks = clicks
        if not 0.25 <= scale <= 8:
            raise ValueError(f"scale must be between 0.25 and 8, got {scale}")
        height, width = session.image_shape
        self.shape = output_grid((height, width), scale)
        self.mode = session.resolve_decoder(decoder) if decoder is not None else session.mode
        self._ask = {"decoder": self.mode, "head": head}
        self.first_id, self.class_value = first_id, class_value
        largest = class_value if class_value is not None else first_id + len(self.boxes) - 1
        self.dtype = dtype_for_ids(largest)
        self.threshold = threshold
        self.budget = MERGE_BUDGET if budget is None else budget
        #: (N,) each box's predicted IoU, filled in as the bands are computed.
        self.iou = np.full(len(self.boxes), np.nan, np.float32)
        self._whole = (0.0, 0.0, float(height), float(width))
        # Each box's rows on the output grid (its decoded window), to send it only
        # to the bands it reaches.
        self._extents = (self.boxes if clicks is None
                         else session.extents(self.boxes, clicks, decoder=self.mode))
        self._spans = [window_of(box, self._whole, self.shape) for box in self._extents]

    @property
    def has_uncertainty(self) -> bool:
        return self.mode == "imedsam"

    @property
    def has_error_map(self) -> bool:
        return self.has_uncertainty and getattr(self.session.model, "error_model", None) is not None

    def __iter__(self) -> Iterator[Band]:
        rows, cols = self.shape
        height, width = self.session.image_shape
        band = max(1, min(rows, self.budget // (cols * BYTES_PER_OUTPUT_PIXEL)))
        for r0 in range(0, rows, band):
            r1 = min(rows, r0 + band)
            reach = [i for i, w in enumerate(self._spans)
                     if w is not None and w[0] < r1 and w[2] > r0]
            if reach:
                region = (r0 * height / rows, 0.0, r1 * height / rows, float(width))
                yield self._band(r0, r1, region, reach)

    def _band(self, r0: int, r1: int, region: tuple[float, ...], reach: list[int]) -> Band:
        cols = self.shape[1]
        labels = np.zeros((r1 - r0, cols), self.dtype)
        uncertainty = np.zeros((r1 - r0, cols), np.float32) if self.has_uncertainty else None
        error = np.zeros((r1 - r0, cols), np.float32) if self.has_error_map else None
        best = np.zeros((r1 - r0, cols), np.float32)
        step = max(1, self.budget // ((r1 - r0) * cols * BYTES_PER_OUTPUT_PIXEL))
        for k in range(0, len(reach), step):
            chosen = reach[k:k + step]
            part = self.session.predict(self.boxes[chosen], region=region,
                                        out_shape=(r1 - r0, cols), **self._ask,
                                        clicks=self._clicks_of(chosen))
            for j, index in enumerate(chosen):
                prob = part.prob[j].max(axis=0)
                wins = prob > best
                best[wins] = prob[wins]
                labels[wins] = (self.class_value if self.class_value is not None
                                else self.first_id + index)
                if part.iou is not None:
                    self.iou[index] = part.iou[j]
            if uncertainty is not None and part.uncertainty is not None:
                np.maximum(uncertainty, spread(part.uncertainty.max(axis=(0, 1))),
                           out=uncertainty)
            if error is not None and part.error is not None:
                np.maximum(error, part.error.max(axis=0), out=error)
            del part
        labels[best <= self.threshold] = 0
        return Band(r0, labels, uncertainty, error)

    def outlines(self) -> list[list[np.ndarray]]:
        """Each box's sub-pixel outline, traced on its own window of the output grid."""
        return [self._outline(i) for i in range(len(self.boxes))]

    def _clicks_of(self, index: list[int]) -> list[Clicks | None] | None:
        return None if self.clicks is None else [self.clicks[i] for i in index]

    def _outline(self, i: int) -> list[np.ndarray]:
        window = window_of(self._extents[i], self._whole, self.shape)
        if window is None:
            return []
        r0, c0, r1, c1 = window
        sy, sx = self._whole[2] / self.shape[0], self._whole[3] / self.shape[1]
        region = (r0 * sy, c0 * sx, r1 * sy, c1 * sx)
        return boundary_polygons(self.session.predict(
            self.boxes[i:i + 1], region=region, out_shape=(r1 - r0, c1 - c0), **self._ask,
            clicks=self._clicks_of([i])))[0]


def box_windows(session: SegmentationSession,
                boxes: np.ndarray | Sequence[Sequence[float]], *, scale: float = 1.0,
                threshold: float = 0.5, clicks: Sequence[Clicks | None] | None = None,
                decoder: str | None = None,
                heads: Sequence[int | None] | None = None,
                ) -> Iterator[tuple[int, tuple[int, int, int, int], np.ndarray, np.ndarray | None]]:
    """Each object decoded alone on its own window of the image grid times ``scale``:
    ``(index, (r0, c0, r1, c1), mask (r1 - r0, c1 - c0) bool, std or None)``, in order;
    objects outside the grid are skipped. ``heads``: each object's class (None: the
    session's). Memory is one object's window, however many objects there are."""
    boxes = session.check_boxes(boxes, clicks)
    if not 0.25 <= scale <= 8:
        raise ValueError(f"scale must be between 0.25 and 8, got {scale}")
    mode = session.resolve_decoder(decoder) if decoder is not None else session.mode
    height, width = session.image_shape
    shape = output_grid((height, width), scale)
    whole = (0.0, 0.0, float(height), float(width))
    sy, sx = height / shape[0], width / shape[1]
    extents = boxes if clicks is None else session.extents(boxes, clicks, decoder=mode)
    for i, box in enumerate(boxes):
        window = window_of(extents[i], whole, shape)
        if window is None:
            continue
        r0, c0, r1, c1 = window
        part = session.predict(box[None], region=(r0 * sy, c0 * sx, r1 * sy, c1 * sx),
                               out_shape=(r1 - r0, c1 - c0), decoder=mode,
                               head=SESSION_HEAD if heads is None else heads[i],
                               clicks=None if clicks is None else [clicks[i]],
                               error_map=False)  # only the masks and the spread are used
        std = (spread(part.uncertainty[0].max(axis=0))
               if mode == "imedsam" and part.uncertainty is not None else None)
        yield i, window, part.masks(threshold)[0], std


def masks_box_by_box(session: SegmentationSession,
                     boxes: np.ndarray | Sequence[Sequence[float]], *, scale: float = 1.0,
                     threshold: float = 0.5, clicks: Sequence[Clicks | None] | None = None,
                     decoder: str | None = None, head: int | None = SESSION_HEAD,  # type: ignore[assignment]
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Each object's mask ``(N, H', W')`` bool on the image grid times ``scale``, and
    the uncertainty (:data:`UNCERTAINTY_QUANTITY`) ``(H', W')`` (None for SAM's decoder).

    What one ``predict`` call gives, but each object is decoded alone on its own
    window of the grid (:func:`box_windows`): the maps held at once are one object's
    window (10 bytes a pixel), not every object's whole grid, so memory is the masks'
    one byte a pixel per object and grows with neither the maps' size nor a 4 GB
    refusal. Callers that can fold each window in as it comes (``export.reproduce``)
    use :func:`box_windows` and hold no mask per object at all.
    """
    checked = session.check_boxes(boxes, clicks)
    mode = session.resolve_decoder(decoder) if decoder is not None else session.mode
    shape = output_grid(session.image_shape, scale) if 0.25 <= scale <= 8 else (0, 0)
    masks = np.zeros((len(checked), *shape), bool)
    uncertainty = np.zeros(shape, np.float32) if mode == "imedsam" else None
    for i, (r0, c0, r1, c1), mask, std in box_windows(
            session, checked, scale=scale, threshold=threshold, clicks=clicks, decoder=mode,
            heads=[head] * len(checked)):
        masks[i, r0:r1, c0:c1] = mask
        if uncertainty is not None and std is not None:
            np.maximum(uncertainty[r0:r1, c0:c1], std, out=uncertainty[r0:r1, c0:c1])
    return masks, uncertainty


def predict_merged(session: SegmentationSession, boxes: np.ndarray | Sequence[Sequence[float]],
                   *, scale: float = 1.0, first_id: int = 1, threshold: float = 0.5,
                   polygons: bool = False, budget: int | None = None) -> MergedResult:
    """:class:`BandMerge`'s bands gathered into whole arrays (and, optionally, the
    outlines of ``boxes``)."""
    merge = BandMerge(session, boxes, scale=scale, first_id=first_id, threshold=threshold,
                      budget=budget)
    labels = np.zeros(merge.shape, merge.dtype)
    uncertainty = np.zeros(merge.shape, np.float32) if merge.has_uncertainty else None
    for band in merge:
        rows = slice(band.row0, band.row0 + len(band.labels))
        labels[rows] = band.labels
        if uncertainty is not None and band.uncertainty is not None:
            uncertainty[rows] = band.uncertainty
    outlines = merge.outlines() if polygons else None
    return MergedResult(labels, uncertainty, merge.boxes, merge.iou, merge.mode, outlines)
