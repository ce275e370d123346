"""Intensities the encoder can read: CT windows, and percentile scaling for the rest.

SAM's encoder expects 8-bit RGB. CT in Hounsfield units is windowed first (the
presets radiologists use); MR, microscopy and anything else not already 8-bit
is scaled by its 0.5-99.5 percentiles (:func:`as_rgb_uint8`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        # Grey is scaled straight into the three channels: a grey 8-bit copy repeated
        # afterwards was 144 MB more at once on a 12000 x 12000 image (issue 23).
        return _scale_to_uint8(arr, grey_to_rgb=arr.ndim == 2)
    if arr.ndim == 2:
        out = np.empty((*arr.shape, 3), np.uint8)
        out[...] = arr[..., None]
        return out
    return np.ascontiguousarray(arr)


def _scale_to_uint8(arr: np.ndarray, *, grey_to_rgb: bool = False) -> np.ndarray:
    """Percentile scaling, in bounded memory, the scaling a band of rows at a time.

    A 12000 x 12000 16-bit image took 4.5 GB here when it went through float64
    copies of the whole image (issue 23). Percentiles are taken on one copy in the
    image's own type for images up to ``_COPY_VALUES`` values, and by counting in
    bands past that (:func:`banded_percentiles`, the same values). ``grey_to_rgb``:
    a grey ``arr`` is scaled into ``(H, W, 3)``.
    """
    if arr.size > _COPY_VALUES:
        lo, hi, low, high = banded_percentiles(arr, (0.5, 99.5))
    else:
        data = np.array(arr, copy=True)
        if data.dtype.kind == "f":
            data[~np.isfinite(data)] = 0  # NaN/inf count as 0, as they are written
        lo, hi = (float(v) for v in np.percentile(data, [0.5, 99.5], overwrite_input=True))
        if hi <= lo:
            low, high = float(data.min()), float(data.max())
        del data
    if hi <= lo:
        # Sparse images (a few bright pixels on a flat background) collapse the
        # percentiles; the full range keeps them visible instead of blank.
        lo, hi = low, high
    out = np.zeros((*arr.shape, 3) if grey_to_rgb else arr.shape, np.uint8)
    if hi <= lo:
        return out
    for rows in _row_bands(arr):
        band = arr[rows].astype(np.float64)
        band[~np.isfinite(band)] = 0.0
        # In place, the same operations in the same order as
        # ``rint(clip((band - lo) / (hi - lo), 0, 1) * 255)``: one band of float64.
        np.subtract(band, lo, out=band)
        np.divide(band, hi - lo, out=band)
        np.clip(band, 0.0, 1.0, out=band)
        np.multiply(band, 255.0, out=band)
        np.rint(band, out=band)
        out[rows] = band[..., None] if grey_to_rgb else band
    return out


#: Past this many values, percentiles are counted in bands rather than taken on a copy:
#: a float32 12000 x 12000 DICOM slice's copy was 576 MB (issue 23).
_COPY_VALUES = 1 << 24
#: Bins of each counting pass, and the most values gathered to sort at the end.
_BINS = 1 << 16
_GATHER = 1 << 20


def banded_percentiles(arr: np.ndarray, percents: tuple[float, ...]
                       ) -> tuple[float, ...]:
    """NumPy's linear percentiles of ``arr`` (non-finite values read as 0), then its
    minimum and maximum, in memory of a band of rows: the same values as
    ``np.percentile`` on the whole array.

    Each order statistic is found by counting: a histogram of the values in a range
    picks the bin that holds it, and the next pass narrows the range to that bin's
    values (or gathers them, when few, to sort). A bin whose values are all equal
    ends the search; 16-bit images and HU need one histogram.
    """
    bands = _row_bands(arr)

    def values(rows: slice) -> np.ndarray:
        band = arr[rows].astype(np.float64).ravel()
        band[~np.isfinite(band)] = 0.0
        return band

    low, high = math.inf, -math.inf
    for rows in bands:
        band = values(rows)
        if band.size:
            low, high = min(low, float(band.min())), max(high, float(band.max()))
    n = int(arr.size)
    # NumPy's "linear" method, as np.percentile computes it.
    q = np.true_divide(np.asarray(percents, dtype=np.float64), 100)
    virtual = (n - 1) * q
    previous = np.clip(np.floor(virtual), 0, n - 1).astype(np.int64)
    following = np.clip(previous + 1, 0, n - 1)
    gamma = virtual - np.floor(virtual)
    ranks = sorted(set(previous.tolist()) | set(following.tolist()))
    found = _order_statistics(bands, values, ranks, low, high)
    out = []
    for i in range(len(percents)):
        # NumPy's interpolation between the two neighbours, in its own arithmetic.
        a = np.asarray(found[int(previous[i])], dtype=arr.dtype)
        b = np.asarray(found[int(following[i])], dtype=arr.dtype)
        diff = b - a if arr.dtype.kind == "f" else np.float64(b) - np.float64(a)
        t = gamma[i]
        out.append(float(b - diff * (1 - t) if t >= 0.5 else a + diff * t))
    return (*out, low, high)


def _order_statistics(bands: list[slice], values: Callable[[slice], np.ndarray],
                      ranks: list[int], low: float, high: float) -> dict[int, float]:
    """The values of the given 0-based ranks in the sorted data, by counting."""
    found: dict[int, float] = {}
    pending = {k: (low, high, k) for k in ranks}  # rank -> (range low, high, rank in range)
    while pending:
        for k in [k for k, (a, b, _) in pending.items() if a >= b]:
            found[k] = pending.pop(k)[0]
        if not pending:
            break
        ranges = sorted({(a, b) for a, b, _ in pending.values()})
        counts = {r: np.zeros(_BINS, np.int64) for r in ranges}
        for rows in bands:
            band = values(rows)
            for a, b in ranges:
                inside = band if (a, b) == (low, high) else band[(band >= a) & (band <= b)]
                counts[(a, b)] += np.bincount(_bin(inside, a, b), minlength=_BINS)
        chosen = {}  # rank -> (range, bin, rank within the bin, count)
        for k, (a, b, rank) in pending.items():
            cum = np.cumsum(counts[(a, b)])
            j = int(np.searchsorted(cum, rank, side="right"))
            before = int(cum[j - 1]) if j else 0
            chosen[k] = ((a, b), j, rank - before, int(cum[j]) - before)
        wanted = {(r, j) for r, j, _, _ in chosen.values()}
        gathered: dict[Any, list[np.ndarray]] = {w: [] for w in wanted}
        extent = {w: [math.inf, -math.inf] for w in wanted}
        small = {(r, j) for r, j, _, c in chosen.values() if c <= _GATHER}
        for rows in bands:
            band = values(rows)
            for (a, b), j in wanted:
                inside = band if (a, b) == (low, high) else band[(band >= a) & (band <= b)]
                members = inside[_bin(inside, a, b) == j]
                if not members.size:
                    continue
                if ((a, b), j) in small:
                    gathered[((a, b), j)].append(members)
                else:
                    e = extent[((a, b), j)]
                    e[0], e[1] = min(e[0], float(members.min())), max(e[1], float(members.max()))
        for k, (r, j, rank, _) in chosen.items():
            if (r, j) in small:
                found[k] = float(np.sort(np.concatenate(gathered[(r, j)]))[rank])
                del pending[k]
            else:  # the bin's own values bound the next range: it holds them alone
                lo, hi = extent[(r, j)]
                pending[k] = (lo, hi, rank)
    return found


def _bin(v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Bins of ``_BINS`` equal parts of ``[a, b]`` (monotone in the value)."""
    return np.minimum(((v - a) * (_BINS / (b - a))).astype(np.int64), _BINS - 1)
