"""Compare shapes of one loaded re-ranker: effectiveness next to estimated cost and measured time.

The first stage runs once; every system re-ranks the same candidates, so the time column is the
re-ranking time alone.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import ir_measures
import pandas as pd
import pyterrier as pt
from ir_measures import RR, nDCG

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
            first_stage_name: str = "BM25") -> pd.DataFrame:
    """One row per system (``None`` = the candidates as they are): measures, GFLOP/pair, seconds.

    With ``fusion_weight``, every Matroyshka row is followed by the same run interpolated with the
    candidates' own scores (:func:`~pyterrier_matroyshka.fusion.fuse`, no re-scoring)."""
    rows = []
    lengths = None
    queries = candidates["qid"].unique()
    for name, system in systems.items():
        start = time.perf_counter()
        run = candidates if system is None else system(candidates)
        seconds = time.perf_counter() - start
        flops = float("nan")
        if isinstance(system, MatroyshkaReRanker):
            lengths = lengths or mean_lengths(system, candidates)
            flops = system.scorer.flops(system.shape, *lengths) / 1e9
        row = {"GFLOP/pair": flops, "seconds": seconds if system is not None else float("nan")}
        rows.append({"name": name, **evaluate(run, qrels, measures, queries), **row})
        if fusion_weight is not None and isinstance(system, MatroyshkaReRanker):
            fused = fuse(candidates, run, fusion_weight)
            rows.append({"name": f"{name} + {first_stage_name} ({fusion_weight:g})",
                         **evaluate(fused, qrels, measures, queries), **row})
    return pd.DataFrame(rows)


def compare_shapes(reranker: MatroyshkaReRanker, shapes: Sequence[ShapeLike], candidates: pd.DataFrame,
                   qrels: pd.DataFrame, baseline: str = "BM25", measures: Sequence = DEFAULT_MEASURES,
                   extra: Optional[dict[str, pt.Transformer]] = None,
                   fusion_weight: Optional[float] = None) -> pd.DataFrame:
    """The candidates' own ranking, ``extra`` systems, then ``reranker`` at each shape (weights loaded once),
    each also interpolated with the candidates' scores at ``fusion_weight`` if given."""
    systems: dict[str, Optional[pt.Transformer]] = {baseline: None, **(extra or {})}
    systems.update({str(shape): reranker.with_shape(shape) for shape in shapes})
    return compare(candidates, qrels, systems, measures, fusion_weight, baseline)


def mean_lengths(reranker: MatroyshkaReRanker, candidates: pd.DataFrame, sample: int = 256) -> tuple[int, int, int]:
    """Mean query, passage and prompt token counts of (a sample of) the candidates."""
    rows = candidates.sample(min(sample, len(candidates)), random_state=0)
    return reranker.scorer.mean_lengths(list(zip(rows["query"], rows[reranker.text_field])))


def format_table(table: pd.DataFrame) -> str:
    """A plain-text table with 4 decimals for measures, 2 for cost and time."""
    formats = {c: "{:.4f}".format for c in table.columns if "@" in c}
    formats.update({"GFLOP/pair": "{:.2f}".format, "seconds": "{:.1f}".format})
    return table.to_string(index=False, formatters=formats, na_rep="-")
