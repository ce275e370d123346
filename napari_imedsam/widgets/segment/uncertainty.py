"""The uncertainty overlay of the Segment widget, and its legend.

What is shown: the standard deviation of the mask probability over the
MC-dropout samples (0 to 0.5), for every object of the plane in view, on a
fixed scale: transparent where the model is sure, yellow to red up to
``STD_FULL_SCALE`` and above. Fixed, so that a faint map looks faint; with the
low end transparent and the overlay translucent, the mask edge underneath stays
visible; "mask as outline" draws the masks as their edges above the overlay, for
reading the uncertainty against the exact boundary. Nothing is drawn for a box
whose mask came back empty.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtGui import QColor, QLinearGradient, QPainter, QPixmap
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from .. import layers as wl

#: The std of the probability at which the colour saturates (its maximum is 0.5).
STD_FULL_SCALE = 0.25
#: (position on the scale, RGBA): transparent below about 0.01, then yellow to red.
COLORS = ((0.0, (1.0, 1.0, 0.0, 0.0)), (0.04, (1.0, 1.0, 0.0, 0.0)),
          (0.2, (1.0, 0.85, 0.0, 0.55)), (0.6, (1.0, 0.35, 0.0, 0.85)),
          (1.0, (1.0, 0.0, 0.25, 1.0)))


def crop_nonzero(values: np.ndarray) -> tuple[tuple[int, int], np.ndarray] | None:
    """``((row0, col0), crop)`` of the non-zero part of a map; None when all zero.

    Uncertainty is computed only in a window around each box, so storing the
    crop keeps memory per object small on large images.
    """
    rows = np.flatnonzero(values.any(axis=1))
    cols = np.flatnonzero(values.any(axis=0))
    if rows.size == 0:
        return None
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return (int(r0), int(c0)), np.ascontiguousarray(values[r0:r1, c0:c1], dtype=np.float32)


def compose(shape: tuple[int, int], parts: list[tuple[tuple[int, int], np.ndarray]]) -> np.ndarray:
    """One plane of uncertainty: the maximum over all objects' crops."""
    out = np.zeros(shape, np.float32)
    for (r0, c0), crop in parts:
        view = out[r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]]
        np.maximum(view, crop, out=view)
    return out


def colormap() -> Any:
    from napari.utils import Colormap

    return Colormap(colors=[c for _, c in COLORS], controls=[p for p, _ in COLORS],
                    name="imedsam uncertainty")


class UncertaintyView(QWidget):
    """The legend, and the per-image overlay layers it describes."""

    def __init__(self, widget: Any) -> None:
        super().__init__()
        self.widget = widget
        bar = QLabel()
        bar.setPixmap(_legend_bar(160, 10))
        ticks = QLabel(f"0 · {STD_FULL_SCALE / 2:g} · {STD_FULL_SCALE:g}+")
        caption = QLabel("uncertainty: std of the mask probability (MC dropout)")
        caption.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(bar)
        row.addWidget(ticks)
        row.addStretch(1)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(caption)
        box.addLayout(row)
        self.outline = QCheckBox("mask as outline, above the uncertainty")
        self.outline.setToolTip("Draw each object as its edge (2 px) over the uncertainty "
                                "map, so the boundary and the doubt around it show together")
        self.outline.toggled.connect(lambda _on: self.apply_outline(self.widget.state))
        box.addWidget(self.outline)

    def apply_outline(self, state: Any) -> None:
        """Filled masks, or their outlines placed just above the uncertainty layer."""
        if state is None or state.masks is None:
            return
        on = self.outline.isChecked()
        state.masks.contour = 2 if on else 0
        layers = self.widget.viewer.layers
        unc = state.uncertainty
        if on and unc is not None and unc in layers and state.masks in layers:
            here, above = layers.index(state.masks), layers.index(unc)
            if here < above:
                layers.move(here, above + 1)

    def show_object(self, state: Any, key: int, plane: int | None,
                    variance: np.ndarray | None) -> None:
        """Keep one object's map (as a crop, for memory) and redraw its plane."""
        part = None if variance is None else crop_nonzero(np.sqrt(np.maximum(variance, 0)))
        if part is None:
            if state.unc_parts.pop(key, None) is None:
                return
        else:
            state.unc_parts[key] = (plane, *part)
        self._redraw(state, plane)

    def redraw_all(self, state: Any) -> None:
        """Redraw every plane that shows, or showed, an object's map."""
        planes = {p for p, _, _ in state.unc_parts.values()} | set(state.unc_planes)
        for plane in planes or {None}:
            self._redraw(state, plane)

    def refresh_visibility(self) -> None:
        state = self.widget.state
        if state is not None and state.uncertainty is not None:
            state.uncertainty.visible = self.widget.show_unc.isChecked()

    def _boxes_on_top(self, state: Any) -> None:
        """A new overlay lands on top of the list; the boxes belong there (they are
        what the user draws and drags)."""
        layers = self.widget.viewer.layers
        if state.boxes is not None and state.boxes in layers:
            here = layers.index(state.boxes)
            if here != len(layers) - 1:
                layers.move(here, len(layers))

    def _redraw(self, state: Any, plane: int | None) -> None:
        masks = state.masks
        if masks is None:
            return
        if state.uncertainty is None:
            if not state.unc_parts:
                return
            layer = wl.find_or_add_uncertainty(self.widget.viewer, state.image, masks.data.shape)
            layer.colormap = colormap()
            layer.blending = "translucent"
            layer.contrast_limits = (0.0, STD_FULL_SCALE)
            state.uncertainty = layer
            self.refresh_visibility()
            self.apply_outline(state)
            self._boxes_on_top(state)
        parts = [(origin, crop) for p, origin, crop in state.unc_parts.values() if p == plane]
        values = compose(masks.data.shape[-2:], parts)
        layer = state.uncertainty
        if plane is None:
            layer.data[...] = values
        else:
            layer.data[plane] = values
            state.unc_planes.add(plane)
        layer.contrast_limits = (0.0, STD_FULL_SCALE)  # a fixed scale, never fitted
        layer.refresh()


def _legend_bar(width: int, height: int) -> QPixmap:
    """The colour scale, drawn over a checkerboard so transparency reads as such."""
    pixmap = QPixmap(width, height)
    pixmap.fill(QColor(90, 90, 90))
    painter = QPainter(pixmap)
    for x in range(0, width, height // 2 or 1):
        for y in range(0, height, height // 2 or 1):
            if (x // (height // 2 or 1) + y // (height // 2 or 1)) % 2:
                painter.fillRect(x, y, height // 2 or 1, height // 2 or 1, QColor(150, 150, 150))
    gradient = QLinearGradient(0, 0, width, 0)
    for position, (r, g, b, a) in COLORS:
        gradient.setColorAt(position, QColor.fromRgbF(r, g, b, a))
    painter.fillRect(0, 0, width, height, gradient)
    painter.end()
    return pixmap
