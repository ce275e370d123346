"""Store a full-scope training result as the shipped demo model (fp16 tensors).

Usage: python training/export_demo.py RUN.safetensors napari_imedsam/resources/demo.safetensors
"""

from __future__ import annotations

import sys

import torch

from napari_imedsam.model.checkpoint import read_adapter, save_adapter
from napari_imedsam.model.loading import model_from_adapter


def main(source: str, target: str) -> None:
    _, config = read_adapter(source)
    if config.get("scope") != "full":
        raise SystemExit(f"{source} is not a full-scope model")
    model = model_from_adapter(source)
    extra = {**config.get("extra", {}), "exported_from": source,
             "what": "napari-imedsam demo model: trained on synthetic images only"}
    path = save_adapter(model, target, scope="full", extra=extra, overwrite=True,
                        dtype=torch.float16)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main(*sys.argv[1:3])
