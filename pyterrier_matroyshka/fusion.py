"""Interpolation of a re-ranker with the first stage: ``bm25 % 100 >> FirstStageFusion(reranker, weight)``.

A small re-ranker trained on one collection and BM25 make different mistakes, so a weighted sum of the two
is often better than either (a standard move since monoBERT). Scores live on different scales, so each
is z-normalized within its query first:

    score = (1 - weight) * z(re-ranker) + weight * z(first stage)

``weight`` should be chosen on held-out training queries, never on the test set (each pretrained variant
carries the weight chosen on its own holdout: ``variant(name).fusion_weight`` in
:mod:`pyterrier_matroyshka.pretrained`).
"""
from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
import pyterrier as pt

from .errors import UserError


def zscore_per_query(qids: pd.Series, scores: pd.Series) -> np.ndarray:
    """Scores minus their query's mean, over their query's standard deviation (0 where a query's scores
    are all equal, e.g. a single candidate). Each query's scores are first divided by their largest
    magnitude (a z-score does not change), so scores near the float limits (1e300) neither overflow nor
    underflow."""
    keys = qids.to_numpy()
    values = scores.astype(float).reset_index(drop=True)
    scale = values.abs().groupby(keys, sort=False).transform("max").to_numpy()
    values = pd.Series(np.divide(values.to_numpy(), scale, out=np.zeros(len(values)), where=scale > 0))
    grouped = values.groupby(keys, sort=False)
    spread = grouped.transform("std", ddof=0).to_numpy()
    centred = (values - grouped.transform("mean")).to_numpy()
    return np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 0)


def interpolate(qids: pd.Series, first_stage: pd.Series, reranker: pd.Series, weight: float) -> np.ndarray:
    """``(1 - weight) * z(reranker) + weight * z(first_stage)``, z-normalized per query."""
    check_weight(weight)
    return (1 - weight) * zscore_per_query(qids, reranker) + weight * zscore_per_query(qids, first_stage)


def check_weight(weight: float) -> None:
    """A fusion weight is a number in [0, 1]."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise UserError(f"fusion weight must be a number in [0, 1], got {type(weight).__name__} {weight!r}"
                        + (f" (write {weight.strip()} without quotes)" if isinstance(weight, str) else ""))
    if not 0.0 <= weight <= 1.0:
        raise UserError(f"fusion weight {weight!r} is outside [0, 1]: 0 keeps the re-ranker's order, "
                        "1 the first stage's")


class FirstStageFusion(pt.Transformer):
    """Re-rank with ``reranker``, then interpolate its scores with the incoming (first-stage) ``score``.

    The output keeps every input row and column, in the re-ranker's row order, with ``score`` (the fused
    score), ``rank``, ``score_first_stage`` and ``score_reranker``.

    Args:
        reranker: any PyTerrier re-ranker that writes ``score`` and keeps ``qid``/``docno``.
        weight: the first stage's share in [0, 1].
    """

    def __init__(self, reranker: pt.Transformer, weight: float):
        check_weight(weight)
        self.reranker, self.weight = reranker, weight

    @property
    def schematic(self) -> dict:
        # The re-ranker sees this stage's own input: draw it linked. No help page of our own to link to.
        return {"label": f"Fusion w={self.weight:g}", "help_url": None, "inner_pipelines_mode": "linked"}

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.result_frame(inp, extra_columns=["score"])
        return fuse(inp, self.reranker(inp), self.weight)

    def transform_inputs(self) -> list[list[str]]:
        """What ``pt.inspect.transformer_inputs`` reports: each input configuration the re-ranker accepts
        (e.g. ``query`` and its text column), plus the first stage's ``score``."""
        accepted = pt.inspect.transformer_inputs(self.reranker)
        return [list(dict.fromkeys([*columns, "qid", "docno", "score"])) for columns in accepted]

    def __repr__(self) -> str:
        return f"FirstStageFusion({self.reranker!r}, weight={self.weight})"


def fuse(candidates: pd.DataFrame, reranked: pd.DataFrame, weight: float) -> pd.DataFrame:
    """An already re-ranked frame fused with the candidates it came from (no re-scoring): what
    :class:`FirstStageFusion` returns."""
    first = first_stage_scores(candidates, reranked)
    out = reranked.drop(columns=["rank"], errors="ignore").assign(
        score_first_stage=first, score_reranker=reranked["score"].to_numpy())
    out["score"] = interpolate(out["qid"], out["score_first_stage"], out["score_reranker"], weight)
    return pt.model.add_ranks(out)


def first_stage_scores(candidates: pd.DataFrame, reranked: pd.DataFrame) -> np.ndarray:
    """The candidates' ``score`` of each (qid, docno) row of ``reranked``, with clear errors for the
    cases a fusion cannot handle."""
    keys = ["qid", "docno"]
    for frame, what in ((candidates, "candidates"), (reranked, "re-ranked rows")):
        missing = frame[keys].isna().any(axis=1)
        if missing.any():
            raise UserError(f"{what}: row {int(missing.to_numpy().nonzero()[0][0])} has no qid or docno (None/NaN); "
                            "every row needs both to be fused")
    duplicated = candidates.duplicated(keys)
    if duplicated.any():
        row = candidates[duplicated].iloc[0]
        raise UserError(f"candidates hold (qid {row['qid']!r}, docno {row['docno']!r}) more than once "
                        f"({int(duplicated.sum())} duplicate row(s)); drop duplicates before fusing")
    check_finite_scores(candidates, "first-stage")
    check_finite_scores(reranked, "re-ranker")
    lost = candidates[keys].merge(reranked[keys].drop_duplicates(), how="left", indicator=True)["_merge"] == "left_only"
    if lost.any():
        row = candidates[keys].iloc[int(lost.to_numpy().nonzero()[0][0])]
        raise UserError(f"the re-ranker dropped {int(lost.sum())} of {len(candidates)} candidate rows, e.g. qid "
                        f"{row['qid']!r}, docno {row['docno']!r}; fusion keeps every candidate, so the re-ranker "
                        "must return them all")
    lookup = candidates.set_index(keys)["score"]
    first = lookup.reindex(pd.MultiIndex.from_frame(reranked[keys])).to_numpy(dtype=float)
    if np.isnan(first).any():
        raise UserError("the re-ranker returned (qid, docno) rows that are not among its candidates; "
                        "fusion needs the first stage's score for every re-ranked row")
    return first


def check_finite_scores(frame: pd.DataFrame, what: str) -> None:
    """Every ``score`` of ``frame`` is a finite number: a NaN or infinite score would decide (or void) a
    whole query's z-scores, so it is refused, naming its qid and docno."""
    scores = pd.to_numeric(frame["score"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(scores)
    if bad.any():
        row = frame.iloc[int(bad.nonzero()[0][0])]
        value = scores[bad][0]
        problem = "missing (NaN)" if np.isnan(value) and not isinstance(row["score"], str) else \
            f"not a finite number ({row['score']!r})"
        raise UserError(f"{what} score is {problem} for qid {row['qid']!r}, docno {row['docno']!r} and "
                        f"{int(bad.sum()) - 1} other row(s); fusion needs a finite score for every candidate: "
                        "rescore or drop those rows")
