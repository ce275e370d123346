"""The training engine on the tiny variant: seconds of training, real checks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_imedsam.cli import main
from napari_imedsam.model import build_model, load_adapter
from napari_imedsam.model.checkpoint import read_adapter
from napari_imedsam.train.data import LabeledImage
from napari_imedsam.train.engine import TrainConfig, schedule_position, train
from napari_imedsam.train.losses import coarse_fine_weights, seg_loss
from napari_imedsam.train.samples import CACHED_FLIPS, flipped, make_sample, sample_refs


def _disc_images(n: int, size: int = 64, seed: int = 0) -> list[LabeledImage]:
    """Bright discs on a noisy dark background: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    items = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        labels = np.zeros((size, size), np.int32)
        for obj in range(1, 3 if i % 2 else 2):
            cx, cy = rng.uniform(14, size - 14, 2)
            r = rng.uniform(6, 11)
            labels[((xx - cx) ** 2 + (yy - cy) ** 2 < r**2) & (labels == 0)] = obj
        image = rng.normal(40, 10, (size, size, 3))
        image[labels > 0] += 150
        items.append(LabeledImage(f"disc{i}", np.clip(image, 0, 255).astype(np.uint8), labels))
    return items


def _cfg(**kw) -> TrainConfig:
    base = dict(mode="full", epochs=2, batch_size=2, points_per_sample=256, val_label_size=32,
                device="cpu", precision="fp32", seed=0, augment=False)
    base.update(kw)
    return TrainConfig(**base)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_seg_loss_and_schedule():
    targets = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]])
    good = seg_loss(torch.tensor([[[9.0, -9.0, 9.0, -9.0]]]), targets)
    bad = seg_loss(torch.tensor([[[-9.0, 9.0, -9.0, 9.0]]]), targets)
    assert float(good) < 0.01 < 0.9 < float(bad)
    assert coarse_fine_weights(0, 5) == (1.0, 0.0)
    assert coarse_fine_weights(5, 5) == (0.5, 1.0) == coarse_fine_weights(50, 5)


def test_samples_read_targets_at_points():
    item = _disc_images(2)[1]
    refs = sample_refs([item], num_classes=1)
    assert [r.object_id for r in refs] == sorted(np.unique(item.labels)[1:].tolist())
    tensor, box, points, targets = make_sample(
        item, refs[0], num_classes=1, input_size=64, points=500,
        rng=np.random.default_rng(0), augmenter=None, jitter_px=20.0)
    assert tensor.shape == (1, 3, 64, 64) and points.shape == (500, 2)
    pix = ((points + 1) / 2 * 64).astype(int).clip(0, 63)
    expected = item.labels[pix[:, 1], pix[:, 0]] == refs[0].object_id
    assert np.array_equal(targets[0] > 0, expected)
    ys, xs = np.nonzero(item.labels == refs[0].object_id)
    # The jittered box only grows around the object.
    assert box[0] <= xs.min() and box[1] <= ys.min() and box[2] >= xs.max() + 1
    assert 0.3 < targets.mean() < 0.9  # half the points are drawn inside the box
    # Without jitter the prompt is the object's tight box (64 px input, same scale).
    _, tight, _, _ = make_sample(
        item, refs[0], num_classes=1, input_size=64, points=10,
        rng=np.random.default_rng(0), augmenter=None, jitter_px=0.0)
    scale = 64 / max(item.labels.shape)
    assert np.allclose(tight, np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) * scale)
    assert not np.allclose(tight, box)


def test_time_limited_schedule_ends_when_the_time_does():
    # 1000 planned steps, 10 done, but half the time limit gone: half way along.
    assert schedule_position(10, 1000, 30.0, 60.0) == 0.5
    assert schedule_position(10, 1000, 30.0, None) == 0.01
    assert schedule_position(900, 1000, 6.0, 60.0) == 0.9  # steps ahead of the clock
    assert schedule_position(10, 1000, 90.0, 60.0) == 1.0


def test_full_training_learns_and_saves(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny")
    data = _disc_images(8)
    events = []
    result = train(model, data[:6], data[6:], _cfg(epochs=6), tmp_path / "run.safetensors",
                   on_progress=events.append)
    assert result.adapter == tmp_path / "run.safetensors" and result.epochs_done == 6
    steps = [e for e in events if e.kind == "step"]
    per_epoch = -(-len(sample_refs(data[:6], 1)) // 2)  # 9 objects in batches of 2
    assert per_epoch == 5 and len(steps) == 6 * per_epoch and events[-1].kind == "done"
    # The total loss is re-weighted as the fine term ramps up: compare the coarse term.
    first = np.mean([e.coarse_loss for e in steps[:5]])
    last = np.mean([e.coarse_loss for e in steps[-5:]])
    assert last < first
    first_val = result.history[0]["val_dice"]
    assert result.best_val_dice is not None and result.best_val_dice > first_val + 0.1
    tensors, config = read_adapter(result.adapter)
    assert config["scope"] == "full" and config["extra"]["best_epoch"] == result.best_epoch
    assert (tmp_path / "run.run.json").is_file() and (tmp_path / "run.last.safetensors").is_file()
    with pytest.raises(FileExistsError):
        train(build_model("tiny"), data[:6], data[6:], _cfg(), tmp_path / "run.safetensors")


def test_modes_freeze_what_they_should(tmp_path):
    data = _disc_images(4)
    for mode in ("decoder", "adapters"):
        torch.manual_seed(0)
        model = build_model("tiny")
        before = _weights(model)
        calls = []
        original = model.embed
        model.embed = lambda x, _orig=original, **kw: calls.append(x.shape[0]) or _orig(x, **kw)
        train(model, data, data[:1], _cfg(mode=mode, epochs=2), tmp_path / f"{mode}.safetensors")
        after = model.state_dict()
        assert torch.equal(after["image_encoder.vit.patch_embed.proj.weight"],
                           before["image_encoder.vit.patch_embed.proj.weight"])
        changed_decoder = not torch.equal(after["implicit_decoder.coarse.heads.weight"],
                                          before["implicit_decoder.coarse.heads.weight"])
        assert changed_decoder
        lora_key = "image_encoder.vit.blocks.0.attn.qkv.lora_B.q"
        assert torch.equal(after[lora_key], before[lora_key]) == (mode == "decoder")
        if mode == "decoder":
            # Embeddings are cached: 4 training images once, and the validation image
            # once for both epochs' validations.
            assert sum(calls) == 4 + 1


def test_decoder_mode_augments_with_cached_flips(tmp_path):
    data = _disc_images(4)
    torch.manual_seed(0)
    model = build_model("tiny")
    calls = []
    original = model.embed
    model.embed = lambda x, **kw: calls.append(x.shape[0]) or original(x, **kw)
    train(model, data, data[:1], _cfg(mode="decoder", epochs=8, augment=True),
          tmp_path / "flips.safetensors")
    trained = sum(calls) - 8  # one validation image per epoch
    # More than one view per image, but each (image, view) is embedded once: at most 4 x 4.
    assert 4 < trained <= 4 * CACHED_FLIPS


def test_flipped_views_move_image_and_labels_together():
    item = _disc_images(2)[1]
    for view in range(CACHED_FLIPS):
        seen = flipped(item, view)
        expected = item.labels[:: -1 if view & 2 else 1, :: -1 if view & 1 else 1]
        assert np.array_equal(seen.labels, expected)
        # Where an object is, the mirrored image shows the same pixels.
        assert np.array_equal(seen.image[seen.labels > 0], item.image[
            :: -1 if view & 2 else 1, :: -1 if view & 1 else 1][expected > 0])
    assert not np.array_equal(flipped(item, 1).labels, item.labels)


def test_stop_request_keeps_best_adapter(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny")
    data = _disc_images(8)
    steps = []

    def count(event) -> None:  # noqa: ANN001
        steps.extend([1] if event.kind == "step" else [])

    # Stop after two steps: before any validation, so what was trained is kept as is.
    result = train(model, data, data[:2], _cfg(epochs=50), tmp_path / "s.safetensors",
                   on_progress=count, should_stop=lambda: len(steps) >= 2)
    assert result.stopped and result.epochs_done == 1 and len(steps) == 2
    assert result.adapter is not None and result.adapter.is_file()
    fresh = build_model("tiny")
    load_adapter(fresh, result.adapter)
    assert torch.equal(fresh.state_dict()["implicit_decoder.fine.trunk.0.weight"],
                       model.state_dict()["implicit_decoder.fine.trunk.0.weight"])


def test_seeded_runs_are_identical_and_resume_continues_exactly(tmp_path):
    data = _disc_images(6)
    cfg = _cfg(epochs=3, augment=True)
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        model = build_model("tiny")
        train(model, data[:4], data[4:], cfg, tmp_path / f"{name}.safetensors")
        runs.append(_weights(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    torch.manual_seed(0)
    model = build_model("tiny")
    steps = []
    # Interrupted after six steps, in the second epoch's validation (3 steps per epoch)...
    result = train(model, data[:4], data[4:], cfg, tmp_path / "c.safetensors",
                   on_progress=lambda e: steps.extend([1] if e.kind == "step" else []),
                   should_stop=lambda: len(steps) >= 6)
    assert result.stopped and result.epochs_done == 2
    # ...then resumed in a new process-like state: the global seed must not matter.
    torch.manual_seed(123)
    resumed = build_model("tiny")
    train(resumed, data[:4], data[4:], cfg, tmp_path / "c.safetensors", resume=True)
    got = resumed.state_dict()
    assert all(torch.allclose(got[k].float(), runs[0][k].float(), atol=1e-6) for k in got)


_DDP_SCRIPT = """
import sys, torch, numpy as np
sys.path.insert(0, {tests!r})
from test_training import _disc_images, _cfg
from napari_imedsam.model import build_model
from napari_imedsam.train.engine import train
torch.manual_seed(0)
model = build_model("tiny")
data = _disc_images(8)
# Stopped by its time limit, so the learning rate follows the clock: the ranks share one.
train(model, data[:6], data[6:], _cfg(epochs=1000, batch_size=1, time_budget_s=4.0), {out!r})
import torch.distributed as dist
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
torch.save(flat, {out!r} + f".rank{{dist.get_rank()}}.pt")
"""


def test_two_process_data_parallel_gloo(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp.safetensors")
    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port), str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(out + ".rank0.pt", weights_only=True)
    b = torch.load(out + ".rank1.pt", weights_only=True)
    assert torch.equal(a, b)
    start = torch.cat([p.detach().flatten() for p in (torch.manual_seed(0), build_model("tiny"))[1]
                       .parameters()])
    assert not torch.equal(a, start)  # it trained
    assert Path(out).is_file()


def test_cli_train_and_evaluate(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for item in _disc_images(6):
        Image.fromarray(item.image).save(root / "images" / f"{item.name}.png")
        Image.fromarray(((item.labels > 0) * 255).astype(np.uint8)).save(
            root / "masks" / f"{item.name}.png")
    out = tmp_path / "cli.safetensors"
    assert main(["train", "--data", str(root), "--out", str(out), "--variant", "tiny",
                 "--mode", "full", "--epochs", "2", "--points", "128", "--device", "cpu",
                 "--val-label-size", "32", "--no-augment"]) == 0
    assert out.is_file() and out.with_suffix(".log.csv").is_file()
    report_path = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(root), "--adapter", str(out), "--label-size", "48",
                 "--json", str(report_path), "--device", "cpu"]) == 0
    report = json.loads(report_path.read_text())
    for key in ("dice", "hd", "hd95", "ellipse_dice", "n_images"):
        assert key in report
    assert report["n_images"] == 6 and 0.0 <= report["dice"] <= 1.0
    assert report["ellipse_dice"] > 0.7  # discs: the ellipse in the box is near perfect
    rows = report_path.with_suffix(".csv").read_text().splitlines()
    assert rows[0].startswith("image,object,dice") and len(rows) == 1 + 6


def test_sam_objective_trains_the_prompt_path_only(tmp_path):
    """``objective="sam"`` pretrains SAM's own decoder at the sampled points: SAM's mask
    head moves, the implicit decoder receives no gradient, and the SAM-path
    validation Dice it reports is that of the trained SAM decoder."""
    items = _disc_images(8)
    torch.manual_seed(0)
    model = build_model("tiny")
    before = _weights(model)
    result = train(model, items[:6], items[6:], _cfg(objective="sam", epochs=3),
                   tmp_path / "sam.safetensors")
    after = model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("mask_decoder.output_hypernetworks_mlps") for k in moved)
    assert any(k.startswith("image_encoder") for k in moved)
    assert not any(k.startswith("implicit_decoder") and "running" not in k
                   and "num_batches" not in k for k in moved)
    assert result.best_val_dice is not None and result.best_val_dice > 0.2
    with pytest.raises(ValueError, match="objective"):
        train(build_model("tiny"), items[:2], [], _cfg(objective="dense"), tmp_path / "x")


def test_evaluation_can_grow_the_prompt_boxes(monkeypatch):
    from napari_imedsam.inference.session import SegmentationSession
    from napari_imedsam.train.data import box_of
    from napari_imedsam.train.evaluate import evaluate_model

    seen = []
    original = SegmentationSession.predict
    monkeypatch.setattr(SegmentationSession, "predict",
                        lambda self, boxes, **kw: seen.append(boxes[0].copy())
                        or original(self, boxes, **kw))
    item = _disc_images(1)[0]  # 64 x 64, evaluated at its own size: boxes are exact
    model = build_model("tiny")
    tight = np.asarray(box_of(item.labels == 1), dtype=np.float64)
    for margin in (0.0, 5.0, 100.0):
        rows = evaluate_model(model, [item], label_size=64, device=torch.device("cpu"),
                              with_distances=False, box_margin_px=margin)
        assert len(rows) == 1 and 0.0 <= rows[0]["dice"] <= 1.0
    grown = np.clip(tight + [-5, -5, 5, 5], 0, 64)
    assert np.allclose(seen[0], tight) and np.allclose(seen[1], grown)
    assert np.allclose(seen[2], [0, 0, 64, 64])  # clipped to the image


def _residual_tiny():
    import dataclasses

    from napari_imedsam.model import get_config

    cfg = get_config("tiny")
    cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, sam_logit="residual"))
    torch.manual_seed(0)
    return build_model(config=cfg)


def _gap_to_sam(model, item) -> float:
    """Largest difference between the implicit decoder's and SAM's own probability."""
    from napari_imedsam.inference.session import SegmentationSession
    from napari_imedsam.train.data import box_of

    session = SegmentationSession(model, device="cpu", precision="fp32", adaptive=False)
    session.set_image(item.image)
    box = [box_of(item.labels == 1)]
    session.use_decoder("imedsam")
    implicit = session.predict(box).prob
    session.use_decoder("sam")
    return float(np.abs(implicit - session.predict(box).prob).max())


def test_implicit_mode_trains_the_implicit_decoder_only(tmp_path):
    data = _disc_images(4)
    model = _residual_tiny()
    before = _weights(model)
    assert _gap_to_sam(model, data[0]) < 1e-4  # residual heads start at zero
    train(model, data, data[:1], _cfg(mode="implicit", epochs=10, lr_decoder=1e-2),
          tmp_path / "implicit.safetensors")
    after = model.state_dict()
    for key in ("prompt_encoder.point_embeddings.0.weight",
                "mask_decoder.output_upscaling.0.weight", "image_encoder.vit.pos_embed"):
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["implicit_decoder.coarse.heads.weight"],
                           before["implicit_decoder.coarse.heads.weight"])
    # Labels move it away from SAM's (untrained, so wrong) prompt path.
    assert _gap_to_sam(model, data[0]) > 0.1


def test_distill_objective_follows_the_backbone_not_the_labels(tmp_path):
    """With the backbone's probability as the target, a residual decoder stays on
    it (here an untrained, wrong backbone: the labels would pull elsewhere)."""
    data = _disc_images(4)
    gaps = {}
    for name, kw in (("distill", dict(objective="distill")), ("mixed", dict(distill_weight=1.0)),
                     ("labels", {})):
        model = _residual_tiny()
        train(model, data, data[:1], _cfg(mode="implicit", epochs=10, lr_decoder=1e-2, **kw),
              tmp_path / f"{name}.safetensors")
        gaps[name] = _gap_to_sam(model, data[0])
    assert gaps["distill"] < gaps["mixed"] < gaps["labels"], gaps
    assert gaps["distill"] < 0.25 * gaps["labels"], gaps


def test_stop_takes_effect_within_two_seconds_even_while_embedding(tmp_path):
    """A slow encoder (0.3 s an image, a batch of 8 to embed, then a validation) must not
    hold a Stop back: the run returns within 2 s of it."""
    import time

    data = _disc_images(16)
    torch.manual_seed(0)
    model = build_model("tiny")
    original = model.embed

    def slow_embed(images):  # noqa: ANN001, ANN202
        time.sleep(0.3 * images.shape[0])
        return original(images)

    model.embed = slow_embed
    pressed: list[float] = []

    def should_stop() -> bool:
        if not pressed and time.monotonic() > started + 1.0:
            pressed.append(time.monotonic())
        return bool(pressed)

    started = time.monotonic()
    result = train(model, data[:12], data[12:], _cfg(mode="decoder", epochs=5, batch_size=8),
                   tmp_path / "stop.safetensors", should_stop=should_stop)
    assert result.stopped and pressed
    assert time.monotonic() - pressed[0] < 2.0


def test_commands_never_replace_files_they_were_not_told_to(tmp_path, capsys):
    """evaluate --json and train --out check every output before any work, refuse an
    output that is an input, and replace only with --overwrite."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    split = tmp_path / "split.csv"
    split.write_text("name,split\n")
    # evaluate: its CSV would be the split file.
    code = main(["evaluate", "--data", str(data), "--split", str(split), "--model", "tiny",
                 "--json", str(tmp_path / "split.json")])
    assert code == 2 and "input" in capsys.readouterr().err
    assert split.read_text() == "name,split\n"
    report = tmp_path / "report.json"
    report.write_text("{}")
    assert main(["evaluate", "--data", str(data), "--json", str(report)]) == 2
    assert "already exists" in capsys.readouterr().err and report.read_text() == "{}"
    # train: --out results.json would replace results.json with the adapter's record.
    results = tmp_path / "results.json"
    results.write_text("mine")
    code = main(["train", "--synthetic", "4", "--variant", "tiny", "--mode", "full",
                 "--epochs", "1", "--out", str(results)])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert results.read_text() == "mine" and not (tmp_path / "results.safetensors").exists()
