"""napari readers for NIfTI files and DICOM series (npe2 ``napari_get_reader`` style).

Each ``get_*_reader(path)`` returns a reader function when it can read
``path``, else None: that is how npe2 lets napari fall through to another
plugin. Without the optional package (nibabel, pydicom) the reader also
returns None, after a notification naming what to install, so napari says
"no reader" instead of failing inside ours.

Layers come back in the radiological axial view, ``(Z, Y, X)``: slices from
inferior to superior, anterior at the top, the patient's right on the left
of the screen (see :mod:`napari_imedsam.io`). Voxel spacing (mm) is the
layer's ``scale``, and the NIfTI affine stays in the layer metadata so that
masks can be written back onto the source's voxel grid.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .io import NIFTI_SUFFIXES, LoadedImage

#: Metadata key under which reader-made layers carry their source geometry.
SOURCE_KEY = "imedsam_source"
DICOM_SUFFIXES = (".dcm", ".dicom")
#: Integer NIfTI files named like this open as Labels (segmentations, not images).
LABEL_NAME = re.compile(r"(seg|label|mask)", re.IGNORECASE)
#: An abdomen window (W 400, L 40) for CT-like data: HU images are unreadable
#: at the full -1024..3000 range napari would pick.
CT_CONTRAST = (-160.0, 240.0)

PathOrPaths = str | list[str]
ReaderFunction = Callable[[PathOrPaths], list[tuple[Any, dict, str]]]


def _available(module: str, what: str) -> bool:
    """Whether ``module`` can be imported; if not, tell the user what to install."""
    if importlib.util.find_spec(module) is not None:
        return True
    from napari.utils.notifications import show_warning

    show_warning(f"I-MedSAM can open {what} once the optional package '{module}' is "
                 f"installed: pip install {module}  (or pip install 'napari-imedsam[medical]')")
    return False


def _one_path(path: PathOrPaths) -> str | None:
    if isinstance(path, (list, tuple)):
        return str(path[0]) if len(path) == 1 else None
    return str(path)


def get_nifti_reader(path: PathOrPaths) -> ReaderFunction | None:
    """A reader for one ``.nii`` / ``.nii.gz`` file when nibabel is installed."""
    single = _one_path(path)
    if single is None or not single.lower().endswith(NIFTI_SUFFIXES):
        return None
    if not _available("nibabel", "NIfTI files"):
        return None
    return read_nifti_layers


def _looks_like_dicom(path: Path) -> bool:
    """The DICOM preamble: 128 bytes, then ``DICM`` (files of a folder may lack suffixes)."""
    if not path.is_file():  # a FIFO would block the read forever; devices never end
        return False
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def get_dicom_reader(path: PathOrPaths) -> ReaderFunction | None:
    """A reader for a DICOM series (a folder, or one or more files) with pydicom."""
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    if not paths:
        return None
    if len(paths) == 1 and paths[0].is_dir():
        files = sorted(p for p in paths[0].iterdir() if p.is_file())
        if not any(_looks_like_dicom(p) for p in files[:64]):
            return None  # a folder of something else: let another reader have it
    elif not all(p.suffix.lower() in DICOM_SUFFIXES or _looks_like_dicom(p) for p in paths):
        return None
    if not _available("pydicom", "DICOM series"):
        return None
    return read_dicom_layers


def _layer(loaded: LoadedImage, name: str, kind: str, fmt: str) -> tuple[Any, dict, str]:
    """One napari layer tuple with spacing as scale and the source geometry in metadata."""
    from .io import check_image_array

    data = check_image_array(loaded.data, Path(loaded.source).name)
    ndim = data.ndim
    meta: dict[str, Any] = {"path": loaded.source, "format": fmt,
                            "axes": "z, y, x: inferior to superior, anterior to posterior, "
                                    "patient right to left (radiological axial view)"}
    if loaded.affine is not None:
        meta["nifti_affine"] = np.asarray(loaded.affine).tolist()
    spacing = loaded.spacing or (1.0,) * ndim
    kwargs: dict[str, Any] = {"name": name, "scale": tuple(float(v) for v in spacing),
                              "metadata": {SOURCE_KEY: meta}}
    if loaded.spacing is not None:
        # Spatial axes are the last (at most) three; leading ones (time) are steps.
        kwargs["units"] = ("pixel",) * max(0, ndim - 3) + ("mm",) * min(ndim, 3)
        meta["spacing_mm"] = [float(v) for v in spacing]
    if kind == "image" and np.issubdtype(data.dtype, np.number) and data.size \
            and float(np.min(data)) < -500:  # Hounsfield units: air is -1000
        kwargs["contrast_limits"] = CT_CONTRAST
    return data, kwargs, kind


def _name_of(path: str) -> str:
    name = Path(path).name
    for suffix in (*NIFTI_SUFFIXES, *DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_nifti_layers(path: PathOrPaths) -> list[tuple[Any, dict, str]]:
    """Read a NIfTI file: an image layer, or labels for integer files named seg/label/mask."""
    from .io import read_nifti

    single = _one_path(path) or str(path[0])
    loaded = read_nifti(single)
    name = _name_of(single)
    is_labels = np.issubdtype(loaded.data.dtype, np.integer) and LABEL_NAME.search(name)
    if is_labels:
        loaded.data = loaded.data.astype(np.int32, copy=False)
    return [_layer(loaded, name, "labels" if is_labels else "image", "nifti")]


def read_dicom_layers(path: PathOrPaths) -> list[tuple[Any, dict, str]]:
    """Read a DICOM series (slices sorted by position, rescaled to stored units, e.g. HU)."""
    from .io import read_dicom_series

    target: Any = [str(p) for p in path] if isinstance(path, (list, tuple)) and len(path) > 1 \
        else (_one_path(path) or str(path))
    series = read_dicom_series(target)  # several series: one layer each, the user chooses
    return [_layer(loaded, _name_of(str(Path(loaded.source))), "image", "dicom")
            for loaded in series]
