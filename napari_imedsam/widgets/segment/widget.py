"""The Segment dock widget: draw a box, get a mask (and its uncertainty).

Flow: a rectangle added to or edited in an image's boxes layer becomes a
:class:`~napari_imedsam.session_holder.Request`; requests run one at a time
in a napari thread worker (the model loads lazily in the first one); a newer
request for the same box replaces a queued one and makes a running one stale,
so only the latest box geometry ever reaches the masks layer.

Several images: each has its own layers and bookkeeping (``state``);
the widget follows the image the user selects or opened last, shows that
image with its layers and hides the others' (so boxes are never drawn over the
wrong picture): the ``follow`` section. Undo/redo take a box and its mask
together (``journal``).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFormLayout, QFrame, QHBoxLayout, QLabel, QPushButton, QScrollArea, QSizePolicy,
    QVBoxLayout, QWidget,
)

from .. import layers as wl
from ...session_holder import Outcome, Request, SessionHolder, segment_body, spec_classes
from ...boxes import take_plane
from .clicks import ClickTools
from .download import DownloadControls
from .edits import ObjectEdits
from .export import ExportControls
from .follow import ImageFollower
from .series import SeriesControls
from .settings import SettingsForm
from .state import ImageState
from .uncertainty import UncertaintyView
from .propagate import VolumeTools
from .zoom import ZoomPreview

HELP = (
    "Draw a rectangle around an object in the image's <b>boxes</b> layer: its mask appears "
    "in <b>masks</b> with the next free id. Move or resize the box to redo that object.<br>"
    "<b>Shift+A</b> accept the current object (its box turns grey and stays as it is), "
    "then draw the next one. <b>Shift+C</b> clear the current (or selected) object and its "
    "box. <b>Ctrl+Z</b> / <b>Ctrl+Shift+Z</b> (boxes layer active) undo / redo a box and its "
    "mask together; brush strokes have the masks layer's own undo.<br>"
    "<b>Clicks</b> correct the selected (or last) object in its <b>points</b> layer: "
    "click where the object is, <b>right-click</b> or <b>Shift+click</b> where it is not; "
    "move or delete a click to answer again; after Accept, a click starts a new object. "
    "<b>Shift+N</b> marks where a click would help "
    "most (a ring, from the error map); <b>Shift+Y</b> / <b>Shift+X</b> take it as positive "
    "/ negative.<br>"
    "A model with several classes: the class chosen answers the next box; "
    "<b>Shift+K</b> cycles through them.<br>"
    "Several images: the widget follows the image you select or open.<br>"
    "Volumes: the box applies to the slice in view."
)


class SegmentWidget(QWidget):
    """Dock widget for box-prompted segmentation of the viewer's images."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # napari hands dock widgets a proxy of the viewer whose every answer is a
        # new proxy object: layers would never be identical to themselves, and the
        # per-image bookkeeping is keyed by layer identity. The viewer itself.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self._holder = SessionHolder()
        #: The image being annotated (the ``follow`` section chooses it).
        self.state: ImageState | None = None
        self._queue: dict[tuple[int, int], Request] = {}  # (image, box_key) -> newest waiting
        self._worker: Any = None
        self.edits = ObjectEdits(self)
        self.clicks = ClickTools(self)
        self._build_ui()
        self.follower.start()  # follows the viewer's images from here on

    # -- UI ----------------------------------------------------------------
    def _build_ui(self) -> None:
        self.follower = ImageFollower(self)
        self.image_combo = self.follower.combo
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
                           ("Clear (Shift+C)", self.clear_current),
                           ("Undo", self.undo), ("Redo", self.redo)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        # The sections scroll inside the dock: in a short window (600 px) Qt squeezed
        # them instead, the form's rows overlapping and the lower texts cut off.
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addLayout(image_row)
        self.series = SeriesControls(self)
        layout.addWidget(self.series)
        layout.addWidget(self.settings)
        layout.addLayout(buttons)
        self.unc_view = UncertaintyView(self)
        layout.addWidget(self.unc_view)
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
        for label in content.findChildren(QLabel):
            if label.wordWrap():  # never squeezed below the lines their text needs
                label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        # Vertical scrolling only: the dock is as wide as the sections need, bar included.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(content.minimumSizeHint().width()
                               + scroll.verticalScrollBar().sizeHint().width())
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        self.show_unc.toggled.connect(lambda _: self.unc_view.refresh_visibility())
        self.window_combo.currentTextChanged.connect(self._on_window_chosen)
        self.settings.model_combo.currentTextChanged.connect(lambda _: self.refresh_classes())
        self.settings.adapter_edit.editingFinished.connect(self.refresh_classes)
        self.refresh_classes()

    def use_model(self, model: Any) -> None:
        """Segment with an already built model object (scripts, tests) instead of a name."""
        self._holder.pinned = model
        self.refresh_classes()

    @property
    def holder(self) -> SessionHolder:
        """The model in memory, shared with the other sections and the Fine-tune widget."""
        return self._holder

    def use_adapter(self, path: str | Path, model_name: str | None = None,
                    model: Any = None) -> None:
        """Segment with adapter ``path`` from the next box on (and model ``model_name``,
        when given); remembered in the settings. With a model object in use
        (:meth:`use_model`), ``model`` is that model with the adapter loaded, or None
        to load it into a copy here."""
        if self.pinned_model is not None:
            if model is None:
                from ...model.checkpoint import load_adapter

                model = copy.deepcopy(self.pinned_model)
                load_adapter(model, path, grow=True)  # an adapter may bring classes
            self.use_model(model)
        if model_name:
            self.settings.model_combo.setCurrentText(model_name)
        self.settings.adapter_edit.setText(str(path))
        self.settings.save()
        self.refresh_classes()
        self.set_status(f"using adapter {Path(path).name}")

    @property
    def pinned_model(self) -> Any:
        """The model given to :meth:`use_model`, or None when the settings name it."""
        return self._holder.pinned

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    # -- the current image's layers (the sections read these: dock.SegmentDock) -------
    @property
    def image(self) -> Image | None:
        return None if self.state is None else self.state.image

    @property
    def boxes(self) -> Shapes | None:
        return None if self.state is None else self.state.boxes

    @property
    def masks(self) -> Labels | None:
        return None if self.state is None else self.state.masks

    @property
    def uncertainty(self) -> Any:
        return None if self.state is None else self.state.uncertainty

    # -- following images (the follow section does it) ----------------------------------
    def show_image(self, image: Image, activate: bool = True) -> None:
        """Make ``image`` the one boxes refer to (as choosing it in the list does)."""
        self.follower.show_image(image, activate)

    def propagated_of(self, labels: Any) -> dict[int, dict[int, set[bytes]]]:
        """What propagation wrote into ``labels`` when it is the masks layer of one of
        this widget's images (the Fine-tune widget leaves what nobody reviewed out):
        object id -> {plane: fingerprints (``propagate.mask_digest``)}; else empty."""
        # Another dock sees layers through napari's proxy: compare the layers themselves.
        labels = getattr(labels, "__wrapped__", labels)
        for state in self.follower.states.values():
            if state.masks is labels:
                return state.propagated
        return {}

    def connect_state(self, state: ImageState) -> None:
        """Wire ``state``'s boxes and clicks to requests, and the hotkeys (once)."""
        if state.connected or state.boxes is None:
            return
        state.boxes.events.data.connect(lambda event, st=state: self._on_boxes_data(st, event))
        self.clicks.connect(state)
        for layer in (state.boxes, state.points):
            if layer is None:
                continue
            for key, action in (("Shift-A", self.accept_current), ("Shift-C", self.clear_current),
                                ("Shift-K", self.cycle_class), ("Shift-N", self.clicks.suggest),
                                ("Shift-Y", lambda: self.clicks.take(True)),
                                ("Shift-X", lambda: self.clicks.take(False)),
                                ("Control-Z", self.undo), ("Control-Shift-Z", self.redo),
                                ("Control-Y", self.redo)):
                layer.bind_key(key, lambda _layer, f=action: f(), overwrite=True)
        state.connected = True

    def _on_window_chosen(self, text: str) -> None:
        if self.state is not None and not self.follower.binding:
            self.state.window = None if text == "none" else text

    # -- boxes -> requests -----------------------------------------------------
    def _on_boxes_data(self, state: ImageState, event: Any) -> None:
        if self.edits.replaying:
            return
        # Never let an exception escape into napari's event loop.
        try:
            action = str(event.action)
            if action == "removing":
                self.edits.forget_rows(state, event.data_indices)
            elif action == "added":
                rows = wl.assign_keys(state.boxes)
                self.volume.adopt(state, rows)  # key slices of the current object
                self.request_rows(state, rows)
            elif action == "changed":
                rows = [i for i in event.data_indices if 0 <= i < len(state.boxes.data)]
                for row in rows:  # the user moved a frame: it is the object's box now
                    if bool(state.boxes.features["frame"].iloc[row]):
                        wl.set_feature(state.boxes, row, "frame", False)
                self.request_rows(state, rows)
        except Exception as exc:  # noqa: BLE001
            show_error(f"I-MedSAM: could not handle the box: {exc}")

    def request_rows(self, state: ImageState, rows: list[int]) -> None:
        """Ask for the objects of ``rows`` (their box and clicks) unless they are
        answered as they are; the newest request per object wins."""
        image, boxes = state.image, state.boxes
        if image not in self.viewer.layers or boxes is None:
            show_warning("I-MedSAM: choose an image layer in the Segment widget first")
            return
        for row in rows:
            key = int(boxes.features["box_key"].iloc[row])
            if bool(boxes.features["accepted"].iloc[row]):
                show_info("I-MedSAM: that object is accepted and stays as it is; "
                          "clear it (Shift+C) to redo it")
                continue
            try:
                item = wl.box_item(boxes, image, row)
                plane, box = item.plane, item.box
                spec, class_value = self._class_spec(boxes, item)
            except ValueError as exc:
                show_warning(f"I-MedSAM: {exc}")
                continue
            clicks = wl.clicks_of(state.points, image, key, plane)
            asked = (plane, box, item.frame, None if clicks is None else clicks.key())
            if state.last_box.get(key) == asked:
                continue  # a move that ended where it started: nothing new to compute
            state.last_box[key] = asked
            data = wl.level0(image)
            request = Request(key, spec, take_plane(data, plane), plane,
                              None if item.frame else box, state.window, owner=state.key,
                              class_value=class_value, clicks=clicks)
            self.queue(state, request)
        self.start_next()

    def queue(self, state: ImageState, request: Request) -> None:
        """Queue ``request`` as its object's newest (a queued older one is replaced)."""
        key = request.box_key
        state.latest[key] = request.req_id
        self._queue.pop((state.key, key), None)  # re-insert: the newest goes last
        self._queue[(state.key, key)] = request
        state.current = key

    def _class_spec(self, boxes: Any, item: wl.BoxItem) -> tuple[Any, int | None]:
        """The spec that answers ``item``: with several classes, the box's own class (the
        one chosen when it was drawn, remembered on the box), and the label value its
        mask gets in semantic labelling."""
        spec = self.settings.spec()
        classes = self.settings.classes
        if spec.head is None or len(classes) < 2:
            return spec, None
        head = item.head if item.head is not None and item.head < len(classes) else spec.head
        wl.set_feature(boxes, item.row, "head", head)
        value = classes[head].value if self.settings.semantic() else None
        return dataclasses.replace(spec, head=head), value

    def cycle_class(self) -> None:
        """Shift+K: the next class answers the next box."""
        name = self.settings.cycle_class()
        if name is not None:
            self.set_status(f"class for the next box: {name}")

    def refresh_classes(self) -> None:
        """Offer the classes of the model the settings name (or of the model in use)."""
        self.settings.set_classes(spec_classes(self.settings.spec(), self._holder.pinned))

    def start_next(self) -> None:
        """Run the oldest waiting request unless one is running (the session is not
        thread-safe, and one at a time keeps the CPU free for the viewer)."""
        if self._worker is not None or not self._queue:
            return
        first = next(iter(self._queue))
        if not self.downloads.ensure(self._queue[first].spec, self.start_next, self._drop_waiting):
            return  # the model's weights download first, then this runs again
        request = self._queue.pop(first)
        worker = create_worker(segment_body, self._holder, request, _start_thread=False)
        worker.yielded.connect(self.set_status)
        worker.returned.connect(self._on_outcome)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        worker.start()

    def _on_worker_finished(self) -> None:
        self._worker = None
        if self._queue:
            self.start_next()

    def _drop_waiting(self, message: str) -> None:
        """The model cannot be had (download cancelled or failed): forget the waiting
        boxes, so that drawing or nudging them again retries."""
        for owner, key in self._queue:
            state = self.follower.states.get(owner)
            if state is not None:
                state.last_box.pop(key, None)
        self._queue.clear()
        self.set_status(message)

    @property
    def busy(self) -> bool:
        """True while a request runs or waits."""
        return self._worker is not None or bool(self._queue)

    # -- results -> layers ---------------------------------------------------------
    def _on_outcome(self, outcome: Outcome) -> None:
        try:
            self.edits.apply(outcome)
        except Exception as exc:  # noqa: BLE001
            show_error(f"I-MedSAM: could not write the mask: {exc}")

    # -- the current object (ObjectEdits does the work) ---------------------------------
    def current_row(self) -> int | None:
        """The selected box if exactly one is selected, else the last one worked on."""
        return self.edits.current_row()

    def accept_current(self) -> None:
        self.edits.accept()

    def clear_current(self) -> None:
        self.edits.clear()

    def undo(self) -> None:
        self.edits.undo()

    def redo(self) -> None:
        self.edits.redo()

    def state_of(self, owner: int) -> ImageState | None:
        """The state of the image ``owner`` (a state's ``key``), if it is still open."""
        return self.follower.states.get(owner)

    @property
    def waiting(self) -> bool:
        """Boxes are queued for the model."""
        return bool(self._queue)

    def forget_request(self, owner: int, key: int | None = None) -> None:
        """Drop a queued request for box ``key`` of image ``owner`` (None: all of them)."""
        for queued in [k for k in self._queue if k[0] == owner and key in (None, k[1])]:
            del self._queue[queued]

