"""Bounded-memory inference: tiled decoding and box-by-box merging (inference.merge)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_imedsam.inference import session as session_module
from napari_imedsam.inference.merge import BandMerge, predict_merged
from napari_imedsam.inference.session import SegmentationSession, boundary_polygons, tiles
from napari_imedsam.model import build_model


@pytest.fixture(scope="module")
def session() -> SegmentationSession:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    s = SegmentationSession(build_model("tiny"), device="cpu", mode="imedsam", accelerate=False)
    s.set_image(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    return s


BOXES = np.array([[5, 5, 60, 50], [40, 30, 110, 85], [50, 35, 70, 60], [0, 0, 120, 90]],
                 np.float64)


def test_tiles_cover_a_window_exactly_once():
    window = (3, 5, 2051, 1100)
    cover = np.zeros((2051, 1100), int)
    parts = tiles(window, 1024)
    for r0, c0, r1, c1 in parts:
        assert r1 - r0 <= 1024 and c1 - c0 <= 1024
        cover[r0:r1, c0:c1] += 1
    assert len(parts) == 2 * 2 and (cover[3:, 5:] == 1).all() and cover.sum() == 2048 * 1095


def test_merging_strip_by_strip_gives_the_labels_of_one_big_answer(session):
    session.use_decoder("sam")  # deterministic: the merge must change nothing
    try:
        whole = session.predict(BOXES, scale=1.5)
        # A budget of 3 rows of one box at a time: 45 strips, each box sent to its own.
        merged = predict_merged(session, BOXES, scale=1.5, budget=3 * 180 * 10)
        assert merged.labels.dtype == np.uint8 and merged.uncertainty is None  # 4 ids
        assert np.array_equal(merged.labels, whole.labels())
        assert np.allclose(merged.iou, whole.iou)
    finally:
        session.use_decoder("imedsam")
    whole = session.predict(BOXES, scale=1.5)
    merged = predict_merged(session, BOXES, scale=1.5, polygons=True, budget=20 * 180 * 10)
    assert set(np.unique(merged.labels)) == set(np.unique(whole.labels()))
    assert (merged.labels == whole.labels()).mean() > 0.98  # MC draws differ per call
    assert np.abs(merged.uncertainty - np.sqrt(whole.uncertainty.max(axis=(0, 1)))).mean() < 0.01
    # Outlines are traced on each box's own window: the same points, the same outline.
    expected = boundary_polygons(whole)
    assert [len(p) for p in merged.polygons] == [len(p) for p in expected]
    for got, want in zip(merged.polygons, expected):
        for a, b in zip(got, want):
            assert a.shape == b.shape and np.abs(a - b).max() < 0.5


def test_tiled_decoding_matches_one_window(session, monkeypatch):
    session.use_decoder("sam")  # deterministic: tiles must give exactly the same map
    try:
        whole = session.predict(BOXES[:2], scale=2.0)
        monkeypatch.setattr(session_module, "TILE", 37)
        tiled = session.predict(BOXES[:2], scale=2.0)
        assert np.array_equal(whole.prob, tiled.prob)
    finally:
        session.use_decoder("imedsam")
        monkeypatch.undo()
    whole = session.predict(BOXES[:2], scale=2.0, adaptive=False)
    monkeypatch.setattr(session_module, "TILE", 37)
    tiled = session.predict(BOXES[:2], scale=2.0, adaptive=False)
    # MC dropout draws per call, so tiles differ a little in probability, not in mask.
    assert (whole.masks() == tiled.masks()).mean() > 0.99
    assert np.abs(whole.prob - tiled.prob).mean() < 0.02


def test_bands_stream_to_tiff_files_and_read_back_as_the_merged_labels(session, tmp_path):
    """What `imedsam segment` does: bands go to disk as they are finished; the files
    read back as the in-memory merge, and rows no box reaches are 0."""
    import tifffile

    from napari_imedsam.saving import TiffRows, staged_files

    session.use_decoder("sam")  # deterministic
    try:
        boxes = BOXES[[0, 2]]  # rows 5..60 of 90 (with the margin): the last bands reach no box
        whole = predict_merged(session, boxes, scale=1.0, budget=7 * 120 * 10)
        merge = BandMerge(session, boxes, scale=1.0, first_id=300, budget=7 * 120 * 10)
        assert merge.dtype == np.uint16  # ids 300 and 301
        out = tmp_path / "labels.tif"
        with staged_files([out]) as (staged,), TiffRows(staged, merge.shape, merge.dtype,
                                                        resolution=(1.0, 1.0)) as rows:
            seen = 0
            for band in merge:
                rows.write(band.row0, band.labels)
                seen += len(band.labels)
        assert seen < merge.shape[0]  # bands outside every box were skipped
        back = tifffile.imread(out)
        assert back.dtype == np.uint16 and back.shape == merge.shape
        expected = np.where(whole.labels > 0, whole.labels.astype(np.uint16) + 299, 0)
        assert np.array_equal(back, expected)
        assert np.allclose(merge.iou, whole.iou)
        semantic = predict_merged(session, boxes, scale=1.0)
        valued = np.zeros(merge.shape, np.uint8)
        for band in BandMerge(session, boxes, scale=1.0, class_value=7):
            valued[band.row0:band.row0 + len(band.labels)] = band.labels
        assert np.array_equal(valued, np.where(semantic.labels > 0, 7, 0))
    finally:
        session.use_decoder("imedsam")


def test_masks_box_by_box_equal_one_predict_call(session):
    """The export's decode: each box alone on its window gives the masks (and the
    uncertainty's maximum) of one call for all boxes on the whole grid."""
    from napari_imedsam.inference.merge import masks_box_by_box

    session.use_decoder("sam")  # deterministic
    try:
        whole = session.predict(BOXES, scale=2.0)
        masks, unc = masks_box_by_box(session, BOXES, scale=2.0)
        assert unc is None and masks.shape == (4, 180, 240)
        assert np.array_equal(masks, whole.masks())
    finally:
        session.use_decoder("imedsam")
    whole = session.predict(BOXES, scale=2.0)
    masks, unc = masks_box_by_box(session, BOXES, scale=2.0)
    assert (masks == whole.masks()).mean() > 0.98  # MC draws differ per call
    assert np.abs(unc - np.sqrt(whole.uncertainty.max(axis=(0, 1)))).mean() < 0.01


def test_box_windows_do_not_compute_the_error_map_they_do_not_use(session, monkeypatch):
    """Export decodes box by box for the masks and the spread only: the error map (a
    distance transform per window) was computed for each object and thrown away."""
    from napari_imedsam.inference.merge import box_windows

    calls = []

    def error_model(prob, unc, pixel):  # noqa: ANN001, ANN202
        calls.append(prob.shape)
        return np.zeros_like(prob)

    monkeypatch.setattr(session.model, "error_model", error_model, raising=False)
    windows = list(box_windows(session, BOXES, scale=2.0))
    assert len(windows) == 4 and calls == []
    result = session.predict(BOXES[:1], scale=2.0)  # a plain call still makes it
    assert len(calls) == 1 and result.error is not None
    assert session.predict(BOXES[:1], scale=2.0, error_map=False).error is None
