"""A corrective click on a real, held-out image through the Segment widget, as a user
makes it: the shipped default model, a Kvasir-Sessile test polyp (never trained on)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_imedsam.train.data import box_of, read_image, read_mask  # noqa: E402
from napari_imedsam.train.metrics import dice  # noqa: E402

KVASIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "kvasir-sessile"
#: A test-split polyp whose box-only mask overshoots (Dice 0.655); the challenge's first
#: click there is negative, at (row 231, col 436), and raises Dice (0.674 measured).
NAME = "cju884985nlmx0817vzpax3y4.jpg"

pytestmark = pytest.mark.usefixtures("private_qsettings")


@pytest.mark.skipif(not (KVASIR / "images" / NAME).is_file(),
                    reason="the shared Kvasir-Sessile images are absent")
def test_a_click_raises_dice_on_a_held_out_polyp_and_undo_takes_it_back_whole(
        make_napari_viewer, qtbot, notes):
    image = read_image(KVASIR / "images" / NAME)
    truth = read_mask(KVASIR / "masks" / NAME) > 0
    viewer = make_napari_viewer()
    viewer.add_image(image, name="polyp", rgb=True)
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
    assert widget.uncertainty.name == "polyp error map"  # the default model has one

    points = widget.state.points
    widget.clicks._on_press(points, SimpleNamespace(button=2, modifiers=()))  # right-click
    points.add(np.array([[231.0, 436.0]]))
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
    assert not [n for n in notes if n[0] == "error"], notes
