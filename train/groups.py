"""Hard-negative training groups from an ``ir_datasets`` collection and a PyTerrier first stage (spec 10).

For each query with a judged-relevant document: all its positives, and ``num_negatives`` hard negatives drawn
from a rank window of the retrieved list (default ranks 10..99, counted from 0), never a judged-relevant
document; when the window is short, random corpus documents top the group up. Output: one JSON line per query
in the reference format (``query``, ``pos``, ``neg``) plus ids (``qid``, ``pos_ids``, ``neg_ids``).
Deterministic for a seed: each query's draw depends only on ``(seed, qid)``.

``other_positives`` adds, to each group's negatives, that many documents judged relevant to *other* queries
(and not to this one). Without them a document that was a positive in training is only ever seen winning,
so a small model learns a document prior ("this passage is a good answer") instead of query-passage
relevance: the shipped SciFact model puts twice BM25's share of training positives among its
non-relevant top-10 documents on test (MODEL_CARD.md).
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from pyterrier_matroyshka.errors import UserError, check_int, numbered_lines

from .mix import SOURCES, source_of

log = logging.getLogger(__name__)


@dataclass
class GroupsSummary:
    """Counts of one mining run."""

    dataset: str
    queries: int = 0  #: queries in the collection
    used: int = 0  #: groups written
    skipped_no_positive: int = 0  #: queries without a judged-relevant document
    topped_up: int = 0  #: groups that needed random documents
    positives: int = 0
    negatives: int = 0
    random_negatives: int = 0
    other_positive_negatives: int = 0  #: negatives that are positives of other queries


def load_dataset(dataset: str):
    """The ``ir_datasets`` dataset, seeded from the offline collections when the project knows it (the training
    mix is built and registered first: :mod:`train.mix`)."""
    from .mix import MIX_ID, register_training_mix

    if dataset.removeprefix("irds:") == MIX_ID:
        register_training_mix()
    try:
        from pyterrier_matroyshka.offline.collections import ensure_dataset
    except ImportError:  # pragma: no cover - older checkouts
        import ir_datasets

        return ir_datasets.load(dataset.removeprefix("irds:"))
    return ensure_dataset(dataset)


def topics_frame(ds) -> pd.DataFrame:
    """``qid``, ``query`` from the dataset's queries (whitespace normalised)."""
    field = "text" if "text" in ds.queries_cls()._fields else ds.queries_cls()._fields[1]
    rows = [(q.query_id, " ".join(str(getattr(q, field)).split())) for q in ds.queries_iter()]
    return pd.DataFrame(rows, columns=["qid", "query"])


def relevant_docs(ds, min_relevance: int = 1) -> dict[str, set[str]]:
    """``{qid: {docno judged >= min_relevance}}``."""
    judged: dict[str, set[str]] = {}
    for qrel in ds.qrels_iter():
        if qrel.relevance >= min_relevance:
            judged.setdefault(qrel.query_id, set()).add(qrel.doc_id)
    return judged


def ranked_docnos(run: pd.DataFrame) -> dict[str, list[str]]:
    """``{qid: [docno by rank]}`` from a result frame (``rank`` if present, else by descending score)."""
    key = ["qid", "rank"] if "rank" in run.columns else ["qid", "score"]
    ascending = [True, True] if "rank" in run.columns else [True, False]
    run = run.sort_values(key, ascending=ascending, kind="stable")
    return {str(qid): list(frame["docno"].astype(str)) for qid, frame in run.groupby("qid", sort=False)}


def pick_negatives(ranked: Sequence[str], relevant: set[str], num: int, window: tuple[int, int],
                   rng: random.Random, corpus_ids: "CorpusIds") -> tuple[list[str], int]:
    """``num`` distinct negatives from ``ranked[window[0]:window[1]]`` without judged-relevant ones, topped
    up with random corpus documents; returns ``(docnos, how many are random)``."""
    pool = [d for d in dict.fromkeys(ranked[window[0]:window[1]]) if d not in relevant]
    chosen = rng.sample(pool, min(num, len(pool)))
    extra = 0
    while len(chosen) < num:
        candidate = corpus_ids.random(rng)
        if candidate is None:
            break
        if candidate not in relevant and candidate not in chosen:
            chosen.append(candidate)
            extra += 1
    return chosen, extra


def pick_other_positives(all_positives: Sequence[str], taken: set[str], num: int, rng: random.Random) -> list[str]:
    """``num`` distinct documents of ``all_positives`` (every query's positives, sorted) not in ``taken``
    (this query's positives and negatives so far): positives of other queries only."""
    pool = [d for d in all_positives if d not in taken]
    return rng.sample(pool, min(num, len(pool)))


class CorpusIds:
    """All document ids of a corpus, read on first use (only topped-up groups need them)."""

    def __init__(self, ds):
        self.ds = ds
        self._ids: Optional[list[str]] = None

    def random(self, rng: random.Random) -> Optional[str]:
        if self._ids is None:
            self._ids = sorted(d.doc_id for d in self.ds.docs_iter())
        return rng.choice(self._ids) if self._ids else None


def doc_texts(dataset: str, ds, docnos: Sequence[str], fields: Optional[Sequence[str]] = None) -> dict[str, str]:
    """Texts as the project's BM25 gives them to the re-ranker (title + text where titled), or only
    ``fields`` joined; ``ir_datasets``' docstore fields otherwise."""
    docnos = list(dict.fromkeys(docnos))
    try:
        from pyterrier_matroyshka.offline.bm25 import text_loader
    except ImportError:  # pragma: no cover
        text_loader = None
    if text_loader is not None:
        frame = text_loader(dataset, fields)(pd.DataFrame({"qid": "0", "docno": docnos}))
        return dict(zip(frame["docno"].astype(str), frame["text"].fillna("").astype(str)))
    fields = [f for f in (fields or ("title", "text")) if f in ds.docs_cls()._fields]
    store = ds.docs_store()
    return {d: " ".join(str(getattr(doc, f) or "") for f in fields).strip() for d, doc in store.get_many(docnos).items()}


def assemble_groups(picks: Sequence[tuple], texts: dict[str, str], summary: GroupsSummary) -> list[dict]:
    """Groups in the reference format from ``(qid, query, pos_ids, neg_ids, random negatives)`` picks and
    the documents' ``texts``: documents without text are dropped, and a group left without a positive is
    skipped; ``summary`` counts what was written."""
    groups = []
    for qid, query, pos_ids, neg_ids, extra in picks:
        pos_ids = [d for d in pos_ids if texts.get(d)]
        neg_ids = [d for d in neg_ids if texts.get(d)]
        if not pos_ids:
            summary.skipped_no_positive += 1
            continue
        groups.append(dict(qid=str(qid), query=query, pos=[texts[d] for d in pos_ids], neg=[texts[d] for d in neg_ids],
                           pos_ids=pos_ids, neg_ids=neg_ids))
        summary.used += 1
        summary.topped_up += extra > 0
        summary.positives += len(pos_ids)
        summary.negatives += len(neg_ids)
        summary.random_negatives += extra
    return groups


def mine_groups(dataset: str, retriever=None, *, num_negatives: int = 15, window: tuple[int, int] = (10, 100),
                seed: int = 42, min_relevance: int = 1, max_queries: Optional[int] = None,
                other_positives: int = 0, sources: Optional[Sequence[str]] = None,
                per_source: Optional[int] = None) -> tuple[list[dict], GroupsSummary]:
    """Build groups for ``dataset`` (an ``ir_datasets`` id, ``irds:`` allowed).

    Args:
        retriever: any PyTerrier transformer from topics (``qid``, ``query``) to ranked results; default the
            project's PISA BM25 with ``num_results = window[1]``.
        window: ``[start, stop)`` ranks (from 0) the hard negatives come from.
        min_relevance: the smallest qrel label that counts as judged relevant.
        max_queries: keep the first n queries with positives (for quick runs).
        other_positives: per group, this many more negatives drawn from the other groups' positives (see
            the module docstring); the hard negatives stay those of ``other_positives=0`` for the same seed.
    """
    check_int("num_negatives", num_negatives, 0)
    check_int("max_queries", max_queries, 1, optional=True)
    check_int("other_positives", other_positives, 0)
    if not 0 <= window[0] < window[1]:
        raise UserError(f"window must be [start, stop) ranks with 0 <= start < stop, got {window}")
    ds = load_dataset(dataset)
    topics = topics_frame(ds)
    judged = relevant_docs(ds, min_relevance)
    summary = GroupsSummary(dataset=dataset, queries=len(topics))
    keep = topics["qid"].isin(judged)
    summary.skipped_no_positive = int((~keep).sum())
    topics = topics[keep].reset_index(drop=True)
    if sources is not None or per_source is not None:
        topics = select_by_source(topics, sources, per_source, seed, mix=_is_mix(dataset))
    if max_queries is not None:
        topics = topics.head(max_queries)
    if retriever is None:
        from pyterrier_matroyshka.offline.bm25 import bm25

        retriever = bm25(dataset, num_results=window[1])
    ranked = ranked_docnos(retriever(topics)) if len(topics) else {}
    corpus_ids = CorpusIds(ds)
    all_positives = sorted({d for qid in topics["qid"] for d in judged[qid]})
    picks = []
    for qid, query in zip(topics["qid"], topics["query"]):
        rng = random.Random(f"{seed}:{qid}")
        negs, extra = pick_negatives(ranked.get(str(qid), []), judged[qid], num_negatives, window, rng, corpus_ids)
        if other_positives:  # a separate draw, so the hard negatives do not depend on it
            others = pick_other_positives(all_positives, judged[qid] | set(negs), other_positives,
                                          random.Random(f"{seed}:{qid}:other"))
            negs = negs + others
            summary.other_positive_negatives += len(others)
        picks.append((qid, query, sorted(judged[qid]), negs, extra))
    texts = doc_texts(dataset, ds, [d for p in picks for d in p[2] + p[3]])
    groups = assemble_groups(picks, texts, summary)
    for group in groups:
        group["src"] = source_of(group["qid"]) if _is_mix(dataset) else dataset.removeprefix("irds:")
    return groups, summary


def _is_mix(dataset: str) -> bool:
    from .mix import MIX_ID

    return dataset.removeprefix("irds:") == MIX_ID


def select_by_source(topics: pd.DataFrame, sources: Optional[Sequence[str]], per_source: Optional[int],
                     seed: int, mix: bool = True) -> pd.DataFrame:
    """The topics of ``sources`` (default: all), at most ``per_source`` of each drawn with ``seed``, in their
    original order. Outside the training mix (``mix=False``) the whole topic set is one source."""
    if per_source is not None and per_source < 1:
        raise ValueError(f"per_source must be >= 1, got {per_source}")
    if not mix:
        if sources is not None:
            raise ValueError(f"sources={list(sources)} select training-mix queries; this dataset has none")
        found, sources = pd.Series("all", index=topics.index), ["all"]
    else:
        found = topics["qid"].map(source_of)
    wanted = list(sources) if sources is not None else sorted(set(found) - {""})
    unknown = [s for s in wanted if s not in SOURCES] if mix else []
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; the training mix has {sorted(SOURCES)}")
    keep = []
    for name in wanted:
        index = list(topics.index[found == name])
        if per_source is not None and len(index) > per_source:
            index = random.Random(f"{seed}:{name}").sample(index, per_source)
        keep += index
    return topics.loc[sorted(keep)].reset_index(drop=True)


def write_groups(groups: Sequence[dict], summary: GroupsSummary, output: Path) -> Path:
    """Write the JSONL file and ``<output>.summary.json``; logs the summary."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        for group in groups:
            f.write(json.dumps(group, ensure_ascii=False) + "\n")
    Path(f"{output}.summary.json").write_text(json.dumps(asdict(summary), indent=2))
    log.info("groups of %s -> %s: %s", summary.dataset, output, asdict(summary))
    return output


def split_holdout(path: Path, train_out: Path, holdout_out: Path, every: int = 10,
                  by_positives: bool = False) -> tuple[int, int]:
    """Hold out every ``every``-th group of a JSONL file (deterministic, file order) for choices made
    on training data only; returns (train, holdout) counts. The training groups of several sources are written
    in turns (:func:`interleave_sources`), so any first part of the file is a balanced sample.

    ``by_positives`` holds out whole clusters of queries that share a positive passage instead (every
    ``every``-th cluster, in order of first appearance), and drops held-out positives from the training
    groups' negatives, so no held-out positive is ever seen in training. Otherwise a model that memorised
    which passages won in training looks better on the holdout than on unseen queries (on SciFact, 61 of 80
    held-out queries shared a positive with training).
    """
    check_int("every", every, 2)
    numbered = [(n, line.rstrip("\r\n")) for n, line in numbered_lines(path) if line.strip()]
    if not numbered:
        raise UserError(f"no groups in {path}: nothing to split")
    lines = [line for _, line in numbered]
    records = [_record_with_positives(line, f"{path}:{n}") for n, line in numbered]  # file:line errors
    if by_positives:
        units = positive_clusters([r["pos"] for r in records])
    else:
        units = list(range(len(lines)))
    order = {unit: i for i, unit in enumerate(dict.fromkeys(units))}
    held = [order[unit] % every == every - 1 for unit in units]
    holdout = [line for line, h in zip(lines, held) if h]
    train = [line for line, h in zip(lines, held) if not h]
    if by_positives:
        held_out_positives = {p for r, h in zip(records, held) if h for p in r["pos"]}
        train = without_negatives([r for r, h in zip(records, held) if not h], train, held_out_positives)
    train = interleave_sources(train)
    for out, part in ((train_out, train), (holdout_out, holdout)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("".join(line + "\n" for line in part))
    return len(train), len(holdout)


def _record_with_positives(line: str, where: str) -> dict:
    """One JSON group with a list of positives; errors name ``where`` (``file:line``)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get("pos"), list):
        raise UserError(f"{where}: expected a group (a JSON object with a 'pos' list)")
    return record


def interleave_sources(lines: Sequence[str]) -> list[str]:
    """Groups of several sources (their ``src``) in turns, each source's in file order, so that any first n
    groups hold the sources about equally (a file of one source is unchanged)."""
    from .data import interleave_domains

    sources = [json.loads(line).get("src", "") for line in lines]
    return [lines[i] for i in interleave_domains(range(len(lines)), sources)]


def without_negatives(records: Sequence[dict], lines: Sequence[str], passages: set[str]) -> list[str]:
    """The groups (``records``, parsed from ``lines``) as JSON lines with ``passages`` removed from their
    negatives (and the aligned ids and teacher scores); an untouched group keeps its line as it was. Logs how
    many were removed."""
    out, removed = [], 0
    for record, line in zip(records, lines):
        keep = [i for i, text in enumerate(record["neg"]) if text not in passages]
        if len(keep) < len(record["neg"]):
            removed += len(record["neg"]) - len(keep)
            for key in ("neg", "neg_ids", "neg_scores"):
                if key in record:
                    record[key] = [record[key][i] for i in keep]
            line = json.dumps(record, ensure_ascii=False)
        out.append(line)
    log.info("removed %d held-out positives from the training groups' negatives", removed)
    return out


def positive_clusters(positives: Sequence[Sequence[str]]) -> list[int]:
    """For each group's positives, the index of the first group of its cluster: groups are joined when
    they share a positive (transitively)."""
    parent = list(range(len(positives)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[str, int] = {}
    for i, passages in enumerate(positives):
        for passage in passages:
            j = first_with.setdefault(passage, i)
            a, b = sorted((root(i), root(j)))
            parent[b] = a  # the smaller index stays the root: clusters are named by their first group
    return [root(i) for i in range(len(positives))]
