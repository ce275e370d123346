"""Load a ready-to-use model by name: the default (LiteMedSAM + our shipped
I-MedSAM adapter), a SAM base, or an adapter."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .build import build_model
from .checkpoint import (adapter_model_config, check_file_shapes, load_adapter,
                         read_adapter_config)
from .config import VARIANTS, get_config
from .modeling.imedsam import IMedSAM
from .weights import REGISTRY, CheckpointError

from .config import DEFAULT_ADAPTER, DEFAULT_MODEL  # noqa: F401 - their home for callers


def model_from_adapter(
    adapter: str | Path,
    *,
    base_checkpoint: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> IMedSAM:
    """Build the model an adapter was trained for and load it.

    A ``full``-scope file holds every weight. An ``adapters`` file also needs
    its SAM base weights: ``base_checkpoint``, or else the registry name the
    adapter records (fetched or found in the cache).
    """
    # Its config and its tensors' shapes only: load_adapter reads the tensors, once.
    config = read_adapter_config(adapter)
    check_file_shapes(adapter, config)  # before a model of that config is built
    cfg = adapter_model_config(config)
    checkpoint = None
    if config.get("scope") != "full":
        recorded = (config.get("base_model") or {}).get("name")
        checkpoint = base_checkpoint or (recorded if recorded in REGISTRY else None)
        if checkpoint is None:
            raise CheckpointError(
                f"{adapter} adapts SAM weights {recorded or '(unknown)'}: pass the base "
                "checkpoint file it was trained on"
            )
    model = build_model(config=cfg, checkpoint=checkpoint)
    load_adapter(model, adapter)
    return model.to(device).eval()


def load_model(
    name: str | Path,
    *,
    adapter: str | Path | None = None,
    input_size: int | None = None,
    device: torch.device | str = "cpu",
) -> IMedSAM:
    """``medsam_lite`` (the default: LiteMedSAM's weights from its package and the
    I-MedSAM adapter shipped here, or ``adapter`` instead); ``vit_b``/``vit_l``/
    ``vit_h`` (SAM weights, fetched once); a SAM-layout ``.pth`` file (e.g. MedSAM,
    taken as vit_b); or a full-scope ``.safetensors`` model; optionally with an adapter.
    """
    if str(name) == DEFAULT_MODEL:
        if adapter is None and not DEFAULT_ADAPTER.is_file():
            raise CheckpointError(
                f"the default model's adapter is missing from the package ({DEFAULT_ADAPTER}): "
                "reinstall napari-imedsam")
        # The prompt path as the adapter was trained (e.g. LoRA for clicks); the
        # classes come from the base, and an adapter with several grows the heads.
        prompt = adapter_model_config(read_adapter_config(adapter or DEFAULT_ADAPTER)).prompt
        model = build_model(config=replace(get_config(DEFAULT_MODEL), prompt=prompt),
                            checkpoint=DEFAULT_MODEL)
        load_adapter(model, adapter or DEFAULT_ADAPTER, grow=True)
        return model.to(device).eval()
    if str(name).endswith(".safetensors"):
        # A self-contained (full-scope) model file, e.g. a small variant trained here.
        model = model_from_adapter(name, device=device)
        if adapter is not None:
            load_adapter(model, adapter)
        return model
    if adapter is not None:
        return model_from_adapter(adapter, base_checkpoint=name, device=device)
    variant = str(name) if str(name) in REGISTRY else "vit_b"
    if variant not in VARIANTS:
        raise ValueError(f"unknown model {name!r}")
    model = build_model(variant, checkpoint=name, input_size=input_size)
    return model.to(device).eval()
