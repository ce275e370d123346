#!/usr/bin/env bash
# Cross-domain: the Kvasir-Sessile adapter (kvasir_sessile.sh) evaluated as it is on
# CVC-ClinicDB (Tab. 3: Dice 88.83).
#
#   Data: CVC-ClinicDB, 612 frames from 31 colonoscopy sequences (Bernal et al. 2015):
#         https://polyp.grand-challenge.org/CVCClinicDB/  ->  CVC/Original/*.tif and
#         CVC/"Ground Truth"/*.tif (matched by name).
set -euo pipefail
CVC=${CVC:?set CVC to the CVC-ClinicDB folder}
ADAPTER=${ADAPTER:-runs/kvasir_sessile_vit_b/adapter.safetensors}
OUT=${OUT:-runs/kvasir_sessile_vit_b}

imedsam evaluate --images "$CVC/Original" --masks "$CVC/Ground Truth" \
    --adapter "$ADAPTER" --label-size 384 --json "$OUT/cvc_clinicdb_384.json" "$@"
