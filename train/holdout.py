"""Holdout check: how well a model ranks held-out training groups (its positives among their BM25 hard
negatives). This is the only signal the recipe uses for its choices (epochs, KD weight), so nothing is
tuned on a test set.

    python -m train holdout --data runs/scifact/holdout.jsonl --adapters runs/smollm2/stage1 --shapes L30 L10
"""
from __future__ import annotations

import math
from typing import Sequence

from pyterrier_matroyshka.errors import UserError
from pyterrier_matroyshka.scorer import MatroyshkaScorer
from pyterrier_matroyshka.shape import Shape

from .data import Group, read_groups


def ranking_metrics(pos_scores: Sequence[float], neg_scores: Sequence[float], depth: int = 10) -> dict:
    """RR@depth and binary nDCG@depth of one group; ties are broken against the positives (no free wins)."""
    ranked = sorted([(s, 0) for s in pos_scores] + [(s, 1) for s in neg_scores], key=lambda x: (-x[0], -x[1]))
    gains = [1 - is_neg for _, is_neg in ranked[:depth]]
    rr = next((1.0 / (i + 1) for i, g in enumerate(gains) if g), 0.0)
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sum(1 / math.log2(i + 2) for i in range(min(depth, len(pos_scores))))
    return {"RR@10": rr, "nDCG@10": dcg / ideal}


def evaluate_groups(scorer: MatroyshkaScorer, groups: Sequence[Group], shape: str) -> dict:
    """Mean RR@10 and nDCG@10 over ``groups`` for one shape, from one batched scoring call."""
    if not groups:
        raise UserError("no groups to evaluate")
    pairs = [(g.query, p) for g in groups for p in g.pos + g.neg]
    scores = scorer.compute_score(pairs, shape=shape)
    per_group, start = [], 0
    for g in groups:
        n_pos, n = len(g.pos), len(g.pos) + len(g.neg)
        per_group.append(ranking_metrics(scores[start:start + n_pos], scores[start + n_pos:start + n]))
        start += n
    report = _mean(per_group)
    domains = sorted({g.domain for g in groups} - {""})
    if len(domains) > 1:  # the training mix: each source on its own as well
        report["by_domain"] = {d: _mean([m for m, g in zip(per_group, groups) if g.domain == d]) for d in domains}
    return report


def _mean(per_group: Sequence[dict]) -> dict:
    return {k: sum(m[k] for m in per_group) / len(per_group) for k in per_group[0]} | {"groups": len(per_group)}


def holdout_report(data: Sequence[str], model: str, adapters: Sequence[str], shapes: Sequence[str],
                   max_length: int = 192, batch_size: int = 64, dtype: str = "auto") -> dict[str, dict]:
    """``{shape: metrics}`` for a base plus merged ``adapters`` on the groups in ``data`` (checked, with the
    shapes, before the model loads)."""
    for shape in shapes:
        Shape.parse(shape)
    groups = read_groups(list(data))
    if not groups:
        raise UserError(f"no groups in {', '.join(map(str, data))}: the holdout files are empty")
    scorer = MatroyshkaScorer(model, adapters=list(adapters) or None, max_length=max_length,
                              batch_size=batch_size, dtype=dtype)
    for shape in shapes:  # every shape against the model's exits before any scoring
        Shape.parse(shape).validate(scorer.exits)
    return {shape: evaluate_groups(scorer, groups, shape) for shape in shapes}

