"""The first stage's score written into the passage, so the re-ranker reads BM25's evidence as an input.

A cross-encoder given the BM25 score as text before the passage can learn how far to trust it (Askari et
al., "Injecting the BM25 Score as Text Improves BERT-Based Re-rankers", ECIR 2023). A model trained this way
must be fed the same text at inference, from the same first stage: a plain passage, or another retriever's
score, is a different input. The passage becomes::

    "[BM25 22.0] " + passage
"""
from __future__ import annotations

import math
from typing import Sequence

TEMPLATE = "[BM25 {score:.1f}] "


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
