"""What the Segment widget keeps for each image it annotates (no Qt widgets here).

One viewer can hold several images; each has its own boxes, masks and
uncertainty layers and its own bookkeeping, so switching images back and
forth keeps every object, box and undo step where it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes

from .. import layers as wl
from ...boxes import Box
from ...journal import BoxRecord, Journal


@dataclass(eq=False)
class ImageState:
    """One image and everything the widget made for it."""

    image: Image
    boxes: Shapes | None = None
    masks: Labels | None = None
    uncertainty: Image | None = None
    points: Points | None = None  # corrective clicks, each on one object (``box_key``)
    #: box_key -> (plane, (row0, col0), crop) of that object's uncertainty.
    unc_parts: dict[int, tuple[int | None, tuple[int, int], np.ndarray]] = field(
        default_factory=dict)
    #: Planes of the uncertainty layer that have been drawn (to clear them again).
    unc_planes: set[int] = field(default_factory=set)
    #: box_key -> (plane, box) last sent: a move that ends where it began is no request.
    last_box: dict[int, tuple[int | None, Box]] = field(default_factory=dict)
    #: box_key -> req_id of the newest request: older outcomes are stale.
    latest: dict[int, int] = field(default_factory=dict)
    current: int | None = None  # box_key of the object being worked on
    #: The CT window of this image (None: no window); it belongs to the image.
    window: str | None = None
    #: object id -> {plane: box} of propagated slices (volumes).
    plane_boxes: dict[int, dict[int, Box]] = field(default_factory=dict)
    #: object id -> {plane: fingerprints of the masks propagations wrote there}: a
    #: slice whose mask is none of them is the user's (a key slice, never overwritten).
    propagated: dict[int, dict[int, set[bytes]]] = field(default_factory=dict)
    #: box_key of a clicks-only object -> the object id it joins as a key slice.
    key_ids: dict[int, int] = field(default_factory=dict)
    #: Label values written in class-value labelling (a new id per box skips them).
    semantic_ids: set[int] = field(default_factory=set)
    journal: Journal = field(default_factory=Journal)
    #: box_key -> the box as its mask was last written (the "before" of its next edit).
    box_memory: dict[int, BoxRecord] = field(default_factory=dict)
    connected: bool = False  # box events are wired to the widget
    #: The camera (center, zoom) when the user last left this image, restored on return.
    view: tuple[tuple[float, ...], float] | None = None

    @property
    def key(self) -> int:
        return id(self.image)

    def layers(self) -> list[Any]:
        """The image and the widget's layers for it that exist."""
        return [layer for layer in (self.image, self.boxes, self.masks, self.uncertainty,
                                    self.points) if layer is not None]

    def owns(self, layer: Any) -> bool:
        return any(layer is own for own in self.layers())

    def forget_object(self, key: int) -> int | None:
        """Drop a box's requests and uncertainty; returns the plane that needs a redraw."""
        self.latest.pop(key, None)  # a running request for it becomes stale
        self.last_box.pop(key, None)
        if self.current == key:
            self.current = None
        part = self.unc_parts.pop(key, None)
        return None if part is None else (part[0] if part[0] is not None else -1)

    def drop_missing(self, viewer: Any) -> None:
        """Forget layers the user deleted (they are made again when needed)."""
        for attr in ("boxes", "masks", "uncertainty", "points"):
            layer = getattr(self, attr)
            if layer is not None and layer not in viewer.layers:
                setattr(self, attr, None)
                if attr in ("boxes", "points"):
                    self.connected = False


def segmentable_images(viewer: Any) -> list[Image]:
    """Image layers a user may segment (not the widget's own uncertainty layers)."""
    return [layer for layer in viewer.layers
            if isinstance(layer, Image) and not wl.is_ours(layer)]
