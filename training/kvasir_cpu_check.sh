#!/usr/bin/env bash
# The end-to-end check of the engine on real data without SAM weights: the `demo` variant
# trained from scratch (--mode full) on Kvasir-Sessile's training split, on a 2-core CPU in
# about 45 minutes, then evaluated on the test split at 384, 128 and 896 next to the
# ellipse-in-the-box baseline. (This model is for the check only: Kvasir's terms forbid
# shipping it.)
set -euo pipefail
DATA=${DATA:-../shared/data/kvasir-sessile}
SPLIT=${SPLIT:-$DATA/splits/surrogate_seed4200_118tr-39val-39ts.csv}
OUT=${OUT:-runs}

imedsam train --data "$DATA" --split "$SPLIT" --out "$OUT/kvasir_demo_full.safetensors" \
    --variant demo --input-size 384 --mode full --epochs 55 --points 1024 --device cpu \
    --time-budget 2820 --seed 0
for size in 384 128 896; do
    imedsam evaluate --data "$DATA" --split "$SPLIT" --subset test --device cpu \
        --adapter "$OUT/kvasir_demo_full.safetensors" --label-size "$size" \
        --json "$OUT/kvasir_test_${size}.json"
done
