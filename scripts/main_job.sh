#!/usr/bin/env bash
# Set up (if needed) and run the main job: BM25 top-k on a real collection, re-ranked at several
# shapes by the default model, printed as a table next to BM25.
# It says up front what it runs and roughly how long on this machine (from timing a few pairs), shows a
# progress bar with an ETA while it scores (on stderr), and prints each row as it finishes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MATROYSHKA_CACHE=${MATROYSHKA_CACHE:-$PWD/.cache}
DATASET=${DATASET:-beir/scifact/test} TOP_K=${TOP_K:-20} QUERIES=${QUERIES:-50}
echo "Main job: BM25 top $TOP_K of the first $QUERIES queries of $DATASET, re-ranked by the demo model at the" \
     "default shapes and by the MiniLM teacher, each shape also fused with BM25. Loading the model, then" \
     "timing a few pairs for an estimate..."
exec .venv/bin/python -m pyterrier_matroyshka experiment --dataset "$DATASET" \
    --top-k "$TOP_K" --queries "$QUERIES" --teacher --fuse "$@"
