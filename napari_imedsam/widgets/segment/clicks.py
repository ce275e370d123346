"""Corrective clicks in the Segment widget: each image's "<image> points" layer.

No Qt widgets here: :class:`ClickTools` listens to the points layer, gives each
new click to the object being worked on (its box selected, or the last one
drawn), with its sign (a click: positive; a right-click or Shift+click:
negative) and its order, and asks the widget to answer that object again from
the cached embedding. Moving or deleting a click answers again. The click goes
into the object's undo step with its mask and map (``journal.box_record``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info

from .. import layers as wl
from .state import ImageState

NO_OBJECT = ("a click corrects an object: draw a box around it first (or select its box), "
             "then click where the mask is wrong")


class ClickTools:
    """Clicks on the current image's objects."""

    def __init__(self, widget: Any) -> None:
        self.widget = widget
        #: The sign of the click being made, read from the mouse press.
        self.negative = False

    def connect(self, state: ImageState) -> None:
        points = state.points
        if points is None:
            return
        points.events.data.connect(lambda event, st=state: self._on_data(st, event))
        points.mouse_drag_callbacks.append(self._on_press)
        points.mode = "add"

    def _on_press(self, _layer: Any, event: Any) -> None:
        # napari's own "add" mode adds the point on release; its sign is decided here.
        self.negative = getattr(event, "button", 1) == 2 or "Shift" in set(
            getattr(event, "modifiers", ()) or ())

    def _on_data(self, state: ImageState, event: Any) -> None:
        if self.widget.edits.replaying:
            return
        try:
            action = str(event.action)
            if action == "added":
                self._added(state)
            elif action in ("changed", "removed"):
                self.answer_again(state)
        except Exception as exc:  # noqa: BLE001 - never into napari's event loop
            show_error(f"I-MedSAM: could not handle the click: {exc}")

    def _added(self, state: ImageState) -> None:
        points = state.points
        keys = points.features["box_key"].to_numpy()
        fresh = np.flatnonzero(keys <= 0).tolist()
        if not fresh:
            return
        row = self.widget.edits.current_row()
        boxes = state.boxes
        problem = None
        if row is None:
            problem = NO_OBJECT
        elif bool(boxes.features["accepted"].iloc[row]):
            problem = ("that object is accepted and stays as it is; select another box, "
                       "or clear it (Shift+C) to redo it")
        else:
            plane = wl.box_item(boxes, state.image, row).plane
            if plane is not None and any(self._plane(state, r) != plane for r in fresh):
                problem = (f"click on the object's slice ({plane}): each slice's object is "
                           "corrected on that slice")
        if problem is not None:
            self._remove(state, fresh)
            show_info(f"I-MedSAM: {problem}")
            return
        key = int(boxes.features["box_key"].iloc[row])
        order = max((r["order"] for r in wl.click_records(points, key)), default=0)
        for r in fresh:
            order += 1
            for name, value in (("box_key", key), ("positive", not self.negative),
                                ("order", order)):
                points.features.iloc[r, points.features.columns.get_loc(name)] = value
        wl.recolor_points(points)
        self.widget.set_status(f"{'negative' if self.negative else 'positive'} click on "
                               f"object {int(boxes.features['object_id'].iloc[row]) or key}...")
        self.widget.request_rows(state, [row])

    def answer_again(self, state: ImageState) -> None:
        """A click moved or deleted: answer the objects whose clicks changed (the
        widget skips those already answered as they are)."""
        boxes = state.boxes
        if boxes is None:
            return
        accepted = boxes.features["accepted"].to_numpy(bool)
        self.widget.request_rows(state, [r for r in range(len(boxes.data)) if not accepted[r]])

    def _plane(self, state: ImageState, row: int) -> int:
        data = state.image.world_to_data(state.points.data_to_world(state.points.data[row]))
        return int(round(float(data[-3])))

    def _remove(self, state: ImageState, rows: list[int]) -> None:
        edits = self.widget.edits
        edits.replaying = True
        try:
            state.points.selected_data = set(rows)
            state.points.remove_selected()
        finally:
            edits.replaying = False
