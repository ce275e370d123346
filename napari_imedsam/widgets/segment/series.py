"""The Segment widget's "Series" section: a folder of images, one after another.

Next / Previous (buttons, or Page Down / Page Up in the viewer) save the labels
of the image being left into the output folder, if it has any (versioned:
nothing is ever replaced), close it with its layers, and open the next image
with its newest saved labels. The logic of files and names is in ``series``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ..common import browse
from .. import layers as wl
from ...series import Series, list_images
from .dock import SegmentDock


class SeriesControls(QGroupBox):
    """Open a folder as a series; Next and Previous with automatic, versioned saves."""

    def __init__(self, segment_widget: SegmentDock) -> None:
        super().__init__("Series")
        self.widget = segment_widget
        self.viewer = segment_widget.viewer
        self.series: Series | None = None
        #: The layer of the series' current image: Next and Previous save and close
        #: this one, whichever image is in view.
        self.layer: Any = None
        self._text = ""
        self.label = QLabel("open a folder of images to work through it")
        self.label.setWordWrap(True)
        self.open_button = QPushButton("Open folder...")
        self.open_button.clicked.connect(self._choose_folder)
        self.prev_button, self.next_button = QPushButton("< Previous"), QPushButton("Next >")
        self.prev_button.clicked.connect(lambda: self.move(-1))
        self.next_button.clicked.connect(lambda: self.move(1))
        for button in (self.prev_button, self.next_button):
            button.setEnabled(False)
            button.setToolTip("saves this image's labels (a new version), opens the other "
                              "image (Page Down / Page Up in the viewer)")
        row = QHBoxLayout()
        for button in (self.open_button, self.prev_button, self.next_button):
            row.addWidget(button)
        box = QVBoxLayout(self)
        box.addLayout(row)
        box.addWidget(self.label)

    def _choose_folder(self) -> None:
        folder = browse(self, "folder", "Folder of images to annotate")
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str | Path, out_dir: str | Path | None = None) -> bool:
        """Start (or resume) the series of ``folder``; labels go to ``out_dir``
        (default: ``FOLDER/imedsam-labels``)."""
        try:
            files = list_images(folder)
            series = Series.open(files, out_dir or Path(folder) / "imedsam-labels")
        except (OSError, ValueError) as exc:
            show_warning(f"I-MedSAM: {exc}")
            return False
        self.series = series
        for key, step in (("PageDown", 1), ("PageUp", -1)):
            self.viewer.bind_key(key, lambda _viewer, s=step: self.move(s), overwrite=True)
        self._open_current()
        return True

    def move(self, step: int) -> bool:
        """Save the labels of the image in view, then open the next (or previous) one."""
        series = self.series
        if series is None or self.widget.busy:
            if self.widget.busy:
                show_info("I-MedSAM: a box is still being segmented; move on when it is done")
            return False
        if not 0 <= series.index + step < len(series.files):
            show_info(f"I-MedSAM: this is the {'last' if step > 0 else 'first'} image of the series")
            return False
        if self.layer in self.viewer.layers and self.widget.image is not self.layer:
            # Another image is in view: it is not the series' to save or close.
            self.widget.show_image(self.layer)
        if self.layer in self.viewer.layers and not self._save_current():
            return False
        self._close_current()
        series.move(step)
        self._open_current()
        return True

    def _save_current(self) -> bool:
        """Save the current image's labels if it has any; False when saving failed."""
        series, w = self.series, self.widget
        if w.image is None or w.masks is None or not np.any(w.masks.data):
            return True
        written = w.export.save_as_is(series.labels_path())
        if not written:
            show_warning("I-MedSAM: the labels could not be saved, so the image stays open")
            return False
        series.record_save(series.current, written)
        return True

    def _close_current(self) -> None:
        """Close the series' image and the widget's layers for it (never another image)."""
        image = self.layer
        if image is None or image not in self.viewer.layers:
            return
        name = image.name
        for layer in list(self.viewer.layers):
            if layer is image or wl.owner_name(layer) == name:
                self.viewer.layers.remove(layer)
        self.layer = None

    def _open_current(self) -> None:
        series = self.series
        opened = self.viewer.open(str(series.current))
        self.layer = next((layer for layer in opened if isinstance(layer, Image)), None)
        saved = series.latest_labels()
        w = self.widget
        if saved is not None and w.masks is not None:
            import tifffile

            labels = np.asarray(tifffile.imread(saved))
            if labels.shape == w.masks.data.shape:
                w.masks.data = labels.astype(w.masks.data.dtype)
            else:
                show_warning(f"I-MedSAM: {saved.name} has shape {labels.shape}, the image "
                             f"{w.masks.data.shape}: not loaded")
        note = f" (labels from {saved.name})" if saved is not None else ""
        self._text = series.describe() + note
        self.label.setText(self._text)
        self.prev_button.setEnabled(series.index > 0)
        self.next_button.setEnabled(series.index < len(series.files) - 1)
        w.set_status(f"{series.describe()}{note}; labels are saved to {series.out_dir}")

    def follow(self, image: Any) -> None:
        """The widget now shows ``image``: say whether it is the series' image."""
        if self.series is None:
            return
        if image is self.layer or self.layer is None:
            self.label.setText(self._text)
        else:
            self.label.setText(f"{self._text}; in view: '{image.name}', not in the series "
                               "(Next / Previous act on the series' image)")
