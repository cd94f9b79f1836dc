"""A re-ranker's multi-exit pass cached on disk once, read back at any of its exits.

pyterrier-caching's ``ScorerCache`` keys on (query, docno) alone: one cache reused at another shape serves
that shape's scores, and a multi-exit re-ranker's per-exit columns are dropped. :class:`MatroyshkaCache`
keeps the per-exit scores of one pass (as the ``ScorerCache`` value, pickled) and ties the folder to the
re-ranker's fingerprint (weights, dtype, adapters, shape, token budgets, prompt, text column): a re-ranker
with another fingerprint is refused, never served. :func:`cache_folder` names one folder per fingerprint.

    cache = MatroyshkaCache(cache_folder("caches", reranker.with_shape("L10,20,30")),
                            reranker.with_shape("L10,20,30"))
    bm25 % 100 >> cache                                    # one pass: score (L30), score_L10/20/30, features
    bm25 % 100 >> cache.with_exits(20)                     # L20 read back, nothing scored
    bm25 % 100 >> FirstStageFusion(cache.with_exits(10), 0.3)   # the fused L10 costs nothing more

All exits of one pass cost the same as its deepest exit alone, so caching every exit you may want is free.
The cache assumes a docno always has the same text (as ``ScorerCache`` does).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyterrier as pt

from .errors import UserError
from .fingerprint import digest
from .reranker import MatroyshkaReRanker

FINGERPRINT_FILE = "matroyshka_fingerprint.json"
EXIT_SCORES = "exit_scores"  #: the cached column: the pass's scores, one per exit in ascending depth


def reranker_fingerprint(reranker: MatroyshkaReRanker) -> dict:
    """What decides ``reranker``'s scores: its scorer's fingerprint at its shape, with the re-ranker's own
    normalization and text column."""
    return {**reranker.scorer.fingerprint(reranker.shape), "normalize": bool(reranker.normalize),
            "text_field": reranker.text_field}


def cache_folder(root: Union[str, Path], reranker: MatroyshkaReRanker) -> Path:
    """``root/<shape>-<fingerprint digest>``: one folder per model, adapters, shape and length."""
    shape = str(reranker.shape).replace(":", "_").replace(",", "-")
    return Path(root) / f"{shape}-{digest(reranker_fingerprint(reranker))}"


class MatroyshkaCache(pt.Transformer):
    """``reranker`` with every pass cached in ``path``; outputs what ``reranker.with_shape`` at ``exits``
    would (``score`` = the deepest of ``exits``; with several, ``score_L<d>`` columns and ``features``).

    Args:
        path: the cache folder; created on first use, then tied to ``reranker``'s fingerprint.
        reranker: the re-ranker at the pass's shape (every exit to be cached, e.g. ``"L10,20,30"``).
        exits: the exits to return (default: all of the pass's); see :meth:`with_exits`.

    Raises:
        ValueError: ``path`` holds a cache of a re-ranker with another fingerprint (another model,
            adapters, shape, length, ...), or something that is not a Matroyshka cache.
    """

    def __init__(self, path: Union[str, Path], reranker: MatroyshkaReRanker, exits: Optional[Sequence[int]] = None):
        from pyterrier_caching import ScorerCache

        self.path, self.reranker = Path(path), reranker
        self.exits = check_exits(exits, reranker.shape.exits)
        claim_folder(self.path, reranker)
        self.store = ScorerCache(self.path / "scores", _ExitScores(reranker), value=EXIT_SCORES, pickle=True)

    def with_exits(self, exits: Union[int, Sequence[int]]) -> "MatroyshkaCache":
        """The same cache read at ``exits`` (some of the pass's exits), sharing its store."""
        view = object.__new__(MatroyshkaCache)
        view.__dict__.update(self.__dict__)
        view.exits = check_exits([exits] if isinstance(exits, int) else exits, self.reranker.shape.exits)
        return view

    @property
    def schematic(self) -> dict:
        return {"label": f"Cached L{','.join(map(str, self.exits))}"[:20], "help_url": None}

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.result_frame(inp, extra_columns=["query", self.reranker.text_field])
        pass_exits = list(self.reranker.shape.exits)
        if len(inp):
            inp = self.store(inp.reset_index(drop=True))
            scores = np.stack([np.asarray(v, dtype=float) for v in inp.pop(EXIT_SCORES)])
        else:
            scores = np.empty((0, len(pass_exits)))
        per_exit = scores[:, [pass_exits.index(d) for d in self.exits]].T
        out = inp.drop(columns=["score", "rank"], errors="ignore").assign(score=per_exit[-1])
        if len(self.exits) > 1:
            for depth, values in zip(self.exits, per_exit):
                out[f"score_L{depth}"] = values
            out["features"] = list(per_exit.T)
        return pt.model.add_ranks(out)

    def transform_inputs(self) -> list[list[str]]:
        return pt.inspect.transformer_inputs(self.reranker)

    def __repr__(self) -> str:
        return f"MatroyshkaCache({str(self.path)!r}, {self.reranker!r}, exits={list(self.exits)})"


class _ExitScores(pt.Transformer):
    """The scorer behind the store: every exit of ``reranker``'s shape as one array per row."""

    def __init__(self, reranker: MatroyshkaReRanker):
        self.reranker = reranker

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        scored = self.reranker(inp)
        exits = self.reranker.shape.exits
        columns = [f"score_L{d}" for d in exits] if len(exits) > 1 else ["score"]
        return scored.assign(**{EXIT_SCORES: list(scored[columns].to_numpy(dtype=float))})

    def transform_inputs(self) -> list[list[str]]:
        return pt.inspect.transformer_inputs(self.reranker)


def check_exits(exits: Optional[Sequence[int]], available: Sequence[int]) -> tuple[int, ...]:
    if exits is None:
        return tuple(available)
    chosen = tuple(sorted({int(e) for e in exits}))
    missing = [e for e in chosen if e not in available]
    if not chosen or missing:
        raise UserError(f"exit(s) {missing or list(exits)} are not among the cached pass's exits {list(available)}; "
                         "cache a pass with every exit you need (e.g. reranker.with_shape('L10,20,30'))")
    return chosen


def claim_folder(path: Path, reranker: MatroyshkaReRanker) -> None:
    """Tie ``path`` to ``reranker``'s fingerprint, or check that it already is."""
    wanted = reranker_fingerprint(reranker)
    note = path / FINGERPRINT_FILE
    if note.is_file():
        held = json.loads(note.read_text())["fingerprint"]
        if held != json.loads(json.dumps(wanted)):
            changed = "; ".join(f"{k}: {held.get(k)!r} there, {wanted.get(k)!r} here"
                                for k in sorted(set(held) | set(wanted)) if held.get(k) != wanted.get(k))
            raise UserError(f"the cache at {path} holds the scores of another re-ranker ({changed}); give each "
                             "model, shape and length a folder of its own, e.g. cache_folder(root, reranker)")
        return
    if path.exists() and any(path.iterdir()):
        raise UserError(f"{path} is not empty and is not a Matroyshka cache (no {FINGERPRINT_FILE}); "
                         "pick a new folder")
    path.mkdir(parents=True, exist_ok=True)
    note.write_text(json.dumps({"model": reranker.scorer.name, "fingerprint": wanted}, indent=2))
