"""Geometry and worker body of the zoom preview (no Qt, no napari imports).

When the user zooms in, the implicit decoder is queried again on the part of
the image in view, at (at least) one sample per screen pixel. This module
answers the pure questions -- which image pixels are visible, how finely to
sample them, where the resulting grid sits in the world -- and runs the
decoding for a worker thread.

Conventions. napari puts image pixel ``i`` at data coordinate ``i`` (its
centre); world = translate + scale * data. The session's regions use pixel
edges: pixel ``i`` spans ``[i, i + 1]``. A preview grid of ``n`` cells over the
edge interval ``[e0, e1]`` has cell ``j`` centred at edge coordinate
``e0 + (j + 0.5) * step`` with ``step = (e1 - e0) / n``, i.e. at data
coordinate ``e0 - 0.5 + (j + 0.5) * step``; a layer with
``scale = s * step`` and ``translate = t + s * (e0 - 0.5 + step / 2)`` puts
it exactly over the image.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .boxes import Box, Region
from .session_holder import ModelSpec, SessionError, SessionHolder


#: Below this many screen pixels per image pixel the image grid is already
#: as sharp as the screen: no preview (and the layer is cleared).
MIN_SCREEN_PER_PIXEL = 1.5
#: Cap on the preview's size (samples): a 2k x 2k canvas fits.
MAX_POINTS = 4_000_000
#: Cap on samples per image pixel (per axis) at extreme zoom.
MAX_FACTOR = 64


@dataclass(frozen=True)
class ViewGeometry:
    """Where and how finely to decode the visible part of one image plane."""

    region: Region  # whole image pixels, clipped to the plane
    out_shape: tuple[int, int]  # samples (rows, cols)
    scale: tuple[float, float]  # the preview layer's spatial scale (y, x)
    translate: tuple[float, float]  # ... and translate, in world units

    @property
    def factors(self) -> tuple[float, float]:
        """Samples per image pixel along y and x."""
        y0, x0, y1, x1 = self.region
        return self.out_shape[0] / (y1 - y0), self.out_shape[1] / (x1 - x0)


def visible_region(center_yx: Sequence[float], zoom: float, canvas_hw: Sequence[int],
                   scale_yx: Sequence[float], translate_yx: Sequence[float],
                   plane_hw: Sequence[int]) -> Region | None:
    """The image pixels in view, as a pixel-edge region snapped outward to whole
    pixels and clipped to the plane; None when none of the image is in view.

    ``center_yx`` is the camera centre in world units, ``zoom`` screen pixels
    per world unit, ``canvas_hw`` the canvas size in screen pixels.
    """
    if zoom <= 0:
        return None
    out = []
    for c, size, s, t, n in zip(center_yx, canvas_hw, scale_yx, translate_yx, plane_hw):
        half = size / (2.0 * zoom)  # world units from the centre to the canvas edge
        lo, hi = sorted(((c - half - t) / s + 0.5, (c + half - t) / s + 0.5))  # -> pixel edges
        lo, hi = max(0, math.floor(lo)), min(int(n), math.ceil(hi))
        if hi <= lo:
            return None
        out.append((float(lo), float(hi)))
    (y0, y1), (x0, x1) = out
    return y0, x0, y1, x1


def sample_factors(zoom: float, scale_yx: Sequence[float],
                   threshold: float = MIN_SCREEN_PER_PIXEL) -> tuple[int, int] | None:
    """Whole samples per image pixel (y, x) so the preview is at least as fine as the
    screen; None when zoomed out to ``threshold`` screen pixels per image pixel or less."""
    per_pixel = [zoom * abs(s) for s in scale_yx]
    if max(per_pixel) <= threshold:
        return None
    # Whole factors make preview cells nest exactly inside image pixels.
    fy, fx = (min(MAX_FACTOR, max(1, math.ceil(p - 1e-6))) for p in per_pixel)
    return fy, fx


def preview_transform(region: Region, out_shape: tuple[int, int], scale_yx: Sequence[float],
                      translate_yx: Sequence[float]) -> tuple[tuple[float, float],
                                                              tuple[float, float]]:
    """``(scale, translate)`` of a layer holding an ``out_shape`` grid sampled over
    ``region``, so it lies exactly over an image with ``scale_yx`` / ``translate_yx``."""
    y0, x0, y1, x1 = region
    steps = ((y1 - y0) / out_shape[0], (x1 - x0) / out_shape[1])
    scale = tuple(float(s * step) for s, step in zip(scale_yx, steps))
    translate = tuple(float(t + s * (e0 - 0.5 + step / 2))
                      for t, s, e0, step in zip(translate_yx, scale_yx, (y0, x0), steps))
    return scale, translate  # type: ignore[return-value]


def plan_view(center_yx: Sequence[float], zoom: float, canvas_hw: Sequence[int],
              scale_yx: Sequence[float], translate_yx: Sequence[float],
              plane_hw: Sequence[int], *, threshold: float = MIN_SCREEN_PER_PIXEL,
              max_points: int = MAX_POINTS) -> ViewGeometry | None:
    """Everything the preview needs for the current view, or None for "no preview"
    (zoomed out, or the image out of view)."""
    factors = sample_factors(zoom, scale_yx, threshold)
    region = visible_region(center_yx, zoom, canvas_hw, scale_yx, translate_yx, plane_hw)
    if factors is None or region is None:
        return None
    y0, x0, y1, x1 = region
    rows, cols = int(y1 - y0), int(x1 - x0)
    fy, fx = factors
    while rows * fy * cols * fx > max_points and max(fy, fx) > 1:
        if fy >= fx:  # coarsen the finer axis first
            fy -= 1
        else:
            fx -= 1
    if rows * fy * cols * fx > max_points or (fy, fx) == (1, 1):
        return None  # a huge canvas: nothing finer than the image grid fits
    out_shape = (rows * fy, cols * fx)
    scale, translate = preview_transform(region, out_shape, scale_yx, translate_yx)
    return ViewGeometry(region, out_shape, scale, translate)


def box_in_region(box: Box, region: Region) -> bool:
    """Whether an (x0, y0, x1, y1) edge box overlaps a (y0, x0, y1, x1) region."""
    bx0, by0, bx1, by1 = box
    y0, x0, y1, x1 = region
    return bx0 < x1 and bx1 > x0 and by0 < y1 and by1 > y0


def preview_labels(prob: np.ndarray, object_ids: Sequence[int],
                   threshold: float = 0.5) -> np.ndarray:
    """``(N, H, W)`` per-object probability -> ``(H, W)`` int32 labels with the
    objects' ids; where objects overlap the most probable one wins."""
    if len(object_ids) == 0:
        return np.zeros(prob.shape[1:], np.int32)
    ids = np.asarray(object_ids, np.int32)
    winner = prob.argmax(axis=0)
    return np.where(prob.max(axis=0) > threshold, ids[winner], 0).astype(np.int32)


@dataclass
class PreviewJob:
    """One view to decode: the plane, its objects' boxes and the geometry."""

    gen: int  # the controller's view counter: only the newest job's result is shown
    spec: ModelSpec
    image: np.ndarray  # the 2D plane in view
    plane: int | None
    window: str | None
    boxes: list[Box]
    object_ids: list[int]
    view: ViewGeometry
    boundary: bool = False
    #: Each box's class (decoder head), for models with several; None: the spec's.
    heads: list[int | None] = field(default_factory=list)
    #: Each box's clicks (``inference.session.Clicks``) or None.
    clicks: list[Any] = field(default_factory=list)


@dataclass
class PreviewOutcome:
    """A decoded view: labels on the view's grid, optional boundary paths, or an error."""

    job: PreviewJob
    labels: np.ndarray | None = None
    #: (object_id, (M, 2) path in the image's data coordinates (row, col)) pairs
    paths: list[tuple[int, np.ndarray]] = field(default_factory=list)
    error: str | None = None


def preview_body(holder: SessionHolder, job: PreviewJob) -> PreviewOutcome:
    """Worker body: decode ``job``'s boxes on its view (never raises)."""
    heads = job.heads or [None] * len(job.boxes)
    prob = np.zeros((len(job.boxes), *job.view.out_shape), np.float32)
    paths: list[tuple[int, np.ndarray]] = []
    try:
        # One decode per class in view: each box is answered by its own class.
        for head in sorted(set(heads), key=lambda h: -1 if h is None else h):
            index = [i for i, h in enumerate(heads) if h == head]
            spec = job.spec if head is None else dataclasses.replace(job.spec, head=head)
            clicks = [job.clicks[i] for i in index] if job.clicks else []
            result, _ = holder.run(spec, job.image, [job.boxes[i] for i in index],
                                   window=job.window, region=job.view.region,
                                   out_shape=job.view.out_shape,
                                   clicks=clicks if any(c is not None for c in clicks) else None)
            prob[index] = result.prob.max(axis=1)
            if job.boundary:
                from .inference.session import boundary_polygons

                for i, polygons in zip(index, boundary_polygons(result)):
                    # pixel edges -> napari data coordinates (pixel centres)
                    paths += [(job.object_ids[i], poly - 0.5) for poly in polygons
                              if len(poly) >= 2]
    except SessionError as exc:  # a failed preview only notifies
        return PreviewOutcome(job, error=str(exc))
    return PreviewOutcome(job, labels=preview_labels(prob, job.object_ids), paths=paths)
