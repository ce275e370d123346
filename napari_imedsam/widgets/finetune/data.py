"""The Fine-tune widget's "Training data" box: which layers and slices train.

It keeps the pairs table in step with the viewer (debounced: opening a data set
adds hundreds of layers one by one, and painting fires an event per stroke),
counts objects and slices as chosen, and says what is wrong when nothing can
train. Slices that the Segment widget's propagation wrote and nobody reviewed
are left out unless asked for (training on them would teach the model its own
answers). Nothing here changes a layer.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
    QSpinBox, QVBoxLayout, QWidget,
)

from .. import layers as wl
from ..common import browse, with_button
from ... import finetune as ft
from .pairs import PairsTable, PropagatedOf

SLICES = {"slices with labels": "labelled", "the slice in view": "current", "a range": "range"}
#: How label values are read: each id an object (one head learns them all), or each value
#: a class with its own head (a wall and the cavity it surrounds, an organ and a tumour).
READ_AS = {"objects (each id one object)": "objects",
           "classes (label value = class)": "classes"}


class DataBox(QGroupBox):
    """Layer pairs, slices of volumes, an optional folder, and what they give."""

    def __init__(self, viewer: Any, propagated_of: PropagatedOf | None = None) -> None:
        super().__init__("Training data")
        self.viewer = viewer
        #: What propagation wrote into a Labels layer (the Segment widget knows, for its
        #: own masks layers); None: nothing is known to be propagated.
        self.propagated_of = propagated_of
        self.table = PairsTable()
        self.slice_combo = QComboBox()
        self.slice_combo.addItems(list(SLICES))
        narrow(self.slice_combo)
        self.slice_from, self.slice_to = QSpinBox(), QSpinBox()
        for spin in (self.slice_from, self.slice_to):
            spin.setRange(0, 100_000)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("optional: DIR with images/ and masks/")
        self.read_as_combo = QComboBox()
        self.read_as_combo.addItems(list(READ_AS))
        self.read_as_combo.setToolTip(
            "objects: every label id is an object, one head learns them all (today's "
            "model); classes: every label value is a class with its own decoder head, "
            "chosen with each box in the Segment widget")
        self.class_edit = QLineEdit()
        self.class_edit.setPlaceholderText("NAME=VALUE, ... e.g. cavity=1, wall=2")
        self.class_edit.setToolTip("the classes' names and label values (edit the names); "
                                   "filled from the values in the chosen Labels layers")
        self.unreviewed_box = QCheckBox("train on propagated slices nobody reviewed")
        self.unreviewed_box.setToolTip(
            "off: slices that propagation wrote in the Segment widget and that are still as "
            "it wrote them are left out (the model would learn its own answers); correct a "
            "slice, even by a pixel, and it trains")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        span = QHBoxLayout()
        for w in (self.slice_from, QLabel("to"), self.slice_to):
            span.addWidget(w)
        form.addRow("labels are", self.read_as_combo)
        form.addRow("classes", self.class_edit)
        form.addRow("volumes", self.slice_combo)
        form.addRow("range", span)
        form.addRow("", self.unreviewed_box)
        form.addRow("folder", with_button(self.folder_edit, "...", self._browse_folder))
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addLayout(form)
        layout.addWidget(self.summary)

        self._recount_timer = _timer(self, 300, self.recount)  # painting: count once
        self._layers_timer = _timer(self, 200, self.refresh)  # many layers: sync once
        self._watched: weakref.WeakSet = weakref.WeakSet()  # layers whose events we follow
        self.table.changed.connect(self.recount)
        self.slice_combo.currentTextChanged.connect(self._on_slice_mode)
        for spin in (self.slice_from, self.slice_to):
            spin.valueChanged.connect(lambda _v: self.recount())
        self.folder_edit.editingFinished.connect(self.recount)
        self.unreviewed_box.toggled.connect(lambda _on: self.recount())
        self.read_as_combo.currentTextChanged.connect(self._on_read_as)
        self._on_read_as()
        self.viewer.dims.events.current_step.connect(self._on_dims)
        for signal in (viewer.layers.events.inserted, viewer.layers.events.removed,
                       viewer.layers.events.reordered):
            signal.connect(self._on_layers_changed)
        self._on_slice_mode()
        self.refresh()

    def _on_read_as(self, *_: Any) -> None:
        by_class = READ_AS[self.read_as_combo.currentText()] == "classes"
        self.class_edit.setEnabled(by_class)
        if by_class and not self.class_edit.text().strip():
            # A name to edit per value ("class 1=1" read as a name with a space in it).
            self.class_edit.setText(", ".join(f"class{v}={v}" for v in self._label_values()))

    def _label_values(self) -> list[int]:
        """Label values in the ticked layers (the slices chosen), for naming classes."""
        values: set[int] = set()
        for _, layer_name, _ in self.table.used_rows():
            layer = self.viewer.layers[layer_name] if layer_name in self.viewer.layers else None
            if isinstance(layer, Labels):
                values |= set(np.unique(np.asarray(wl.level0(layer))).tolist()) - {0}
        return sorted(int(v) for v in values)[:32]

    def classes(self) -> tuple[Any, ...] | None:
        """The classes to train (``ClassInfo``), or None for objects; ValueError saying
        what is wrong with the names."""
        if READ_AS[self.read_as_combo.currentText()] != "classes":
            return None
        from ...model.classes import parse_class_names

        text = self.class_edit.text().strip()
        if not text:
            raise ValueError("name the classes: NAME=VALUE, ... (e.g. cavity=1, wall=2)")
        return parse_class_names(text)

    def folder(self) -> str | None:
        """The optional folder data set, or None."""
        return self.folder_edit.text().strip() or None

    def _on_layers_changed(self, _event: Any = None) -> None:
        self._layers_timer.start()

    def refresh(self) -> None:
        """Bring the table up to date with the layer list now (it follows by itself,
        a moment after layers are added, removed, renamed or reordered)."""
        self._layers_timer.stop()
        for layer in self.viewer.layers:
            if layer in self._watched:
                continue
            self._watched.add(layer)
            layer.events.name.connect(self._on_layers_changed)
            if isinstance(layer, Labels):
                for emitter in (layer.events.paint, layer.events.data,
                                layer.events.labels_update):
                    emitter.connect(self._recount_soon)
        self.table.sync(self.viewer)
        self.recount()

    def _recount_soon(self, _event: Any = None) -> None:
        self._recount_timer.start()

    def _on_slice_mode(self, *_: Any) -> None:
        ranged = SLICES[self.slice_combo.currentText()] == "range"
        self.slice_from.setEnabled(ranged)
        self.slice_to.setEnabled(ranged)
        self.recount()

    def _on_dims(self, _event: Any) -> None:
        if SLICES[self.slice_combo.currentText()] == "current":
            self._recount_soon()

    def slice_choice(self) -> ft.SliceChoice:
        """The slices of volumes to train on, as chosen."""
        step = self.viewer.dims.current_step
        # Volumes are right-aligned in the viewer's dims: the slice axis is third from last.
        current = int(step[-3]) if len(step) >= 3 else 0
        return ft.SliceChoice(SLICES[self.slice_combo.currentText()], current,
                              self.slice_from.value(), self.slice_to.value())

    def pairs(self) -> list[ft.LayerPair]:
        """The ticked rows as arrays to train on (without the propagated slices nobody
        reviewed, unless they are asked for); :class:`~napari_imedsam.finetune.DataError`
        if a layer is missing."""
        keep = self.unreviewed_box.isChecked()
        return self.table.pairs(self.viewer, None if keep else self.propagated_of)

    def recount(self) -> tuple[int, int, list[str]]:
        """Update the table and the summary; returns (objects, slices, problems)."""
        if self._layers_timer.isActive():  # a layer change is pending: take it in first
            self.refresh()  # (which counts)
        self._recount_timer.stop()
        keep = self.unreviewed_box.isChecked()
        objects, slices, problems, unreviewed = self.table.recount(
            self.viewer, self.slice_choice(), self.propagated_of, keep)
        rows = len(self.table.used_rows())
        text = (f"{objects} object{'' if objects == 1 else 's'} on {slices} images/slices "
                f"from {rows} Labels layer(s)")
        if unreviewed:
            slices_text = f"{unreviewed} propagated slice{'' if unreviewed == 1 else 's'}"
            text += (f"; including {slices_text} nobody reviewed" if keep
                     else f"; {slices_text} not reviewed left out")
        folder = self.folder_edit.text().strip()
        if folder:
            text += f", plus the folder {Path(folder).name}"
        if problems:
            text += ". Problem: " + problems[0]
        elif objects == 0 and not folder:
            text += ". Paint or segment objects in a Labels layer and tick its row."
        self.summary.setText(text)
        return objects, slices, problems

    def _browse_folder(self) -> None:
        path = browse(self, "folder", "Folder with images/ and masks/")
        if path:
            self.folder_edit.setText(path)
            self.recount()


def _timer(parent: Any, ms: int, slot: Any) -> QTimer:
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(ms)
    timer.timeout.connect(slot)
    return timer


def narrow(combo: QComboBox, chars: int = 6) -> None:
    """Let a combo box shrink below its longest entry (docks are narrow)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)


def group(title: str, *parts: Any) -> QGroupBox:
    """A titled box holding widgets and layouts, top to bottom."""
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    for part in parts:
        (layout.addLayout if not isinstance(part, QWidget) else layout.addWidget)(part)
    return box
