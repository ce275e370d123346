"""The I-MedSAM model in pure PyTorch (no Qt, no napari).

``build_model`` assembles a variant from :data:`VARIANTS`; ``save_adapter`` /
``load_adapter`` move trained weights as safetensors + JSON.
"""

from .build import TRAIN_MODES, build_model, parameter_counts, set_trainable, trainable_parts
from .checkpoint import load_adapter, read_adapter, save_adapter
from .config import VARIANTS, ModelConfig, get_config
from .devices import autocast, resolve_device
from .modeling.imedsam import IMedSAM, Prediction, PromptFeatures, grid_points

__all__ = [
    "TRAIN_MODES",
    "VARIANTS",
    "IMedSAM",
    "ModelConfig",
    "Prediction",
    "PromptFeatures",
    "autocast",
    "build_model",
    "get_config",
    "grid_points",
    "load_adapter",
    "parameter_counts",
    "read_adapter",
    "resolve_device",
    "save_adapter",
    "set_trainable",
    "trainable_parts",
]
