"""Intensities the encoder can read: CT windows, and percentile scaling for the rest.

SAM's encoder expects 8-bit RGB. CT in Hounsfield units is windowed first (the
presets radiologists use); MR, microscopy and anything else not already 8-bit
is scaled by its 0.5-99.5 percentiles (:func:`as_rgb_uint8`).
"""

from __future__ import annotations

import math

import numpy as np

#: (width, level) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "liver": (150.0, 30.0),
    "mediastinum": (350.0, 50.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}

Window = str | tuple[float, float] | None


def parse_window(window: Window) -> tuple[float, float] | None:
    """A preset name, ``"W,L"`` text, or a ``(width, level)`` pair; None for no window."""
    if window is None or window == "none":
        return None
    if isinstance(window, str):
        if window in CT_WINDOWS:
            return CT_WINDOWS[window]
        try:
            width, level = (float(v) for v in window.split(","))
        except ValueError:
            raise ValueError(
                f"unknown CT window {window!r}: use one of {', '.join(CT_WINDOWS)} or 'WIDTH,LEVEL'"
            ) from None
    else:
        width, level = (float(v) for v in window)
    if not (math.isfinite(width) and math.isfinite(level)) or not width > 0:
        raise ValueError(f"a CT window needs a finite positive width and a finite level, "
                         f"got width {width:g}, level {level:g}")
    return width, level


def apply_window(image: np.ndarray, window: Window) -> np.ndarray:
    """Hounsfield units -> uint8 grey through ``window``; NaN reads as air (the low end)."""
    parsed = parse_window(window)
    if parsed is None:
        raise ValueError("apply_window needs a window")
    width, level = parsed
    source = np.asarray(image)
    out = np.empty(source.shape, np.uint8)
    # A band of rows at a time: float32 copies of a whole large slice (and NumPy's
    # temporaries) took 4 of them at once; the values are computed as before.
    for rows in _row_bands(source):
        data = source[rows].astype(np.float32)
        data = np.nan_to_num(data, nan=level - width, posinf=level + width,
                             neginf=level - width)
        scaled = np.clip((data - (level - width / 2)) / width, 0.0, 1.0)
        out[rows] = np.rint(scaled * 255)
    return out


#: Values converted at a time by the banded conversions (2 MB as float64 at most).
_BAND_VALUES = 1 << 18


def _row_bands(data: np.ndarray) -> list[slice]:
    """Row slices of ``data`` holding about ``_BAND_VALUES`` values each."""
    per_row = max(1, int(np.prod(data.shape[1:], dtype=np.int64)))
    step = max(1, _BAND_VALUES // per_row)
    return [slice(r, r + step) for r in range(0, max(data.shape[0], 1), step)]


def to_encoder_rgb(image: np.ndarray, window: Window = None) -> np.ndarray:
    """Any 2D image (grey, RGB, RGBA; any numeric dtype) -> ``(H, W, 3)`` uint8 RGB.

    With a ``window`` the image must be single-channel (CT); without one,
    8-bit data passes through and other data is percentile-scaled. NaN/inf are
    replaced (by air with a window, by 0 otherwise). 3D volumes must be sliced
    first: the error says so.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"got an array of shape {arr.shape}: pass one 2D slice (H, W) or an RGB(A) "
            "image (H, W, 3|4); volumes are segmented slice by slice"
        )
    if arr.size == 0 or min(arr.shape[:2]) < 2:
        raise ValueError(f"image of shape {arr.shape} is too small to segment")
    if parse_window(window) is not None:
        if arr.ndim == 3 and arr.shape[-1] != 1:
            if not is_grey(arr):
                raise ValueError("a CT window applies to grey images; this one has colour: "
                                 "choose window 'none'")
            arr = arr[..., :1]  # CT saved as RGB: three equal channels are one grey image
        grey = apply_window(arr.reshape(arr.shape[:2]), window)
        return np.repeat(grey[..., None], 3, axis=-1)
    return as_rgb_uint8(arr)


def is_grey(image: np.ndarray) -> bool:
    """Whether an (H, W, 3|4) image's colour channels are all equal (alpha ignored)."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        return arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1)
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a 2D grey, RGB or RGBA image of any numeric dtype to (H, W, 3) uint8.

    Alpha is dropped and grey is repeated to 3 channels. Non-uint8 data is scaled
    by its 0.5-99.5 percentiles (over all channels jointly, so colours keep their
    balance) to [0, 255]; NaN/inf become 0 first; a constant image gives zeros.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[-1] == 4 else arr
    elif arr.ndim != 2:
        raise ValueError(
            f"expected a 2D image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {arr.shape}"
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"expected a numeric image, got dtype {arr.dtype}")
    if arr.dtype != np.uint8:
        arr = _scale_to_uint8(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr)


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Percentile scaling, in memory of about one copy of ``arr`` in its own type.

    A 12000 x 12000 16-bit image took 4.5 GB here when it went through float64
    copies of the whole image (issue 23); the percentiles are taken on one copy
    in the image's own type (NumPy interpolates them in float64 either way) and
    the scaling runs a band of rows at a time, so the values are the same.
    """
    data = np.array(arr, copy=True)
    if data.dtype.kind == "f":
        data[~np.isfinite(data)] = 0  # NaN/inf count as 0, as they are written
    lo, hi = (float(v) for v in np.percentile(data, [0.5, 99.5], overwrite_input=True))
    if hi <= lo:
        # Sparse images (a few bright pixels on a flat background) collapse the
        # percentiles; the full range keeps them visible instead of blank.
        lo, hi = float(data.min()), float(data.max())
    del data
    out = np.zeros(arr.shape, dtype=np.uint8)
    if hi <= lo:
        return out
    for rows in _row_bands(arr):
        band = arr[rows].astype(np.float64)
        band[~np.isfinite(band)] = 0.0
        out[rows] = np.rint(np.clip((band - lo) / (hi - lo), 0.0, 1.0) * 255.0)
    return out
