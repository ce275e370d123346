"""Between image pixels and the square encoder input.

An ``H x W`` image is scaled so its longer side becomes the encoder input size
``S`` and padded at the bottom and right (SAM's convention: aspect ratio kept).
Coordinates are pixel-edge coordinates: ``x = 0`` is the left edge of the first
column and ``x = W`` the right edge of the last, so a pixel's centre is at
``i + 0.5``. Normalised decoder coordinates live in ``[-1, 1]`` over the input.
"""

from __future__ import annotations

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
            max(1, min(self.size, round(self.height * scale))),
            max(1, min(self.size, round(self.width * scale))),
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


def letterbox_image(image: np.ndarray, size: int) -> tuple[torch.Tensor, Letterbox]:
    """``(H, W, 3)`` RGB (uint8 or float in [0, 255]) -> ``(1, 3, S, S)`` float32 input.

    Downscaling is antialiased; the padding is zero (black), as in SAM.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    box = Letterbox(image.shape[0], image.shape[1], size)
    tensor = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    h, w = box.resized
    if (h, w) != tuple(image.shape[:2]):
        tensor = F.interpolate(tensor, size=(h, w), mode="bilinear", align_corners=False,
                               antialias=True).clamp_(0, 255)
    return F.pad(tensor, (0, size - w, 0, size - h)), box
