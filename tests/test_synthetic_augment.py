"""Tests for the synthetic training-data generator and the joint augmenter."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_imedsam.train.augment import AugmentConfig, Augmenter
from napari_imedsam.train.synthetic import synthetic_dataset, synthetic_sample

SIZE = 128  # small frames keep the suite fast; the generator is size-agnostic


@pytest.fixture(scope="module")
def mixed_samples() -> list[tuple[np.ndarray, np.ndarray]]:
    return synthetic_dataset(40, size=SIZE, kind="mixed", seed=123)


# ----------------------------------------------------------------- synthetic
@pytest.mark.parametrize("kind", ["ct", "rgb", "mixed"])
@pytest.mark.parametrize("size", [SIZE, 256])
def test_sample_shapes_and_dtypes(kind: str, size: int) -> None:
    img, lab = synthetic_sample(np.random.default_rng(0), size=size, kind=kind)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert lab.shape == (size, size) and lab.dtype == np.int32
    assert img.std() > 5  # not a constant image


def test_sample_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError):
        synthetic_sample(np.random.default_rng(0), kind="mri")


def test_determinism() -> None:
    a = synthetic_dataset(3, size=SIZE, seed=7)
    b = synthetic_dataset(3, size=SIZE, seed=7)
    c = synthetic_dataset(3, size=SIZE, seed=8)
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    assert any(not np.array_equal(ia, ic) for (ia, _), (ic, _) in zip(a, c))
    # the same generator state gives the same sample, consecutive draws differ
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    x1, y1 = synthetic_sample(r1, SIZE), synthetic_sample(r1, SIZE)
    x2 = synthetic_sample(r2, SIZE)
    np.testing.assert_array_equal(x1[0], x2[0])
    assert not np.array_equal(x1[0], y1[0])


def test_objects_count_area_connectivity(mixed_samples) -> None:
    counts = []
    for _, lab in mixed_samples:
        n = int(lab.max())
        counts.append(n)
        assert 1 <= n <= 4
        assert set(np.unique(lab).tolist()) == set(range(n + 1))  # labels 0..n, none missing
        for k in range(1, n + 1):
            obj = lab == k
            # 2..30 % targets; clipping by earlier objects may keep only 60 % of 2 %
            assert 0.01 <= obj.mean() <= 0.31
            assert ndi.label(obj)[1] == 1  # each object is one piece
    assert set(counts) == {1, 2, 3, 4}  # all counts occur over 40 samples


def test_objects_visible(mixed_samples) -> None:
    """Most objects differ from a thin background ring around them."""
    diffs = []
    for img, lab in mixed_samples:
        gray = img.astype(np.float32).mean(axis=2)
        for k in range(1, int(lab.max()) + 1):
            obj = lab == k
            ring = ndi.binary_dilation(obj, iterations=3) & (lab == 0)
            if ring.sum() >= 10:
                diffs.append(abs(gray[obj].mean() - gray[ring].mean()))
    diffs = np.asarray(diffs)
    assert diffs.size >= 40
    assert (diffs > 3.0).mean() >= 0.6  # some are deliberately subtle, most are not
    assert np.median(diffs) > 8.0


def test_kind_specific_look() -> None:
    rng = np.random.default_rng(3)
    for _ in range(6):
        img, _ = synthetic_sample(rng, SIZE, kind="ct")
        np.testing.assert_array_equal(img[..., 0], img[..., 1])
        np.testing.assert_array_equal(img[..., 1], img[..., 2])
        assert img[:4, :4].mean() < 60  # air in the corners is dark
    for _ in range(6):
        img, _ = synthetic_sample(rng, SIZE, kind="rgb")
        r, g, b = (img[..., c].astype(float).mean() for c in range(3))
        assert r > g and r > b  # pink / red mucosa


# ------------------------------------------------------------------- augment
def _border_case() -> tuple[np.ndarray, np.ndarray]:
    """Textured image with an object touching the left border."""
    img, _ = synthetic_sample(np.random.default_rng(0), SIZE, kind="rgb")
    mask = np.zeros((SIZE, SIZE), bool)
    mask[40:90, 0:30] = True
    return img, mask


def _geometric_only(**kw) -> AugmentConfig:
    return replace(AugmentConfig.identity(), **kw)


def test_augment_shapes_and_dtypes() -> None:
    img, mask = _border_case()
    aug = Augmenter(seed=0)
    for m in (mask, mask.astype(np.int32) * 5, mask.astype(np.uint16) * 300):
        out_img, out_mask = aug(img, m)
        assert out_img.shape == img.shape and out_img.dtype == np.uint8
        assert out_mask.shape == m.shape and out_mask.dtype == m.dtype


def test_augment_determinism_and_global_rng_untouched() -> None:
    img, mask = _border_case()
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    threads = torch.get_num_threads()
    a, b, c = Augmenter(seed=11), Augmenter(seed=11), Augmenter(seed=12)
    outs_a = [a(img, mask) for _ in range(5)]
    outs_b = [b(img, mask) for _ in range(5)]
    outs_c = [c(img, mask) for _ in range(5)]
    for (ia, ma), (ib, mb) in zip(outs_a, outs_b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    assert any(not np.array_equal(ia, ic) for (ia, _), (ic, _) in zip(outs_a, outs_c))
    assert torch.equal(torch_state, torch.random.get_rng_state())
    np.testing.assert_array_equal(np_state, np.random.get_state()[1])
    assert torch.get_num_threads() == threads  # the single-thread section is undone


def test_mask_values_stay_in_original_set() -> None:
    img, _ = synthetic_sample(np.random.default_rng(1), SIZE, kind="ct")
    mask = np.zeros((SIZE, SIZE), np.int32)
    mask[20:60, 30:70] = 3
    mask[70:100, 50:110] = 7
    aug = Augmenter(replace(AugmentConfig(), p_rotate=1.0, p_affine=1.0), seed=2)
    for _ in range(20):
        _, out = aug(img, mask)
        assert set(np.unique(out).tolist()) <= {0, 3, 7}


@pytest.mark.parametrize("fixed_scale", [True, False])
def test_border_object_is_kept(fixed_scale: bool) -> None:
    img, mask = _border_case()
    area0 = mask.sum()
    cfg = replace(AugmentConfig(), p_rotate=1.0, rotate_degrees=45.0, p_affine=1.0, translate=0.3)
    if fixed_scale:
        cfg = replace(cfg, scale=(1.0, 1.0))
    aug = Augmenter(cfg, seed=4)
    flips = [mask, mask[:, ::-1], mask[::-1], mask[::-1, ::-1]]
    moved = 0
    for _ in range(30):
        _, out = aug(img, mask)
        ratio = out.sum() / area0
        # rotation / shear / translation keep area; a zoom-out shrinks it by scale^2 at most
        assert ratio >= (0.9 if fixed_scale else 0.9 * cfg.scale[0] ** 2)
        moved += not any(np.array_equal(out, f) for f in flips)
    assert moved >= 10  # the check is not vacuous: most draws really resampled


def test_fallback_when_every_draw_loses_area() -> None:
    """A full-frame object loses its corners under any rotation: keep the input."""
    img, _ = _border_case()
    mask = np.ones((SIZE, SIZE), bool)
    aug = Augmenter(_geometric_only(p_rotate=1.0, rotate_degrees=40.0, max_area_loss=0.0), seed=0)
    out_img, out_mask = aug(img, mask)
    np.testing.assert_array_equal(out_mask, mask)
    np.testing.assert_array_equal(out_img, img)


@pytest.mark.parametrize(
    ("hflip", "vflip", "expect"),
    [(1.0, 0.0, lambda a: a[:, ::-1]), (0.0, 1.0, lambda a: a[::-1]), (1.0, 1.0, lambda a: a[::-1, ::-1])],
)
def test_flips_map_asymmetric_mask(hflip: float, vflip: float, expect) -> None:
    img, _ = _border_case()
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[10:20, 5:60] = 1  # an "L": asymmetric under both flips
    mask[10:80, 5:15] = 2
    out_img, out_mask = Augmenter(_geometric_only(p_hflip=hflip, p_vflip=vflip), seed=0)(img, mask)
    np.testing.assert_array_equal(out_mask, expect(mask))
    np.testing.assert_array_equal(out_img, expect(img))


def test_random_flips_are_consistent() -> None:
    img, mask = _border_case()
    aug = Augmenter(_geometric_only(p_hflip=0.5, p_vflip=0.5), seed=1)
    variants = [lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1]]
    seen = set()
    for _ in range(20):
        out_img, out_mask = aug(img, mask)
        idx = [i for i, f in enumerate(variants) if np.array_equal(out_mask, f(mask))]
        assert len(idx) == 1
        np.testing.assert_array_equal(out_img, variants[idx[0]](img))  # image moved the same way
        seen.add(idx[0])
    assert seen == {0, 1, 2, 3}


def test_intensity_only_leaves_mask_untouched() -> None:
    img, mask = _border_case()
    cfg = replace(AugmentConfig(), p_hflip=0.0, p_vflip=0.0, p_rotate=0.0, p_affine=0.0,
                  p_color_jitter=1.0, p_noise=1.0, p_posterize=0.5, p_blur=0.5, p_sharpen=0.5)
    aug = Augmenter(cfg, seed=3)
    changed = 0
    for _ in range(10):
        out_img, out_mask = aug(img, mask)
        np.testing.assert_array_equal(out_mask, mask)
        changed += int(np.abs(out_img.astype(int) - img).mean() > 1.0)
    assert changed == 10


def test_gray_stays_gray_and_identity_is_identity() -> None:
    img, lab = synthetic_sample(np.random.default_rng(2), SIZE, kind="ct")
    aug = Augmenter(replace(AugmentConfig(), p_color_jitter=1.0, p_noise=1.0), seed=5)
    for _ in range(5):
        out, _ = aug(img, lab == 1)
        np.testing.assert_array_equal(out[..., 0], out[..., 1])
        np.testing.assert_array_equal(out[..., 1], out[..., 2])
    out_img, out_mask = Augmenter(AugmentConfig.identity(), seed=0)(img, lab)
    np.testing.assert_array_equal(out_img, img)
    np.testing.assert_array_equal(out_mask, lab)
