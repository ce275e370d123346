"""Boxes and planes: how a drawn rectangle becomes the box a model answers.

Box convention: napari puts pixel ``i`` at data coordinate ``i`` (its centre),
so pixel ``i`` spans ``[i - 0.5, i + 0.5]``; the inference session uses pixel
edges, pixel ``i`` spanning ``[i, i + 1]``. A rectangle's corners are read as
the centres of the outermost pixels it should contain: a rectangle drawn from
10 to 20 becomes the edge box ``[10, 21)`` and covers pixels 10..20 inclusive.
That is half a pixel more on each side than the drawn outline, which matters
only for tiny boxes and never cuts an object the user framed exactly.

Qt- and napari-free, and cheap to import (numpy only).
"""

from __future__ import annotations

from pathlib import Path

from typing import Any

import numpy as np

from .inference.regions import Box, Region

__all__ = ["Box", "MIN_BOX_SIDE", "Region", "box_from_vertices", "check_image", "plane_index",
           "spatial_shape", "take_plane"]

#: Boxes thinner than this (pixels) are almost always a stray click.
MIN_BOX_SIDE = 2.0


def spatial_shape(shape: tuple[int, ...], rgb: bool) -> tuple[int, ...]:
    """Shape of the labels that go with an image of ``shape`` (drops the colour axis)."""
    return tuple(shape[:-1]) if rgb else tuple(shape)


def check_image(shape: tuple[int, ...], rgb: bool) -> None:
    """Raise ValueError with what to do when an image layer cannot be segmented."""
    spatial = spatial_shape(shape, rgb)
    if rgb and shape[-1] not in (3, 4):
        raise ValueError(f"an RGB layer needs 3 or 4 channels, this one has {shape[-1]}")
    if not rgb and len(shape) == 3 and shape[-1] <= 4 and min(shape[:2]) >= 8:
        # napari would show (W, C) as the image and H as a slider: boxes make no sense.
        raise ValueError(
            f"the layer {shape} looks like channels-last (H, W, C) data, which napari shows "
            "with the channels as an image axis: open it with one layer per channel "
            "(channel_axis=-1) or, for 3 channels, as RGB; a (C, H, W) stack also works "
            "(each channel is then a plane on the slider)")
    if len(spatial) not in (2, 3):
        raise ValueError(
            f"the image has {len(spatial)} spatial dimensions {spatial}: choose a 2D image "
            "or a 3D volume (split 4D data, e.g. time or channels, into separate layers first)")
    if min(spatial[-2:]) < 2:
        raise ValueError(f"the image {spatial} is too small to segment")


def box_from_vertices(vertices: np.ndarray, plane_shape: tuple[int, int]) -> Box:
    """Edge box (x0, y0, x1, y1) from a shape's ``(V, 2)`` (row, col) vertices.

    The bounding box of the vertices is used, so a rectangle the user turned
    into a polygon (by inserting a vertex) still works. Raises ValueError for a
    box outside the image or too small to mean anything.
    """
    rows, cols = vertices[:, 0], vertices[:, 1]
    if not (np.isfinite(rows).all() and np.isfinite(cols).all()):
        raise ValueError("the box has corners that are not numbers: draw it again")
    x0, y0 = float(cols.min()), float(rows.min())
    x1, y1 = float(cols.max()) + 1.0, float(rows.max()) + 1.0
    height, width = plane_shape
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(
            f"the box (rows {y0:.0f}-{y1 - 1:.0f}, columns {x0:.0f}-{x1 - 1:.0f}) lies outside "
            f"the {height} x {width} image: draw it over the object")
    x0, y0 = max(x0, 0.0), max(y0, 0.0)
    x1, y1 = min(x1, float(width)), min(y1, float(height))
    if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
        raise ValueError("the box is too small: drag a rectangle around the whole object")
    return x0, y0, x1, y1


def plane_index(z: np.ndarray, depth: int) -> int:
    """Slice index of a box whose vertices sit at data coordinates ``z`` along the
    volume's first axis; ValueError outside the volume or across slices."""
    z = np.asarray(z, dtype=np.float64)
    if np.ptp(z) > 0.5:
        raise ValueError("the box spans several slices: view the volume with its first axis "
                         "as the slice axis (the default order) and draw the box again")
    index = int(round(float(z.mean())))
    if not 0 <= index < depth:
        raise ValueError(f"the box is on slice {index}, outside the volume's 0..{depth - 1}")
    return index


def take_plane(data: Any, plane: int | None) -> np.ndarray:
    """The 2D image a box refers to, as a numpy array (reads one slice of lazy data)."""
    return np.asarray(data if plane is None else data[plane])


def read_boxes_csv(path: Path) -> dict[str, list[list[float]]]:
    """A boxes CSV (columns image,x0,y0,x1,y1; one row per box) -> boxes per image;
    a FIFO, text that is not UTF-8, a short row or a corner that is not a number is
    one line naming the file and the line."""
    import csv

    from .io import check_regular_file

    check_regular_file(path, "CSV file")  # a FIFO would block the read forever
    boxes: dict[str, list[list[float]]] = {}
    keys = ("x0", "y0", "x1", "y1")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]  # line_num: blank lines count
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                         "save it as UTF-8 CSV") from None
    for line, row in rows:
        if row.get("image") is None or any(row.get(k) is None for k in keys):
            lacking = ", ".join(k for k in ("image", *keys) if row.get(k) is None)
            raise ValueError(f"{path}: each row needs image,x0,y0,x1,y1 (line {line} has no "
                             f"{lacking}): add the missing columns")
        box = []
        for key in keys:
            try:
                box.append(float(row[key]))
            except ValueError:
                raise ValueError(f"{path}, line {line}: {key} is {row[key]!r}, not a number: "
                                 "write each box's corners as numbers of pixels") from None
        boxes.setdefault(row["image"], []).append(box)
    return boxes
