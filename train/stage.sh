# Shared by recipe.sh and recipe_gpu.sh (sourced): run a training stage once, log beside its folder.
# Needs PY, COMMON (settings for every stage) and TAG (log prefix); EXTRA_ARGS, if set, goes last.

finished() { [ -f "$1/matroyshka_adapter.json" ]; }

stage() {  # stage <output_dir> <stage> [args...]: skipped when finished; on failure, the log's tail
  local out=$1 name=$2; shift 2
  if finished "$out"; then echo "[$TAG] $out done, skipped"; return; fi
  echo "[$TAG] $(date +%T) $name -> $out"
  "$PY" -m train "$name" --config "train/configs/$name.json" --output_dir "$out" "${COMMON[@]}" "$@" \
      ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} > "$out.log" 2>&1 \
      || { echo "[$TAG] $out FAILED:"; tail -20 "$out.log"; return 1; }
  echo "[$TAG] $(date +%T) $out finished"
}

num_layers() {  # num_layers <model>: decoder blocks of a base (hub id, offline source or folder)
  "$PY" -c "from transformers import AutoConfig; from pyterrier_matroyshka.offline.base_models import resolve_pretrained as r; \
print(AutoConfig.from_pretrained(r('$1')).num_hidden_layers)"
}
