"""Answering boxes with a model: one image's embedding, many boxes, any output grid.

:class:`SegmentationSession` embeds an image once (cached by content, through the
fastest encoder runtime that gives the same output) and answers boxes at any
resolution; :func:`predict_merged` folds many boxes into one label image with
bounded memory. Imports only ``model`` and ``io`` from the package.

Names are imported on first use, so ``napari_imedsam.inference.regions`` and the
intensity helpers do not pay for importing torch.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "session": ["SegmentationSession", "SegmentationResult", "boundary_polygons"],
    "merge": ["predict_merged", "MergedResult"],
    "cache": ["EmbeddingCache"],
    "intensity": ["CT_WINDOWS", "apply_window", "as_rgb_uint8", "parse_window", "to_encoder_rgb"],
    "regions": ["Box", "Region"],
})
