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
    if len(paths) == 1 and paths[0].is_file():
        from .dicom_seg import is_seg

        if is_seg(paths[0]):
            return read_seg_layers
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
    if loaded.dicom_files is not None:  # a DICOM SEG of its labels references them
        meta["dicom_files"] = list(loaded.dicom_files)
        meta["series_uid"] = loaded.series_uid
        if loaded.dicom_frames is not None:
            meta["dicom_frames"] = list(loaded.dicom_frames)
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


def _open_series_layers() -> list[Any]:
    """The DICOM series layers open in the current viewer (those this reader made)."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no viewer (scripts, tests of the reader alone)
        return []
    if viewer is None:
        return []
    return [layer for layer in viewer.layers
            if (layer.metadata.get(SOURCE_KEY) or {}).get("series_uid")]


def _series_beside(seg_path: Path, uid: str, limit: int = 5000) -> list[str]:
    """Files of series ``uid`` in the SEG's folder, its subfolders, or its sibling
    folders (headers only; at most ``limit`` files looked at)."""
    import pydicom

    folders = [seg_path.parent, *sorted(p for p in seg_path.parent.iterdir() if p.is_dir())]
    if seg_path.parent.parent != seg_path.parent:
        folders += sorted(p for p in seg_path.parent.parent.iterdir()
                          if p.is_dir() and p != seg_path.parent)
    found: list[str] = []
    seen = 0
    for folder in folders:
        for file in sorted(p for p in folder.iterdir() if p.is_file() and p != seg_path):
            seen += 1
            if seen > limit:
                return found
            try:
                ds = pydicom.dcmread(str(file), stop_before_pixels=True,
                                     specific_tags=["SeriesInstanceUID"])
            except Exception:  # noqa: BLE001 - not DICOM
                continue
            if str(getattr(ds, "SeriesInstanceUID", "")) == uid:
                found.append(str(file))
        if found:
            return found
    return found


def read_seg_layers(path: PathOrPaths) -> list[tuple[Any, dict, str]]:
    """A DICOM SEG as a Labels layer on the grid of the series it segments: the series
    open in the viewer, or found beside the SEG (then opened with it)."""
    from .dicom_seg import read_seg, referenced_series
    from .io import read_dicom_series

    seg_path = Path(_one_path(path) or str(path[0]))
    uid = referenced_series(seg_path)
    layers = []
    open_layers = _open_series_layers()
    match = [layer for layer in open_layers
             if layer.metadata[SOURCE_KEY].get("series_uid") == uid]
    if match:
        meta = match[0].metadata[SOURCE_KEY]
        files, scale = meta["dicom_files"], tuple(float(v) for v in match[0].scale)
        frames = meta.get("dicom_frames")
        translate = tuple(float(v) for v in match[0].translate)
    else:
        beside = _series_beside(seg_path, uid)
        if not beside:
            others = ", ".join(f"'{layer.name}' (series "
                               f"{layer.metadata[SOURCE_KEY].get('series_uid')})"
                               for layer in open_layers)
            where = f"the open series is {others}" if others else "no series is open"
            raise ValueError(f"{seg_path.name} segments series {uid}, which is neither open "
                             f"nor beside the file ({where}): open that series first, then "
                             "the SEG")
        loaded = [s for s in read_dicom_series(beside) if s.series_uid == uid][0]
        image = _layer(loaded, _name_of(str(Path(loaded.source))), "image", "dicom")
        layers.append(image)
        files, frames = list(loaded.dicom_files or ()), loaded.dicom_frames
        scale, translate = image[1]["scale"], (0.0,) * len(image[1]["scale"])
    read = read_seg(seg_path, files, uid, frames)
    labels = read.labels if len(scale) == 3 else read.labels[0]
    meta = {"path": str(seg_path), "format": "dicom-seg", "series_uid": uid,
            "segment_names": {str(k): v for k, v in read.names.items()}}
    layers.append((labels, {"name": _name_of(seg_path.name), "scale": scale,
                            "translate": translate, "metadata": {SOURCE_KEY: meta}}, "labels"))
    return layers
