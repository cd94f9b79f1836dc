#!/usr/bin/env bash
# Device call 1 of 2 (see scripts/gpu/README.md): install the carried wheels, keep the first half of the
# base for call 2, and time the recipe's stage-1 step (three processes side by side, as the recipe runs
# them) and multi-exit scoring on a random twin of the base: same shapes, so the same cost.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .payload1/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/payload /tmp/twin /tmp/data
cp .payload1/gguf.xz.part1 /tmp/payload/
tar -xJf .payload1/data.tar.xz -C /tmp/data
tar -xJf .payload1/base_meta.tar.xz -C /tmp/twin
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'peft', peft.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
python3 scripts/gpu/twin.py /tmp/twin || exit 1
start=$(date +%s)
MODEL=/tmp/twin RUNS=/tmp/calib DATA=/tmp/data EPOCHS="1 2" NAIVE_EPOCHS=1 STAGE1_ONLY=1 EXTRA="${CAL_EXTRA:---max_steps 8}" \
    bash train/recipe_gpu.sh
echo "3 parallel trainings of 8 steps: $(( $(date +%s) - start )) s"
python3 scripts/gpu/plan.py calibrate /tmp/calib /tmp/twin /tmp/calib.json
cp /tmp/calib.json "$OUT/"
tail -n 3 /tmp/calib/*.log > "$OUT/calibrate.log"
