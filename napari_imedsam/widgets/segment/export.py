"""The Segment widget's "Export" section: labels at any scale, uncertainty, JSON record.

The work is in :mod:`napari_imedsam.export` (no Qt); this module gathers the
widget's layers into plain values, asks where to save, and runs a scale other
than 1 in a thread worker with napari progress and a Cancel (it decodes every
object again). At scale 1 the labels are written as they are, at once.
Nothing is ever replaced without asking: when a file of the export exists the
user chooses between replacing it, a new name (``NAME-2``) and cancelling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QGridLayout, QGroupBox, QMessageBox, QPushButton,
    QWidget,
)

from ..common import browse
from .. import layers as wl
from ... import export as ex
from ..._reader import SOURCE_KEY
from ..._writer import spacing_of
from .dock import SegmentDock

FILTERS = ("TIFF (*.tif *.tiff);;PNG, 2D only (*.png);;NIfTI (*.nii.gz *.nii);;"
           "DICOM SEG, images from a DICOM series (*.dcm)")
ENCODER_INPUT = ("the CT window when one is set; else 8-bit data as it is and other data "
                 "scaled between its 0.5 and 99.5 percentiles, per slice")


def gather_objects(widget: SegmentDock) -> list[ex.ObjectBox]:
    """Every object with a box: the boxes layer, plus boxes propagation made per slice."""
    boxes, image = widget.boxes, widget.image
    points = None if widget.state is None else widget.state.points
    objects: dict[tuple[int, int | None], ex.ObjectBox] = {}
    for item in [] if boxes is None else wl.box_items(boxes, image):
        clicks = wl.clicks_of(points, image, item.key, item.plane)
        recorded = None if clicks is None else (
            tuple((float(x), float(y)) for x, y in clicks.xy),
            tuple(int(v) for v in clicks.labels))
        # A frame around an object of clicks alone is no prompt: its box is NaN.
        objects[(item.object_id, item.plane)] = ex.ObjectBox(item.object_id, item.prompt_box,
                                                             item.plane, item.accepted, item.head,
                                                             recorded)
    volume = getattr(widget, "volume", None)
    for object_id, per_plane in (getattr(volume, "plane_boxes", None) or {}).items():
        for plane, box in per_plane.items():
            objects.setdefault((object_id, plane),
                               ex.ObjectBox(int(object_id), tuple(map(float, box)), int(plane)))
    return sorted(objects.values(), key=lambda o: (o.object_id, o.plane or 0))


def geometry_of(image: Any) -> tuple[ex.Geometry, dict[str, Any]]:
    """The image grid's geometry, and the "image" part of the JSON record."""
    spatial = wl.image_spatial_shape(image)
    scale, unit = spacing_of({"scale": image.scale, "units": image.units})
    spacing = tuple(scale[-len(spatial):])
    source = image.metadata.get(SOURCE_KEY) or {}
    affine = source.get("nifti_affine")
    path = getattr(image.source, "path", None) or source.get("path")
    info = {"layer": image.name, "path": None if path is None else str(path),
            "shape": list(spatial), "rgb": bool(image.rgb), "spacing": list(spacing),
            "unit": unit, "axes": "z, y, x" if len(spatial) == 3 else "y, x"}
    files, frames = source.get("dicom_files"), source.get("dicom_frames")
    return ex.Geometry(spatial, spacing, unit, None if affine is None else np.asarray(affine),
                       tuple(files) if files else None,
                       tuple(int(f) for f in frames) if frames else None), info


class ExportControls(QGroupBox):
    """Scale, "with uncertainty", Export... and Cancel."""

    def __init__(self, segment_widget: SegmentDock, parent: QWidget | None = None) -> None:
        super().__init__("Export", parent)
        self.widget = segment_widget
        self.scale = QDoubleSpinBox()
        self.scale.setRange(0.25, 8.0)
        self.scale.setSingleStep(0.5)
        self.scale.setValue(1.0)
        self.scale.setPrefix("scale x")
        self.scale.setToolTip("1: the labels as they are. Other scales decode each object again "
                              "at that resolution (brush corrections are kept)")
        self.with_uncertainty = QCheckBox("uncertainty map")
        self.with_uncertainty.setChecked(True)
        self.export_button = QPushButton("Export...")
        self.export_button.setToolTip("labels to TIFF / PNG / NIfTI / DICOM SEG, a "
                                      "NAME_uncertainty.tif and a NAME.json record that "
                                      "reproduces the masks")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        # DICOM SEG (.dcm, for images from a DICOM series): what the segments are.
        from ...dicom_seg import DEFAULT_SEGMENT_TYPE, SEGMENT_TYPES

        self.seg_type = QComboBox()
        self.seg_type.addItems(list(SEGMENT_TYPES))
        self.seg_type.setCurrentText(DEFAULT_SEGMENT_TYPE)
        self.seg_type.setToolTip("DICOM SEG export: every segment's SNOMED CT category and "
                                 "type (an organ by default)")
        self.seg_labelmap = QCheckBox("SEG as labelmap")
        self.seg_labelmap.setToolTip("DICOM SEG export: one LABELMAP frame per slice (OHIF "
                                     "reads it) instead of BINARY frames per segment")
        grid = QGridLayout(self)
        grid.addWidget(self.scale, 0, 0)
        grid.addWidget(self.with_uncertainty, 0, 1)
        grid.addWidget(self.seg_type, 1, 0)
        grid.addWidget(self.seg_labelmap, 1, 1)
        grid.addWidget(self.export_button, 2, 0)
        grid.addWidget(self.cancel_button, 2, 1)
        self.export_button.clicked.connect(self.choose_and_export)
        self.cancel_button.clicked.connect(self.cancel)
        self._worker: Any = None
        #: Files written by the last finished export (for the status line and tests).
        self.last_written: list[Path] = []

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def choose_and_export(self) -> None:
        image = self.widget.image
        start = "masks.tif"
        if image is not None:  # beside the image's file, named after it
            source = image.metadata.get(SOURCE_KEY) or {}
            start = str(ex.suggested_path(getattr(image.source, "path", None)
                                          or source.get("path"), image.name))
        path = browse(self, "save", "Export labels", filters=FILTERS, start=start)
        if path:
            self.export(path)

    def ask_existing(self, taken: list[Path]) -> str:
        """'replace', 'rename' or 'cancel' when files of the export already exist."""
        box = QMessageBox(QMessageBox.Icon.Question, "Files exist",
                          "Already there: " + ", ".join(p.name for p in taken), parent=self)
        replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
        rename = box.addButton("Save under a new name", QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        clicked = box.clickedButton()
        return "replace" if clicked == replace else "rename" if clicked == rename else "cancel"

    def export(self, path: str | Path) -> bool:
        """Export to ``path`` (its suffix picks the format); False when nothing started."""
        w = self.widget
        if self.busy:
            show_info("I-MedSAM: an export is running; wait for it or cancel it")
            return False
        if w.image is None or w.masks is None or w.image not in w.viewer.layers:
            show_warning("I-MedSAM: choose an image and segment something before exporting")
            return False
        try:
            target = ex.targets_for(path, self.with_uncertainty.isChecked())
        except ValueError as exc:
            show_warning(f"I-MedSAM: {exc}")
            return False
        overwrite = False
        taken = [p for p in target.paths() if p.exists()]
        if taken:
            choice = self.ask_existing(taken)
            if choice == "cancel":
                return False
            overwrite = choice == "replace"
            if not overwrite:
                target = ex.free_targets(path, self.with_uncertainty.isChecked())
        scale = float(self.scale.value())
        if target.labels.name.lower().endswith(".dcm") and scale != 1:
            show_warning("I-MedSAM: a DICOM SEG lies on its series' own grid: set the scale "
                         "to 1 (other scales export as TIFF or NIfTI)")
            return False
        labels = np.array(w.masks.data, dtype=np.int32)  # a snapshot: edits go on meanwhile
        objects = gather_objects(w)
        if scale == 1.0:
            exported = ex.labels_at_scale(labels, objects, 1.0, None)
            exported.uncertainty = w.unc_view.std_map(w.state, labels.shape)
            self._write(target, exported, objects, scale, overwrite)
            return True
        if not objects:
            show_warning("I-MedSAM: no object has a box, so nothing can be decoded at another "
                         "scale; export at scale 1")
            return False
        spec = w.settings.spec()
        downloads = getattr(w, "downloads", None)
        if downloads is not None and not downloads.ensure(
                spec, lambda: self._start(target, labels, objects, scale, overwrite, spec),
                lambda message: w.set_status(f"export not done: {message}")):
            return True  # starts once the weights are there
        self._start(target, labels, objects, scale, overwrite, spec)
        return True

    def save_as_is(self, path: str | Path) -> list[Path] | None:
        """Save the current labels at scale 1 with their uncertainty and record, under
        ``path`` or, when any of its files exist, the next free ``-2``, ``-3`` name
        (never replacing anything). Returns the files, or None when it failed."""
        w = self.widget
        if w.image is None or w.masks is None:
            return None
        labels = np.array(w.masks.data, dtype=np.int32)
        objects = gather_objects(w)
        exported = ex.labels_at_scale(labels, objects, 1.0, None)
        exported.uncertainty = w.unc_view.std_map(w.state, labels.shape)
        self.last_written = None
        self._write(ex.free_targets(path, exported.uncertainty is not None), exported,
                    objects, 1.0, overwrite=False)
        return self.last_written

    def _start(self, target: ex.ExportTarget, labels: np.ndarray, objects: list[ex.ObjectBox],
               scale: float, overwrite: bool, spec: Any) -> None:
        w = self.widget
        data = wl.level0(w.image)
        total = 1 if labels.ndim == 2 else labels.shape[0]
        worker = create_worker(
            ex.export_body, w.holder, spec, data, w.settings.window(), labels, objects, scale,
            _start_thread=False, _progress={"total": total, "desc": f"I-MedSAM: export x{scale:g}"})
        worker.returned.connect(
            lambda result: self._on_decoded(result, target, objects, scale, overwrite))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.cancel_button.setEnabled(True)
        w.set_status(f"exporting at scale {scale:g} (decoding {len(objects)} objects again)...")
        worker.start()

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.quit()  # stops at the next plane; nothing is written
            self.widget.set_status("export cancelled: nothing was written")

    def _on_finished(self) -> None:
        self._worker = None
        self.cancel_button.setEnabled(False)

    def _on_decoded(self, result: Any, target: ex.ExportTarget, objects: list[ex.ObjectBox],
                    scale: float, overwrite: bool) -> None:
        if isinstance(result, str):
            show_error(f"I-MedSAM: {result}")
            self.widget.set_status(result)
            return
        self._write(target, result, objects, scale, overwrite)

    def _write(self, target: ex.ExportTarget, exported: ex.ExportedLabels,
               objects: list[ex.ObjectBox], scale: float, overwrite: bool) -> None:
        w = self.widget
        try:
            geometry, image_info = geometry_of(w.image)
            spec = w.settings.spec()
            intensity = {"contrast_limits": [float(v) for v in w.image.contrast_limits],
                         "encoder_input": ENCODER_INPUT}
            record = ex.build_record(
                image=image_info,
                model=ex.model_info(spec.name, spec.adapter, spec.device, spec.decoder),
                window=w.settings.window(), scale=scale, objects=objects, exported=exported,
                intensity=intensity, classes=w.settings.classes)
            if exported.uncertainty is None and target.uncertainty is not None:
                show_info("I-MedSAM: no uncertainty map to export (none was computed: base-SAM "
                          "mode, or no object yet)")
            seg = ex.SegOptions(self.seg_type.currentText(), self.seg_labelmap.isChecked())
            self.last_written = ex.write_export(target, exported, record, geometry, scale,
                                                overwrite=overwrite, seg=seg)
        except Exception as exc:  # noqa: BLE001 - a notification, never a traceback
            show_error(f"I-MedSAM: export failed, nothing replaced: {exc}")
            w.set_status(f"export failed: {exc}")
            return
        edited = sum(1 for o in exported.objects if o.get("source") == "decoded+edits")
        note = f"; {edited} object(s) kept brush edits" if edited else ""
        names = ", ".join(p.name for p in self.last_written)
        show_info(f"I-MedSAM: exported {names} to {target.labels.parent}{note}")
        w.set_status(f"exported {names}{note}")
