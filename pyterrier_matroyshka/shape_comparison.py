"""Compare shapes of one loaded re-ranker: ``pt.Experiment`` (measures, significance against the first
stage with correction, ``mrt``) plus what is ours, an estimated-cost column and fused rows.

The first stage runs once; every system re-ranks the same candidates, so ``mrt`` is the re-ranking time
alone.
"""
from __future__ import annotations

import time
from functools import partial
from typing import Callable, Optional, Sequence, Union

import ir_measures
import pandas as pd
import pyterrier as pt
from ir_measures import RR, nDCG

from .cascade import MatroyshkaCascade
from .cascade_plan import CascadePlan
from .errors import UserError, check_int
from .fusion import fuse
from .reranker import MatroyshkaReRanker
from .shape import ShapeLike

DEFAULT_MEASURES = (nDCG @ 10, RR @ 10)


def first_stage(dataset: str, num_results: int = 100, run: Optional[str] = None) -> pd.DataFrame:
    """Candidates with text for ``dataset``'s topics: a TREC ``run`` file if given, the official
    BM25 run for the DL19 subset, else PISA BM25 top-``num_results``."""
    from .offline.bm25 import bm25, dl19_bm25_run, text_loader
    from .offline.collections import DL19_ID, pt_dataset

    check_int("num_results (top-k)", num_results, 1)
    topics = pt_dataset(dataset).get_topics()
    if run is not None:
        from .trec import read_trec_run

        frame = read_trec_run(run)
        if frame.empty:
            raise UserError(f"run file {run} holds no lines: nothing to re-rank")
        unknown = list(dict.fromkeys(frame.loc[~frame["qid"].isin(set(topics["qid"])), "qid"]))
        if unknown:  # an inner merge would drop their rows without a word
            raise UserError(f"{run}: {len(unknown)} qid(s) are not among the topics of {dataset}: {unknown[:5]}; "
                            "give a run of this dataset's queries (or drop those lines)")
        frame = frame.merge(topics, on="qid", how="left", validate="many_to_one")
        return text_loader(dataset)(frame)
    if dataset.removeprefix("irds:") == DL19_ID:
        frame = dl19_bm25_run()
        return frame[frame["rank"] < num_results]
    return bm25(dataset, num_results=num_results)(topics)


def evaluate(run: pd.DataFrame, qrels: pd.DataFrame, measures: Sequence = DEFAULT_MEASURES,
             queries: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Mean ``measures`` of a results frame (qid, docno, score) against PyTerrier-style qrels, over
    ``queries`` (default: the run's queries; a query left without results counts as 0)."""
    values = ir_measures.calc_aggregate(list(measures), *_ir_measures_frames(run, qrels, queries))
    return {str(m): float(values.get(m, 0.0)) for m in measures}


def evaluate_per_query(run: pd.DataFrame, qrels: pd.DataFrame, measure, queries: Sequence[str]) -> pd.Series:
    """``measure`` of each of ``queries`` (0 for a query without results), indexed by qid: for paired tests."""
    values = {m.query_id: m.value for m in ir_measures.iter_calc([measure], *_ir_measures_frames(run, qrels, queries))}
    return pd.Series([values.get(q, 0.0) for q in queries], index=list(queries), dtype=float)


def _ir_measures_frames(run: pd.DataFrame, qrels: pd.DataFrame,
                        queries: Optional[Sequence[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PyTerrier-style qrels (of ``queries``, default the run's) and run, renamed for ir_measures."""
    keep = set(run["qid"]) if queries is None else set(queries)
    qrels = qrels[qrels["qid"].isin(keep)].rename(columns={"docno": "doc_id", "qid": "query_id",
                                                            "label": "relevance"})
    results = run.rename(columns={"docno": "doc_id", "qid": "query_id"})[["query_id", "doc_id", "score"]]
    return qrels, results


def compare(candidates: pd.DataFrame, qrels: pd.DataFrame, systems: dict[str, Optional[pt.Transformer]],
            measures: Sequence = DEFAULT_MEASURES, fusion_weight: Optional[float] = None,
            first_stage_name: str = "BM25", report: Optional[Callable[[str], None]] = print,
            **experiment) -> pd.DataFrame:
    """``pt.Experiment`` over ``systems`` re-ranking the same ``candidates`` (``None``: the candidates as
    they are, the baseline of the significance tests), plus what is ours: a ``GFLOP/pair`` column for
    Matroyshka systems and, with ``fusion_weight``, a fused row after each of them from the same scoring pass.

    Every system is ``candidates >> system``; ``pt.Experiment``'s tree plan runs each shared prefix once, so
    ``candidates >> shape >> fuse`` reuses the shape's own run and its ``mrt`` (ms per query) is the shape's
    plus the fusion's. ``report`` (default ``print``) gets one line per system as it finishes. Keywords go
    to ``pt.Experiment`` (defaults: baseline 0, correction ``"holm"``, plan ``"tree"``). Its ``save_dir``
    does not fit here (it needs the linear plan, where a fused row would score its shape again, and refuses
    names with ``:`` such as ``L30:r2@4``): to reuse scores across runs, re-rank through a
    :class:`~pyterrier_matroyshka.caching.MatroyshkaCache`.
    """
    source = pt.Transformer.from_df(candidates)
    topics = candidates[["qid", "query"]].drop_duplicates("qid")
    queries = topics["qid"].tolist()
    started = time.perf_counter()
    pipelines: dict[str, pt.Transformer] = {}
    flops: dict[str, float] = {}
    per_query: dict[str, float] = {}
    lengths = None

    def add(name: str, pipeline: pt.Transformer) -> None:
        pipelines[name] = pipeline if report is None else pipeline >> _RowReport(
            name, qrels, measures, queries, report, started)

    for name, system in systems.items():
        scored = source if system is None else source >> system
        add(name, scored)
        if isinstance(system, (MatroyshkaReRanker, MatroyshkaCascade)):
            lengths = lengths or mean_lengths(getattr(system, "reranker", system), candidates)
            per_query[name] = gflop_per_query(system, candidates, lengths)
            flops[name] = per_query[name] * candidates["qid"].nunique() / len(candidates)
            if fusion_weight is not None:
                fused = f"{name} + {first_stage_name} ({fusion_weight:g})"
                flops[fused], per_query[fused] = flops[name], per_query[name]
                add(fused, scored >> pt.apply.generic(partial(fuse, candidates, weight=fusion_weight)))
    settings = {**dict(baseline=0, correction="holm", plan="tree", verbose=False), **experiment}
    table = pt.Experiment(list(pipelines.values()), topics, qrels, [*measures, "mrt"], names=list(pipelines),
                          **settings)
    return table.assign(**{"GFLOP/pair": table["name"].map(flops).astype(float),
                           "GFLOP/query": table["name"].map(per_query).astype(float)})


def gflop_per_query(system: "MatroyshkaReRanker | MatroyshkaCascade", candidates: pd.DataFrame,
                    lengths: tuple[int, int, int]) -> float:
    """Estimated GFLOP per query at the candidates' mean token ``lengths``: a shape's cost per pair times the
    candidates, a cascade's stages for the candidates that reach them; averaged over the queries."""
    counts = candidates.groupby("qid", sort=False).size()
    if isinstance(system, MatroyshkaReRanker):
        return system.scorer.flops(system.shape, *lengths) * float(counts.mean()) / 1e9
    query_len, passage_len, _ = lengths
    return sum(system.flops(int(n), query_len, passage_len) for n in counts) / len(counts) / 1e9


class _RowReport(pt.Transformer):
    """Passes a system's run on unchanged, reporting its measures (and the time so far) as it finishes."""

    def __init__(self, name: str, qrels: pd.DataFrame, measures: Sequence, queries: Sequence[str],
                 report: Callable[[str], None], started: float):
        self.name, self.qrels, self.measures, self.queries = name, qrels, measures, queries
        self.report, self.started = report, started

    def transform(self, run: pd.DataFrame) -> pd.DataFrame:
        if len(run) == 0:
            return run
        values = evaluate(run, self.qrels, self.measures, self.queries)
        shown = "  ".join(f"{m} {v:.4f}" for m, v in values.items())
        self.report(f"{self.name:<28} {shown}  ({time.perf_counter() - self.started:.0f} s so far)")
        return run

    def transform_outputs(self, input_columns: list[str]) -> list[str]:
        return list(input_columns)  # so pt.Experiment's check of the pipelines reports nothing

    def __repr__(self) -> str:
        return f"report({self.name!r})"


def compare_shapes(reranker: MatroyshkaReRanker, shapes: Sequence[Union[ShapeLike, CascadePlan]],
                   candidates: pd.DataFrame, qrels: pd.DataFrame, baseline: str = "BM25",
                   measures: Sequence = DEFAULT_MEASURES, extra: Optional[dict[str, pt.Transformer]] = None,
                   fusion_weight: Optional[float] = None, **compare_options) -> pd.DataFrame:
    """The candidates' own ranking, ``extra`` systems, then ``reranker`` at each shape (weights loaded once),
    each also interpolated with the candidates' scores at ``fusion_weight`` if given (see :func:`compare`). A
    cascade (:class:`CascadePlan` or its string, e.g. ``"L6 top30 > L20"``) is a system too."""
    systems: dict[str, Optional[pt.Transformer]] = {baseline: None, **(extra or {})}
    for shape in shapes:
        if isinstance(shape, CascadePlan) or (isinstance(shape, str) and ">" in shape):
            cascade = reranker.cascade(shape)
            systems[str(cascade.plan)] = cascade
        else:
            systems[str(shape)] = reranker.with_shape(shape)
    return compare(candidates, qrels, systems, measures, fusion_weight, baseline, **compare_options)


def mean_lengths(reranker: MatroyshkaReRanker, candidates: pd.DataFrame, sample: int = 256) -> tuple[int, int, int]:
    """Mean query, passage and prompt token counts of (a sample of) the candidates."""
    rows = candidates.sample(min(sample, len(candidates)), random_state=0)
    return reranker.scorer.mean_lengths(list(zip(rows["query"], rows[reranker.text_field])))


def format_table(table: pd.DataFrame) -> str:
    """A table as plain text: each measure (4 decimals) with its corrected p-value against the baseline where
    ``pt.Experiment`` gave one, then the cost columns (GFLOP per pair and per query, ms per query)."""
    measures = [c for c in table.columns if "@" in c and " " not in c]
    shown = ["name"]
    for measure in measures:
        shown.append(measure)
        p_value = next((c for c in (f"{measure} p-value corrected", f"{measure} p-value") if c in table.columns), None)
        if p_value:
            shown.append(p_value)
    costs = {"GFLOP/pair": "{:.2f}", "GFLOP/query": "{:.1f}", "of full": "{:.0%}", "mrt": "{:.0f}",
             "ms/query": "{:.0f}", "seconds": "{:.1f}"}
    shown += [c for c in costs if c in table.columns]
    short = {c: f"p({c.split(' ')[0]})" if " p-value" in c else c for c in shown}
    formats = {short[c]: "{:.4f}".format for c in measures}
    formats.update({short[c]: "{:.3f}".format for c in shown if c.endswith(("p-value", "corrected"))})
    formats.update({c: f.format for c, f in costs.items()})
    return table[shown].rename(columns=short).to_string(index=False, formatters=formats, na_rep="-")
