"""Candidates one query at a time, for jobs too large to hold in memory (see :mod:`.sharded`).

A source is iterable, possibly several times, in the same order every time, as ``(qid, load)`` pairs:
``load()`` returns that query's candidate frame (``qid``, ``query``, ``docno``, ``score``, ``rank``, text). The
expensive part (text, query lookup) happens only in ``load``, so a process that skips a query pays little for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Protocol, Union

import pandas as pd

from .trec import iter_trec_run

__all__ = ["QueryCandidates", "TrecRunCandidates", "FrameCandidates"]

Loader = Callable[[], pd.DataFrame]


class QueryCandidates(Protocol):
    """Re-iterable ``(qid, load)`` pairs, each qid once, in a fixed order."""

    def __iter__(self) -> Iterator[tuple[str, Loader]]: ...


class TrecRunCandidates:
    """A TREC run file streamed query by query, with each query's text and candidates' text added on load.

    Args:
        path: the run; each query's lines together (any TREC tool writes them so; see
            :func:`~pyterrier_matroyshka.trec.iter_trec_run`).
        topics: the queries' text: a topics frame (``qid``, ``query``) or a ``{qid: query}`` mapping.
        text: a transformer (or function) that adds the passage text to a candidate frame, e.g.
            ``pt.text.get_text(dataset, "text")``.
        top_k: keep each query's ``top_k`` best-scored candidates (``None``: all).
        max_queries: only the first ``max_queries`` queries of the run.

    A run query missing from ``topics`` is an error naming it (raised while the run is first read, before any
    scoring), never a silently dropped query.
    """

    def __init__(self, path: Union[str, Path], topics: Union[pd.DataFrame, Mapping[str, str]],
                 text: Callable[[pd.DataFrame], pd.DataFrame], top_k: Optional[int] = None,
                 max_queries: Optional[int] = None):
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if max_queries is not None and max_queries < 1:
            raise ValueError(f"max_queries must be at least 1, got {max_queries}")
        self.path, self.text, self.top_k, self.max_queries = Path(path), text, top_k, max_queries
        if isinstance(topics, pd.DataFrame):
            topics = dict(zip(topics["qid"].astype(str), topics["query"]))
        self.topics: Mapping[str, str] = topics

    def __iter__(self) -> Iterator[tuple[str, Loader]]:
        for count, frame in enumerate(iter_trec_run(self.path)):
            if self.max_queries is not None and count >= self.max_queries:
                return
            qid = frame["qid"].iloc[0]
            if qid not in self.topics:
                raise ValueError(f"{self.path}: query {qid!r} is not among the topics given (e.g. a run of another "
                                 f"dataset, or topics of another split); give the run's own topics")
            yield qid, self._loader(frame)

    def _loader(self, frame: pd.DataFrame) -> Loader:
        def load() -> pd.DataFrame:
            kept = frame if self.top_k is None else frame[frame["rank"] < self.top_k]
            return self.text(kept.assign(query=self.topics[kept["qid"].iloc[0]]))
        return load


class FrameCandidates:
    """A candidate frame already in memory (e.g. BM25 output), query by query in first-appearance order."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self._groups = frame.groupby(frame["qid"].astype(str), sort=False).indices

    def __iter__(self) -> Iterator[tuple[str, Loader]]:
        for qid, rows in self._groups.items():
            yield qid, (lambda rows=rows: self.frame.iloc[rows])


def query_order(candidates: Iterable[tuple[str, Loader]]) -> list[str]:
    """The qids of a source in its order; a qid that comes twice is an error (results are keyed by qid)."""
    order, seen = [], set()
    for qid, _ in candidates:
        if qid in seen:
            raise ValueError(f"query {qid!r} comes twice in the candidates; each query must come once")
        seen.add(qid)
        order.append(qid)
    return order
