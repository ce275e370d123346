"""Reading images with their voxel spacing, and writing results atomically.

PNG/JPEG (Pillow) and TIFF (tifffile) always; NIfTI with ``nibabel`` and DICOM
with ``pydicom`` when those optional packages are installed. Arrays come back
as stored (Hounsfield units stay Hounsfield units) so that windowing happens
where the user chooses it. Volumes are ``(Z, Y, X)``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class LoadedImage:
    data: np.ndarray  # (H, W), (H, W, C) or (Z, Y, X)
    spacing: tuple[float, ...] | None  # per axis of ``data`` (mm), when known
    source: str


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _optional(module: str, what: str):  # noqa: ANN202
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"reading {what} needs the optional package {module}: "
                          f"pip install {module}") from None


def read_nifti(path: str | Path) -> LoadedImage:
    nib = _optional("nibabel", "NIfTI files")
    img = nib.load(str(path))
    # NIfTI stores (X, Y, Z); napari and numpy code read (Z, Y, X).
    data = np.asarray(img.dataobj)
    zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
    data = np.transpose(data, tuple(reversed(range(data.ndim))))
    return LoadedImage(np.ascontiguousarray(data), tuple(reversed(zooms)), str(path))


def read_dicom(path: str | Path) -> LoadedImage:
    """One DICOM file, or a folder holding one series (sorted by position)."""
    pydicom = _optional("pydicom", "DICOM files")
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    slices = []
    for file in files:
        try:
            slices.append(pydicom.dcmread(str(file)))
        except Exception:  # noqa: BLE001  (not every file in a folder is DICOM)
            continue
    slices = [s for s in slices if hasattr(s, "pixel_array")]
    if not slices:
        raise ValueError(f"no DICOM images found in {path}")
    slices.sort(key=lambda s: float(getattr(s, "ImagePositionPatient", [0, 0, 0])[2]))
    arrays = []
    for s in slices:
        values = s.pixel_array.astype(np.float32)
        arrays.append(values * float(getattr(s, "RescaleSlope", 1)) +
                      float(getattr(s, "RescaleIntercept", 0)))
    data = np.stack(arrays) if len(arrays) > 1 else arrays[0]
    row, col = (float(v) for v in getattr(slices[0], "PixelSpacing", [1.0, 1.0]))
    spacing: tuple[float, ...] = (row, col)
    if len(arrays) > 1:
        positions = [float(s.ImagePositionPatient[2]) for s in slices
                     if hasattr(s, "ImagePositionPatient")]
        dz = float(np.median(np.diff(positions))) if len(positions) > 1 else float(
            getattr(slices[0], "SliceThickness", 1.0))
        spacing = (abs(dz) or 1.0, row, col)
    return LoadedImage(data, spacing, str(path))


def read_any(path: str | Path) -> LoadedImage:
    """Read an image or volume by its suffix (a folder is a DICOM series)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir() or path.suffix.lower() in (".dcm", ".dicom"):
        return read_dicom(path)
    if is_nifti(path):
        return read_nifti(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return LoadedImage(np.asarray(tifffile.imread(path)), None, str(path))
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("L", "I;16", "I", "F", "RGB", "RGBA"):
            img = img.convert("RGB")
        return LoadedImage(np.asarray(img), None, str(path))


def atomic_save(path: str | Path, write, *, overwrite: bool = False) -> Path:  # noqa: ANN001
    """Call ``write(tmp_path)`` then move the file into place in one step.

    Refuses to replace an existing file unless ``overwrite``; on any error the
    temporary file is removed and the destination is untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: choose another name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        umask = os.umask(0)  # mkstemp makes owner-only files; restore the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_tiff(path: str | Path, data: np.ndarray, *, pixel_size: tuple[float, float] | None = None,
               unit: str = "pixel", overwrite: bool = False) -> Path:
    """A TIFF with X/Y resolution metadata (pixels per unit), written atomically."""
    import tifffile

    def write(tmp: Path) -> None:
        kwargs = {}
        if pixel_size is not None:
            py, px = pixel_size
            kwargs["resolution"] = (1.0 / px, 1.0 / py)
            kwargs["metadata"] = {"unit": unit, "spacing_yx": [py, px]}
        tifffile.imwrite(tmp, data, **kwargs)

    return atomic_save(path, write, overwrite=overwrite)
