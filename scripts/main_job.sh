#!/usr/bin/env bash
# Set up (if needed) and run the main job: BM25 top-k on a real collection, re-ranked at several
# shapes by the default model, printed as a table next to BM25.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MATROYSHKA_CACHE=${MATROYSHKA_CACHE:-$PWD/.cache}
exec .venv/bin/python -m pyterrier_matroyshka experiment --dataset "${DATASET:-beir/scifact/test}" \
    --top-k "${TOP_K:-20}" --queries "${QUERIES:-50}" --teacher --fuse "$@"
