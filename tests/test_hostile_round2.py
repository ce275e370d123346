"""Issue 23, "Hostile input, second round": the readers' answers to files that are
not what they claim. Each test names the item it holds; the command-line cases are
rows "23/N" of ``tests/test_hostile_table.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hostile_files import fifo_opened_by_a_writer_if_read
from napari_imedsam import io


# -- item 3: a FIFO or a device is refused before it is opened -------------------------
@pytest.mark.parametrize("name, read", [
    ("x.tif", io.read_tiff), ("x.png", io.read_pillow), ("x.nii.gz", io.read_nifti),
    ("x.dcm", io.read_dicom), ("x.png", io.read_any)])
def test_readers_refuse_a_fifo_before_opening_it(tmp_path, name, read):
    pytest.importorskip("nibabel")
    pytest.importorskip("pydicom")
    fifo = fifo_opened_by_a_writer_if_read(tmp_path / name)
    with pytest.raises(ValueError, match=rf"{name} is not a regular image file but a FIFO"):
        read(fifo)


def test_readers_refuse_a_device_and_name_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="/dev/zero is not a regular image file but a device"):
        io.read_any("/dev/zero")
    with pytest.raises(FileNotFoundError, match="gone.tif does not exist"):
        io.read_any(tmp_path / "gone.tif")


def test_the_dicom_reader_does_not_open_a_fifo_to_look_for_its_preamble(tmp_path):
    from napari_imedsam import _reader

    import time

    opened: list[bool] = []
    fifo = Path(fifo_opened_by_a_writer_if_read(tmp_path / "slice", opened=opened))
    assert _reader._looks_like_dicom(fifo) is False
    time.sleep(0.3)  # the writer gets in only while a reader has the FIFO open
    assert not opened, "the FIFO was opened (and would block without a writer)"


# -- item 2: the size checks count bits, and a flat image is not a bomb -------------------
def test_a_one_bit_tiff_is_read_not_refused_as_truncated(tmp_path):
    import tifffile

    bits = np.random.default_rng(0).integers(0, 2, (64, 80)).astype(bool)
    tifffile.imwrite(tmp_path / "bits.tif", bits)  # 8 pixels a byte: 640 bytes of data
    assert np.array_equal(io.read_any(tmp_path / "bits.tif").data, bits)
    # A truly truncated uncompressed TIFF is still refused.
    tifffile.imwrite(tmp_path / "grey.tif", np.full((64, 80), 9, np.uint8))
    raw = (tmp_path / "grey.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[:2000])
    with pytest.raises(ValueError, match="cut.tif"):
        io.read_any(tmp_path / "cut.tif")


@pytest.mark.parametrize("shape, mode", [((4000, 4000), None), ((4000, 4000, 3), None),
                                          ((4000, 4000), "1")])
def test_a_flat_image_under_the_ceiling_is_read_not_taken_for_a_bomb(tmp_path, shape, mode):
    from PIL import Image

    image = Image.fromarray(np.ones(shape, bool) if mode == "1" else np.full(shape, 120, np.uint8))
    image.save(tmp_path / "flat.png", optimize=True)
    assert (tmp_path / "flat.png").stat().st_size < 60_000  # hundreds of times smaller
    assert io.read_any(tmp_path / "flat.png").data.shape[:2] == (4000, 4000)


def test_a_png_that_claims_more_than_deflate_can_hold_is_still_refused(tmp_path):
    import struct
    import zlib

    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small.png")
    raw = bytearray((tmp_path / "small.png").read_bytes())
    raw[16:24] = struct.pack(">II", 9000, 9000)  # 81 Mpx claimed by a ~70-byte file
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))  # the IHDR's CRC
    (tmp_path / "lie.png").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="lie.png: a .*-byte file that claims 9000 x 9000 x 1 "
                                         "values .*decompression bomb"):
        io.read_any(tmp_path / "lie.png")


# -- item 4: a TIFF whose first series is a thumbnail ---------------------------------------
def test_the_largest_tiff_series_is_read_not_a_thumbnail_before_it(tmp_path):
    import tifffile

    image = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    with tifffile.TiffWriter(tmp_path / "scan.tif") as tif:
        tif.write(image[::8, ::8].copy())  # the thumbnail first, as some scanners write
        tif.write(image)
        tif.write(np.zeros((4, 4), np.uint16))  # a label image after it
    with tifffile.TiffFile(tmp_path / "scan.tif") as tif:
        assert [s.shape for s in tif.series] == [(6, 8), (48, 64), (4, 4)]
    assert np.array_equal(io.read_any(tmp_path / "scan.tif").data, image)


# -- item 5: no finite pixel; NIfTI scale factors that are not numbers ----------------------
@pytest.mark.parametrize("name", ["nan.tif", "nan.nii.gz"])
def test_an_image_with_no_finite_pixel_is_refused_by_name(tmp_path, name):
    import tifffile

    data = np.full((4, 16, 16), np.nan, np.float32)
    data[1, 3] = np.inf
    if name.endswith(".tif"):
        tifffile.imwrite(tmp_path / name, data[0])
    else:
        nib = pytest.importorskip("nibabel")
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / name))
    with pytest.raises(ValueError, match=rf"{name} has no finite pixel"):
        io.read_any(tmp_path / name)
    data[2, 5, 7] = 1.0  # one finite value is an image
    if name.endswith(".tif"):
        tifffile.imwrite(tmp_path / name, data[2])
        assert io.read_any(tmp_path / name).data[5, 7] == 1.0


def _nifti_scaled(path: Path, slope: float, inter: float) -> Path:
    """An uncompressed NIfTI-1 with scl_slope and scl_inter written into its header's
    bytes (nibabel resets them when it saves)."""
    import struct

    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 3, np.int16), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())
    raw[112:120] = struct.pack("<ff", slope, inter)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("slope, inter", [(np.inf, 0.0), (-np.inf, 0.0), (2.0, np.nan),
                                          (2.0, np.inf), (np.nan, 7.0), (0.0, np.inf)])
def test_nifti_scale_factors_that_are_not_numbers_are_refused(tmp_path, slope, inter):
    path = _nifti_scaled(tmp_path / "scaled.nii", slope, inter)
    with pytest.raises(ValueError, match="scaled.nii: its scale factors .* are not numbers"):
        io.read_any(path)


@pytest.mark.parametrize("slope, inter, value", [(np.nan, np.nan, 3), (np.nan, 0.0, 3),
                                                 (0.0, 5.0, 3), (2.0, -1.0, 5)])
def test_nifti_scale_factors_meaning_none_or_real_ones_are_read(tmp_path, slope, inter, value):
    path = _nifti_scaled(tmp_path / "scaled.nii", slope, inter)
    assert float(io.read_any(path).data[0, 0, 0]) == value


# -- items 6 and 8: train/evaluate read images through io's checks --------------------------
def test_training_data_is_read_with_the_size_checks_of_the_segment_command(tmp_path):
    import struct
    import zlib

    from PIL import Image

    from napari_imedsam.train import data

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.png")
    raw = bytearray((tmp_path / "m.png").read_bytes())
    raw[16:24] = struct.pack(">II", 9000, 9000)  # under Pillow's own limit, not ours
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    (tmp_path / "m.png").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="m.png: a .*-byte file that claims 9000 x 9000"):
        data.read_mask(tmp_path / "m.png")
    # Palette masks still come back as their indices.
    palette = Image.fromarray(np.array([[0, 2], [1, 2]], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    palette.save(tmp_path / "p.png")
    assert data.read_mask(tmp_path / "p.png", binary=False).tolist() == [[0, 2], [1, 2]]


# -- item 7: one truncated slice in a DICOM series -------------------------------------------
@pytest.mark.parametrize("keep", [-1000, 400], ids=["pixel data cut", "header cut"])
def test_a_truncated_dicom_slice_is_refused_by_its_name(tmp_path, keep):
    pytest.importorskip("pydicom")
    from hostile_files import dicom_folder

    folder = Path(dicom_folder(tmp_path, slices=5))
    (folder / "notes.txt").write_text("not DICOM: skipped")
    assert io.read_any(folder).data.shape == (5, 48, 64)
    damaged = folder / "s2.dcm"
    damaged.write_bytes(damaged.read_bytes()[:keep])
    with pytest.raises(ValueError, match="s2.dcm: .*truncated or damaged; copy the series again"):
        io.read_any(folder)


# -- item 10: bench --json ----------------------------------------------------------------
def test_bench_json_is_written_whole_and_replaced_only_with_overwrite(tmp_path, monkeypatch):
    import json

    from napari_imedsam import bench
    from napari_imedsam.cli.app import main

    monkeypatch.setattr(bench, "run_benchmark", lambda *a, **k: {"encoder_ms": 1.5})
    report = tmp_path / "b.json"
    assert main(["bench", "--json", str(report)]) == 0
    assert json.loads(report.read_text()) == {"encoder_ms": 1.5}
    report.write_text("{}")
    assert main(["bench", "--json", str(report)]) == 2 and report.read_text() == "{}"
    assert main(["bench", "--json", str(report), "--overwrite"]) == 0
    assert json.loads(report.read_text()) == {"encoder_ms": 1.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]  # no temporary file


# -- memory: small files that expand (item "tracebacks, hangs, memory") ---------------
def _traced_peak(call) -> tuple[object, int]:  # noqa: ANN001
    import tracemalloc

    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_percentile_scaling_and_ct_windows_take_about_one_copy_of_the_image():
    """A 12000 x 12000 16-bit TIFF (393 KB deflated) peaked at 4.5 GB in ``segment``:
    the scaling made float64 copies of the whole image. NumPy's traced peak was 12.6
    times the image (scaling) and 9 times (a CT window) before; about 3.8 now."""
    from napari_imedsam.inference.intensity import apply_window, as_rgb_uint8

    image = (np.random.default_rng(0).random((1000, 1000)) * 60000).astype(np.uint16)
    rgb, peak = _traced_peak(lambda: as_rgb_uint8(image))
    assert rgb.shape == (1000, 1000, 3) and rgb.dtype == np.uint8
    assert peak < 5 * image.nbytes, peak / image.nbytes
    ct = image.astype(np.int16)
    grey, peak = _traced_peak(lambda: apply_window(ct, "abdomen"))
    assert grey.dtype == np.uint8 and peak < 4 * ct.nbytes, peak / ct.nbytes


@pytest.mark.parametrize("kind", ["uint16", "int16", "float32 with NaN and inf", "HU",
                                  "few values"])
def test_banded_percentiles_are_numpys_to_the_last_bit(kind, monkeypatch):
    """Past 16 M values the scaling counts its percentiles in bands instead of sorting a
    copy (a 12000 x 12000 float32 DICOM slice's copy was 576 MB): the same floats as
    ``np.percentile`` on a copy, whether the order statistics are gathered at once,
    narrowed bin by bin, or sit in bins of equal values."""
    from napari_imedsam.inference import intensity

    rng = np.random.default_rng(7)
    shape = (301, 257)
    image = {
        "uint16": lambda: rng.integers(0, 65536, shape).astype(np.uint16),
        "int16": lambda: rng.integers(-32768, 32767, shape).astype(np.int16),
        "float32 with NaN and inf": lambda: np.where(
            rng.random(shape) < 0.05, np.nan,
            np.where(rng.random(shape) < 0.02, -np.inf, rng.normal(0, 300, shape))
        ).astype(np.float32),
        "HU": lambda: np.where(rng.random(shape) < 0.97, -1024,
                               rng.integers(-200, 3000, shape)).astype(np.float32),
        "few values": lambda: (rng.integers(0, 4, shape) * 1000).astype(np.int32),
    }[kind]()
    finite = np.where(np.isfinite(image), image, 0) if image.dtype.kind == "f" else image
    want = [*np.percentile(finite, [0.5, 99.5]).tolist(), float(finite.min()),
            float(finite.max())]
    for gather in (1 << 20, 50, 0):  # all at once; a narrowing pass first; only narrowing
        monkeypatch.setattr(intensity, "_GATHER", gather)
        assert list(intensity.banded_percentiles(image, (0.5, 99.5))) == want, gather
    copied = intensity.as_rgb_uint8(image)
    monkeypatch.setattr(intensity, "_COPY_VALUES", 1000)
    assert np.array_equal(intensity.as_rgb_uint8(image), copied)


def test_banded_percentiles_hold_a_few_bands_not_a_copy():
    from napari_imedsam.inference.intensity import banded_percentiles

    image = np.random.default_rng(0).normal(0, 300, (3000, 3000)).astype(np.float32)
    _, peak = _traced_peak(lambda: banded_percentiles(image, (0.5, 99.5)))
    assert peak < image.nbytes / 2, peak / image.nbytes  # a copy: 1x


def test_a_dicom_series_is_read_into_one_volume_without_a_copy_per_slice(tmp_path):
    """Every slice's stored pixels, pydicom's decoded copy, a float32 copy each and then
    their stack lived at once: 5.6 GB for one deflated 12000 x 12000 slice (issue 23).
    The volume is filled slice by slice now; the values are the same HU."""
    pytest.importorskip("pydicom")
    from hostile_files import dicom_slice

    folder = tmp_path / "series"
    folder.mkdir()
    rng = np.random.default_rng(3)
    stored = [rng.integers(0, 3000, (400, 500)).astype(np.uint16) for _ in range(6)]
    for i, pixels in enumerate(stored):
        dicom_slice(folder / f"s{i}.dcm", pixels, 2.5 * i)
    loaded, peak = _traced_peak(lambda: io.read_any(folder))
    volume = np.stack(stored).astype(np.float32) - 1024
    assert loaded.data.dtype == np.float32 and np.array_equal(loaded.data, volume)
    # The volume, and the files' bytes as pydicom holds them (half a volume): 3.0x
    # before (the stored, decoded and float32 slices, then their stack), 1.6x now.
    assert peak < 2 * volume.nbytes, peak / volume.nbytes
    dicom_slice(folder / "s9.dcm", np.zeros((40, 50), np.uint16), 30.0)
    with pytest.raises(ValueError, match=r"slices of different sizes \[\(40, 50\), \(400, 500\)\]"):
        io.read_any(folder)


def test_the_embedding_cache_key_hashes_the_pixels_without_copying_them():
    from napari_imedsam.inference.cache import content_key

    image = np.zeros((1000, 1000, 3), np.uint8)
    key, peak = _traced_peak(lambda: content_key(image))
    assert peak < image.nbytes // 10
    image[5, 5, 1] = 1
    assert content_key(image) != key


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray,
           slope: tuple[float, float] | None = None) -> Path:
    nib = pytest.importorskip("nibabel")
    img = nib.Nifti1Image(data, affine)
    if slope is not None:
        img.header.set_slope_inter(*slope)
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("affine", [
    np.diag([0.8, 0.8, 2.0, 1.0]),                      # RAS as stored
    np.diag([-0.8, -0.8, 2.0, 1.0]),                    # LPS: rows and columns flipped
    np.array([[0, 0, -2.0, 0], [0.8, 0, 0, 0], [0, -0.7, 0, 0], [0, 0, 0, 1]]),  # axes swapped
])
@pytest.mark.parametrize("suffix, dtype, slope", [
    (".nii.gz", "<i2", None), (".nii.gz", ">i2", (0.5, -3.0)), (".nii", "<f4", None),
    (".nii", "<i2", (2.0, 1.0))])
def test_a_nifti_slice_read_alone_is_that_slice_of_the_whole_volume(tmp_path, affine, suffix,
                                                                  dtype, slope):
    """``segment VOLUME --slice Z`` reads slice Z alone: it must be the slice that
    reading the whole volume gives, whatever the orientation, order and scaling."""
    data = (np.random.default_rng(1).random((9, 7, 5)) * 900).astype(dtype)
    path = _nifti(tmp_path / f"v{suffix}", data, affine, slope)
    whole = io.read_nifti(path)
    depth = whole.data.shape[0]
    for plane in (0, depth // 2, depth - 1):
        alone = io.read_nifti(path, plane=plane)
        assert alone.first_plane == plane and alone.data.shape == (1, *whole.data.shape[1:])
        np.testing.assert_array_equal(alone.data[0], whole.data[plane])
        assert alone.data.dtype == whole.data.dtype and alone.spacing == whole.spacing
    with pytest.raises(ValueError, match=rf"--slice {depth} is outside 0..{depth - 1}"):
        io.read_nifti(path, plane=depth)


def test_a_compressed_nifti_is_read_into_one_array_and_a_slice_alone_in_a_slice(tmp_path,
                                                                              monkeypatch):
    """A 1.2 GB volume in a gzip of a few MB peaked at 2.9 GB to segment one slice:
    nibabel reads a compressed file whole into bytes and copies them (2 times the
    volume); the reoriented copy made a third. Now: one array (and a fixed
    amount for gzip: 1.5 times this small volume), or one slice."""
    nib = pytest.importorskip("nibabel")
    data = np.zeros((256, 256, 64), np.int16)
    data[100:150, 90:160, 20:40] = 300
    path = _nifti(tmp_path / "v.nii.gz", data, np.diag([-0.8, -0.8, 2.0, 1.0]))
    # The chunk (and gzip's copy of it) is a fixed cost: 32 MB beside a 1.2 GB volume.
    monkeypatch.setattr(io, "_NIFTI_CHUNK", 1 << 20)
    whole, peak = _traced_peak(lambda: io.read_nifti(path))
    assert peak < 1.7 * data.nbytes, peak / data.nbytes  # 2.9 before
    reference = np.asarray(nib.load(str(path)).dataobj)
    assert int(whole.data.sum(dtype=np.int64)) == int(reference.sum(dtype=np.int64))
    alone, peak = _traced_peak(lambda: io.read_nifti(path, plane=30))
    assert peak < 0.2 * data.nbytes, peak / data.nbytes
    np.testing.assert_array_equal(alone.data[0], whole.data[30])
