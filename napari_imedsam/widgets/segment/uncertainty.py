"""The uncertainty overlay of the Segment widget, and its legend.

What is shown, for every object of the plane in view, one of:

- the **error map** (the default where the model has one): the probability
  that each pixel's label is wrong (``model.error_map``), in percent, from
  transparent (below 10 %) through cyan and blue to violet at 100 %: colours
  that neither the yellow boxes nor the green and red clicks use;
- the **MC-dropout std**: the standard deviation of the mask probability over
  the MC-dropout samples (0 to 0.5, the paper's quantity), yellow to red up to
  ``STD_FULL_SCALE`` and above.

Both on fixed scales, so that a faint map looks faint; with the low end
transparent and the overlay translucent, the mask edge underneath stays
visible; "mask as outline" draws the masks as their edges above the overlay.
Nothing is drawn for a box whose mask came back empty. The layer is named after
what it shows ("<image> error map" or "<image> uncertainty").
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtGui import QColor, QLinearGradient, QPainter, QPixmap
from qtpy.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from .. import layers as wl
from .dock import SegmentDock

#: The std of the probability at which the colour saturates (its maximum is 0.5): the
#: default model's values peak near 0.03 on real images (Kvasir-Sessile, AMOS), so at
#: the 0.25 used before the map was barely visible.
STD_FULL_SCALE = 0.05
#: Error-map colours (position on 0..1, RGBA): transparent below 10 %, then cyan,
#: blue and violet.
ERROR_COLORS = ((0.0, (0.0, 0.9, 1.0, 0.0)), (0.1, (0.0, 0.9, 1.0, 0.0)),
                (0.3, (0.0, 0.85, 1.0, 0.45)), (0.6, (0.15, 0.35, 1.0, 0.75)),
                (1.0, (0.6, 0.0, 1.0, 0.95)))
ERROR, STD = "error map", "MC-dropout std"
#: (position on the scale, RGBA): transparent below about 0.01, then yellow to red.
COLORS = ((0.0, (1.0, 1.0, 0.0, 0.0)), (0.04, (1.0, 1.0, 0.0, 0.0)),
          (0.2, (1.0, 0.85, 0.0, 0.55)), (0.6, (1.0, 0.35, 0.0, 0.85)),
          (1.0, (1.0, 0.0, 0.25, 1.0)))


def crop_nonzero(values: np.ndarray) -> tuple[tuple[int, int], np.ndarray] | None:
    """``((row0, col0), crop)`` of the non-zero part of a map ``(H, W)``, or of maps
    ``(C, H, W)`` together; None when all zero.

    Uncertainty is computed only in a window around each box, so storing the
    crop keeps memory per object small on large images.
    """
    any_map = values.any(axis=0) if values.ndim == 3 else values
    rows = np.flatnonzero(any_map.any(axis=1))
    cols = np.flatnonzero(any_map.any(axis=0))
    if rows.size == 0:
        return None
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return (int(r0), int(c0)), np.ascontiguousarray(values[..., r0:r1, c0:c1],
                                                    dtype=np.float32)


def compose(shape: tuple[int, int], parts: list[tuple[tuple[int, int], np.ndarray]]) -> np.ndarray:
    """One plane of uncertainty: the maximum over all objects' crops ``(h, w)``."""
    out = np.zeros(shape, np.float32)
    for (r0, c0), crop in parts:
        view = out[r0:r0 + crop.shape[-2], c0:c0 + crop.shape[-1]]
        np.maximum(view, crop, out=view)
    return out


def colormap(shows: str = STD) -> Any:
    from napari.utils import Colormap

    colors = ERROR_COLORS if shows == ERROR else COLORS
    return Colormap(colors=[c for _, c in colors], controls=[p for p, _ in colors],
                    name="imedsam error map" if shows == ERROR else "imedsam uncertainty")


class UncertaintyView(QWidget):
    """The legend, and the per-image overlay layers it describes."""

    def __init__(self, widget: SegmentDock) -> None:
        super().__init__()
        self.widget = widget
        self.shows = QComboBox()
        self.shows.addItems([ERROR, STD])
        self.shows.setToolTip("error map: the probability that each pixel's label is wrong "
                              "(calibrated; where to click). MC-dropout std: the spread of the "
                              "mask probability over the dropout samples (the paper's)")
        self.bar, self.ticks = QLabel(), QLabel()
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("shows"))
        row.addWidget(self.shows)
        legend = QHBoxLayout()
        legend.setContentsMargins(0, 0, 0, 0)
        legend.addWidget(self.bar)
        legend.addWidget(self.ticks)
        legend.addStretch(1)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(row)
        box.addWidget(self.caption)
        box.addLayout(legend)
        self.outline = QCheckBox("mask as outline, above the map")
        self.outline.setToolTip("Draw each object as its edge (2 px) over the map, so the "
                                "boundary and the doubt around it show together")
        self.outline.toggled.connect(lambda _on: self.apply_outline(self.widget.state))
        box.addWidget(self.outline)
        self.shows.currentTextChanged.connect(self._on_shows)
        self._legend()

    @property
    def quantity(self) -> str:
        return self.shows.currentText()

    def _legend(self) -> None:
        error = self.quantity == ERROR
        self.bar.setPixmap(_legend_bar(160, 10, ERROR_COLORS if error else COLORS))
        self.ticks.setText("0 % · 50 % · 100 %" if error
                           else f"0 · {STD_FULL_SCALE / 2:g} · {STD_FULL_SCALE:g}+")
        self.caption.setText("error map: probability that the pixel's label is wrong" if error
                             else "MC-dropout std of the mask probability")

    def _on_shows(self, _text: str) -> None:
        self._legend()
        state = self.widget.state
        if state is not None:
            self.redraw_all(state)

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
                    variance: np.ndarray | None, error: np.ndarray | None = None) -> None:
        """Keep one object's maps (as a crop, for memory: the std and, when the model
        has one, the error map) and redraw its plane."""
        part = None
        if variance is not None and error is None and self.quantity == ERROR:
            # A model without an error map (an adapter trained before it existed).
            self.shows.setCurrentText(STD)
        if variance is not None:
            std = np.sqrt(np.maximum(variance, 0))
            part = crop_nonzero(np.stack([std, np.zeros_like(std) if error is None
                                          else error.astype(np.float32)]))
        if part is None:
            if state.unc_parts.pop(key, None) is None:
                return
        else:
            state.unc_parts[key] = (plane, *part)
        self._redraw(state, plane)

    def std_map(self, state: Any, shape: tuple[int, ...]) -> np.ndarray | None:
        """The MC-dropout std of every object on the labels' grid, whatever the layer
        shows (what the export's ``_uncertainty.tif`` holds); None without any map."""
        if state is None or not state.unc_parts:
            return None
        out = np.zeros(shape, np.float32)
        for plane, (r0, c0), crop in state.unc_parts.values():
            part = crop[0] if crop.ndim == 3 else crop
            target = out if plane is None else out[plane]
            view = target[r0:r0 + part.shape[0], c0:c0 + part.shape[1]]
            np.maximum(view, part, out=view)
        return out

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
        error = self.quantity == ERROR
        if state.uncertainty is None:
            if not state.unc_parts:
                return
            layer = wl.find_or_add_uncertainty(self.widget.viewer, state.image, masks.data.shape)
            layer.blending = "translucent"
            state.uncertainty = layer
            self.refresh_visibility()
            self.apply_outline(state)
            self._boxes_on_top(state)
        layer = state.uncertainty
        name = f"{state.image.name} {ERROR if error else wl.UNCERTAINTY}"
        if layer.name != name:  # the layer is named after what it shows
            layer.name = name
        layer.colormap = colormap(ERROR if error else STD)
        channel = 1 if error else 0
        parts = [(origin, crop[channel] if crop.ndim == 3 else crop)
                 for p, origin, crop in state.unc_parts.values() if p == plane]
        values = compose(masks.data.shape[-2:], parts)
        if plane is None:
            layer.data[...] = values
        else:
            layer.data[plane] = values
            state.unc_planes.add(plane)
        # A fixed scale, never fitted.
        layer.contrast_limits = (0.0, 1.0) if error else (0.0, STD_FULL_SCALE)
        layer.refresh()


def _legend_bar(width: int, height: int, colors: Any = COLORS) -> QPixmap:
    """The colour scale, drawn over a checkerboard so transparency reads as such."""
    pixmap = QPixmap(width, height)
    pixmap.fill(QColor(90, 90, 90))
    painter = QPainter(pixmap)
    for x in range(0, width, height // 2 or 1):
        for y in range(0, height, height // 2 or 1):
            if (x // (height // 2 or 1) + y // (height // 2 or 1)) % 2:
                painter.fillRect(x, y, height // 2 or 1, height // 2 or 1, QColor(150, 150, 150))
    gradient = QLinearGradient(0, 0, width, 0)
    for position, (r, g, b, a) in colors:
        gradient.setColorAt(position, QColor.fromRgbF(r, g, b, a))
    painter.fillRect(0, 0, width, height, gradient)
    painter.end()
    return pixmap
