#!/usr/bin/env bash
# One device call: bench/bench_7b.py on a random Mistral-7B twin in bf16 (7B-scale speed and memory per
# shape beside a plain transformers forward, the SDPA kernels, the compression step), in under 10 minutes.
#
#   here:  python bench/bench_7b.py --pack .bench7b     # tokenizer + DL19 pairs (../shared does not travel)
#   there: bash scripts/gpu/bench_7b.sh                 # carrying .bench7b; results in $OUT
#
# First the same code runs on a tiny fp32 twin on the same device (seconds): it checks the GPU's kernels
# to fp32 rounding and fails fast before the 7B model is built. Settings (environment): ASSETS (default
# .bench7b), OUT (results; default bench/results/bench_7b_run), LIMIT (seconds for everything, default 570),
# CONFIG (default mistral-7b; tiny skips the dry run), PYTHON (default python3), BENCH_ARGS (more arguments
# for bench_7b.py, both runs). Pinned wheels in .whl/ (scripts/gpu/README.md) are installed first if carried.
set -uo pipefail
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
ASSETS=${ASSETS:-.bench7b}
OUT=${OUT:-bench/results/bench_7b_run}
LIMIT=${LIMIT:-570}
CONFIG=${CONFIG:-mistral-7b}
BENCH_ARGS=${BENCH_ARGS:-}
begin=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - begin) )); }

if [ ! -d "$ASSETS/tokenizer" ]; then
    echo "[bench_7b.sh] no $ASSETS/tokenizer: run 'python bench/bench_7b.py --pack $ASSETS' where ../shared is, and carry $ASSETS" >&2
    exit 1
fi
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PYTHON" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'peft', peft.__version__, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())" || exit 1

if [ "$CONFIG" != tiny ]; then
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
    timeout 180 "$PYTHON" bench/bench_7b.py --config tiny --dtype fp32 --assets "$ASSETS" --out "$OUT/tiny" \
        $BENCH_ARGS > "$OUT/tiny.log" 2>&1
    status=$?
    tail -n 4 "$OUT/tiny.log"
    echo "[bench_7b.sh] tiny fp32 dry run: exit $status after $(( $(date +%s) - begin )) s"
    if [ $status -ne 0 ]; then  # 2: its self-check failed; anything else: it broke, and the 7B run would too
        cat "$OUT/tiny.log" >&2
        exit 1
    fi
fi
budget=$(( $(left) - 75 ))  # the timings stop here; the DL19 rows, the report and the exit fit in the rest
# shellcheck disable=SC2086
timeout $(( $(left) - 5 )) "$PYTHON" bench/bench_7b.py --config "$CONFIG" --assets "$ASSETS" --out "$OUT" \
    --time-budget "$budget" $BENCH_ARGS 2>&1 | tee "$OUT/bench_7b.log"
status=${PIPESTATUS[0]}
echo "[bench_7b.sh] $CONFIG: exit $status after $(( $(date +%s) - begin )) s; results in $OUT"
exit "$status"
