"""The Fine-tune widget's table of training pairs: one row per Labels layer.

Each row says whether the layer is used, which image it annotates (guessed,
changeable) and how many objects and slices it gives, or why it cannot be
used. The table follows the layer list; choices survive a refresh.

The Segment widget's own masks layer may hold slices that propagation wrote and
nobody reviewed: given the widget's record of them (``propagated_of``), the
pairs leave those out and the count says how many.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any

from napari.layers import Image, Labels
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QAbstractItemView, QComboBox, QHeaderView, QTableWidget, QTableWidgetItem

from .. import layers as wl
from ...finetune import DataError, LayerPair, SliceChoice, count, count_unreviewed, guess_image

USE, LABELS, IMAGE, DATA = range(4)
#: A Labels layer -> what propagation wrote into it (``LayerPair.propagated``).
PropagatedOf = Callable[[Labels], Mapping[int, Mapping[int, Collection[bytes]]]]


def _image_layers(viewer: Any) -> list[tuple[int, Image]]:
    """Images that can be trained on (not our uncertainty maps), with their index."""
    return [(i, layer) for i, layer in enumerate(viewer.layers)
            if isinstance(layer, Image) and not wl.is_ours(layer, wl.UNCERTAINTY)]


def layer_pair(image: Image, labels: Labels, propagated_of: PropagatedOf | None = None
               ) -> LayerPair:
    """The arrays of an image and a Labels layer (full resolution, not copied), with
    what propagation wrote into the labels when ``propagated_of`` is given (a copy:
    propagation may go on while the pair is used in a worker)."""
    record = {} if propagated_of is None else propagated_of(labels)
    written = {int(oid): {int(p): frozenset(f) for p, f in planes.items()}
               for oid, planes in record.items()}
    return LayerPair(image.name, labels.name, wl.level0(image), wl.level0(labels),
                     bool(image.rgb), written)


class PairsTable(QTableWidget):
    """Rows of (use, labels layer, image layer, what it gives)."""

    #: A row was ticked or unticked, or its image changed.
    changed = Signal()

    def __init__(self, parent: Any = None) -> None:
        super().__init__(0, 4, parent)
        self.setHorizontalHeaderLabels(["use", "labels", "image", "gives"])
        self.verticalHeader().setVisible(False)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        header = self.horizontalHeader()
        for col, mode in ((USE, QHeaderView.ResizeMode.ResizeToContents),
                          (LABELS, QHeaderView.ResizeMode.Stretch),
                          (IMAGE, QHeaderView.ResizeMode.Stretch),
                          (DATA, QHeaderView.ResizeMode.ResizeToContents)):
            header.setSectionResizeMode(col, mode)
        self.setMinimumHeight(90)
        # Long layer names keep both ends ("scan_0001 … masks"), so two rows never read
        # the same; the whole name is in the tooltip.
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self._choices: dict[str, tuple[bool, str | None]] = {}  # labels -> (use, image)
        self.itemChanged.connect(lambda _item: self.changed.emit())

    # -- rows ---------------------------------------------------------------------
    def sync(self, viewer: Any) -> None:
        """Rebuild the rows from the layer list, keeping the user's choices."""
        self._remember()
        images = _image_layers(viewer)
        info = [(i, im.name, wl.image_spatial_shape(im)) for i, im in images]
        self.blockSignals(True)
        self.setRowCount(0)
        rows = []
        for index, layer in enumerate(viewer.layers):
            if not isinstance(layer, Labels) or (wl.is_ours(layer)
                                                 and not wl.is_ours(layer, wl.MASKS)):
                continue  # the Segment widget's previews are views, not labels
            shape = tuple(wl.level0(layer).shape)
            rows.append((layer, shape, guess_image(layer.name, index, shape, info)))
        # Images with labels of the user's own (ground truth): the Segment widget's masks
        # of those images (the model's answers) are offered but not ticked by default.
        truth = {guess for layer, shape, guess in rows if not wl.is_ours(layer)
                 and any(tuple(s) == shape for *_, s in info)}
        for layer, shape, guess in rows:
            default = any(tuple(s) == shape for *_, s in info) and not (
                wl.is_ours(layer, wl.MASKS) and guess in truth)
            use, chosen = self._choices.get(layer.name, (default, guess))
            row = self.rowCount()
            self.insertRow(row)
            check = QTableWidgetItem()
            check.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
            check.setCheckState(Qt.CheckState.Checked if use else Qt.CheckState.Unchecked)
            self.setItem(row, USE, check)
            name = QTableWidgetItem(layer.name)
            name.setToolTip(layer.name)
            name.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.setItem(row, LABELS, name)
            combo = QComboBox()
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)
            combo.addItems([im.name for _, im in images])
            if chosen in [im.name for _, im in images]:
                combo.setCurrentText(chosen)
            combo.currentTextChanged.connect(lambda _text: self.changed.emit())
            self.setCellWidget(row, IMAGE, combo)
            gives = QTableWidgetItem("")
            gives.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.setItem(row, DATA, gives)
        self.blockSignals(False)

    def _remember(self) -> None:
        for row in range(self.rowCount()):
            combo = self.cellWidget(row, IMAGE)
            self._choices[self.item(row, LABELS).text()] = (
                self.item(row, USE).checkState() == Qt.CheckState.Checked,
                combo.currentText() if combo is not None else None)

    def set_row(self, labels: str, *, use: bool | None = None, image: str | None = None) -> None:
        """Change a row (scripts and tests; the user clicks)."""
        for row in range(self.rowCount()):
            if self.item(row, LABELS).text() != labels:
                continue
            if use is not None:
                self.item(row, USE).setCheckState(
                    Qt.CheckState.Checked if use else Qt.CheckState.Unchecked)
            if image is not None:
                self.cellWidget(row, IMAGE).setCurrentText(image)
            return
        raise KeyError(f"no Labels layer {labels!r} in the table")

    def used_rows(self) -> list[tuple[int, str, str]]:
        """``(row, labels name, image name)`` of the ticked rows."""
        out = []
        for row in range(self.rowCount()):
            if self.item(row, USE).checkState() == Qt.CheckState.Checked:
                combo = self.cellWidget(row, IMAGE)
                out.append((row, self.item(row, LABELS).text(), combo.currentText()))
        return out

    # -- data ---------------------------------------------------------------------
    def pairs(self, viewer: Any, propagated_of: PropagatedOf | None = None) -> list[LayerPair]:
        """The ticked rows as arrays; :class:`DataError` if a layer is missing. With
        ``propagated_of``, the pairs leave out propagated slices nobody reviewed."""
        out = []
        for _row, labels, image in self.used_rows():
            if not image or image not in viewer.layers:
                raise DataError(f"labels '{labels}' have no image: add the image they were "
                                "drawn on, or untick the row")
            if labels not in viewer.layers:
                raise DataError(f"the Labels layer '{labels}' was removed")
            out.append(layer_pair(viewer.layers[image], viewer.layers[labels], propagated_of))
        return out

    def recount(self, viewer: Any, choice: SliceChoice, propagated_of: PropagatedOf | None = None,
                keep_unreviewed: bool = False) -> tuple[int, int, list[str], int]:
        """Fill the "gives" column; returns (objects, slices, problems, unreviewed) over
        used rows: ``unreviewed`` propagated slices (``propagated_of``'s) are left out of
        the objects and slices unless ``keep_unreviewed``."""
        objects = slices = unreviewed = 0
        problems = []
        used = {row for row, *_ in self.used_rows()}
        for row in range(self.rowCount()):
            labels = self.item(row, LABELS).text()
            image = self.cellWidget(row, IMAGE).currentText()
            n_unrev = 0
            try:
                if image not in viewer.layers or labels not in viewer.layers:
                    raise DataError(f"labels '{labels}' have no image")
                pair = layer_pair(viewer.layers[image], viewer.layers[labels], propagated_of)
                n_obj, n_sl = count(dataclasses.replace(pair, propagated={}) if keep_unreviewed
                                    else pair, choice)  # checks the pair first
                n_unrev = count_unreviewed(pair, choice)
                text = f"{n_obj} obj / {n_sl} sl"
                if row in used:
                    objects, slices = objects + n_obj, slices + n_sl
                    unreviewed += n_unrev
            except DataError as exc:
                text = "shape mismatch" if "match" in str(exc) else "unusable"
                if row in used:
                    problems.append(str(exc))
            blocked = self.blockSignals(True)  # a text change is not a user's change
            self.item(row, DATA).setText(text)
            self.item(row, DATA).setToolTip(
                f"{n_unrev} propagated slices nobody reviewed: "
                f"{'trained on' if keep_unreviewed else 'left out'}" if n_unrev else "")
            self.blockSignals(blocked)
        return objects, slices, problems, unreviewed
