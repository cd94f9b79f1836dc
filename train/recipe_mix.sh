#!/usr/bin/env bash
# The general-purpose model's recipe: the three Matroyshka stages on the diverse training mix
# (../shared/data/training-mix: MS MARCO, NQ, SQuAD, ARES, MedQuAD) plus SciFact train.
#
#   groups: PER_SOURCE queries of each source, NUM_NEGATIVES BM25 negatives each (ranks 10-99 over the pool + positives)
#   -> 1 in HOLDOUT_EVERY held out (choices are made there, never on an evaluation collection)
#   -> MiniLM teacher logits (resumable) -> stage 1 continued from the SciFact model's stage-1 adapter, domains
#   taking turns -> holdout report of every checkpoint (the learning curve) -> stage 2 (vertical) and stage 3
#   (horizontal r2, r4) on top of stage 1, as in train/recipe.sh.
#
# Every step is skipped when its output is complete and resumes where it stopped otherwise, so rerunning the
# script after a stop continues the run. Settings: RUNS, PER_SOURCE, SOURCES, HOLDOUT_EVERY, STAGE1_STEPS
# (default: one epoch), STAGE1_ONLY=1 (stop after stage 1), NAIVE=1 (also the naive-early-exit baseline: the base
# fine-tuned at its last exit only, train/configs/naive_mix.json), COMP_STEPS, WIDTH_STEPS, EXTRA (more --key value
# settings for every stage).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/mix}
SOURCES=${SOURCES:-msmarco,nq,squad,ares,medquad,scifact}
PER_SOURCE=${PER_SOURCE:-120}
NUM_NEGATIVES=${NUM_NEGATIVES:-7}  # one group of 8 per query: the teacher scores only what a step uses
HOLDOUT_EVERY=${HOLDOUT_EVERY:-6}
STAGE1_STEPS=${STAGE1_STEPS:-}
COMP_STEPS=${COMP_STEPS:-40}
WIDTH_STEPS=${WIDTH_STEPS:-40}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
mkdir -p "$RUNS"
log() { echo "[mix] $(date +%T) $*"; }

[ -f "$RUNS/groups.jsonl" ] || { log groups; "$PY" -m train groups --sources "$SOURCES" --per_source "$PER_SOURCE" --num_negatives "$NUM_NEGATIVES" \
    --output "$RUNS/groups.jsonl"; }
[ -f "$RUNS/holdout.jsonl" ] || "$PY" -m train split --input "$RUNS/groups.jsonl" --train "$RUNS/train.jsonl" \
    --holdout "$RUNS/holdout.jsonl" --every "$HOLDOUT_EVERY"
log teacher
"$PY" -m train teacher --input "$RUNS/train.jsonl" --output "$RUNS/train.teacher.jsonl" --scorer minilm

stage() {  # stage <name> <output_dir> [args...]: skipped when finished, resumed from its last checkpoint otherwise
  local name=$1 out=$2; shift 2
  if [ -f "$out/matroyshka_adapter.json" ]; then log "$out done, skipped"; return; fi
  log "$name -> $out"
  "$PY" -m train "$name" --output_dir "$out" --train_data "$RUNS/train.teacher.jsonl" "$@" \
      ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} > "$out.log" 2>&1 || { tail -20 "$out.log"; return 1; }
}

stage stage1 "$RUNS/stage1" --config train/configs/stage1_mix.json ${STAGE1_STEPS:+--max_steps "$STAGE1_STEPS"}
log "holdout of each stage-1 checkpoint (the learning curve)"
for ckpt in "$RUNS"/stage1/checkpoint-* "$RUNS/stage1"; do
  report="$RUNS/holdout/$(basename "$ckpt").json"
  [ -f "$report" ] || "$PY" -m train holdout --data "$RUNS/holdout.jsonl" --adapters "$ckpt" \
      --shapes L30 --output "$report"
done
if [ "${NAIVE:-0}" = 1 ]; then  # STAGE1_STEPS steps, as stage 1 (else the config's 90)
  stage stage2 "$RUNS/naive_last_exit" --config train/configs/naive_mix.json ${STAGE1_STEPS:+--max_steps "$STAGE1_STEPS"}
fi
if [ "${STAGE1_ONLY:-0}" = 1 ]; then log "stage 1 only (STAGE1_ONLY=1): no compensation adapters"; exit 0; fi
stage stage2 "$RUNS/vertical" --config train/configs/stage2.json --merge_adapters "$RUNS/stage1" \
    --max_steps "$COMP_STEPS" --lora_r 4 --lora_alpha 8 --lr 5e-4
for r in 2 4; do
  stage stage3 "$RUNS/r$r" --config train/configs/stage3.json --merge_adapters "$RUNS/stage1" --ratios "$r" \
      --max_steps "$WIDTH_STEPS" --lora_r 4 --lora_alpha 8 --lr 1e-3
done
log done
