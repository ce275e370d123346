"""Zoom-preview geometry without a viewer (napari_imedsam.zoom)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.zoom import (
    box_in_region,
    plan_view,
    preview_labels,
    preview_transform,
    sample_factors,
    visible_region,
)


def test_visible_region_snaps_outward_and_clips():
    # 4 screen px per world unit: a 100 x 200 canvas shows 25 x 50 world units.
    region = visible_region((50.0, 60.0), 4.0, (100, 200), (1.0, 1.0), (0.0, 0.0), (128, 128))
    # rows: world 37.5..62.5 = pixel edges 38..63; cols: 35..85 -> edges 35.5..85.5
    assert region == (38.0, 35.0, 63.0, 86.0)
    # Scale 2 and an offset: world = 10 + 2 * data.
    region = visible_region((50.0, 60.0), 4.0, (100, 200), (2.0, 2.0), (10.0, 10.0), (128, 128))
    assert region == (14.0, 13.0, 27.0, 38.0)  # pixel 12 only touches the view
    # Partly off the image: clipped; entirely off: None.
    assert visible_region((0.0, 0.0), 4.0, (100, 200), (1, 1), (0, 0), (64, 64)) == (
        0.0, 0.0, 13.0, 26.0)
    assert visible_region((500.0, 500.0), 4.0, (100, 200), (1, 1), (0, 0), (64, 64)) is None


@pytest.mark.parametrize("seed", range(5))
def test_visible_region_covers_exactly_the_pixels_in_view(seed):
    rng = np.random.default_rng(seed)
    scale, translate = rng.uniform(0.3, 3, 2), rng.uniform(-20, 20, 2)
    centre, zoom = rng.uniform(200, 300, 2), rng.uniform(1, 10)
    canvas = rng.integers(50, 400, 2)
    region = visible_region(centre, zoom, canvas, scale, translate, (10_000, 10_000))
    for axis, (lo, hi) in enumerate(((region[0], region[2]), (region[1], region[3]))):
        view_lo = centre[axis] - canvas[axis] / (2 * zoom)
        view_hi = centre[axis] + canvas[axis] / (2 * zoom)
        # pixel i spans world [t + s (i - 0.5), t + s (i + 0.5)]
        first = translate[axis] + scale[axis] * (lo - 0.5)
        last = translate[axis] + scale[axis] * (hi - 1 + 0.5)
        assert first <= view_lo + 1e-9 and last >= view_hi - 1e-9  # nothing in view missed
        assert first + scale[axis] > view_lo and last - scale[axis] < view_hi  # no spare pixel


def test_sample_factors():
    assert sample_factors(1.0, (1, 1)) is None  # one screen pixel per image pixel
    assert sample_factors(1.4, (1, 1)) is None
    assert sample_factors(2.2, (1, 1)) == (3, 3)
    assert sample_factors(4.0, (1, 1)) == (4, 4)
    assert sample_factors(3.0, (1.0, 0.5)) == (3, 2)  # anisotropic pixels
    assert sample_factors(1000.0, (1, 1)) == (64, 64)  # capped


@pytest.mark.parametrize("seed", range(5))
def test_preview_cells_nest_inside_image_pixels(seed):
    """Each preview cell's centre, mapped back to the image, lies in the pixel it
    refines, and the f x f cells of a pixel are centred on that pixel's centre."""
    rng = np.random.default_rng(seed)
    scale, translate = rng.uniform(0.3, 3, 2), rng.uniform(-20, 20, 2)
    r0, c0 = rng.integers(0, 50, 2)
    rows, cols, fy, fx = *rng.integers(1, 20, 2), *rng.integers(1, 9, 2)
    region = (float(r0), float(c0), float(r0 + rows), float(c0 + cols))
    p_scale, p_translate = preview_transform(region, (rows * fy, cols * fx), scale, translate)
    for axis, (start, f, n) in enumerate(((r0, fy, rows), (c0, fx, cols))):
        cells = np.arange(n * f)
        world = p_translate[axis] + p_scale[axis] * cells
        data = (world - translate[axis]) / scale[axis]  # image data coords (pixel centres)
        assert np.array_equal(np.floor(data + 0.5), start + cells // f)
        assert np.allclose(data.reshape(n, f).mean(axis=1), start + np.arange(n))


def test_plan_view_limits_and_zoomed_out():
    args = ((32.0, 32.0), 5.0, (400, 600), (1.0, 1.0), (0.0, 0.0), (64, 64))
    view = plan_view(*args)
    assert view.region == (0.0, 0.0, 64.0, 64.0) and view.out_shape == (320, 320)
    assert view.factors == (5.0, 5.0) and view.scale == (0.2, 0.2)
    assert view.translate == pytest.approx((-0.4, -0.4))  # -0.5 + 0.1
    small = plan_view(*args, max_points=200 * 200)
    assert small.out_shape == (192, 192)  # factor 3: the finest that fits
    assert plan_view(*args, max_points=64 * 64) is None
    assert plan_view((32.0, 32.0), 1.2, (400, 600), (1, 1), (0, 0), (64, 64)) is None


def test_preview_labels_and_box_overlap():
    prob = np.zeros((2, 4, 4), np.float32)
    prob[0, :2] = 0.9
    prob[1, 1:3] = 0.8
    prob[1, 0] = 0.95
    labels = preview_labels(prob, [7, 3])
    assert labels[0].tolist() == [3] * 4  # the more probable object wins
    assert labels[1].tolist() == [7] * 4 and labels[2].tolist() == [3] * 4
    assert labels[3].tolist() == [0] * 4
    assert labels.dtype == np.int32
    assert box_in_region((10, 10, 20, 20), (0, 0, 15, 15))
    assert not box_in_region((10, 10, 20, 20), (0, 0, 10, 30))  # touching edges only


def test_the_preview_answers_each_box_with_its_own_class():
    """Two boxes of two classes in view: one decode per class, each box's own."""
    import torch

    from napari_imedsam.model import build_model
    from napari_imedsam.model.classes import ClassInfo, expand_classes
    from napari_imedsam.session_holder import ModelSpec, SessionHolder
    from napari_imedsam.zoom import PreviewJob, ViewGeometry, preview_body

    torch.manual_seed(0)
    model = expand_classes(build_model("tiny").eval(), (ClassInfo("yes", 1), ClassInfo("no", 2)))
    model.adapter_sha256 = "test"
    with torch.no_grad():  # head 0 answers yes everywhere, head 1 no
        model.implicit_decoder.coarse.heads.bias.view(2, -1)[:, 0] = torch.tensor([30.0, -30.0])
        for head, sign in zip(model.implicit_decoder.fine.heads, (30.0, -30.0)):
            head[-1].bias.fill_(sign)
    holder = SessionHolder()
    holder.pinned = model
    image = np.zeros((64, 64, 3), np.uint8)
    view = ViewGeometry((0.0, 0.0, 64.0, 64.0), (64, 64), (1.0, 1.0), (0.0, 0.0))
    job = PreviewJob(1, ModelSpec("tiny", device="cpu", head=0), image, None, None,
                     [(4.0, 4.0, 28.0, 28.0), (36.0, 36.0, 60.0, 60.0)], [5, 7], view,
                     heads=[0, 1])
    outcome = preview_body(holder, job)
    assert outcome.error is None
    assert (outcome.labels[8:24, 8:24] == 5).all() and not (outcome.labels == 7).any()
    job.heads = [1, 0]
    labels = preview_body(holder, job).labels
    assert (labels[40:56, 40:56] == 7).all() and not (labels == 5).any()
