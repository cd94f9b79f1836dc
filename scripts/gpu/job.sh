#!/usr/bin/env bash
# Device call 2 of 2 (see scripts/gpu/README.md): rebuild the base from its two halves, train the recipe
# sized by call 1's timings, ship the adapters, then score the evaluation candidates with every system
# until the time is up. Results go to $OUT as soon as each part is done.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD MATROYSHKA_CACHE=/tmp/cache
LIMIT=${LIMIT:-560}               # seconds this command may use in all
CANDIDATES=${CANDIDATES:-.payload2/candidates}
begin=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - begin) )); }
python3 - <<'PY' || exit 1
import lzma, shutil
with open("/tmp/smollm2.gguf.xz", "wb") as f:
    for part in ("/tmp/payload/gguf.xz.part1", ".payload2/gguf.xz.part2"):
        f.write(open(part, "rb").read())
with lzma.open("/tmp/smollm2.gguf.xz") as src, open("/tmp/smollm2.gguf", "wb") as dst:
    shutil.copyfileobj(src, dst, 2**24)
from pyterrier_matroyshka.offline.base_models import SMOLLM2_ID, OFFLINE_SOURCES, convert_gguf
from pyterrier_matroyshka.offline.paths import cache_dir
convert_gguf("/tmp/smollm2.gguf", cache_dir("models") / OFFLINE_SOURCES[SMOLLM2_ID][1])
PY
echo "[job] base ready after $(( $(date +%s) - begin )) s"
eval "$(python3 scripts/gpu/plan.py settings /tmp/calib.json $(( $(left) - 40 )))"
echo "[job] plan: EPOCHS=$EPOCHS KD_WEIGHTS=$KD_WEIGHTS NAIVE_EPOCHS=$NAIVE_EPOCHS train ~${TRAIN_ESTIMATE}s eval ~${EVAL_ESTIMATE}s"
export EPOCHS KD_WEIGHTS NAIVE_EPOCHS COMP_EPOCHS
RUNS=/tmp/runs DATA=/tmp/data SHIP=/tmp/ship timeout $(( $(left) - 60 )) bash train/recipe_gpu.sh
echo "[job] recipe exit $? after $(( $(date +%s) - begin )) s"
python3 -m train export --adapter /tmp/runs/naive_last_exit --output /tmp/naive/naive_last_exit --rank 8
tar -cf "$OUT/models.tar" -C /tmp ship      # 13 MB: the shipped model
tar -cf "$OUT/naive.tar" -C /tmp naive      # 5 MB: the ablation's adapter (files come back at 16 MB at most)
(cd /tmp/runs && tar -cf "$OUT/logs.tar" *.log */log.jsonl */holdout.json */train_config.json \
    */matroyshka_adapter.json /tmp/calib.json 2>/dev/null)
timeout $(( $(left) - 15 )) python3 bench/evaluate_demo.py score --systems matroyshka naive stage1 \
    --candidates "$CANDIDATES" --scores /tmp/scores --shipped /tmp/ship --naive /tmp/runs/naive_last_exit \
    --batch-size 64
echo "[job] scoring exit $? after $(( $(date +%s) - begin )) s"
tar -cf "$OUT/scores.tar" -C /tmp scores
ls -la "$OUT"
