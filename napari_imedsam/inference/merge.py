"""Many boxes on a large grid, in memory that grows with neither.

:meth:`SegmentationSession.predict` returns one full-grid map per box, which is
what an interactive box needs and what a batch cannot afford: 500 boxes on a
1348 x 1070 image would hold 7 GB of maps, one box on a 6000 x 6000 image 360 MB
before any merging. :func:`predict_merged` walks the output grid in strips of
rows and, within a strip, takes as many of the boxes that reach it as fit a fixed
budget, folding each answer into one label image and one uncertainty map. Peak
memory is those two outputs plus the budget, whatever the image size or the
number of boxes. Outlines, when asked for, are traced box by box on the box's own
window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .session import BYTES_PER_OUTPUT_PIXEL, SegmentationSession, boundary_polygons, window_of

#: Bytes of per-box maps held at once while merging.
MERGE_BUDGET = 32 << 20


@dataclass
class MergedResult:
    """Every box's answer folded onto one ``H' x W'`` grid over the whole image."""

    labels: np.ndarray  # (H', W') int32: first_id + the box's index; 0 background
    uncertainty: np.ndarray | None  # (H', W') float32: max over boxes; None for SAM's decoder
    boxes: np.ndarray  # (N, 4) as used (clipped to the image)
    iou: np.ndarray  # (N,) the backbone's predicted IoU per box
    mode: str
    polygons: list[list[np.ndarray]] | None = None  # per box, (M, 2) y, x image pixels


def predict_merged(session: SegmentationSession, boxes: np.ndarray | Sequence[Sequence[float]],
                   *, scale: float = 1.0, first_id: int = 1, threshold: float = 0.5,
                   polygons: bool = False, budget: int = MERGE_BUDGET) -> MergedResult:
    """Labels (where boxes overlap, the most probable box wins, as in
    ``SegmentationResult.labels``), the uncertainty's maximum and optionally the
    outlines of ``boxes`` on the current image's grid times ``scale``."""
    boxes = session.check_boxes(boxes)
    if not 0.25 <= scale <= 8:
        raise ValueError(f"scale must be between 0.25 and 8, got {scale}")
    height, width = session.image_shape
    rows, cols = max(1, round(height * scale)), max(1, round(width * scale))
    whole = (0.0, 0.0, float(height), float(width))
    labels = np.zeros((rows, cols), np.int32)
    uncertainty = np.zeros((rows, cols), np.float32) if session.mode == "imedsam" else None
    ious = np.full(len(boxes), np.nan, np.float32)
    # Each box's rows on the output grid (its decoded window), to send it only to
    # the strips it reaches.
    spans = [window_of(box, whole, (rows, cols)) for box in boxes]
    strip = max(1, min(rows, budget // (cols * BYTES_PER_OUTPUT_PIXEL)))
    for r0 in range(0, rows, strip):
        r1 = min(rows, r0 + strip)
        reach = [i for i, w in enumerate(spans) if w is not None and w[0] < r1 and w[2] > r0]
        if not reach:
            continue
        region = (r0 * height / rows, 0.0, r1 * height / rows, float(width))
        best = np.zeros((r1 - r0, cols), np.float32)
        step = max(1, budget // ((r1 - r0) * cols * BYTES_PER_OUTPUT_PIXEL))
        for k in range(0, len(reach), step):
            chosen = reach[k:k + step]
            part = session.predict(boxes[chosen], region=region, out_shape=(r1 - r0, cols))
            for j, index in enumerate(chosen):
                prob = part.prob[j].max(axis=0)
                wins = prob > best
                best[wins] = prob[wins]
                labels[r0:r1][wins] = first_id + index
                if part.iou is not None:
                    ious[index] = part.iou[j]
            if uncertainty is not None and part.uncertainty is not None:
                np.maximum(uncertainty[r0:r1], part.uncertainty.max(axis=(0, 1)),
                           out=uncertainty[r0:r1])
            del part
        labels[r0:r1][best <= threshold] = 0
    outlines = [_outline(session, box, whole, (rows, cols)) for box in boxes] if polygons else None
    return MergedResult(labels, uncertainty, boxes, ious, session.mode, outlines)


def _outline(session: SegmentationSession, box: np.ndarray, whole: tuple[float, ...],
             shape: tuple[int, int]) -> list[np.ndarray]:
    """One box's sub-pixel outline, traced on its own window of the output grid."""
    window = window_of(box, whole, shape)
    if window is None:
        return []
    r0, c0, r1, c1 = window
    sy, sx = whole[2] / shape[0], whole[3] / shape[1]
    region = (r0 * sy, c0 * sx, r1 * sy, c1 * sx)
    return boundary_polygons(session.predict(box[None], region=region,
                                             out_shape=(r1 - r0, c1 - c0)))[0]
