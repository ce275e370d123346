"""Between image pixels and the square encoder input.

An ``H x W`` image is scaled so its longer side becomes the encoder input size
``S`` and padded at the bottom and right (SAM's convention: aspect ratio kept;
the new side is ``int(x * S / max(H, W) + 0.5)``, as SAM and LiteMedSAM compute it).
Two ways in (``ModelConfig.preprocess``):

- ``sam``: bilinear, antialiased resize; RGB stays in [0, 255] (the encoder
  normalises by SAM's mean and standard deviation);
- ``medsam_lite``: LiteMedSAM's own, exactly: area resize (OpenCV's
  ``INTER_AREA``, rounded back to 8 bits for 8-bit images), then min-max of the
  resized image over all channels to [0, 1], zero padding; boxes are scaled by
  ``S / max(H, W)`` and truncated to whole input pixels.

Coordinates are pixel-edge coordinates: ``x = 0`` is the left edge of the first
column and ``x = W`` the right edge of the last, so a pixel's centre is at
``i + 0.5``. Normalised decoder coordinates live in ``[-1, 1]`` over the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Letterbox:
    """The placement of an ``height x width`` image inside an ``size x size`` input."""

    height: int
    width: int
    size: int

    @property
    def resized(self) -> tuple[int, int]:
        """``(h, w)`` of the image once scaled into the input (before padding)."""
        scale = self.size / max(self.height, self.width)
        return (
            max(1, min(self.size, math.floor(self.height * scale + 0.5))),
            max(1, min(self.size, math.floor(self.width * scale + 0.5))),
        )

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Exact per-axis factors from image pixels to input pixels."""
        h, w = self.resized
        return w / self.width, h / self.height

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        """Image pixel coordinates ``(..., 2)`` (x, y) -> input pixel coordinates."""
        sx, sy = self.scale_xy
        return np.asarray(xy, dtype=np.float64) * np.array([sx, sy])

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, 4)`` x0, y0, x1, y1 in image pixels -> input pixels."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return self.to_input(boxes.reshape(-1, 2, 2)).reshape(-1, 4)

    def boxes_to_prompt(self, boxes: np.ndarray, preprocess: str = "sam") -> np.ndarray:
        """``(N, 4)`` boxes in image pixels -> the prompt the backbone was trained with.

        ``sam``: the exact input-pixel box. ``medsam_lite``: LiteMedSAM's: the
        first and last pixel of each side (``x1 - 1`` of a pixel-edge box),
        scaled by ``S / max(H, W)`` and truncated to whole pixels.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if preprocess == "sam":
            return self.boxes_to_input(boxes)
        if preprocess != "medsam_lite":
            raise ValueError(f"unknown preprocess {preprocess!r}")
        last = boxes - np.array([0.0, 0.0, 1.0, 1.0])
        last[:, 2:] = np.maximum(last[:, 2:], last[:, :2])
        return np.floor(last * (self.size / max(self.height, self.width)))

    def normalize(self, xy: np.ndarray) -> np.ndarray:
        """Image pixel coordinates ``(..., 2)`` -> decoder coordinates in ``[-1, 1]``."""
        return self.to_input(xy) * (2.0 / self.size) - 1.0

    def grid_centres(
        self,
        out_shape: tuple[int, int],
        region: tuple[int, int, int, int] | None = None,
    ) -> np.ndarray:
        """Image coordinates of the pixel centres of an output grid over the image.

        Args:
            out_shape: ``(H', W')`` of the output grid covering the whole image.
            region: optional ``(row0, col0, row1, col1)`` sub-window of that grid.

        Returns:
            ``(rows, cols, 2)`` (x, y) in image pixels.
        """
        out_h, out_w = out_shape
        row0, col0, row1, col1 = region if region is not None else (0, 0, out_h, out_w)
        ys = (np.arange(row0, row1) + 0.5) * (self.height / out_h)
        xs = (np.arange(col0, col1) + 0.5) * (self.width / out_w)
        grid_x, grid_y = np.meshgrid(xs, ys)
        return np.stack([grid_x, grid_y], axis=-1)


def letterbox_image(
    image: np.ndarray, size: int, preprocess: str = "sam"
) -> tuple[torch.Tensor, Letterbox]:
    """``(H, W, 3)`` RGB (uint8 or float in [0, 255]) -> ``(1, 3, S, S)`` float32 input.

    ``sam``: antialiased bilinear downscaling, values in [0, 255], zero padding.
    ``medsam_lite``: area resize, min-max to [0, 1], zero padding (module doc).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    box = Letterbox(image.shape[0], image.shape[1], size)
    h, w = box.resized
    if preprocess == "medsam_lite":
        resized = area_resize(image, (h, w))
        low, high = float(resized.min()), float(resized.max())
        tensor = torch.from_numpy((resized - low) / max(high - low, 1e-8)).float()
        tensor = tensor.permute(2, 0, 1)[None]
    elif preprocess == "sam":
        tensor = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
        if (h, w) != tuple(image.shape[:2]):
            tensor = F.interpolate(tensor, size=(h, w), mode="bilinear", align_corners=False,
                                   antialias=True).clamp_(0, 255)
    else:
        raise ValueError(f"unknown preprocess {preprocess!r}")
    return F.pad(tensor, (0, size - w, 0, size - h)), box


def _area_weights(src: int, dst: int) -> np.ndarray:
    """``(dst, src)`` weights of OpenCV's ``INTER_AREA`` along one axis.

    Shrinking: each output pixel averages the input pixels its footprint
    covers, by covered length. Enlarging: OpenCV's linear taps at
    ``frac((d + 1) - (s + 1) * dst / src)`` from ``s = floor(d * src / dst)``.
    """
    weights = np.zeros((dst, src))
    scale = src / dst
    if scale >= 1:
        for d in range(dst):
            start, stop = d * scale, (d + 1) * scale
            cell = min(scale, src - start)
            first, last = math.ceil(start), min(math.floor(stop), src - 1)
            first = min(first, last)
            if first - start > 1e-3:
                weights[d, first - 1] += (first - start) / cell
            weights[d, first:last] += 1.0 / cell
            if stop - last > 1e-3:
                weights[d, last] += min(stop - last, 1.0, cell) / cell
        return weights
    for d in range(dst):
        s = math.floor(d * scale)
        frac = (d + 1) - (s + 1) / scale
        frac = 0.0 if frac <= 0 else frac - math.floor(frac)
        lo, hi = min(max(s, 0), src - 1), min(max(s + 1, 0), src - 1)
        weights[d, lo] += 1.0 - frac
        weights[d, hi] += frac
    return weights


def area_resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W, C)`` -> ``(h, w, C)`` float64 with OpenCV's ``INTER_AREA`` weights;
    8-bit input is rounded back to whole levels, as OpenCV returns uint8.

    Shrinking matches OpenCV exactly (tested against it); enlarging (images
    under the input size) can differ by one grey level, where OpenCV uses
    fixed-point coefficients.
    """
    h, w = shape
    source = np.asarray(image)
    if (h, w) == source.shape[:2]:
        return source.astype(np.float64)
    rows, cols = _area_weights(source.shape[0], h), _area_weights(source.shape[1], w)
    # A channel at a time, along the rows in bands of columns, then along the columns:
    # the float64 intermediate is (h, W) for one channel. All channels at once, with
    # the transposed copy the column pass needed, took 590 MB on a 12000 x 12000 RGB
    # image (issue 23). 8-bit input (the encoder's) gives the same levels as before
    # (60 random shapes); float input can differ in its last bit (BLAS sums in
    # another order).
    height, width = source.shape[:2]
    channels = source.shape[2] if source.ndim == 3 else 1
    planes = source.reshape(height, width, channels)
    out = np.empty((h, w, channels))
    tall = np.empty((h, width))
    for c in range(channels):
        for c0 in range(0, width, 256):
            tall[:, c0 : c0 + 256] = rows @ planes[:, c0 : c0 + 256, c].astype(np.float64)
        out[:, :, c] = tall @ cols.T
    out = out.reshape((h, w) + source.shape[2:])
    if source.dtype == np.uint8:
        # OpenCV halves in integers, rounding halves up; other factors go
        # through floats, rounding halves to even.
        halving = source.shape[0] == 2 * h and source.shape[1] == 2 * w
        out = np.floor(out + 0.5) if halving else np.rint(out)
        out = np.clip(out, 0, 255)
    return out
