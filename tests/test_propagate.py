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


# -- the object's appearance and key slices (issue 21) ------------------------------

def _box_filler(volume: np.ndarray):
    """A stand-in for the model past an object's end on a plain background: it answers
    every box with the box filled (a confident blob), wherever the object is."""
    def segment_slice(plane: int, box):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        mask = np.zeros(volume.shape[1:], bool)
        mask[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = True
        return mask, 0.95
    return segment_slice


def test_the_objects_appearance_keeps_it_and_drops_what_does_not_look_like_it():
    from napari_imedsam.propagate import Appearance, follow

    rng = np.random.default_rng(0)
    image = rng.normal(20, 5, (64, 64)).astype(np.float32)
    image[20:40, 10:30] = rng.normal(100, 5, (20, 20))  # the object
    image[20:40, 30:50] = rng.normal(-60, 5, (20, 20))  # fat beside it, inside the box
    truth = np.zeros((64, 64), bool)
    truth[20:40, 10:30] = True
    look = Appearance.of(image, truth)
    assert abs(look.centre - 100) < 3 and look.spread < 6
    leaky = np.zeros((64, 64), bool)
    leaky[18:42, 8:50] = True  # the object, its rim and the fat
    kept, likeness = follow(leaky, truth, image, look, StopRule())
    # The object's inside looks like it; its edge pixels' 3 x 3 means mix in the fat.
    assert 18 * 18 / leaky.sum() - 0.02 <= likeness <= 400 / leaky.sum()
    assert kept[25:35, 12:28].all() and not kept[:, 33:].any()  # object kept, fat dropped
    assert 2 * (kept & truth).sum() / (kept.sum() + truth.sum()) > 0.95
    # A component that looks like the object but lies far from the previous slice's mask
    # is something else.
    image[50:60, 50:60] = 100.0
    leaky[48:62, 48:62] = True
    kept, _ = follow(leaky, truth, image, look, StopRule())
    assert not kept[50:60, 50:60].any()
    # Without the image (or with the rule off) the model's mask is kept as it is.
    same, nan = follow(leaky, truth, None, look, StopRule())
    assert np.array_equal(same, leaky) and nan != nan
    off, _ = follow(leaky, truth, image, look, StopRule(appearance_k=None))
    assert np.array_equal(off, leaky)


def test_propagation_over_a_plain_background_stops_where_the_object_ends():
    """The model fills any box past the end of a bright object on plain noise (as
    LiteMedSAM does, with a high predicted IoU): the appearance stops it there."""
    from napari_imedsam.train.synthetic_volume import TARGET, plain_noise_volume

    volume, labels = plain_noise_volume(np.random.default_rng(3), depth=31, size=64)
    truth = labels == TARGET

    def model(plane, box):  # the truth inside the box where there is an object, else a blob
        mask, iou = _box_filler(volume)(plane, box)
        return (truth[plane] & mask, iou) if truth[plane].any() else (mask, iou)

    steps = list(iter_propagation(model, 15, truth[15], 31, "both",
                                  image_of=lambda p: volume[p]))
    planes = sorted(s.plane for s in steps)
    assert planes == [p for p in range(5, 26) if p != 15], planes
    # Without the image the blob goes on to the volume's edges, as before.
    blind = sorted(s.plane for s in iter_propagation(model, 15, truth[15], 31, "both"))
    assert blind[0] == 0 and blind[-1] == 30


def test_key_slices_are_filled_between_from_both_ends_and_never_written():
    from napari_imedsam.propagate import plan_legs

    legs = plan_legs([12, 5], 20, "both")
    assert [(g.origin, g.way, g.planes) for g in legs] == [
        (5, "up", [6, 7, 8]), (12, "down", [11, 10, 9]),
        (12, "up", list(range(13, 20))), (5, "down", [4, 3, 2, 1, 0])]
    assert [(g.origin, g.way) for g in plan_legs([3, 4, 9], 12, "up")] == [
        (4, "up"), (9, "down"), (9, "up")]  # neighbours leave no gap; "up": no run down
    ball = _ball(depth=24)
    calls: list = []
    keys = {4: ball[4], 16: ball[16]}
    gen = iter_propagation(_model_in_box(ball, calls), 10, ball[10], 24, "both", keys=keys)
    steps = list(gen)
    planes = [s.plane for s in steps]
    assert not {4, 10, 16} & set(planes)  # the user's slices are never written
    assert sorted(planes) == [p for p in range(ball.any(axis=(1, 2)).argmax(), 17 + 0)
                              if p not in (4, 10, 16)] or sorted(planes) == sorted(
        p for p in np.flatnonzero(ball.any(axis=(1, 2))) if p not in (4, 10, 16))
    # Each gap slice is answered from the nearer key slice: 5..7 from 4 (going up),
    # 8..9 from 10 (down), 11..13 from 10 (up), 14..15 from 16 (down).
    way = {s.plane: s.direction for s in steps}
    assert [way[p] for p in (5, 6, 7, 8, 9, 11, 12, 13, 14, 15)] == [
        "up", "up", "up", "down", "down", "up", "up", "up", "down", "down"]


def test_a_run_between_key_slices_that_ends_early_is_finished_from_the_other_side():
    ball = _ball(depth=24)

    failed: list = []

    def model(plane, box):  # slice 7 comes back blank the first time (from below)
        if plane == 7 and not failed:
            failed.append(plane)
            return np.zeros_like(ball[plane])
        return _model_in_box(ball, [])(plane, box)

    steps = list(iter_propagation(model, 5, ball[5], 24, "up", keys={15: ball[15]}))
    got = {s.plane: s.direction for s in steps}
    # 6 from below; 7 fails; the run down from 15 fills 14..11 and then goes on to 7.
    assert {p: got.get(p) for p in range(6, 15)} == {6: "up", 7: "down", 8: "down", 9: "down",
                                                      10: "down", 11: "down", 12: "down",
                                                      13: "down", 14: "down"}


def test_from_here_runs_one_way_to_the_next_user_slice_and_stale_slices_stop_there():
    from napari_imedsam.propagate import Summary, overlap_reach, plan_legs, stale_planes

    legs = plan_legs([3, 10, 18], 25, "up", from_plane=10)
    assert [(g.origin, g.way, g.planes) for g in legs] == [(10, "up", list(range(11, 18)))]
    legs = plan_legs([3, 10, 18], 25, "both", from_plane=3)
    assert [(g.origin, g.way, g.planes) for g in legs] == [
        (3, "up", list(range(4, 10))), (3, "down", [2, 1, 0])]
    with pytest.raises(ValueError, match="not one of"):
        plan_legs([3, 10], 25, "up", from_plane=5)
    # Past an end, earlier runs' pixels are stale up to the next user slice only.
    summary = Summary({}, ended_at={"up": 14, "down": 2})
    assert stale_planes(summary, 25, [3, 10, 18]) == {14, 15, 16, 17, 2, 1, 0}
    # The overlap's reach grows with the slice gap in pixels (5 mm over 0.8 mm: 13 px).
    assert overlap_reach(StopRule(), (5.0, 0.795, 0.795)) == 13
    assert overlap_reach(StopRule(), None) == 2 == overlap_reach(StopRule(), (1.0, 1.0, 1.0))
    assert overlap_reach(StopRule(), (0.0, 1.0, 1.0)) == 2


def test_a_slice_the_user_corrected_is_theirs_and_an_untouched_propagated_one_is_not():
    from napari_imedsam.propagate import mask_digest, user_slices

    labels = np.zeros((6, 20, 20), np.int32)
    labels[1, 5:10, 5:10] = 3  # the box's slice
    labels[2, 5:11, 5:11] = 3  # propagated
    labels[4, 5:9, 5:9] = 7  # another object
    propagated = np.zeros((20, 20), bool)
    propagated[5:11, 5:11] = True
    written = {2: {mask_digest(propagated)}, 3: {mask_digest(propagated)}}
    labels[3, 6:12, 6:12] = 3  # propagated as slice 2, then corrected with the brush
    found = user_slices(labels, 3, written)
    assert sorted(found) == [1, 3] and found[3].sum() == 36
    labels[3] = np.where(propagated, 3, 0)  # undone back to what propagation wrote
    assert sorted(user_slices(labels, 3, written)) == [1]
    assert sorted(user_slices(labels, 7, written)) == [4]


def test_propagate_on_the_command_line_writes_the_volume_on_its_own_grid(tmp_path):
    """`imedsam segment VOLUME --slice Z --box ... --propagate --key ...` with the shipped
    model: labels on the NIfTI's own grid, within a slice of the object's span."""
    import nibabel as nib

    from napari_imedsam.cli.app import main
    from napari_imedsam.io import read_nifti
    from napari_imedsam.train.synthetic_volume import plain_noise_volume

    volume, _ = plain_noise_volume(np.random.default_rng(5), depth=15, size=64,
                                        span=(3, 11))
    affine = np.diag([-0.9, 0.9, 2.5, 1.0])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    source = tmp_path / "vol.nii.gz"
    # On disk (X, Y, Z) RAS-ish; read back into the view as the plugin sees it.
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine),
             str(source))
    seen = read_nifti(source).data
    truth = read_nifti(source).data > 100
    assert truth.any(axis=(1, 2)).sum() == 9

    def box(z):
        rows, cols = np.nonzero(truth[z])
        return f"{cols.min()},{rows.min()},{cols.max() + 1},{rows.max() + 1}"

    middle = int(np.flatnonzero(truth.any(axis=(1, 2))).mean())
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(source), "--slice", str(middle), "--box", box(middle),
                 "--propagate", "--key", f"{middle - 3}:{box(middle - 3)}", "--out",
                 str(out)]) == 0
    written = nib.load(str(out))
    assert np.allclose(written.affine, affine)
    got = read_nifti(out).data > 0
    assert got.shape == seen.shape
    span, labelled = (np.flatnonzero(a.any(axis=(1, 2))) for a in (truth, got))
    assert len(np.setdiff1d(labelled, span)) <= 1 and len(np.setdiff1d(span, labelled)) <= 1
    assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) > 0.85
    # Nothing is overwritten, and a bad key slice is one line.
    assert main(["segment", str(source), "--slice", str(middle), "--box", box(middle),
                 "--propagate", "--out", str(out)]) != 0
    assert main(["segment", str(source), "--slice", str(middle), "--box", box(middle),
                 "--propagate", "--key", f"40:{box(middle)}", "--out",
                 str(tmp_path / "other.nii.gz")]) != 0
    assert not (tmp_path / "other.nii.gz").exists()
