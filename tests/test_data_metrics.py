"""Data loading and metrics: conversions, folder layouts, splits, boxes, scores, baselines."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_imedsam.train.data import (
    as_rgb_uint8,
    box_of,
    jitter_box,
    list_pairs,
    load_ct_slices,
    load_folder,
    object_ids,
    read_image,
    read_mask,
    read_split,
    select_split,
)
from napari_imedsam.train.metrics import (
    box_mask,
    dice,
    ellipse_in_box,
    hausdorff,
    hd95,
    resize_mask,
    summarize,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KVASIR = DATA / "kvasir-sessile"
SPLIT_CSV = KVASIR / "splits" / "surrogate_seed4200_118tr-39val-39ts.csv"
CT = DATA / "ct-slices"
needs_kvasir = pytest.mark.skipif(not KVASIR.is_dir(), reason=f"shared data not found at {KVASIR}")
needs_ct = pytest.mark.skipif(not CT.is_dir(), reason=f"shared data not found at {CT}")


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path)


# ---------------------------------------------------------------- as_rgb_uint8


def test_rgb_uint8_is_unchanged():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(as_rgb_uint8(img), img)


@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 1)])
def test_grey_is_repeated(shape):
    grey = np.arange(24, dtype=np.uint8).reshape(shape)
    out = as_rgb_uint8(grey)
    assert out.shape == (6, 4, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey.reshape(6, 4))


def test_rgba_drops_alpha():
    img = np.zeros((3, 3, 4), dtype=np.uint8)
    img[..., 0], img[..., 3] = 10, 200
    out = as_rgb_uint8(img)
    assert out.shape == (3, 3, 3)
    assert out[..., 0].max() == 10 and out[..., 1:].max() == 0


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.float64])
def test_other_dtypes_are_percentile_scaled(dtype):
    ramp = np.linspace(-1000 if dtype == np.int16 else 0, 3000, 10_000).reshape(100, 100).astype(dtype)
    out = as_rgb_uint8(ramp)
    assert out.dtype == np.uint8 and out.shape == (100, 100, 3)
    # 0.5 % of pixels lie beyond each percentile (plus a few that round to the end
    # value), so both ends saturate, but only ~0.5-1 % of the image.
    assert out.min() == 0 and out.max() == 255
    for end in (0, 255):
        assert 50 <= (out[..., 0] == end).sum() <= 100
    assert np.all(np.diff(out[..., 0].ravel().astype(int)) >= 0)  # monotonic


def test_constant_and_nonfinite():
    assert as_rgb_uint8(np.full((4, 4), 7.5)).max() == 0
    img = np.linspace(0, 1, 400).reshape(20, 20)
    img[0, 0], img[0, 1], img[0, 2] = np.nan, np.inf, -np.inf
    out = as_rgb_uint8(img)
    assert out[0, :3, 0].tolist() == [0, 0, 0]
    assert out.max() == 255


@pytest.mark.parametrize("shape", [(4, 5, 6), (4, 5, 2), (4, 5, 3, 3), (5,), (4, 5, 5)])
def test_unsupported_shapes_raise(shape):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        as_rgb_uint8(np.zeros(shape, dtype=np.uint8))


# ---------------------------------------------------------------- read_mask / read_image


def test_read_mask_cleans_jpeg_noise(tmp_path):
    rng = np.random.default_rng(1)
    truth = np.zeros((40, 50), dtype=bool)
    truth[10:30, 5:25] = True
    noisy = np.where(truth, rng.integers(250, 256, truth.shape), rng.integers(0, 6, truth.shape)).astype(np.uint8)
    _save_png(tmp_path / "m.png", noisy)
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == np.uint8  # {0, 1} in a byte a pixel (int32 took 4)
    np.testing.assert_array_equal(mask, truth.astype(np.uint8))


def test_read_mask_noisy_empty_stays_empty(tmp_path):
    _save_png(tmp_path / "e.png", np.random.default_rng(2).integers(0, 9, (20, 20)).astype(np.uint8))
    assert read_mask(tmp_path / "e.png").sum() == 0


@pytest.mark.parametrize("on", [1, 255, 100])
def test_read_mask_two_valued_encodings(tmp_path, on):
    arr = np.zeros((8, 8), dtype=np.uint8)
    arr[2:5, 3:6] = on
    _save_png(tmp_path / "b.png", arr)
    assert read_mask(tmp_path / "b.png").sum() == 9


def test_read_mask_rgb_and_labels(tmp_path):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[1:3, 1:3, 0] = 255  # a red mask: only one channel is set
    _save_png(tmp_path / "rgb.png", rgb)
    assert read_mask(tmp_path / "rgb.png").sum() == 4
    labels = np.zeros((6, 6), dtype=np.uint16)
    labels[0, 0], labels[5, 5], labels[2, 2] = 1, 2, 300
    tifffile.imwrite(tmp_path / "l.tif", labels)
    out = read_mask(tmp_path / "l.tif", binary=False)
    assert out.dtype == np.int32 and object_ids(out) == [1, 2, 300]
    tifffile.imwrite(tmp_path / "f.tif", np.full((4, 4), 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match="non-integer"):
        read_mask(tmp_path / "f.tif", binary=False)


def test_read_image_tiff_uint16(tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", np.arange(400, dtype=np.uint16).reshape(20, 20) * 10)
    img = read_image(tmp_path / "x.tif")
    assert img.shape == (20, 20, 3) and img.dtype == np.uint8 and img.max() == 255


# ---------------------------------------------------------------- folders and splits


@needs_kvasir
def test_list_pairs_kvasir():
    pairs = list_pairs(KVASIR)
    assert len(pairs) == 196
    assert pairs == sorted(pairs)
    name, image_path, mask_path = pairs[0]
    assert image_path.name == mask_path.name == name
    assert image_path.parent.name == "images" and mask_path.parent.name == "masks"


def _cvc_layout(root: Path) -> tuple[Path, Path]:
    """A CVC-ClinicDB-like tree: 'Original' + 'Ground Truth', TIFF, one image lacking a mask."""
    images, masks = root / "Original", root / "Ground Truth"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(3)
    for i in (1, 2, 10):
        tifffile.imwrite(images / f"{i}.tif", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        mask = np.zeros((12, 16), dtype=np.uint8)
        mask[2:6, 3:3 + i] = 255
        tifffile.imwrite(masks / f"{i}.tif", mask)
    tifffile.imwrite(images / "99.tif", np.zeros((12, 16, 3), dtype=np.uint8))
    return images, masks


def test_list_pairs_explicit_folders_tiff(tmp_path):
    images, masks = _cvc_layout(tmp_path)
    with pytest.warns(UserWarning, match="1 image"):
        pairs = list_pairs(images_dir=images, masks_dir=masks)
    assert [p[0] for p in pairs] == ["1.tif", "10.tif", "2.tif"]
    with pytest.warns(UserWarning):
        items = load_folder(images_dir=images, masks_dir=masks)
    assert [int(it.labels.sum()) for it in items] == [4, 40, 8]
    assert items[0].image.shape == (12, 16, 3)


def test_list_pairs_matches_by_stem_across_extensions(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _save_png(tmp_path / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    _save_png(tmp_path / "masks" / "a.bmp", np.zeros((4, 4), np.uint8))
    assert [(n, m.name) for n, _, m in list_pairs(tmp_path)] == [("a.png", "a.bmp")]


def test_list_pairs_errors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match="no image/mask pairs"):
        list_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        list_pairs(tmp_path / "nope")
    with pytest.raises(ValueError):
        list_pairs()


@needs_kvasir
def test_kvasir_split_sizes():
    pairs, split = list_pairs(KVASIR), read_split(SPLIT_CSV)
    sizes = {s: len(select_split(pairs, split, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 118, "val": 39, "test": 39}
    chosen = [{p[0] for p in select_split(pairs, split, s)} for s in ("train", "val", "test")]
    assert len(set.union(*chosen)) == 196  # disjoint and complete


def test_split_by_stem_and_errors(tmp_path):
    pairs = [(f"{n}.jpg", Path(f"{n}.jpg"), Path(f"{n}.png")) for n in "abc"]
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("name,split\na,train\nb.jpg,Test\nc,train\n")
    split = read_split(csv_path)
    assert [p[0] for p in select_split(pairs, split, "train")] == ["a.jpg", "c.jpg"]
    assert [p[0] for p in select_split(pairs, split, "test")] == ["b.jpg"]
    with pytest.raises(ValueError, match="empty"):
        select_split(pairs, split, "val")
    with pytest.raises(ValueError, match="no image/mask pair"):
        select_split(pairs[:1], split, "train")
    (tmp_path / "bad.csv").write_text("file,fold\na,train\n")
    with pytest.raises(ValueError, match="header"):
        read_split(tmp_path / "bad.csv")


# ---------------------------------------------------------------- CT slices


@needs_ct
def test_load_ct_slices_matches_mask_files():
    items = load_ct_slices(CT)
    assert [it.name for it in items] == sorted(p.stem for p in (CT / "images").glob("*.png"))
    assert len(items) == 3
    for it in items:
        organs = sorted(p.stem[len(it.name) + 1:-len("_000")] for p in (CT / "masks").glob(f"{it.name}_*_000.png"))
        assert sorted(it.label_names.values()) == organs
        assert len(object_ids(it.labels)) == len(organs)
        assert it.image.shape[:2] == it.labels.shape and it.labels.dtype == np.int32
        for organ_id, organ in it.label_names.items():
            truth = read_mask(CT / "masks" / f"{it.name}_{organ}_000.png").astype(bool)
            assert dice(it.labels == organ_id, truth) > 0.99
    counts = {it.name: len(it.label_names) for it in items}
    assert counts == {"amos_0004_75": 3, "amos_0006_90": 4, "amos_0507_31": 0}
    # One organ has one id on every slice.
    assert items[0].label_names == {1: "aorta", 2: "inferior_vena_cava", 3: "liver"}
    assert items[1].label_names[4] == "spleen"


# ---------------------------------------------------------------- boxes


def test_box_of_pixel_edges():
    mask = np.zeros((10, 12), dtype=bool)
    mask[4, 7] = True
    assert box_of(mask) == (7.0, 4.0, 8.0, 5.0)
    mask[2:6, 1:4] = True
    assert box_of(mask) == (1.0, 2.0, 8.0, 6.0)
    with pytest.raises(ValueError):
        box_of(np.zeros((3, 3)))


def test_jitter_box_only_grows_and_stays_inside():
    rng = np.random.default_rng(4)
    box = (2.0, 3.0, 50.0, 30.0)
    grew = False
    for _ in range(200):
        x0, y0, x1, y1 = jitter_box(box, rng, max_shift=10, width=55, height=32)
        assert 0 <= x0 <= 2 and 0 <= y0 <= 3 and 50 <= x1 <= 55 and 30 <= y1 <= 32
        assert 2 - x0 <= 10 and x1 - 50 <= 10
        grew |= (x0, y0, x1, y1) != box
    assert grew
    assert jitter_box(box, rng, 0, 55, 32) == box
    with pytest.raises(ValueError):
        jitter_box(box, rng, -1, 55, 32)


# ---------------------------------------------------------------- metrics


def _square(shape=(40, 40), y=10, x=10, size=12) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y:y + size, x:x + size] = True
    return m


def test_identical_masks():
    a = _square()
    assert dice(a, a) == 1.0 and hausdorff(a, a) == 0.0 and hd95(a, a) == 0.0


def test_squares_offset_by_three():
    a, b = _square(), _square(x=13)
    assert dice(a, b) == pytest.approx(2 * 12 * 9 / (2 * 144))
    assert hausdorff(a, b) == pytest.approx(3.0)
    assert 0 < hd95(a, b) <= 3.0
    c = _square(x=13, y=14)  # diagonal offset: 3 and 4 px
    assert hausdorff(a, c) == pytest.approx(5.0)


def test_hd95_ignores_a_few_outliers():
    a = _square(shape=(200, 200), y=20, x=20, size=120)
    b = a.copy()
    b[180, 180] = True  # one stray pixel far away
    assert hausdorff(a, b) > 50
    assert hd95(a, b) == 0.0


def test_full_image_mask_has_a_boundary():
    full, inner = np.ones((20, 20), bool), _square((20, 20), 2, 2, 16)
    # The image corner is the farthest boundary pixel: 2 px from the inner square's corner in x and y.
    assert hausdorff(full, inner) == pytest.approx(math.sqrt(8))


def test_empty_conventions():
    empty, a = np.zeros((30, 40), bool), _square((30, 40))
    assert dice(empty, empty) == 1.0 and dice(a, empty) == 0.0
    assert hausdorff(empty, empty) == 0.0 and hd95(empty, empty) == 0.0
    assert hausdorff(a, empty) == hausdorff(empty, a) == 50.0  # the 30x40 diagonal
    assert hd95(empty, a) == 50.0
    with pytest.raises(ValueError):
        dice(a, np.zeros((3, 3)))


def test_ellipse_and_box_masks():
    e = ellipse_in_box((10, 20, 30, 60), (80, 50))
    assert box_of(e) == (10.0, 20.0, 30.0, 60.0)  # touches all four sides
    assert e.sum() == pytest.approx(math.pi * 10 * 20, rel=0.02)
    np.testing.assert_array_equal(e, e[::-1, :][::-1, :])
    assert ellipse_in_box((5, 5, 6, 6), (10, 10)).sum() == 1
    assert ellipse_in_box((5, 5, 5, 9), (10, 10)).sum() == 0
    assert box_mask((1, 2, 4, 7), (10, 10)).sum() == 15


def test_resize_mask_nearest_keeps_labels():
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[:5, :5], labels[5:, 5:] = 3, 7
    big = resize_mask(labels, (40, 20))
    assert big.shape == (40, 20) and big.dtype == np.int32
    assert set(np.unique(big)) == {0, 3, 7} and (big == 3).sum() == 200
    assert resize_mask(labels > 0, (5, 5)).dtype == bool


def test_summarize():
    rows = [{"name": "a", "dice": 0.5, "hd": 2, "ok": True}, {"name": "b", "dice": 1.0, "hd": 4}]
    assert summarize(rows) == {"dice": 0.75, "hd": 3.0, "n": 2}
    assert summarize([]) == {"n": 0}


# ---------------------------------------------------------------- reference baseline


@needs_kvasir
def test_kvasir_box_baselines_at_384():
    """README reference: ellipse in the tight GT box 0.840, filled box 0.780 (test split, 384x384)."""
    items = load_folder(KVASIR, split_csv=SPLIT_CSV, subset="test")
    assert len(items) == 39
    ellipse_scores, box_scores = [], []
    for it in items:
        gt = resize_mask(it.labels, (384, 384)) > 0
        box = box_of(gt)
        ellipse_scores.append(dice(ellipse_in_box(box, gt.shape), gt))
        box_scores.append(dice(box_mask(box, gt.shape), gt))
    assert np.mean(ellipse_scores) == pytest.approx(0.840, abs=0.005)
    assert np.mean(box_scores) == pytest.approx(0.780, abs=0.005)


def test_from_arrays_copies_and_checks():
    from napari_imedsam.train.data import from_arrays

    image = np.zeros((10, 12), np.uint16)
    image[2:5, 3:6] = 900
    labels = np.zeros((10, 12), np.uint8)
    labels[2:5, 3:6] = 4
    items = from_arrays([image], [labels], names=["slice_7"])
    assert items[0].name == "slice_7" and items[0].image.shape == (10, 12, 3)
    assert items[0].labels.dtype == np.int32 and items[0].labels.max() == 4
    items[0].labels[:] = 0
    assert labels.max() == 4  # the caller's array is untouched
    with pytest.raises(ValueError, match="do not match"):
        from_arrays([image], [labels[:5]])
    with pytest.raises(ValueError, match="integers"):
        from_arrays([image], [labels.astype(float)])


def test_boundary_band_ratio_sees_where_uncertainty_sits():
    from napari_imedsam.train.metrics import boundary_band_ratio

    yy, xx = np.mgrid[:80, :80]
    distance = np.hypot(yy - 40, xx - 40) - 20  # signed distance to a circle of radius 20
    mask = distance < 0
    box = (15, 15, 65, 65)
    on_edge = np.exp(-(distance / 2) ** 2)  # uncertain at the boundary only
    ratio = boundary_band_ratio(mask, 0.01 + on_edge, box)
    assert ratio > 5
    flat = boundary_band_ratio(mask, np.full(mask.shape, 0.2), box)
    assert flat == pytest.approx(1.0)
    inside = boundary_band_ratio(mask, np.where(distance < -8, 0.3, 0.01), box)
    assert inside < 1  # uncertain in the middle of the object: below one
    assert math.isnan(boundary_band_ratio(np.zeros((80, 80), bool), on_edge, box))
    with pytest.raises(ValueError, match="differ in shape"):
        boundary_band_ratio(mask, on_edge[:10], box)


def test_notifications_fit_and_point_to_the_rest():
    from napari_imedsam.widgets.common import headline

    short = "the box is too small: drag a rectangle around the whole object"
    assert headline(short) == short
    long = ("Could not load the model /a/very/long/path/to/some/model.safetensors on auto: "
            "adapter file does not exist. Choose another model (medsam_lite, vit_b, ...) or "
            "an existing checkpoint file, and check the adapter matches it.")
    cut = headline(long)
    assert len(cut) < 200 and cut.startswith("Could not load the model")
    assert cut.endswith("(details in the widget's status line)")
    assert "Choose another" not in cut
