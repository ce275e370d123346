"""The Segment dock with a model of several classes: choosing, cycling, labelling, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_imedsam.model import build_model  # noqa: E402
from napari_imedsam.model.classes import ClassInfo, expand_classes  # noqa: E402
from napari_imedsam.train.synthetic_rings import ring_sample  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_qsettings")


def _two_class_tiny() -> torch.nn.Module:
    """Heads that differ on purpose: ``inner`` says yes everywhere in the box, ``wall``
    says no, so which head answered shows in the mask."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    model = expand_classes(model, (ClassInfo("inner", 3), ClassInfo("wall", 7)))
    model.adapter_sha256 = "test"  # a trained decoder: the widget's "auto" picks it
    with torch.no_grad():
        model.implicit_decoder.coarse.heads.bias.view(2, -1)[:, 0] = torch.tensor([30.0, -30.0])
        for head, sign in zip(model.implicit_decoder.fine.heads, (30.0, -30.0)):
            head[-1].bias.fill_(sign)
    return model


def _rect(r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float)


def test_class_selector_per_box_class_semantic_labels_and_export(make_napari_viewer, qtbot,
                                                                   tmp_path):
    image, _ = ring_sample(np.random.default_rng(0), 96, "ring")
    viewer = make_napari_viewer()
    viewer.add_image(image, name="rings", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    settings = widget.settings
    assert settings.class_row.isHidden()  # the default model: one class, no selector
    widget.use_model(_two_class_tiny())
    assert not settings.class_row.isHidden()
    assert [settings.class_combo.itemText(i) for i in range(2)] == ["inner (3)", "wall (7)"]
    assert widget.settings.spec().head == 0

    # Semantic labelling: the mask gets the class's label value.
    settings.labelling_combo.setCurrentText("the class's label value")
    widget.boxes.add_rectangles(_rect(20, 20, 60, 60))
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert set(np.unique(widget.masks.data).tolist()) == {0, 3}
    assert int(widget.boxes.features["head"].iloc[0]) == 0

    # Shift+K cycles: the next box is answered by "wall" (which says no here).
    widget.boxes.mode = "select"
    widget.cycle_class()
    assert settings.class_combo.currentText() == "wall (7)" and "wall" in widget.status.text()
    widget.boxes.add_rectangles(_rect(65, 65, 90, 90))
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert int(widget.boxes.features["head"].iloc[1]) == 1
    assert (widget.masks.data[65:90, 65:90] == 7).sum() == 0  # the wall head said no

    # The first box keeps its own class when moved, whatever is chosen now.
    widget.boxes.data = [_rect(22, 22, 62, 62), widget.boxes.data[1]]
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert (widget.masks.data[25:60, 25:60] == 3).mean() > 0.9

    # Instance labelling: a new object id, whatever the class.
    settings.class_combo.setCurrentIndex(0)
    settings.labelling_combo.setCurrentText("new object id per box")
    widget.boxes.add_rectangles(_rect(2, 60, 18, 90))
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert 8 in np.unique(widget.masks.data)  # next free id after 7

    # The export's JSON records each object's class.
    widget.export.scale.setValue(1.0)
    widget.export.export(str(tmp_path / "masks.tif"))
    qtbot.waitUntil(lambda: not widget.export.busy, timeout=120_000)
    record = json.loads((tmp_path / "masks.json").read_text())
    classes = {o["id"]: o.get("class") for o in record["objects"]}
    assert classes[3] == {"head": 0, "name": "inner", "value": 3}
    assert classes[8]["name"] == "inner"


def test_boxes_of_one_class_keep_their_own_pixels_in_semantic_labels(make_napari_viewer,
                                                                        qtbot):
    """Two boxes of one class share its label value: a second box, moving one box,
    clearing one and undo touch that box's pixels only (before: the second box
    erased the first one's mask, and Clear erased every box of the class)."""
    image, _ = ring_sample(np.random.default_rng(1), 96, "ring")
    viewer = make_napari_viewer()
    viewer.add_image(image, name="rings", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.use_model(_two_class_tiny())
    widget.settings.labelling_combo.setCurrentText("the class's label value")

    def draw(rect: np.ndarray) -> None:
        widget.boxes.add_rectangles(rect)
        qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)

    draw(_rect(10, 10, 30, 30))
    first = widget.masks.data == 3
    draw(_rect(60, 60, 85, 85))
    second = (widget.masks.data == 3) & ~first
    assert first.sum() > 300 and second.sum() > 300
    assert ((widget.masks.data == 3) == (first | second)).all()  # the first one kept
    # Moving the second box rewrites its pixels only.
    widget.boxes.data = [widget.boxes.data[0], _rect(55, 55, 80, 80)]
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    moved = (widget.masks.data == 3) & ~first
    assert ((widget.masks.data == 3) & first).sum() == first.sum()
    rows_before, rows_after = np.nonzero(second)[0], np.nonzero(moved)[0]
    assert rows_after.min() == rows_before.min() - 5 and rows_after.max() == rows_before.max() - 5
    # Clear the first (selected) box: the second one's pixels stay.
    widget.boxes.selected_data = {0}
    widget.clear_current()
    assert ((widget.masks.data == 3) == moved).all()
    widget.undo()
    assert ((widget.masks.data == 3) == (first | moved)).all()
    # Accepted, then cleared: still its own pixels only. (Undo put the first box
    # back as the last row.)
    row = next(i for i, d in enumerate(widget.boxes.data) if np.asarray(d).min() == 55)
    widget.boxes.selected_data = {row}
    widget.accept_current()
    widget.boxes.selected_data = {row}
    widget.clear_current()
    assert ((widget.masks.data == 3) == first).all()


def test_propagating_a_box_that_shares_its_class_value_is_refused(make_napari_viewer, qtbot,
                                                                   notes):
    """Its slices could not be told from the class's other boxes' (propagation clears
    and rewrites its object's value slice by slice): one line, nothing changed."""
    slices = [ring_sample(np.random.default_rng(s), 96, "ring")[0].mean(axis=-1) for s in range(6)]
    viewer = make_napari_viewer()
    viewer.add_image(np.stack(slices).astype(np.float32), name="vol")
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.use_model(_two_class_tiny())
    widget.settings.labelling_combo.setCurrentText("the class's label value")
    widget.zoom.sharper.setChecked(False)
    viewer.dims.set_current_step(0, 3)
    for r0 in (10, 60):
        widget.boxes.add_rectangles(np.array([[3, r0, 10], [3, r0, 30], [3, r0 + 20, 30],
                                              [3, r0 + 20, 10]], float))
        qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    before = widget.masks.data.copy()
    assert (before[3] == 3).sum() > 600 and not before[[0, 1, 2, 4, 5]].any()
    widget.boxes.selected_data = {0}
    widget.volume.propagate_button.click()
    assert not widget.volume.busy
    assert np.array_equal(widget.masks.data, before)
    assert any("belongs to several boxes" in text for _, text in notes), notes


def test_new_object_ids_skip_the_class_values_written_in_this_layer(make_napari_viewer, qtbot):
    """A new id per box is max + 1 (a user with classes still starts at 1); once a class's
    value was written in class-value labelling, instance ids skip it (an object would
    merge with the class's masks, and their Clear, later)."""
    image, _ = ring_sample(np.random.default_rng(2), 96, "ring")
    viewer = make_napari_viewer()
    viewer.add_image(image, name="rings", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.use_model(_two_class_tiny())  # classes with the values 3 and 7
    settings = widget.settings
    settings.labelling_combo.setCurrentText("the class's label value")
    widget.boxes.add_rectangles(_rect(60, 60, 80, 80))  # "inner": value 3
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert int(widget.boxes.features["object_id"].iloc[-1]) == 3
    widget.cycle_class()  # "wall": value 7 (its head says no: no pixels, the value is used)
    widget.boxes.add_rectangles(_rect(60, 30, 80, 50))
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    settings.labelling_combo.setCurrentText("new object id per box")
    widget.masks.data[0:3, 0:3] = 1  # the user painted id 1
    ids = []
    for r0 in (5, 25, 45, 65):
        widget.boxes.add_rectangles(_rect(r0, 2, r0 + 12, 14))
        qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
        ids.append(int(widget.boxes.features["object_id"].iloc[-1]))
    assert ids == [8, 9, 10, 11]  # max + 1 over the boxes (7), past the written values


def test_a_new_id_per_box_starts_at_1_and_a_class_value_taken_is_told(make_napari_viewer,
                                                                      qtbot, notes):
    """With classes and "new object id per box", the first object is 1 (class values are
    reserved only in class-value labelling); switching to class-value labelling where an
    object already holds the class's value says so."""
    image, _ = ring_sample(np.random.default_rng(1), 96, "ring")
    viewer = make_napari_viewer()
    viewer.add_image(image, name="rings", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    widget.use_model(_two_class_tiny())
    settings = widget.settings
    settings.labelling_combo.setCurrentText("new object id per box")
    for _ in range(3):
        widget.boxes.add_rectangles(_rect(20 + 20 * _, 20, 35 + 20 * _, 40))
        qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert list(widget.boxes.features["object_id"]) == [1, 2, 3]
    settings.labelling_combo.setCurrentText("the class's label value")  # inner = 3: taken
    widget.boxes.add_rectangles(_rect(20, 60, 40, 90))
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert any("label 3 is already an object" in str(n) for n in notes), notes
