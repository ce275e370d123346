"""napari writer for Labels layers: TIFF (with resolution), PNG (2D), NIfTI (with nibabel).

npe2 single-layer writer: ``write_labels(path, data, meta) -> [written paths]``.

Never loses data: files are written through :func:`napari_imedsam.saving.atomic_save`
(a temporary file moved into place only when complete), and an existing file
is never replaced. napari's Save dialog asks before replacing the exact name
typed, but napari appends the extension afterwards when none was typed, and
scripts call writers with no dialog at all; so when the name is taken the
layer goes to the next free name (``NAME-2.tif``), and a notification says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import io, saving
from ._reader import SOURCE_KEY

TIFF_SUFFIXES = (".tif", ".tiff")


def spacing_of(meta: dict[str, Any]) -> tuple[tuple[float, ...], str]:
    """The layer's pixel spacing and its unit ("mm" when the layer says so, else "pixel")."""
    scale = tuple(float(v) for v in (() if meta.get("scale") is None else meta["scale"]))
    units = [str(u) for u in (() if meta.get("units") is None else meta["units"])]
    mm = bool(units) and all(u in ("millimeter", "mm") for u in units[-2:])
    return scale, "mm" if mm else "pixel"


def _labels_array(data: Any) -> np.ndarray:
    """The labels as a plain integer array (multiscale: the full-resolution level)."""
    if isinstance(data, (list, tuple)):
        data = data[0]
    array = np.asarray(data)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {array.dtype}")
    return array


def write_labels_file(path: str | Path, array: np.ndarray, meta: dict[str, Any], *,
                      overwrite: bool = False) -> Path:
    """Write ``array`` to ``path`` by its suffix; ``meta`` is the layer's state (scale,
    units, metadata). Raises ValueError for a format that cannot hold the data."""
    path = Path(path)
    name = path.name.lower()
    scale, unit = spacing_of(meta)
    if name.endswith(TIFF_SUFFIXES):
        dtype = saving.label_dtype(array)  # every id kept: 2**31 and more need 64 bits
        pixel = tuple(scale[-2:]) if len(scale) >= 2 else None
        return saving.write_tiff(path, array.astype(dtype, copy=False), pixel_size=pixel, unit=unit,
                             spacing=scale or None, overwrite=overwrite)
    if name.endswith(".png"):
        return saving.write_png(path, array, overwrite=overwrite)
    if name.endswith(io.NIFTI_SUFFIXES):
        if array.ndim not in (2, 3):
            raise ValueError(f"NIfTI export takes 2D or 3D labels, got shape {array.shape}")
        source = (meta.get("metadata") or {}).get(SOURCE_KEY) or {}
        affine = source.get("nifti_affine")
        return io.write_nifti(path, array.astype(saving.label_dtype(array), copy=False),
                              spacing=scale or None,
                              source_affine=None if affine is None else np.asarray(affine),
                              overwrite=overwrite)
    raise ValueError(f"{path.name}: save labels as .tif, .png (2D) or .nii / .nii.gz")


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer: one Labels layer to TIFF, PNG or NIfTI; never replaces a file."""
    array = _labels_array(data)
    written = saving.save_new(path, lambda target: write_labels_file(target, array, meta))
    if written != Path(path):
        from napari.utils.notifications import show_warning

        show_warning(f"I-MedSAM kept the existing {Path(path).name} and saved the labels as "
                     f"{written.name}")
    return [str(written)]
