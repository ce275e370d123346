"""Reading images with their voxel spacing; writing NIfTI on the source's grid.

PNG/JPEG (Pillow) and TIFF (tifffile) always; NIfTI with ``nibabel`` and DICOM
with ``pydicom`` when those optional packages are installed. Values come back
as stored (Hounsfield units stay Hounsfield units) so that windowing happens
where the user chooses it.

Axis order: volumes are ``(Z, Y, X)`` in the radiological axial view, the way
DICOM stores axial slices: slice index from inferior to superior, row 0 anterior
(top of the screen), column 0 the patient's right (left of the screen). NIfTI
volumes are reoriented into this view with their affine (axis permutations and
flips only, never resampling: ``VIEW_AXCODES``), so every NIfTI looks the same
way up whatever its storage order, and :func:`write_nifti` undoes it exactly.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .saving import atomic_save

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Anatomical direction in which each axis of a volume (Z, Y, X) increases:
#: superior, posterior, left (nibabel's axis codes). Row 0 is anterior and
#: column 0 the patient's right: the radiological axial view.
VIEW_AXCODES = ("S", "P", "L")


@dataclass
class LoadedImage:
    data: np.ndarray  # (H, W), (H, W, C) or (Z, Y, X)
    spacing: tuple[float, ...] | None  # per axis of ``data`` (mm), when known
    source: str
    #: The NIfTI file's own affine (voxel -> RAS mm), kept so that results can
    #: be written back on exactly the source's voxel grid.
    affine: np.ndarray | None = None
    #: A DICOM series' files in the volume's slice order, and its SeriesInstanceUID:
    #: a DICOM SEG of the labels references them.
    dicom_files: tuple[str, ...] | None = None
    series_uid: str | None = None
    #: For a multi-frame (enhanced) DICOM image: its frame numbers (1-based) in the
    #: volume's slice order (``dicom_files`` then holds its one file).
    dicom_frames: tuple[int, ...] | None = None
    #: ``data`` holds the volume's slices from this one on (one slice read alone).
    first_plane: int = 0


#: Largest decoded image this reads without being asked (bytes); ``$IMEDSAM_MAX_IMAGE_BYTES``.
MAX_IMAGE_BYTES = 8 << 30
#: Stored (uncompressed) data size over file size beyond which a compressed file is
#: taken for a lie (truncated) or a decompression bomb. It is a bound the compression
#: itself sets, not a taste: deflate (PNG, gzip, TIFF's zip) cannot expand more than
#: 1032 times, TIFF's LZW about 1200 times and JPEG less, so a legitimate flat image
#: stays under it (a 4000 x 4000 single-colour PNG: 757 times), whatever its size.
MAX_EXPANSION = 2000


def check_decoded_size(path: str | Path, shape: tuple[int, ...], itemsize: int,
                       compressed: bool, *, stored_bytes: float | None = None,
                       max_expansion: float | None = MAX_EXPANSION) -> None:
    """Refuse, before decoding, a file whose header promises more data than it can hold
    (truncated or lying) or more than memory should take (a decompression bomb).

    ``itemsize``: bytes per value once decoded (what memory takes: the ceiling).
    ``stored_bytes``: the size of the data as the file stores it before compression,
    when it differs from the decoded size (1-bit pixels are an eighth of a byte);
    the file must hold that much when uncompressed, and a compressed file can expand
    at most ``max_expansion`` times into it (None: the compression has no useful
    bound, e.g. zstd or LZMA in a TIFF, and only the ceiling guards memory)."""
    path = Path(path)
    if any(int(v) < 0 for v in shape) or int(itemsize) < 0:
        raise ValueError(f"{path.name}: its header claims a negative size {tuple(shape)}: "
                         "corrupt; not read")
    count = np.prod([int(v) for v in shape], dtype=np.float64)
    expected = int(count) * int(itemsize)
    stored = expected if stored_bytes is None else int(np.ceil(stored_bytes))
    size = path.stat().st_size
    limit = int(os.environ.get("IMEDSAM_MAX_IMAGE_BYTES", MAX_IMAGE_BYTES))
    shown = " x ".join(str(int(v)) for v in shape)
    # What the file itself contradicts first: it says more than a size ceiling would.
    if not compressed and stored > size:
        raise ValueError(f"{path.name}: its header claims {shown} values ({stored} bytes) "
                         f"but the file holds {size}: truncated or corrupt; not read")
    if compressed and max_expansion is not None and stored > max_expansion * max(size, 1):
        raise ValueError(f"{path.name}: a {size}-byte file that claims {shown} values "
                         f"({stored / 2**20:.0f} MiB): corrupt or a decompression bomb; "
                         "not read")
    if expected > limit:
        raise ValueError(f"{path.name}: its header claims {shown} values ({_amount(expected)}), "
                         f"over the {_amount(limit)} this reads; if the file is real, raise "
                         "IMEDSAM_MAX_IMAGE_BYTES (bytes)")


def check_regular_file(path: str | Path, what: str = "image file",
                       folder_ok: bool = False) -> Path:
    """``path`` if it is a regular file (or, with ``folder_ok``, a folder: a DICOM
    series), checked before anything opens it: a FIFO would block the read forever
    and a device such as /dev/zero never ends. A missing path says so."""
    import stat

    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows links: a link to a FIFO is a FIFO
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    if stat.S_ISREG(mode) or (folder_ok and stat.S_ISDIR(mode)):
        return path
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device")
    advice = "a file or a DICOM folder" if folder_ok else "a file"
    raise ValueError(f"{path} is not a regular {what} but {kind}: it is not read; "
                     f"give {advice} saved on disk")


def _amount(size: int) -> str:
    for unit, step in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= step:
            return f"{size / step:.1f} {unit}"
    return f"{size} bytes"


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _optional(module: str, what: str):  # noqa: ANN202
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"reading {what} needs the optional package {module}: "
                          f"pip install {module}") from None


def _view_transform(affine: np.ndarray):  # noqa: ANN202
    """nibabel orientation transform from a file's voxel axes to ``VIEW_AXCODES``."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return ornt_transform(io_orientation(affine), axcodes2ornt(VIEW_AXCODES))


def read_nifti(path: str | Path, plane: int | None = None) -> LoadedImage:
    """A NIfTI image: 3D (and 4D, time first) reoriented to the view; spacing in mm.

    ``plane``: of a 3D volume, read that slice of the view only (``data`` is then
    ``(1, Y, X)`` and ``first_plane`` is ``plane``): one slice of a 1.2 GB volume
    is segmented in the memory of one slice."""
    nib = _optional("nibabel", "NIfTI files")
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    check_regular_file(path)
    try:
        # The file's own scale factors: nibabel's loaded header has them reset, and
        # nibabel ignores some and refuses others in its own words.
        raw = _raw_nifti_header(nib, Path(path))
        if raw is not None:
            _check_nifti_scaling(Path(path), raw)
        img = nib.load(str(path))
        header = img.header
        proxy = img.dataobj
        # Scaled values come as float32: nibabel's own choice is float64, 8 bytes a voxel.
        scaled = bool(getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0)
        stored = header.get_data_dtype().itemsize
        itemsize = max(4, stored) if scaled else stored
        shape = header.get_data_shape()
        check_decoded_size(path, shape, itemsize, compressed=str(path).lower().endswith(".gz"),
                           stored_bytes=float(np.prod(shape, dtype=np.float64)) * stored)
        as_type = np.float32 if scaled and itemsize == 4 else None
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated gzip, text, wrong magic...
        raise ValueError(_not_nifti(path, exc)) from exc
    affine = np.asarray(img.affine, dtype=np.float64)
    if len(shape) < 3:
        # A 2D NIfTI stores (X, Y); show it as (rows, cols) = (Y, X).
        data = _read_nifti_voxels(nib, proxy, Path(path), as_type)
        zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
        return LoadedImage(np.ascontiguousarray(data.T), tuple(reversed(zooms)), str(path),
                           affine)
    try:
        if not np.isfinite(affine).all():
            raise ValueError("it holds NaN or infinite values")
        transform = _view_transform(affine)
    except Exception as exc:  # noqa: BLE001 - nibabel's words are about its internals
        text = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise ValueError(
            f"{Path(path).name}: its affine (the header's voxel-to-world matrix) cannot be "
            f"read as an orientation ({text}); fix the file's sform/qform, e.g. re-save it "
            "with its scanner's converter") from exc
    first = 0
    if plane is not None and len(shape) == 3:
        # The file axis that becomes the view's slices, and which way it runs.
        axis = int(np.flatnonzero(transform[:, 0] == 0)[0])
        depth = int(shape[axis])
        if not 0 <= plane < depth:
            raise ValueError(f"--slice {plane} is outside 0..{depth - 1}")
        index = plane if transform[axis, 1] > 0 else depth - 1 - plane
        slicer = [slice(None)] * 3
        slicer[axis] = slice(index, index + 1)
        try:
            data = np.asarray(proxy[tuple(slicer)])
        except Exception as exc:  # noqa: BLE001 - a truncated gzip, as above
            raise ValueError(_not_nifti(path, exc)) from exc
        if as_type is not None:
            data = data.astype(as_type)
        first = plane
    else:
        data = _read_nifti_voxels(nib, proxy, Path(path), as_type)
    view = apply_orientation(data, transform)  # extra (time) axes stay last
    view_affine = affine @ inv_ornt_aff(transform, shape[:3])
    # Rounded: the header stores float32, and 0.7 should not read as 0.69999999.
    spacing = tuple(round(float(v), 6) for v in np.sqrt((view_affine[:3, :3] ** 2).sum(axis=0)))
    if view.ndim > 3:  # (Z, Y, X, T...) -> (T..., Z, Y, X), the order napari's sliders expect
        view = np.moveaxis(view, tuple(range(3, view.ndim)), tuple(range(view.ndim - 3)))
        spacing = (1.0,) * (view.ndim - 3) + spacing
    # The reoriented view, not a copy: a copy held the volume twice (a 1.2 GB volume
    # took 3.1 GB to segment one slice of; issue 23). NIfTI stores x fastest, so
    # each (rows, columns) slice of the view is still a block of memory.
    return LoadedImage(view, spacing, str(path), affine, first_plane=first)


def _not_nifti(path: str | Path, exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:160] or type(exc).__name__
    return f"{Path(path).name} is not a readable NIfTI file ({text})"


#: Bytes of a compressed NIfTI decoded at a time.
_NIFTI_CHUNK = 16 << 20


def _read_nifti_voxels(nib: Any, proxy: Any, path: Path, dtype: Any) -> np.ndarray:
    """A NIfTI's voxels (scaled into ``dtype`` when given), read without a second copy.

    nibabel reads a compressed file whole into bytes, then copies them into its
    array (Python's gzip has no ``readinto`` of its own): a 1.2 GB volume peaked
    at 2.5 GB before anything else ran. A compressed file's data is read here in
    16 MB chunks straight into the array it becomes; an uncompressed one is left
    to nibabel, which maps it."""
    raw = np.dtype(proxy.dtype)
    if path.suffix.lower() not in (".gz", ".bz2", ".zst") or raw.kind not in "biuf" or \
            getattr(proxy, "order", "F") not in ("C", "F"):
        return np.asarray(proxy) if dtype is None else np.asarray(proxy, dtype=dtype)
    out = np.empty(proxy.shape, dtype or raw.newbyteorder("="), order=proxy.order)
    flat = out.reshape(-1, order=proxy.order)  # a view: the memory in file order
    slope, inter = (float(proxy.slope), float(proxy.inter)) if dtype is not None else (1, 0)
    step = max(1, _NIFTI_CHUNK // raw.itemsize)
    with nib.openers.ImageOpener(str(path)) as f:
        f.seek(int(proxy.offset))
        for start in range(0, flat.size, step):
            want = min(step, flat.size - start) * raw.itemsize
            chunk = f.read(want)
            if len(chunk) != want:
                raise ValueError(f"{path.name}: its data end after {start * raw.itemsize + len(chunk)}"
                                 f" of {flat.size * raw.itemsize} bytes: truncated; not read")
            values = np.frombuffer(chunk, raw)
            if dtype is not None:
                values = values.astype(dtype) * dtype(slope) + dtype(inter)
            flat[start:start + len(values)] = values
    return out


def _raw_nifti_header(nib: Any, path: Path) -> Any:
    """The NIfTI-1 or -2 header of ``path`` read without nibabel's checks, or None."""
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            first = f.read(4)
            f.seek(0)
            two = 540 in (int.from_bytes(first, "little"), int.from_bytes(first, "big"))
            return (nib.Nifti2Header if two else nib.Nifti1Header).from_fileobj(f, check=False)
    except Exception:  # noqa: BLE001 - not a NIfTI header at all: the caller says so
        return None


def _check_nifti_scaling(path: Path, header: Any) -> None:
    """Refuse scale factors that are not numbers, which nibabel ignores silently.

    nibabel writes NaN in scl_slope and scl_inter for "no scaling", and the standard
    reads a slope of 0 the same way: those pairs stay (NaN or 0 slope, NaN or 0
    intercept; a 0 slope with any finite intercept). An infinite slope or intercept,
    a real slope with a NaN intercept, or a NaN slope with a real intercept leave the
    intensities unknown: refused."""
    try:
        slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    except (KeyError, TypeError, ValueError):
        return  # not a NIfTI-1/2 header: nothing to check
    unset = np.isnan(slope) or slope == 0
    if (np.isinf(slope) or np.isinf(inter) or (not unset and np.isnan(inter))
            or (np.isnan(slope) and not np.isnan(inter) and inter != 0)):
        raise ValueError(f"{path.name}: its scale factors (scl_slope {slope:g}, scl_inter "
                         f"{inter:g}) are not numbers, so its intensities are unknown; not read: "
                         "fix the header (scl_slope 1, scl_inter 0 if the values are stored as "
                         "they are) or export the file again")


def read_dicom_series(path: str | Path | list[str | Path]) -> list[LoadedImage]:
    """Every DICOM series in one file, a list of files or a folder: grouped by
    SeriesInstanceUID (two series of the same shape are never merged), each sorted by
    position and rescaled to stored units (e.g. HU). Warns about missing slices,
    repeated positions and mixed pixel spacing, which the volume would hide."""
    pydicom = _optional("pydicom", "DICOM files")
    if isinstance(path, (list, tuple)):
        files = sorted(check_regular_file(p) for p in path)
        path = files[0].parent if files else Path(".")
    else:
        path = check_regular_file(path, folder_ok=True)
        # In a folder, FIFOs and devices are skipped like any file that is not DICOM.
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    slices = []
    for file in files:
        try:
            ds = pydicom.dcmread(str(file))
        except Exception as exc:  # noqa: BLE001  (not every file in a folder is DICOM)
            if _has_dicom_preamble(file):  # DICOM, but cut short or damaged
                raise ValueError(f"{file.name}: a DICOM file that cannot be read "
                                 f"({_short(exc)}): {_DAMAGED_SLICE}") from exc
            continue
        if str(getattr(ds, "SOPClassUID", "")) in SEG_SOP_CLASSES:
            continue  # a segmentation beside its series is not one of its slices
        if "PixelData" in ds:
            slices.append(ds)
        elif "Rows" in ds or _is_image_storage(ds):  # an image cut before its pixels
            raise ValueError(f"{file.name}: a DICOM image without its pixel data: "
                             f"{_DAMAGED_SLICE}")
        # else: DICOMDIR, reports, ...: skipped
    if not slices:
        raise ValueError(f"no DICOM images found in {path}")
    groups: dict[str, list[Any]] = {}
    for s in slices:
        groups.setdefault(str(getattr(s, "SeriesInstanceUID", "")), []).append(s)
    several = len(groups) > 1
    for members in groups.values():
        _check_dicom_sizes(members, path)
    out = []
    for number, members in enumerate(groups.values(), 1):
        name = f"{path} (series {number}: {_series_label(members[0])})" if several else str(path)
        enhanced = [m for m in members if _is_enhanced(m)]
        if enhanced and len(members) > 1:
            raise ValueError(f"{name}: a multi-frame (enhanced) DICOM image shares its series "
                             f"with {len(members) - 1} other file(s): open its file alone")
        out.append(_enhanced_volume(members[0], name) if enhanced
                   else _dicom_volume(members, name))
    return out


def _check_dicom_sizes(slices: list[Any], source: Path) -> None:
    """Before any pixel is decoded: each compressed file expands within the compression's
    bounds, and the series as a float32 volume fits the memory ceiling
    (``check_decoded_size``)."""
    total = 0
    for ds in slices:
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        bits = int(getattr(ds, "BitsAllocated", 16) or 16)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        compressed = bool(getattr(syntax, "is_compressed", False))
        file = getattr(ds, "filename", None)
        if file and compressed:  # (a short uncompressed file is named when it is decoded)
            check_decoded_size(file, (frames, rows, cols, samples), max(1, bits // 8),
                               True, stored_bytes=frames * rows * cols * samples * bits / 8)
        total += frames * rows * cols * samples
    check_decoded_size(source if source.exists() else Path("."), (total,), 4, True,
                       max_expansion=None)


def _is_enhanced(ds: Any) -> bool:
    """A multi-frame image whose frames carry their own positions (Enhanced CT/MR...)."""
    return int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 \
        and "PerFrameFunctionalGroupsSequence" in ds


def _frame_item(ds: Any, frame: int, sequence: str) -> Any:
    """A functional group's item for one frame (0-based): the frame's own, else shared."""
    for groups in (ds.PerFrameFunctionalGroupsSequence[frame],
                   *(ds.SharedFunctionalGroupsSequence[:1]
                     if "SharedFunctionalGroupsSequence" in ds else [])):
        if sequence in groups and len(getattr(groups, sequence)):
            return getattr(groups, sequence)[0]
    return None


def _enhanced_volume(ds: Any, source: str) -> LoadedImage:
    """One multi-frame image -> a volume of its frames sorted by position, rescaled,
    with its spacing; its frame numbers are kept (a DICOM SEG references them)."""
    frames = int(ds.NumberOfFrames)
    positions = []
    for i in range(frames):
        plane = _frame_item(ds, i, "PlanePositionSequence")
        if plane is None or "ImagePositionPatient" not in plane:
            raise ValueError(f"{source}: frame {i + 1} of the multi-frame image has no "
                             "position: it cannot be placed as a slice")
        positions.append(float(plane.ImagePositionPatient[2]))
    order = np.argsort(positions, kind="stable")
    pixels = _pixels(ds)
    data = np.empty(pixels.shape, np.float32)
    for out, i in enumerate(order):
        rescale = _frame_item(ds, int(i), "PixelValueTransformationSequence")
        slope = float(getattr(rescale, "RescaleSlope", getattr(ds, "RescaleSlope", 1)))
        intercept = float(getattr(rescale, "RescaleIntercept", getattr(ds, "RescaleIntercept", 0)))
        data[out] = pixels[i].astype(np.float32) * slope + intercept
    del pixels
    measures = _frame_item(ds, 0, "PixelMeasuresSequence")
    row, col = (float(v) for v in getattr(measures, "PixelSpacing", [1.0, 1.0]))
    sorted_positions = [positions[i] for i in order]
    dz = float(np.median(np.diff(sorted_positions))) if frames > 1 else 1.0
    for problem in _position_problems(sorted_positions, dz):
        warnings.warn(f"{source}: {problem}", stacklevel=3)
    filename = str(getattr(ds, "filename", "") or "")
    return LoadedImage(data, (abs(dz) or 1.0, row, col), source,
                       dicom_files=(filename,) if filename else None,
                       series_uid=str(getattr(ds, "SeriesInstanceUID", "") or "") or None,
                       dicom_frames=tuple(int(i) + 1 for i in order))


#: Segmentation and Label Map Segmentation Storage (see ``dicom_seg``).
SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")

#: What to do about one damaged file of a series (skipping it would leave a volume
#: with a slice missing, silently wrong).
_DAMAGED_SLICE = ("truncated or damaged; copy the series again, or move this file out of "
                  "the folder if the series is complete without it")


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _is_image_storage(ds: Any) -> bool:
    """Whether the file's SOP class stores an image (CT Image Storage, ...), which
    holds pixel data, unlike a DICOMDIR, a report or a structure set."""
    meta = getattr(ds, "file_meta", None)
    uid = getattr(ds, "SOPClassUID", None) or getattr(meta, "MediaStorageSOPClassUID", None)
    return "Image Storage" in str(getattr(uid, "name", ""))


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__


def _pixels(ds: Any) -> np.ndarray:
    """One slice's pixels; a file whose pixel data cannot be decoded (truncated: pydicom's
    "bytes of pixel data is less than expected") is named."""
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom's words name no file
        name = Path(str(getattr(ds, "filename", "") or "a slice")).name
        raise ValueError(f"{name}: its pixel data cannot be read ({_short(exc)}): "
                         f"{_DAMAGED_SLICE}") from exc


def _series_label(ds: Any) -> str:
    text = str(getattr(ds, "SeriesDescription", "") or "").strip()
    return text or f"number {getattr(ds, 'SeriesNumber', '?')}"


def _dicom_volume(slices: list[Any], source: str) -> LoadedImage:
    """One series' slices -> a volume sorted by position, with its spacing."""
    slices = sorted(slices, key=lambda s: float(getattr(s, "ImagePositionPatient", [0, 0, 0])[2]))
    # One float32 volume filled slice by slice, each rescaled to HU in place, the
    # dataset's pixel bytes and decoded copy let go as the slice is read:
    # ``astype(float32) * slope + intercept`` made three float32 copies at once (5.6 GB
    # for one deflated 12000 x 12000 slice), and stacking a list of slices two volumes.
    data: np.ndarray | None = None
    for i, s in enumerate(slices):
        stored = _pixels(s)
        if data is None:
            data = np.empty((len(slices), *stored.shape), np.float32)
        elif stored.shape != data.shape[1:]:
            shapes = sorted({tuple(data.shape[1:]), tuple(stored.shape)})
            raise ValueError(f"{source}: slices of different sizes {shapes} in one series; "
                             "open the slices of one size on their own")
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in s:
                delattr(s, keyword)  # pydicom drops its decoded copy with it
        hu = data[i]
        hu[...] = stored
        del stored
        hu *= float(getattr(s, "RescaleSlope", 1))
        hu += float(getattr(s, "RescaleIntercept", 0))
    assert data is not None  # a series has at least one slice
    if len(slices) == 1:
        data = data[0]
    spacings = {tuple(round(float(v), 4) for v in getattr(s, "PixelSpacing", [1.0, 1.0]))
                for s in slices}
    row, col = sorted(spacings)[0]
    if len(spacings) > 1:
        warnings.warn(f"{source}: pixel spacing differs between slices {sorted(spacings)}; "
                      f"the volume uses {row} x {col} mm, so distances may be wrong",
                      stacklevel=3)
    spacing: tuple[float, ...] = (row, col)
    if len(slices) > 1:
        positions = [float(s.ImagePositionPatient[2]) for s in slices
                     if hasattr(s, "ImagePositionPatient")]
        dz = float(np.median(np.diff(positions))) if len(positions) > 1 else float(
            getattr(slices[0], "SliceThickness", 1.0))
        for problem in _position_problems(positions, dz):
            warnings.warn(f"{source}: {problem}", stacklevel=3)
        spacing = (abs(dz) or 1.0, row, col)
    files = tuple(str(getattr(s, "filename", "") or "") for s in slices)
    uid = str(getattr(slices[0], "SeriesInstanceUID", "") or "") or None
    return LoadedImage(data, spacing, source, dicom_files=files if all(files) else None,
                       series_uid=uid)


def _position_problems(positions: list[float], step: float) -> list[str]:
    """Repeated positions and gaps (a step over 1.5 times the usual one) in a series."""
    gaps = np.diff(positions)
    problems = []
    repeated = int((np.abs(gaps) < 1e-3).sum())
    if repeated:
        problems.append(f"{repeated} slice(s) repeat a position already in the series "
                        "(two series mixed, or duplicates): check the files")
    if abs(step) > 1e-3:
        for i in np.flatnonzero(np.abs(gaps) > 1.5 * abs(step)):
            problems.append(f"slices missing between z = {positions[i]:g} and "
                            f"{positions[i + 1]:g} mm (the usual step is {abs(step):g} mm): "
                            "the volume shows them as neighbours; check the series is complete")
    return problems


def read_dicom(path: str | Path | list[str | Path]) -> LoadedImage:
    """One DICOM file, a list of files or a folder holding one series (sorted by position).
    A folder with several series is refused with their list (the napari reader opens
    each as its own layer)."""
    series = read_dicom_series(path)
    if len(series) > 1:
        listing = "; ".join(f"{s.source.rsplit('(', 1)[-1].rstrip(')')}, {s.data.shape[0]} "
                            f"slice(s)" if s.data.ndim == 3 else s.source for s in series)
        raise ValueError(f"{path} holds {len(series)} DICOM series ({listing}): put one "
                         "series' files in a folder of their own and open that")
    return series[0]


def check_image_array(data: np.ndarray, source: str) -> np.ndarray:
    """``data`` if it is an image napari can show and a model can read: 2 or more
    dimensions, not empty, real numbers; else ValueError naming ``source``."""
    if data.ndim < 2 or data.size == 0:
        raise ValueError(f"{source} holds {data.ndim}-D data of shape {data.shape}, not an "
                         "image: it needs rows and columns")
    if data.dtype.kind not in "biuf":
        what = {"c": "complex numbers", "V": "structured records", "O": "Python objects"}.get(
            data.dtype.kind, f"values of type {data.dtype}")
        raise ValueError(f"{source} holds {what}, not image intensities: save the magnitude "
                         "(or one field) as a real-valued image")
    if data.dtype.kind == "f" and not _any_finite(data):
        raise ValueError(f"{source} has no finite pixel (every value is NaN or infinite): "
                         "there is nothing to segment; export the image again from its source")
    return data


def _any_finite(data: np.ndarray) -> bool:
    """Whether any value is finite, a row (or slice) at a time: it stops at the first
    finite one and never makes a mask the size of the whole image."""
    return any(bool(np.isfinite(part).any()) for part in data)


def read_any(path: str | Path, plane: int | None = None) -> LoadedImage:
    """Read an image or volume by its suffix (a folder is a DICOM series).

    ``plane``: only that slice is needed; a NIfTI volume then reads it alone
    (``first_plane`` says which), other formats read everything."""
    path = check_regular_file(path, folder_ok=True)
    if path.is_dir() or path.suffix.lower() in (".dcm", ".dicom"):
        loaded = read_dicom(path)
    elif is_nifti(path):
        loaded = read_nifti(path, plane=plane)
    elif path.suffix.lower() in (".tif", ".tiff"):
        loaded = LoadedImage(read_tiff(path), None, str(path))
    else:
        loaded = LoadedImage(read_pillow(path), None, str(path))
    check_image_array(loaded.data, path.name)
    return loaded


#: TIFF compressions whose expansion MAX_EXPANSION bounds: LZW (5), old and new JPEG
#: (6, 7), deflate (8, 32946), PackBits (32773). Others (zstd, LZMA, ...) can expand a
#: flat image far more: only the size ceiling applies to them.
TIFF_BOUNDED_COMPRESSION = frozenset({5, 6, 7, 8, 32946, 32773})


def read_tiff(path: str | Path) -> np.ndarray:
    """A TIFF's pixels, after checking what its header promises."""
    import tifffile

    check_regular_file(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError(f"{Path(path).name} holds no image: export it again as TIFF")
            # A TIFF may hold several images: a thumbnail or preview written before the
            # image (some scanners and slide viewers do), a label or macro image after
            # it. The user means the image, so the largest series (most values; the
            # first of equals) is read, not the first. Pyramid levels are one series
            # in tifffile, whose full-resolution level is the one read.
            series = max(tif.series, key=lambda s: float(np.prod(s.shape, dtype=np.float64)))
            page = series.keyframe
            # Stored bits per value: a 1-bit TIFF holds 8 pixels in a byte.
            bits = int(getattr(page, "bitspersample", 8 * series.dtype.itemsize) or 1)
            check_decoded_size(path, series.shape, series.dtype.itemsize,
                               compressed=page.compression != 1,
                               stored_bytes=float(np.prod(series.shape, dtype=np.float64))
                               * bits / 8,
                               max_expansion=MAX_EXPANSION if int(page.compression)
                               in TIFF_BOUNDED_COMPRESSION else None)
            return np.asarray(series.asarray())
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ValueError(f"{Path(path).name} is not a readable TIFF ({text}): it is truncated "
                         "or damaged; copy or export it again") from exc


def _pillow_itemsize(mode: str) -> int:
    """Bytes per value of a Pillow mode once decoded."""
    return 2 if mode.startswith("I;16") else 4 if mode in ("I", "F") else 1


def _pillow_stored_bits(path: Path, img: Any) -> int:
    """Bits per pixel as the file stores them before compression: a PNG's header
    says it (bit depth x channels: a 1-bit PNG packs 8 pixels in a byte)."""
    if img.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(26)  # signature, IHDR length and type, width, height, depth, colour
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(head[25] if len(head) == 26 else -1)
        if channels is not None and head[24] in (1, 2, 4, 8, 16):
            return head[24] * channels
    if img.mode == "1":
        return 1
    return 8 * len(img.getbands()) * _pillow_itemsize(img.mode)


def check_pillow_size(path: str | Path, img: Any) -> None:
    """:func:`check_decoded_size` for an image Pillow has opened (header read, pixels
    not yet decoded)."""
    bands = len(img.getbands())
    if img.mode in ("1", "P"):  # converted to colour by the readers: up to 3 bytes
        bands = max(bands, 3)
    pixels = float(img.width) * float(img.height)
    check_decoded_size(path, (img.height, img.width, bands), _pillow_itemsize(img.mode),
                       compressed=True, stored_bytes=pixels * _pillow_stored_bits(Path(path),
                                                                                  img) / 8)


@contextmanager
def pillow_image(path: str | Path) -> Iterator[Any]:
    """A Pillow image, opened after :func:`check_regular_file` and with its size
    checked (:func:`check_pillow_size`); what fails while the block decodes it
    (truncated data, not an image, Pillow's own bomb guard) becomes one line
    naming the file and what to do. ValueErrors of the block pass unchanged."""
    import warnings

    from PIL import Image

    path = check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_pillow_size(path, img)
                yield img
    except (ValueError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{path.name}: {exc} (Pillow's guard against decompression bombs); "
                         "not read: if the image is real, save it as TIFF (read up to "
                         "IMEDSAM_MAX_IMAGE_BYTES) or crop it") from exc
    except Exception as exc:  # noqa: BLE001 - truncated or not an image
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ValueError(f"{path.name} is not a readable image ({text}): it is truncated or "
                         "not an image; copy or export it again") from exc


def read_pillow(path: str | Path, modes: tuple[str, ...] = ("L", "I;16", "I", "F", "RGB", "RGBA"),
                ) -> np.ndarray:
    """PNG, JPEG, BMP... through Pillow, after checking the size its header claims;
    other modes are converted to RGB."""
    with pillow_image(path) as img:
        if img.mode not in modes:
            img = img.convert("RGB")
        return np.asarray(img)


def write_nifti(path: str | Path, data: np.ndarray, *, overwrite: bool = False,
                **geometry: Any) -> Path:
    """:func:`nifti_image` (``geometry``: its keywords) written atomically."""
    nib = _optional("nibabel", "NIfTI files")
    image = nifti_image(data, **geometry)
    return atomic_save(path, lambda tmp: nib.save(image, str(tmp)), overwrite=overwrite)


def save_nifti(target: Path, data: np.ndarray, **geometry: Any) -> None:
    """:func:`nifti_image` written straight to ``target``: a temporary file of
    :func:`~napari_imedsam.saving.staged_files` (else use :func:`write_nifti`)."""
    nib = _optional("nibabel", "NIfTI files")
    nib.save(nifti_image(data, **geometry), str(target))


def nifti_image(data: np.ndarray, *, spacing: tuple[float, ...] | None = None,
                source_affine: np.ndarray | None = None, scale: float = 1.0,
                grid_shape: tuple[int, ...] | None = None) -> Any:
    """A 2D image or ``(Z, Y, X)`` volume in the view orientation as a NIfTI image.

    With ``source_affine`` (the affine of the NIfTI the image came from) the
    file lands on the source's voxel grid and axis order. ``scale`` says how
    much finer than the image grid (``grid_shape``, the image's own shape)
    the in-plane (Y, X) axes of ``data`` are. Without a source affine the
    volume is stored in RAS order with ``spacing`` (mm, per axis of the image
    grid) and origin 0.
    """
    nib = _optional("nibabel", "NIfTI files")
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    volume = np.asarray(data)
    if volume.ndim == 2:
        volume = volume[None]  # one axial slice
    if volume.ndim != 3:
        raise ValueError(f"NIfTI export takes 2D or 3D data, got shape {volume.shape}")
    grid = tuple(grid_shape) if grid_shape is not None else volume.shape
    grid = (1, *grid) if len(grid) == 2 else grid
    view_ornt = axcodes2ornt(VIEW_AXCODES)
    if source_affine is not None:
        from nibabel.orientations import io_orientation

        source_affine = np.asarray(source_affine, dtype=np.float64)
        to_view = _view_transform(source_affine)
        to_source = ornt_transform(view_ornt, io_orientation(source_affine))
        source_shape = apply_orientation(np.empty(grid, np.uint8), to_source).shape
        view_affine = source_affine @ inv_ornt_aff(to_view, source_shape)
        target = io_orientation(source_affine)
    else:
        steps = [1.0, 1.0, 1.0, *(spacing or ())][-3:]
        dz, dy, dx = (float(v) for v in steps)
        # Columns: where one step along Z (superior), Y (posterior), X (left) goes in RAS mm.
        view_affine = np.array([[0, 0, -dx, 0], [0, -dy, 0, 0], [dz, 0, 0, 0], [0, 0, 0, 1.0]])
        target = axcodes2ornt(("R", "A", "S"))
    if scale != 1.0:
        # Fine pixel r' is centred at coarse coordinate (r' + 0.5) / scale - 0.5.
        step, shift = 1.0 / scale, 0.5 / scale - 0.5
        fine = np.diag([1.0, step, step, 1.0])
        fine[1:3, 3] = shift
        view_affine = view_affine @ fine
    transform = ornt_transform(view_ornt, target)
    out = apply_orientation(volume, transform)
    affine = view_affine @ inv_ornt_aff(transform, volume.shape)
    # An explicit dtype: nibabel refuses to guess one for 64-bit integers.
    image = nib.Nifti1Image(np.ascontiguousarray(out), affine, dtype=out.dtype)
    image.header.set_xyzt_units("mm")
    return image
