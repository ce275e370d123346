"""napari layer plumbing for the Segment widget (no Qt widgets here).

The boxes layer carries its own bookkeeping as per-shape features, so napari
keeps it in step when shapes are added, deleted or reordered:

- ``box_key``: a stable identity for the rectangle (indices shift on delete);
- ``object_id``: the label id its mask was written with (0 = not yet written);
- ``accepted``: the user committed the object; edits no longer re-segment it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels, Shapes

BOXES, MASKS, UNCERTAINTY = "boxes", "masks", "uncertainty"
FEATURES = {"box_key": 0, "object_id": 0, "accepted": False}
EDGE_ACTIVE, EDGE_ACCEPTED = "yellow", "#9a9a9a"


def image_spatial_shape(image: Image) -> tuple[int, ...]:
    """Shape of the labels that go with ``image`` (full resolution, no colour axis)."""
    shape = image.data[0].shape if image.multiscale else image.data.shape
    return tuple(shape[:-1]) if image.rgb else tuple(shape)


def is_ours(layer: Any, role: str) -> bool:
    """Whether ``layer`` is the widget's ``role`` layer (marked in its metadata)."""
    return layer.metadata.get("napari_imedsam") == role


def set_feature(boxes: Shapes, row: int, name: str, value: Any) -> None:
    """Set one shape's bookkeeping value (by position: row labels are not guaranteed)."""
    boxes.features.iloc[row, boxes.features.columns.get_loc(name)] = value


def _geometry(image: Image) -> dict[str, Any]:
    """scale/translate (and units, e.g. mm) that put a new layer exactly over ``image``
    (spatial axes only)."""
    return {"scale": tuple(image.scale), "translate": tuple(image.translate),
            "units": tuple(image.units)}


def find_or_add_boxes(viewer: Any, image: Image, ndim: int) -> Shapes:
    """The "boxes" Shapes layer for ``image``: reused when its ndim fits, else a new one."""
    for layer in viewer.layers:
        if isinstance(layer, Shapes) and layer.name == BOXES and layer.ndim == ndim:
            ensure_features(layer)
            return layer
    shape = image.data[0].shape if image.multiscale else image.data.shape
    side = min(shape[ndim - 2:ndim])
    layer = viewer.add_shapes(
        ndim=ndim, name=BOXES, shape_type="rectangle", edge_color=EDGE_ACTIVE,
        face_color="transparent", edge_width=max(1.0, side / 256),
        features={k: np.zeros(0, type(v)) for k, v in FEATURES.items()},
        feature_defaults=FEATURES, **_geometry(image))
    return layer


def ensure_features(layer: Shapes) -> None:
    """Add the bookkeeping columns to a reused boxes layer that lacks them."""
    missing = {k: v for k, v in FEATURES.items() if k not in layer.features}
    if not missing:
        return
    layer.features = layer.features.assign(**missing)
    defaults = layer.feature_defaults
    layer.feature_defaults = {**(defaults.iloc[0].to_dict() if len(defaults) else {}), **FEATURES}


def find_or_add_masks(viewer: Any, image: Image, shape: tuple[int, ...]) -> Labels:
    """The "masks" Labels layer: reused when its shape matches the image, else a new one."""
    for layer in viewer.layers:
        if isinstance(layer, Labels) and layer.name == MASKS and layer.data.shape == shape:
            return layer
    # The image's source geometry (a NIfTI affine) lets File > Save write the
    # masks onto the source's voxel grid.
    source = {k: v for k, v in image.metadata.items() if k == "imedsam_source"}
    return viewer.add_labels(np.zeros(shape, np.int32), name=MASKS, opacity=0.55,
                             metadata=source, **_geometry(image))


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
            for name, value in (("box_key", next_key), ("object_id", 0), ("accepted", False)):
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


def next_free_id(labels: Labels, boxes: Shapes | None) -> int:
    """max + 1 over the labels and every id a box holds: an id whose pixels were
    undone must not be handed to another object while its box still claims it."""
    used = int(np.max(labels.data, initial=0))
    if boxes is not None and len(boxes.data):
        used = max(used, int(boxes.features["object_id"].max()))
    return used + 1


def write_object(labels: Labels, mask: np.ndarray, plane: int | None, object_id: int) -> int:
    """Write ``mask`` as ``object_id`` onto background pixels, as one undo step.

    The object's previous pixels (an edited box) are cleared first, in the same
    history item, so Ctrl+Z on the masks layer restores the previous version in
    one press. Other objects' pixels are never overwritten. Returns the number
    of pixels written.
    """
    data = labels.data
    with labels.block_history():
        old = np.nonzero(data == object_id)
        if old[0].size:
            labels.data_setitem(old, 0, refresh=False)
        target = data if plane is None else data[plane]
        rows, cols = np.nonzero(mask & (target == 0))
        if rows.size:
            index = (rows, cols) if plane is None else (np.full_like(rows, plane), rows, cols)
            labels.data_setitem(index, object_id, refresh=False)
    labels.refresh()
    return int(rows.size)


def clear_object(labels: Labels, object_id: int) -> None:
    """Remove an object's pixels (undoable)."""
    old = np.nonzero(labels.data == object_id)
    if old[0].size:
        labels.data_setitem(old, 0)


def find_or_add_uncertainty(viewer: Any, image: Image, shape: tuple[int, ...]) -> Image:
    """The "uncertainty" Image layer (perceptual colormap, additive over the image)."""
    for layer in viewer.layers:
        if isinstance(layer, Image) and is_ours(layer, UNCERTAINTY) and layer.data.shape == shape:
            return layer
    # Adding a layer makes it the active one: give the focus back so the
    # rectangle tool (or whatever the user was doing) keeps working.
    active = viewer.layers.selection.active
    layer = viewer.add_image(np.zeros(shape, np.float32), name=UNCERTAINTY, colormap="inferno",
                             blending="additive", contrast_limits=(0.0, 1.0),
                             metadata={"napari_imedsam": UNCERTAINTY}, **_geometry(image))
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


def show_plane(layer: Image, plane: int | None, values: np.ndarray) -> None:
    """Put one plane of uncertainty in ``layer`` and fit its contrast to the data."""
    if plane is None:
        layer.data[...] = values
    else:
        layer.data[plane] = values
    high = float(layer.data.max())
    layer.contrast_limits = (0.0, high if high > 0 else 1.0)
    layer.refresh()
