"""Volume tools for the Segment widget: precompute nearby slices, propagate an object.

Volumes (Z, H, W), RGB volumes (Z, H, W, 3) and channel stacks (C, H, W) that
napari shows with a slider are all handled as stacks of planes along the first
axis; a box applies to the plane in view. The CT window chosen in the
settings is applied to every slice (boxes, precompute and propagation use the
same window, so precomputed embeddings are found again).

Both jobs run in napari thread workers with a napari progress bar and stop at
the "Stop" button (checked before every slice). The logic lives in
``propagate`` (no Qt); this module is the buttons and the labels writing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QGridLayout, QGroupBox, QLabel, QPushButton, QSpinBox, QWidget,
)

from .. import layers as wl
from ...boxes import Box
from ...journal import UndoStep
from ...propagate import (
    DIRECTIONS,
    Job,
    Step,
    Summary,
    mask_digest,
    nearby_order,
    precompute_body,
    propagate_body,
    stale_planes,
    user_slices,
)
from .dock import SegmentDock


class PlaneWriter:
    """Writes one object's propagated planes into a Labels layer, live, then commits
    them as a single undo step.

    While propagation runs, each slice is written straight into the array so
    the user sees it grow. At the end those live pixels are taken back and
    everything is written again, recorded: one undo removes the whole
    propagation. Other objects' pixels are never overwritten.
    """

    def __init__(self, labels: Labels, object_id: int) -> None:
        self.labels = labels
        self.object_id = object_id
        self._data = labels.data  # the array we write into (the layer may get another)
        self._live: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.masks: dict[int, np.ndarray] = {}

    def show(self, plane: int, mask: np.ndarray) -> None:
        """Show ``mask`` on ``plane`` now (onto background pixels only)."""
        if self.labels.data is not self._data:
            return
        target = self._data[plane]
        rows, cols = np.nonzero(mask & (target == 0))
        target[rows, cols] = self.object_id
        self._live[plane] = (rows, cols)
        self.masks[plane] = mask
        self.labels.refresh()

    def _take_back(self) -> None:
        for plane, (rows, cols) in self._live.items():
            keep = self._data[plane, rows, cols] == self.object_id
            self._data[plane, rows[keep], cols[keep]] = 0
        self._live.clear()

    def commit(self, clear_planes: set[int]) -> tuple[int, list[Any]]:
        """Write the shown planes for good; first remove the object's old pixels on
        ``clear_planes`` (the planes written, and those beyond where the object
        ended). Returns the pixels written (-1: the layer changed meanwhile) and
        the changes, which the widget's journal keeps as one undo step."""
        from ...journal import write_pixels

        if self.labels.data is not self._data:
            return -1, []
        self._take_back()
        labels, data, oid = self.labels, self._data, self.object_id
        written, changes = 0, []
        for plane in sorted(clear_planes):
            rows, cols = np.nonzero(data[plane] == oid)
            if rows.size:
                changes.append(write_pixels(labels, (np.full_like(rows, plane), rows, cols), 0))
        for plane, mask in self.masks.items():
            rows, cols = np.nonzero(mask & (data[plane] == 0))
            if rows.size:
                changes.append(write_pixels(labels, (np.full_like(rows, plane), rows, cols), oid))
                written += int(rows.size)
        labels.refresh()
        return written, changes


def slice_key(object_id: int, plane: int) -> int:
    """The key of a propagated slice's map in ``ImageState.unc_parts`` (boxes' keys are
    positive; these never meet them)."""
    return -(object_id * 1_000_000 + plane + 1)


class VolumeTools(QGroupBox):
    """The "Volume" section: precompute nearby slices, propagate, stop."""

    def __init__(self, segment_widget: SegmentDock, parent: QWidget | None = None) -> None:
        super().__init__("Volume", parent)
        self.widget = segment_widget
        self.viewer = segment_widget.viewer
        #: plane -> (variance, error) of the propagation in progress.
        self._maps: dict[int, Any] = {}
        self.radius = QSpinBox()
        self.radius.setRange(1, 200)
        self.radius.setValue(5)
        self.radius.setPrefix("+-")
        self.radius.setSuffix(" slices")
        self.precompute_button = QPushButton("Precompute nearby")
        self.precompute_button.setToolTip(
            "Embed the slices around the one in view in the background, so boxes there "
            "answer at once")
        self.direction = QComboBox()
        self.direction.addItems(DIRECTIONS)
        self.direction.setToolTip("up: towards higher slice numbers")
        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.setToolTip(
            "Run the current object through the volume from every slice you gave it (its "
            "box's slice, and slices you corrected): the slices between them are filled "
            "from both ends, and the run goes past the outermost ones until the object "
            "ends. Your slices are never overwritten.")
        self.from_here_button = QPushButton("Propagate from here")
        self.from_here_button.setToolTip(
            "Run again from the slice in view (after correcting it), in the chosen "
            "direction, up to the object's next slice of yours or its end")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.key_boxes = QCheckBox("a box on another slice is a key slice of the current object")
        self.key_boxes.setToolTip(
            "On: a box you draw on a slice where the current object has no box of yours "
            "joins that object (same label), as one of its key slices; Propagate then "
            "fills between them. Off: every box is a new object.")
        note = QLabel("3D images and (C, H, W) channel stacks: the box applies to the plane "
                      "in view; the CT window applies to every slice. Correct a slice with "
                      "the brush, then Propagate: corrected slices guide the run.")
        note.setWordWrap(True)
        grid = QGridLayout(self)
        grid.addWidget(self.radius, 0, 0)
        grid.addWidget(self.precompute_button, 0, 1)
        grid.addWidget(self.direction, 1, 0)
        grid.addWidget(self.propagate_button, 1, 1)
        grid.addWidget(self.from_here_button, 2, 1)
        grid.addWidget(self.stop_button, 2, 0)
        grid.addWidget(self.key_boxes, 3, 0, 1, 2)
        grid.addWidget(note, 4, 0, 1, 2)
        self.precompute_button.clicked.connect(self.precompute)
        self.propagate_button.clicked.connect(lambda: self.propagate())
        self.from_here_button.clicked.connect(lambda: self.propagate(from_here=True))
        self.stop_button.clicked.connect(self.stop)

        self._job: Job | None = None
        self._worker: Any = None
        self._kind = ""
        self._then: Any = None  # a job to start once the running one has stopped
        self._writer: PlaneWriter | None = None
        self._state: Any = None  # the image state the running propagation writes to
        self._keys: set[int] = set()  # the user's slices of the running propagation

    @property
    def busy(self) -> bool:
        """True while a precompute or a propagation runs."""
        return self._worker is not None

    @property
    def propagating(self) -> bool:
        return self._kind == "propagation"

    @property
    def plane_boxes(self) -> dict[int, dict[int, Box]]:
        """object_id -> {plane: box} of the current image's propagated objects (the
        zoom preview and the export use them)."""
        state = self.widget.state
        return {} if state is None else state.plane_boxes

    def boxes_on_plane(self, plane: int | None) -> list[tuple[int, Box]]:
        """(object_id, box) of the propagated objects on ``plane`` whose slice is as the
        propagation wrote it: a slice the user corrected is theirs, and decoding the
        propagated box again (the zoom preview) would show the model over their edit."""
        state, masks = self.widget.state, self.widget.masks
        if plane is None or state is None or masks is None:
            return []
        found = []
        for oid, boxes in self.plane_boxes.items():
            if plane not in boxes:
                continue
            written = state.propagated.get(oid, {}).get(plane)
            if written is not None and mask_digest(masks.data[plane] == oid) not in written:
                continue  # corrected since
            found.append((oid, boxes[plane]))
        return found

    # -- common ------------------------------------------------------------------
    def _volume(self) -> tuple[Any, tuple[int, ...]] | None:
        """(data, spatial shape) of the widget's image when it is a stack of planes."""
        image = self.widget.image
        if image is None or image not in self.viewer.layers:
            show_warning("I-MedSAM: choose an image layer in the Segment widget first")
            return None
        spatial = wl.image_spatial_shape(image)
        if len(spatial) != 3:
            show_info("I-MedSAM: precompute and propagate work on 3D images (a stack of "
                      "slices or channels); this image is 2D")
            return None
        return wl.level0(image), spatial

    def _key_boxes_only(self, object_id: int) -> bool:
        """The boxes sharing ``object_id`` are one object's key slices: each on its own
        slice, and the id is no class's value in class-value labelling."""
        w = self.widget
        if w.settings.semantic() and object_id in {c.value for c in w.settings.classes}:
            return False
        ids = w.boxes.features["object_id"].to_numpy()
        planes = [wl.box_item(w.boxes, w.image, r).plane for r in np.flatnonzero(ids == object_id)]
        return None not in planes and len(set(planes)) == len(planes)

    def _plane_in_view(self, depth: int) -> int:
        point = self.widget.image.world_to_data(self.viewer.dims.point)
        return int(np.clip(round(float(point[0])), 0, depth - 1))

    def _start(self, kind: str, worker: Any, job: Job) -> None:
        self._kind, self._worker, self._job = kind, worker, job
        worker.finished.connect(self._on_finished)
        self.stop_button.setEnabled(True)
        worker.start()

    def _on_finished(self) -> None:
        self._worker = self._job = None
        self._kind = ""
        self.stop_button.setEnabled(False)
        then, self._then = self._then, None
        if then is not None:
            then()

    def stop(self) -> None:
        """Ask the running job to stop before its next slice (what is done is kept)."""
        if self._job is not None:
            self._job.stop()
            self.widget.set_status(f"stopping the {self._kind}...")

    def adopt(self, state: Any, rows: list[int]) -> None:
        """With "key slices" on, new boxes (``rows``) on slices where the current object
        has no box join it: same label, one key slice each (not in class-value
        labelling, where boxes share their class's value already)."""
        boxes = state.boxes
        if not self.key_boxes.isChecked() or state.current is None or boxes is None \
                or self.widget.settings.semantic():
            return
        current = wl.row_of(boxes, state.current)
        if current is None or current in rows:
            return
        object_id = int(boxes.features["object_id"].iloc[current])
        if object_id <= 0:
            return
        ids = boxes.features["object_id"].to_numpy()
        planes = {wl.box_item(boxes, state.image, r).plane for r in np.flatnonzero(ids == object_id)}
        for row in rows:
            plane = wl.box_item(boxes, state.image, row).plane
            if plane is None or plane in planes:
                continue
            wl.set_feature(boxes, row, "object_id", object_id)
            planes.add(plane)

    # -- precompute ----------------------------------------------------------------
    def precompute(self) -> None:
        """Embed the slices within +-N of the one in view, nearest first."""
        if self._worker is not None:
            show_info(f"I-MedSAM: a {self._kind} is running; press Stop first")
            return
        volume = self._volume()
        if volume is None:
            return
        data, spatial = volume
        planes = nearby_order(self._plane_in_view(spatial[0]), spatial[0], self.radius.value())
        settings, job = self.widget.settings, Job()
        worker = create_worker(
            precompute_body, self.widget.holder, settings.spec(), data, planes,
            settings.window(), job, _start_thread=False,
            _progress={"total": len(planes), "desc": "I-MedSAM: embedding slices"})
        worker.yielded.connect(lambda p: self.widget.set_status(f"embedded slice {p}"))
        worker.returned.connect(self._on_precomputed)
        self.widget.set_status(f"embedding {len(planes)} slices around the one in view...")
        self._start("precompute", worker, job)

    def _on_precomputed(self, outcome: tuple[int, str | None]) -> None:
        done, error = outcome
        if error is not None:
            show_error(f"I-MedSAM: {error}")
            self.widget.set_status(f"precompute failed: {error}")
        else:
            self.widget.set_status(f"{done} slices embedded: boxes on them answer at once")

    # -- propagate -----------------------------------------------------------------
    def propagate(self, from_here: bool = False) -> None:
        """Propagate the current object from every slice the user gave it, or
        (``from_here``) from the slice in view alone, in the chosen direction."""
        if self._worker is not None:
            if self._kind == "precompute":  # only a speed-up: give way to the real work
                self._then = lambda: self.propagate(from_here)
                self.stop()
            else:
                show_info("I-MedSAM: a propagation is running; press Stop first")
            return
        volume = self._volume()
        if volume is None:
            return
        data, spatial = volume
        w = self.widget
        row = w.current_row()
        object_id = 0 if row is None else int(w.boxes.features["object_id"].iloc[row])
        if object_id <= 0 or w.masks is None:
            show_info("I-MedSAM: draw a box around the object (or select its box) and wait "
                      "for its mask, then propagate")
            return
        if wl.shares_id(w.boxes, object_id) and not self._key_boxes_only(object_id):
            # Its slices could not be told from those of the class's other boxes.
            show_warning(f"I-MedSAM: label {object_id} belongs to several boxes (the class's "
                         "value): propagation follows one object; draw this box with "
                         "labelling 'new object id per box' to propagate it")
            return
        if w.busy:
            show_info("I-MedSAM: the object is still being segmented; propagate when its "
                      "mask is there")
            return
        state = w.state
        written = state.propagated.setdefault(object_id, {})
        keys = user_slices(w.masks.data, object_id, written)
        plane = self._plane_in_view(spatial[0])
        here = w.masks.data[plane] == object_id
        if from_here:
            if not here.any():
                show_warning(f"I-MedSAM: object {object_id} has no pixels on slice {plane}: "
                             "go to a slice of it (or correct one) to propagate from there")
                return
            keys[plane] = here  # the user chose it: it guides the run
        elif not keys:
            if not here.any():
                show_warning(f"I-MedSAM: object {object_id} has no slice of yours: draw its "
                             "box or correct a slice, then propagate")
                return
            keys[plane] = here
        start = plane if plane in keys else min(keys, key=lambda k: abs(k - plane))
        direction = self.direction.currentText()
        total = spatial[0] - len(keys)
        if from_here:
            total = {"both": spatial[0] - 1, "up": spatial[0] - 1 - plane,
                     "down": plane}[direction]
        if total <= 0:
            show_info(f"I-MedSAM: slice {plane} is the last one going {direction}")
            return
        self._writer, self._state = PlaneWriter(w.masks, object_id), state
        self._keys = set(keys)
        self._maps = {}
        self.plane_boxes.setdefault(object_id, {})
        settings, job = w.settings, Job()
        spec = settings.spec()
        head = int(w.boxes.features["head"].iloc[row]) if "head" in w.boxes.features else -1
        if spec.head is not None and head >= 0:  # the object's own class answers every slice
            spec = dataclasses.replace(spec, head=head)
        worker = create_worker(
            propagate_body, w.holder, spec, data, start, keys[start], direction,
            settings.window(), job, None, {p: m for p, m in keys.items() if p != start},
            tuple(float(v) for v in w.image.scale[-3:]), from_here,
            _start_thread=False,
            _progress={"total": total, "desc": f"I-MedSAM: propagating object {object_id}"})
        worker.yielded.connect(self._on_step)
        worker.returned.connect(self._on_propagated)
        where = (f"slice {start} ({direction})" if from_here or len(keys) == 1
                 else f"your {len(keys)} slices {sorted(keys)}")
        w.set_status(f"propagating object {object_id} from {where}...")
        self._start("propagation", worker, job)

    def _on_step(self, step: Step) -> None:
        writer = self._writer
        if writer is None:
            return
        try:
            writer.show(step.plane, step.mask)
            if step.maps is not None:
                self._maps[step.plane] = step.maps
            self._state.plane_boxes.setdefault(writer.object_id, {})[step.plane] = step.box
            self.widget.set_status(f"object {writer.object_id}: slice {step.plane} "
                                   f"({int(step.mask.sum())} pixels)")
        except Exception as exc:  # noqa: BLE001
            show_error(f"I-MedSAM: could not show slice {step.plane}: {exc}")

    def _place_maps(self, writer: Any, clear: set[int]) -> list[tuple[int, Any, Any]]:
        """Each propagated slice gets its uncertainty like a box's answer (keyed by
        object and slice, below every box's key); the slices cleared lose theirs.
        Returns the (key, before, after) changes for the undo step."""
        state, view = self._state, self.widget.unc_view
        changes = []
        for plane in sorted(clear | set(writer.masks)):
            key = slice_key(writer.object_id, plane)
            before = state.unc_parts.get(key)
            variance, error = self._maps.get(plane, (None, None))
            mask = writer.masks.get(plane)
            view.show_object(state, key, plane, variance if mask is not None and mask.any()
                             else None, error)
            after = state.unc_parts.get(key)
            if before is not None or after is not None:
                changes.append((key, before, after))
        self._maps = {}
        return changes

    def _on_propagated(self, summary: Summary) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            depth = writer.labels.data.shape[0]
            # The object ends there: what earlier runs wrote past it is stale (never the
            # user's own slices).
            clear = (set(writer.masks) | stale_planes(summary, depth, self._keys)) - self._keys
            written, changes = writer.commit(clear)
            if written >= 0:  # remember what was written: a slice changed since is the user's
                fingerprints = self._state.propagated.setdefault(writer.object_id, {})
                for plane in writer.masks:
                    mask = writer.labels.data[plane] == writer.object_id
                    fingerprints.setdefault(plane, set()).add(mask_digest(mask))
        except Exception as exc:  # noqa: BLE001
            show_error(f"I-MedSAM: could not write the propagated slices: {exc}")
            return
        maps = self._place_maps(writer, clear) if written >= 0 else []
        self._state.journal.record(UndoStep(f"propagation of object {writer.object_id}",
                                            changes, maps=maps))
        if written < 0:
            show_warning("I-MedSAM: the masks layer changed during propagation; "
                         "nothing was written. Propagate again.")
            return
        if summary.error is not None:
            show_error(f"I-MedSAM: propagation stopped: {summary.error}")
        text = f"object {writer.object_id}: {summary.describe()}"
        self.widget.set_status(text + " (Undo takes it back)")
