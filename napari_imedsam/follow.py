"""Following the user's images in the Segment dock: the decisions, without Qt or napari.

The dock's section (``widgets/segment/follow.py``) reads the viewer's layers
into plain values and applies what these functions decide: which of the
user's own Labels layers to hide or show again when another image becomes the
one the dock follows, how to frame an image seen for the first time, and the CT
window an image starts with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

import numpy as np

from .finetune import guess_image


@dataclass(frozen=True)
class LabelsInfo:
    """One of the user's own Labels layers, as much as following needs of it."""

    key: int  # the layer's identity (``id(layer)``)
    index: int  # its place in the layer list
    name: str
    shape: tuple[int, ...]
    visible: bool


def own_labels_visibility(labels: Sequence[LabelsInfo],
                          images: Sequence[tuple[int, str, tuple[int, ...]]],
                          current: str, hidden: Set[int]) -> tuple[list[int], list[int]]:
    """``(keys to hide, keys to show again)`` of the user's Labels layers when the dock
    follows image ``current``.

    Each layer's image is guessed as the Fine-tune dock pairs them
    (:func:`~napari_imedsam.finetune.guess_image`; ``images``: ``(index, name,
    spatial shape)``). A visible layer of another image is hidden; one hidden
    that way (``hidden``) is shown again when its image is followed. A layer
    the user hid themselves is not in ``hidden`` and stays hidden.
    """
    hide: list[int] = []
    show: list[int] = []
    for layer in labels:
        owner = guess_image(layer.name, layer.index, layer.shape, images)
        if owner is not None and owner != current and layer.visible:
            hide.append(layer.key)
        elif owner == current and layer.key in hidden:
            show.append(layer.key)
    return hide, show


def fit_plane(extent_yx: Any, canvas_hw: Sequence[float]) -> tuple[tuple[float, float], float]:
    """``(centre (y, x), zoom)`` that centres an image's last two axes on the canvas and
    fills 95 % of it. ``extent_yx``: the image's world extent of those axes, rows
    (min, max); ``canvas_hw``: the canvas size in screen pixels."""
    extent = np.asarray(extent_yx, dtype=float)
    size = np.maximum(extent[1] - extent[0], 1e-6)  # a one-pixel-thin image still fits
    centre = (extent[0] + extent[1]) / 2
    zoom = 0.95 * float(np.min(np.asarray(canvas_hw, float)[-2:] / size))
    return (float(centre[0]), float(centre[1])), zoom


def first_window(metadata: Mapping[str, Any] | None) -> str | None:
    """The CT window a newly seen image starts with: its suggested one (the readers
    put it in the layer's metadata), if any."""
    suggested = None if metadata is None else metadata.get("suggested_window")
    return suggested if isinstance(suggested, str) else None
