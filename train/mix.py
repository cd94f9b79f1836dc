"""The diverse training mix as a local ``ir_datasets`` collection, so ``train groups`` mines it like any other.

The mix (``training-mix/`` in the shared data folder, see its README) is a set of query files, each query with
the text of a relevant passage, plus a pool of Wikipedia paragraphs. :func:`register_training_mix` turns it into
``local/training-mix``: documents are the pool plus every positive passage (a positive found again in the pool,
or shared by several queries, is one document), queries are every query of every source, and each query's
positive is its one judged-relevant document. BM25 over that corpus then gives each query hard negatives from
the pool and from the other queries' positives.

Query ids keep their source's prefix, and :data:`SOURCES` names each file, so a query's source is known from its
id (:func:`source_of`) and groups can be selected and balanced by source.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger(__name__)

MIX_ID = "local/training-mix"

#: source name -> (query file, qid prefix). MS MARCO passages are for non-commercial research use only.
SOURCES: dict[str, tuple[str, str]] = {
    "msmarco": ("msmarco_devsmall_pos.jsonl.gz", "msm"),
    "nq": ("qed_nq.jsonl.gz", "nq"),
    "squad": ("squad11_dev.jsonl.gz", "sq-"),
    "ares": ("ares_synth.jsonl.gz", "ares-"),
    "medquad": ("medquad.jsonl.gz", "mq"),
    "autoq": ("wiki_autoq_synth.jsonl.gz", "wq"),
}
POOL_FILE = "wiki_passages.jsonl.gz"
_FORMAT_VERSION = "1"  # bump when the files written below change


def mix_dir() -> Path:
    """The shared ``training-mix`` folder (``$MATROYSHKA_TRAINING_MIX`` overrides)."""
    from pyterrier_matroyshka.offline.paths import shared_data_dir

    override = os.environ.get("MATROYSHKA_TRAINING_MIX")
    folder = Path(override) if override else (shared_data_dir() or Path("../shared/data")) / "training-mix"
    if not (folder / POOL_FILE).is_file():
        raise FileNotFoundError(f"training mix not found at {folder} (no {POOL_FILE}); set MATROYSHKA_TRAINING_MIX "
                                "to the folder holding the mix's .jsonl.gz files")
    return folder


def source_of(qid: str) -> str:
    """The mix source of a query id (``msm12`` -> ``msmarco``), or ``""`` for an id from elsewhere."""
    for name, (_, prefix) in SOURCES.items():
        if qid.startswith(prefix):
            return name
    return ""


def _read_jsonl_gz(path: Path) -> Iterator[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: malformed JSON ({err.msg})") from None


def _clean(text: str) -> str:
    """One line of text (the TSV files cannot hold tabs or newlines)."""
    return " ".join(str(text).split())


def _docno_of(text: str) -> str:
    return "p" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def build_files(folder: Path, source: Optional[Path] = None) -> Path:
    """Write ``docs.tsv``, ``queries.tsv`` and ``qrels.txt`` of the mix into ``folder`` (skipped when done)."""
    source = source or mix_dir()
    done = folder / "complete"
    if done.is_file() and done.read_text() == _FORMAT_VERSION:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    by_text: dict[str, str] = {}  # cleaned text -> docno: a positive that is also a pool paragraph is one document
    with open(folder / "docs.tsv.tmp", "w", encoding="utf-8") as docs:
        for record in _read_jsonl_gz(source / POOL_FILE):
            text = _clean(record["text"])
            if text and text not in by_text:
                by_text[text] = record["pid"]
                docs.write(f"{record['pid']}\t{text}\n")
        with open(folder / "queries.tsv.tmp", "w", encoding="utf-8") as queries, \
                open(folder / "qrels.txt.tmp", "w", encoding="utf-8") as qrels:
            for name, (file, _) in SOURCES.items():
                for record in _read_jsonl_gz(source / file):
                    query = _clean(record["query"])
                    positives = list(record.get("pos_pid") or [])
                    for text in map(_clean, record.get("pos") or []):
                        if text and text not in by_text:
                            by_text[text] = _docno_of(text)
                            docs.write(f"{by_text[text]}\t{text}\n")
                        if text:
                            positives.append(by_text[text])
                    if not query or not positives:
                        continue
                    queries.write(f"{record['qid']}\t{query}\n")
                    for docno in dict.fromkeys(positives):
                        qrels.write(f"{record['qid']} 0 {docno} 1\n")
    for name in ("docs.tsv", "queries.tsv", "qrels.txt"):
        os.replace(folder / f"{name}.tmp", folder / name)
    done.write_text(_FORMAT_VERSION)
    log.info("training mix: %d documents in %s", len(by_text), folder)
    return folder


_registered: Optional[Path] = None


def register_training_mix(folder: Optional[Path] = None) -> str:
    """Build the mix's files (once, in the cache) and register them as :data:`MIX_ID`; returns the id."""
    global _registered
    import ir_datasets
    from ir_datasets.formats import TrecQrels, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    from pyterrier_matroyshka.offline.paths import cache_dir

    folder = build_files(folder or cache_dir("training-mix"))
    if _registered == folder:
        return MIX_ID
    registry = ir_datasets.registry._registered  # no public way to replace an entry
    registry.pop(MIX_ID, None)
    dataset = ir_datasets.Dataset(
        TsvDocs(LocalDownload(folder / "docs.tsv"), namespace=MIX_ID, lang="en"),
        TsvQueries(LocalDownload(folder / "queries.tsv"), namespace=MIX_ID, lang="en"),
        TrecQrels(LocalDownload(folder / "qrels.txt"), {1: "relevant"}),
    )
    ir_datasets.registry.register(MIX_ID, dataset)
    _registered = folder
    return MIX_ID
