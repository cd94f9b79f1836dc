"""Does a trained re-ranker reward passages it saw winning in training, whatever the query?

A model fine-tuned on a few hundred queries can learn a document prior: a passage that was a positive in
training scores high for any query. On a collection whose test queries cite the same documents (SciFact:
claims written from the same abstracts), that prior helps the queries whose relevant document was a training
positive ("seen") and hurts the others ("unseen"). This prints, for BM25 and each scored shape:

- nDCG@10 over all queries, the seen ones and the unseen ones;
- the share of training positives among the *non-relevant* documents of each top 10 (BM25's share is the
  baseline: a higher one means the model pulls them up for queries they do not answer).

    python experiments/doc_prior.py --train runs/scifact/train.jsonl --dataset beir/scifact/test \\
        --candidates runs/eval/full/candidates --scores runs/eval/full/scores_all --shapes L15 L30

The candidates and scores are those of ``bench/evaluate_demo.py`` (``candidates`` and ``score`` steps).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # evaluate_demo

from evaluate_demo import read_judged, scored_systems, with_bm25  # noqa: E402
from pyterrier_matroyshka.pretrained import variant  # noqa: E402
from pyterrier_matroyshka.shape_comparison import evaluate_per_query  # noqa: E402


def training_positives(path: Path) -> set[str]:
    """Document ids of every positive in a groups file (``pos_ids``, as ``python -m train groups`` writes)."""
    groups = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if groups and "pos_ids" not in groups[0]:
        raise ValueError(f"{path} has no pos_ids: write groups with `python -m train groups`, which keeps ids")
    return {docno for group in groups for docno in group["pos_ids"]}


def seen_queries(qrels: pd.DataFrame, positives: set[str]) -> set[str]:
    """Queries with at least one relevant document among ``positives``."""
    relevant = qrels[qrels["label"] > 0]
    return set(relevant.loc[relevant["docno"].isin(positives), "qid"])


def prior_share(run: pd.DataFrame, qrels: pd.DataFrame, positives: set[str], depth: int = 10) -> float:
    """Share of ``positives`` among the non-relevant documents of each query's top ``depth`` by ``score``."""
    top = run.sort_values(["qid", "score"], ascending=[True, False], kind="stable").groupby("qid").head(depth)
    relevant = set(zip(qrels.loc[qrels["label"] > 0, "qid"], qrels.loc[qrels["label"] > 0, "docno"]))
    wrong = top[[(q, d) not in relevant for q, d in zip(top["qid"], top["docno"])]]
    return float(wrong["docno"].isin(positives).mean()) if len(wrong) else 0.0  # all right: nothing leaned on


def row(name: str, run: pd.DataFrame, qrels: pd.DataFrame, queries: list[str], seen: set[str],
        positives: set[str]) -> dict:
    from ir_measures import nDCG

    per_query = evaluate_per_query(run, qrels, nDCG @ 10, queries)
    is_seen = per_query.index.isin(list(seen))
    return {"system": name, "all": per_query.mean(), "seen": per_query[is_seen].mean(),
            "unseen": per_query[~is_seen].mean(), "prior": prior_share(run, qrels, positives)}


def table(rows: list[dict]) -> str:
    """The markdown table of :func:`row` results; "-" where a split has no query (a holdout of unseen only)."""
    lines = ["| system | all | seen | unseen | training positives among wrong top 10 |", "|---|---|---|---|---|"]
    for r in rows:
        cells = " | ".join("-" if pd.isna(r[k]) else f"{r[k]:.4f}" for k in ("all", "seen", "unseen"))
        lines.append(f"| {r['system']} | {cells} | {r['prior']:.3f} |")
    return "\n".join(lines)


def chosen_columns(scores: pd.DataFrame, shapes: list[str]) -> list[tuple[str, str]]:
    """(label suffix, column) of each of ``shapes`` the frame has; a single-score system (the teacher) by itself."""
    columns = [c for c in scores.columns if c.startswith("score_")]
    if len(columns) == 1:
        return [("", columns[0])]
    return [(f" {shape}", f"score_{shape}") for shape in shapes if f"score_{shape}" in columns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="the training groups (JSONL with pos_ids)")
    parser.add_argument("--dataset", default="beir/scifact/test")
    parser.add_argument("--candidates", type=Path, required=True)
    parser.add_argument("--scores", type=Path, nargs="+", required=True, help="one or more score folders")
    parser.add_argument("--systems", nargs="*", default=["matroyshka"])
    parser.add_argument("--shapes", nargs="*", default=["L30"])
    parser.add_argument("--fusion-weight", type=float, default=variant().fusion_weight)
    args = parser.parse_args()

    positives = training_positives(args.train)
    run, qrels = read_judged(args.dataset, args.candidates)
    queries = list(run["qid"].unique())
    seen = seen_queries(qrels, positives) & set(queries)
    rows = [row("BM25", run, qrels, queries, seen, positives)]
    for folder in args.scores:
        for name, _, scores in scored_systems(args.dataset, run, folder, args.systems):
            for label, column in chosen_columns(scores, args.shapes):
                label = f"{folder.name}/{name}{label}"
                rows.append(row(label, scores.assign(score=scores[column]), qrels, queries, seen, positives))
                fused = with_bm25(scores, column, args.fusion_weight)
                rows.append(row(f"{label} + BM25 ({args.fusion_weight})", fused, qrels, queries, seen, positives))
    print(f"{args.dataset}: {len(queries)} queries, {len(seen)} seen (a relevant document was a training "
          f"positive), {len(queries) - len(seen)} unseen; nDCG@10\n")
    print(table(rows))


if __name__ == "__main__":
    main()
