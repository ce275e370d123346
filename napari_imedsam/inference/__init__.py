"""Answering boxes with a model: one image's embedding, many boxes, any output grid.

:class:`SegmentationSession` embeds an image once (cached by content, through the
fastest encoder runtime that gives the same output) and answers boxes at any
resolution; :class:`BandMerge` folds many boxes into one label image band by band
(:func:`predict_merged` gathers the bands), and :func:`masks_box_by_box` gives each
box's mask without holding every box's maps at once. Imports only ``model``, ``io``
and ``saving`` from the package.

Names are imported on first use, so ``napari_imedsam.inference.regions`` and the
intensity helpers do not pay for importing torch.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "session": ["SegmentationSession", "SegmentationResult", "boundary_polygons"],
    "merge": ["BandMerge", "MergedResult", "masks_box_by_box", "predict_merged"],
    "cache": ["EmbeddingCache"],
    "intensity": ["CT_WINDOWS", "apply_window", "as_rgb_uint8", "parse_window", "to_encoder_rgb"],
    "regions": ["Box", "Region"],
})
