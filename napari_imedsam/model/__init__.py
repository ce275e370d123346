"""The I-MedSAM model in pure PyTorch (no Qt, no napari).

``build_model`` assembles a variant from :data:`VARIANTS`; ``save_adapter`` /
``load_adapter`` move trained weights as safetensors + JSON.

Names are imported on first use, so ``napari_imedsam.model.weights`` and the
``imedsam weights`` command do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TRAIN_MODES": ".config",
    "build_model": ".build",
    "parameter_counts": ".build",
    "set_trainable": ".build",
    "trainable_parts": ".build",
    "load_adapter": ".checkpoint",
    "read_adapter": ".checkpoint",
    "save_adapter": ".checkpoint",
    "VARIANTS": ".config",
    "ModelConfig": ".config",
    "get_config": ".config",
    "autocast": ".devices",
    "resolve_device": ".devices",
    "IMedSAM": ".modeling.imedsam",
    "Prediction": ".modeling.imedsam",
    "PromptFeatures": ".modeling.imedsam",
    "grid_points": ".modeling.imedsam",
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
