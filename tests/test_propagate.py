"""Propagation and precompute logic without a viewer (napari_imedsam.propagate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_imedsam.session_holder import ModelSpec, SessionHolder
from napari_imedsam.boxes import check_image
from napari_imedsam.model import build_model
from napari_imedsam.propagate import (
    Job,
    StopRule,
    box_of_mask,
    check_mask,
    iter_propagation,
    keep_in_box,
    nearby_order,
    precompute_body,
    slice_order,
)


def _ball(depth: int = 24, size: int = 48, centre=(10, 22, 20), radius: float = 6.5):
    """A ball whose centre drifts 0.7 px per slice along x: boxes must follow it."""
    z, y, x = np.mgrid[:depth, :size, :size]
    cz, cy, cx = centre
    drift = 0.7 * (z - cz)
    return (z - cz) ** 2 + (y + 0.5 - cy) ** 2 + (x + 0.5 - cx - drift) ** 2 < radius**2


def _model_in_box(volume: np.ndarray, calls: list):
    """A stand-in for the model: the true object, but only near the box it is given
    (the session decodes a window of the box plus 25 %)."""
    def segment_slice(plane: int, box) -> np.ndarray:
        calls.append((plane, box))
        x0, y0, x1, y1 = box
        window = np.zeros(volume.shape[1:], bool)
        gx, gy = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
        window[max(0, int(y0 - gy)):int(y1 + gy) + 1, max(0, int(x0 - gx)):int(x1 + gx) + 1] = True
        return volume[plane] & window
    return segment_slice


def test_box_of_mask_encloses_with_margin_and_clips():
    mask = np.zeros((40, 30), bool)
    mask[10:20, 5:15] = True  # pixels 10..19, 5..14: edges [5, 15) x [10, 20)
    assert box_of_mask(mask) == (3.0, 8.0, 17.0, 22.0)  # 2-pixel floor on the margin
    big = np.zeros((200, 200), bool)
    big[50:150, 60:100] = True
    assert box_of_mask(big, StopRule(grow=0.1)) == (56.0, 40.0, 104.0, 160.0)  # 10 % of size
    corner = np.zeros((40, 30), bool)
    corner[:3, 27:] = True
    assert box_of_mask(corner) == (25.0, 0.0, 30.0, 5.0)  # clipped to the slice
    assert box_of_mask(np.zeros((5, 5), bool)) is None


def test_keep_in_box_drops_blobs_outside_and_check_mask_reasons():
    mask = np.zeros((40, 40), bool)
    mask[5:10, 5:10] = True  # the object, in the box
    mask[30:35, 30:38] = True  # a neighbour the decoder's margin caught
    kept = keep_in_box(mask, (4.0, 4.0, 12.0, 12.0))
    assert kept[5:10, 5:10].all() and not kept[30:, 30:].any()
    rule = StopRule(min_pixels=4, min_fraction=0.05, max_growth=4.0)
    area = np.zeros((40, 40), bool)
    assert check_mask(area, 100, 400, rule) == "no object found"
    area[:3, :5] = True  # 15 px < 5 % of 400
    assert "faded" in check_mask(area, 100, 400, rule)
    area[:10, :30] = True  # 300 px after 50: six-fold
    assert "grew 6.0-fold" in check_mask(area, 50, 400, rule)
    assert check_mask(area, 200, 400, rule) is None


def test_slice_orders():
    assert slice_order(3, 6, "both") == {"up": [4, 5], "down": [2, 1, 0]}
    assert slice_order(0, 6, "down") == {"down": []}
    assert slice_order(5, 6, "up") == {"up": []}
    with pytest.raises(ValueError, match="direction"):
        slice_order(1, 4, "sideways")
    with pytest.raises(ValueError, match="outside"):
        slice_order(9, 4, "up")
    assert nearby_order(5, 8, 3) == [5, 6, 4, 7, 3, 2]
    assert nearby_order(0, 3, 10) == [0, 1, 2]


def test_propagation_follows_a_drifting_ball_and_stops_where_it_ends():
    ball = _ball()
    present = [z for z in range(len(ball)) if ball[z].any()]
    calls: list = []
    gen = iter_propagation(_model_in_box(ball, calls), 10, ball[10], len(ball), "both")
    steps = []
    with pytest.raises(StopIteration) as stop:
        while True:
            steps.append(next(gen))
    summary = stop.value.value
    got = {s.plane: s.mask for s in steps}
    # Every slice of the ball but the tips fading below 5 % of the start area.
    floor = 0.05 * ball[10].sum()
    expected = [z for z in present if z != 10 and ball[z].sum() >= floor]
    assert sorted(got) == expected
    for plane, mask in got.items():
        assert np.array_equal(mask, ball[plane]), plane  # the box always held the object
    assert [s.plane for s in steps if s.direction == "up"] == [z for z in expected if z > 10]
    assert summary.planes == len(expected)
    assert summary.ended_at == {"up": max(expected) + 1, "down": min(expected) - 1}
    assert "ended at slice" in summary.reasons["up"]
    # Each box came from the previous slice's mask.
    for plane, box in calls:
        source = ball[plane - 1] if plane > 10 else ball[plane + 1]
        assert box == box_of_mask(source)


def test_propagation_stops_on_a_leak_and_on_request():
    ball = _ball()

    def leaky(plane, box):
        mask = ball[plane].copy()
        if plane == 13:  # the model grabs a big neighbour touching the box
            mask[: int(box[3]), :] = True
        return mask

    steps = list(iter_propagation(leaky, 10, ball[10], len(ball), "up"))
    assert [s.plane for s in steps] == [11, 12]
    # On request: polled before every slice, what was done is kept.
    done: list[int] = []
    gen = iter_propagation(lambda p, b: ball[p], 10, ball[10], len(ball), "both",
                           should_stop=lambda: len(done) >= 2)
    summary = None
    try:
        while True:
            done.append(next(gen).plane)
    except StopIteration as stop:
        summary = stop.value
    assert done == [11, 12] and summary.ended_at == {}
    assert summary.reasons == {"up": "stopped before slice 13", "down": "stopped before slice 9"}
    with pytest.raises(ValueError, match="no pixels"):
        next(iter_propagation(lambda p, b: ball[p], 0, ball[0], len(ball)))


def test_precompute_body_fills_the_cache_and_stops():
    torch.manual_seed(0)
    holder = SessionHolder()
    holder.pinned = build_model("tiny")
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1000, (6, 32, 32)).astype(np.int16)
    spec = ModelSpec("tiny", None, "cpu")
    job = Job()
    body = precompute_body(holder, spec, volume, [2, 3, 1, 4], "abdomen", job)
    assert next(body) == 2 and next(body) == 3
    job.stop()
    with pytest.raises(StopIteration) as stop:
        next(body)
    assert stop.value.value == (2, None)
    session = holder.session_for(spec)
    assert len(session.cache) == 2
    # A box on a precomputed slice, with the same window, finds its embedding.
    hits = session.cache.hits
    session.set_image(volume[3], window="abdomen")
    assert session.cache.hits == hits + 1 and len(session.cache) == 2
    session.set_image(volume[3], window="lung")  # another window is another embedding
    assert len(session.cache) == 3


def test_channels_last_layers_are_refused_with_advice():
    with pytest.raises(ValueError, match="channel_axis"):
        check_image((64, 64, 2), rgb=False)
    check_image((2, 64, 64), rgb=False)  # a channel stack: planes on a slider
    check_image((5, 64, 64, 3), rgb=True)  # an RGB volume


def test_default_model_stops_within_a_slice_of_a_synthetic_organ(tmp_path, monkeypatch):
    """The shipped model and the stop rule measured for it, end to end: propagated from
    the middle of an organ past both of its ends, next to a neighbour that continues,
    the labels stay within one slice of the organ's true span."""
    from napari_imedsam.propagate import MEASURED_STOPS, propagate_body
    from napari_imedsam.train.synthetic_volume import TARGET, synthetic_ct_volume

    monkeypatch.setenv("IMEDSAM_CACHE_DIR", str(tmp_path))
    # Volumes other than the 16 the thresholds were measured on (seed 0).
    volume, labels = synthetic_ct_volume(np.random.default_rng(7), depth=17, size=128,
                                         span=(4, 12))
    truth = labels == TARGET
    holder, spec = SessionHolder(), ModelSpec("medsam_lite", None, "cpu")
    session = holder.session_for(spec)
    assert session.model.config.variant in MEASURED_STOPS
    rows, cols = np.nonzero(truth[8])
    session.set_image(volume[8], window="abdomen")
    start = session.predict(np.asarray([[cols.min(), rows.min(), cols.max() + 1,
                                          rows.max() + 1]])).masks()[0]
    body = propagate_body(holder, spec, volume, 8, start, "both", "abdomen", Job())
    planes = [8]
    try:
        while True:
            planes.append(next(body).plane)
    except StopIteration as stop:
        summary = stop.value
    assert summary.error is None, summary.error
    assert 3 <= min(planes) <= 5 and 11 <= max(planes) <= 13, (sorted(planes), summary)
    assert set(summary.ended_at) == {"up", "down"}  # both ends found, not the volume's edge
    assert "ended at slice" in summary.describe()
