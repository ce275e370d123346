"""The package's two rectangles, in pixel-edge coordinates (pixel ``i`` spans ``[i, i + 1]``).

A ``Box`` is a prompt, ordered as SAM orders it; a ``Region`` is a part of the
image to decode, ordered as numpy indexes it. Kept apart from the modules that
use them so that importing the types costs nothing (no torch).
"""

from __future__ import annotations

Box = tuple[float, float, float, float]  # x0, y0, x1, y1
Region = tuple[float, float, float, float]  # y0, x0, y1, x1


def output_grid(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """The output grid of an ``(H, W)`` image at ``scale``: each side rounded, at least 1
    (``SegmentationSession.predict(scale=...)``, the export and the CLI all use it)."""
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
