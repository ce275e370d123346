"""Store a training result as the shipped default model's adapter.

Usage: python training/export_default.py RUN.safetensors napari_imedsam/resources/medsam_lite.safetensors

Checks that the run adapts the LiteMedSAM backbone and leaves its encoder and prompt
path as they are (``implicit`` mode), so that the default's "base model" decoder is
LiteMedSAM's own; keeps fp32 (the file is about 5 MB).
"""

from __future__ import annotations

import sys

import torch

from napari_imedsam.model.checkpoint import read_adapter, save_adapter
from napari_imedsam.model.loading import model_from_adapter
from napari_imedsam.model.weights import REGISTRY


def main(source: str, target: str) -> None:
    tensors, config = read_adapter(source)
    base = config.get("base_model") or {}
    if base.get("sha256") != REGISTRY["medsam_lite"].sha256:
        raise SystemExit(f"{source} was not trained on LiteMedSAM's weights")
    mode = (config.get("extra", {}).get("train_config") or {}).get("mode")
    if mode != "implicit":
        raise SystemExit(f"{source} was trained in {mode!r} mode; the default needs 'implicit'")
    untouched = [k for k, v in tensors.items() if (".lora_B." in k or ".gates." in k) and v.any()]
    if untouched:
        raise SystemExit(f"{source} changes the encoder ({untouched[0]})")
    model = model_from_adapter(source)
    extra = {**config.get("extra", {}), "exported_from": source,
             "what": "napari-imedsam default model: I-MedSAM's implicit decoder on "
                     "LiteMedSAM (MedSAM distilled into TinyViT; Apache-2.0), trained on "
                     "synthetic images only"}
    path = save_adapter(model, target, extra=extra, overwrite=True, dtype=torch.float32)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main(*sys.argv[1:3])
