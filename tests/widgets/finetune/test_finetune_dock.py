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


def test_finetune_dock_fits_its_width_with_long_adapter_names(make_napari_viewer, qtbot):
    """As `imedsam gui --fine-tune` opens it: nothing cut off on the right (the table's
    last column, the spin boxes' buttons, Stop), even with long adapter names listed."""
    from qtpy.QtWidgets import QScrollArea

    from napari_imedsam.cli.gui import open_viewer

    viewer = open_viewer([], "rgb", True, show=True)
    try:
        viewer.window._qt_window.resize(1600, 1000)
        widget = next(w for w in viewer.window._qt_window.findChildren(object)
                      if type(w).__name__ == "FinetuneWidget")
        widget.adapters.combo.addItems(["kvasir_decoder_2026-12-05_" + "x" * 60 + ".safetensors"])
        qtbot.wait(300)
        _dock(widget).raise_()  # the Segment tab is in front: look at the Fine-tune tab
        qtbot.wait(300)
        scroll = widget.findChild(QScrollArea)
        assert scroll.widget().minimumSizeHint().width() <= scroll.viewport().width()
        right = scroll.viewport().mapToGlobal(scroll.viewport().rect().topRight()).x()
        stop = widget.stop_button
        assert stop.mapToGlobal(stop.rect().topRight()).x() <= right
    finally:
        viewer.close()


def _dock(widget):  # noqa: ANN001, ANN202
    from qtpy.QtWidgets import QDockWidget

    while widget is not None and not isinstance(widget, QDockWidget):
        widget = widget.parentWidget()
    return widget


def test_gui_fine_tune_keeps_the_segment_dock_in_front(make_napari_viewer, qtbot):
    """`imedsam gui --fine-tune` showed the Fine-tune tab and hid the Segment dock, where
    a session starts; both are tabs of one area, Segment in front. (``make_napari_viewer``
    for its clean-up of napari's plugin registry: a later viewer registers it again.)"""
    from napari_imedsam.cli.gui import open_viewer

    viewer = open_viewer([], "rgb", True, show=True)
    try:
        viewer.window._qt_window.resize(1600, 1000)
        found = {type(w).__name__: w for w in viewer.window._qt_window.findChildren(object)
                 if type(w).__name__ in ("FinetuneWidget", "SegmentWidget")}
        qtbot.waitUntil(lambda: found["FinetuneWidget"]._placed, timeout=5000)
        qtbot.wait(300)
        segment, finetune = _dock(found["SegmentWidget"]), _dock(found["FinetuneWidget"])
        main = viewer.window._qt_window
        assert finetune in main.tabifiedDockWidgets(segment)
        assert not segment.visibleRegion().isEmpty()
        assert finetune.visibleRegion().isEmpty()
    finally:
        viewer.close()
