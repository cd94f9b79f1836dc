"""Offline BM25 first stage: PISA indexes of the ``ir_datasets`` corpora, with document text attached.

Terrier's BM25 (``pt.terrier.Retriever(index, wmodel='BM25')``) is the usual online alternative, but it needs
jars from Maven Central that cannot be fetched here; ``pyterrier-pisa`` ships PISA inside its wheel.

Indexed text per collection (see :data:`DOC_FIELDS`): ``title`` + ``text`` where the title is a separate
field (BEIR SciFact), ``text`` alone otherwise (Cranfield's ``text`` already starts with its title, Vaswani and
the DL19 passages have no title). The re-ranker gets the same fields joined by a space in one ``text`` column,
as BEIR's re-ranking code does (``title + " " + text``).

Queries go to PISA as they are: its tokenizer drops punctuation, lowercases and stems, so topics of all these
collections run without a rewriting step, and the output keeps the original ``query`` column (no
``query_0``) for the re-ranker. A query made only of stopwords gets no results.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Sequence

import pandas as pd
import pyterrier as pt

from ..errors import UserError, check_int
from .collections import DL19_ID, ensure_dataset, pt_dataset
from .paths import cache_dir

__all__ = ["DOC_FIELDS", "pisa_index", "text_loader", "bm25", "dl19_bm25_run"]

# docs parent id -> fields indexed and given to the re-ranker (default: title + text if the docs have a
# title, else text)
DOC_FIELDS: dict[str, tuple[str, ...]] = {
    "cranfield": ("text",),  # text repeats the title (1398 of 1400 docs)
    "vaswani": ("text",),
    "beir/scifact": ("title", "text"),
    DL19_ID: ("text",),
}


def _corpus(dataset: str) -> tuple[str, tuple[str, ...]]:
    """The id of ``dataset``'s corpus (shared by its subsets) and its default text fields."""
    import ir_datasets

    dataset = dataset.removeprefix("irds:")
    ds = ensure_dataset(dataset)
    parent = ir_datasets.docs_parent_id(dataset)
    fields = DOC_FIELDS.get(parent) or tuple(f for f in ("title", "text") if f in ds.docs_cls()._fields)
    return parent, fields


@contextlib.contextmanager
def _quiet(quiet: bool = True):
    """Silence file descriptors 1 and 2: PISA's C++ code prints logs and progress bars there (its
    ``log_level`` switch is broken in pyterrier-pisa 0.4.9)."""
    if not quiet:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def _pisa_index_class():
    """``pyterrier_pisa.PisaIndex``, imported on first use: the re-ranker itself does not need PISA."""
    try:
        from pyterrier_pisa import PisaIndex
    except ImportError as err:
        raise ImportError("BM25 here runs on PISA, which is not installed: pip install "
                          "'pyterrier-matroyshka[bm25]' (or give the re-ranker candidates from another first "
                          "stage)") from err
    return PisaIndex


def pisa_index(dataset: str, text_fields: Sequence[str] | None = None, stemmer: str = "porter2",
               verbose: bool = False):
    """The PISA index of ``dataset``'s corpus, built once into ``cache_dir('pisa', ...)`` and reused.

    Args:
        dataset: an ``ir_datasets`` id (``irds:`` prefix allowed); subsets share their corpus' index.
        text_fields: document fields to index (joined by a space); default :data:`DOC_FIELDS`.
        stemmer: a PISA stemmer (``porter2``, ``krovetz``, ``none``).
        verbose: show PISA's build logs.

    Returns:
        a built ``pyterrier_pisa.PisaIndex``. An index counts as complete when its ``pt_meta.json`` (written
        last by pyterrier-pisa) exists; it is built in a temporary folder and moved into place, so an
        interrupted build is never mistaken for a complete one.
    """
    PisaIndex = _pisa_index_class()
    parent, default_fields = _corpus(dataset)
    fields = tuple(text_fields or default_fields)
    name = f"{re.sub(r'[^A-Za-z0-9.-]+', '_', parent)}.{'+'.join(fields)}.{stemmer}"
    path = cache_dir("pisa") / name
    if not PisaIndex(str(path)).built():
        tmp = path.with_name(f"{name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        docs = (dict(docno=d.doc_id, **{f: getattr(d, f) or "" for f in fields})
                for d in ensure_dataset(parent).docs_iter())
        with _quiet(not verbose):
            PisaIndex(str(tmp), text_field=list(fields), stemmer=stemmer).index(docs)
        shutil.rmtree(path, ignore_errors=True)  # an incomplete earlier build
        try:
            tmp.rename(path)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return PisaIndex(str(path), text_field=list(fields), stemmer=stemmer)


def text_loader(dataset: str, text_fields: Sequence[str] | None = None, text_field: str = "text") -> pt.Transformer:
    """A transformer adding ``dataset``'s document text (``text_fields`` joined by a space, default
    :data:`DOC_FIELDS`) as column ``text_field`` by ``docno``; other field columns are not kept."""
    dataset = dataset.removeprefix("irds:")
    fields = list(text_fields or _corpus(dataset)[1])
    loader = pt.text.get_text(pt_dataset(dataset), fields)

    def add_text(df: pd.DataFrame) -> pd.DataFrame:
        try:
            df = loader(df)
        except KeyError:
            _refuse_missing_docnos(dataset, df)
            raise
        # column by column: DataFrame.agg(" ".join, axis=1) returns a frame, not a Series, for an empty frame
        parts = df[fields].fillna("").astype(str)
        text = parts[fields[0]]
        for field in fields[1:]:
            text = text + " " + parts[field]
        text = text.str.strip()
        return df.drop(columns=fields).assign(**{text_field: text})

    return pt.apply.generic(add_text)


def _refuse_missing_docnos(dataset: str, df: pd.DataFrame) -> None:
    """A clear error naming the docnos of ``df`` that ``dataset``'s corpus lacks (and their queries), if any."""
    docnos = list(dict.fromkeys(df["docno"].astype(str)))
    found = ensure_dataset(dataset).docs_store().get_many(docnos)
    missing = [d for d in docnos if d not in found]
    if missing:
        qids = list(dict.fromkeys(df.loc[df["docno"].astype(str).isin(missing), "qid"].astype(str)))
        raise UserError(f"{len(missing)} docno(s) are not in the corpus of {dataset}: {missing[:5]} (qids {qids[:5]}); "
                        "give a run of this dataset's documents, or drop those rows")


def bm25(dataset: str, num_results: int = 100, k1: float = 0.9, b: float = 0.4, text_field: str = "text",
         text_fields: Sequence[str] | None = None, verbose: bool = False, with_text: bool = True) -> pt.Transformer:
    """PISA BM25 over ``dataset``'s corpus, then its document text.

    Input: a topics frame (``qid``, ``query``). Output: ``qid``, ``query`` (unchanged), ``docno``, ``score``,
    ``rank`` (from 0) and ``text_field`` with the text of :func:`text_loader`, at most ``num_results`` a query.
    ``k1=0.9, b=0.4`` are Anserini's defaults. ``with_text=False`` leaves the text out (scores only: cheaper
    when every matching document is retrieved).
    """
    check_int("num_results", num_results, 1)
    index = pisa_index(dataset, text_fields, verbose=verbose)
    with _quiet(not verbose):  # the retriever builds its BM25 block-max data on first use
        retriever = index.bm25(k1=k1, b=b, num_results=num_results)
    return retriever >> text_loader(dataset, text_fields, text_field) if with_text else retriever


def dl19_bm25_run(text_field: str = "text") -> pd.DataFrame:
    """The official Anserini BM25 top-100 of TREC DL 2019 (``bm25_top100.run``; nDCG@10 0.5058), the standard
    candidate set: ``qid``, ``query``, ``docno``, ``score``, ``rank`` (from 0) and the passage text."""
    import warnings

    run = pt_dataset(DL19_ID).get_results()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warnings from pt.model.add_ranks
        run = pt.model.add_ranks(run)
    run = text_loader(DL19_ID, ("text",), text_field)(run)
    return run[["qid", "query", "docno", "score", "rank", text_field]]
