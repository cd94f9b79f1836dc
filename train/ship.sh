#!/usr/bin/env bash
# Ship the recipe's adapters into the repository as the default model (models/matroyshka-smollm2-scifact):
# rank-truncated (stage 1 to 8, compensation to 4), fp16, ~13 MB in all (see its MODEL_CARD.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/smollm2}
OUT=${OUT:-models/matroyshka-smollm2-scifact}
"$PY" -m train export --adapter "$RUNS/stage1" --output "$OUT/stage1" --rank "${STAGE1_RANK:-8}"
for pair in vertical:stage2_vertical r2:stage3_r2 r4:stage3_r4; do
  "$PY" -m train export --adapter "$RUNS/${pair#*:}" --output "$OUT/${pair%%:*}" --rank "${COMP_RANK:-4}"
done
du -sh "$OUT"
