"""The npe2 readers (NIfTI, DICOM) and the Labels writer, through napari's own calls."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from napari.layers import Labels  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from napari_imedsam import _reader, io  # noqa: E402

#: LPS storage (the DICOM convention, common in CT NIfTI), spacing 0.8 x 0.7 x 2.5 mm.
LPS_AFFINE = np.array([[-0.8, 0, 0, 12.0], [0, -0.7, 0, -30.0], [0, 0, 2.5, 100.0],
                       [0, 0, 0, 1]])


def _volume(shape=(9, 8, 5), seed=0) -> np.ndarray:
    """An (i, j, k) volume whose voxels are all distinct, so any flip shows."""
    return np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape).astype(
        np.int16) - 1000


def _nifti(path, data, affine=LPS_AFFINE):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_nifti_reader_scale_and_radiological_view(tmp_path):
    vol = _volume()
    path = _nifti(tmp_path / "ct.nii.gz", vol)
    reader = _reader.get_nifti_reader(str(path))
    assert reader is not None
    (data, kwargs, kind), = reader(str(path))
    assert kind == "image" and kwargs["name"] == "ct"
    assert kwargs["scale"] == pytest.approx((2.5, 0.7, 0.8))
    assert kwargs["units"] == ("mm",) * 3
    # LPS storage is already superior/posterior/left along k/j/i: only (i, j, k) -> (k, j, i).
    assert np.array_equal(data, vol.transpose(2, 1, 0))
    assert kwargs["contrast_limits"] == _reader.CT_CONTRAST  # HU data: a CT window
    # The same voxels stored RAS come out the same way up (rows and columns flipped back).
    ras = np.diag([0.8, 0.7, 2.5, 1.0])
    path2 = _nifti(tmp_path / "ras.nii", vol[::-1, ::-1, :].copy(), ras)
    (data2, kwargs2, _), = _reader.read_nifti_layers(str(path2))
    assert np.array_equal(data2, data) and kwargs2["scale"] == pytest.approx((2.5, 0.7, 0.8))
    # Not ours: other suffixes, several files.
    assert _reader.get_nifti_reader(str(tmp_path / "x.tif")) is None
    assert _reader.get_nifti_reader([str(path), str(path2)]) is None


def test_viewer_opens_nifti_and_integer_segmentations_as_labels(make_napari_viewer, tmp_path):
    vol = _volume()
    image = _nifti(tmp_path / "case.nii.gz", vol)
    seg = _nifti(tmp_path / "case_seg.nii.gz", (vol > 0).astype(np.uint8))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(image), plugin="napari-imedsam")
    assert layer.scale == pytest.approx((2.5, 0.7, 0.8)) and layer.data.shape == (5, 8, 9)
    assert np.allclose(layer.metadata[_reader.SOURCE_KEY]["nifti_affine"], LPS_AFFINE)
    [labels] = viewer.open(str(seg), plugin="napari-imedsam")
    assert isinstance(labels, Labels)
    assert np.array_equal(labels.data, (vol > 0).transpose(2, 1, 0))


def _dicom_slice(path, pixels: np.ndarray, z: float, series: str | None = None,
                 spacing=(0.7, 0.8)) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = list(spacing)
    ds.ImagePositionPatient = [0.0, 0.0, z]
    if series is not None:
        ds.SeriesInstanceUID, ds.SeriesDescription = f"1.2.3.{len(series)}", series
    ds.SliceThickness = 2.5
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_dicom_series_folder(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(1)
    slices = [rng.integers(0, 2000, (6, 7)) for _ in range(3)]
    folder = tmp_path / "series"
    folder.mkdir()
    # File names in reverse order of position: the reader sorts by position.
    for i, (name, z) in enumerate((("a", 5.0), ("b", 2.5), ("c", 0.0))):
        _dicom_slice(folder / f"{name}.dcm", slices[2 - i], z)
    (folder / "notes.txt").write_text("not DICOM")
    assert _reader.get_dicom_reader(str(folder)) is not None
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(folder), plugin="napari-imedsam")
    assert layer.scale == pytest.approx((2.5, 0.7, 0.8))
    assert np.allclose(layer.data, np.stack(slices) - 1024.0)  # HU, inferior slice first
    # A folder of PNGs is not a DICOM series.
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    PILImage.fromarray(np.zeros((4, 4), np.uint8)).save(pngs / "x.png")
    assert _reader.get_dicom_reader(str(pngs)) is None


def test_readers_step_aside_without_the_optional_packages(monkeypatch, tmp_path, notes):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("nibabel", "pydicom") else real(name, *a))
    assert _reader.get_nifti_reader(str(tmp_path / "a.nii.gz")) is None
    assert _reader.get_dicom_reader(str(tmp_path / "a.dcm")) is None
    messages = [m for _, m in notes]
    assert any("pip install nibabel" in m for m in messages), notes
    assert any("pip install pydicom" in m for m in messages), notes


def _labels_layer(shape=(5, 8, 9), **kwargs) -> Labels:
    data = np.zeros(shape, np.int32)
    data[..., 2:5, 3:7] = 1
    data[..., 6:, :2] = 300  # needs more than 8 bits
    return Labels(data, **kwargs)


def test_writer_tiff_png_with_spacing_and_no_overwrite(tmp_path, notes):
    layer = _labels_layer(scale=(2.5, 0.7, 0.8), units="mm")
    path = tmp_path / "masks.tif"
    assert layer.save(str(path), plugin="napari-imedsam") == [str(path)]
    with tifffile.TiffFile(path) as tif:
        assert np.array_equal(tif.asarray(), layer.data)
        page = tif.pages[0]
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert page.resolution == pytest.approx((10 / 0.8, 10 / 0.7))  # pixels per cm
        assert tif.shaped_metadata[0]["spacing"] == pytest.approx([2.5, 0.7, 0.8])
    first = path.read_bytes()
    # Saving again never replaces the file: the layer goes to the next free name.
    layer.data[0, 0, 0] = 7
    again = layer.save(str(path), plugin="napari-imedsam")
    assert again == [str(tmp_path / "masks-2.tif")] and path.read_bytes() == first
    assert tifffile.imread(again[0])[0, 0, 0] == 7
    assert any("kept the existing masks.tif" in m for _, m in notes), notes

    flat = _labels_layer((8, 9))
    png = tmp_path / "flat.png"
    flat.save(str(png), plugin="napari-imedsam")
    assert np.array_equal(np.asarray(PILImage.open(png)), flat.data)
    with tifffile.TiffFile(flat.save(str(tmp_path / "flat.tif"), plugin="napari-imedsam")[0]) as t:
        assert t.pages[0].resolutionunit == tifffile.RESUNIT.NONE  # pixels, not inches
    # A volume cannot go to PNG: napari reports it, nothing is written.
    from napari_imedsam._writer import write_labels

    with pytest.raises(ValueError, match="2D"):
        write_labels(str(tmp_path / "vol.png"), layer.data, {"scale": layer.scale})
    assert not (tmp_path / "vol.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "flat.png", "flat.tif", "masks-2.tif", "masks.tif"]  # no temporary files left


def test_writer_nifti_round_trips_onto_the_source_grid(make_napari_viewer, tmp_path):
    vol = _volume()
    source = _nifti(tmp_path / "ct.nii.gz", vol)
    viewer = make_napari_viewer()
    [image] = viewer.open(str(source), plugin="napari-imedsam")
    masks = viewer.add_labels((image.data > 0).astype(np.int32), scale=image.scale,
                              metadata=dict(image.metadata), name="masks")
    out = tmp_path / "masks.nii.gz"
    assert masks.save(str(out), plugin="napari-imedsam") == [str(out)]
    saved = nib.load(str(out))
    assert np.allclose(saved.affine, LPS_AFFINE)  # the source's own voxel grid
    assert np.array_equal(np.asarray(saved.dataobj), (vol > 0).astype(np.int16))
    # Read back through our reader: the same labels in the same place.
    (data, kwargs, _), = _reader.read_nifti_layers(str(out))
    assert np.array_equal(data, masks.data) and kwargs["scale"] == pytest.approx(image.scale)
    # Without source geometry: RAS with the layer's spacing, and still the same view.
    plain = Labels(masks.data, scale=(2.5, 0.7, 0.8), units="mm")
    out2 = tmp_path / "plain.nii"
    plain.save(str(out2), plugin="napari-imedsam")
    back = io.read_nifti(out2)
    assert np.array_equal(back.data, masks.data)
    assert back.spacing == pytest.approx((2.5, 0.7, 0.8))


def test_racing_writers_never_replace_each_other(tmp_path):
    """Four writers for one name: with atomic_save exactly one gets it; with save_new
    each gets a name of its own and every result survives."""
    import threading

    from napari_imedsam.saving import atomic_save, save_new

    target = tmp_path / "labels.tif"
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def write(i: int) -> None:
        barrier.wait()
        try:
            atomic_save(target, lambda tmp: tmp.write_text(f"writer {i}"))
            outcomes.append("ok")
        except FileExistsError:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok", "refused", "refused", "refused"]
    assert target.read_text().startswith("writer ")

    barrier = threading.Barrier(4)
    names: list[Path] = []

    def write_new(i: int) -> None:
        barrier.wait()
        names.append(save_new(tmp_path / "set.txt", lambda p: atomic_save(
            p, lambda tmp: tmp.write_text(f"set {i}"))))

    threads = [threading.Thread(target=write_new, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 4
    assert sorted(p.read_text() for p in names) == [f"set {i}" for i in range(4)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_overwrite_replaces_regular_files_only(tmp_path):
    from napari_imedsam.saving import atomic_save

    folder = tmp_path / "a folder.tif"
    folder.mkdir()
    link = tmp_path / "link.tif"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link.symlink_to(victim)
    for path in (folder, link):
        with pytest.raises(FileExistsError, match="not a regular file"):
            atomic_save(path, lambda tmp: tmp.write_text("x"), overwrite=True)
    assert folder.is_dir() and victim.read_text() == "keep me"
    plain = tmp_path / "plain.txt"
    plain.write_text("old")
    atomic_save(plain, lambda tmp: tmp.write_text("new"), overwrite=True)
    assert plain.read_text() == "new"


@pytest.mark.parametrize("name", ["big.tif", "big.nii.gz"])
def test_label_ids_beyond_int32_survive(tmp_path, name):
    from napari_imedsam._writer import write_labels_file
    from napari_imedsam.io import read_any
    from napari_imedsam.saving import label_dtype

    if name.endswith(".nii.gz"):
        pytest.importorskip("nibabel")
    labels = np.zeros((6, 8), np.int64)
    labels[1, 1], labels[2, 2], labels[3, 3] = 1, 2**31 + 5, 2**32 + 7
    assert label_dtype(labels) == np.uint64
    assert label_dtype(np.array([[0, 300]])) == np.uint16
    with pytest.raises(ValueError, match="negative"):
        label_dtype(np.array([[-1, 2]]))
    path = write_labels_file(tmp_path / name, labels, {"scale": (1.0, 1.0)})
    back = np.asarray(read_any(path).data).astype(np.int64)
    assert np.array_equal(back.reshape(labels.shape), labels)  # NIfTI keeps a 1-slice axis


def test_lying_and_bomb_files_are_refused_before_decoding(tmp_path):
    """A header that claims far more data than its file holds is refused with one line
    naming the file, before any allocation (and a text file is not a traceback)."""
    from napari_imedsam.io import read_any

    PILImage.new("L", (20000, 20000)).save(tmp_path / "bomb.png", optimize=True)
    assert (tmp_path / "bomb.png").stat().st_size < 1_000_000
    with pytest.raises(ValueError, match="bomb.png"):
        read_any(tmp_path / "bomb.png")
    (tmp_path / "text.png").write_text("<html>not an image</html>")
    with pytest.raises(ValueError, match="text.png is not a readable image"):
        read_any(tmp_path / "text.png")

    import struct

    nib = pytest.importorskip("nibabel")

    def lying_nifti(path, side: int) -> bytes:
        """A 4x4x4 NIfTI whose header then claims side^3 voxels (dim at byte 40)."""
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), path)
        raw = bytearray(path.read_bytes())
        raw[40:56] = struct.pack("<8h", 3, side, side, side, 1, 1, 1, 1)
        return bytes(raw)

    (tmp_path / "liar.nii").write_bytes(lying_nifti(tmp_path / "liar.nii", 2000))  # 16 GB
    with pytest.raises(ValueError, match="liar.nii: its header claims 2000 x 2000 x 2000"):
        read_any(tmp_path / "liar.nii")
    import gzip

    claimed = lying_nifti(tmp_path / "bomb.nii", 600)  # 432 MB from a ~1 kB file
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(claimed))
    with pytest.raises(ValueError, match="decompression bomb"):
        read_any(tmp_path / "bomb.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "words.nii.gz").write_text("hello")
    for name in ("empty.nii.gz", "words.nii.gz"):
        with pytest.raises(ValueError, match=f"{name} is not a readable NIfTI"):
            read_any(tmp_path / name)


def test_dicom_series_are_kept_apart_and_gaps_are_told(make_napari_viewer, tmp_path):
    """Two series of the same shape in one folder were merged into one volume; now the
    command line refuses with their list, napari opens one layer each, and missing
    slices, repeated positions and mixed spacing are warned about."""
    from napari_imedsam.io import read_any, read_dicom_series

    rng = np.random.default_rng(2)
    folder = tmp_path / "two"
    folder.mkdir()
    for series in ("AX", "COR post"):
        for z in (0.0, 2.5, 5.0):
            _dicom_slice(folder / f"{series}{z}.dcm", rng.integers(0, 2000, (6, 7)), z, series)
    with pytest.raises(ValueError, match="holds 2 DICOM series .*AX, 3 slice.*COR post"):
        read_any(folder)
    volumes = read_dicom_series(folder)
    assert [v.data.shape for v in volumes] == [(3, 6, 7), (3, 6, 7)]
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-imedsam")
    assert len(layers) == 2 and all(layer.data.shape == (3, 6, 7) for layer in layers)

    gappy = tmp_path / "gappy"
    gappy.mkdir()
    for i, z in enumerate((0.0, 2.5, 5.0, 12.5, 12.5)):
        _dicom_slice(gappy / f"s{i}.dcm", rng.integers(0, 2000, (6, 7)), z,
                     spacing=(0.7, 0.8) if i else (0.9, 0.9))
    with pytest.warns(UserWarning) as caught:
        loaded = read_any(gappy)
    text = " ".join(str(w.message) for w in caught)
    assert "slices missing between z = 5 and 12.5 mm" in text
    assert "repeat a position" in text and "pixel spacing differs" in text
    assert loaded.data.shape == (5, 6, 7)



@pytest.mark.parametrize("kind", ["complex", "1d"])
def test_arrays_napari_cannot_show_are_refused_by_name(tmp_path, kind):
    """Complex and 1-D data reached napari (or the model) before."""
    from napari_imedsam import _reader
    from napari_imedsam.io import check_image_array, read_any

    if kind == "complex":
        path = tmp_path / "k.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.complex64), np.eye(4)), str(path))
        words = "k.nii.gz holds complex numbers"
        with pytest.raises(ValueError, match=words):  # napari's reader path
            _reader.get_nifti_reader(str(path))(str(path))
    else:
        path = tmp_path / "line.tif"
        tifffile.imwrite(path, np.arange(10, dtype=np.uint16))
        words = "line.tif holds 1-D data"
    with pytest.raises(ValueError, match=words):
        read_any(path)
    with pytest.raises(ValueError, match="r.x holds structured records"):
        check_image_array(np.zeros((4, 4), dtype=[("a", "u1"), ("b", "u1")]), "r.x")


@pytest.mark.parametrize("affine", [np.zeros((4, 4)), np.full((4, 4), np.nan),
                                    np.diag([1.0, 0.0, 0.0, 1.0])])
def test_a_broken_nifti_affine_is_a_sentence(tmp_path, affine):
    """nibabel said "Unable to find out axis 2.0 in start_ornt" or "SVD did not converge"."""
    from napari_imedsam.io import read_any

    path = tmp_path / "bad.nii.gz"
    header = nib.Nifti1Header()  # written as a broken converter leaves it
    header.set_data_shape((4, 5, 6))
    header.set_data_dtype(np.int16)
    for row, name in enumerate(("srow_x", "srow_y", "srow_z")):
        header[name] = affine[row]
    header["sform_code"], header["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.int16), None, header=header), str(path))
    with pytest.raises(ValueError, match="bad.nii.gz: its affine .* fix the file's sform"):
        read_any(path)


def test_a_folder_that_cannot_be_written_is_named_not_the_temporary_file(tmp_path, monkeypatch):
    """As root a read-only folder cannot be made here, so the refusal is simulated where
    the operating system gives it: creating the temporary file beside the target."""
    import tempfile as tempfile_module

    from napari_imedsam import saving

    def refuse(prefix, suffix, dir):  # noqa: ANN001, ANN202, A002
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}x1y2z3{suffix}")

    monkeypatch.setattr(tempfile_module, "mkstemp", refuse)
    target = tmp_path / "locked" / "masks.tif"
    with pytest.raises(PermissionError) as caught:
        saving.atomic_save(target, lambda tmp: tmp.write_bytes(b"x"))
    text = str(caught.value)
    assert f"cannot write {target}" in text and "choose a folder you can write to" in text
    assert "x1y2z3" not in text and not target.exists()
