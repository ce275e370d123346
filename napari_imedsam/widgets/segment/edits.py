"""What the Segment widget does to objects: write a decoded mask, accept, clear,
delete, undo and redo (a box and its pixels always together, through ``journal``).

No Qt widgets here: :class:`ObjectEdits` works on the widget's current image
state and layers, and the widget's buttons and hotkeys call it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.notifications import show_info, show_warning

from . import journal
from ... import journal as history
from .. import layers as wl
from ..common import tell
from ...inference.clicks import CHANGED_NOTHING
from ...session_holder import Outcome
from .state import ImageState
from .dock import SegmentDock

NO_UNCERTAINTY = (
    "Base-model mode: the backbone's own mask decoder gives no uncertainty. For an "
    "uncertainty map choose the I-MedSAM decoder (the medsam_lite model has one), or "
    "load an I-MedSAM adapter for a SAM model."
)


class ObjectEdits:
    """Objects of the Segment widget's images: results in, user's edits, undo/redo."""

    def __init__(self, widget: SegmentDock) -> None:
        self.widget = widget
        #: True while undo/redo moves boxes: those changes are no new requests.
        self.replaying = False
        self._told_no_uncertainty = False

    def apply(self, outcome: Outcome) -> None:
        """Write a decoded mask (the newest answer for its box) into the masks layer,
        as one undo step with the box."""
        request = outcome.request
        state, key = self.widget.state_of(request.owner), request.box_key
        if state is None or state.latest.get(key) != request.req_id:
            return  # superseded, the box was deleted, or its image was closed
        boxes = state.boxes
        row = None if boxes is None else wl.row_of(boxes, key)
        if outcome.error is not None:
            state.last_box.pop(key, None)  # let the same box be tried again
            tell("error", outcome.error, lambda text: self.widget.set_status(f"failed: {text}"))
            return
        if row is None and request.box is None and outcome.mask is not None \
                and wl.click_records(state.points, key):
            row = self._frame(state, key, request, outcome)  # an object of clicks alone
        if row is None:
            return
        if state.masks is None:  # the user deleted it: start a new one
            state.masks = wl.find_or_add_masks(self.widget.viewer, state.image,
                                               wl.image_spatial_shape(state.image))
        before = state.box_memory.get(key)
        classes = self.widget.settings.classes
        # In class-value labelling the classes' values are reserved (an object must never
        # merge with a class); with a new id per box, ids start at 1.
        reserved = set(state.semantic_ids) | ({c.value for c in classes} if len(classes) > 1
                                              and self.widget.settings.semantic() else set())
        value = request.class_value
        if value is not None and not int(boxes.features["object_id"].iloc[row]):
            if value not in state.semantic_ids and \
                    (boxes.features["object_id"].to_numpy() == value).any():
                show_warning(f"I-MedSAM: label {value} is already an object drawn with a new id "
                             "per box; this class's boxes share it now. Undo, and keep one "
                             "labelling per masks layer")
            state.semantic_ids.add(value)
        object_id = (int(boxes.features["object_id"].iloc[row]) or request.class_value
                     or wl.next_free_id(state.masks, boxes, reserved))
        # Semantic labels: boxes of one class share its value, so each box keeps the
        # pixels it wrote (in its journal record) and replaces or clears only those.
        shared = request.class_value is not None and object_id == request.class_value
        own = _own_pixels(before, shared)
        written, changes, pixels = wl.write_object(state.masks, outcome.mask, request.plane,
                                                   object_id, own)
        wl.set_feature(boxes, row, "object_id", object_id)
        after = journal.box_record(boxes, row, state.points)
        if shared or wl.shares_id(boxes, object_id):  # a class's value, or key slices
            after["pixels"] = pixels
        state.box_memory[key] = after
        state.journal.record(history.UndoStep(f"object {object_id}", changes,
                                              [history.BoxChange(key, before, after)]))
        state.masks.selected_label = object_id  # brush corrections continue this object
        if outcome.advice is not None:
            show_warning(f"I-MedSAM: {outcome.advice}")
        elif written == 0 and outcome.mask.any():
            show_info("I-MedSAM: the object lies entirely under other objects; nothing was written")
        self.widget.unc_view.show_object(state, key, request.plane,
                                  outcome.uncertainty if outcome.mask.any() else None,
                                  outcome.error_map)
        # The object's map travels with its undo steps (undo, redo, accept keep it).
        after["uncertainty"] = state.unc_parts.get(key)
        decoder = "I-MedSAM decoder" if outcome.mode == "imedsam" else "base model's decoder"
        note = f"object {object_id}: {written} pixels ({decoder}; encoder {outcome.encoder})"
        if outcome.advice is not None:
            note += f". Hint: {outcome.advice}"
        clicked = request.clicks is not None and len(request.clicks) > 0
        if clicked and changes and history.leaves_as_it_was(changes):  # the object's pixels
            note += f". {CHANGED_NOTHING}"
        if outcome.mode == "sam":
            note += ". " + NO_UNCERTAINTY
            if not self._told_no_uncertainty:
                self._told_no_uncertainty = True
                show_info(f"I-MedSAM: {NO_UNCERTAINTY}")
        # The worker that produced this outcome is still finishing: only queued
        # requests mean more work.
        self.widget.set_status(note + "; more boxes waiting..." if self.widget.waiting else note)

    def _frame(self, state: ImageState, key: int, request: Any, outcome: Outcome) -> int | None:
        """The rectangle of an object made by clicks alone, around its mask (or its clicks,
        when the mask is empty), so that it can be selected, accepted and exported."""
        mask = outcome.mask
        if mask.any():
            rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
        else:
            xy = request.clicks.xy
            box = (float(xy[:, 0].min() - 2), float(xy[:, 1].min() - 2),
                   float(xy[:, 0].max() + 2), float(xy[:, 1].max() + 2))
        self.replaying = True  # ours, recorded with the object's step
        try:
            row = wl.add_frame(state.boxes, state.image, key, box, request.plane)
            joins = state.key_ids.pop(key, None)
            if joins is not None:  # a click on another slice of an object: its key slice
                wl.set_feature(state.boxes, row, "object_id", joins)
            wl.recolor(state.boxes)
        finally:
            self.replaying = False
        state.current = key
        return row

    # -- the current object ----------------------------------------------------------
    def current_row(self) -> int | None:
        """The selected box if exactly one is selected, else the last one worked on."""
        state = self.widget.state
        if state is None or state.boxes is None:
            return None
        if len(state.boxes.selected_data) == 1:
            return int(next(iter(state.boxes.selected_data)))
        return None if state.current is None else wl.row_of(state.boxes, state.current)

    def accept(self) -> None:
        """Commit the current object: later edits of its box no longer change it."""
        row = self.current_row()
        if row is None:
            show_info("I-MedSAM: no current object to accept; draw a box first")
            return
        state, boxes = self.widget.state, self.widget.state.boxes
        key = int(boxes.features["box_key"].iloc[row])
        previous = state.box_memory.get(key)
        before = journal.box_record(boxes, row, state.points)
        wl.set_feature(boxes, row, "accepted", True)
        after = state.box_memory[key] = journal.box_record(boxes, row, state.points)
        for kept in ("pixels", "uncertainty"):  # semantic labels' pixels; the object's map
            if previous is not None and previous.get(kept) is not None:
                before[kept] = after[kept] = previous[kept]
        state.journal.record(history.UndoStep("accept", [],
                                              [history.BoxChange(key, before, after)]))
        wl.recolor(boxes)
        state.current = None
        boxes.selected_data = set()
        boxes.mode = "add_rectangle"
        self.widget.set_status("object accepted: draw the next box")

    def clear(self) -> None:
        """Remove the current object's pixels and its box: one undo step for both."""
        row = self.current_row()
        if row is None:
            show_info("I-MedSAM: no current object to clear")
            return
        self.remove_rows(self.widget.state, [row], "clear")
        self.widget.state.boxes.mode = "add_rectangle"
        self.widget.set_status("object cleared (Ctrl+Z brings it back)")

    def remove_rows(self, state: ImageState, rows: list[int], what: str) -> None:
        """Clear the objects of ``rows`` (accepted ones too: the user asked) and remove
        their boxes, as one journal step."""
        boxes, step = state.boxes, history.UndoStep(what)
        for row in rows:
            key = int(boxes.features["box_key"].iloc[row])
            step.boxes.append(history.BoxChange(key, self._record(state, row, key), None))
            step.masks += _take_pixels(state, row, key)
            self.forget_key(state, key)
        self.replaying = True  # the removal below is ours, already recorded
        try:
            for change in step.boxes:  # the object's clicks go with it
                if state.points is not None:
                    wl.set_clicks(state.points, change.key, [])
            boxes.selected_data = set(rows)
            boxes.remove_selected()
        finally:
            self.replaying = False
        state.journal.record(step)
        self.widget.unc_view.redraw_all(state)

    def forget_rows(self, state: ImageState, rows: tuple[int, ...]) -> None:
        """The user deleted boxes (napari's delete): their objects go too, undoably;
        accepted objects keep their pixels."""
        boxes, step = state.boxes, history.UndoStep("delete")
        for row in rows:
            if not 0 <= row < len(boxes.features):
                continue
            key = int(boxes.features["box_key"].iloc[row])
            step.boxes.append(history.BoxChange(key, self._record(state, row, key), None))
            if not bool(boxes.features["accepted"].iloc[row]):
                step.masks += _take_pixels(state, row, key)
            self.forget_key(state, key)
        if state.points is not None:
            self.replaying = True  # their clicks go with the boxes (napari removes the boxes)
            try:
                for change in step.boxes:
                    wl.set_clicks(state.points, change.key, [])
            finally:
                self.replaying = False
        state.journal.record(step)
        self.widget.unc_view.redraw_all(state)

    @staticmethod
    def _record(state: ImageState, row: int, key: int) -> history.BoxRecord:
        """The box as it is, with its clicks and the map its last answer drew."""
        record = journal.box_record(state.boxes, row, state.points)
        memory = state.box_memory.get(key) or {}
        for kept in ("pixels", "uncertainty"):
            if memory.get(kept) is not None:
                record[kept] = memory[kept]
        return record

    def forget_key(self, state: ImageState, key: int) -> None:
        self.widget.forget_request(state.key, key)
        state.forget_object(key)
        state.box_memory.pop(key, None)

    # -- undo / redo -------------------------------------------------------------------
    def undo(self) -> None:
        self._replay(undo=True)

    def redo(self) -> None:
        self._replay(undo=False)

    def _replay(self, undo: bool) -> None:
        state = self.widget.state
        if state is None or state.boxes is None:
            return
        step = state.journal.undo() if undo else state.journal.redo()
        if step is None:
            self.widget.set_status("nothing to undo" if undo else "nothing to redo")
            return
        self.replaying = True
        try:
            if state.masks is not None:
                history.apply_masks(state.masks, step.masks, undo)
            journal.apply_boxes(state.boxes, step.boxes, undo, state.points)
        finally:
            self.replaying = False
        for key, before, after in step.maps:  # propagated slices' maps
            target = before if undo else after
            if target is None:
                state.unc_parts.pop(key, None)
            else:
                state.unc_parts[key] = target
        restored = None
        for change in step.boxes:
            target = change.before if undo else change.after
            self.forget_key(state, change.key)
            if target is not None:
                restored = change.key
                state.box_memory[change.key] = target
                if target.get("uncertainty") is not None:
                    state.unc_parts[change.key] = target["uncertainty"]
                plane_box = self._plane_box(state, change.key)
                if plane_box is not None:
                    state.last_box[change.key] = plane_box
        if restored is not None and not bool(
                state.boxes.features["accepted"].iloc[wl.row_of(state.boxes, restored)]):
            state.current = restored  # the next click still corrects the object undone
        self.widget.unc_view.redraw_all(state)
        self.widget.set_status(f"{'undone' if undo else 'redone'}: {step.what}")

    def _plane_box(self, state: ImageState, key: int) -> tuple | None:
        """(plane, box) of a restored box, so that it is not segmented again as is."""
        row = wl.row_of(state.boxes, key)
        if row is None:
            return None
        try:
            item = wl.box_item(state.boxes, state.image, row)
            return item.plane, item.box, item.frame, _click_key(
                wl.clicks_of(state.points, state.image, key, item.plane))
        except ValueError:
            return None


def _click_key(clicks: Any) -> bytes | None:
    """What a request's clicks were, to tell a new click set from the one answered."""
    return None if clicks is None else clicks.key()


def _own_pixels(record: history.BoxRecord, shared: bool) -> np.ndarray | None:
    """The flat indices a box that shares its label value wrote (semantic labels;
    none known: none); None for a box with an id of its own, whose pixels are all
    of that id."""
    pixels = None if record is None else record.get("pixels")
    if pixels is None and shared:
        return np.empty(0, np.int64)
    return pixels


def _take_pixels(state: ImageState, row: int, key: int) -> list[history.MaskChange]:
    """Clear the pixels of the object in ``row``: all of its id, or those its box
    wrote when the id is a class's value shared by several boxes."""
    boxes = state.boxes
    object_id = int(boxes.features["object_id"].iloc[row])
    if not object_id or state.masks is None:
        return []
    own = _own_pixels(state.box_memory.get(key), wl.shares_id(boxes, object_id))
    return wl.clear_object(state.masks, object_id, own)
