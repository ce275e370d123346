"""Volume tools of the Segment widget (precompute, propagate) under pytest-qt + Xvfb."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


from disc_volume import ball_volume, disc_model  # noqa: E402
from napari_imedsam.train.metrics import dice  # noqa: E402

WAIT_MS = 120_000
START = 7  # the ball's middle slice; it spans slices 3..12 (truth)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return disc_model(str(tmp_path_factory.getbasetemp()))


pytestmark = pytest.mark.usefixtures("private_qsettings")


def _rect(mask: np.ndarray, plane: int, pad: int = 2) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min() - pad, rows.max() + pad, cols.min() - pad, cols.max() + pad
    return np.array([[plane, r0, c0], [plane, r0, c1], [plane, r1, c1], [plane, r1, c0]], float)


def _volume_widget(make_napari_viewer, qtbot, model_path, volume, window="none"):
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="vol")
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.model_combo.setCurrentText(model_path)
    widget.window_combo.setCurrentText(window)
    widget.zoom.sharper.setChecked(False)  # keep the CPU for what is tested here
    viewer.dims.set_current_step(0, START)
    return viewer, widget


def _segment_start(qtbot, widget, truth) -> np.ndarray:
    widget.boxes.add_rectangles(_rect(truth[START], START))
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    oid = int(widget.boxes.features["object_id"].iloc[-1])
    first = widget.masks.data[START] == oid
    assert dice(first, truth[START]) > 0.6
    return first


def _slow(session, method: str, seconds: float) -> None:
    """Make one session method slow, so a Stop press lands between two slices."""
    original = getattr(session, method)

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    setattr(session, method, slow)


def test_propagate_runs_through_the_object_and_stops_where_it_ends(
        make_napari_viewer, qtbot, model_path, notes):
    volume, truth = ball_volume()
    viewer, widget = _volume_widget(make_napari_viewer, qtbot, model_path, volume)
    masks = widget.masks
    masks.data[9, 20:26, 30:40] = 5  # another object, inside the ball's area on slice 9
    first = _segment_start(qtbot, widget, truth)

    widget.volume.direction.setCurrentText("both")
    widget.volume.propagate_button.click()
    assert widget.volume.busy and widget.volume.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.volume.busy, timeout=WAIT_MS)

    oid = int(widget.boxes.features["object_id"].iloc[0])
    assert oid == 6  # the next free id after the painted 5
    obj = masks.data == oid
    for z in range(4, 11):  # the ball's body: found slice after slice
        assert dice(obj[z], truth[z]) > 0.5, (z, notes)
    written = [z for z in range(len(obj)) if obj[z].any()]
    assert min(written) >= 2 and max(written) <= 13  # it stopped where the ball ends
    assert not obj[[0, 1, 14, 15]].any()
    assert "ended at slice" in widget.status.text() and "down: ended" in widget.status.text()
    assert (masks.data[9, 20:26, 30:40] == 5).all()  # the other object is untouched
    assert np.array_equal(obj[START], first)  # the start slice is the user's, as it was
    assert not widget.volume.stop_button.isEnabled()
    # Propagated slices get their uncertainty like the box's slice.
    unc = widget.uncertainty
    mapped = [z for z in range(len(obj)) if unc.data[z].any()]
    assert mapped == written, (mapped, written)
    propagated_maps = unc.data.copy()
    # The whole propagation is one undo step (the next one undoes the box and its
    # mask), and redo brings both back, with their maps.
    widget.undo()
    assert [z for z in range(len(obj)) if (masks.data[z] == oid).any()] == [START]
    assert [z for z in range(len(obj)) if unc.data[z].any()] == [START]
    widget.undo()
    assert not (masks.data == oid).any() and len(widget.boxes.data) == 0
    widget.redo()
    widget.redo()
    assert np.array_equal(masks.data == oid, obj) and len(widget.boxes.data) == 1
    assert np.array_equal(unc.data, propagated_maps)
    # The propagated boxes are remembered per slice (the zoom preview uses them).
    assert set(widget.volume.plane_boxes[oid]) == set(written) - {START}
    assert not [n for n in notes if n[0] == "error"], notes


def test_corrected_slices_guide_propagation_and_are_never_overwritten(
        make_napari_viewer, qtbot, model_path, notes):
    """Propagate, correct one slice with the brush, Propagate again: the corrected slice
    is a key slice (kept as the user left it); "Propagate from here" reruns one way
    from it up to the next slice of the user's; each run is one undo step."""
    volume, truth = ball_volume()
    viewer, widget = _volume_widget(make_napari_viewer, qtbot, model_path, volume)
    masks = widget.masks
    first = _segment_start(qtbot, widget, truth)
    oid = int(widget.boxes.features["object_id"].iloc[0])
    tools = widget.volume
    tools.direction.setCurrentText("both")
    tools.propagate_button.click()
    qtbot.waitUntil(lambda: not tools.busy, timeout=WAIT_MS)
    propagated = masks.data == oid
    assert propagated[10].any() and propagated[4].any()

    assert [o for o, _ in tools.boxes_on_plane(10)] == [oid]  # the zoom preview's boxes
    corrected = truth[10].copy()  # the user paints slice 10 as it should be, with a notch
    corrected[:, :40] = False
    masks.data[10][masks.data[10] == oid] = 0
    masks.data[10][corrected] = oid
    masks.refresh()
    # The preview no longer decodes the propagated box over the user's correction.
    assert tools.boxes_on_plane(10) == [] and [o for o, _ in tools.boxes_on_plane(9)] == [oid]
    tools.propagate_button.click()
    qtbot.waitUntil(lambda: not tools.busy, timeout=WAIT_MS)
    again = masks.data == oid
    assert np.array_equal(again[10], corrected)  # the user's slice, untouched
    assert np.array_equal(again[START], first)  # and the box's slice
    assert "propagated from your slices 7, 10 (up: ended" in widget.status.text()
    assert again[11].any() and again[8].any()

    # From here (slice 10), up only: below it nothing changes.
    viewer.dims.set_current_step(0, 10)
    tools.direction.setCurrentText("up")
    before = masks.data.copy()
    masks.data[12][masks.data[12] == oid] = 0  # lose slice 12 to see it made again
    masks.data[12][truth[12] & False] = oid
    masks.refresh()
    tools.from_here_button.click()
    qtbot.waitUntil(lambda: not tools.busy, timeout=WAIT_MS)
    after = masks.data == oid
    assert np.array_equal(after[:11], before[:11] == oid)
    assert after[12].any() or after[11].any()
    # One undo takes the whole run back.
    widget.undo()
    assert not (masks.data[12] == oid).any()
    assert np.array_equal(masks.data[:11], before[:11])
    assert not [n for n in notes if n[0] == "error"], notes


def test_boxes_on_other_slices_are_key_slices_of_the_current_object(
        make_napari_viewer, qtbot, model_path, notes):
    """With "key slice" boxes on, a box on another slice joins the current object; Propagate
    fills between the two box slices and beyond, never writing them; Clear on one key box
    clears its slice only."""
    volume, truth = ball_volume()
    viewer, widget = _volume_widget(make_napari_viewer, qtbot, model_path, volume)
    tools = widget.volume
    tools.key_boxes.setChecked(True)
    first = _segment_start(qtbot, widget, truth)
    oid = int(widget.boxes.features["object_id"].iloc[0])
    viewer.dims.set_current_step(0, 11)
    widget.boxes.add_rectangles(_rect(truth[11], 11))
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert list(widget.boxes.features["object_id"]) == [oid, oid]
    key = widget.masks.data[11] == oid
    assert dice(key, truth[11]) > 0.5
    tools.direction.setCurrentText("both")
    tools.propagate_button.click()
    qtbot.waitUntil(lambda: not tools.busy, timeout=WAIT_MS)
    assert "from your slices 7, 11" in widget.status.text(), widget.status.text()
    obj = widget.masks.data == oid
    assert np.array_equal(obj[START], first) and np.array_equal(obj[11], key)
    for z in (8, 9, 10, 5):
        assert dice(obj[z], truth[z]) > 0.5, z
    # A click on a slice where the object has no box of the user's makes a key slice too.
    widget.boxes.selected_data = {1}
    viewer.dims.set_current_step(0, 9)
    rows, cols = np.nonzero(truth[9])
    widget.state.points.add(np.array([[9, rows.mean(), cols.mean()]]))
    qtbot.waitUntil(lambda: not widget.busy and len(widget.boxes.data) == 3, timeout=WAIT_MS)
    assert int(widget.boxes.features["object_id"].iloc[2]) == oid
    assert bool(widget.boxes.features["frame"].iloc[2])
    # Clear the key box on slice 11: its slice goes, the rest of the object stays.
    widget.boxes.selected_data = {1}
    widget.clear_current()
    assert not (widget.masks.data[11] == oid).any()
    assert np.array_equal(widget.masks.data[START] == oid, first)
    # Off: a box on another slice is a new object.
    tools.key_boxes.setChecked(False)
    viewer.dims.set_current_step(0, 4)
    widget.boxes.add_rectangles(_rect(truth[4], 4))
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert int(widget.boxes.features["object_id"].iloc[-1]) != oid
    assert not [n for n in notes if n[0] == "error"], notes


def test_propagate_stops_on_request_and_keeps_what_it_did(make_napari_viewer, qtbot,
                                                          model_path):
    volume, truth = ball_volume()
    viewer, widget = _volume_widget(make_napari_viewer, qtbot, model_path, volume)
    _segment_start(qtbot, widget, truth)
    _slow(widget._holder.session_for(widget.settings.spec()), "predict", 0.4)
    widget.volume.direction.setCurrentText("up")
    widget.volume.propagate_button.click()
    widget.volume._worker.yielded.connect(lambda _: widget.volume.stop_button.click())
    qtbot.waitUntil(lambda: not widget.volume.busy, timeout=WAIT_MS)
    done = [z for z in range(len(volume)) if (widget.masks.data[z] == 1).any()]
    assert done[0] == START and 1 <= len(done) - 1 <= 2, done  # one slice, maybe two
    assert all(z >= START for z in done)  # "up" only
    assert "stopped before slice" in widget.status.text()


def test_precompute_fills_the_cache_with_the_ct_window_and_stops(make_napari_viewer, qtbot,
                                                                 model_path):
    volume, truth = ball_volume()
    # Hounsfield units that the abdomen window (W400, L40) maps back to the grey slices.
    hu = (volume.astype(np.int32) * 400 // 255 - 160).astype(np.int16)
    viewer, widget = _volume_widget(make_napari_viewer, qtbot, model_path, hu, "abdomen")
    widget.volume.radius.setValue(3)
    widget.volume.precompute_button.click()
    qtbot.waitUntil(lambda: not widget.volume.busy, timeout=WAIT_MS)
    session = widget._holder.session_for(widget.settings.spec())
    assert len(session.cache) == 7  # slices 4..10
    assert "7 slices embedded" in widget.status.text()
    # A box on a precomputed slice finds its embedding: the box path windows the
    # volume slice the same way.
    hits = session.cache.hits
    _segment_start(qtbot, widget, truth)
    assert session.cache.hits == hits + 1 and len(session.cache) == 7

    # Stop: what was embedded stays, the rest is skipped.
    _slow(session, "embed", 0.4)
    viewer.dims.set_current_step(0, 13)
    widget.volume.radius.setValue(7)  # 13, 14, 12, 15, 11, 10, ...: slices 11..15 are new
    widget.volume.precompute_button.click()
    widget.volume._worker.yielded.connect(lambda _: widget.volume.stop())
    qtbot.waitUntil(lambda: not widget.volume.busy, timeout=WAIT_MS)
    assert 8 <= len(session.cache) <= 9  # one slice, maybe two, before the stop
    assert not widget.volume.stop_button.isEnabled()


def test_volume_tools_on_2d_and_channel_data(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 50), np.uint8), name="flat")
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.volume.propagate_button.click()
    widget.volume.precompute_button.click()
    assert sum("work on 3D images" in m for _, m in notes) == 2
    assert not widget.volume.busy
    # Channels last (not RGB): refused with what to do; channels first: a plane stack.
    viewer.add_image(np.zeros((40, 50, 2), np.uint8), name="two channels last")
    widget.image_combo.setCurrentText("two channels last")
    assert any(s == "warning" and "two channels last" in m for s, m in notes), notes
    assert "channel_axis" in widget.status.text()  # the whole message, with what to do
    viewer.add_image(np.zeros((2, 40, 50), np.uint8), name="two channels first")
    widget.image_combo.setCurrentText("two channels first")
    assert widget.boxes.ndim == 3 and widget.masks.data.shape == (2, 40, 50)


def test_a_dicom_series_exports_a_seg_that_opens_again_on_it(make_napari_viewer, qtbot,
                                                              model_path, tmp_path, notes):
    """Open a DICOM series, segment and propagate, Export as DICOM SEG (labelmap), then
    open the SEG: a Labels layer on the series' grid, equal to the masks."""
    pytest.importorskip("highdicom")
    from dicom_series import ct_series

    volume, truth = ball_volume()
    ct_series(tmp_path / "ct", volume.astype(np.int16))
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(tmp_path / "ct"), plugin="napari-imedsam")
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.model_combo.setCurrentText(model_path)
    widget.window_combo.setCurrentText("none")
    widget.zoom.sharper.setChecked(False)
    qtbot.waitUntil(lambda: widget.boxes is not None, timeout=WAIT_MS)
    widget.boxes.add_rectangles(_rect(truth[START], START))
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    widget.volume.direction.setCurrentText("both")
    widget.volume.propagate_button.click()
    qtbot.waitUntil(lambda: not widget.volume.busy, timeout=WAIT_MS)
    assert len({z for z in range(len(volume)) if widget.masks.data[z].any()}) >= 5
    widget.export.seg_type.setCurrentText("lesion")
    widget.export.seg_labelmap.setChecked(True)
    assert widget.export.export(tmp_path / "ball.dcm")
    assert (tmp_path / "ball.dcm").is_file(), notes
    layers = viewer.open(str(tmp_path / "ball.dcm"), plugin="napari-imedsam")
    assert [layer.name for layer in layers] == ["ball"]  # the series is open: labels only
    assert np.array_equal(layers[0].data, widget.masks.data)
    assert tuple(layers[0].scale) == tuple(image.scale)
    assert not [n for n in notes if n[0] == "error"], notes
