"""The zoom preview of the Segment widget under pytest-qt + Xvfb."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


from disc_volume import ball_volume, disc_model, disc_slice  # noqa: E402
from napari_imedsam.widgets.segment.zoom import camera_of, canvas_size  # noqa: E402
from napari_imedsam.zoom import plan_view  # noqa: E402
from napari_imedsam.train.metrics import dice  # noqa: E402

WAIT_MS = 120_000
CENTRE, RADIUS = (30.0, 44.0), 12.0  # edge coordinates: data centre (29.5, 43.5)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return disc_model(str(tmp_path_factory.getbasetemp()))


pytestmark = pytest.mark.usefixtures("private_qsettings")


def _rect(mask: np.ndarray, pad: int = 2) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min() - pad, rows.max() + pad, cols.min() - pad, cols.max() + pad
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float)


def _segmented(make_napari_viewer, qtbot, model_path, show=False):
    viewer = make_napari_viewer(show=show)
    image, truth = disc_slice(np.random.default_rng(7), CENTRE, RADIUS)
    viewer.add_image(image, name="disc")
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.model_combo.setCurrentText(model_path)
    widget.boxes.add_rectangles(_rect(truth))
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert dice(widget.masks.data == 1, truth) > 0.6
    return viewer, widget, truth


def _dense(widget) -> None:
    """Dense decoding for the alignment checks: adaptive evaluation refines a different
    point set at each resolution, which moves this weak model's boundary by up to
    ~0.5 px between the image grid and the preview and would hide a geometry error."""
    widget._holder.session_for(widget.settings.spec()).adaptive = False


def _look(viewer, qtbot, widget, centre, zoom) -> None:
    camera = camera_of(viewer)
    camera.center = (camera.center[0], *centre)  # (the first value may follow the slider)
    camera.zoom = zoom
    qtbot.waitUntil(lambda: not widget.zoom.busy, timeout=WAIT_MS)


def _world_centroid(mask: np.ndarray, scale, translate) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array(translate) + np.array(scale) * np.array([rows.mean(), cols.mean()])


def test_zoom_gives_a_finer_preview_over_the_image(make_napari_viewer, qtbot, model_path):
    viewer, widget, truth = _segmented(make_napari_viewer, qtbot, model_path)
    assert widget.zoom.sharper.isChecked() and not widget.zoom.boundary.isChecked()
    masks = widget.masks
    _dense(widget)
    masks.data[:] = 0
    widget.boxes.data = [widget.boxes.data[0] + 0.01]  # segment again, densely
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    _look(viewer, qtbot, widget, (28.0, 40.0), 12.0)
    preview = viewer.layers["disc preview"]
    assert preview.visible and preview.data.ndim == 2
    # 12 samples per image pixel (12 screen px per pixel) over the visible pixels,
    # starting half a pixel before the first one's centre: cell j at -0.5 + (j + 0.5) / 12.
    f = 12
    view = plan_view(camera_of(viewer).center[-2:], 12.0, canvas_size(viewer), (1, 1), (0, 0),
                     truth.shape)
    y0, x0, y1, x1 = view.region
    assert (x0, x1) != (0, truth.shape[1])  # only part of the image is in view
    assert np.allclose(preview.scale, [1 / f, 1 / f])
    assert np.allclose(preview.translate, [y0 - 0.5 + 0.5 / f, x0 - 0.5 + 0.5 / f])
    rows, cols = int(y1 - y0), int(x1 - x0)
    assert preview.data.shape == (rows * f, cols * f)

    fine = preview.data == 1
    assert fine.any() and set(np.unique(preview.data)) <= {0, 1}
    # Resampled to the image grid it agrees with the mask the model gave there ...
    blocks = fine.reshape(rows, f, cols, f).mean(axis=(1, 3))
    coarse = masks.data[int(y0):int(y1), int(x0):int(x1)] == 1
    assert dice(blocks > 0.5, coarse) > 0.9
    # ... and it sits on the object: centroids in world units agree to a fraction of
    # a pixel (a half-pixel misplacement would fail this).
    at_fine = _world_centroid(fine, preview.scale, preview.translate)
    at_coarse = _world_centroid(coarse, masks.scale, np.array(masks.translate) + [y0, x0])
    assert np.abs(at_fine - at_coarse).max() < 0.2, (at_fine, at_coarse)
    # Against the disc itself, sampled at the preview's cell centres (pixel edges):
    # as good as the model is on the image grid.
    yy = y0 + (np.arange(rows * f)[:, None] + 0.5) / f
    xx = x0 + (np.arange(cols * f)[None, :] + 0.5) / f
    disc = (yy - CENTRE[0]) ** 2 + (xx - CENTRE[1]) ** 2 < RADIUS**2
    on_grid = dice(coarse, truth[int(y0):int(y1), int(x0):int(x1)])
    assert dice(fine, disc) > 0.6 and dice(fine, disc) > on_grid - 0.05
    # The fine mask really is finer: its edge is not made of whole image pixels.
    assert ((blocks > 0) & (blocks < 1)).any()
    assert masks.data.max() == 1  # the preview never writes the masks

    # Zoomed out to about one screen pixel per image pixel: back to the image grid.
    _look(viewer, qtbot, widget, (32.0, 48.0), 1.0)
    assert not preview.visible and preview.data.size == 1
    _look(viewer, qtbot, widget, (28.0, 40.0), 3.0)  # in again: shown again
    assert preview.visible and np.allclose(preview.scale, [1 / 3, 1 / 3])
    widget.zoom.sharper.setChecked(False)  # the checkbox turns it off
    qtbot.waitUntil(lambda: not widget.zoom.busy, timeout=WAIT_MS)
    assert not preview.visible and preview.data.size == 1


def test_boundary_path_and_newest_view_wins(make_napari_viewer, qtbot, model_path):
    viewer, widget, truth = _segmented(make_napari_viewer, qtbot, model_path)
    widget.zoom.boundary.setChecked(True)
    _look(viewer, qtbot, widget, (30.0, 44.0), 4.0)
    paths = viewer.layers["disc boundary"]
    assert len(paths.data) >= 1 and set(paths.shape_type) == {"path"}
    outline = max(paths.data, key=len)  # (M, 2) rows, cols in the image's data coordinates
    assert np.allclose(outline[0], outline[-1])  # closed
    y, x = outline[:, 0], outline[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    centroid = np.array([((y + np.roll(y, -1)) * cross).sum(),
                         ((x + np.roll(x, -1)) * cross).sum()]) / (6 * area)
    # It outlines the preview's object, in the same place (a half-pixel slip in the
    # edge -> centre conversion would fail this), and roughly the masks' object.
    preview = viewer.layers["disc preview"]
    fine = np.argwhere(preview.data == 1)
    cell = np.prod(preview.scale)
    at_fine = np.array(preview.translate) + np.array(preview.scale) * fine.mean(axis=0)
    assert abs(abs(area) / (len(fine) * cell) - 1) < 0.05
    assert np.abs(centroid - at_fine).max() < 0.1, (centroid, at_fine)
    assert abs(abs(area) / (widget.masks.data == 1).sum() - 1) < 0.15

    # A view asked for while another decodes supersedes it: the preview ends up
    # matching the last view, not the first.
    camera = camera_of(viewer)
    camera.center, camera.zoom = (0.0, 20.0, 30.0), 5.0  # a 2D image: no slider
    widget.zoom.update_now()  # decode view A now
    assert widget.zoom._worker is not None
    camera.center = (0.0, 40.0, 60.0)  # view B while A runs
    qtbot.waitUntil(lambda: not widget.zoom.busy, timeout=WAIT_MS)
    preview = viewer.layers["disc preview"]
    view_b = plan_view(camera.center[-2:], 5.0, canvas_size(viewer), (1, 1), (0, 0),
                       truth.shape)
    assert np.allclose(preview.translate, view_b.translate)
    assert preview.data.shape == view_b.out_shape

    # While a box waits for the model, the preview waits too (boxes come first).
    widget._queue[999] = None  # stands for a waiting box request
    widget.zoom.update_now()
    assert widget.zoom._worker is None and widget.zoom.busy
    widget._queue.clear()
    qtbot.waitUntil(lambda: not widget.zoom.busy, timeout=WAIT_MS)


def test_preview_of_a_volume_slice_lives_on_that_slice(make_napari_viewer, qtbot, model_path):
    viewer = make_napari_viewer()
    volume, truth = ball_volume()
    viewer.add_image(volume, name="ball", scale=(2.0, 0.5, 0.5), translate=(10.0, 3.0, 4.0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.model_combo.setCurrentText(model_path)
    _dense(widget)
    viewer.dims.set_point(0, 10.0 + 2.0 * 7)  # world z of slice 7
    boxes = widget.boxes
    boxes.add_rectangles(np.column_stack([np.full(4, 7.0), _rect(truth[7])]))
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert (widget.masks.data[7] == 1).any()
    # Zoom: 8 screen px per world unit = 4 per image pixel (pixels are 0.5 wide).
    centre = (3.0 + 0.5 * 30, 4.0 + 0.5 * 44)
    _look(viewer, qtbot, widget, centre, 8.0)
    preview = viewer.layers["ball preview"]
    assert preview.data.shape[0] == 1 and preview.visible
    assert np.allclose(preview.scale, [2.0, 0.125, 0.125])
    assert preview.translate[0] == pytest.approx(10.0 + 2.0 * 7)  # only on slice 7
    fine = preview.data[0] == 1
    at_fine = _world_centroid(fine, preview.scale[1:], preview.translate[1:])
    at_coarse = _world_centroid(widget.masks.data[7] == 1, (0.5, 0.5), (3.0, 4.0))
    assert np.abs(at_fine - at_coarse).max() < 0.1  # 0.2 image pixels
    # On another slice with no object there is nothing to preview.
    viewer.dims.set_point(0, 10.0 + 2.0 * 14)
    qtbot.waitUntil(lambda: not widget.zoom.busy, timeout=WAIT_MS)
    assert not preview.visible


def test_screenshot_preview_sits_over_the_image(make_napari_viewer, qtbot, model_path):
    viewer, widget, truth = _segmented(make_napari_viewer, qtbot, model_path, show=True)
    widget.zoom.boundary.setChecked(True)
    widget.uncertainty.visible = False
    _look(viewer, qtbot, widget, (22.0, 36.0), 12.0)
    widget.masks.visible = False  # the preview alone, over the image
    shot = viewer.screenshot("/tmp/zoom_preview_screenshot.png", canvas_only=True)
    widget.masks.visible = True
    viewer.layers["disc preview"].visible = False
    viewer.screenshot("/tmp/zoom_masks_screenshot.png", canvas_only=True)
    rgb = shot[..., :3].astype(int)
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 60
    assert 0.05 < coloured.mean() < 0.95  # the object's corner fills part of the view
