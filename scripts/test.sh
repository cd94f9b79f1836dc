#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Slow tests (trained-model regression) are included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MATROYSHKA_CACHE=${MATROYSHKA_CACHE:-$PWD/.cache}
exec .venv/bin/python -m pytest -q "$@"
