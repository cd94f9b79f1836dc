"""TREC run files (``qid Q0 docno rank score tag``), read and written with pandas alone.

The files are the ones ``trec_eval``, Anserini/Pyserini and PyTerrier exchange. In a data frame the
ranks follow PyTerrier (0 = best, by score within each query); in a file they follow TREC (1 = best).
Files ending in ``.gz`` are (de)compressed on the fly.
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import IO, Iterator, Optional, Union

import numpy as np
import pandas as pd

from .errors import UserError, numbered_lines

__all__ = ["write_trec_run", "format_trec_run", "read_trec_run", "iter_trec_run", "TREC_COLUMNS"]

TREC_COLUMNS = ["qid", "docno", "score", "rank"]

PathLike = Union[str, Path]


def _open(path: PathLike, mode: str) -> IO[str]:
    if str(path).endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def _ranked(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` sorted by qid (order of first appearance) and score descending (stable), with 0-based ranks."""
    df = df.copy()
    df["qid"] = df["qid"].astype(str)
    df["docno"] = df["docno"].astype(str)
    df["score"] = df["score"].astype("float64")
    first_seen = {qid: i for i, qid in enumerate(dict.fromkeys(df["qid"]))}
    df["_q"] = df["qid"].map(first_seen)
    df = df.sort_values(["_q", "score"], ascending=[True, False], kind="stable").drop(columns="_q")
    df["rank"] = df.groupby("qid", sort=False).cumcount().astype("int64")
    return df.reset_index(drop=True)


def _first(mask) -> int:
    """The position of the first True in a boolean mask."""
    return int(np.asarray(mask).nonzero()[0][0])


def write_trec_run(df: pd.DataFrame, path: PathLike, run_name: str = "matroyshka") -> Path:
    """Write a results frame (columns ``qid``, ``docno``, ``score``) as a TREC run file and return its path.

    Rows are written per query (queries in order of first appearance) by descending score, ties in
    frame order, with ranks 1, 2, ... recomputed from that order (an existing ``rank`` column is ignored,
    so file ranks always agree with the scores). Scores keep full float precision.
    """
    text = format_trec_run(df, run_name)
    path = Path(path)
    with _open(path, "w") as f:
        f.write(text)
    return path


def format_trec_run(df: pd.DataFrame, run_name: str = "matroyshka") -> str:
    """The text :func:`write_trec_run` writes for ``df``: one query's text is the same whether it is
    formatted alone or with other queries, so per-query pieces concatenate to the whole run."""
    missing = [c for c in ("qid", "docno", "score") if c not in df.columns]
    if missing:
        raise UserError(f"write_trec_run: the frame lacks column(s) {missing}; it has {list(df.columns)}")
    if not isinstance(run_name, str) or not run_name or any(ch.isspace() for ch in run_name):
        raise UserError(f"write_trec_run: run_name must be one non-empty word, got {run_name!r}")
    for col in ("qid", "docno"):
        bad = df[col].isna() | df[col].astype(str).str.contains(r"\s|^$", regex=True)
        if bad.any():
            raise UserError(f"write_trec_run: {col} {df[col][bad].iloc[0]!r} (row {_first(bad)}) is missing, empty "
                            "or contains whitespace")
    scores = pd.to_numeric(df["score"], errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isfinite(scores)
    if bad.any():
        row = df.iloc[_first(bad)]
        raise UserError(f"write_trec_run: score {row['score']!r} of qid {row['qid']!r}, docno {row['docno']!r} is "
                        f"not a finite number ({int(bad.sum())} row(s) in all); a run file holds finite scores only")
    ranked = _ranked(df)
    return "".join(f"{qid} Q0 {docno} {rank + 1} {score!r} {run_name}\n"
                   for qid, docno, score, rank in zip(ranked["qid"], ranked["docno"], ranked["score"], ranked["rank"]))


def read_trec_run(path: PathLike) -> pd.DataFrame:
    """Read a TREC run file into a frame with columns ``qid``, ``docno`` (str), ``score`` (float) and
    ``rank`` (int, 0-based, recomputed from the scores within each query; the file's own ranks are only
    checked to be integers).

    Blank lines are skipped; a UTF-8 byte-order mark at the start is dropped. Raises
    :class:`~pyterrier_matroyshka.errors.UserError` (a ``ValueError``) naming the file and 1-based line number
    of the first malformed line (not 6 fields, a rank that is not a whole number, a score that is not a finite
    number, bytes that are not UTF-8).
    """
    opener = gzip.open if str(path).endswith(".gz") else None
    rows = [row for row in (_parse_line(line, path, lineno) for lineno, line in numbered_lines(path, opener)) if row]
    return _frame(rows)


def iter_trec_run(path: PathLike) -> Iterator[pd.DataFrame]:
    """The run in ``path`` one query at a time, in file order, without holding more than one query's rows:
    frames as :func:`read_trec_run` returns (ranks recomputed within the query), with its checks.

    Each query's lines must be together (as every TREC tool writes them). Raises
    :class:`~pyterrier_matroyshka.errors.UserError` naming the file and line of a query that comes back after
    other queries, or of a malformed line.
    """
    seen: set[str] = set()
    rows: list[tuple[str, str, float]] = []
    opener = gzip.open if str(path).endswith(".gz") else None
    for lineno, line in numbered_lines(path, opener):
        row = _parse_line(line, path, lineno)
        if row is None:
            continue
        if rows and row[0] != rows[-1][0]:
            yield _frame(rows)
            rows = []
        if not rows:
            if row[0] in seen:
                raise UserError(
                    f"{path}, line {lineno}: query {row[0]!r} comes back after other queries; a run read query by "
                    f"query needs each query's lines together. Group them first (keeps the queries' first-appearance "
                    f"order): write_trec_run(read_trec_run(path), grouped_path)")
            seen.add(row[0])
        rows.append(row)
    if rows:
        yield _frame(rows)


def _parse_line(line: str, path: PathLike, lineno: int) -> Optional[tuple[str, str, float]]:
    """``(qid, docno, score)`` of one run line, ``None`` for a blank line; a :class:`UserError` names the
    file and line of a malformed one."""
    fields = line.split()
    if not fields:
        return None
    where = f"{path}, line {lineno}"
    if len(fields) != 6:
        raise UserError(f"{where}: expected 6 fields 'qid Q0 docno rank score tag', "
                        f"got {len(fields)}: {line.rstrip()!r}")
    qid, _, docno, rank, score, _ = fields
    try:
        int(rank)
    except ValueError:
        raise UserError(f"{where}: rank {rank!r} is not an integer: {line.rstrip()!r}") from None
    try:
        value = float(score)
    except ValueError:
        raise UserError(f"{where}: score {score!r} is not a number: {line.rstrip()!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: score {score!r} is not finite: {line.rstrip()!r}; rescore that document "
                        "or drop the line")
    return qid, docno, value


def _frame(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["qid", "docno", "score"])
    df = df.astype({"qid": str, "docno": str, "score": "float64"})
    return _ranked(df)[TREC_COLUMNS]
