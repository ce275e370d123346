#!/usr/bin/env bash
# The shipped `demo` model: the `demo` variant (small ViT encoder, the paper's decoder
# shapes) trained from scratch (--mode full) on the package's synthetic generator only
# (CT-like and endoscopy-like images). No Kvasir, no CVC: redistributable by construction.
# Runs on a CPU; then stores it in half precision as napari_imedsam/resources/demo.safetensors.
set -euo pipefail
OUT=${OUT:-runs/demo}
IMAGES=${IMAGES:-1000}   # synthetic training images (validation: a fifth as many, other seed)
EPOCHS=${EPOCHS:-5}

imedsam train --synthetic "$IMAGES" --synthetic-kind mixed --out "$OUT/demo_full.safetensors" \
    --variant demo --mode full --epochs "$EPOCHS" --points 1024 --batch-size 4 \
    --val-label-size 128 --seed 0 --device auto "$@"
python training/export_demo.py "$OUT/demo_full.safetensors" napari_imedsam/resources/demo.safetensors
imedsam evaluate --synthetic 1000 --subset test --model demo --label-size 256 \
    --json "$OUT/demo_synthetic_test.json"
