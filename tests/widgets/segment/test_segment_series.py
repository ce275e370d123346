"""A folder of images as a series in the Segment widget: Next / Previous, versioned
saves of each image's labels with their record, and a reopened series that resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from disc_volume import disc_model, disc_slice  # noqa: E402
from napari_imedsam.series import Series, list_images  # noqa: E402
from napari_imedsam.train.metrics import dice  # noqa: E402

WAIT_MS = 120_000
pytestmark = pytest.mark.usefixtures("private_qsettings")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return disc_model(str(tmp_path_factory.getbasetemp()))


def _folder(tmp_path, count: int = 3):
    rng = np.random.default_rng(4)
    folder, truths = tmp_path / "cases", []
    folder.mkdir()
    for i in range(count):
        image, mask = disc_slice(rng, (30 + 3 * i, 40 + 5 * i), 10 + i)
        tifffile.imwrite(folder / f"case{i}.tif", image)
        truths.append(mask)
    return folder, truths


def _rect(mask: np.ndarray, pad: int = 2) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min() - pad, rows.max() + pad, cols.min() - pad, cols.max() + pad
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


def _widget(make_napari_viewer, model_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.model_combo.setCurrentText(model_path)
    widget.zoom.sharper.setChecked(False)
    return viewer, widget


def test_series_files_names_and_resume(tmp_path):
    folder, _ = _folder(tmp_path)
    (folder / "notes.txt").write_text("not an image")
    files = list_images(folder)
    assert [f.name for f in files] == ["case0.tif", "case1.tif", "case2.tif"]
    series = Series.open(files, tmp_path / "out")
    assert series.labels_path() == tmp_path / "out" / "case0_labels.tif"
    assert series.move(1) and not series.move(5) and series.index == 1
    (tmp_path / "out" / "case1_labels.tif").write_bytes(b"")
    (tmp_path / "out" / "case1_labels-3.tif").write_bytes(b"")
    (tmp_path / "out" / "case1_labels-2.tif").write_bytes(b"")
    (tmp_path / "out" / "case10_labels-9.tif").write_bytes(b"")  # another image's
    assert series.latest_labels().name == "case1_labels-3.tif"
    again = Series.open(files, tmp_path / "out")
    assert again.index == 1  # resumes where it stopped
    assert Series.open(files[:2], tmp_path / "out").index == 0  # other files: a new series


def test_next_saves_versions_and_a_reopened_series_resumes(make_napari_viewer, qtbot,
                                                             model_path, tmp_path):
    folder, truths = _folder(tmp_path)
    out = tmp_path / "labels"
    viewer, widget = _widget(make_napari_viewer, model_path)
    assert widget.series.open_folder(folder, out)
    assert widget.image.name == "case0" and "image 1 of 3" in widget.series.label.text()
    widget.boxes.add_rectangles(_rect(truths[0]))
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    first = widget.masks.data.copy()
    assert dice(first == 1, truths[0]) > 0.5

    assert widget.series.move(1)  # saves case0, closes it, opens case1
    assert widget.image.name == "case1" and "case0" not in viewer.layers
    assert not any(layer.name.startswith("case0") for layer in viewer.layers)
    saved = tifffile.imread(out / "case0_labels.tif")
    assert np.array_equal(saved, first)
    record = json.loads((out / "case0_labels.json").read_text())
    assert record["objects"][0]["id"] == 1 and record["image"]["shape"] == [64, 96]
    assert widget.series.move(1)  # case1 has no labels: nothing saved for it
    assert not list(out.glob("case1_labels*"))

    assert widget.series.move(-1) and widget.series.move(-1)
    assert widget.image.name == "case0"
    assert np.array_equal(widget.masks.data, first)  # its saved labels are back
    assert "case0_labels.tif" in widget.series.label.text()
    widget.masks.data[widget.masks.data == 1] = 7  # the annotator changes something
    widget.masks.refresh()
    assert widget.series.move(1)
    again = tifffile.imread(out / "case0_labels-2.tif")  # a new version, the first kept
    assert (again == 7).any() and np.array_equal(tifffile.imread(out / "case0_labels.tif"), first)

    # A new viewer (napari restarted) resumes at case1, with the newest labels per image.
    viewer2, widget2 = _widget(make_napari_viewer, model_path)
    assert widget2.series.open_folder(folder, out)
    assert widget2.image.name == "case1"
    assert widget2.series.move(-1) and (widget2.masks.data == 7).any()


def test_next_saves_and_closes_the_series_image_not_the_one_in_view(make_napari_viewer, qtbot,
                                                                    model_path, tmp_path):
    """With another image in view, Next still saves the series' image's labels and
    closes it: the other image and its labels stay (before, they were saved under the
    series' name and closed). The Series box says when the image in view is not the
    series' one."""
    folder, truths = _folder(tmp_path)
    out = tmp_path / "labels"
    viewer, widget = _widget(make_napari_viewer, model_path)
    assert widget.series.open_folder(folder, out)
    widget.boxes.add_rectangles(_rect(truths[0]))
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    series_labels = widget.masks.data.copy()
    other_image, other_truth = disc_slice(np.random.default_rng(9), (50, 60), 12)
    other = viewer.add_image(other_image, name="other")
    widget.show_image(other)
    assert "in view: 'other', not in the series" in widget.series.label.text()
    widget.boxes.add_rectangles(_rect(other_truth))
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    other_masks = widget.masks

    assert widget.series.move(1)
    saved = tifffile.imread(out / "case0_labels.tif")
    assert np.array_equal(saved, series_labels)
    assert "other" in viewer.layers and other_masks in viewer.layers
    assert other_masks.data.any() and "case0" not in viewer.layers
    assert widget.image.name == "case1" and "not in the series" not in widget.series.label.text()
