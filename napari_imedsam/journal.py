"""Undo and redo of the Segment widget's edits: a box and its mask change together.

napari's own undo knows the labels or the shapes, never both: undoing a
segmentation there brought the pixels back without the box (or the box without
its pixels), and the orphan then blocked new boxes. Every change the widget
makes (a segmented box, an edited box, a cleared or deleted object, an
accepted object, a propagation, a click) is one :class:`UndoStep` here, holding
the pixels and the box before and after; undo and redo apply them whole. Brush
strokes stay with napari's undo of the masks layer.

numpy only: the napari side (reading a box from its layer and putting it back)
is ``widgets/segment/journal.py``.

The journal keeps at most ``limit`` steps and ``max_bytes`` of pixel records,
dropping the oldest first, so memory stays bounded on large volumes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A box as the journal stores it: vertices and bookkeeping features, or None (absent).
BoxRecord = dict[str, Any] | None


@dataclass
class MaskChange:
    """Pixels of a labels array, by flat index, before and after a change."""

    flat: np.ndarray  # int64 flat indices into the labels array
    before: np.ndarray
    after: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.flat.nbytes + self.before.nbytes + self.after.nbytes


@dataclass
class BoxChange:
    key: int  # the box's stable ``box_key``
    before: BoxRecord
    after: BoxRecord


@dataclass
class UndoStep:
    """One undoable action: its name (shown in the status) and what it changed."""

    what: str
    masks: list[MaskChange] = field(default_factory=list)
    boxes: list[BoxChange] = field(default_factory=list)
    #: Uncertainty maps of objects without a box (propagated slices): (key, before,
    #: after), each the widget's stored part or None.
    maps: list[tuple[int, Any, Any]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.masks)


class Journal:
    """Undo and redo stacks of :class:`UndoStep`, bounded in count and bytes."""

    def __init__(self, limit: int = 100, max_bytes: int = 256 << 20) -> None:
        self.limit, self.max_bytes = limit, max_bytes
        self._undo: deque[UndoStep] = deque()
        self._redo: list[UndoStep] = []

    def record(self, step: UndoStep) -> None:
        if not step.masks and not step.boxes and not step.maps:
            return
        self._undo.append(step)
        self._redo.clear()
        while len(self._undo) > self.limit or (
                len(self._undo) > 1 and sum(s.nbytes for s in self._undo) > self.max_bytes):
            self._undo.popleft()

    def undo(self) -> UndoStep | None:
        if not self._undo:
            return None
        step = self._undo.pop()
        self._redo.append(step)
        return step

    def redo(self) -> UndoStep | None:
        if not self._redo:
            return None
        step = self._redo.pop()
        self._undo.append(step)
        return step

    def __len__(self) -> int:
        return len(self._undo)


def write_pixels(labels: Any, index: tuple[np.ndarray, ...], value: int | np.ndarray) -> MaskChange:
    """Write ``value`` at ``index`` of a Labels layer's data and return the change.

    Written straight into the array (not through napari's history: the journal
    is the undo for these), then the layer is refreshed by the caller.
    """
    data = labels.data
    flat = np.ravel_multi_index(index, data.shape).astype(np.int64)
    before = data.reshape(-1)[flat].copy() if data.flags.c_contiguous else data[index].copy()
    data[index] = value
    after = data[index].copy()
    return MaskChange(flat, before, after)


def leaves_as_it_was(changes: list[MaskChange]) -> bool:
    """Whether ``changes``, applied in order, leave every pixel they touch with the
    value it had before them (an object cleared and written again where it was)."""
    if not changes:
        return True
    flat = np.concatenate([c.flat for c in changes])
    order = np.argsort(flat, kind="stable")  # each pixel's changes, oldest first
    flat = flat[order]
    first = np.r_[True, flat[1:] != flat[:-1]]
    last = np.r_[flat[1:] != flat[:-1], True]
    before = np.concatenate([c.before for c in changes])[order]
    after = np.concatenate([c.after for c in changes])[order]
    return bool(np.array_equal(before[first], after[last]))


def apply_masks(labels: Any, changes: list[MaskChange], undo: bool) -> None:
    """Put the pixels of ``changes`` back as they were before (``undo``) or after."""
    data = labels.data
    for change in (reversed(changes) if undo else changes):
        index = np.unravel_index(change.flat, data.shape)
        data[index] = change.before if undo else change.after
    labels.refresh()
