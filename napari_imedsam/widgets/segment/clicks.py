"""Corrective clicks in the Segment widget: each image's "<image> points" layer.

No Qt widgets here: :class:`ClickTools` listens to the points layer, gives each
new click to the object being worked on (its box selected, or the last one
drawn), with its sign (a click: positive; a right-click or Shift+click:
negative) and its order, and asks the widget to answer that object again from
the cached embedding. Moving or deleting a click answers again. The click goes
into the object's undo step with its mask and map (``journal.box_record``).

Where to click next (Shift+N): from the object's error map and its mask
(``model.error_map.next_click``), a ring in "<image> next click"; Shift+Y and
Shift+X take it as a positive or a negative click.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info

from .. import layers as wl
from ...model.error_map import next_click
from .state import ImageState
from .dock import SegmentDock

SUGGESTION = "next click"

NO_OBJECT = ("click on an object to start it, or draw a box around it; then click where "
             "its mask is wrong")


class ClickTools:
    """Clicks on the current image's objects."""

    def __init__(self, widget: SegmentDock) -> None:
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
                self._added(state, [int(i) for i in getattr(event, "data_indices", ()) or ()])
            elif action in ("changed", "removed"):
                self.answer_again(state)
        except Exception as exc:  # noqa: BLE001 - never into napari's event loop
            show_error(f"I-MedSAM: could not handle the click: {exc}")

    def _added(self, state: ImageState, added: list[int]) -> None:
        points = state.points
        # The rows napari says it added (a selected click's features would otherwise be
        # copied into a new one: napari makes them the defaults).
        fresh = [i % len(points.data) for i in added] or np.flatnonzero(
            points.features["box_key"].to_numpy() <= 0).tolist()
        points.feature_defaults = wl.POINT_FEATURES
        if not fresh:
            return
        row = self.widget.edits.current_row()
        boxes = state.boxes
        problem = None
        if row is None or bool(boxes.features["accepted"].iloc[row]):
            self._new_object(state, fresh)  # a click with no object starts one
            return
        else:
            plane = wl.box_item(boxes, state.image, row).plane
            if plane is not None and any(self._plane(state, r) != plane for r in fresh):
                joins = self._key_slice_of(state, row, {self._plane(state, r) for r in fresh})
                if joins is not None:  # a key slice of the current object, from clicks
                    self._new_object(state, fresh, joins)
                    return
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

    def _key_slice_of(self, state: ImageState, row: int, planes: set[int]) -> int | None:
        """The current object's id when clicks on another slice make a key slice of it
        ("a box on another slice is a key slice" checked; one slice, where the object
        has no box yet), else None."""
        volume = getattr(self.widget, "volume", None)
        if volume is None or not volume.key_boxes.isChecked() or len(planes) != 1 \
                or self.widget.settings.semantic():
            return None
        boxes = state.boxes
        object_id = int(boxes.features["object_id"].iloc[row])
        if object_id <= 0:
            return None
        ids = boxes.features["object_id"].to_numpy()
        taken = {wl.box_item(boxes, state.image, r).plane for r in np.flatnonzero(ids == object_id)}
        return None if planes & taken else object_id

    def _new_object(self, state: ImageState, fresh: list[int],
                    joins: int | None = None) -> None:
        """Clicks with no object being worked on: a new object, of clicks alone (its
        rectangle, a frame around the answer, comes with the answer). ``joins``: the
        object id it takes instead, as a key slice of that object."""
        from ...boxes import take_plane
        from ...session_holder import Request

        points, image = state.points, state.image
        planes = {self._plane(state, r) for r in fresh} if len(
            wl.image_spatial_shape(image)) == 3 else {None}
        if len(planes) != 1:
            self._remove(state, fresh)
            show_info("I-MedSAM: click on one slice at a time")
            return
        plane = planes.pop()
        key = wl.next_key(state.boxes, points)
        for order, r in enumerate(fresh, 1):
            for name, value in (("box_key", key), ("positive", not self.negative),
                                ("order", order)):
                points.features.iloc[r, points.features.columns.get_loc(name)] = value
        wl.recolor_points(points)
        clicks = wl.clicks_of(points, image, key, plane)
        if clicks is None or not clicks.labels.any():
            self._remove(state, fresh)
            show_info(f"I-MedSAM: {NO_OBJECT} (a negative click alone names no object)")
            return
        spec = self.widget.settings.spec()
        request = Request(key, spec, take_plane(wl.level0(image), plane), plane, None,
                          state.window, owner=state.key, clicks=clicks)
        if joins is not None:
            state.key_ids[key] = joins
        self.widget.set_status("a new object from a click..." if joins is None else
                               f"slice {plane} of object {joins} from a click...")
        self.widget.queue(state, request)
        self.widget.start_next()

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

    # -- where to click next -------------------------------------------------------------
    def suggest(self) -> tuple[float, ...] | None:
        """Shift+N: mark where a click would correct the current object most; returns the
        marker's data coordinates (None, with a note, when there is nothing to show)."""
        state = self.widget.state
        row = self.widget.edits.current_row()
        self.clear_suggestion()
        if state is None or row is None or state.masks is None:
            show_info(f"I-MedSAM: {NO_OBJECT}")
            return None
        key = int(state.boxes.features["box_key"].iloc[row])
        object_id = int(state.boxes.features["object_id"].iloc[row])
        part = state.unc_parts.get(key)
        if part is None or part[2].ndim != 3 or not part[2][1].any():
            show_info("I-MedSAM: no error map for this object: the I-MedSAM decoder with a "
                      "model that has one (the default model) draws it")
            return None
        plane, (r0, c0), crop = part
        error = crop[1]
        labels = state.masks.data if plane is None else state.masks.data[plane]
        mask = labels[r0:r0 + error.shape[0], c0:c0 + error.shape[1]] == object_id
        found = next_click(error, mask)
        if found is None:
            self.widget.set_status("no pixel of this object is likely wrong (error map "
                                   "below 50 % everywhere): nothing to suggest")
            return None
        r, c, positive = found
        coords = (r0 + r, c0 + c) if plane is None else (plane, r0 + r, c0 + c)
        layer = self._suggestion_layer(state)
        layer.data = np.asarray([coords], dtype=np.float64)
        layer.features = {"positive": [positive]}
        layer.visible = True
        self._pending = (coords, positive)
        self.widget.set_status(f"suggested a {'positive' if positive else 'negative'} click "
                               "(the ring): Shift+Y takes it as positive, Shift+X as negative")
        return tuple(float(v) for v in coords)

    def take(self, positive: bool) -> None:
        """Shift+Y / Shift+X: make the suggested point a positive / negative click."""
        state = self.widget.state
        pending = getattr(self, "_pending", None)
        if state is None or pending is None or state.points is None:
            show_info("I-MedSAM: press Shift+N first to see where to click")
            return
        coords, _suggested = pending
        self.clear_suggestion()
        self.negative = not positive
        world = state.image.data_to_world(np.asarray(coords, dtype=np.float64))
        state.points.add(np.asarray(state.points.world_to_data(world))[None])

    def clear_suggestion(self) -> None:
        self._pending = None
        state = self.widget.state
        if state is None:
            return
        layer = self._suggestion_layer(state, create=False)
        if layer is not None and len(layer.data):
            layer.data = np.zeros((0, layer.ndim))

    def _suggestion_layer(self, state: ImageState, create: bool = True) -> Any:
        viewer = self.widget.viewer
        name = f"{state.image.name} {SUGGESTION}"
        for layer in viewer.layers:
            if wl.is_ours(layer, SUGGESTION) and wl.owner_name(layer) == state.image.name:
                return layer
        if not create:
            return None
        ndim = len(wl.image_spatial_shape(state.image))
        side = min(wl.level0(state.image).shape[ndim - 2:ndim])
        layer = viewer.add_points(
            np.zeros((0, ndim)), ndim=ndim, name=name, size=max(8.0, side / 30),
            face_color="transparent", border_color="white", border_width=0.25, symbol="ring",
            metadata={"napari_imedsam": SUGGESTION, wl.IMAGE_KEY: state.image.name},
            scale=tuple(state.image.scale), translate=tuple(state.image.translate))
        # The marker shows; the clicks layer stays the one that takes the user's clicks.
        if state.points is not None and state.points in viewer.layers:
            viewer.layers.selection.active = state.points
        return layer
