"""The inference engine: coordinates, caching, scales and regions, adaptive vs dense."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from napari_imedsam.cli import main
from napari_imedsam.inference.cache import EmbeddingCache
from napari_imedsam.inference.intensity import apply_window, parse_window, to_encoder_rgb
from napari_imedsam.inference.session import SegmentationSession, boundary_polygons
from napari_imedsam.model import build_model
from napari_imedsam.model.loading import load_model
from napari_imedsam.train.data import LabeledImage
from conftest import train_tiny
from napari_imedsam.train.metrics import dice


def _scene(height: int = 60, width: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc off-centre on a noisy, non-square image, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cx, cy, r = rng.uniform(0.55, 0.8) * width, rng.uniform(0.3, 0.6) * height, height * 0.2
    mask = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < r**2
    image = rng.normal(40, 10, (height, width, 3))
    image[mask] += 150
    return np.clip(image, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory) -> str:
    """A tiny model trained for seconds on discs: it segments them in the right place."""
    items = []
    for i in range(16):
        image, mask = _scene(64 + 8 * (i % 3), 64 + 16 * (i % 4), seed=i)
        items.append(LabeledImage(f"s{i}", image, mask.astype(np.int32)))
    return train_tiny(items, tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _session(path: str, **kw) -> SegmentationSession:
    return SegmentationSession(load_model(path), device="cpu", **kw)


def test_ct_windows_and_intensities():
    assert parse_window("abdomen") == (400.0, 40.0) and parse_window("80,40") == (80.0, 40.0)
    hu = np.array([[-1000, -160, 40], [240, 3000, np.nan]], dtype=np.float32)
    grey = apply_window(hu, "abdomen")
    assert grey.tolist() == [[0, 0, 128], [255, 255, 0]]
    rgb = to_encoder_rgb(hu.astype(np.float32), "lung")
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8 and (rgb[..., 0] == rgb[..., 2]).all()
    mr = np.random.default_rng(0).normal(300, 50, (20, 20)).astype(np.uint16)
    assert to_encoder_rgb(mr).max() == 255  # percentile-scaled
    assert (to_encoder_rgb(np.full((8, 8), 7.0)) == 0).all()  # constant: no division by zero
    for bad, match in ((np.zeros((4, 8, 8)), "slice"), (np.zeros((1, 5)), "too small")):
        with pytest.raises(ValueError, match=match):
            to_encoder_rgb(bad)
    with pytest.raises(ValueError, match="WIDTH,LEVEL"):
        parse_window("soft")
    # CT saved as RGB (three equal channels) is grey: windowed as its first channel.
    ct_rgb = np.repeat(np.array([[0, 100], [200, 255]], np.uint8)[..., None], 3, axis=-1)
    assert np.array_equal(to_encoder_rgb(ct_rgb, "abdomen"), to_encoder_rgb(ct_rgb[..., 0], "abdomen"))
    colour = ct_rgb.copy()
    colour[0, 0] = (10, 20, 30)
    with pytest.raises(ValueError, match="colour"):
        to_encoder_rgb(colour, "abdomen")


def test_embedding_cache_is_lru_under_budget():
    cache = EmbeddingCache(max_bytes=3 * 400)
    for i in range(4):
        cache.put(i, torch.zeros(100))  # 400 bytes each
    assert 0 not in cache and all(i in cache for i in (1, 2, 3))
    assert cache.get(1) is not None  # 1 is now the most recent
    cache.put(4, torch.zeros(100))
    assert 2 not in cache and 1 in cache and cache.nbytes <= 1200


def test_mask_lands_in_the_right_place_at_every_scale():
    """Exact geometry, independent of what a model learned: SAM's decoder is replaced by
    the known disc, drawn in encoder-input coordinates; the session must map it back
    onto the image grid at every scale."""
    image, mask = _scene(60, 100, seed=99)
    session = SegmentationSession(build_model("tiny"), device="cpu", mode="sam")
    session.set_image(image)
    box_map = session._letterbox
    sx, sy = box_map.scale_xy
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.mean() + 0.5) * sx, (ys.mean() + 0.5) * sy
    radius = np.sqrt(mask.sum() / np.pi) * sx
    size = 512
    grid = (np.arange(size) + 0.5) * (box_map.size / size)
    gx, gy = np.meshgrid(grid, grid)
    logits = np.where((gx - cx) ** 2 + (gy - cy) ** 2 < radius**2, 20.0, -20.0)
    session.model.predict_discrete = lambda emb, boxes: (
        torch.as_tensor(logits, dtype=torch.float32)[None, None], torch.ones(1, 1))
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    for scale in (0.5, 1.0, 3.0):
        result = session.predict([box], scale=scale)
        assert result.shape == (round(60 * scale), round(100 * scale))
        # The true disc sampled at the output grid's pixel centres.
        rows = (np.arange(result.shape[0]) + 0.5) / scale
        cols = (np.arange(result.shape[1]) + 0.5) / scale
        truth = ((cols[None] - xs.mean() - 0.5) ** 2 + (rows[:, None] - ys.mean() - 0.5) ** 2
                 < mask.sum() / np.pi)
        assert dice(result.masks()[0], truth) > 0.97, scale


def test_trained_model_finds_the_object(trained_tiny):
    session = _session(trained_tiny)
    image, mask = _scene(60, 100, seed=99)
    session.set_image(image)
    ys, xs = np.nonzero(mask)
    result = session.predict([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]])
    found = result.masks()[0]
    assert dice(found, mask) > 0.5
    # Its centre is where the object is, not somewhere else in the box.
    fy, fx = np.nonzero(found)
    assert abs(fx.mean() - xs.mean()) < 5 and abs(fy.mean() - ys.mean()) < 5


def test_grid_points_region_and_point_queries_agree(trained_tiny):
    session = _session(trained_tiny)
    image, mask = _scene(60, 100, seed=5)
    session.set_image(image)
    box = [50.0, 10.0, 95.0, 50.0]
    full = session.predict([box], scale=2.0, adaptive=False)
    # A region on the same 2x grid: rows 20..60 and cols 120..180 of the full result.
    region = session.predict([box], region=(10.0, 60.0, 30.0, 90.0), out_shape=(40, 60),
                             adaptive=False)
    crop = (slice(20, 60), slice(120, 180))
    # Same points, same dropout networks: the same uncertainty everywhere...
    np.testing.assert_allclose(region.uncertainty[0, 0], full.uncertainty[0, 0][crop], atol=1e-6)
    # ...and the same probability wherever neither query refined the point (top-K is
    # taken per query set, so the two refine different points).
    same = ~region.refined[0] & ~full.refined[0][crop]
    assert same.mean() > 0.8
    np.testing.assert_allclose(region.prob[0, 0][same], full.prob[0, 0][crop][same], atol=1e-5)
    # Points at those pixel centres, in image coordinates.
    pts = np.array([[60.25, 10.25], [75.75, 20.25], [89.75, 29.75]])
    got = session.predict_points(box, pts)["uncertainty"][0]
    expected = full.uncertainty[0, 0, [20, 40, 59], [120, 151, 179]]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_many_boxes_labels_and_polygons(trained_tiny):
    session = _session(trained_tiny)
    image, mask = _scene(60, 100, seed=7)
    session.set_image(image)
    ys, xs = np.nonzero(mask)
    tight = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    result = session.predict([tight, [0, 0, 20, 20]])
    labels = result.labels()
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert dice(labels == 1, mask) > 0.5  # a tiny model, seconds of training
    polys = boundary_polygons(result)[0]
    assert polys, "no boundary found"
    # Boundaries sit on the mask's edge, in image coordinates (pixel edges at integers).
    found = result.masks()[0]
    fy, fx = np.nonzero(found)
    vertices = np.concatenate(polys)
    assert fx.min() - 0.01 <= vertices[:, 1].min() <= fx.min() + 1.01
    assert fx.max() - 0.01 <= vertices[:, 1].max() <= fx.max() + 1.01
    assert fy.min() - 0.01 <= vertices[:, 0].min() <= fy.min() + 1.01
    assert result.uncertainty is not None and result.uncertainty.shape == result.prob.shape


def test_adaptive_matches_dense(trained_tiny):
    session = _session(trained_tiny)
    image, mask = _scene(120, 200, seed=11)
    session.set_image(image)
    ys, xs = np.nonzero(mask)
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    for scale in (0.64, 1.92, 4.48):  # 128, 384 and 896 columns
        adaptive = session.predict([box], scale=scale, adaptive=True)
        dense = session.predict([box], scale=scale, adaptive=False)
        assert dice(adaptive.masks()[0], dense.masks()[0]) >= 0.995, scale
        # Where adaptive evaluation computed a point, its uncertainty is the dense one.
        exact = adaptive.evaluated[0]
        assert 0 < exact.mean() < 0.6, scale  # the work followed the boundary
        np.testing.assert_allclose(adaptive.uncertainty[0, 0][exact],
                                   dense.uncertainty[0, 0][exact], atol=1e-5)


def test_hidden_layers_past_the_budget_are_computed_again_to_the_same_values(trained_tiny,
                                                                            monkeypatch):
    """Adaptive decoding keeps Dec_c's hidden layers for at most KEEP_HIDDEN points (a
    long boundary evaluates hundreds of thousands); past it Dec_f's input is computed
    again. The same dropout draws (the session's seed), the same answer, whether
    none, some or all are kept."""
    from napari_imedsam.inference import adaptive

    session = _session(trained_tiny)
    image, mask = _scene(120, 200, seed=11)
    session.set_image(image)
    ys, xs = np.nonzero(mask)
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    answers = [session.predict([box], scale=1.92, adaptive=True)]  # all kept
    evaluated = int(answers[0].evaluated.sum())
    assert answers[0].refined.sum() > 100 and evaluated > 1000
    for keep in (evaluated // 2, 0):  # some kept and some computed again; none kept
        monkeypatch.setattr(adaptive, "KEEP_HIDDEN", keep)
        answers.append(session.predict([box], scale=1.92, adaptive=True))
    for other in answers[1:]:
        np.testing.assert_allclose(other.prob, answers[0].prob, atol=1e-5)


def test_cache_and_precompute(trained_tiny):
    session = _session(trained_tiny, cache_bytes=1 << 20)
    volume = np.stack([_scene(64, 64, seed=s)[0][..., 0] for s in range(5)])
    done = session.precompute([lambda z=z: volume[z] for z in range(5)], keys=list(range(5)))
    assert done == 5 and len(session.cache) == 5
    session.set_image(volume[2], key=2)
    assert session.cache.hits == 1
    stops = iter([False, True])
    assert session.precompute([volume[0], volume[1], volume[2]], keys=[10, 11, 12],
                              should_stop=lambda: next(stops, True)) == 1


def test_base_sam_mode_and_bad_boxes():
    session = SegmentationSession(build_model("tiny"), device="cpu")
    assert session.mode == "sam"  # no adapter loaded: SAM's own decoder
    session.set_image(_scene()[0])
    result = session.predict([[10, 10, 50, 40]], scale=0.5)
    assert result.mode == "sam" and result.uncertainty is None and result.prob.shape == (1, 1, 30, 50)
    with pytest.raises(ValueError, match="outside"):
        session.predict([[150, 10, 170, 40]])
    with pytest.raises(ValueError, match="inverted"):
        session.predict([[50, 10, 10, 40]])
    with pytest.raises(ValueError, match="scale"):
        session.predict([[10, 10, 50, 40]], scale=20)
    with pytest.raises(RuntimeError, match="set_image"):
        SegmentationSession(build_model("tiny"), device="cpu").predict([[0, 0, 5, 5]])


def test_segment_command(trained_tiny, tmp_path, capsys):
    from PIL import Image

    image, mask = _scene(60, 100, seed=3)
    Image.fromarray(image).save(tmp_path / "a.png")
    ys, xs = np.nonzero(mask)
    box = f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}"
    out = tmp_path / "a_mask.tif"
    args = ["segment", str(tmp_path / "a.png"), "--box", box, "--out", str(out), "--model",
            trained_tiny, "--device", "cpu", "--uncertainty", str(tmp_path / "u.tif"),
            "--polygons", str(tmp_path / "p.json"), "--scale", "2"]
    assert main(args) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (120, 200) and dice(labels == 1, np.kron(mask, np.ones((2, 2)))) > 0.5
    assert tifffile.imread(tmp_path / "u.tif").dtype == np.float32
    assert json.loads((tmp_path / "p.json").read_text())["objects"][0]["id"] == 1
    before = out.read_bytes()
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # no silent overwrite
    assert out.read_bytes() == before
    # One file for two outputs, even with --overwrite: refused before anything is written.
    assert main(["segment", str(tmp_path / "a.png"), "--box", box, "--out", str(out),
                 "--uncertainty", str(out), "--overwrite", "--model", trained_tiny]) == 2
    assert "same file" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["segment", str(tmp_path / "a.png"), "--box", box, "--out",
                 str(tmp_path / "a.png"), "--overwrite", "--model", trained_tiny]) == 2
    assert "is an input" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "a.png"), "--box", "5,5,2,2", "--out",
                 str(tmp_path / "b.tif"), "--model", trained_tiny]) == 2
    assert "inverted" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((3, 40, 40), np.int16))
    assert main(["segment", str(tmp_path / "vol.tif"), "--box", "5,5,20,20", "--out",
                 str(tmp_path / "c.tif"), "--model", trained_tiny]) == 2
    assert "--slice" in capsys.readouterr().err
    (tmp_path / "boxes.csv").write_text(f"image,x0,y0,x1,y1\na.png,{box}\n")
    assert main(["segment", "--batch", str(tmp_path), "--boxes-file", str(tmp_path / "boxes.csv"),
                 "--out-dir", str(tmp_path / "batch"), "--model", trained_tiny]) == 0
    assert tifffile.imread(tmp_path / "batch" / "a_mask.tif").max() == 1


def test_default_model_adaptive_agrees_with_dense_on_held_out_images():
    """The shipped default model, held-out synthetic images, output sizes 128, 384
    and 896: mask Dice >= 0.995; uncertainty equal where both computed, and
    concentrated on the boundary (the issue's uncertainty criterion)."""
    from napari_imedsam.model.loading import DEFAULT_ADAPTER
    from napari_imedsam.train.data import box_of
    from napari_imedsam.train.metrics import boundary_band_ratio
    from napari_imedsam.train.synthetic import synthetic_sample

    assert DEFAULT_ADAPTER.is_file(), "the default model's adapter must ship with the package"
    session = SegmentationSession(load_model("medsam_lite"), device="cpu")
    assert session.mode == "imedsam"
    rng = np.random.default_rng(20261125)  # not a seed the default was trained on
    for kind in ("rgb", "ct"):
        image, labels = synthetic_sample(rng, size=256, kind=kind)
        session.set_image(image)
        box = box_of(labels == 1)
        for size in (128, 384, 896):
            kw = dict(region=(0.0, 0.0, 256.0, 256.0), out_shape=(size, size))
            adaptive = session.predict([box], adaptive=True, **kw)
            dense = session.predict([box], adaptive=False, **kw)
            score = dice(adaptive.masks()[0], dense.masks()[0])
            assert score >= 0.995, (kind, size, score)
            exact = adaptive.evaluated[0]
            np.testing.assert_allclose(adaptive.uncertainty[0, 0][exact],
                                       dense.uncertainty[0, 0][exact], atol=1e-5)
            if size == 384:
                std = np.sqrt(dense.uncertainty[0, 0])
                grid_box = np.asarray(box) * size / 256
                assert boundary_band_ratio(dense.masks()[0], std, grid_box) >= 3, kind


@pytest.mark.parametrize("sam_logit", ["off", "residual"])
def test_fast_decoder_equals_the_model_with_and_without_an_extent(sam_logit):
    """The inference decoder (BN folded, first layer factored through the sampling,
    tables cropped to the points' extent) gives the model's own coarse logits,
    uncertainty and fine logits, including at the map borders; in residual mode
    with SAM's logit added."""
    import dataclasses

    from napari_imedsam.inference.fast_decoder import FastDecoder
    from napari_imedsam.model import get_config

    torch.manual_seed(0)
    cfg = get_config("tiny")
    cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, sam_logit=sam_logit))
    model = build_model(config=cfg).eval()
    for module in model.implicit_decoder.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
        elif isinstance(module, torch.nn.Linear) and not module.weight.any():
            module.weight.data.uniform_(-0.3, 0.3)  # residual heads start at zero: wake them
    with torch.no_grad():
        emb = model.embed(torch.rand(1, 3, 64, 64) * 255)
        prompt = model.encode_prompt(emb, torch.tensor([[10.0, 12.0, 40.0, 50.0]]))
    extent = (-0.3, -1.0, 1.0, 0.2)  # touches the left/top... and the right border
    lo, hi = torch.tensor(extent[:2]), torch.tensor(extent[2:])
    points = lo + (hi - lo) * torch.rand(500, 2)
    points[:4] = torch.tensor([[extent[0], extent[1]], [extent[2], extent[3]],
                               [extent[0], extent[3]], [extent[2], extent[1]]])
    networks = model.implicit_decoder.coarse.sample_networks(4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.decode_points(prompt, points, generator=torch.Generator().manual_seed(1),
                                  refine_mask=torch.ones(1, 500, dtype=torch.bool))
        for fast in (FastDecoder(model, prompt, networks),
                     FastDecoder(model, prompt, networks, extent=extent)):
            hidden, logits, variance = fast.coarse(points)
            torch.testing.assert_close(logits.T, ref.coarse_logits[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(variance.T, ref.uncertainty[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(fast.fine(points, hidden).T, ref.logits[0],
                                       atol=1e-4, rtol=1e-4)
        cropped = FastDecoder(model, prompt, networks, extent=extent)
        assert cropped.table.rows.shape[0] < FastDecoder(model, prompt, networks).table.rows.shape[0]
        # Rows are projected when first read: one point reads 8 rows of each table.
        assert not cropped.table._done.any()
        hidden, _, _ = cropped.coarse(points[:1])
        assert int(cropped.table._done.sum()) <= 8 and not cropped.fine_table._done.any()
        cropped.fine(points[:1], hidden)
        assert 0 < int(cropped.fine_table._done.sum()) <= 8
        with pytest.raises(ValueError, match="extent"):
            cropped.coarse(torch.tensor([[-0.9, 0.0]]))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"),
                    reason="the CPU peak-memory count reads Linux's /proc")
def test_bench_peak_memory_counts_what_a_run_allocates_even_after_frees():
    from napari_imedsam.bench import _peak_rise_mb

    def blocks() -> list[np.ndarray]:  # 1500 x 100 KB: C-heap blocks, not mmap
        return [np.ones(100 * 1024 // 8) for _ in range(1500)]

    # Earlier work freed 150 MB that small live blocks pin inside the heap: the heap
    # keeps it resident, and a run reusing it would not raise the resident size.
    big, pins = [], []
    for _ in range(1500):
        big.append(np.ones(100 * 1024 // 8))
        pins.append(np.ones(64))
    del big
    cpu = torch.device("cpu")
    assert 120 < _peak_rise_mb(lambda: len(blocks()), cpu) < 260
    assert _peak_rise_mb(lambda: None, cpu) < 20
    assert len(pins) == 1500


def test_segment_batch_reports_failures_and_writes_sets_whole(trained_tiny, tmp_path, capsys):
    from PIL import Image

    image, mask = _scene(60, 100, seed=3)
    Image.fromarray(image).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    ys, xs = np.nonzero(mask)
    box = f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}"
    (tmp_path / "boxes.csv").write_text(f"image,x0,y0,x1,y1\nbroken.png,{box}\ngood.png,{box}\n")
    batch = ["segment", "--batch", str(tmp_path), "--boxes-file", str(tmp_path / "boxes.csv"),
             "--out-dir", str(tmp_path / "out"), "--model", trained_tiny, "--device", "cpu"]
    assert main(batch) == 1  # one image failed; the other was still segmented
    report = json.loads((tmp_path / "out" / "segment_report.json").read_text())
    assert [r["image"] for r in report["succeeded"]] == [str(tmp_path / "good.png")]
    assert report["failed"][0]["image"] == str(tmp_path / "broken.png")
    assert tifffile.imread(tmp_path / "out" / "good_mask.tif").max() == 1
    assert not (tmp_path / "out" / "broken_mask.tif").exists()
    # Again: the report and the mask exist, so nothing runs and nothing is replaced.
    assert main(batch) == 2 and "exists" in capsys.readouterr().err
    # A missing image is found before any work.
    (tmp_path / "boxes.csv").write_text(f"image,x0,y0,x1,y1\nnone.png,{box}\n")
    assert main(batch[:-4] + ["--out-dir", str(tmp_path / "out2")] + batch[-4:]) == 2
    assert "not in" in capsys.readouterr().err and not (tmp_path / "out2").exists()
    # One image's outputs are a set: when the second cannot be written, the first goes.
    out = tmp_path / "set_mask.tif"
    assert main(["segment", str(tmp_path / "good.png"), "--box", box, "--out", str(out),
                 "--uncertainty", str(tmp_path / "boxes.csv" / "u.tif"), "--model",
                 trained_tiny, "--device", "cpu"]) != 0
    capsys.readouterr()
    assert not out.exists()
