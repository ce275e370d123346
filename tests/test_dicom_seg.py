"""DICOM SEG out and in (napari_imedsam.dicom_seg, the export, the reader, the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from dicom_series import ct_series  # noqa: E402
from napari_imedsam import dicom_seg  # noqa: E402
from napari_imedsam.io import read_dicom  # noqa: E402


def _two_objects(shape=(6, 40, 48)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[1:4, 5:15, 5:20] = 3
    labels[2:5, 20:30, 22:40] = 7
    return labels


@pytest.fixture
def series(tmp_path):
    volume = np.full((6, 40, 48), 40, np.int16)
    uid = ct_series(tmp_path / "series", volume)
    return read_dicom(tmp_path / "series"), uid


def _positions(ds) -> list[tuple]:  # noqa: ANN001
    return [tuple(round(float(v), 4) for v in f.PlanePositionSequence[0].ImagePositionPatient)
            for f in ds.PerFrameFunctionalGroupsSequence]


@pytest.mark.parametrize("labelmap", [False, True])
def test_a_seg_round_trips_pixel_exact_on_its_series_geometry(tmp_path, series, labelmap):
    import highdicom as hd

    loaded, uid = series
    labels = _two_objects()
    out = dicom_seg.write_seg(tmp_path / "seg.dcm", labels, loaded.dicom_files,
                              dicom_seg.segments_for(labels, {3: "liver"}, "liver"),
                              labelmap=labelmap,
                              model={"name": "medsam_lite", "model_sha256": "ab" * 32,
                                     "adapter_sha256": "cd" * 32})
    assert dicom_seg.is_seg(out)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in loaded.dicom_files]
    # Read back with highdicom alone: the segments' pixels, slice by slice of the series.
    seg = hd.seg.segread(str(out))
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[h.SOPInstanceUID for h in headers], combine_segments=False,
        assert_missing_frames_are_empty=True)
    assert np.array_equal(frames[..., 0] > 0, labels == 3)
    assert np.array_equal(frames[..., 1] > 0, labels == 7)
    # ... and with ours: the label values written come back.
    back = dicom_seg.read_seg(out, loaded.dicom_files)
    assert np.array_equal(back.labels, labels) and back.names == {3: "liver", 7: "object 7"}
    assert back.series_uid == uid
    # The geometry is the series': positions of the frames and the orientation.
    raw = pydicom.dcmread(str(out))
    source_positions = {h.SOPInstanceUID: tuple(round(float(v), 4)
                                                for v in h.ImagePositionPatient)
                        for h in headers}
    referenced = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                  for f in raw.PerFrameFunctionalGroupsSequence]
    assert _positions(raw) == [source_positions[r] for r in referenced]
    orientation = raw.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert [float(v) for v in orientation.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert raw.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    # Only frames with labels: BINARY one per (slice, segment), LABELMAP one per slice.
    assert int(raw.NumberOfFrames) == (4 if labelmap else 3 + 3)
    assert raw.SegmentationType == ("LABELMAP" if labelmap else "BINARY")
    # Who made it: napari-imedsam, its version, the weights' hashes; semi-automatic.
    # (a LABELMAP also lists its background as segment 0)
    segment = next(s for s in raw.SegmentSequence if s.SegmentNumber == 1)
    assert segment.SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert segment.SegmentLabel == "liver"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "napari-imedsam"
    from napari_imedsam import __version__

    assert algorithm.AlgorithmVersion == __version__
    assert "ab" * 32 in algorithm.AlgorithmParameters and "cd" * 32 in \
        algorithm.AlgorithmParameters


def test_a_seg_of_another_series_is_refused_naming_both(tmp_path, series):
    loaded, uid = series
    # The same grid, another series' UIDs:
    ct_series(tmp_path / "other", np.full((6, 40, 48), 40, np.int16), seed=1)
    other = read_dicom(tmp_path / "other")
    labels = _two_objects()
    out = dicom_seg.write_seg(tmp_path / "seg.dcm", labels, loaded.dicom_files,
                              dicom_seg.segments_for(labels))
    with pytest.raises(ValueError) as info:
        dicom_seg.read_seg(out, other.dicom_files)
    text = str(info.value)
    assert uid in text and other.series_uid in text and "\n" not in text
    # A file that is not a series of the labels' size is refused before anything is written.
    with pytest.raises(ValueError, match="slice"):
        dicom_seg.write_seg(tmp_path / "bad.dcm", labels[:3], loaded.dicom_files,
                            dicom_seg.segments_for(labels))
    assert not (tmp_path / "bad.dcm").exists()
    # Memory stays bounded with many objects: BINARY frames past the limit are refused
    # with the way out (a labelmap), which writes them.
    many = np.zeros((6, 40, 48), np.int32)
    many[2].flat[:300] = np.arange(1, 301)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(dicom_seg, "MAX_BINARY_BYTES", 1 << 20)
    with pytest.raises(ValueError, match="labelmap"):
        dicom_seg.write_seg(tmp_path / "many.dcm", many, loaded.dicom_files,
                            dicom_seg.segments_for(many))
    out = dicom_seg.write_seg(tmp_path / "many.dcm", many, loaded.dicom_files,
                              dicom_seg.segments_for(many), labelmap=True)
    monkey.undo()
    assert np.array_equal(dicom_seg.read_seg(out, loaded.dicom_files).labels, many)
    with pytest.raises(ValueError, match="segment type"):
        dicom_seg.write_seg(tmp_path / "bad.dcm", labels, loaded.dicom_files,
                            [dicom_seg.Segment(3, "x", "bone marrow")])


def test_the_napari_reader_opens_a_seg_beside_its_series_and_folders_skip_it(tmp_path, series):
    from napari_imedsam._reader import get_dicom_reader

    loaded, uid = series
    labels = _two_objects()
    seg_path = tmp_path / "series" / "labels_seg.dcm"  # inside the series' own folder
    dicom_seg.write_seg(seg_path, labels, loaded.dicom_files, dicom_seg.segments_for(labels))
    # The folder still opens as the series (the SEG is not one of its slices).
    reader = get_dicom_reader(str(tmp_path / "series"))
    (image,) = reader(str(tmp_path / "series"))
    assert image[0].shape == (6, 40, 48) and image[2] == "image"
    # The SEG alone opens its series with it, and the labels on that grid.
    reader = get_dicom_reader(str(seg_path))
    layers = reader(str(seg_path))
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    (data, meta, _), = [layer for layer in layers if layer[2] == "labels"]
    assert np.array_equal(data, labels)
    assert meta["scale"] == layers[0][1]["scale"] == (2.5, 0.7, 0.8)
    # A SEG far from its series, with no series open, is one line saying what to do.
    lone = tmp_path / "elsewhere" / "deep" / "seg.dcm"
    lone.parent.mkdir(parents=True)
    lone.write_bytes(seg_path.read_bytes())
    with pytest.raises(ValueError, match="open that series first"):
        get_dicom_reader(str(lone))(str(lone))


def test_export_writes_a_seg_for_a_dicom_image_and_refuses_others(tmp_path, series):
    from napari_imedsam import export as ex

    loaded, _ = series
    labels = _two_objects()
    exported = ex.ExportedLabels(labels, None, [])
    record = {"model": {"name": "medsam_lite"}, "objects": [
        {"id": 3, "class": {"name": "spleen", "value": 3}}, {"id": 7}]}
    geometry = ex.Geometry(labels.shape, (2.5, 0.7, 0.8), "mm",
                           dicom_files=loaded.dicom_files)
    target = ex.targets_for(tmp_path / "out.dcm", False)
    written = ex.write_export(target, exported, record, geometry, 1.0,
                              seg=ex.SegOptions("spleen", True))
    assert [p.name for p in written] == ["out.dcm", "out.json"]
    back = dicom_seg.read_seg(tmp_path / "out.dcm", loaded.dicom_files)
    assert np.array_equal(back.labels, labels) and back.names[3] == "spleen"
    assert json.loads((tmp_path / "out.json").read_text())["files"]["labels"] == "out.dcm"
    # Not from a DICOM series, or not at scale 1: refused, nothing written.
    for geo, scale in ((ex.Geometry(labels.shape, (1, 1, 1)), 1.0), (geometry, 2.0)):
        with pytest.raises(ValueError):
            ex.write_export(ex.targets_for(tmp_path / "no.dcm", False), exported, record, geo,
                            scale)
        assert not list(tmp_path.glob("no*"))


def test_segment_writes_a_seg_from_the_command_line(tmp_path):
    from napari_imedsam.cli.app import main

    volume = np.full((5, 64, 64), -100, np.int16)
    volume[:, 20:44, 16:48] = 150  # a bright block on every slice
    ct_series(tmp_path / "ct", volume)
    out = tmp_path / "block.dcm"
    assert main(["segment", str(tmp_path / "ct"), "--slice", "2", "--box", "14,18,50,46",
                 "--out", str(out), "--seg-type", "lesion"]) == 0
    loaded = read_dicom(tmp_path / "ct")
    back = dicom_seg.read_seg(out, loaded.dicom_files)
    assert back.labels[2].sum() > 0.8 * 24 * 32 and not back.labels[[0, 1, 3, 4]].any()
    raw = pydicom.dcmread(str(out))
    assert raw.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    # A .dcm for an image that is not a DICOM series is one line, nothing written.
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
    assert main(["segment", str(png), "--slice", "0", "--box", "1,1,9,9", "--out",
                 str(tmp_path / "x.dcm")]) != 0
    assert not (tmp_path / "x.dcm").exists()


def test_a_multi_frame_image_opens_sorted_and_its_seg_references_its_frames(tmp_path):
    """An enhanced (multi-frame) CT, frames stored from top to bottom: it opens as a
    volume sorted by position, in HU; its SEG references frame numbers and reads back."""
    import highdicom as hd

    volume = (np.arange(6)[:, None, None] * 10 + np.zeros((6, 40, 48))).astype(np.int16)
    ct_series(tmp_path / "single", volume)
    singles = [pydicom.dcmread(str(f)) for f in sorted((tmp_path / "single").iterdir())]
    singles.sort(key=lambda d: -float(d.ImagePositionPatient[2]))  # stored top first
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        singles, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1)
    (tmp_path / "mf").mkdir()
    enhanced.save_as(str(tmp_path / "mf" / "enhanced.dcm"))
    loaded = read_dicom(tmp_path / "mf" / "enhanced.dcm")
    assert np.array_equal(loaded.data, volume.astype(np.float32))  # sorted, rescaled to HU
    assert loaded.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert loaded.dicom_frames == (6, 5, 4, 3, 2, 1)
    labels = _two_objects()
    out = dicom_seg.write_seg(tmp_path / "mf" / "seg.dcm", labels, loaded.dicom_files,
                              dicom_seg.segments_for(labels), source_frames=loaded.dicom_frames)
    seg = hd.seg.segread(str(out))
    frames = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=enhanced.SOPInstanceUID, source_frame_numbers=[1, 2, 3, 4, 5, 6],
        combine_segments=False, assert_missing_frames_are_empty=True)
    assert np.array_equal(frames[..., 0] > 0, (labels == 3)[::-1])  # frame 1 is the top slice
    back = dicom_seg.read_seg(out, loaded.dicom_files, source_frames=loaded.dicom_frames)
    assert np.array_equal(back.labels, labels)
    from napari_imedsam._reader import get_dicom_reader

    layers = get_dicom_reader(str(out))(str(out))
    assert np.array_equal(layers[-1][0], labels) and layers[0][2] == "image"


def test_a_series_too_large_to_decode_is_refused_before_decoding(tmp_path, monkeypatch):
    """The whole series as a float32 volume is checked against the memory ceiling
    before any pixel is decoded."""
    ct_series(tmp_path / "ct", np.zeros((6, 40, 48), np.int16))
    monkeypatch.setenv("IMEDSAM_MAX_IMAGE_BYTES", str(6 * 40 * 48 * 4 - 1))
    with pytest.raises(ValueError, match="IMEDSAM_MAX_IMAGE_BYTES"):
        read_dicom(tmp_path / "ct")
    monkeypatch.setenv("IMEDSAM_MAX_IMAGE_BYTES", str(6 * 40 * 48 * 4))
    assert read_dicom(tmp_path / "ct").data.shape == (6, 40, 48)
