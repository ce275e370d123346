#!/usr/bin/env bash
# BCV 13 organs at 512 px (Tab. 1: Dice 89.91, 3.5M trainable parameters), then the
# BCV model on AMOS, liver only (Tab. 3: 86.28). Slice-wise 2D, as in the paper.
#
#   Data: BCV / Multi-Atlas Labeling Beyond the Cranial Vault (Synapse, registration
#         needed): https://www.synapse.org/#!Synapse:syn3193805 -> RawData/Training/
#         img/img00XX.nii.gz and label/label00XX.nii.gz (13 organs, liver = 6).
#         AMOS 2022 (CC BY 4.0): https://zenodo.org/records/7262581 -> imagesTr/, labelsTr/
#         (CT cases, ids < 500; liver = 6 as in BCV). The box of a multi-class sample is
#         the union of all its organs, so AMOS keeps every organ BCV knows and only the
#         liver is scored.
#   Needs: pip install nibabel  (for prepare_slices.py)
set -euo pipefail
BCV=${BCV:?set BCV to the folder holding img/ and label/}
AMOS=${AMOS:?set AMOS to the folder holding imagesTr/ and labelsTr/}
WORK=${WORK:-runs/bcv}
EPOCHS=${EPOCHS:-1000}

python training/prepare_slices.py --images "$BCV/img" --labels "$BCV/label" \
    --out "$WORK/bcv_slices" --window abdomen --split 0.6,0.2,0.2
python training/prepare_slices.py --images "$AMOS/imagesTr" --labels "$AMOS/labelsTr" \
    --out "$WORK/amos_slices" --window abdomen --ct-only \
    --label-map 10:11,11:12,12:13,13:0,14:0,15:0  # AMOS ids -> BCV ids (liver is 6 in both)

imedsam train --data "$WORK/bcv_slices" --split "$WORK/bcv_slices/split.csv" \
    --multiclass-labels --classes 13 --out "$WORK/adapter.safetensors" \
    --variant vit_b --base-weights vit_b --mode adapters --input-size 512 \
    --epochs "$EPOCHS" --points 16384 --val-label-size 512 "$@"
imedsam evaluate --data "$WORK/bcv_slices" --split "$WORK/bcv_slices/split.csv" \
    --subset test --multiclass-labels --adapter "$WORK/adapter.safetensors" \
    --label-size 512 --json "$WORK/bcv_test_512.json"
imedsam evaluate --data "$WORK/amos_slices" --multiclass-labels \
    --adapter "$WORK/adapter.safetensors" --label-size 512 --only-class 6 \
    --json "$WORK/amos_liver_512.json"
