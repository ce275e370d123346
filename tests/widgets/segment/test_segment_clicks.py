"""A corrective click on a real, held-out image through the Segment widget, as a user
makes it: the shipped default model, an AMOS CT slice of the shared set (never trained
on)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_imedsam.train.data import box_of, read_image, read_mask  # noqa: E402
from napari_imedsam.train.metrics import dice  # noqa: E402

SLICES = Path(__file__).resolve().parents[4] / "shared" / "data" / "ct-slices"
#: A slice whose aorta the box alone answers with Dice 0.757; the challenge's first click
#: there is positive, at (row 208, col 306), and joins the missed part (Dice 0.884,
#: measured 2026-12-05). (Under the ``local`` rule, before the click's push, clicks on
#: the Kvasir-Sessile polyps mostly joined nothing; a polyp this test used before gained
#: from a change far from its click, which the local rules leave out.)
NAME = "amos_0004_75.png"
MASK = "amos_0004_75_aorta_000.png"
CLICK = (208.0, 306.0)

pytestmark = pytest.mark.usefixtures("private_qsettings")


@pytest.mark.skipif(not (SLICES / "images" / NAME).is_file(),
                    reason="the shared CT slices are absent")
def test_a_click_raises_dice_on_a_held_out_slice_and_undo_takes_it_back_whole(
        make_napari_viewer, qtbot, notes):
    image = read_image(SLICES / "images" / NAME)
    truth = read_mask(SLICES / "masks" / MASK) > 0
    viewer = make_napari_viewer()
    viewer.add_image(image, name="slice", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.model_combo.setCurrentText("medsam_lite")
    widget.device_combo.setCurrentText("cpu")
    x0, y0, x1, y1 = box_of(truth)
    widget.boxes.add_rectangles(np.array([[y0, x0], [y0, x1 - 1], [y1 - 1, x1 - 1],
                                          [y1 - 1, x0]], dtype=float))
    qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)
    box_only = widget.masks.data.copy()
    box_map = widget.uncertainty.data.copy()
    before = dice(box_only == 1, truth)
    assert widget.uncertainty.name == "slice error map"  # the default model has one

    points = widget.state.points
    widget.clicks._on_press(points, SimpleNamespace(button=1, modifiers=()))  # a click
    points.add(np.array([CLICK]))
    qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)
    clicked, clicked_map = widget.masks.data.copy(), widget.uncertainty.data.copy()
    after = dice(clicked == 1, truth)
    assert after > before + 0.01, (before, after)
    assert not np.array_equal(clicked_map, box_map)

    widget.undo()  # the click, its mask and its map go back together
    assert len(points.data) == 0 and np.array_equal(widget.masks.data, box_only)
    assert np.array_equal(widget.uncertainty.data, box_map)
    widget.redo()
    assert len(points.data) == 1 and np.array_equal(widget.masks.data, clicked)
    assert np.array_equal(widget.uncertainty.data, clicked_map)
    assert "changed nothing" not in widget.status.text()
    # A negative click on background the mask does not hold: nothing to take away, the
    # mask stays as it was, and the status line says so and where to click instead.
    widget.clicks._on_press(points, SimpleNamespace(button=2, modifiers=()))  # right-click
    points.add(np.array([[20.0, 20.0]]))
    qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)
    assert np.array_equal(widget.masks.data, clicked)
    assert "The click changed nothing: the mask already says there" in widget.status.text()
    assert "Shift+N" in widget.status.text(), widget.status.text()
    assert not [n for n in notes if n[0] == "error"], notes
