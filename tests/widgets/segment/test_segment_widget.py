"""The Segment dock widget under pytest-qt + Xvfb, driven like an annotator would."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


from napari_imedsam.widgets.segment.edits import NO_UNCERTAINTY  # noqa: E402
from napari_imedsam.widgets.segment.widget import SegmentWidget  # noqa: E402
from napari_imedsam.widgets.segment.uncertainty import STD_FULL_SCALE  # noqa: E402
from napari_imedsam.model import build_model  # noqa: E402
from napari_imedsam.train.data import LabeledImage  # noqa: E402
from conftest import train_tiny  # noqa: E402
from napari_imedsam.train.metrics import dice  # noqa: E402

WAIT_MS = 120_000  # first request loads the model; the CPUs may be shared


def _disc_scene(height: int, width: int, seed: int, centre=None, radius=None):
    """A bright disc on a dark noisy background (RGB uint8) and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = centre if centre is not None else (rng.uniform(0.3, 0.6) * height,
                                                rng.uniform(0.55, 0.8) * width)
    r = radius if radius is not None else height * 0.2
    mask = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < r**2
    image = rng.normal(40, 10, (height, width, 3))
    image[mask] += 150
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _two_discs(seed: int = 50, height: int = 64, width: int = 112):
    """One RGB image with a disc in its left and one in its right third (and their masks)."""
    rng = np.random.default_rng(seed)
    c1 = (rng.uniform(0.35, 0.65) * height, rng.uniform(0.2, 0.32) * width)
    c2 = (rng.uniform(0.35, 0.65) * height, rng.uniform(0.68, 0.8) * width)
    r1, r2 = rng.uniform(10, 15, 2)
    image, left = _disc_scene(height, width, seed, centre=c1, radius=r1)
    other, right = _disc_scene(height, width, seed + 1000, centre=c2, radius=r2)
    image[right] = other[right]
    return image, left, right


def _box_of(mask: np.ndarray, pad: int = 2) -> np.ndarray:
    """A napari rectangle (4 x (row, col)) around ``mask`` with ``pad`` pixels to spare."""
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min() - pad, rows.max() + pad, cols.min() - pad, cols.max() + pad
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float)


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory) -> str:
    """The tiny variant trained for seconds on two-disc scenes (full scope): it finds
    the discs of a held-out scene (Dice about 0.85)."""
    items = []
    for i in range(16):
        image, left, right = _two_discs(seed=i)
        items.append(LabeledImage(f"s{i}", image, (left + 2 * right).astype(np.int32)))
    return train_tiny(items, tmp_path_factory.mktemp("model") / "tiny.safetensors")


pytestmark = pytest.mark.usefixtures("private_qsettings")


def _open(viewer, model: str | None = None) -> SegmentWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    if model is not None:
        widget.model_combo.setCurrentText(model)
    return widget


def _wait(qtbot, widget: SegmentWidget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def test_box_convention_and_checks():
    """Rectangle corners are the centres of the outermost pixels to include."""
    from napari_imedsam.boxes import box_from_vertices, check_image, plane_index

    verts = np.array([[10, 5], [10, 15], [20, 15], [20, 5]], float)
    assert box_from_vertices(verts, (64, 64)) == (5.0, 10.0, 16.0, 21.0)  # pixels 10..20 in
    assert box_from_vertices(verts + 50, (64, 64)) == (55.0, 60.0, 64.0, 64.0)  # clipped
    with pytest.raises(ValueError, match="outside"):
        box_from_vertices(verts + 100, (64, 64))
    with pytest.raises(ValueError, match="too small"):
        box_from_vertices(np.array([[3.0, 3.0]] * 4), (64, 64))
    assert plane_index(np.full(4, 2.2), 5) == 2
    with pytest.raises(ValueError, match="several slices"):
        plane_index(np.array([0.0, 0, 3, 3]), 5)
    with pytest.raises(ValueError, match="outside the volume"):
        plane_index(np.full(4, 7.0), 5)
    check_image((8, 8, 4), rgb=True)
    with pytest.raises(ValueError, match="split"):
        check_image((2, 3, 8, 8), rgb=False)


def test_widget_opens_from_manifest_with_layers_ready(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    photo = np.zeros((40, 50, 3), np.uint8)
    photo[..., 0] = 180  # a colour image: no CT window for it
    viewer.add_image(photo, name="photo", rgb=True)
    widget = _open(viewer)
    assert isinstance(widget, SegmentWidget)
    assert widget.image_combo.currentText() == "photo"
    boxes, masks = widget.boxes, widget.masks
    assert boxes.mode == "add_rectangle" and viewer.layers.selection.active is boxes
    assert masks.data.shape == (40, 50) and masks.data.max() == 0
    # The image list follows the layer list, and the widget the image opened last.
    viewer.add_image(np.zeros((8, 8)), name="other")
    assert [widget.image_combo.itemText(i) for i in range(widget.image_combo.count())] == [
        "photo", "other"]
    assert widget.image.name == "other" and widget.boxes.name == "other boxes"
    qtbot.waitUntil(lambda: viewer.layers.selection.active is widget.boxes, timeout=5000)
    assert not viewer.layers["photo"].visible and not boxes.visible  # the other image hides
    # Settings persist into the next widget; the CT window belongs to its image.
    widget.device_combo.setCurrentText("cpu")
    widget.window_combo.setCurrentText("lung")
    widget.image_combo.setCurrentText("photo")
    assert widget.window_combo.currentText() == "none" and not widget.window_combo.isEnabled()
    widget.image_combo.setCurrentText("other")
    assert widget.window_combo.currentText() == "lung"
    again = SegmentWidget(viewer)
    assert again.device_combo.currentText() == "cpu" and again.window_combo.currentText() == "none"
    # ... and it reuses each image's boxes, masks and points layers rather than adding more.
    assert again.boxes is boxes and again.masks is masks
    assert [layer.name for layer in viewer.layers] == [
        "photo", "photo masks", "other", "other masks", "other points", "other boxes",
        "photo points", "photo boxes"]


def test_boxes_give_masks_ids_uncertainty_and_undo(make_napari_viewer, qtbot, trained_tiny,
                                                   notes):
    viewer = make_napari_viewer()
    image, left, right = _two_discs()
    viewer.add_image(image, name="discs", rgb=True)
    widget = _open(viewer, trained_tiny)
    boxes, masks = widget.boxes, widget.masks

    boxes.add_rectangles(_box_of(left))
    _wait(qtbot, widget)
    assert dice(masks.data == 1, left) > 0.5, notes
    assert set(np.unique(masks.data)) == {0, 1}
    unc = widget.uncertainty
    assert unc.data.shape == (64, 112) and unc.data.max() > 0
    # A fixed scale (std of the probability, saturating at 0.25), never fitted to the data.
    assert unc.blending == "translucent" and unc.colormap.name == "imedsam uncertainty"
    assert tuple(unc.contrast_limits) == (0.0, STD_FULL_SCALE) and unc.data.max() <= 0.5
    widget.show_unc.setChecked(False)
    assert not unc.visible
    first = masks.data.copy()

    # A second box gets the next id and leaves the first object alone.
    boxes.add_rectangles(_box_of(right))
    _wait(qtbot, widget)
    assert dice(masks.data == 2, right) > 0.5
    assert np.array_equal(masks.data == 1, first == 1)
    assert list(boxes.features["object_id"]) == [1, 2]

    # Undo takes the second box and its mask back together; redo both again.
    second = masks.data.copy()
    widget.undo()
    assert np.array_equal(masks.data, first) and len(boxes.data) == 1
    widget.redo()
    assert np.array_equal(masks.data, second) and len(boxes.data) == 2
    assert list(boxes.features["object_id"]) == [1, 2]
    assert not widget.busy  # restored boxes are not segmented again

    # Editing a box replaces its object: move box 1 off the disc into background.
    row = int(np.flatnonzero(boxes.features["object_id"].to_numpy() == 1)[0])
    moved = [np.array(d) for d in boxes.data]
    original = moved[row].copy()
    moved[row] = moved[row] + np.array([0.0, 40.0])
    boxes.data = moved
    _wait(qtbot, widget)
    assert (masks.data == 2).sum() > 0  # untouched
    assert dice(masks.data == 1, left) < 0.5  # the old pixels of object 1 are gone
    widget.undo()  # one undo step brings the previous box and pixels back
    assert np.array_equal(masks.data == 1, first == 1)
    row = int(np.flatnonzero(boxes.features["object_id"].to_numpy() == 1)[0])
    assert np.allclose(boxes.data[row], original)
    assert not [n for n in notes if n[0] == "error"], notes


def test_drawn_box_and_a_newer_request_supersedes(make_napari_viewer, qtbot, trained_tiny):
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks,
    )

    viewer = make_napari_viewer()
    image, left, right = _two_discs()
    viewer.add_image(image, name="discs", rgb=True)
    widget = _open(viewer, trained_tiny)
    boxes, masks = widget.boxes, widget.masks
    corners = _box_of(left)
    # Drag a rectangle the way the mouse does it in add_rectangle mode.
    mouse_press_callbacks(boxes, read_only_mouse_event(type="mouse_press", position=corners[0]))
    mouse_move_callbacks(boxes, read_only_mouse_event(type="mouse_move", is_dragging=True,
                                                      position=corners[2]))
    mouse_release_callbacks(boxes, read_only_mouse_event(type="mouse_release",
                                                         position=corners[2]))
    assert len(boxes.data) == 1 and widget.busy
    # Before that result arrives, the box is moved onto the other disc: the first
    # result is stale and must never reach the labels.
    boxes.data = [_box_of(right)]
    _wait(qtbot, widget)
    assert dice(masks.data == 1, right) > 0.5
    assert not masks.data[left].any()
    assert len(widget.state.journal) == 1  # the stale result wrote nothing


def test_hotkeys_accept_and_clear(make_napari_viewer, qtbot, trained_tiny):
    viewer = make_napari_viewer()
    image, left, right = _two_discs()
    viewer.add_image(image, name="discs", rgb=True)
    widget = _open(viewer, trained_tiny)
    boxes, masks = widget.boxes, widget.masks
    boxes.add_rectangles(_box_of(left))
    _wait(qtbot, widget)
    press = {str(k): f for k, f in boxes.keymap.items()}  # the layer's own hotkeys
    assert {"Shift+A", "Shift+C", "Ctrl+Z"} <= set(press), press
    press["Shift+A"](boxes)  # accept
    assert bool(boxes.features["accepted"][0]) and boxes.mode == "add_rectangle"
    assert np.allclose(boxes.edge_color[0], [0x9a / 255] * 3 + [1])
    kept = masks.data.copy()
    boxes.data = [boxes.data[0] + 5]  # accepted: editing it changes nothing
    assert not widget.busy and np.array_equal(masks.data, kept)

    boxes.add_rectangles(_box_of(right))
    _wait(qtbot, widget)
    assert (masks.data == 2).any()
    press["Shift+C"](boxes)  # clear the current object: its pixels and its box go
    assert len(boxes.data) == 1 and not (masks.data == 2).any()
    assert np.array_equal(masks.data, kept)
    press["Ctrl+Z"](boxes)  # clearing is undoable too, from the boxes layer
    assert (masks.data == 2).any()


def test_errors_notify_and_never_raise(make_napari_viewer, qtbot, notes, tmp_path):
    viewer = make_napari_viewer()
    image, left, _ = _two_discs()
    viewer.add_image(image, name="discs", rgb=True)
    widget = _open(viewer, str(tmp_path / "missing.safetensors"))
    boxes, masks = widget.boxes, widget.masks

    # A box outside the image: a warning, no request, no exception.
    boxes.add_rectangles(np.array([[100, 200], [100, 250], [140, 250], [140, 200]], float))
    assert not widget.busy
    assert any(s == "warning" and "outside" in m for s, m in notes), notes

    # A model that cannot load: an error that says what to do; nothing written.
    boxes.add_rectangles(_box_of(left))
    _wait(qtbot, widget)
    errors = [m for s, m in notes if s == "error"]
    # The pop-up fits (its first sentence); the status line has the whole advice.
    assert any("Could not load the model" in m and len(m) < 220 for m in errors), notes
    assert "Choose another" in widget.status.text()
    assert masks.data.max() == 0 and len(boxes.data) == 2

    # A 4D layer cannot be segmented: a warning naming what to do.
    viewer.add_image(np.zeros((2, 3, 16, 16)), name="movie")
    widget.image_combo.setCurrentText("movie")
    assert any(s == "warning" and "split" in m for s, m in notes), notes
    assert widget.boxes is None and len(boxes.data) == 2  # no layer data lost
    assert sum("movie" in m for _, m in notes) == 1  # said once


def test_base_sam_mode_says_why_no_uncertainty(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    image, left, _ = _two_discs()
    viewer.add_image(image, name="discs", rgb=True)
    widget = _open(viewer)
    torch.manual_seed(0)
    widget.use_model(build_model("tiny"))  # no adapter: SAM's own decoder
    widget.boxes.add_rectangles(_box_of(left))
    _wait(qtbot, widget)
    assert "uncertainty" not in viewer.layers
    assert NO_UNCERTAINTY in widget.status.text()
    assert any(NO_UNCERTAINTY in m for _, m in notes)


def test_volume_box_applies_to_its_slice(make_napari_viewer, qtbot, trained_tiny):
    viewer = make_napari_viewer()
    image, left, _ = _two_discs()
    volume = np.stack([np.full_like(image[..., 0], 40)] * 4)
    volume[2] = image[..., 0]
    viewer.add_image(volume, name="vol")
    widget = _open(viewer, trained_tiny)
    boxes, masks = widget.boxes, widget.masks
    assert boxes.ndim == 3 and masks.data.shape == (4, 64, 112)
    viewer.dims.set_current_step(0, 2)
    rect = _box_of(left)
    boxes.add_rectangles(np.column_stack([np.full(4, 2.0), rect]))
    _wait(qtbot, widget)
    assert masks.data[[0, 1, 3]].max() == 0
    assert dice(masks.data[2] == 1, left) > 0.5


def test_sample_data_loads(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-imedsam", "ct")
    viewer.open_sample("napari-imedsam", "rgb")
    ct, rgb = viewer.layers["synthetic CT (HU)"], viewer.layers["synthetic endoscopy (RGB)"]
    assert ct.data.shape == (256, 256) and ct.data.dtype == np.int16 and not ct.rgb
    assert rgb.data.shape == (256, 256, 3) and rgb.rgb
    assert ct.data.std() > 0 and rgb.data.std() > 0


def test_screenshot_shows_the_mask_overlay(make_napari_viewer, qtbot, trained_tiny):
    viewer = make_napari_viewer(show=True)
    image, left, right = _two_discs()
    viewer.add_image(image, name="discs", rgb=True)
    widget = _open(viewer, trained_tiny)
    boxes = widget.boxes
    boxes.add_rectangles([_box_of(left), _box_of(right)])
    _wait(qtbot, widget)
    widget.uncertainty.visible = False
    viewer.reset_view()
    shot = viewer.screenshot("/tmp/widget_screenshot.png", canvas_only=True)
    # The labels colour the discs: the canvas holds colours the grey-ish input lacks.
    rgb = shot[..., :3].astype(int)
    saturated = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 60
    assert saturated.mean() > 0.01


def test_gui_command_opens_the_sample_and_the_widgets(make_napari_viewer, qtbot, tmp_path):
    """`imedsam gui`: the sample (or the given files) and the dock widgets, offline.
    (``make_napari_viewer`` for napari's per-test plugin registry: without it, this
    viewer registered the plugin's commands again after another test's, and failed.)"""
    from napari_imedsam.cli.gui import open_viewer
    from napari_imedsam.cli import build_parser

    args = build_parser().parse_args(["gui", "--sample", "ct", "--fine-tune"])
    assert args.files == [] and args.sample == "ct" and args.fine_tune
    viewer = open_viewer(args.files, args.sample, args.fine_tune, show=False)
    try:
        assert [layer.name for layer in viewer.layers][0] == "synthetic CT (HU)"
        docks = " ".join(viewer.window.dock_widgets)
        assert "Segment" in docks and "Fine-tune" in docks
    finally:
        viewer.close()
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, np.arange(64 * 80, dtype=np.uint16).reshape(64, 80))
    viewer = open_viewer([str(path)], "ct", fine_tune=False, show=False)
    try:
        assert viewer.layers[0].data.shape == (64, 80) and len(viewer.layers) >= 1
        assert "Fine-tune" not in " ".join(viewer.window.dock_widgets)
    finally:
        viewer.close()


def test_a_new_image_starts_without_the_old_objects_uncertainty(make_napari_viewer, qtbot,
                                                                 trained_tiny):
    viewer = make_napari_viewer()
    image, left, right = _two_discs()
    viewer.add_image(image, name="first", rgb=True)
    widget = _open(viewer, trained_tiny)
    widget.boxes.add_rectangles([_box_of(right), _box_of(left)])
    _wait(qtbot, widget)
    assert widget.uncertainty is not None and widget.uncertainty.data[left].max() > 0
    viewer.layers.clear()
    viewer.add_image(image, name="second", rgb=True)
    widget.boxes.add_rectangles([_box_of(right)])
    _wait(qtbot, widget)
    unc = widget.uncertainty.data
    assert unc[right].max() > 0
    assert unc[left].max() == 0  # nothing left over from the first image's second object


def test_three_images_each_keep_their_objects_boxes_and_undo(make_napari_viewer, qtbot,
                                                             trained_tiny, notes):
    """RGB, grey and a volume in one viewer, segmented in turn; switching back and forth
    keeps every object, box and undo step; each image has its own layers."""
    viewer = make_napari_viewer()
    rgb, left, right = _two_discs(seed=3)
    widget = _open(viewer, trained_tiny)
    viewer.add_image(rgb, name="rgb", rgb=True)
    qtbot.waitUntil(lambda: viewer.layers.selection.active is widget.boxes, timeout=5000)
    widget.boxes.add_rectangles(_box_of(left))
    _wait(qtbot, widget)
    rgb_masks = widget.masks
    assert widget.masks.name == "rgb masks" and dice(rgb_masks.data == 1, left) > 0.5

    grey, disc = _disc_scene(80, 96, seed=7)
    viewer.add_image(grey[..., 0], name="grey")  # another size, one channel
    qtbot.waitUntil(lambda: viewer.layers.selection.active is widget.boxes, timeout=5000)
    assert widget.image.name == "grey" and widget.masks.data.shape == (80, 96)
    assert not viewer.layers["rgb"].visible and not rgb_masks.visible
    widget.boxes.add_rectangles(_box_of(disc))
    _wait(qtbot, widget)
    assert dice(widget.masks.data == 1, disc) > 0.5

    volume = np.stack([rgb[..., 0]] * 5)  # (Z, H, W)
    viewer.add_image(volume, name="volume")
    qtbot.waitUntil(lambda: viewer.layers.selection.active is widget.boxes, timeout=5000)
    viewer.dims.set_point(0, 2)
    rect = np.column_stack([np.full(4, 2.0), _box_of(right)])
    widget.boxes.add_rectangles(rect)
    _wait(qtbot, widget)
    assert dice(widget.masks.data[2] == 1, right) > 0.5 and not widget.masks.data[0].any()

    # Back to the RGB image (by selecting its layer): its object, box and undo are there,
    # and its boxes layer is made active, ready for a box; a second click on the image
    # selects the image itself (its contrast).
    viewer.layers.selection.active = viewer.layers["rgb"]
    assert widget.image.name == "rgb" and widget.masks is rgb_masks
    qtbot.waitUntil(lambda: viewer.layers.selection.active is widget.boxes, timeout=5000)
    assert viewer.layers[-1] is widget.boxes
    viewer.layers.selection.active = viewer.layers["rgb"]
    qtbot.wait(50)
    assert viewer.layers.selection.active is viewer.layers["rgb"]
    assert viewer.layers["rgb"].visible and not viewer.layers["volume"].visible
    assert len(widget.boxes.data) == 1 and dice(rgb_masks.data == 1, left) > 0.5
    widget.boxes.add_rectangles(_box_of(right))
    _wait(qtbot, widget)
    assert set(np.unique(rgb_masks.data)) == {0, 1, 2}
    widget.undo()
    assert set(np.unique(rgb_masks.data)) == {0, 1} and len(widget.boxes.data) == 1
    # The grey image was not touched by any of this.
    widget.image_combo.setCurrentText("grey")
    assert dice(widget.masks.data == 1, disc) > 0.5 and len(widget.boxes.data) == 1
    names = [layer.name for layer in viewer.layers]
    for image in ("rgb", "grey", "volume"):
        assert f"{image} masks" in names and f"{image} boxes" in names
    assert not [n for n in notes if n[0] == "error"], notes


def test_clear_and_undo_restore_box_and_mask_together(make_napari_viewer, qtbot, trained_tiny):
    viewer = make_napari_viewer()
    image, left, right = _two_discs(seed=11)
    viewer.add_image(image, name="discs", rgb=True)
    widget = _open(viewer, trained_tiny)
    widget.boxes.add_rectangles(_box_of(left))
    _wait(qtbot, widget)
    widget.accept_current()
    kept_box = np.array(widget.boxes.data[0])
    labelled = widget.masks.data.copy()
    assert labelled.max() == 1
    widget.boxes.selected_data = {0}
    widget.clear_current()
    assert len(widget.boxes.data) == 0 and widget.masks.data.max() == 0
    widget.undo()  # one step: the box (still accepted) and its pixels
    assert len(widget.boxes.data) == 1 and np.array_equal(widget.masks.data, labelled)
    assert np.allclose(widget.boxes.data[0], kept_box)
    assert bool(widget.boxes.features["accepted"].iloc[0])
    # No orphan: a new box on the other disc gets its own object at once.
    widget.boxes.add_rectangles(_box_of(right))
    _wait(qtbot, widget)
    assert set(np.unique(widget.masks.data)) == {0, 1, 2}
    widget.redo()  # nothing to redo after a new action
    assert "nothing to redo" in widget.status.text()


def test_each_image_is_framed_when_it_opens_and_found_where_it_was_left(make_napari_viewer,
                                                                       qtbot):
    viewer = make_napari_viewer()
    widget = _open(viewer)
    camera = viewer.scene.camera
    viewer.add_image(np.zeros((1000, 1200), np.uint8), name="large")
    qtbot.waitUntil(lambda: widget.image is not None and widget.image.name == "large",
                    timeout=5000)
    camera.zoom, camera.center = camera.zoom * 12, (100.0, 150.0)  # the user zooms in
    left_at = (tuple(camera.center), camera.zoom)
    viewer.add_image(np.zeros((64, 80), np.uint8), name="small")
    qtbot.waitUntil(lambda: widget.image.name == "small", timeout=5000)
    # The small image fills the canvas (centred), not a corner of the large one's view.
    assert np.allclose(camera.center[-2:], (32.0, 40.0), atol=1.0), camera.center
    assert camera.zoom > left_at[1]
    viewer.layers.selection.active = viewer.layers["large"]
    assert widget.image.name == "large"
    assert np.allclose(camera.center, left_at[0]) and camera.zoom == pytest.approx(left_at[1])


def test_mask_outline_shows_the_edge_above_the_uncertainty(make_napari_viewer, qtbot,
                                                           trained_tiny):
    viewer = make_napari_viewer()
    image, left, right = _two_discs()
    viewer.add_image(image, name="discs", rgb=True)
    widget = _open(viewer, trained_tiny)
    widget.boxes.add_rectangles(_box_of(left))
    _wait(qtbot, widget)
    layers, masks, unc = viewer.layers, widget.masks, widget.uncertainty
    assert masks.contour == 0 and layers.index(masks) < layers.index(unc)  # filled, below
    widget.unc_view.outline.setChecked(True)
    assert masks.contour == 2 and layers.index(masks) == layers.index(unc) + 1
    assert layers.index(widget.boxes) == len(layers) - 1  # the boxes stay on top
    # A new image's masks follow the choice, once its uncertainty exists too.
    grey, disc = _disc_scene(80, 96, seed=7)
    viewer.add_image(grey[..., 0], name="grey")
    qtbot.waitUntil(lambda: widget.image.name == "grey", timeout=5000)
    widget.boxes.add_rectangles(_box_of(disc))
    _wait(qtbot, widget)
    assert widget.masks.contour == 2
    assert layers.index(widget.masks) > layers.index(widget.uncertainty)
    widget.unc_view.outline.setChecked(False)
    assert widget.masks.contour == 0


def test_a_2d_image_opened_after_a_volume_is_framed(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = _open(viewer)
    viewer.add_image(np.zeros((5, 64, 64), np.uint8), name="volume")
    qtbot.waitUntil(lambda: widget.image is not None and widget.image.name == "volume",
                    timeout=5000)
    viewer.add_image(np.zeros((40, 50), np.uint8), name="flat")  # napari cannot fit it alone
    qtbot.waitUntil(lambda: widget.image.name == "flat", timeout=5000)
    camera = viewer.scene.camera
    assert np.allclose(camera.center[-2:], (20.0, 25.0), atol=1.0), camera.center
    viewer.layers.selection.active = viewer.layers["volume"]
    viewer.layers.selection.active = viewer.layers["flat"]
    assert widget.image.name == "flat" and viewer.layers["flat"].visible


def test_the_dock_scrolls_instead_of_cutting_its_texts(make_napari_viewer, qtbot):
    """In a short window the sections keep their height and the dock scrolls (Qt cut
    the word-wrapped lines before: the series' line, the status, the help)."""
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1100, 520)
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.set_status("image 1 of 3: a_rather_long_file_name_of_an_endoscopy_frame.jpg "
                      "(labels from a_rather_long_file_name_labels.tif); labels are saved to "
                      "/somewhere/far/away/imedsam-labels")
    qtbot.wait(100)
    for label in (widget.status, widget.series.label):
        assert label.height() >= label.heightForWidth(label.width())
    scroll = widget.findChild(QScrollArea)
    assert scroll is not None and scroll.verticalScrollBar().maximum() > 0


def test_clicks_correct_the_current_object_and_undo_with_their_mask_and_map(
        make_napari_viewer, qtbot, trained_tiny, notes):
    """A click goes to the object being worked on, answers it again from the cached
    embedding, and is one undo step with its mask and map; a right-click is negative;
    moving a click answers again; a click with no object starts one (framed by a
    rectangle that is no prompt); deleting the box takes its clicks; an accept followed
    by undo keeps the object's map."""
    from types import SimpleNamespace

    viewer = make_napari_viewer()
    image, left, right = _two_discs()
    viewer.add_image(image, name="discs", rgb=True)
    widget = _open(viewer, trained_tiny)
    boxes, masks, points = widget.boxes, widget.masks, widget.state.points
    assert points.name == "discs points" and points.mode == "add"

    rows, cols = np.nonzero(right)
    points.add(np.array([[rows.mean(), cols.mean()]]))  # no object yet: a new one
    _wait(qtbot, widget)
    assert len(boxes.data) == 1 and bool(boxes.features["frame"].iloc[0])
    assert (masks.data == 1).any() and list(points.features["box_key"]) == [
        int(boxes.features["box_key"].iloc[0])]
    widget.undo()  # the click, its frame and its mask go together
    assert len(points.data) == 0 and len(boxes.data) == 0 and not masks.data.any()

    boxes.add_rectangles(_box_of(left))
    _wait(qtbot, widget)
    box_only, box_map = masks.data.copy(), widget.uncertainty.data.copy()
    embedded = widget.holder._session.cache.misses
    rows, cols = np.nonzero(left)
    inside = (float(rows.mean()), float(cols.mean()))
    # A right-click inside the disc: a negative click, which carves the object.
    widget.clicks._on_press(points, SimpleNamespace(button=2, modifiers=()))
    points.add(np.array([inside]))
    _wait(qtbot, widget)
    assert list(points.features["positive"]) == [False]
    assert list(points.features["box_key"]) == [int(boxes.features["box_key"].iloc[0])]
    carved, carved_map = masks.data.copy(), widget.uncertainty.data.copy()
    assert (carved == 1).sum() != (box_only == 1).sum()
    assert not np.array_equal(carved_map, box_map)
    assert widget.holder._session.cache.misses == embedded  # the embedding was reused
    # Undo takes the click, its mask and its map back together; redo brings all three.
    widget.undo()
    assert len(points.data) == 0 and np.array_equal(masks.data, box_only)
    assert np.array_equal(widget.uncertainty.data, box_map)
    widget.redo()
    assert len(points.data) == 1 and np.array_equal(masks.data, carved)
    assert np.array_equal(widget.uncertainty.data, carved_map)
    assert not widget.busy  # restored clicks are not answered again
    # Moving the click answers again, with the click where it now is (under the local
    # rule the mask may come out the same: only the change holding the click joins).
    session = widget.holder._session
    asked: list = []
    answer = session.predict

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003
        asked.extend(c for c in (kwargs.get("clicks") or []) if c is not None)
        return answer(*args, **kwargs)

    session.predict = spy
    points.data = np.array([[inside[0], inside[1] + 6.0]])
    _wait(qtbot, widget)
    del session.predict
    assert asked and all(len(c) == 1 for c in asked)
    assert asked[-1].xy[0][0] == pytest.approx(inside[1] + 6.0, abs=1.0)
    # Accept, then undo the accept: the object's map stays.
    widget.undo()  # the move
    accepted_map = widget.uncertainty.data.copy()
    boxes.selected_data = {0}
    widget.accept_current()
    assert bool(boxes.features["accepted"].iloc[0])
    widget.undo()
    assert np.array_equal(widget.uncertainty.data, accepted_map) and accepted_map.max() > 0
    # Deleting the box takes its clicks with it (and undo brings both back).
    boxes.selected_data = {0}
    boxes.remove_selected()
    assert len(points.data) == 0 and (masks.data == 1).sum() == 0
    widget.undo()
    assert len(points.data) == 1 and (masks.data == 1).sum() > 0
    assert not [n for n in notes if n[0] == "error"], notes


def test_the_users_own_labels_follow_their_image(make_napari_viewer, qtbot):
    """Switching images hides the user's Labels layers of the other images (paired as
    the Fine-tune dock pairs them) and shows them again with their image; a layer the
    user hid stays hidden."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 50), np.uint8), name="scan_a")
    viewer.add_labels(np.ones((40, 50), np.int32), name="scan_a organs")
    viewer.add_image(np.zeros((40, 50), np.uint8), name="scan_b")
    viewer.add_labels(np.ones((40, 50), np.int32), name="scan_b organs")
    viewer.add_labels(np.ones((40, 50), np.int32), name="scan_b notes")
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.image_combo.setCurrentText("scan_a")
    layers = viewer.layers
    qtbot.waitUntil(lambda: widget.image is layers["scan_a"], timeout=5000)
    assert layers["scan_a organs"].visible and not layers["scan_b organs"].visible
    widget.image_combo.setCurrentText("scan_b")
    qtbot.waitUntil(lambda: widget.image is layers["scan_b"], timeout=5000)
    assert not layers["scan_a organs"].visible and layers["scan_b organs"].visible
    layers["scan_b notes"].visible = False  # the user hides one
    widget.image_combo.setCurrentText("scan_a")
    qtbot.waitUntil(lambda: widget.image is layers["scan_a"], timeout=5000)
    widget.image_combo.setCurrentText("scan_b")
    qtbot.waitUntil(lambda: widget.image is layers["scan_b"], timeout=5000)
    assert layers["scan_b organs"].visible and not layers["scan_b notes"].visible
