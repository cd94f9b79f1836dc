"""The PyTerrier face: ``bm25 % 100 >> MatroyshkaReRanker(...)``.

A thin ``pt.Transformer`` over a :class:`MatroyshkaScorer`; ``with_shape`` gives the same loaded
weights at another shape, so one ``pt.Experiment`` can compare many shapes.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd
import pyterrier as pt

from .errors import UserError, check_int, text_problem
from .scorer import MatroyshkaScorer
from .shape import Shape, ShapeLike

if TYPE_CHECKING:
    from .cascade import MatroyshkaCascade


class MatroyshkaReRanker(pt.Transformer):
    """Re-rank a candidate frame (qid, query, docno, ``text_field``) with a Matroyshka model.

    Writes ``score`` (the deepest requested exit) and ``rank``; with several exits also one
    ``score_L<depth>`` column per exit and a ``features`` array (ascending depth) for
    learning-to-rank or fusion. Every input row and column is kept, in the input order.

    Args:
        model: a folder or hub id (loaded with ``scorer_kwargs``), or pass ``scorer``.
        scorer: an already loaded :class:`MatroyshkaScorer` (shared, never reloaded).
        shape: the shape to score at (default: the scorer's).
        batch_size, normalize, verbose: as in :meth:`MatroyshkaScorer.compute_score`; ``verbose`` shows a
            progress bar with an ETA through ``pt.tqdm`` (so ``pt.set_tqdm`` chooses its kind).
        text_field: the column holding the passage text.
    """

    def __init__(self, model: Optional[str] = None, *, scorer: Optional[MatroyshkaScorer] = None,
                 shape: Optional[ShapeLike] = None, batch_size: Optional[int] = None, text_field: str = "text",
                 verbose: bool = False, normalize: bool = False, **scorer_kwargs):
        check_int("batch_size", batch_size, 1, optional=True)
        if scorer is None:
            if model is None:
                raise UserError("give a model (folder or hub id) or a loaded scorer=")
            scorer = MatroyshkaScorer(model, **scorer_kwargs)
        elif model is not None or scorer_kwargs:
            raise UserError("give either a model to load (with its options) or a loaded scorer=, not both")
        self.scorer = scorer
        self.shape = Shape.coerce(shape).validate(scorer.exits) if shape is not None else scorer.shape
        self.batch_size, self.text_field = batch_size, text_field
        self.verbose, self.normalize = verbose, normalize

    @classmethod
    def from_pretrained(cls, variant: Optional[str] = None, *, shape: Optional[ShapeLike] = None,
                        batch_size: Optional[int] = None, text_field: str = "text", verbose: bool = False,
                        normalize: bool = False, **scorer_kwargs) -> "MatroyshkaReRanker":
        """A named pretrained variant (default: the package's default model) at ``shape``; ``scorer_kwargs``
        override the variant's settings (e.g. ``dtype="fp32"``). See :mod:`pyterrier_matroyshka.pretrained`."""
        return cls(scorer=MatroyshkaScorer.from_pretrained(variant, **scorer_kwargs), shape=shape,
                   batch_size=batch_size, text_field=text_field, verbose=verbose, normalize=normalize)

    @property
    def schematic(self) -> dict:
        label = f"Matroyshka {self.shape}"
        return {"label": label if len(label) <= 20 else "Matroyshka", "help_url": None}

    def attributes(self) -> list[pt.inspect.TransformerAttribute]:
        """What ``pt.inspect.transformer_attributes`` reports, and ``transformer_apply_attributes`` rebuilds
        from: the loaded ``scorer`` and every per-call setting. The load-time options (``model`` and the
        scorer's keyword arguments) are not attributes: the scorer holds what they loaded."""
        parameters = inspect.signature(MatroyshkaReRanker.__init__).parameters.values()
        return [pt.inspect.TransformerAttribute(p.name, getattr(self, p.name), p.default, p.KEYWORD_ONLY)
                for p in parameters if p.kind == p.KEYWORD_ONLY]

    def with_shape(self, shape: ShapeLike) -> "MatroyshkaReRanker":
        """The same re-ranker (same loaded weights) at another shape."""
        return MatroyshkaReRanker(scorer=self.scorer, shape=shape, batch_size=self.batch_size,
                                  text_field=self.text_field, verbose=self.verbose, normalize=self.normalize)

    def cascade(self, stages, adapters="auto") -> "MatroyshkaCascade":
        """Progressive deepening with these weights, e.g. ``cascade([("L10", 50), ("L20", 15), "L30"])``:
        all candidates at exit 10, the best 50 continue to 20, the best 15 to 30 (see
        :class:`~pyterrier_matroyshka.cascade.MatroyshkaCascade`)."""
        from .cascade import MatroyshkaCascade

        return MatroyshkaCascade(self, stages, adapters=adapters)

    def flops(self, query_len: int = 16, passage_len: int = 96) -> float:
        """Estimated FLOPs per pair at this shape (see :meth:`Shape.flops`)."""
        return self.scorer.flops(self.shape, query_len, passage_len)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        self._validate(inp)
        columns = [f"score_L{d}" for d in self.shape.exits] if len(self.shape.exits) > 1 else []
        if len(inp) == 0:
            out = inp.drop(columns=["score", "rank"], errors="ignore").assign(score=pd.Series(dtype=float))
            for column in columns:
                out[column] = pd.Series(dtype=float)
            if columns:
                out["features"] = pd.Series(dtype=object)
            return pt.model.add_ranks(out)
        self._check_text(inp)
        pairs = list(zip(inp["query"].tolist(), inp[self.text_field].tolist()))
        scores = self.scorer.compute_score(pairs, shape=self.shape, batch_size=self.batch_size,
                                           normalize=self.normalize, verbose=self.verbose, progress=pt.tqdm)
        per_exit = np.asarray(scores if columns else [scores], dtype=float)
        out = inp.drop(columns=["score", "rank"], errors="ignore").assign(score=per_exit[-1])
        for column, values in zip(columns, per_exit):
            out[column] = values
        if columns:
            out["features"] = list(per_exit.T)
        return pt.model.add_ranks(out)

    def _validate(self, inp: pd.DataFrame) -> None:
        extra = ["query", self.text_field]
        try:
            pt.validate.result_frame(inp, extra_columns=extra)
        except pt.validate.InputValidationError as err:
            missing = [c for c in ("qid", "docno", *extra) if c not in inp.columns]
            hint = {"query": "keep the topics' query column (e.g. pipe the retriever's output unchanged)",
                    self.text_field: f"add pt.text.get_text(dataset, '{self.text_field}') before the re-ranker"}
            fixes = "; ".join(hint.get(c, f"add a {c!r} column") for c in missing)
            raise pt.validate.InputValidationError(f"MatroyshkaReRanker input lacks column(s) {missing}: {fixes}.",
                                                   err.modes) from err

    def _check_text(self, inp: pd.DataFrame) -> None:
        """Every row has a qid and docno, and text a tokenizer can read; errors name the first bad row."""
        for column in ("qid", "docno"):
            missing = inp[column].isna()
            if missing.any():
                row = int(missing.to_numpy().nonzero()[0][0])
                raise UserError(f"column {column!r} is missing (None/NaN) in row {row} and {int(missing.sum()) - 1} "
                                f"other row(s); every candidate needs a qid and a docno")
        for column in ("query", self.text_field):
            problems = inp[column].map(text_problem)
            bad = problems.notna()
            if bad.any():
                row = inp[bad].iloc[0]
                where = f"qid {row['qid']!r}, docno {row['docno']!r}"
                raise UserError(f"column {column!r} at {where} {problems[bad].iloc[0]}; {int(bad.sum()) - 1} other "
                                f"row(s) too. Fill, clean or drop those rows first "
                                f"(e.g. pt.text.get_text(dataset, '{self.text_field}') for missing texts)")

    def __repr__(self) -> str:
        return f"MatroyshkaReRanker({self.shape})"
