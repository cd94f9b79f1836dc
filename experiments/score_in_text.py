"""The first stage's score written into the passage, so the re-ranker reads BM25's evidence as an input.

A cross-encoder given the BM25 score as text before the passage can learn how far to trust it (Askari et
al., "Injecting the BM25 Score as Text Improves BERT-Based Re-rankers", ECIR 2023). A model trained this way
must be fed the same text at inference, from the same first stage: a plain passage, or another retriever's
score, is a different input. The passage becomes::

    "[BM25 22.0] " + passage

In a pipeline: ``bm25 >> score_in_text() >> reranker``. For ``bench/evaluate_demo.py``, write candidates
whose run file carries each pair's own passage, then score them as usual:

    python experiments/score_in_text.py --candidates runs/eval/holdout/candidates \\
        --out runs/eval/holdout/candidates_sit --datasets beir/scifact/train
    python bench/evaluate_demo.py score --systems matroyshka --candidates runs/eval/holdout/candidates_sit ...

Training data with the score in its passages: ``python experiments/bm25_target.py --score_in_text ...``.
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path
from typing import Sequence

TEMPLATE = "[BM25 {score:.1f}] "
ROOT = Path(__file__).resolve().parent.parent


def passage_with_score(text: str, score: float, template: str = TEMPLATE) -> str:
    """``text`` with the first-stage ``score`` before it; refuses a score that is not a finite number."""
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise ValueError(f"first-stage score {score!r} is not a number: the re-ranker reads it as text, so give "
                         "the retriever's own score (the 'score' column of a BM25 run)") from None
    if not math.isfinite(value):
        raise ValueError(f"first-stage score {score!r} is not finite: rescore those rows with the first stage")
    return template.format(score=value) + text


def passages_with_scores(texts: Sequence[str], scores: Sequence[float], template: str = TEMPLATE) -> list[str]:
    """:func:`passage_with_score` over aligned lists."""
    if len(texts) != len(scores):
        raise ValueError(f"{len(texts)} passages but {len(scores)} first-stage scores: give one score per passage")
    return [passage_with_score(t, s, template) for t, s in zip(texts, scores)]


def score_in_text(text_field: str = "text"):
    """A PyTerrier transformer that writes each row's incoming ``score`` before its ``text_field``."""
    import pyterrier as pt

    def rewrite(frame):
        if "score" not in frame.columns:
            raise ValueError("score_in_text reads the first stage's score: pipe the retriever's output unchanged")
        return frame.assign(**{text_field: passages_with_scores(frame[text_field].tolist(), frame["score"].tolist())})

    return pt.apply.generic(rewrite)


def write_candidates(dataset: str, source: Path, target: Path) -> None:
    """The candidates of ``bench/evaluate_demo.py`` in ``source``, with each pair's passage (score written in
    front) in the run file of ``target``; qrels and documents copied as they are."""
    sys.path.insert(0, str(ROOT / "bench"))
    from evaluate_demo import read_candidates, tag

    frame = read_candidates(dataset, source)
    frame["text"] = passages_with_scores(frame["text"].tolist(), frame["score"].tolist())
    target.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(target / f"{tag(dataset)}.run.parquet")
    for suffix in ("docs", "qrels"):
        shutil.copy(source / f"{tag(dataset)}.{suffix}.parquet", target)
    print(f"{dataset}: {len(frame)} pairs with their BM25 score in the passage -> {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=Path, required=True, help="from `evaluate_demo.py candidates`")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=["beir/scifact/train"])
    args = parser.parse_args()
    for dataset in args.datasets:
        write_candidates(dataset, args.candidates, args.out)


if __name__ == "__main__":
    main()
