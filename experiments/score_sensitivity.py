"""Does a model read the first-stage score written before its passages (``score_in_text``)?

Scores the candidates of the first ``--queries`` queries at one shape twice: with each pair's own BM25 score in
the text, and with the scores shuffled within the query (same passages). A model that reads the number changes its
score when the number changes, in BM25's direction; one that ignores it changes it by bf16 and tokenisation noise.

    python experiments/score_sensitivity.py --adapters runs/s13/sit_kd3/stage1 models/matroyshka-smollm2-scifact/stage1 \\
        --candidates runs/eval/holdout/candidates --dataset beir/scifact/train
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # evaluate_demo
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_demo import BASE, DEFAULT_MAX_LENGTH, read_candidates  # noqa: E402
from score_in_text import passages_with_scores  # noqa: E402

from pyterrier_matroyshka.scorer import MatroyshkaScorer  # noqa: E402


def shuffled_within_query(frame: pd.DataFrame, seed: int = 0) -> pd.Series:
    """The ``score`` column permuted inside each query."""
    rng = np.random.default_rng(seed)
    return frame.groupby("qid")["score"].transform(lambda s: rng.permutation(s.to_numpy()))


def sensitivity(scorer: MatroyshkaScorer, frame: pd.DataFrame, shape: str, seed: int = 0) -> dict[str, float]:
    """Mean absolute score change when the scores in the text are shuffled, the mean per-query score spread,
    and the mean per-query Spearman correlation of the score change with the BM25 change."""
    fake = shuffled_within_query(frame, seed)
    texts = frame["text"].tolist()

    def scores(first_stage: pd.Series) -> np.ndarray:
        pairs = list(zip(frame["query"], passages_with_scores(texts, first_stage.tolist())))
        return np.asarray(scorer.compute_score(pairs, shape=shape))

    real = scores(frame["score"])
    change = pd.DataFrame({"qid": frame["qid"], "real": real, "delta": real - scores(fake),
                           "bm25_delta": frame["score"] - fake})
    rho = change.groupby("qid").apply(lambda g: g["delta"].corr(g["bm25_delta"], method="spearman")).mean()
    return {"mean |change|": float(np.abs(change["delta"]).mean()),
            "score sd": float(change.groupby("qid")["real"].std().mean()), "Spearman(change, BM25 change)": rho}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", nargs="+", required=True, help="stage-1 adapter folders, one model each")
    parser.add_argument("--candidates", type=Path, required=True, help="from `evaluate_demo.py candidates`")
    parser.add_argument("--dataset", default="beir/scifact/train")
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--shape", default="L30")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frame = read_candidates(args.dataset, args.candidates)
    frame = frame[frame["qid"].isin(frame["qid"].unique()[:args.queries])].reset_index(drop=True)
    print(f"{args.dataset}: {frame['qid'].nunique()} queries, {len(frame)} pairs, shape {args.shape}\n")
    print("| adapter | mean score change | per-query score sd | Spearman(score change, BM25 change) |\n|---|---|---|---|")
    for adapter in args.adapters:
        scorer = MatroyshkaScorer(BASE, adapters=[adapter], max_length=DEFAULT_MAX_LENGTH)
        row = sensitivity(scorer, frame, args.shape)
        print(f"| {adapter} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |", flush=True)


if __name__ == "__main__":
    main()
