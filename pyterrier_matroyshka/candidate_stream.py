"""Candidates one query at a time, for jobs too large to hold in memory (see :mod:`.sharded`).

A source is iterable, possibly several times, in the same order every time, as ``(qid, load)`` pairs:
``load()`` returns that query's candidate frame (``qid``, ``query``, ``docno``, ``score``, ``rank``, text). The
expensive part (text, query lookup) happens only in ``load``, so a process that skips a query pays little for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Protocol, Union

import pandas as pd

from .errors import UserError, check_int
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
        topics_name: what the topics are, for error messages (e.g. "the topics of beir/scifact/test").

    A run query missing from ``topics`` is a :class:`~pyterrier_matroyshka.errors.UserError` naming it (raised
    while the run is first read, before any scoring), never a silently dropped query.
    """

    def __init__(self, path: Union[str, Path], topics: Union[pd.DataFrame, Mapping[str, str]],
                 text: Callable[[pd.DataFrame], pd.DataFrame], top_k: Optional[int] = None,
                 max_queries: Optional[int] = None, topics_name: str = "the topics given"):
        check_int("top_k", top_k, 1, optional=True)
        check_int("max_queries", max_queries, 1, optional=True)
        self.path, self.text, self.top_k, self.max_queries = Path(path), text, top_k, max_queries
        self.topics_name = topics_name
        if isinstance(topics, pd.DataFrame):
            topics = dict(zip(topics["qid"].astype(str), topics["query"]))
        self.topics: Mapping[str, str] = topics
        self.rows_given = self.rows_kept = 0  # counted while the run is read

    def __iter__(self) -> Iterator[tuple[str, Loader]]:
        """Every line is read and checked, also past ``max_queries``; ``rows_given`` and ``rows_kept`` then
        count the run's rows and those that ``top_k`` and ``max_queries`` keep. Queries missing from the
        topics raise at the end (all of them named), before the last pair is given."""
        self.rows_given = self.rows_kept = 0
        unknown: list[str] = []
        for count, frame in enumerate(iter_trec_run(self.path)):
            self.rows_given += len(frame)
            qid = frame["qid"].iloc[0]
            if qid not in self.topics:
                unknown.append(qid)
            if unknown or (self.max_queries is not None and count >= self.max_queries):
                continue
            self.rows_kept += len(frame) if self.top_k is None else min(len(frame), self.top_k)
            yield qid, self._loader(frame)
        if unknown:
            raise UserError(f"{self.path}: {len(unknown)} qid(s) are not among {self.topics_name}: "
                            f"{unknown[:5]}; give a run of these topics' queries (or drop those lines)")

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


def query_order(candidates: Iterable[tuple[str, Loader]], rank: int = 0, world: int = 1,
                load: bool = False) -> list[str]:
    """The qids of a source in its order, each checked to come once (results are keyed by qid). ``load``: also
    load the candidates of ``rank``'s share (query ``i`` for ``i % world == rank``) and drop them, so that bad
    data (a document missing from the corpus) stops a job before its model loads."""
    order, seen = [], set()
    for index, (qid, loader) in enumerate(candidates):
        if qid in seen:
            raise UserError(f"query {qid!r} comes twice in the candidates; each query must come once")
        seen.add(qid)
        order.append(qid)
        if load and index % world == rank:
            loader()
    return order
