"""Zoom preview for the Segment widget: sharper masks as the user zooms in.

The masks layer lives on the image grid, so zoomed in its edges are pixel
stairs. The implicit decoder can be queried anywhere, so once the screen shows
more than ~1.5 screen pixels per image pixel the objects in view are decoded
again on the visible region at (at least) screen resolution, into a Labels
layer "<image> preview" whose scale and translate put it exactly over the
image (see ``napari_imedsam.zoom``). Zoomed out, the preview is cleared.

Camera moves restart a 300 ms single-shot timer (debounce); the decoding runs
in a napari thread worker, one at a time; every camera move bumps a view
counter, so a result that arrives for an older view is dropped and the newest
waiting view runs next. The preview shows the model's output for the objects
whose boxes lie on the slice in view; it never changes the masks layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QVBoxLayout, QWidget

from .. import layers as wl
from ...boxes import Box, take_plane
from .settings import settings, stored_choices
from ...zoom import (
    PreviewJob,
    PreviewOutcome,
    ViewGeometry,
    box_in_region,
    plan_view,
    preview_body,
)
from .dock import SegmentDock

PREVIEW, BOUNDARY = "preview", "boundary"
DEBOUNCE_MS = 300
#: Boundary line width in screen pixels.
LINE_PX = 1.5


def camera_of(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, else ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def canvas_size(viewer: Any) -> tuple[int, int]:
    """The canvas size in screen pixels (height, width), across napari versions."""
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None) if canvas is not None else None
    if size is None:
        size = viewer._canvas_size  # napari < 0.6
    return int(size[0]), int(size[1])


def axis_aligned(layer: Any) -> bool:
    """True when ``layer`` maps data to world by scale and translate alone: only then
    can an axis-aligned preview grid sit exactly over it."""
    n = layer.ndim
    return (np.allclose(layer.rotate, np.eye(n)) and np.allclose(layer.shear, 0)
            and np.allclose(layer.affine.affine_matrix, np.eye(n + 1)))


class ZoomPreview(QWidget):
    """The "sharper mask when zoomed" and "boundary" checkboxes and what they drive."""

    def __init__(self, segment_widget: SegmentDock, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.widget = segment_widget
        self.viewer = segment_widget.viewer
        self.sharper = QCheckBox("sharper mask when zoomed")
        self.sharper.setToolTip(
            "Zoomed in, decode the objects in view again at screen resolution into the "
            "'<image> preview' layer (the masks layer keeps the image grid)")
        self.boundary = QCheckBox("sub-pixel boundary as a path")
        self.boundary.setToolTip("Also draw the objects' sub-pixel outlines in '<image> boundary'")
        stored = stored_choices()
        self.sharper.setChecked(stored.zoom_preview)
        self.boundary.setChecked(stored.zoom_boundary)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.sharper)
        layout.addWidget(self.boundary)

        #: Extra (object_id, box) pairs on a plane, e.g. boxes from propagation.
        self.more_boxes: Callable[[int | None], list[tuple[int, Box]]] | None = None
        self.layer: Labels | None = None
        self.paths: Shapes | None = None
        self._gen = 0  # bumped by every view change: older results are stale
        self._worker: Any = None
        self._pending: PreviewJob | None = None
        self._hidden_by_us = False
        self._last_error = ""
        self._watched: Any = None  # the masks layer whose edits re-trigger the preview
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.update_now)

        camera = camera_of(self.viewer)
        camera.events.zoom.connect(self.schedule)
        camera.events.center.connect(self.schedule)
        self.viewer.dims.events.current_step.connect(self.schedule)
        self.viewer.dims.events.ndisplay.connect(self.schedule)
        self.viewer.layers.events.removed.connect(self._on_removed)
        for box, key in ((self.sharper, "zoom_preview"), (self.boundary, "zoom_boundary")):
            box.toggled.connect(lambda on, k=key: settings().setValue(k, "true" if on else "false"))
            box.toggled.connect(self.schedule)

    # -- scheduling ------------------------------------------------------------
    def schedule(self, *_: Any) -> None:
        """A view or mask changed: decode again once things are still for a moment."""
        self._gen += 1
        self._timer.start()

    @property
    def busy(self) -> bool:
        """True while a preview is decoding, waiting, or about to be planned."""
        return self._worker is not None or self._pending is not None or self._timer.isActive()

    def update_now(self) -> None:
        """Plan the current view and decode it (or clear the preview)."""
        volume = getattr(self.widget, "volume", None)
        if self.widget.busy or (volume is not None and volume.propagating):
            # Boxes and propagation first (they share the model): the preview is a
            # nicety and would hold the session for seconds on a CPU.
            self._timer.start()
            return
        try:
            job = self._plan()
        except Exception as exc:  # noqa: BLE001 - never break the viewer over a preview
            self._notify(f"I-MedSAM: no zoom preview: {exc}")
            job = None
        if job is None:
            self._pending = None
            self.clear()
            return
        if self._worker is not None:
            self._pending = job  # replaces any older waiting view
            return
        self._run(job)

    def _run(self, job: PreviewJob) -> None:
        worker = create_worker(preview_body, self.widget.holder, job, _start_thread=False)
        worker.returned.connect(self._on_outcome)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def _on_finished(self) -> None:
        self._worker = None
        job, self._pending = self._pending, None
        if job is not None and job.gen == self._gen:
            self._run(job)

    # -- planning ----------------------------------------------------------------
    def _plan(self) -> PreviewJob | None:
        """The job for the current view, or None when there is nothing to preview."""
        w, viewer = self.widget, self.viewer
        image, boxes, masks = w.image, w.boxes, w.masks
        if not self.sharper.isChecked() or viewer.dims.ndisplay != 2:
            return None
        if image is None or boxes is None or masks is None or image not in viewer.layers:
            return None
        self._watch(masks)
        ndim = viewer.dims.ndim
        if tuple(viewer.dims.displayed) != (ndim - 2, ndim - 1) or not axis_aligned(image):
            return None  # rotated or re-ordered views: the grid would not line up
        spatial = wl.image_spatial_shape(image)
        camera = camera_of(viewer)
        view = plan_view(camera.center[-2:], camera.zoom, canvas_size(viewer),
                         image.scale[-2:], image.translate[-2:], spatial[-2:])
        if view is None:
            return None
        plane = None
        if len(spatial) == 3:
            plane = int(round(float(image.world_to_data(viewer.dims.point)[0])))
            if not 0 <= plane < spatial[0]:
                return None
        ids, object_boxes, heads, clicks = self._objects(plane, view, spatial)
        if not ids:
            return None
        data = wl.level0(image)
        return PreviewJob(self._gen, w.settings.spec(), take_plane(data, plane), plane,
                          w.settings.window(), object_boxes, ids, view,
                          self.boundary.isChecked(), heads, clicks)

    def _objects(self, plane: int | None, view: ViewGeometry, spatial: tuple[int, ...]
                 ) -> tuple[list[int], list[Box], list[int | None], list[Any]]:
        """Objects with a box on ``plane`` that overlaps the view and pixels in the masks
        (an object whose pixels were undone or cleared is not previewed): ids, boxes,
        classes (several boxes may share an id when masks carry their class's value) and
        clicks."""
        w = self.widget
        boxes, image = w.boxes, w.image
        points = None if w.state is None else w.state.points
        # (id, prompt box, class, clicks, rectangle): a frame (clicks alone) is no prompt.
        found = [(item.object_id, item.prompt_box, item.head,
                  wl.clicks_of(points, image, item.key, item.plane), item.box)
                 for item in wl.box_items(boxes, image) if plane is None or item.plane == plane]
        if self.more_boxes is not None:  # slices a propagation labelled
            drawn = {f[0] for f in found}
            found += [(object_id, box, None, None, box)
                      for object_id, box in self.more_boxes(plane) if object_id not in drawn]
        labels = w.masks.data if plane is None else w.masks.data[plane]
        present = set(np.unique(labels).tolist())
        keep = [f for f in found if f[0] in present and box_in_region(f[4], view.region)]
        return ([f[0] for f in keep], [f[1] for f in keep], [f[2] for f in keep],
                [f[3] for f in keep])

    def _watch(self, masks: Labels) -> None:
        """Re-decode when the masks change (a new object, a clear, a brush stroke)."""
        if self._watched is masks:
            return
        if self._watched is not None:
            self._watched.events.paint.disconnect(self.schedule)
        masks.events.paint.connect(self.schedule)
        self._watched = masks

    # -- results -> layers ---------------------------------------------------------
    def _on_outcome(self, outcome: PreviewOutcome) -> None:
        try:
            if outcome.job.gen != self._gen:
                return  # the view changed meanwhile: a newer job is planned
            if outcome.error is not None:
                self._notify(f"I-MedSAM: zoom preview failed: {outcome.error}")
                return
            self._show(outcome)
        except Exception as exc:  # noqa: BLE001
            self._notify(f"I-MedSAM: could not show the zoom preview: {exc}")

    def _show(self, outcome: PreviewOutcome) -> None:
        image, masks = self.widget.image, self.widget.masks
        if image is None or masks is None or image not in self.viewer.layers:
            return
        job, view = outcome.job, outcome.job.view
        scale, translate = list(view.scale), list(view.translate)
        data = outcome.labels
        if job.plane is not None:  # one plane of a volume: only shown on that slice
            data = data[None]
            scale = [float(image.scale[0])] + scale
            translate = [float(image.translate[0] + image.scale[0] * job.plane)] + translate
        layer = self._preview_layer(image, masks, data, scale, translate)
        layer.colormap = masks.colormap  # the same colours as the objects in "masks"
        if self._hidden_by_us:
            layer.visible = True  # (a preview the user hid stays hidden)
            self._hidden_by_us = False
        self._show_paths(outcome, image, masks)

    def _preview_layer(self, image: Image, masks: Labels, data: np.ndarray,
                       scale: list[float], translate: list[float]) -> Labels:
        """The preview layer holding ``data`` at ``scale``/``translate`` (made if needed).

        A new layer gets its geometry at creation: a layer that sat at the origin
        even for a moment would widen the viewer's slider range and move the slice
        in view.
        """
        name = f"{image.name} {PREVIEW}"
        layer = self.layer
        if layer is not None and (layer not in self.viewer.layers or layer.ndim != data.ndim
                                  or layer.name != name):
            self._remove(layer)
            layer = None
        if layer is None:
            layer = Labels(data, name=name, opacity=0.7, scale=scale, translate=translate,
                           units=tuple(image.units),
                           metadata={"napari_imedsam": PREVIEW, wl.IMAGE_KEY: image.name})
            self._insert_above(layer, masks)
            self.layer = layer
        else:
            layer.data = data
            layer.scale, layer.translate = scale, translate
        return layer

    def _show_paths(self, outcome: PreviewOutcome, image: Image, masks: Labels) -> None:
        if not outcome.job.boundary or not outcome.paths:
            if self.paths is not None and self.paths in self.viewer.layers:
                self.paths.data = []
            return
        plane = outcome.job.plane
        name = f"{image.name} {BOUNDARY}"
        ndim = 2 if plane is None else 3
        width = LINE_PX / (camera_of(self.viewer).zoom * min(abs(s) for s in image.scale[-2:]))
        paths = [p if plane is None else np.column_stack([np.full(len(p), plane), p])
                 for _, p in outcome.paths]
        colors = [masks.get_color(object_id) for object_id, _ in outcome.paths]
        layer = self.paths
        if layer is None or layer not in self.viewer.layers or layer.ndim != ndim \
                or layer.name != name:
            if layer is not None:
                self._remove(layer)
            # (An empty Shapes layer has no extent, so creating one never moves the view.)
            layer = Shapes(ndim=ndim, name=name, scale=image.scale, translate=image.translate,
                           units=tuple(image.units),
                           metadata={"napari_imedsam": BOUNDARY, wl.IMAGE_KEY: image.name})
            self._insert_above(layer, self.layer or masks)
            self.paths = layer
        layer.scale, layer.translate = image.scale, image.translate
        layer.data = []
        layer.add_paths(paths, edge_width=width, edge_color=colors)

    def _insert_above(self, layer: Any, below: Any) -> None:
        """Put ``layer`` just above ``below``, keeping the user's active layer active."""
        active = self.viewer.layers.selection.active
        index = self.viewer.layers.index(below) + 1 if below in self.viewer.layers else None
        if index is None:
            self.viewer.layers.append(layer)
        else:
            self.viewer.layers.insert(index, layer)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    def clear(self) -> None:
        """Back to the image grid: hide the preview (and boundary) and free their data."""
        layer = self.layer
        if layer is not None and layer in self.viewer.layers:
            if layer.data.size > 1:
                layer.data = np.zeros((1,) * layer.ndim, np.int32)
            if layer.visible:
                layer.visible = False
                self._hidden_by_us = True
        if self.paths is not None and self.paths in self.viewer.layers and len(self.paths.data):
            self.paths.data = []

    def _remove(self, layer: Any) -> None:
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _on_removed(self, event: Any) -> None:
        if event.value is self.layer:
            self.layer, self._hidden_by_us = None, False
        elif event.value is self.paths:
            self.paths = None

    def _notify(self, text: str) -> None:
        """Warn once per distinct problem: a preview fails again on every camera move."""
        self.widget.set_status(text)
        if text != self._last_error:
            self._last_error = text
            show_warning(text)
