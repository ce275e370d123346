"""napari layer plumbing for both docks (no Qt widgets here).

Each image gets its own layers, named after it ("<image> boxes", "<image>
masks", "<image> uncertainty") and marked in their metadata with their role
and their image, so that several images can be annotated in one viewer.

The boxes layer carries its own bookkeeping as per-shape features, so napari
keeps it in step when shapes are added, deleted or reordered:

- ``box_key``: a stable identity for the rectangle (indices shift on delete);
- ``object_id``: the label id its mask was written with (0 = not yet written);
- ``accepted``: the user committed the object; edits no longer re-segment it;
- ``head``: the class (decoder head) that answered the box, -1 for none chosen, so a
  moved box is answered by its own class whatever is chosen now;
- ``frame``: the rectangle only frames an object made by clicks alone (it is not a
  prompt); moving or resizing it makes it the object's box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes

from ..boxes import Box, box_from_vertices, plane_index, spatial_shape
from ..journal import write_pixels

BOXES, MASKS, UNCERTAINTY, POINTS = "boxes", "masks", "uncertainty", "points"
#: Metadata key naming the image a widget layer belongs to.
IMAGE_KEY = "napari_imedsam_image"
FEATURES = {"box_key": 0, "object_id": 0, "accepted": False, "head": -1, "frame": False}
EDGE_ACTIVE, EDGE_ACCEPTED = "yellow", "#9a9a9a"
#: A click's bookkeeping: the object (``box_key``) it corrects, its sign, its order.
POINT_FEATURES = {"box_key": 0, "positive": True, "order": 0}
#: Positive clicks green, negative ones red (as SAM tools show them); neither is the
#: boxes' yellow.
POSITIVE_COLOR, NEGATIVE_COLOR = "#39e639", "#ff3b3b"


def level0(layer: Any) -> Any:
    """A layer's full-resolution data: level 0 when it is multiscale, else its data."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def image_spatial_shape(image: Image) -> tuple[int, ...]:
    """Shape of the labels that go with ``image`` (full resolution, no colour axis)."""
    return spatial_shape(level0(image).shape, bool(image.rgb))


def is_ours(layer: Any, role: str | None = None) -> bool:
    """Whether ``layer`` is one of the widget's layers (of ``role``, if given)."""
    mark = layer.metadata.get("napari_imedsam")
    return mark is not None if role is None else mark == role


def owner_name(layer: Any) -> str | None:
    """The name of the image a widget layer belongs to (None for other layers)."""
    return layer.metadata.get(IMAGE_KEY) if is_ours(layer) else None


def layer_name(image: Image, role: str) -> str:
    return f"{image.name} {role}"


def _marks(image: Image, role: str) -> dict[str, Any]:
    return {"napari_imedsam": role, IMAGE_KEY: image.name}


def _find(viewer: Any, image: Image, role: str, kind: type, fits: Any) -> Any:
    for layer in viewer.layers:
        if isinstance(layer, kind) and is_ours(layer, role) and owner_name(layer) == image.name \
                and fits(layer):
            return layer
    return None


def set_feature(boxes: Shapes, row: int, name: str, value: Any) -> None:
    """Set one shape's bookkeeping value (by position: row labels are not guaranteed)."""
    boxes.features.iloc[row, boxes.features.columns.get_loc(name)] = value


def _geometry(image: Image) -> dict[str, Any]:
    """scale/translate (and units, e.g. mm) that put a new layer exactly over ``image``
    (spatial axes only)."""
    return {"scale": tuple(image.scale), "translate": tuple(image.translate),
            "units": tuple(image.units)}


def find_or_add_boxes(viewer: Any, image: Image, ndim: int) -> Shapes:
    """``image``'s boxes Shapes layer: reused when its ndim fits, else a new one."""
    layer = _find(viewer, image, BOXES, Shapes, lambda lay: lay.ndim == ndim)
    if layer is not None:
        ensure_features(layer)
        return layer
    shape = level0(image).shape
    side = min(shape[ndim - 2:ndim])
    return viewer.add_shapes(
        ndim=ndim, name=layer_name(image, BOXES), shape_type="rectangle",
        edge_color=EDGE_ACTIVE, face_color="transparent", edge_width=max(1.0, side / 256),
        features={k: np.zeros(0, type(v)) for k, v in FEATURES.items()},
        feature_defaults=FEATURES, metadata=_marks(image, BOXES), **_geometry(image))


def ensure_features(layer: Shapes) -> None:
    """Add the bookkeeping columns to a reused boxes layer that lacks them."""
    missing = {k: v for k, v in FEATURES.items() if k not in layer.features}
    if not missing:
        return
    layer.features = layer.features.assign(**missing)
    defaults = layer.feature_defaults
    layer.feature_defaults = {**(defaults.iloc[0].to_dict() if len(defaults) else {}), **FEATURES}


def find_or_add_masks(viewer: Any, image: Image, shape: tuple[int, ...]) -> Labels:
    """``image``'s masks Labels layer: reused when its shape matches, else a new one."""
    layer = _find(viewer, image, MASKS, Labels, lambda lay: lay.data.shape == shape)
    if layer is not None:
        return layer
    # The image's source geometry (a NIfTI affine) lets File > Save write the
    # masks onto the source's voxel grid.
    source = {k: v for k, v in image.metadata.items() if k == "imedsam_source"}
    return viewer.add_labels(np.zeros(shape, np.int32), name=layer_name(image, MASKS),
                             opacity=0.55, metadata={**source, **_marks(image, MASKS)},
                             **_geometry(image))


def assign_keys(boxes: Shapes) -> list[int]:
    """Give new (or pasted, hence duplicated) rectangles a fresh ``box_key``.

    Returns the rows that got one: they are the rectangles to segment.
    """
    keys = boxes.features["box_key"].to_numpy()
    seen: set[int] = set()
    fresh = []
    next_key = int(keys.max(initial=0)) + 1
    for row, key in enumerate(keys):
        if key <= 0 or key in seen:
            for name, value in (("box_key", next_key), ("object_id", 0), ("accepted", False),
                                ("frame", False)):
                set_feature(boxes, row, name, value)
            seen.add(next_key)
            next_key += 1
            fresh.append(row)
        else:
            seen.add(int(key))
    return fresh


def row_of(boxes: Shapes, box_key: int) -> int | None:
    """Current row of the rectangle with ``box_key`` (None once it was deleted)."""
    rows = np.flatnonzero(boxes.features["box_key"].to_numpy() == box_key)
    return int(rows[0]) if rows.size else None


def recolor(boxes: Shapes) -> None:
    """Accepted boxes grey, the rest yellow, so the user sees what is still editable."""
    if len(boxes.data):
        accepted = boxes.features["accepted"].to_numpy(bool)
        boxes.edge_color = [EDGE_ACCEPTED if a else EDGE_ACTIVE for a in accepted]
    boxes.current_edge_color = EDGE_ACTIVE


def vertices_in_image(boxes: Shapes, image: Image, row: int) -> np.ndarray:
    """A shape's vertices in the image layer's data coordinates (via world space, so a
    reused boxes layer with another scale or offset still lines up)."""
    verts = np.asarray(boxes.data[row], dtype=np.float64)
    return np.array([image.world_to_data(boxes.data_to_world(v)) for v in verts])


@dataclass(frozen=True)
class BoxItem:
    """One rectangle of a boxes layer, read as the box a model answers."""

    row: int
    object_id: int  # 0 until its mask is written
    plane: int | None  # the slice of a volume, None on a 2D image
    box: Box
    key: int  # the rectangle's stable identity (``box_key``)
    accepted: bool
    head: int | None = None  # the class that answered it (models with several classes)
    frame: bool = False  # it frames an object of clicks alone: no prompt

    @property
    def prompt_box(self) -> Box:
        """The box the model is given: the rectangle, or NaN for a frame (clicks alone)."""
        return (float("nan"),) * 4 if self.frame else self.box


def box_item(boxes: Shapes, image: Image, row: int) -> BoxItem:
    """Row ``row`` of ``boxes`` as a :class:`BoxItem`; ValueError (with what to do) for
    a rectangle across slices, outside the image or too small."""
    spatial = image_spatial_shape(image)
    verts = vertices_in_image(boxes, image, row)
    plane = plane_index(verts[:, 0], spatial[0]) if len(spatial) == 3 else None
    features = boxes.features
    head = int(features["head"].iloc[row]) if "head" in features else -1
    frame = bool(features["frame"].iloc[row]) if "frame" in features else False
    return BoxItem(row, int(features["object_id"].iloc[row]), plane,
                   box_from_vertices(verts[:, -2:], spatial[-2:]),
                   int(features["box_key"].iloc[row]), bool(features["accepted"].iloc[row]),
                   None if head < 0 else head, frame)


def next_key(boxes: Shapes, points: Points | None) -> int:
    """A ``box_key`` no rectangle and no click holds yet."""
    keys = [int(boxes.features["box_key"].max()) if len(boxes.features) else 0]
    if points is not None and len(points.features):
        keys.append(int(points.features["box_key"].max()))
    return max(keys) + 1


def add_frame(boxes: Shapes, image: Image, key: int, box: Box, plane: int | None) -> int:
    """A rectangle framing an object of clicks alone (edge box ``box``); returns its row."""
    x0, y0, x1, y1 = box
    corners = np.array([[y0, x0], [y0, x1 - 1], [y1 - 1, x1 - 1], [y1 - 1, x0]], dtype=float)
    if plane is not None:
        corners = np.column_stack([np.full(4, float(plane)), corners])
    world = [image.data_to_world(c) for c in corners]
    boxes.add_rectangles(np.array([boxes.world_to_data(w) for w in world]))
    row = len(boxes.data) - 1
    for name, value in (("box_key", key), ("object_id", 0), ("accepted", False),
                        ("frame", True)):
        set_feature(boxes, row, name, value)
    return row


def box_items(boxes: Shapes, image: Image, *, with_objects: bool = True) -> list[BoxItem]:
    """Every usable rectangle of ``boxes`` (those :func:`box_item` refuses are left out);
    ``with_objects``: only those whose mask was written."""
    items = []
    for row in range(len(boxes.data)):
        if with_objects and int(boxes.features["object_id"].iloc[row]) <= 0:
            continue
        try:
            items.append(box_item(boxes, image, row))
        except ValueError:
            continue  # a box the widget never used
    return items


def next_free_id(labels: Labels, boxes: Shapes | None, reserved: Any = ()) -> int:
    """max + 1 over the labels and every id a box holds (an id whose pixels were
    undone must not be handed to another object while its box still claims it),
    skipping ``reserved`` ids: the label values of a model's classes, which boxes
    in semantic labelling write, so that an object never merges with a class."""
    used = int(np.max(labels.data, initial=0))
    if boxes is not None and len(boxes.data):
        used = max(used, int(boxes.features["object_id"].max()))
    candidate = used + 1
    while candidate in reserved:
        candidate += 1
    return candidate


def write_object(labels: Labels, mask: np.ndarray, plane: int | None, object_id: int,
                 own: np.ndarray | None = None) -> tuple[int, list[Any], np.ndarray]:
    """Write ``mask`` as ``object_id`` onto background pixels of ``plane``.

    The object's previous pixels are cleared first (an edited box): all pixels
    of ``object_id`` on that plane, or, when several boxes share the id (a
    class's label value in semantic labelling), only ``own``: the flat indices
    this box wrote last time. Other objects' pixels are never overwritten.
    Returns the number of pixels written, the changes for the widget's journal
    (undo and redo take the box and its pixels together; see
    ``widgets.segment.journal``) and the flat indices written.
    """
    data = labels.data
    target = data if plane is None else data[plane]
    changes = []
    if own is None:
        old = _on_plane(np.nonzero(target == object_id), plane)
    else:
        old = np.unravel_index(own[data.reshape(-1)[own] == object_id], data.shape)
    if old[0].size:
        changes.append(write_pixels(labels, old, 0))
    rows, cols = np.nonzero(mask & (target == 0))
    written = np.empty(0, np.int64)
    if rows.size:
        change = write_pixels(labels, _on_plane((rows, cols), plane), object_id)
        changes.append(change)
        written = change.flat
    labels.refresh()
    return int(rows.size), changes, written


def _on_plane(index: tuple[np.ndarray, ...], plane: int | None) -> tuple[np.ndarray, ...]:
    return index if plane is None else (np.full_like(index[0], plane), *index)


def shares_id(boxes: Shapes, object_id: int) -> bool:
    """Another box has the same label value (semantic labels of one class)."""
    return bool((boxes.features["object_id"].to_numpy() == object_id).sum() > 1)


def clear_object(labels: Labels, object_id: int, own: np.ndarray | None = None) -> list[Any]:
    """Remove an object's pixels (all of ``object_id``, or of ``own`` only when boxes
    share the id, as in :func:`write_object`); returns the changes for the journal."""
    if own is None:
        old = np.nonzero(labels.data == object_id)
    else:
        old = np.unravel_index(own[labels.data.reshape(-1)[own] == object_id], labels.data.shape)
    if not old[0].size:
        return []
    change = write_pixels(labels, old, 0)
    labels.refresh()
    return [change]


def find_or_add_uncertainty(viewer: Any, image: Image, shape: tuple[int, ...]) -> Image:
    """``image``'s uncertainty Image layer (the widget sets its colours and scale)."""
    layer = _find(viewer, image, UNCERTAINTY, Image, lambda lay: lay.data.shape == shape)
    if layer is not None:
        return layer
    # Adding a layer makes it the active one: give the focus back so the
    # rectangle tool (or whatever the user was doing) keeps working.
    active = viewer.layers.selection.active
    layer = viewer.add_image(np.zeros(shape, np.float32), name=layer_name(image, UNCERTAINTY),
                             metadata=_marks(image, UNCERTAINTY), **_geometry(image))
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


# -- clicks ------------------------------------------------------------------------------
def find_or_add_points(viewer: Any, image: Image, ndim: int) -> Points:
    """``image``'s clicks Points layer ("<image> points"): reused when its ndim fits."""
    layer = _find(viewer, image, POINTS, Points, lambda lay: lay.ndim == ndim)
    if layer is not None:
        missing = {k: v for k, v in POINT_FEATURES.items() if k not in layer.features}
        if missing:
            layer.features = layer.features.assign(**missing)
        return layer
    side = min(level0(image).shape[ndim - 2:ndim])
    return viewer.add_points(
        np.zeros((0, ndim)), ndim=ndim, name=layer_name(image, POINTS),
        size=max(4.0, side / 60), face_color=POSITIVE_COLOR, border_color="white",
        border_width=0.15, features={k: np.zeros(0, type(v)) for k, v in POINT_FEATURES.items()},
        feature_defaults=POINT_FEATURES, metadata=_marks(image, POINTS), **_geometry(image))


def recolor_points(points: Points) -> None:
    """Positive clicks green, negative red."""
    if len(points.data):
        positive = points.features["positive"].to_numpy(bool)
        points.face_color = [POSITIVE_COLOR if p else NEGATIVE_COLOR for p in positive]


def click_records(points: Points | None, key: int) -> list[dict[str, Any]]:
    """The clicks of object ``key`` in order: data coordinates, sign and order (what the
    undo journal stores and puts back)."""
    if points is None or not len(points.data):
        return []
    features = points.features
    rows = np.flatnonzero(features["box_key"].to_numpy() == key)
    records = [{"coords": tuple(float(v) for v in points.data[r]),
                "positive": bool(features["positive"].iloc[r]),
                "order": int(features["order"].iloc[r])} for r in rows]
    return sorted(records, key=lambda rec: rec["order"])


def set_clicks(points: Points, key: int, records: list[dict[str, Any]]) -> None:
    """Make object ``key``'s clicks exactly ``records`` (removing and adding points).
    The caller mutes its own point-event handlers meanwhile."""
    rows = set(np.flatnonzero(points.features["box_key"].to_numpy() == key).tolist())
    if rows:
        points.selected_data = rows
        points.remove_selected()
    for record in records:
        points.add(np.asarray(record["coords"], dtype=np.float64)[None])
        row = len(points.data) - 1
        for name in ("positive", "order"):
            points.features.iloc[row, points.features.columns.get_loc(name)] = record[name]
        points.features.iloc[row, points.features.columns.get_loc("box_key")] = key
    points.selected_data = set()
    points.feature_defaults = POINT_FEATURES  # napari copies a selected click's otherwise
    recolor_points(points)


def clicks_of(points: Points | None, image: Image, key: int, plane: int | None) -> Any:
    """Object ``key``'s clicks on ``plane`` as ``inference.session.Clicks`` (x, y in the
    image's pixel-edge coordinates: a click on pixel (r, c) is (c + 0.5, r + 0.5)), or
    None without clicks."""
    from ..inference.clicks import Clicks

    records = click_records(points, key)
    if not records:
        return None
    xy, labels = [], []
    for record in records:
        data = np.asarray(image.world_to_data(points.data_to_world(
            np.asarray(record["coords"], dtype=np.float64))), dtype=np.float64)
        if plane is not None and int(round(data[-3])) != plane:
            continue  # a click on another slice belongs to that slice's answer
        xy.append((data[-1] + 0.5, data[-2] + 0.5))
        labels.append(int(record["positive"]))
    return Clicks.of(xy, labels) if xy else None
