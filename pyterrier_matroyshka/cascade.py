"""The PyTerrier face of progressive deepening: ``bm25 % 100 >> reranker.cascade([("L10", 50), ("L20", 15), "L30"])``.

A thin ``pt.Transformer`` over :func:`~pyterrier_matroyshka.cascade_scoring.score_cascade`, sharing
the re-ranker's loaded weights.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
import pandas as pd
import pyterrier as pt

from .errors import UserError
from .cascade_plan import CascadePlan, StageLike
from .cascade_scoring import AdapterChoice, cascade_ranking, score_cascade, stage_adapters

if TYPE_CHECKING:
    from .reranker import MatroyshkaReRanker


class MatroyshkaCascade(pt.Transformer):
    """Score every candidate of a query at the first stage's exit, continue only the best ``keep`` of
    them from their paused hidden states to the next stage's exit, and so on; no block runs twice.

    Output: every input row and column. Ranking rule: the candidates that reached the deepest stage
    come first, ordered by its score; below them the candidates pruned after the stage before, ordered
    by that stage's score; and so on down to the first stage (ties: input order). ``score`` sorts in
    that order (the last reached stage's own score, shifted down per group, so only its order within a
    group means anything); ``score_<shape>`` holds each stage's raw score (NaN where a candidate did not
    reach the stage) and ``exit_depth`` the depth of the last exit a candidate reached. Scores are raw
    (the re-ranker's ``normalize`` does not apply: a sigmoid would not change the ranking).

    A candidate's stage score equals the one-pass score at that stage's shape (float noise aside), as long
    as the adapters allow resuming: see ``adapters``.

    Args:
        reranker: the :class:`MatroyshkaReRanker` whose weights, batch size and text field are used.
        stages: ``[("L10", 50), ("L20", 15), "L30"]``, a :class:`CascadePlan` or its string
            ``"L10 top50 > L20 top15 > L30"``. A later stage may compress from the earlier stage's
            depth on, e.g. ``[("L12", 30), "L30:r2@12"]``.
        adapters: ``"auto"``: each stage runs the adapters its shape picks, refused (ValueError) when
            adapters that differ between stages change blocks an earlier stage ran; ``"deepest"``: all
            stages run the deepest stage's adapters (its scores are then exactly the deepest shape's);
            or a list of adapter names for every stage.
    """

    def __init__(self, reranker: "MatroyshkaReRanker", stages: Union[CascadePlan, str, Sequence[StageLike]],
                 adapters: AdapterChoice = "auto"):
        if getattr(reranker, "score_in_text", False):
            raise UserError("the cascade does not write first-stage scores into passages (score_in_text); "
                             "use a re-ranker without it")
        self.reranker = reranker
        self.plan = CascadePlan.coerce(stages).validate(reranker.scorer.exits)
        self.adapters = adapters
        stage_adapters(reranker.scorer, self.plan, adapters)  # refuse a cascade that cannot resume, now

    @property
    def scorer(self):
        return self.reranker.scorer

    @property
    def columns(self) -> list[str]:
        """The per-stage score columns, in stage order."""
        return [f"score_{stage.shape}" for stage in self.plan.stages]

    @property
    def schematic(self) -> dict:
        return {"label": f"Cascade L{self.plan.depths[0]}..L{self.plan.depths[-1]}", "help_url": None}

    def flops(self, candidates: int = 100, query_len: int = 16, passage_len: int = 96) -> float:
        """Estimated FLOPs per query of ``candidates`` candidates: every stage's blocks for the candidates
        that reach it (see :meth:`CascadePlan.flops`)."""
        encoder = self.scorer.encoder()
        prompt_len = len(encoder.sep) + len(encoder.prompt_ids())
        return self.plan.flops(self.scorer.core.dims, candidates, query_len, passage_len, prompt_len)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        self.reranker._validate(inp)
        out = inp.drop(columns=["score", "rank"], errors="ignore").copy()
        per_stage = np.full((len(self.plan.stages), len(inp)), np.nan)
        final = np.full(len(inp), np.nan)
        depth = np.zeros(len(inp), dtype=int)
        if len(inp):
            self.reranker._check_text(inp)
            queries = inp["query"].tolist()
            texts = inp[self.reranker.text_field].tolist()
            groups = pd.Series(range(len(inp))).groupby(inp["qid"].to_numpy(), sort=False).indices
            for rows in pt.tqdm(list(groups.values()), desc="cascade", unit="query", disable=not self.reranker.verbose):
                scores = score_cascade(self.scorer, [(queries[r], texts[r]) for r in rows], self.plan,
                                       adapters=self.adapters, batch_size=self.reranker.batch_size)
                reached, score = cascade_ranking(scores)
                per_stage[:, rows], final[rows] = scores, score
                depth[rows] = np.asarray(self.plan.depths)[reached]
        out["score"] = final
        for column, values in zip(self.columns, per_stage):
            out[column] = values
        out["exit_depth"] = depth
        return pt.model.add_ranks(out)

    def __repr__(self) -> str:
        return f"MatroyshkaCascade('{self.plan}')"
