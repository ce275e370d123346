"""The I-MedSAM model in pure PyTorch (no Qt, no napari).

``build_model`` assembles a variant from :data:`VARIANTS`; ``save_adapter`` /
``load_adapter`` move trained weights as safetensors + JSON.

Names are imported on first use, so ``napari_imedsam.model.weights`` and the
``imedsam weights`` command do not pay for importing torch.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "config": ["TRAIN_MODES", "VARIANTS", "ModelConfig", "get_config"],
    "build": ["build_model", "parameter_counts", "set_trainable", "trainable_parts"],
    "checkpoint": ["load_adapter", "read_adapter", "save_adapter"],
    "devices": ["autocast", "resolve_device"],
    "modeling.imedsam": ["IMedSAM", "Prediction", "PromptFeatures", "grid_points"],
})
