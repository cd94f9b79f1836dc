"""Teacher scores for training groups: ``pos_scores`` / ``neg_scores`` from any scorer (raw logits).

A scorer is either an object with ``compute_score(pairs) -> list[float]`` (the project's MiniLM
cross-encoder, a one-exit ``MatroyshkaScorer``) or any PyTerrier transformer that re-scores a frame of
``qid``, ``query``, ``docno``, ``text``. Use raw logits, not probabilities: the stage-1 loss takes a softmax
of them at temperature 1, so their scale matters (spec 10).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd

from pyterrier_matroyshka.errors import UserError, check_int, numbered_lines

from .data import parse_group

log = logging.getLogger(__name__)

Pairs = Sequence[tuple[str, str]]


def score_function(scorer) -> Callable[[Pairs], list[float]]:
    """``pairs -> scores`` for a ``compute_score`` object or a PyTerrier transformer."""
    if hasattr(scorer, "compute_score"):
        def by_compute_score(pairs: Pairs) -> list[float]:
            scores = scorer.compute_score(list(pairs))
            if scores and isinstance(scores[0], list):
                raise UserError("the teacher returned several exits; give it a one-exit shape (e.g. its deepest)")
            return [float(s) for s in scores]
        return by_compute_score
    if callable(scorer):
        def by_frame(pairs: Pairs) -> list[float]:
            frame = pd.DataFrame({"qid": [str(i) for i in range(len(pairs))],
                                  "query": [q for q, _ in pairs], "docno": [str(i) for i in range(len(pairs))],
                                  "text": [p for _, p in pairs], "score": 0.0, "rank": 0})
            out = scorer(frame)
            by_row = dict(zip(out["docno"].astype(str), out["score"].astype(float)))
            missing = [i for i in range(len(pairs)) if str(i) not in by_row]
            if missing:
                raise ValueError(f"the teacher transformer dropped {len(missing)} of {len(pairs)} rows")
            return [by_row[str(i)] for i in range(len(pairs))]
        return by_frame
    raise TypeError(f"{type(scorer).__name__} is not a scorer: give an object with compute_score(pairs) or a "
                    "PyTerrier transformer")


def add_teacher_scores(source: Path, output: Path, scorer, chunk: int = 64, verbose: bool = False,
                       resume: bool = True) -> int:
    """Copy the groups of ``source`` to ``output`` with ``pos_scores``/``neg_scores`` from ``scorer``
    (replacing any present). Other fields are kept. Works in chunks of ``chunk`` groups, each written and
    flushed as it finishes; returns the count.

    ``resume``: when ``output`` holds the first groups of ``source`` already (an interrupted run), they are kept
    and scoring continues after them; a partly written last line is dropped. A file that is not a prefix of
    this source's groups is refused rather than overwritten.
    """
    check_int("chunk", chunk, 1)
    score = score_function(scorer)
    source, output = Path(source), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    lines = [(n, line) for n, line in numbered_lines(source) if line.strip()]
    done = finished_prefix(lines, output) if resume else 0
    progress = _progress(len(lines), verbose)
    if progress is not None:
        progress.update(done)
    with open(output, "a" if done else "w", encoding="utf-8") as out:
        for start in range(done, len(lines), chunk):
            batch = lines[start:start + chunk]
            records = []
            for number, line in batch:
                parse_group(line, f"{source}:{number}")  # validates, with file:line errors
                records.append(json.loads(line))
            pairs = [(r["query"], p) for r in records for p in r["pos"] + r["neg"]]
            scored = score(pairs)
            _check_scores(scored, pairs, batch)
            scores = iter(scored)
            for record in records:
                record["pos_scores"] = [next(scores) for _ in record["pos"]]
                record["neg_scores"] = [next(scores) for _ in record["neg"]]
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            done += len(records)
            if progress is not None:
                progress.update(len(records))
    log.info("teacher scores for %d groups -> %s", done, output)
    return done


def _check_scores(scores: Sequence[float], pairs: Pairs, lines: Sequence[tuple[int, str]]) -> None:
    """One finite score per pair: a NaN teacher score would train every weight into NaN."""
    if len(scores) != len(pairs):
        raise UserError(f"the teacher returned {len(scores)} scores for {len(pairs)} pairs")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        query, passage = pairs[bad[0]]
        raise UserError(f"the teacher gave a non-finite score ({scores[bad[0]]}) to query {query!r:.60}, passage "
                        f"{passage!r:.60} (groups of lines {lines[0][0]}..{lines[-1][0]}; {len(bad)} such score(s)); "
                        "check the teacher (dtype, weights) before training on its scores")


def finished_prefix(lines: Sequence[tuple[int, str]], output: Path) -> int:
    """How many of ``lines`` (the source's groups) ``output`` already holds, scored, in order; truncates a
    partly written last line. Raises when ``output`` holds anything else."""
    if not output.is_file():
        return 0
    data = output.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with open(output, "r+b") as handle:
            handle.truncate(len(complete))
    kept = complete.decode("utf-8").splitlines()
    if len(kept) > len(lines):
        raise UserError(f"{output} has {len(kept)} groups, more than its source's {len(lines)}: remove it or "
                        "choose another --output")
    for (number, line), scored in zip(lines, kept):
        mine, theirs = json.loads(line), json.loads(scored)
        if (mine.get("query"), mine.get("pos"), mine.get("neg")) != (theirs.get("query"), theirs.get("pos"),
                                                                      theirs.get("neg")) \
                or "neg_scores" not in theirs:
            raise UserError(f"{output} is not a scored copy of the first groups of its source (line {number} "
                            "differs): remove it to start over, or choose another --output")
    if kept:
        log.info("resuming teacher scores after %d finished groups in %s", len(kept), output)
    return len(kept)


def _progress(total: int, verbose: bool):
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="teacher", unit="group")


def make_scorer(name: str, model: Optional[str] = None, adapters: Sequence[str] = (), shape: Optional[str] = None,
                batch_size: int = 32, dtype: str = "auto"):
    """A teacher by name: ``minilm`` (the MS MARCO MiniLM-L-12 cross-encoder, ONNX) or ``matroyshka``
    (``model`` + ``adapters`` at ``shape``, default its deepest exit without compression)."""
    if name == "minilm":
        from pyterrier_matroyshka.offline.minilm import MiniLMCrossEncoder

        return MiniLMCrossEncoder(batch_size=batch_size)
    if name == "matroyshka":
        from pyterrier_matroyshka.scorer import MatroyshkaScorer

        if not model:
            raise UserError("the matroyshka teacher needs --model (and optionally --adapters, --shape)")
        return MatroyshkaScorer(model, adapters=list(adapters) or None, shape=shape, batch_size=batch_size,
                                dtype=dtype)
    raise UserError(f"unknown teacher {name!r}; use 'minilm' or 'matroyshka'")
