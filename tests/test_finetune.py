"""Fine-tuning from the viewer, the Qt-free half: samples from layer arrays, the
held-out split, adapter names, the run with before/after Dice, uncertainty ranking."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_imedsam import adapter_store as store
from napari_imedsam import finetune as ft
from napari_imedsam import suggest as sg
from napari_imedsam.inference.intensity import apply_window
from napari_imedsam.model import build_model, load_adapter
from napari_imedsam.model.weights import sha256_file
from napari_imedsam.train.data import LabeledImage, object_ids
from napari_imedsam.train.engine import TrainConfig


def _discs(size: int, centres, radius: float, seed: int = 0):
    """A noisy dark RGB image with bright discs, and labels 1..n for them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = i
    image = rng.normal(40, 10, (size, size, 3))
    image[labels > 0] += 150
    return np.clip(image, 0, 255).astype(np.uint8), labels


def _volume():
    """(5, 32, 32) float volume; objects on slice 1 (one) and slice 3 (two)."""
    image = np.random.default_rng(1).normal(0, 1, (5, 32, 32)).astype(np.float32)
    labels = np.zeros((5, 32, 32), np.int32)
    labels[1, 4:10, 4:10] = 1
    labels[3, 4:10, 4:10] = 1
    labels[3, 20:28, 20:28] = 2
    return image, labels


def test_collect_2d_and_chosen_slices_of_volumes():
    image, labels = _discs(48, [(12, 12), (34, 30)], 6)
    flat = ft.LayerPair("photo", "masks", image, labels, rgb=True)
    assert ft.count(flat, ft.SliceChoice()) == (2, 1)
    got = ft.collect([flat], ft.SliceChoice())
    assert len(got.items) == 1 and got.objects == 2
    assert got.origins[0] == ft.Origin(0, "photo", "masks", None)
    got.items[0].labels[:] = 0  # a copy: the layer's labels never change
    assert labels.max() == 2

    vol, vlab = _volume()
    pair = ft.LayerPair("ct", "ct masks", vol, vlab)
    assert ft.count(pair, ft.SliceChoice("labelled")) == (3, 2)
    assert ft.count(pair, ft.SliceChoice("current", current=3)) == (2, 1)
    assert ft.count(pair, ft.SliceChoice("current", current=0)) == (0, 0)
    assert ft.count(pair, ft.SliceChoice("range", start=0, stop=2)) == (1, 1)
    got = ft.collect([flat, pair], ft.SliceChoice("labelled"))
    assert [o.plane for o in got.origins] == [None, 1, 3]
    assert [o.pair for o in got.origins] == [0, 1, 1]
    assert got.items[2].name == "ct [slice 3]" and object_ids(got.items[2].labels) == [1, 2]
    assert got.items[1].image.shape == (32, 32, 3) and got.items[1].image.dtype == np.uint8

    # CT in Hounsfield units goes through the same window as segmentation.
    hu = np.linspace(-500, 500, 5 * 32 * 32).reshape(5, 32, 32).astype(np.int16)
    got = ft.collect([ft.LayerPair("hu", "m", hu, vlab)], ft.SliceChoice(), window="abdomen")
    assert np.array_equal(got.items[0].image[..., 0], apply_window(hu[1], "abdomen"))


def test_propagated_slices_nobody_reviewed_do_not_train():
    """The Segment widget's propagation wrote object 1 on slices 1..4 from the user's key
    slice 0, and object 2 on slice 3 (the record: fingerprints of what it wrote). Only
    the key slice, and the slices the user corrected since, train."""
    from napari_imedsam.propagate import mask_digest

    image = np.random.default_rng(2).normal(0, 1, (6, 32, 32)).astype(np.float32)
    labels = np.zeros((6, 32, 32), np.int32)
    labels[0:5, 4:12, 4:12] = 1
    labels[3, 20:28, 20:28] = 2
    written = {1: {z: {mask_digest(labels[z] == 1)} for z in range(1, 5)},
               2: {3: {mask_digest(labels[3] == 2)}}}
    pair = ft.LayerPair("ct", "ct masks", image, labels, propagated=written)
    choice = ft.SliceChoice("labelled")
    assert ft.count(pair, choice) == (1, 1)  # the key slice alone
    assert ft.count_unreviewed(pair, choice) == 5
    assert ft.unreviewed(pair, 3) == [1, 2] and ft.unreviewed(pair, 0) == []
    everything = ft.LayerPair("ct", "ct masks", image, labels)
    assert ft.count(everything, choice) == (6, 5) and ft.count_unreviewed(everything, choice) == 0

    # The user corrects object 1 on slice 2 (one pixel) and object 2 on slice 3: theirs now.
    labels[2, 11, 11] = 0
    labels[3, 27, 27] = 0
    assert ft.count(pair, choice) == (3, 3)
    assert ft.count_unreviewed(pair, choice) == 3
    assert ft.count_unreviewed(pair, ft.SliceChoice("range", start=3, stop=5)) == 2
    got = ft.collect([pair], choice)
    assert [o.plane for o in got.origins] == [0, 2, 3]
    # On slice 3 object 1 is still as propagated: only the user's object 2 trains there.
    assert object_ids(got.items[2].labels) == [2]
    assert labels[3, 5, 5] == 1  # the layer's labels are never changed


def test_bad_pairs_say_what_to_do():
    image, labels = _discs(32, [(10, 10)], 5)
    with pytest.raises(ft.DataError, match="do not match image 'photo'"):
        ft.count(ft.LayerPair("photo", "masks", image, labels[:, :30], rgb=True), ft.SliceChoice())
    empty = ft.LayerPair("photo", "masks", image, np.zeros_like(labels), rgb=True)
    assert ft.count(empty, ft.SliceChoice()) == (0, 0)
    with pytest.raises(ft.DataError, match="no labelled objects.*Labels layer"):
        ft.collect([empty], ft.SliceChoice())
    with pytest.raises(ft.DataError, match="not an integer"):
        ft.count(ft.LayerPair("photo", "m", image, labels.astype(float), rgb=True),
                 ft.SliceChoice())
    with pytest.raises(ValueError, match="slice mode"):
        ft.SliceChoice("every other")


def test_guess_image_for_labels():
    images = [(0, "scan", (64, 64)), (1, "scan2", (64, 64)), (3, "photo", (40, 50))]
    assert ft.guess_image("scan2 masks", 4, (64, 64), images) == "scan2"  # longest prefix
    assert ft.guess_image("masks", 2, (64, 64), images) == "scan2"  # nearest below
    assert ft.guess_image("masks", 4, (40, 50), images) == "photo"  # the only one that fits
    assert ft.guess_image("masks", 4, (9, 9), images) == "scan"  # none fits: shown as mismatch
    assert ft.guess_image("masks", 0, (9, 9), []) is None


def test_held_out_split():
    items = [LabeledImage(f"i{k}", np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.int32))
             for k in range(5)]
    split = ft.split_validation(items, 0.2)
    assert len(split.val) == 1 and len(split.train) == 4
    assert {x.name for x in split.train + split.val} == {f"i{k}" for k in range(5)}
    assert split.val == ft.split_validation(items, 0.2).val  # seeded: same every time
    assert len(ft.split_validation(items, 0.9).train) == 1  # at least one trains

    image, labels = _discs(48, [(10, 10), (10, 36), (36, 20)], 5)
    one = [LabeledImage("one", image, labels)]
    split = ft.split_validation(one, 0.34)
    held = object_ids(split.val[0].labels)
    assert len(held) == 1 and object_ids(split.train[0].labels) == sorted({1, 2, 3} - set(held))
    assert np.array_equal(split.val[0].labels == held[0], labels == held[0])
    assert "objects held out" in split.note
    single = [LabeledImage("s", image, (labels == 1).astype(np.int32))]
    assert ft.split_validation(single, 0.2).val == []
    assert "training object" in ft.split_validation(single, 0.2).note
    assert ft.split_validation(items, 0.0).val == []


def test_adapter_names_never_overwrite(tmp_path):
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    assert store.adapter_stem("demo", when) == "demo-20260102-030405"
    assert store.adapter_stem("/models/my tiny.safetensors", when) == "my_tiny-20260102-030405"
    (tmp_path / "a.safetensors").write_bytes(b"old")
    (tmp_path / "a-2.json").write_text("{}")  # a lone JSON also takes its name
    assert store.unique_adapter_path(tmp_path, "a").name == "a-3.safetensors"

    src = tmp_path / "run" / "adapter.safetensors"
    src.parent.mkdir()
    published = []
    for val in (0.5, 0.7):
        src.write_bytes(f"weights {val}".encode())
        config = {"created": f"2026-01-0{len(published) + 1}T00:00:00+00:00",
                  "extra": {"val_dice": val, "finetune": {"model": "demo",
                                                          "val_dice_before": 0.4}}}
        src.with_suffix(".json").write_text(json.dumps(config))
        published.append(store.publish_adapter(src, tmp_path / "out", "demo-x"))
    assert [p.name for p in published] == ["demo-x.safetensors", "demo-x-2.safetensors"]
    assert published[0].read_bytes() == b"weights 0.5"  # the first was not replaced
    assert published[1].read_bytes() == b"weights 0.7"
    assert json.loads(published[1].with_suffix(".json").read_text())["extra"]["val_dice"] == 0.7
    listed = store.list_adapters(tmp_path / "out")
    assert [a.path for a in listed] == published[::-1]  # newest first
    assert listed[0].model == "demo" and "Dice 0.700, was 0.400" in listed[0].describe()
    assert store.list_adapters(tmp_path / "nowhere") == []


def test_time_left_and_durations():
    assert ft.time_left(10.0, 5, 20) == pytest.approx(30.0)
    assert ft.time_left(10.0, 5, 20, budget_s=25.0) == pytest.approx(15.0)
    assert ft.time_left(3.0, 0, 20, budget_s=60.0) == pytest.approx(57.0)
    assert ft.time_left(3.0, 0, 20) is None
    assert [ft.format_duration(s) for s in (None, 45, 130, 3900)] == [
        "?", "45 s", "2 min 10 s", "1 h 5 min"]


class _StubSession:
    """Predicts each box as its own full rectangle; uncertainty inside it is the level
    written in the image's first pixel, and 0.9 outside (which must not count)."""

    def __init__(self, with_uncertainty: bool = True, with_error: bool = False) -> None:
        self.with_uncertainty = with_uncertainty
        self.with_error = with_error  # an error map: level / 200 in the box, 0.95 outside
        self.image = None

    def set_image(self, image, key=None):  # noqa: ANN001
        self.image = image

    def predict(self, boxes):  # noqa: ANN001
        height, width = self.image.shape[:2]
        level = self.image[0, 0, 0] / 100.0
        prob = np.zeros((len(boxes), 1, height, width), np.float32)
        unc = np.full_like(prob, 0.9)
        for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
            prob[i, 0, y0:y1, x0:x1] = 1.0
            unc[i, 0, y0:y1, x0:x1] = level
        error = np.where(prob[:, 0] > 0, level / 2, 0.95).astype(np.float32)
        return SimpleNamespace(prob=prob, uncertainty=unc if self.with_uncertainty else None,
                               error=error if self.with_error else None)


def test_uncertainty_ranking_orders_slices():
    # Constructed: slice z carries uncertainty level[z] inside its objects.
    levels = {0: 10, 1: 40, 2: 0, 3: 25, 4: 70}  # slice 2 has no labels: never ranked
    image = np.zeros((5, 24, 24, 3), np.uint8)
    labels = np.zeros((5, 24, 24), np.int32)
    for z, level in levels.items():
        image[z, 0, 0] = level
        if z != 2:
            labels[z, 5:12, 5:12] = 1
            labels[z, 14:20, 3:9] = 2
    pair = ft.LayerPair("vol", "vol masks", image, labels, rgb=True)
    result = sg.suggest(lambda: _StubSession(), [pair])
    assert [o.plane for o, _ in result.ranked] == [4, 1, 3, 0]
    # The stub's variance is level/100; the score is its square root (a standard deviation).
    assert [s for _, s in result.ranked] == pytest.approx(np.sqrt([0.7, 0.4, 0.25, 0.1]))
    with pytest.raises(sg.NoUncertainty, match="adapter"):
        sg.suggest(lambda: _StubSession(with_uncertainty=False), [pair])
    # A model with an error map is ranked by it: the mean probability of a wrong label
    # in each object's box (what the Segment widget shows and suggests clicks from).
    result = sg.suggest(lambda: _StubSession(with_error=True), [pair])
    assert [o.plane for o, _ in result.ranked] == [4, 1, 3, 0]
    assert [s for _, s in result.ranked] == pytest.approx([0.35, 0.2, 0.125, 0.05])
    assert sg.rank([0.2, float("nan"), 0.5, 0.2]) == [2, 0, 3]


def test_object_uncertainty_inside_prediction_or_box():
    prob = np.zeros((10, 10))
    prob[2:5, 2:5] = 0.9
    unc = np.full((10, 10), 0.09)  # variances: standard deviations 0.3 and 0.1
    unc[2:5, 2:5] = 0.01
    assert sg.object_uncertainty(prob, unc, (0, 0, 10, 10)) == pytest.approx(0.1)
    # Nothing predicted: the box's mean uncertainty stands in.
    assert sg.object_uncertainty(np.zeros((10, 10)), unc, (6, 6, 9, 9)) == pytest.approx(0.3)


# -- the run (tiny model, seconds) ----------------------------------------------------
def _items(n: int = 4) -> list[LabeledImage]:
    out = []
    for k in range(n):
        rng = np.random.default_rng(k)
        centres = [tuple(rng.uniform(14, 34, 2)) for _ in range(1 + k % 2)]
        out.append(LabeledImage(f"d{k}", *_discs(48, centres, 7, seed=k)))
    return out


def _job(tmp_path, **kw) -> ft.FinetuneJob:
    torch.manual_seed(0)
    model = build_model("tiny")
    cfg = TrainConfig(mode="decoder", epochs=kw.pop("epochs", 2), batch_size=2,
                      points_per_sample=256, val_label_size=32, device="cpu", precision="fp32",
                      augment=False)
    fields = dict(load_model=lambda: model, collect=_items, config=cfg, val_share=0.25,
                  out_dir=tmp_path / "adapters", stem="tiny-test",
                  extra={"finetune": {"model": "tiny"}})
    fields.update(kw)
    return ft.FinetuneJob(**fields)


def test_run_trains_publishes_and_measures_before_after(tmp_path):
    job = _job(tmp_path)
    start = {k: v.clone() for k, v in job.load_model().state_dict().items()}
    events = []
    outcome = ft.run_finetune(job, on_progress=events.append)
    assert outcome.error is None, outcome.error
    assert outcome.adapter == tmp_path / "adapters" / "tiny-test.safetensors"
    assert outcome.adapter.is_file() and outcome.adapter.with_suffix(".json").is_file()
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == [
        "tiny-test.json", "tiny-test.safetensors"]  # the run folder is gone
    # 6 objects in 4 images, one image held out; batches of 2, two epochs.
    assert outcome.steps == 2 * -(-(6 - outcome.val_objects) // 2)
    assert outcome.epochs == 2 and not outcome.stopped
    assert sum(e.kind == "step" for e in events) == outcome.steps
    assert events[0].kind == "start" and events[0].val_dice == outcome.before  # for the plot
    assert 0.0 <= outcome.before <= 1.0 and 0.0 <= outcome.after <= 1.0
    assert outcome.val_objects >= 1 and "held out" in outcome.split_note
    assert outcome.after == max(e.val_dice for e in events if e.kind == "epoch")
    # The returned model holds the published weights, and says so by hash.
    assert outcome.model.adapter_sha256 == sha256_file(outcome.adapter)
    fresh = build_model("tiny")
    load_adapter(fresh, outcome.adapter)
    key = "implicit_decoder.coarse.trunk.0.weight"
    assert torch.equal(fresh.state_dict()[key], outcome.model.state_dict()[key])
    assert not torch.equal(fresh.state_dict()[key], start[key])  # it trained
    lora = next(k for k in start if ".lora_A" in k)
    assert torch.equal(outcome.model.state_dict()[lora], start[lora])  # quick: encoder frozen
    config = json.loads(outcome.adapter.with_suffix(".json").read_text())
    assert config["extra"]["finetune"]["val_dice_before"] == outcome.before
    assert config["extra"]["finetune"]["model"] == "tiny"
    # A second run never replaces the first adapter.
    again = ft.run_finetune(_job(tmp_path, epochs=1))
    assert again.adapter.name == "tiny-test-2.safetensors"
    assert sha256_file(outcome.adapter) == outcome.model.adapter_sha256


def test_stop_keeps_best_so_far_and_an_immediate_stop_saves_nothing(tmp_path):
    steps = []
    outcome = ft.run_finetune(_job(tmp_path, epochs=50),
                              on_progress=lambda e: steps.extend([1] if e.kind == "step" else []),
                              should_stop=lambda: len(steps) >= 2)
    assert outcome.error is None and outcome.stopped and outcome.steps == 2
    assert outcome.adapter is not None and outcome.adapter.is_file()
    assert outcome.stop_reason == "stopped" and outcome.summary().endswith(", stopped")

    timed = _job(tmp_path / "t", epochs=10_000)
    timed.config.time_budget_s = 2.0
    outcome = ft.run_finetune(timed, should_stop=lambda: False)
    assert outcome.stopped and outcome.stop_reason == "time limit reached"
    assert outcome.steps >= 1 and outcome.adapter is not None and outcome.epochs < 10_000

    nothing = ft.run_finetune(_job(tmp_path / "b", epochs=50), should_stop=lambda: True)
    assert nothing.adapter is None and nothing.error is None and nothing.steps == 0
    assert "nothing was saved" in nothing.summary()
    assert nothing.stop_reason == "stopped before training began"
    folder = tmp_path / "b" / "adapters"  # not even made: the stop came before training
    assert not folder.exists() or list(folder.iterdir()) == []

    # A run the widget let go (Stop during the model load) is told so once it is loaded
    # and measured: it ends there, before anything is written or trained.
    events = []
    let_go = ft.run_finetune(_job(tmp_path / "c", epochs=50), on_progress=events.append,
                             should_stop=lambda: False, may_train=lambda: False)
    assert let_go.adapter is None and let_go.steps == 0 and events == []
    assert let_go.stop_reason == "stopped before training began"
    assert not (tmp_path / "c" / "adapters").exists()


def test_run_errors_come_back_as_advice(tmp_path):
    def oom():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    outcome = ft.run_finetune(_job(tmp_path, load_model=oom))
    assert outcome.adapter is None
    assert "out of memory" in outcome.error and "quick mode" in outcome.error

    def no_labels():
        raise ft.DataError("no labelled objects to train on")

    outcome = ft.run_finetune(_job(tmp_path, collect=no_labels))
    assert outcome.error.startswith("Fine-tuning cannot start: no labelled objects")
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())


def test_torch_guard_hides_triton_in_a_fresh_process():
    """In a viewer process torch must come in without Triton (its LLVM crashes beside
    Mesa's OpenGL); the model still builds and runs."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_imedsam.model.torch_guard import import_torch\n"
        "import_torch()\n"
        "assert sys.modules['triton'] is None\n"
        "from napari_imedsam.model import build_model\n"
        "import torch\n"
        "m = build_model('tiny')\n"
        "print(tuple(m.embed(torch.zeros(1, 3, 64, 64)).shape))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("(1, 32")
