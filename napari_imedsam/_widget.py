"""The Segment dock widget: draw a box, get a mask (and its uncertainty).

Flow: a rectangle added to or edited in the "boxes" layer becomes a
:class:`~napari_imedsam._segment_worker.Request`; requests run one at a time
in a napari thread worker (the model loads lazily in the first one); a newer
request for the same box replaces a queued one and makes a running one stale,
so only the latest box geometry ever reaches the "masks" layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget,
)

from . import _widget_layers as wl
from ._segment_worker import (
    Outcome, Request, SessionHolder, box_from_vertices, check_image, compose, crop_nonzero,
    plane_index, segment, spatial_shape, take_plane,
)
from ._widget_download import DownloadControls
from ._widget_export import ExportControls
from ._widget_settings import SettingsForm
from ._widget_volume import VolumeTools
from ._widget_zoom import ZoomPreview

HELP = (
    "Draw a rectangle around an object in the <b>boxes</b> layer: its mask appears in "
    "<b>masks</b> with the next free id. Move or resize the box to redo that object.<br>"
    "<b>Shift+A</b> accept the current object (its box turns grey and stays as it is), "
    "then draw the next one. <b>Shift+C</b> clear the current (or selected) object and its box. "
    "<b>Ctrl+Z</b> (boxes or masks layer active) undo the last mask change.<br>"
    "Volumes: the box applies to the slice in view."
)
NO_UNCERTAINTY = (
    "Base-model mode: the backbone's own mask decoder gives no uncertainty. For an "
    "uncertainty map choose the I-MedSAM decoder (the medsam_lite model has one), or "
    "load an I-MedSAM adapter for a SAM model."
)


class SegmentWidget(QWidget):
    """Dock widget for box-prompted segmentation of the chosen image layer."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._holder = SessionHolder()
        self._queue: dict[int, Request] = {}  # box_key -> newest waiting request
        self._latest: dict[int, int] = {}  # box_key -> req_id of the newest request
        self._last_box: dict[int, tuple] = {}  # box_key -> (plane, box) last sent
        self._unc_parts: dict[int, tuple[int | None, tuple[int, int], np.ndarray]] = {}
        self._worker: Any = None
        self._current: int | None = None  # box_key of the object being worked on
        self._told_no_uncertainty = False
        self._binding = False
        self.image: Image | None = None
        self.boxes: Shapes | None = None
        self.masks: Labels | None = None
        self.uncertainty: Image | None = None
        self._build_ui()
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self._on_layers_changed()

    # -- UI ----------------------------------------------------------------
    def _build_ui(self) -> None:
        self.image_combo = QComboBox()
        self.settings = SettingsForm()
        # Short names for the fields (scripts and tests set them directly).
        form = self.settings
        self.model_combo, self.adapter_edit = form.model_combo, form.adapter_edit
        self.device_combo, self.window_combo = form.device_combo, form.window_combo
        self.show_unc = form.show_unc
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        help_label = QLabel(HELP)
        help_label.setWordWrap(True)

        image_row = QFormLayout()
        image_row.setContentsMargins(0, 0, 0, 0)
        image_row.addRow("image", self.image_combo)
        buttons = QHBoxLayout()
        for text, slot in (("Accept (Shift+A)", self.accept_current),
                           ("Clear (Shift+C)", self.clear_current)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(image_row)
        layout.addWidget(self.settings)
        layout.addLayout(buttons)
        # Zoom preview and volume tools: their own modules, hooked in here only.
        self.zoom, self.volume = ZoomPreview(self), VolumeTools(self)
        self.zoom.more_boxes = self.volume.boxes_on_plane
        layout.addWidget(self.zoom)
        layout.addWidget(self.volume)
        # Export and weights download: their own modules, hooked in here only.
        self.export, self.downloads = ExportControls(self), DownloadControls(self._holder)
        layout.addWidget(self.export)
        layout.addWidget(self.downloads)
        layout.addWidget(self.status)
        layout.addWidget(help_label)
        layout.addStretch(1)

        self.image_combo.currentTextChanged.connect(lambda _: self._bind_layers())
        # Choosing the same image again re-creates boxes/masks layers the user deleted.
        self.image_combo.activated.connect(lambda _: self._bind_layers())
        self.show_unc.toggled.connect(self._toggle_uncertainty)

    def use_model(self, model: Any) -> None:
        """Segment with an already built model object (scripts, tests) instead of a name."""
        self._holder.pinned = model

    @property
    def pinned_model(self) -> Any:
        """The model given to :meth:`use_model`, or None when the settings name it."""
        return self._holder.pinned

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    # -- layers --------------------------------------------------------------
    def _on_layers_changed(self, event: Any = None) -> None:
        """Keep the image list current; forget our layers when the user deletes them.

        Layers are only ever created when an image is chosen or first appears,
        never in answer to a removal: napari removes every layer one by one when
        it closes, and re-creating them there would never end.
        """
        for attr in ("image", "boxes", "masks", "uncertainty"):
            if getattr(self, attr) is not None and getattr(self, attr) not in self.viewer.layers:
                setattr(self, attr, None)
        inserted = event is not None and getattr(event, "type", "") == "inserted"
        if inserted and isinstance(event.value, Image):
            event.value.events.name.connect(self._on_layers_changed)
        names = [layer.name for layer in self.viewer.layers
                 if isinstance(layer, Image) and not wl.is_ours(layer, wl.UNCERTAINTY)]
        current = self.image_combo.currentText()
        if names != [self.image_combo.itemText(i) for i in range(self.image_combo.count())]:
            self.image_combo.blockSignals(True)
            self.image_combo.clear()
            self.image_combo.addItems(names)
            if current in names:
                self.image_combo.setCurrentText(current)
            self.image_combo.blockSignals(False)
        if self.image is not None or self._binding:
            return
        if names and (event is None or inserted):
            self._bind_layers()
        elif names:
            self.set_status("the image was removed: choose an image to segment")
        else:
            self.set_status("add an image layer (File > Open, or File > Open Sample > I-MedSAM)")

    def _bind_layers(self) -> None:
        """Point the widget at the chosen image, with boxes and masks layers to match."""
        name = self.image_combo.currentText()
        image = self.viewer.layers[name] if name in self.viewer.layers else None
        if not isinstance(image, Image):
            self.set_status("add an image layer (File > Open, or File > Open Sample > I-MedSAM)")
            return
        shape = image.data[0].shape if image.multiscale else image.data.shape
        try:
            check_image(shape, image.rgb)
        except ValueError as exc:
            self.image = None  # boxes drawn now get "choose an image", not a wrong image
            show_warning(f"I-MedSAM cannot use layer '{name}': {exc}")
            self.set_status(f"'{name}' cannot be segmented: {exc}")
            return
        spatial = spatial_shape(shape, image.rgb)
        if self.boxes is not None:
            self.boxes.events.data.disconnect(self._on_boxes_data)
        if image is not self.image:
            # Per-object state belongs to the previous image's boxes: an uncertainty
            # part kept from it would be drawn over the new image.
            self._unc_parts.clear()
            self._last_box.clear()
            self._latest.clear()
            self._queue.clear()
            self._current = None
        self.image = image
        self._binding = True  # adding layers below re-enters _on_layers_changed
        try:
            self.masks = wl.find_or_add_masks(self.viewer, image, spatial)
            self.boxes = wl.find_or_add_boxes(self.viewer, image, len(spatial))
        finally:
            self._binding = False
        self.boxes.events.data.connect(self._on_boxes_data)
        for key, action in (("Shift-A", self.accept_current), ("Shift-C", self.clear_current),
                            ("Control-Z", self._undo)):
            self.boxes.bind_key(key, lambda _layer, f=action: f(), overwrite=True)
        self.viewer.layers.selection.active = self.boxes
        self.boxes.mode = "add_rectangle"
        self.set_status(f"ready: draw a box on '{name}'")

    def _toggle_uncertainty(self, visible: bool) -> None:
        if self.uncertainty is not None:
            self.uncertainty.visible = visible

    # -- boxes -> requests -----------------------------------------------------
    def _on_boxes_data(self, event: Any) -> None:
        # Never let an exception escape into napari's event loop.
        try:
            action = str(event.action)
            if action == "removing":
                self._forget_rows(event.data_indices)
            elif action == "added":
                self._request_rows(wl.assign_keys(self.boxes))
            elif action == "changed":
                self._request_rows([i for i in event.data_indices if 0 <= i < len(self.boxes.data)])
        except Exception as exc:  # noqa: BLE001
            show_error(f"I-MedSAM: could not handle the box: {exc}")

    def _request_rows(self, rows: list[int]) -> None:
        image, boxes = self.image, self.boxes
        if image is None or image not in self.viewer.layers or boxes is None:
            show_warning("I-MedSAM: choose an image layer in the Segment widget first")
            return
        spatial = wl.image_spatial_shape(image)
        for row in rows:
            key = int(boxes.features["box_key"].iloc[row])
            if bool(boxes.features["accepted"].iloc[row]):
                show_info("I-MedSAM: that object is accepted and stays as it is; "
                          "clear it (Shift+C) to redo it")
                continue
            verts = wl.vertices_in_image(boxes, image, row)
            try:
                plane = plane_index(verts[:, 0], spatial[0]) if len(spatial) == 3 else None
                box = box_from_vertices(verts[:, -2:], spatial[-2:])
            except ValueError as exc:
                show_warning(f"I-MedSAM: {exc}")
                continue
            if self._last_box.get(key) == (plane, box):
                continue  # a move that ended where it started: nothing new to compute
            self._last_box[key] = (plane, box)
            data = image.data[0] if image.multiscale else image.data
            request = Request(key, self.settings.spec(), take_plane(data, plane), plane, box,
                              self.settings.window())
            self._latest[key] = request.req_id
            self._queue.pop(key, None)  # re-insert: the newest request goes last
            self._queue[key] = request
            self._current = key
        self._start_next()

    def _start_next(self) -> None:
        """Run the oldest waiting request unless one is running (the session is not
        thread-safe, and one at a time keeps the CPU free for the viewer)."""
        if self._worker is not None or not self._queue:
            return
        key = next(iter(self._queue))
        if not self.downloads.ensure(self._queue[key].spec, self._start_next, self._drop_waiting):
            return  # the model's weights download first, then this runs again
        request = self._queue.pop(key)
        worker = create_worker(segment, self._holder, request, _start_thread=False)
        worker.yielded.connect(self.set_status)
        worker.returned.connect(self._on_outcome)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        worker.start()

    def _on_worker_finished(self) -> None:
        self._worker = None
        if self._queue:
            self._start_next()

    def _drop_waiting(self, message: str) -> None:
        """The model cannot be had (download cancelled or failed): forget the waiting
        boxes, so that drawing or nudging them again retries."""
        for key in self._queue:
            self._last_box.pop(key, None)
        self._queue.clear()
        self.set_status(message)

    @property
    def busy(self) -> bool:
        """True while a request runs or waits."""
        return self._worker is not None or bool(self._queue)

    # -- results -> layers ---------------------------------------------------------
    def _on_outcome(self, outcome: Outcome) -> None:
        try:
            self._apply(outcome)
        except Exception as exc:  # noqa: BLE001
            show_error(f"I-MedSAM: could not write the mask: {exc}")

    def _apply(self, outcome: Outcome) -> None:
        request = outcome.request
        key = request.box_key
        if self._latest.get(key) != request.req_id:
            return  # superseded by a newer request for this box, or the box was deleted
        boxes, image = self.boxes, self.image
        row = None if boxes is None else wl.row_of(boxes, key)
        if outcome.error is not None:
            self._last_box.pop(key, None)  # let the same box be tried again
            show_error(f"I-MedSAM: {outcome.error}")
            self.set_status(f"failed: {outcome.error}")
            return
        if row is None or image is None:
            return
        if self.masks is None:  # the user deleted it: start a new one
            self.masks = wl.find_or_add_masks(self.viewer, image, wl.image_spatial_shape(image))
        object_id = int(boxes.features["object_id"].iloc[row]) or wl.next_free_id(self.masks, boxes)
        written = wl.write_object(self.masks, outcome.mask, request.plane, object_id)
        wl.set_feature(boxes, row, "object_id", object_id)
        self.masks.selected_label = object_id  # brush corrections continue this object
        if not outcome.mask.any():
            show_warning("I-MedSAM: no object found in the box; draw it tighter around the object")
        elif written == 0:
            show_info("I-MedSAM: the object lies entirely under other objects; nothing was written")
        self._show_uncertainty(key, request.plane, outcome.uncertainty)
        decoder = "I-MedSAM decoder" if outcome.mode == "imedsam" else "base model's decoder"
        note = f"object {object_id}: {written} pixels ({decoder}; encoder {outcome.encoder})"
        if outcome.mode == "sam":
            note += ". " + NO_UNCERTAINTY
            if not self._told_no_uncertainty:
                self._told_no_uncertainty = True
                show_info(f"I-MedSAM: {NO_UNCERTAINTY}")
        # The worker that produced this outcome is still finishing: only queued
        # requests mean more work.
        self.set_status(note + "; more boxes waiting..." if self._queue else note)

    def _show_uncertainty(self, key: int, plane: int | None, unc: np.ndarray | None) -> None:
        part = None if unc is None else crop_nonzero(unc)
        if part is None:
            if self._unc_parts.pop(key, None) is None:
                return
        else:
            self._unc_parts[key] = (plane, *part)
        self._redraw_uncertainty(plane)

    def _redraw_uncertainty(self, plane: int | None) -> None:
        image, masks = self.image, self.masks
        if image is None or masks is None:
            return
        if self.uncertainty is None:
            if not self._unc_parts:
                return
            self.uncertainty = wl.find_or_add_uncertainty(self.viewer, image, masks.data.shape)
            self.uncertainty.visible = self.show_unc.isChecked()
        parts = [(origin, crop) for p, origin, crop in self._unc_parts.values() if p == plane]
        wl.show_plane(self.uncertainty, plane, compose(masks.data.shape[-2:], parts))

    # -- hotkeys -------------------------------------------------------------------
    def _current_row(self) -> int | None:
        """The selected box if exactly one is selected, else the last one worked on."""
        boxes = self.boxes
        if boxes is None:
            return None
        if len(boxes.selected_data) == 1:
            return int(next(iter(boxes.selected_data)))
        return None if self._current is None else wl.row_of(boxes, self._current)

    def accept_current(self) -> None:
        """Commit the current object: later edits of its box no longer change it."""
        row = self._current_row()
        if row is None:
            show_info("I-MedSAM: no current object to accept; draw a box first")
            return
        wl.set_feature(self.boxes, row, "accepted", True)
        wl.recolor(self.boxes)
        self._current = None
        self.boxes.selected_data = set()
        self.boxes.mode = "add_rectangle"
        self.set_status("object accepted: draw the next box")

    def clear_current(self) -> None:
        """Remove the current object's pixels (undoable) and its box."""
        row = self._current_row()
        if row is None:
            show_info("I-MedSAM: no current object to clear")
            return
        object_id = int(self.boxes.features["object_id"].iloc[row])
        if object_id and self.masks is not None:
            wl.clear_object(self.masks, object_id)  # accepted ones too: the user asked for it
        self.boxes.selected_data = {row}
        self.boxes.remove_selected()  # -> "removing" event -> bookkeeping in _forget_rows
        self.boxes.mode = "add_rectangle"
        self.set_status("object cleared")

    def _forget_rows(self, rows: tuple[int, ...]) -> None:
        """A box is being deleted: drop its requests, and its mask unless accepted."""
        boxes = self.boxes
        planes = set()
        for row in rows:
            if not 0 <= row < len(boxes.features):
                continue
            key = int(boxes.features["box_key"].iloc[row])
            self._queue.pop(key, None)
            self._latest.pop(key, None)  # a running request for it becomes stale
            self._last_box.pop(key, None)
            part = self._unc_parts.pop(key, None)
            if part is not None:
                planes.add(part[0])
            object_id = int(boxes.features["object_id"].iloc[row])
            if object_id and not bool(boxes.features["accepted"].iloc[row]) \
                    and self.masks is not None:
                wl.clear_object(self.masks, object_id)
            if self._current == key:
                self._current = None
        for plane in planes:
            self._redraw_uncertainty(plane)

    def _undo(self) -> None:
        if self.masks is not None:
            self.masks.undo()
