"""The napari side of undo and redo: a box (and its clicks) read from its layer and put
back. The undo stack itself is ``napari_imedsam/journal.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import layers as wl
from ...journal import BoxChange, BoxRecord


def box_record(boxes: Any, row: int, points: Any = None) -> BoxRecord:
    """The vertices and bookkeeping of the box in ``row`` (and its clicks, from
    ``points`` when given)."""
    features = boxes.features.iloc[row]
    record = {"vertices": np.array(boxes.data[row], dtype=np.float64),
              "shape_type": boxes.shape_type[row],
              "features": {k: features[k].item() if hasattr(features[k], "item") else features[k]
                           for k in boxes.features.columns}}
    if points is not None:
        record["clicks"] = wl.click_records(points, int(record["features"]["box_key"]))
    return record


def apply_boxes(boxes: Any, changes: list[BoxChange], undo: bool, points: Any = None) -> None:
    """Put the boxes of ``changes`` back as they were before (``undo``) or after, with
    their clicks (in ``points``, when the records hold them).

    A box is removed and added again rather than edited in place: its
    ``box_key`` feature, not its row, is its identity. The caller mutes its own
    box- and point-event handlers meanwhile (these are not new prompts to answer).
    """
    for change in (reversed(changes) if undo else changes):
        target = change.before if undo else change.after
        if points is not None and (target is None or "clicks" in target):
            wl.set_clicks(points, change.key, [] if target is None else list(target["clicks"]))
        row = wl.row_of(boxes, change.key)
        if row is not None:
            boxes.selected_data = {row}
            boxes.remove_selected()
        if target is None:
            continue
        boxes.add(np.array(target["vertices"]), shape_type=target["shape_type"])
        row = len(boxes.data) - 1
        for name, value in target["features"].items():
            if name in boxes.features.columns:
                wl.set_feature(boxes, row, name, value)
    boxes.selected_data = set()
    wl.recolor(boxes)
