"""The Fine-tune dock at a usual screen size: next to the Segment dock, Train and the plot
in view without scrolling or floating it; Stop takes effect within 2 s."""

from __future__ import annotations


import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.usefixtures("private_qsettings")


def _visible_height(widget) -> int:  # noqa: ANN001
    """Pixels of ``widget`` the user can see (clipped by scroll areas and docks)."""
    return widget.visibleRegion().boundingRect().height() if widget.isVisible() else 0


def test_finetune_dock_shows_train_and_plot_at_1600_by_1000(make_napari_viewer, qtbot,
                                                           tmp_path):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1600, 1000)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="scan")
    viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Fine-tune")
    qtbot.waitUntil(lambda: widget._placed, timeout=5000)
    qtbot.wait(200)
    assert _visible_height(widget.train_button) == widget.train_button.height()
    assert _visible_height(widget.plot) >= 100
    viewer.screenshot(str(tmp_path / "finetune_dock.png"), canvas_only=False)
