"""Size the GPU recipe from measured costs, so the whole job fits one device call.

    python3 scripts/gpu/plan.py calibrate RUNS TWIN OUT.json   # read the timed steps, time scoring
    python3 scripts/gpu/plan.py settings CALIB.json SECONDS     # shell settings for train/recipe_gpu.sh
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

STEPS_PER_EPOCH = 45          # 729 training groups / (8 x 2 queries per optimizer step)
#: Pairs scored by the systems job.sh scores on the GPU: matroyshka (3 ratio passes), naive and stage 1
#: (1 pass each; the zero-shot base was scored in the first GPU run).
EVAL_PAIRS = 5 * 43_516
#: Candidate grids, best first: stage-1 epochs, KD weights, naive epochs. The holdout picks among the
#: stage-1 runs of a grid; the naive baseline gets the grid's largest epoch count. The first GPU run
#: (1 epoch = 45 steps) left stage 1 near chance (CE 2.5 of ln 16 = 2.77), so fewer than 4 epochs are a
#: last resort.
GRIDS = [("4 6", "1.0", 6), ("4", "0.5 1.0", 4), ("4", "1.0", 4), ("3", "1.0", 3), ("2", "1.0", 2)]
WARMUP_STEPS = 3              # the first steps of a process (CUDA start-up) are not timed


def calibrate(runs: Path, twin: Path, out: Path) -> None:
    import torch

    from pyterrier_matroyshka.scorer import MatroyshkaScorer
    from pyterrier_matroyshka.shape import Shape

    steps = {}
    for log in runs.glob("*/log.jsonl"):
        records = [json.loads(line) for line in log.open()]
        steps[log.parent.name] = dict(step_seconds=statistics.median(r["seconds"] for r in records[WARMUP_STEPS:]),
                                      gpu_peak_gb=max(r.get("gpu_peak_gb", 0) for r in records))
    groups = [json.loads(line) for line in open(os.environ.get("DATA", "/tmp/data") + "/train.jsonl")][:128]
    pairs = [(g["query"], p) for g in groups for p in g["pos"] + g["neg"]][:int(os.environ.get("CAL_PAIRS", 2048))]
    scorer = MatroyshkaScorer(str(twin), max_length=192, batch_size=64)
    scorer.compute_score(pairs[:128], shape=Shape(30))
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    scorer.compute_score(pairs, shape=Shape([6, 10, 15, 20, 30]))
    sync()
    result = dict(parallel3=steps, score_pairs_per_s=len(pairs) / (time.perf_counter() - start),
                  gpu_total_gb=torch.cuda.get_device_properties(0).total_memory / 2**30
                  if torch.cuda.is_available() else 0)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def settings(calib_file: Path, seconds: float) -> None:
    calib = json.loads(calib_file.read_text())
    step3 = max(v["step_seconds"] for v in calib["parallel3"].values())  # per step, 3 processes sharing
    peak_gb = max(v["gpu_peak_gb"] for v in calib["parallel3"].values())
    usable_gb = 0.85 * calib.get("gpu_total_gb", 0)  # runs side by side must fit the card together
    eval_s = EVAL_PAIRS / calib["score_pairs_per_s"] + 40
    train_s = seconds - min(eval_s, 120)  # training first: scoring gets what is left, at least 2 minutes
    for epochs, kds, naive in GRIDS:
        procs = len(epochs.split()) * len(kds.split()) + 1
        per_step = step3 * max(procs, 3) / 3
        stage1 = max(int(e) for e in epochs.split()) * STEPS_PER_EPOCH * per_step
        holdout = 15 * (procs - 1)
        comp = STEPS_PER_EPOCH * step3 + 30
        estimate = stage1 + holdout + comp + 30
        if estimate <= train_s and peak_gb * procs <= usable_gb:
            break
    print(f'EPOCHS="{epochs}"; KD_WEIGHTS="{kds}"; NAIVE_EPOCHS={naive}; COMP_EPOCHS=1; '
          f'TRAIN_ESTIMATE={int(estimate)}; EVAL_ESTIMATE={int(eval_s)}')


if __name__ == "__main__":
    if sys.argv[1] == "calibrate":
        calibrate(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        settings(Path(sys.argv[2]), float(sys.argv[3]))
