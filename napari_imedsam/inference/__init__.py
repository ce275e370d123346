"""Answering boxes with a model: one image's embedding, many boxes, any output grid.

:class:`SegmentationSession` embeds an image once (cached by content, through the
fastest encoder runtime that gives the same output) and answers boxes at any
resolution; :func:`predict_merged` folds many boxes into one label image with
bounded memory. Imports only ``model`` and ``io`` from the package.

Names are imported on first use, so ``napari_imedsam.inference.regions`` and the
intensity helpers do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SegmentationSession": ".session",
    "SegmentationResult": ".session",
    "boundary_polygons": ".session",
    "predict_merged": ".merge",
    "MergedResult": ".merge",
    "EmbeddingCache": ".cache",
    "CT_WINDOWS": ".intensity",
    "apply_window": ".intensity",
    "as_rgb_uint8": ".intensity",
    "parse_window": ".intensity",
    "to_encoder_rgb": ".intensity",
    "Box": ".regions",
    "Region": ".regions",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
