"""How the Fine-tune widget reaches the Segment widget: which model it uses, and
handing a new adapter over; plus the "Adapters" box that lists earlier ones.

No registry or module-level state: the Segment widget is looked up among the
viewer's docked widgets each time (it may be opened, closed or re-opened at
any point); when none is open, its stored settings are read and written, so
it picks the adapter up when it opens.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QComboBox, QGroupBox, QHBoxLayout, QPushButton

from ... import adapter_store as store
from ...session_holder import ModelSpec
from ..segment.settings import settings as segment_settings, stored_choices


def find_segment_widget(viewer: Any) -> Any:
    """The Segment widget docked in ``viewer``'s window, or None."""
    from ..segment.widget import SegmentWidget

    window = getattr(viewer, "window", None)  # a viewer model alone (scripts) has none
    for widget in ([] if window is None else window.dock_widgets.values()):
        if isinstance(widget, SegmentWidget):
            return widget
    return None


def model_source(segment: Any) -> tuple[ModelSpec, Any, str | None]:
    """(spec, pinned model or None, CT window) of ``segment``, or of its stored
    settings when it is not open."""
    if segment is not None:
        return segment.settings.spec(), segment.pinned_model, segment.settings.window()
    # CT windows belong to images, which the Segment widget holds.
    return stored_choices().spec(), None, None


def load_start_model(name: str, adapter: str | None, pinned: Any) -> Any:
    """A private copy of the model to train (runs in the worker): the Segment
    widget's own model keeps serving boxes, untouched, while training runs."""
    if pinned is not None:
        return copy.deepcopy(pinned)
    from ...model.loading import load_model

    return load_model(name, adapter=adapter)


def hand_over(segment: Any, path: Path, model_name: str | None, model: Any = None) -> None:
    """Make ``segment`` (or its stored settings) segment with adapter ``path`` from the
    next box on. ``model`` is the trained model in memory, used when the Segment
    widget was given a model object rather than a name."""
    if segment is None:
        s = segment_settings()
        if model_name:
            s.setValue("model", model_name)
        s.setValue("adapter", str(path))
        return
    segment.use_adapter(path, model_name, model)


class AdaptersBox(QGroupBox):
    """Adapters in the output folder, newest first, with a "Use" button."""

    def __init__(self, owner: Any) -> None:
        super().__init__("Adapters")
        self.owner = owner  # the FinetuneWidget: its folder and its Segment widget
        self.combo = QComboBox()
        self.combo.setToolTip("adapters trained here, newest first (Dice after, before)")
        # Adapter names are long: at their full length the combo widened the whole dock
        # past its edge (the table's last column, Stop and the plot's label were cut off).
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(12)
        use = QPushButton("Use")
        use.setToolTip("segment with the chosen adapter from the next box on")
        use.clicked.connect(self.use_selected)
        row = QHBoxLayout(self)
        row.addWidget(self.combo, 1)
        row.addWidget(use)

    def refresh(self, folder: str | Path, select: Path | None = None) -> None:
        """List the adapters in ``folder``; select ``select`` if given."""
        self.combo.clear()
        for info in store.list_adapters(folder):
            self.combo.addItem(info.describe(), info)
            if select is not None and info.path == Path(select):
                self.combo.setCurrentIndex(self.combo.count() - 1)

    def paths(self) -> list[Path]:
        return [self.combo.itemData(i).path for i in range(self.combo.count())]

    def use_selected(self) -> None:
        """Give the Segment widget the adapter chosen in the list."""
        info = self.combo.currentData()
        if info is None:
            show_info("I-MedSAM: no adapters in this folder yet; train one first")
            return
        try:
            hand_over(self.owner.find_segment_widget(), info.path, info.model)
        except Exception as exc:  # noqa: BLE001 - e.g. an adapter for another model
            show_error(f"I-MedSAM: cannot use {info.path.name}: {exc}")
            return
        show_info(f"I-MedSAM: the Segment widget now uses {info.path.name}")
