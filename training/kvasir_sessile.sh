#!/usr/bin/env bash
# Kvasir-Sessile at 384 px, 60:20:20, ViT-B + LoRA + frequency adapter + INR decoder:
# the paper's main binary setting (Tab. 1: Dice 91.49, HD 11.59) and its
# cross-resolution test (Tab. 2: 384->128 91.45, 384->896 91.33). GPU recommended.
#
#   Data: Kvasir-SEG's sessile subset, 196 images (Simula; research/education use only):
#         https://datasets.simula.no/kvasir-seg/  ->  DATA/images/*.jpg, DATA/masks/*.jpg
#   Split: the paper's split was never published; a CSV name,split (60:20:20) is needed,
#          e.g. shared/data/kvasir-sessile/splits/surrogate_seed4200_118tr-39val-39ts.csv.
#   Weights: SAM ViT-B (sam_vit_b_01ec64.pth) is fetched on first use, or set
#            IMEDSAM_WEIGHTS_DIR to a folder that holds it.
set -euo pipefail
DATA=${DATA:?set DATA to the Kvasir-Sessile folder (images/ and masks/)}
SPLIT=${SPLIT:?set SPLIT to a name,split CSV}
OUT=${OUT:-runs/kvasir_sessile_vit_b}
EPOCHS=${EPOCHS:-1000}   # the paper: 1000 epochs, best validation epoch reported

imedsam train --data "$DATA" --split "$SPLIT" --out "$OUT/adapter.safetensors" \
    --variant vit_b --base-weights vit_b --mode adapters --input-size 384 \
    --epochs "$EPOCHS" --points 16384 --val-label-size 384 --device auto "$@"

for size in 384 128 896; do
    imedsam evaluate --data "$DATA" --split "$SPLIT" --subset test \
        --adapter "$OUT/adapter.safetensors" --label-size "$size" \
        --json "$OUT/test_${size}.json"
done
