"""The best shape for a cost budget: fixed shapes and cascades on development topics, their Pareto frontier
(effectiveness against estimated GFLOP per query, with measured time), and the best system under a budget.

Effectiveness comes from cached exit scores. One multi-exit pass per compression setting and adapter set
scores every candidate at every exit; a fixed shape reads its exit, and a cascade is replayed from the same
scores (:func:`~pyterrier_matroyshka.cascade_scoring.prune`): the resumed forward is exact, so the replay
is what the cascade computes (tests/test_cascade.py proves the exactness). Time is measured by running the
systems themselves on a few queries. Choose on development topics only, e.g. the held-out SciFact-train
queries (:func:`holdout_qids`); test topics are for reporting.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyterrier as pt
from ir_measures import RR, nDCG

from .errors import UserError
from .fingerprint import digest as fingerprint_digest
from .cascade_plan import CascadePlan
from .cascade_scoring import cascade_ranking, prune, stage_adapters
from .reranker import MatroyshkaReRanker
from .shape import Shape
from .shape_comparison import evaluate

System = Union[Shape, CascadePlan]
MEASURE = "nDCG@10"
COST = "GFLOP/query"


def parse_system(text: Union[str, System]) -> System:
    """``"L20"`` or ``"L20:r2@4"`` is a shape, ``"L6 top30 > L20"`` a cascade."""
    if isinstance(text, (Shape, CascadePlan)):
        return text
    return CascadePlan.parse(text) if ">" in text else Shape.parse(text)


def default_systems(exits: Sequence[int], ratios: Sequence[int] = (1, 2, 4)) -> list[System]:
    """Fixed shapes at about 1/5 .. all of the depth (and the full and 2/3 depth compressed early by 2 and
    4), two-stage cascades from a shallow exit to 1/2, 2/3 or all of the depth keeping 10-50 candidates,
    three-stage ones, and compressed cascades: compressed by 2 throughout, or from the first stage's exit on
    (all from the passes the fixed shapes need). Only systems whose deepest shape compresses by one of
    ``ratios`` (1: none) are kept, so each ratio costs one pass."""
    deepest = exits[-1]
    pick = lambda fraction: min(exits, key=lambda e: abs(e - fraction * deepest))  # noqa: E731
    depths = sorted({pick(f) for f in (0.2, 0.27, 0.33, 0.4, 0.5, 0.67, 0.8, 1.0)})
    early = exits[0]
    systems: list[System] = [Shape(d) for d in depths]
    systems += [Shape(pick(f), [early], r) for f in (1.0, 0.67) for r in (2, 4) if pick(f) > early]
    shallow = sorted({pick(f) for f in (0.13, 0.2, 0.27, 0.33, 0.4)})
    deep = sorted({pick(f) for f in (0.5, 0.67, 1.0)})
    for first in shallow:
        for keep in (10, 20, 30, 50):
            systems += [CascadePlan([(Shape(first), keep), Shape(last)]) for last in deep if last > first]
    middle = pick(0.5)
    for first in shallow[:3]:
        for keep in (30, 50):
            if first < middle:
                systems += [CascadePlan([(Shape(first), keep), (Shape(middle), k), Shape(deepest)]) for k in (10, 20)]
    if deepest > early:
        compressed = Shape(deepest, [early], 2)
        systems += [CascadePlan([(Shape(early), keep), compressed]) for keep in (30, 50)]
        if pick(0.33) > early:
            systems += [CascadePlan([(Shape(pick(0.33), [early], 2), keep), compressed]) for keep in (20, 50)]
    deepest_ratio = lambda system: (system if isinstance(system, Shape) else system.path).ratio  # noqa: E731
    return [system for system in dict.fromkeys(systems) if deepest_ratio(system) in ratios]


def holdout_qids(dataset: str, every: int = 10) -> list[str]:
    """The queries the training recipe holds out (``python -m train split``): of the topics with a
    judged-relevant document, in topic order, every ``every``-th one (80 of SciFact train's 809)."""
    from .offline.collections import pt_dataset

    ds = pt_dataset(dataset)
    topics, qrels = ds.get_topics(), ds.get_qrels()
    judged = set(qrels.loc[qrels["label"] >= 1, "qid"])
    kept = topics[topics["qid"].isin(judged)].reset_index(drop=True)
    return kept["qid"].iloc[every - 1::every].tolist()


def candidates_for(dataset: str, top_k: int = 100, queries: Optional[int] = None,
                   qids: Optional[Sequence[str]] = None, run: Optional[str] = None) -> pd.DataFrame:
    """First-stage candidates (with text) of ``dataset``: only ``qids`` if given, then the first ``queries``."""
    from .shape_comparison import first_stage

    frame = first_stage(dataset, top_k, run)
    frame = frame[frame["rank"] < top_k]
    if qids is not None:
        frame = frame[frame["qid"].isin(set(qids))]
    keep = list(dict.fromkeys(frame["qid"]))[:queries]
    return frame[frame["qid"].isin(keep)].reset_index(drop=True)


def refuse_test_topics(dataset: str) -> None:
    """A budget is chosen on development topics; choosing on test topics would overstate the choice."""
    name = dataset.lower()
    if any(marker in name for marker in ("/test", "dl19", "dl20", "trec-dl", "/dev/small")):
        raise UserError(f"{dataset} holds evaluation topics: choose a shape on development topics, e.g. "
                         "beir/scifact/train --holdout (the held-out training queries), and report on test after")


@dataclass(frozen=True)
class PassKey:
    """One multi-exit pass: compression layers and ratio, and the adapters it runs."""

    compress_layers: tuple[int, ...]
    ratio: int
    adapters: tuple[str, ...]

    def shape(self, exits: Sequence[int]) -> Shape:
        return Shape(exits, self.compress_layers, self.ratio)

    def __str__(self) -> str:
        width = f"r{self.ratio}@{','.join(map(str, self.compress_layers))}" if self.ratio > 1 else "r1"
        return f"{width}+{'+'.join(self.adapters) or 'none'}"


def plan_for(reranker: MatroyshkaReRanker, system: System) -> tuple[PassKey, list[int], str]:
    """The pass a system's scores come from, the depths it reads, and the cascade's adapter choice
    (``auto``, or ``deepest`` where the stages' own picks cannot share blocks)."""
    scorer = reranker.scorer
    if isinstance(system, Shape):
        system.validate(scorer.exits)
        key = PassKey(system.compress_layers, system.ratio, tuple(scorer.adapters_for(system)))
        return key, [system.depth], "auto"
    choice = "auto"
    try:
        sets = stage_adapters(scorer, system.validate(scorer.exits), "auto")
    except ValueError:
        choice, sets = "deepest", stage_adapters(scorer, system, "deepest")
    if any(s != sets[0] for s in sets):
        raise UserError(f"cascade {system} switches adapters between stages; replaying it from one pass needs one "
                         "adapter set: evaluate it with the transformer itself")
    path = system.path
    return PassKey(path.compress_layers, path.ratio, tuple(sets[0])), system.depths, choice


def exit_scores(reranker: MatroyshkaReRanker, candidates: pd.DataFrame, key: PassKey,
                cache: Optional[Path] = None) -> dict[int, np.ndarray]:
    """Every candidate's score at every exit of the pass ``key`` (rows in ``candidates`` order), from
    ``cache`` when it holds this pass for these candidates."""
    scorer = reranker.scorer
    shape = key.shape(scorer.exits)
    path = None
    if cache is not None:
        rows = "\n".join(candidates["qid"].astype(str) + "\t" + candidates["docno"].astype(str))
        # the scorer's fingerprint (weights, adapters, budgets), so another model's scores are never read back
        model = fingerprint_digest(scorer.fingerprint(shape))
        digest = hashlib.sha1(f"{model}|{rows}".encode()).hexdigest()[:12]
        path = Path(cache) / f"exits_{key}_{digest}.npz"
        if path.is_file():
            stored = np.load(path)
            return {int(name[1:]): stored[name] for name in stored.files}
    pairs = list(zip(candidates["query"], candidates[reranker.text_field]))
    scores = np.asarray(scorer.compute_score(pairs, shape=shape, adapters=list(key.adapters),
                                             batch_size=reranker.batch_size), dtype=float)
    by_depth = {depth: values for depth, values in zip(shape.exits, scores.reshape(len(shape.exits), -1))}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{f"L{d}": v for d, v in by_depth.items()})
    return by_depth


def replay(candidates: pd.DataFrame, scores: dict[int, np.ndarray], system: System) -> pd.DataFrame:
    """The run a system produces, from the exit scores of its pass."""
    out = candidates[["qid", "docno"]].copy()
    if isinstance(system, Shape):
        out["score"] = scores[system.depth]
        return out
    stacked = np.stack([scores[d] for d in system.depths])
    final = np.empty(len(candidates))
    for rows in pd.Series(range(len(candidates))).groupby(candidates["qid"].to_numpy(), sort=False).indices.values():
        _, final[rows] = cascade_ranking(prune(stacked[:, rows], system))
    out["score"] = final
    return out


def transformer_for(reranker: MatroyshkaReRanker, system: System, adapters: str = "auto") -> pt.Transformer:
    if isinstance(system, Shape):
        return reranker.with_shape(system)
    return reranker.cascade(system, adapters=adapters)


def time_per_query(transformer: pt.Transformer, candidates: pd.DataFrame, queries: int) -> float:
    """Milliseconds per query over the first ``queries`` queries, after an untimed call on two candidates
    (which pays for switching adapters)."""
    qids = list(dict.fromkeys(candidates["qid"]))[:queries]
    transformer(candidates.head(2))
    timed = candidates[candidates["qid"].isin(qids)]
    start = time.perf_counter()
    transformer(timed)
    return 1000 * (time.perf_counter() - start) / len(qids)


def evaluate_systems(reranker: MatroyshkaReRanker, systems: Sequence[Union[str, System]], candidates: pd.DataFrame,
                     qrels: pd.DataFrame, measures: Sequence = (nDCG @ 10, RR @ 10), cache: Optional[Path] = None,
                     time_queries: int = 3, time_which: str = "frontier") -> pd.DataFrame:
    """One row per system: its measures, estimated GFLOP per query and per pair (at the candidates' mean
    token lengths), the share of the deepest fixed shape's cost, and measured ms per query (``time_which``:
    ``"frontier"`` times the frontier and the deepest shape, ``"all"`` every system, ``"none"`` nothing).
    Also ``pass``: the multi-exit pass the scores came from, and ``adapters``: a cascade's adapter choice."""
    from .shape_comparison import gflop_per_query, mean_lengths

    systems = [parse_system(s) for s in systems]
    planned = {system: plan_for(reranker, system) for system in systems}
    passes = {key: exit_scores(reranker, candidates, key, cache) for key in dict.fromkeys(k for k, _, _ in planned.values())}
    per_query = candidates.groupby("qid", sort=False).size()
    lengths = mean_lengths(reranker, candidates)
    queries = candidates["qid"].unique()
    rows = []
    for system, (key, _, choice) in planned.items():
        run = replay(candidates, passes[key], system)
        gflop = gflop_per_query(transformer_for(reranker, system, choice), candidates, lengths)
        rows.append({"name": str(system), "kind": "cascade" if isinstance(system, CascadePlan) else "shape",
                     **evaluate(run, qrels, measures, queries), COST: gflop, "GFLOP/pair": gflop / per_query.mean(),
                     "ms/query": float("nan"), "pass": str(key), "adapters": choice})
    table = pd.DataFrame(rows)
    deepest = Shape(reranker.scorer.exits[-1])
    full = gflop_per_query(reranker.with_shape(deepest), candidates, lengths)
    table["of full"] = table[COST] / full
    if time_which != "none" and time_queries > 0:
        names = set(table["name"]) if time_which == "all" else set(pareto_frontier(table)["name"]) | {str(deepest)}
        for index, row in table[table["name"].isin(names)].iterrows():
            system = next(s for s in systems if str(s) == row["name"])
            table.loc[index, "ms/query"] = time_per_query(transformer_for(reranker, system, row["adapters"]),
                                                          candidates, time_queries)
    return table.sort_values(COST, kind="stable").reset_index(drop=True)


def pareto_frontier(table: pd.DataFrame, cost: str = COST, measure: str = MEASURE) -> pd.DataFrame:
    """The systems no other system beats at the same or lower cost: by rising cost, each better than every
    cheaper one."""
    ordered = table.sort_values([cost, measure], ascending=[True, False], kind="stable")
    best, keep = -np.inf, []
    for index, value in ordered[measure].items():
        if value > best:
            keep.append(index)
            best = value
    return ordered.loc[keep]


def best_under(table: pd.DataFrame, max_gflop: Optional[float] = None, max_ms: Optional[float] = None,
               max_fraction: Optional[float] = None, measure: str = MEASURE) -> pd.Series:
    """The most effective system within the budget (GFLOP per query, measured ms per query, or a share of
    the deepest fixed shape's GFLOP); ties go to the cheaper one."""
    fits = pd.Series(True, index=table.index)
    if max_gflop is not None:
        fits &= table[COST] <= max_gflop
    if max_fraction is not None:
        fits &= table["of full"] <= max_fraction
    if max_ms is not None:
        fits &= table["ms/query"] <= max_ms  # untimed systems (NaN) never fit a time budget
    if not fits.any():
        cheapest = table.loc[table[COST].idxmin()]
        raise UserError(f"no system fits the budget; the cheapest is {cheapest['name']} at "
                         f"{cheapest[COST]:.2f} GFLOP/query ({cheapest['of full']:.0%} of full depth)")
    within = table[fits].sort_values([measure, COST], ascending=[False, True], kind="stable")
    return within.iloc[0]
