"""The Fine-tune dock widget under pytest-qt + Xvfb, driven as a user would."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


from conftest import train_tiny  # noqa: E402
from napari_imedsam.widgets.finetune.widget import FinetuneWidget, settings  # noqa: E402
from napari_imedsam.model.weights import sha256_file  # noqa: E402
from napari_imedsam.train.data import LabeledImage  # noqa: E402

WAIT_MS = 180_000  # training and model loads; the CPUs may be shared
SMALL = dict(points_per_sample=256, val_label_size=32, batch_size=2, precision="fp32")


def _scene(seed: int, height: int = 64, width: int = 96):
    """An RGB image with two bright discs and their labels (1 and 2)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    labels = np.zeros((height, width), np.int32)
    for obj, (lo, hi) in enumerate(((0.2, 0.35), (0.65, 0.8)), start=1):
        cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(lo, hi) * width
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(9, 13) ** 2] = obj
    image = rng.normal(40, 10, (height, width, 3))
    image[labels > 0] += 150
    return np.clip(image, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """The tiny variant trained for seconds on disc scenes (a full-scope model file)."""
    items = [LabeledImage(f"s{i}", *_scene(100 + i)) for i in range(10)]
    return train_tiny(items, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(autouse=True)
def _adapters_in_tmp(private_qsettings, tmp_path):
    """Adapters go to the test's folder."""
    settings().setValue("out_dir", str(tmp_path / "adapters"))


def _open(viewer, name: str = "Fine-tune"):
    _, widget = viewer.window.add_plugin_dock_widget("napari-imedsam", name)
    return widget


def _viewer_with_scenes(make_napari_viewer, n: int = 3):
    viewer = make_napari_viewer()
    for i in range(n):
        image, labels = _scene(i)
        viewer.add_image(image, name=f"scene{i}", rgb=True)
        viewer.add_labels(labels, name=f"scene{i} masks")
    return viewer


def _ready(widget: FinetuneWidget, epochs: int = 2) -> None:
    widget.train_overrides = dict(SMALL)
    widget.epochs_spin.setValue(epochs)
    widget.minutes_spin.setValue(0)
    widget.device_combo.setCurrentText("cpu")
    widget.val_spin.setValue(34)


def _train(qtbot, widget: FinetuneWidget):
    widget.start_training()
    assert widget.busy
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    return widget.last_outcome


def _segment_box(qtbot, segment, labels: np.ndarray, object_id: int = 1):
    """Draw a box around ``object_id`` in the Segment widget and wait for its mask."""
    rows, cols = np.nonzero(labels == object_id)
    r0, r1, c0, c1 = rows.min() - 2, rows.max() + 2, cols.min() - 2, cols.max() + 2
    segment.boxes.add_rectangles(np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float))
    qtbot.waitUntil(lambda: not segment.busy, timeout=WAIT_MS)


def test_table_pairs_layers_and_counts_objects_and_slices(make_napari_viewer, qtbot):
    viewer = _viewer_with_scenes(make_napari_viewer, n=2)
    viewer.add_labels(np.zeros((10, 10), np.int32), name="stray")
    # The Segment widget's zoom preview is a view of the masks, never training data.
    preview = viewer.layers["scene0 masks"].data.copy()
    viewer.add_labels(preview, name="scene0 preview", metadata={
        "napari_imedsam": "preview", "napari_imedsam_image": "scene0"})
    widget = _open(viewer)
    assert isinstance(widget, FinetuneWidget)
    table = widget.pairs_table
    assert "scene0 preview" not in [table.item(r, 1).text() for r in range(table.rowCount())]
    rows = widget.pairs_table.used_rows()
    assert [(labels, image) for _, labels, image in rows] == [
        ("scene0 masks", "scene0"), ("scene1 masks", "scene1")]  # "stray" fits no image
    assert widget.recount() == (4, 2, [])
    assert "4 objects on 2 images/slices" in widget.data.summary.text()

    # Painting a new object is counted (the paint event, debounced).
    masks = viewer.layers["scene0 masks"]
    masks.paint((5, 5), 7, refresh=True)
    qtbot.waitUntil(lambda: "5 objects" in widget.data.summary.text(), timeout=5000)

    # Volumes: only the chosen slices count.
    volume = np.zeros((4, 64, 96), np.uint8)
    vlabels = np.zeros((4, 64, 96), np.int32)
    vlabels[1, 10:20, 10:20] = 1
    vlabels[3, 10:20, 10:20] = 1
    vlabels[3, 40:50, 50:60] = 2
    viewer.add_image(volume, name="vol")
    viewer.add_labels(vlabels, name="vol masks")
    # The table follows the layer list by itself, a moment after layers arrive.
    qtbot.waitUntil(lambda: "vol masks" in [r[1] for r in widget.pairs_table.used_rows()],
                    timeout=5000)
    widget.pairs_table.set_row("scene0 masks", use=False)
    widget.pairs_table.set_row("scene1 masks", use=False)
    assert widget.recount()[:2] == (3, 2)
    widget.data.slice_combo.setCurrentText("the slice in view")
    viewer.dims.set_current_step(0, 3)
    assert widget.recount()[:2] == (2, 1)
    widget.data.slice_combo.setCurrentText("a range")
    widget.data.slice_from.setValue(0)
    widget.data.slice_to.setValue(2)
    assert widget.recount()[:2] == (1, 1)


def test_the_segment_widgets_masks_are_not_ticked_where_the_user_has_labels(
        make_napari_viewer, qtbot):
    """The model's answers (the Segment widget's masks) are training data only where
    the user has no labels of their own for the image."""
    viewer = make_napari_viewer()
    for name in ("scan_a", "scan_b"):
        viewer.add_image(np.zeros((32, 40), np.uint8), name=name)
        viewer.add_labels(np.ones((32, 40), np.int32), name=f"{name} masks", metadata={
            "napari_imedsam": "masks", "napari_imedsam_image": name})
    viewer.add_labels(np.ones((32, 40), np.int32), name="scan_a truth")
    widget = _open(viewer)
    used = [labels for _, labels, _ in widget.pairs_table.used_rows()]
    assert sorted(used) == ["scan_a truth", "scan_b masks"], used


def test_propagated_slices_nobody_reviewed_are_left_out_unless_asked_for(
        make_napari_viewer, qtbot, tmp_path_factory, monkeypatch):
    """The Segment widget's masks of a volume, after Propagate: the slices propagation
    wrote and nobody looked at are the model's own answers. Fine-tune leaves them out
    (and says so) unless asked; a slice the user corrected trains."""
    import napari_imedsam.finetune as ft
    from disc_volume import ball_volume, disc_model

    volume, truth = ball_volume()
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="vol")
    segment = _open(viewer, "Segment")
    segment.model_combo.setCurrentText(disc_model(str(tmp_path_factory.getbasetemp())))
    segment.device_combo.setCurrentText("cpu")
    segment.zoom.sharper.setChecked(False)
    viewer.dims.set_current_step(0, 7)
    rows, cols = np.nonzero(truth[7])
    r0, r1, c0, c1 = rows.min() - 2, rows.max() + 2, cols.min() - 2, cols.max() + 2
    segment.boxes.add_rectangles(np.array([[7, r0, c0], [7, r0, c1], [7, r1, c1], [7, r1, c0]],
                                          float))
    qtbot.waitUntil(lambda: not segment.busy, timeout=WAIT_MS)
    segment.volume.direction.setCurrentText("both")
    segment.volume.propagate_button.click()
    qtbot.waitUntil(lambda: not segment.volume.busy, timeout=WAIT_MS)
    masks = segment.masks
    oid = int(segment.boxes.features["object_id"].iloc[0])
    planes = [z for z in range(len(volume)) if np.any(masks.data[z] == oid)]
    assert 7 in planes and len(planes) >= 5, planes
    propagated = len(planes) - 1  # every slice but the box's

    widget = _open(viewer)
    assert [labels for _, labels, _ in widget.pairs_table.used_rows()] == ["vol masks"]
    assert widget.recount() == (1, 1, [])  # the box's slice alone
    summary = widget.data.summary.text()
    assert f"{propagated} propagated slices not reviewed left out" in summary, summary

    # The user corrects a propagated slice (one pixel): it is theirs and trains.
    corrected = planes[0]
    rows, cols = np.nonzero(masks.data[corrected] == oid)
    masks.data[corrected, rows[0], cols[0]] = 0
    assert widget.recount() == (2, 2, [])
    assert f"{propagated - 1} propagated slices not reviewed" in widget.data.summary.text()

    # What Train hands the run: the reviewed slices only.
    trained: list = []

    def record(job, _fields, **_callbacks):  # noqa: ANN001
        trained.extend(job["collect"]())
        return ft.FinetuneOutcome(error="recorded")

    monkeypatch.setattr(ft, "train_body", record)
    _ready(widget)
    _train(qtbot, widget)
    assert sorted(item.name for item in trained) == [f"vol [slice {corrected}]", "vol [slice 7]"]

    # Asked for: every slice trains, and the summary says they are in.
    widget.data.unreviewed_box.setChecked(True)
    assert widget.recount() == (len(planes), len(planes), [])
    assert f"including {propagated - 1} propagated slices nobody reviewed" in \
        widget.data.summary.text()
    trained.clear()
    _train(qtbot, widget)
    assert len(trained) == len(planes)


def test_refuses_clearly_and_changes_nothing(make_napari_viewer, qtbot, notes, monkeypatch):
    viewer = make_napari_viewer()
    image, labels = _scene(0)
    viewer.add_image(image, name="scene", rgb=True)
    viewer.add_labels(np.zeros_like(labels), name="empty")
    widget = _open(viewer)
    _ready(widget)
    widget.start_training()  # no labels at all
    assert not widget.busy
    assert any(s == "error" and "no labelled objects" in m and "Labels layer" in m
               for s, m in notes), notes
    assert "Paint or segment objects" in widget.data.summary.text()

    viewer.add_labels(labels[:, :90], name="narrow")  # drawn on some other image
    widget.refresh()
    widget.pairs_table.set_row("narrow", use=True, image="scene")
    widget.start_training()
    assert not widget.busy
    assert any(s == "error" and "do not match image 'scene'" in m for s, m in notes), notes

    # Out of memory during the run: an error that says what to do; nothing written.
    import napari_imedsam.train.engine as engine

    def oom(*_a, **_k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(engine, "train", oom)
    widget.pairs_table.set_row("narrow", use=False)
    viewer.layers["empty"].data = labels.copy()
    widget.recount()
    kept = viewer.layers["empty"].data.copy()
    outcome = _train(qtbot, widget)
    assert outcome.adapter is None
    assert any(s == "error" and "out of memory" in m and "quick mode" in m
               for s, m in notes), notes
    assert np.array_equal(viewer.layers["empty"].data, kept)
    assert not any(widget.out_edit.text() and p.suffix == ".safetensors"
                   for p in __import__("pathlib").Path(widget.out_edit.text()).glob("*"))


def test_quick_training_is_saved_and_used_by_the_next_box(make_napari_viewer, qtbot, notes,
                                                          tiny_model, tmp_path, monkeypatch):
    import napari_imedsam.finetune as ft

    # The starting model "scores" 0, so the trained one counts as better and is handed over
    # (a worse one is kept out: the next test).
    monkeypatch.setattr(ft, "mean_dice", lambda *_a, **_k: 0.0)
    viewer = _viewer_with_scenes(make_napari_viewer)
    segment = _open(viewer, "Segment")
    segment.model_combo.setCurrentText(tiny_model)
    segment.device_combo.setCurrentText("cpu")
    segment.image_combo.setCurrentText("scene0")
    widget = _open(viewer)
    widget.pairs_table.set_row(segment.masks.name, use=False)  # the Segment widget's own, empty
    _ready(widget)
    _segment_box(qtbot, segment, viewer.layers["scene0 masks"].data)
    assert segment._holder._session.model.adapter_sha256 == sha256_file(tiny_model)

    outcome = _train(qtbot, widget)
    assert outcome.error is None, outcome.error
    adapter = outcome.adapter
    assert adapter.parent == tmp_path / "adapters" and adapter.name.startswith("tiny-")
    assert adapter.is_file() and adapter.with_suffix(".json").is_file()
    assert "validation Dice" in widget.result_label.text()
    assert f"{outcome.before:.3f} -> {outcome.after:.3f}" in widget.result_label.text()
    assert len(widget.plot.loss) == outcome.steps
    # The starting model's Dice is plotted at epoch 0, then one point per epoch.
    assert widget.plot.dice[0] == (0, pytest.approx(outcome.before))
    assert len(widget.plot.dice) == outcome.epochs + 1
    assert any("Segment widget uses it" in m for _, m in notes), notes
    # The Segment widget now names the adapter, and its next box runs with it.
    assert segment.adapter_edit.text() == str(adapter)
    assert segment.settings.spec().adapter == str(adapter)
    _segment_box(qtbot, segment, viewer.layers["scene1 masks"].data)
    assert segment._holder._session.model.adapter_sha256 == sha256_file(adapter)
    assert len(widget.adapters.paths()) == 1

    # A second run gets a new name; the first file is untouched; either can be picked.
    first_hash = sha256_file(adapter)
    second = _train(qtbot, widget).adapter
    assert second != adapter and sha256_file(adapter) == first_hash
    assert len(widget.adapters.paths()) == 2 and segment.adapter_edit.text() == str(second)
    widget.adapters.combo.setCurrentIndex(widget.adapters.paths().index(adapter))
    widget.adapters.use_selected()
    assert segment.adapter_edit.text() == str(adapter)
    assert segment.model_combo.currentText() == tiny_model


def test_a_worse_adapter_is_saved_but_does_not_replace_the_model_in_use(
        make_napari_viewer, qtbot, notes, tiny_model, monkeypatch):
    import napari_imedsam.finetune as ft

    monkeypatch.setattr(ft, "mean_dice", lambda *_a, **_k: 1.0)  # nothing can beat it
    viewer = _viewer_with_scenes(make_napari_viewer)
    segment = _open(viewer, "Segment")
    segment.model_combo.setCurrentText(tiny_model)
    segment.device_combo.setCurrentText("cpu")
    widget = _open(viewer)
    widget.pairs_table.set_row(segment.masks.name, use=False)  # the Segment widget's own, empty
    _ready(widget)
    outcome = _train(qtbot, widget)
    assert outcome.error is None and outcome.worse and outcome.adapter.is_file()
    assert segment.adapter_edit.text() == ""  # still the starting model
    assert any(s == "warning" and "keeps the starting model" in m for s, m in notes), notes
    assert widget.adapters.paths() == [outcome.adapter]
    widget.adapters.use_selected()  # the user can still choose it
    assert segment.adapter_edit.text() == str(outcome.adapter)


def test_stop_ends_within_a_couple_of_steps_with_the_best_adapter(make_napari_viewer, qtbot,
                                                                   notes, tiny_model):
    viewer = _viewer_with_scenes(make_napari_viewer)
    segment = _open(viewer, "Segment")
    segment.model_combo.setCurrentText(tiny_model)
    widget = _open(viewer)
    _ready(widget, epochs=500)
    steps = []

    def on_event(event) -> None:  # noqa: ANN001
        if event.kind == "step":
            steps.append(event)
            if len(steps) == 1:
                widget.stop_button.click()

    widget._bridge.event.connect(on_event)
    outcome = _train(qtbot, widget)
    assert outcome.error is None, outcome.error
    assert outcome.stopped and 1 <= outcome.steps <= 3 and outcome.epochs == 1
    assert outcome.adapter is not None and outcome.adapter.is_file()
    # Stopped before any validation: what was trained is saved but not measured, so the
    # Segment widget keeps its model and the user can choose the new one from the list.
    assert segment.adapter_edit.text() == ""
    assert any(s == "warning" and "stopped before the first validation" in m
               for s, m in notes), notes
    assert widget.adapters.paths() == [outcome.adapter]
    assert widget.train_button.isEnabled() and not widget.stop_button.isEnabled()


def test_stop_before_training_began_ends_the_run_there(make_napari_viewer, qtbot, notes,
                                                    tiny_model):
    """Stop pressed while the data are read, the model loads or the start is measured:
    the run ends at the next of those phases (not after a training step, seconds later
    on a CPU), nothing saved, no warning."""
    viewer = _viewer_with_scenes(make_napari_viewer)
    segment = _open(viewer, "Segment")
    segment.model_combo.setCurrentText(tiny_model)
    widget = _open(viewer)
    _ready(widget, epochs=500)
    widget.start_training()
    widget.stop_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    outcome = widget.last_outcome
    assert outcome.stopped and outcome.adapter is None and outcome.steps == 0
    assert outcome.stop_reason == "stopped before training began"
    assert widget.train_button.isEnabled() and not widget.stop_button.isEnabled()
    assert not [n for n in notes if n[0] in ("warning", "error")], notes


def test_stop_while_the_model_loads_ends_the_run_at_once(make_napari_viewer, qtbot, notes,
                                                        tiny_model, monkeypatch):
    """A model load cannot be interrupted (8.2 s measured for Stop before): Stop lets
    the run go at once, its load finishes in the background and comes to nothing (no
    training, no file, nothing handed over), and Train starts a new run meanwhile."""
    import threading
    import time
    from pathlib import Path

    import napari_imedsam.finetune as ft
    import napari_imedsam.train.engine as engine
    from napari_imedsam.widgets.finetune import link

    loading, loaded = threading.Event(), threading.Event()
    real_load, real_train, real_run = link.load_start_model, engine.train, ft.run_finetune

    def slow_load(*args):  # noqa: ANN001, ANN202 - the first run's load takes 5 s
        if loading.is_set():
            return real_load(*args)
        loading.set()
        time.sleep(5)
        model = real_load(*args)
        loaded.set()
        return model

    trained: list[int] = []
    returned: list = []  # what every run's worker returns, let go or not
    monkeypatch.setattr(link, "load_start_model", slow_load)
    monkeypatch.setattr(engine, "train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    monkeypatch.setattr(ft, "run_finetune",
                        lambda *a, **k: returned.append(real_run(*a, **k)) or returned[-1])
    viewer = _viewer_with_scenes(make_napari_viewer)
    segment = _open(viewer, "Segment")
    segment.model_combo.setCurrentText(tiny_model)
    widget = _open(viewer)
    widget.pairs_table.set_row(segment.masks.name, use=False)
    _ready(widget, epochs=1)
    out = Path(widget.out_edit.text())

    widget.start_training()
    qtbot.waitUntil(loading.is_set, timeout=WAIT_MS)
    pressed = time.monotonic()
    widget.stop_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=2000)
    assert time.monotonic() - pressed < 2 and not loaded.is_set()
    assert "stopped" in widget.status.text()
    assert widget.train_button.isEnabled() and not widget.stop_button.isEnabled()
    assert widget.last_outcome.stop_reason == "stopped before training began"

    # Train works again while the first run's load still goes on, with its own Stop flag.
    second = _train(qtbot, widget)
    qtbot.waitUntil(lambda: len(returned) == 2, timeout=WAIT_MS)  # the first's load ended
    assert second.error is None and second.steps > 0 and second.adapter is not None
    assert trained == [1]  # the second run only
    let_go = next(o for o in returned if o is not second)
    assert let_go.stopped and let_go.adapter is None and let_go.steps == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [second.adapter.name, second.adapter.with_suffix(".json").name])
    assert widget.last_outcome is second
    assert segment.adapter_edit.text() in ("", str(second.adapter))
    assert not [n for n in notes if n[0] == "error"], notes


def test_go_to_the_next_most_uncertain(make_napari_viewer, qtbot, tiny_model, monkeypatch):
    viewer = make_napari_viewer()
    volume = np.full((5, 64, 96, 3), 30, np.uint8)
    vlabels = np.zeros((5, 64, 96), np.int32)
    for z in (0, 2, 3):
        image, labels = _scene(z)
        volume[z], vlabels[z] = image, labels
    viewer.add_image(volume, name="vol", rgb=True)
    viewer.add_labels(vlabels, name="vol masks")
    segment = _open(viewer, "Segment")
    segment.model_combo.setCurrentText(tiny_model)
    widget = _open(viewer)
    widget.pairs_table.set_row(segment.masks.name, use=False)
    box = widget.suggest

    # The real model ranks every labelled slice (and only those).
    box.rank()
    qtbot.waitUntil(lambda: not box.busy, timeout=WAIT_MS)
    assert sorted(o.plane for o, _ in box.suggestions.ranked) == [0, 2, 3]
    assert all(np.isfinite(s) and s >= 0 for _, s in box.suggestions.ranked)

    # Constructed: slice z's uncertainty is known; the viewer visits them in order.
    import napari_imedsam.suggest as sg

    level = {0: 0.1, 2: 0.3, 3: 0.2}
    monkeypatch.setattr(sg, "score_item",
                        lambda _s, item, key=None: level[int(item.name.split()[-1][:-1])])
    box.rank()
    qtbot.waitUntil(lambda: not box.busy, timeout=WAIT_MS)
    visited = []
    for _ in range(4):
        box.next_button.click()
        visited.append(viewer.dims.current_step[0])
    assert visited == [2, 3, 0, 2]  # most uncertain first, then around again
    assert viewer.layers.selection.active is viewer.layers["vol masks"]


def test_next_most_uncertain_image_shows_its_layers(make_napari_viewer, qtbot, tiny_model,
                                                    monkeypatch):
    import napari_imedsam.suggest as sg

    viewer = _viewer_with_scenes(make_napari_viewer)
    segment = _open(viewer, "Segment")
    segment.model_combo.setCurrentText(tiny_model)
    widget = _open(viewer)
    widget.pairs_table.set_row(segment.masks.name, use=False)
    level = {"scene0": 0.2, "scene1": 0.5, "scene2": 0.1}
    monkeypatch.setattr(sg, "score_item", lambda _s, item, key=None: level[item.name])
    widget.suggest.rank()
    qtbot.waitUntil(lambda: not widget.suggest.busy, timeout=WAIT_MS)
    widget.suggest.go_next()
    shown = {layer.name for layer in viewer.layers if layer.visible}
    assert {"scene1", "scene1 masks"} <= shown
    assert not {"scene0", "scene2", "scene0 masks", "scene2 masks"} & shown
    assert viewer.layers.selection.active is viewer.layers["scene1 masks"]
    assert "scene1" in widget.suggest.label.text()


def test_hand_over_without_a_segment_widget_and_to_a_pinned_model(make_napari_viewer, qtbot,
                                                                   tiny_model):
    from napari_imedsam.widgets.segment.settings import settings as segment_settings
    from napari_imedsam.model.loading import load_model

    segment_settings().setValue("model", tiny_model)  # what the Segment widget last used
    viewer = _viewer_with_scenes(make_napari_viewer)
    widget = _open(viewer)
    _ready(widget, epochs=1)
    first = _train(qtbot, widget).adapter
    assert first is not None and segment_settings().value("adapter") == str(first)
    segment = _open(viewer, "Segment")  # opens with the new adapter
    assert segment.settings.spec().adapter == str(first)

    # A Segment widget given a model object gets the trained model object.
    segment.use_model(load_model(tiny_model))
    widget.refresh()
    widget.pairs_table.set_row(segment.masks.name, use=False)
    before = segment.pinned_model
    outcome = _train(qtbot, widget)
    assert segment.pinned_model is not before
    assert segment.pinned_model.adapter_sha256 == sha256_file(outcome.adapter)
    assert outcome.model is None  # the widget keeps no second copy of the model


def test_classes_mode_trains_a_head_per_class_and_hands_them_to_segment(
        make_napari_viewer, qtbot, tmp_path, tiny_model):
    """Labels read as classes (value = class, names edited): the run grows one head per
    class, reports Dice per class before and after, and the Segment widget then offers
    the classes by name."""
    import json

    from napari_imedsam.model.loading import load_model

    viewer = _viewer_with_scenes(make_napari_viewer)
    _, segment = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment")
    segment.use_model(load_model(tiny_model))
    assert segment.settings.class_row.isHidden()
    widget = _open(viewer)
    _ready(widget, epochs=2)
    widget.data.read_as_combo.setCurrentText("classes (label value = class)")
    assert widget.data.class_edit.text() == "class1=1, class2=2"  # from the layers' values
    widget.data.class_edit.setText("left=1, right=2")
    outcome = _train(qtbot, widget)
    assert outcome.error is None and outcome.adapter is not None
    assert set(outcome.before_by_class) == set(outcome.after_by_class) == {"left", "right"}
    assert "per class: left" in widget.result_label.text()
    record = json.loads(outcome.adapter.with_suffix(".json").read_text())
    assert record["classes"] == [{"name": "left", "value": 1}, {"name": "right", "value": 2}]
    widget.adapters.use_selected()  # (handed over at once when it scores higher)
    assert not segment.settings.class_row.isHidden()
    assert segment.settings.class_combo.itemText(1) == "right (2)"
    widget.data.class_edit.setText("a=1, a=2")
    widget.start_training()
    assert not widget.busy and "names must differ" in widget.status.text()
