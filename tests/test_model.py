"""The I-MedSAM model: shapes, adapters, decoder semantics, trainable parts."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from napari_imedsam.model import build_model, get_config, parameter_counts, set_trainable
from napari_imedsam.model.build import load_sam_weights
from napari_imedsam.model.devices import autocast, resolve_device
from napari_imedsam.model.modeling.frequency_adapter import image_spectrum
from napari_imedsam.model.modeling.imedsam import grid_points
from napari_imedsam.model.modeling.lora import LoRAQKV


def _images(model, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.config.input_size
    return torch.rand(n, 3, s, s, generator=g) * 255


def _plain_sam_encoder(cfg) -> ImageEncoderViT:
    enc = cfg.encoder
    return ImageEncoderViT(
        img_size=cfg.input_size, patch_size=enc.patch_size, embed_dim=enc.embed_dim,
        depth=enc.depth, num_heads=enc.num_heads, mlp_ratio=enc.mlp_ratio,
        out_chans=cfg.prompt.embed_dim, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=enc.window_size, global_attn_indexes=enc.global_attn_indexes,
    )


@pytest.mark.parametrize(
    "variant, dim, depth, heads, globals_",
    [("vit_b", 768, 12, 12, (2, 5, 8, 11)), ("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
     ("vit_h", 1280, 32, 16, (7, 15, 23, 31))],
)
def test_sam_variant_shapes(variant, dim, depth, heads, globals_):
    with torch.device("meta"):
        model = build_model(variant, input_size=512)
    vit = model.image_encoder.vit
    assert len(vit.blocks) == depth
    assert vit.patch_embed.proj.weight.shape == (dim, 3, 16, 16)
    assert vit.pos_embed.shape == (1, 32, 32, dim)
    for i, block in enumerate(vit.blocks):
        assert block.attn.num_heads == heads
        # Global blocks see the whole 32x32 grid; windowed ones a 14x14 window.
        expected = 2 * 32 - 1 if i in globals_ else 2 * 14 - 1
        assert block.attn.rel_pos_h.shape[0] == expected
    assert vit.neck[0].weight.shape == (256, dim, 1, 1)


def test_tiny_end_to_end_shapes():
    model = build_model("tiny")
    cfg = model.config
    assert cfg.input_size == 64
    emb = model.embed(_images(model, 2))
    g = cfg.token_grid
    assert emb.shape == (2, cfg.prompt.embed_dim, g, g)
    boxes = torch.tensor([[8.0, 10.0, 40.0, 50.0], [4.0, 4.0, 30.0, 20.0]])
    prompt = model.encode_prompt(emb, boxes)
    assert prompt.features.shape == (2, cfg.prompt.embed_dim // 8, 4 * g, 4 * g)
    assert prompt.dense_pe.shape == (1, cfg.prompt.embed_dim, g, g)
    pred = model.decode_grid(prompt, (24, 40))
    assert pred.logits.shape == pred.coarse_logits.shape == pred.uncertainty.shape == (2, 1, 24, 40)
    assert pred.refined.shape == (2, 24, 40) and pred.refined.dtype == torch.bool
    assert 0.0 <= float(pred.prob.min()) and float(pred.prob.max()) <= 1.0
    low_res, iou = model.predict_discrete(emb, boxes)
    assert low_res.shape == (2, 1, 4 * g, 4 * g) and iou.shape == (2, 1)


def test_vit_b_decoder_and_prompt_shapes():
    """The paper's decoder shapes for vit_b (checked on the meta device)."""
    with torch.device("meta"):
        model = build_model("vit_b")
    dec = model.implicit_decoder
    # gamma(p): 2 coords x 10 frequencies x (sin, cos) = 40; + 32 features + 256 PE.
    assert dec.in_dim == 40 + 32 + 256
    linears = [m for m in dec.coarse.trunk if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(328, 1024), (1024, 512)]
    assert (dec.coarse.heads.in_features, dec.coarse.heads.out_features) == (512, 257)
    linears = [m for m in dec.fine.trunk if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256 + 328, 256), (256, 256)]
    head = [m for m in dec.fine.heads[0] if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in head] == [(256, 128), (128, 1)]
    assert dec.coarse.p == 0.5
    up = model.mask_decoder.output_upscaling
    assert up[0].out_channels == 64 and up[3].out_channels == 32


def test_parameter_counts_match_paper():
    with torch.device("meta"):
        binary = parameter_counts(build_model("vit_b", num_classes=1))
        organs = parameter_counts(build_model("vit_b", num_classes=13))
    assert binary["lora"] == 147_456
    assert binary["prompt_encoder"] == 6_220
    assert binary["upscaling"] == 73_952
    assert abs(binary["total"] - 1.6e6) <= 0.05 * 1.6e6
    assert abs(organs["total"] - 3.5e6) <= 0.10 * 3.5e6


def test_lora_with_zero_b_equals_plain_sam_encoder():
    cfg = get_config("tiny", frequency_mode="off")
    torch.manual_seed(0)
    sam = _plain_sam_encoder(cfg).eval()
    state = {f"image_encoder.{k}": v for k, v in sam.state_dict().items()}
    model = build_model(config=cfg)
    load_sam_weights({"image_encoder": model.image_encoder.vit}, state, "test")
    images = _images(model, 2)
    normalised = (images - model.image_encoder.pixel_mean) / model.image_encoder.pixel_std
    with torch.no_grad():
        expected = sam(normalised)
        got = model.embed(images)
        assert torch.allclose(got, expected, atol=1e-6, rtol=0)
        # A non-zero B must change the output: the comparison above can fail.
        lora = model.image_encoder.vit.blocks[0].attn.qkv
        assert isinstance(lora, LoRAQKV) and lora.targets == ("q", "v")
        lora.lora_B["v"].fill_(0.1)
        assert not torch.allclose(model.embed(images), expected, atol=1e-4)


def test_lora_touches_only_query_and_value_slices():
    base = nn.Linear(8, 24)
    layer = LoRAQKV(base, rank=2, alpha=2.0, targets=("q", "v"))
    with torch.no_grad():
        layer.lora_B["q"].normal_()
        layer.lora_B["v"].normal_()
    x = torch.randn(3, 8)
    diff = (layer(x) - base(x)).abs()
    assert diff[:, :8].max() > 0 and diff[:, 16:].max() > 0
    assert diff[:, 8:16].max() == 0  # keys untouched


def test_merged_lora_is_one_linear_computing_the_same():
    from napari_imedsam.model.modeling.lora import merge_lora_qkv, per_head_rows

    base = nn.Linear(8, 2 * (2 * 2 + 4))
    layer = LoRAQKV(base, rank=2, alpha=3.0, targets=("q", "v"), rows=per_head_rows(2, 2, 4))
    with torch.no_grad():
        layer.lora_B["q"].normal_()
        layer.lora_B["v"].normal_()
    x = torch.randn(5, 8)
    merged = layer.merged()
    assert type(merged) is nn.Linear and not merged.weight.requires_grad
    assert torch.allclose(merged(x), layer(x), atol=1e-5)
    assert not torch.allclose(merged(x), base(x), atol=1e-3)  # the update is in it
    holder = nn.Sequential(nn.Identity(), layer)
    assert merge_lora_qkv(holder) == 1 and type(holder[1]) is nn.Linear
    assert torch.allclose(holder(x), layer(x), atol=1e-5)
    assert isinstance(layer, LoRAQKV) and layer.base is base  # the original is untouched


def test_checkpoint_at_other_size_resizes_position_tables():
    big = get_config("tiny", input_size=128)
    torch.manual_seed(1)
    sam = _plain_sam_encoder(big)
    with torch.no_grad():
        sam.pos_embed.fill_(0.25)
        for block in sam.blocks:
            block.attn.rel_pos_h.fill_(-1.5)
    state = {f"image_encoder.{k}": v for k, v in sam.state_dict().items()}
    model = build_model("tiny", input_size=64)
    vit = model.image_encoder.vit
    load_sam_weights({"image_encoder": vit}, state, "test")
    assert vit.pos_embed.shape == (1, 4, 4, 32)
    assert torch.allclose(vit.pos_embed, torch.full_like(vit.pos_embed, 0.25))
    global_block = vit.blocks[1].attn
    assert global_block.rel_pos_h.shape[0] == 2 * 4 - 1
    assert torch.allclose(global_block.rel_pos_h, torch.full_like(global_block.rel_pos_h, -1.5))
    assert torch.equal(vit.patch_embed.proj.weight, sam.patch_embed.proj.weight)


def test_real_sam_layout_loads_into_vit_b_at_384():
    """segment-anything's own vit_b (random weights, 1024 px) loads at 384 px."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    model = build_model("vit_b", checkpoint=sam.state_dict(), input_size=384)
    vit = model.image_encoder.vit
    assert vit.pos_embed.shape == (1, 24, 24, 768)
    assert vit.blocks[2].attn.rel_pos_h.shape == (47, 64)
    assert torch.equal(vit.blocks[3].attn.qkv.base.weight, sam.image_encoder.blocks[3].attn.qkv.weight)
    assert torch.equal(model.mask_decoder.transformer.layers[0].mlp.lin1.weight,
                       sam.mask_decoder.transformer.layers[0].mlp.lin1.weight)


def test_mismatched_sam_checkpoint_is_a_clear_error():
    from napari_imedsam.model.weights import CheckpointError

    other = get_config("tiny")
    torch.manual_seed(0)
    wrong = _plain_sam_encoder(get_config("vit_b", input_size=64))
    state = {f"image_encoder.{k}": v for k, v in wrong.state_dict().items()}
    model = build_model(config=other)
    with pytest.raises(CheckpointError, match="variant"):
        load_sam_weights({"image_encoder": model.image_encoder.vit}, state, "wrong.pth")


@pytest.mark.parametrize("mode", ["amplitude", "phase"])
def test_spectrum_matches_numpy(mode):
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, size=(3, 16, 16))
    grey = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    spec = np.fft.fftshift(np.fft.fft2(grey))
    values = np.abs(spec) if mode == "amplitude" else np.angle(spec)
    expected = (values - values.min()) / (values.max() - values.min())
    got = image_spectrum(torch.from_numpy(rgb)[None].float(), mode)[0, 0].numpy()
    assert np.allclose(got, expected, atol=1e-5)


def test_frequency_adapter_modes():
    counts = {}
    for mode in ("amplitude", "phase", "off"):
        model = build_model("tiny", frequency_mode=mode)
        counts[mode] = parameter_counts(model)["frequency_adapter"]
        assert (model.image_encoder.frequency is None) == (mode == "off")
    assert counts["amplitude"] == counts["phase"] > 0 == counts["off"]
    torch.manual_seed(0)
    amp = build_model("tiny", frequency_mode="amplitude")
    torch.manual_seed(0)
    pha = build_model("tiny", frequency_mode="phase")
    images = _images(amp)
    with torch.no_grad():
        assert not torch.allclose(amp.embed(images), pha.embed(images))


def _prompt(model, seed=0):
    torch.manual_seed(seed)
    emb = model.embed(_images(model, 1, seed))
    return model.encode_prompt(emb, torch.tensor([[10.0, 12.0, 50.0, 44.0]]))


def test_mc_dropout_in_eval_and_batchnorm_frozen():
    model = build_model("tiny").eval()
    bn = model.implicit_decoder.coarse.trunk[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.1, 0.1)
        before = bn.running_mean.clone()
        prompt = _prompt(model)
        a = model.decode_grid(prompt, (16, 16), generator=torch.Generator().manual_seed(1))
        b = model.decode_grid(prompt, (16, 16), generator=torch.Generator().manual_seed(2))
        c = model.decode_grid(prompt, (16, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(bn.running_mean, before)
    assert torch.equal(a.coarse_logits, b.coarse_logits)  # dropout off for the prediction
    assert float(a.uncertainty.max()) > 0  # ...but on for the MC samples
    assert not torch.equal(a.uncertainty, b.uncertainty)
    assert torch.equal(a.uncertainty, c.uncertainty)


def test_uncertainty_is_variance_of_sampled_probabilities():
    model = build_model("tiny").eval()
    coarse = model.implicit_decoder.coarse
    hidden = torch.randn(50, 32)
    samples = 6
    networks = coarse.sample_networks(samples, torch.Generator().manual_seed(3))
    got = coarse.mc_variance(hidden, networks)
    keep = torch.rand(samples, 32, generator=torch.Generator().manual_seed(3)) >= coarse.p
    probs = []
    for t in range(samples):
        dropped = hidden * keep[t] / (1 - coarse.p)
        probs.append(torch.sigmoid(coarse.heads(dropped)[:, 0]))
    probs = torch.stack(probs)  # (T, M)
    expected = ((probs - probs.mean(0)) ** 2).mean(0)  # Eq. 7
    assert torch.allclose(got[:, 0], expected, atol=1e-6)


def test_top_k_refinement_and_merge():
    model = build_model("tiny").eval()
    with torch.no_grad():
        prompt = _prompt(model)
        pred = model.decode_grid(prompt, (20, 20), top_k_ratio=0.125,
                                 generator=torch.Generator().manual_seed(0))
        refined = pred.refined[0].flatten()
        assert int(refined.sum()) == math.ceil(0.125 * 400)
        unc = pred.uncertainty[0, 0].flatten()
        assert float(unc[refined].min()) >= float(unc[~refined].max())
        coarse, final = pred.coarse_logits[0, 0].flatten(), pred.logits[0, 0].flatten()
        assert torch.equal(final[~refined], coarse[~refined])  # Eq. 6: coarse elsewhere
        # The refined values are Dec_f's outputs for those points.
        dec = model.implicit_decoder
        points = grid_points(20, 20)[refined][None]
        z_p = dec.point_inputs(points, prompt.features, prompt.dense_pe)[0]
        _, _, z_c = dec.coarse(z_p)
        assert torch.allclose(final[refined], dec.fine(z_c, z_p)[:, 0], atol=1e-5)
        none = model.decode_grid(prompt, (20, 20), top_k_ratio=0.0)
        assert not none.refined.any() and torch.equal(none.logits, none.coarse_logits)


def test_point_queries_agree_with_grid_queries():
    model = build_model("tiny").eval()
    with torch.no_grad():
        prompt = _prompt(model)
        grid = model.decode_grid(prompt, (12, 12), top_k_ratio=0.0,
                                 generator=torch.Generator().manual_seed(5))
        points = grid_points(12, 12)[[0, 17, 77, 143]]
        pts = model.decode_points(prompt, points, top_k_ratio=0.0,
                                  generator=torch.Generator().manual_seed(5))
    flat = [0, 17, 77, 143]
    assert torch.allclose(pts.coarse_logits[0, 0], grid.coarse_logits[0, 0].flatten()[flat], atol=1e-5)
    # A point's uncertainty does not depend on the other points queried with it.
    assert torch.allclose(pts.uncertainty[0, 0], grid.uncertainty[0, 0].flatten()[flat], atol=1e-6)


def test_multiclass_heads():
    model = build_model("tiny", num_classes=3).eval()
    assert len(model.implicit_decoder.fine.heads) == 3
    with torch.no_grad():
        pred = model.decode_grid(_prompt(model), (8, 8))
    assert pred.logits.shape == (1, 3, 8, 8) and pred.uncertainty.shape == (1, 3, 8, 8)


def test_only_adapter_parts_train():
    model = build_model("tiny")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name in trainable:
        assert (".lora_" in name or name.startswith(("image_encoder.frequency.", "prompt_encoder.",
                "mask_decoder.output_upscaling.", "implicit_decoder."))), name
    assert "image_encoder.vit.blocks.0.attn.qkv.base.weight" not in trainable
    assert "mask_decoder.transformer.layers.0.mlp.lin1.weight" not in trainable
    # Gradients reach the adapters and stop at the frozen base.
    model.train()
    with torch.no_grad():
        model.image_encoder.vit.blocks[0].attn.qkv.lora_B["q"].normal_()
    pred = model(_images(model, 2), torch.tensor([[5.0, 5, 40, 40], [10, 10, 60, 50]]),
                 grid_points(8, 8))
    pred.logits.sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert "image_encoder.vit.blocks.0.attn.qkv.lora_A.q" in grads
    assert "implicit_decoder.fine.trunk.0.weight" in grads
    assert not any(n.startswith("image_encoder.vit.patch_embed") for n in grads)
    assert sum(p.numel() for p in set_trainable(model, "full")) == sum(
        p.numel() for p in model.parameters())
    decoder_only = {id(p) for p in set_trainable(model, "decoder")}
    assert all(id(p) not in decoder_only for p in model.image_encoder.parameters())


def test_bf16_autocast_agrees_with_fp32():
    model = build_model("tiny").eval()
    images = _images(model)
    boxes = torch.tensor([[10.0, 12.0, 50.0, 44.0]])
    with torch.no_grad():
        ref_emb = model.embed(images)
        ref = model.decode_grid(model.encode_prompt(ref_emb, boxes), (16, 16), top_k_ratio=0.0)
        with autocast(torch.device("cpu"), "bf16") as dtype:
            assert dtype == torch.bfloat16
            emb = model.embed(images)
            pred = model.decode_grid(model.encode_prompt(emb, boxes), (16, 16), top_k_ratio=0.0)
    cos = torch.nn.functional.cosine_similarity(emb.float().flatten(), ref_emb.flatten(), dim=0)
    assert float(cos) > 0.99
    assert float((pred.prob - ref.prob).abs().max()) < 0.05


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cpu"):
            resolve_device("cuda")
    with pytest.raises(ValueError):
        resolve_device("tpu")


def test_bad_inputs_are_clear():
    model = build_model("tiny")
    with pytest.raises(ValueError, match="64, 64"):
        model.embed(torch.zeros(1, 3, 32, 32))
    emb = model.embed(_images(model))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        model.encode_prompt(emb, torch.zeros(4))
    with pytest.raises(ValueError, match="input_size"):
        get_config("vit_b", input_size=100)
    with pytest.raises(ValueError, match="unknown variant"):
        get_config("vit_x")


def test_chunked_decoding_equals_one_pass():
    model = build_model("tiny").eval()
    with torch.no_grad():
        prompt = _prompt(model)
        one = model.decode_grid(prompt, (20, 20), generator=torch.Generator().manual_seed(4))
        chunked = model.decode_grid(prompt, (20, 20), chunk_size=37,
                                    generator=torch.Generator().manual_seed(4))
    assert torch.equal(one.refined, chunked.refined)
    assert torch.allclose(one.logits, chunked.logits, atol=1e-5)
    assert torch.allclose(one.uncertainty, chunked.uncertainty, atol=1e-6)


def test_image_coordinate_points_follow_the_letterbox():
    from napari_imedsam.model.transforms import Letterbox

    model = build_model("tiny").eval()
    box = Letterbox(30, 120, 64)  # wide image: scaled by 64/120, padded below
    xy = torch.tensor([[0.0, 0.0], [120.0, 30.0], [60.0, 15.0]])
    expected = torch.as_tensor(box.normalize(xy.numpy()), dtype=torch.float32)
    assert torch.allclose(expected[0], torch.tensor([-1.0, -1.0]))
    assert expected[1, 0] == 1.0 and expected[1, 1] < 0  # padding below the image
    with torch.no_grad():
        prompt = _prompt(model)
        a = model.decode_image_points(prompt, xy, (30, 120), top_k_ratio=0.0)
        b = model.decode_points(prompt, expected, top_k_ratio=0.0)
    assert torch.allclose(a.coarse_logits, b.coarse_logits, atol=1e-5)
