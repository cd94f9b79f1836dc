"""Training groups made from a collection's own documents: each title is a query, its body the positive.

A re-ranker trained on a few hundred judged queries learns which passages won in training (a document prior,
MODEL_CARD.md) and is weak on queries about passages it never saw winning. Titled collections carry free
supervision over *every* document: a paper's title states what its abstract is about, much as a SciFact claim
does. No relevance label is used, so the groups may cover the test collection's documents too.

Every passage of a title group is a document *body* (the title left out): with the title inside the positive
the task is string matching, and with titles only in the negatives the model would learn that a missing title
means relevant. Hard negatives come from the first stage's ranking of the title, as in :mod:`train.groups`.
Tried as one more stage-1 run on the shipped stage 1 (``experiments/results/title_groups_holdout.md``):

    python experiments/title_groups.py --dataset beir/scifact/train --num_docs 800 --output runs/scifact/titles.jsonl
    python -m train teacher --input runs/scifact/titles.jsonl --output runs/scifact/titles.teacher.jsonl
    python -m train stage1 ... --train_data runs/scifact/train.jsonl,runs/scifact/titles.teacher.jsonl
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train.groups import (CorpusIds, GroupsSummary, assemble_groups, doc_texts, load_dataset,  # noqa: E402
                          pick_negatives, ranked_docnos, write_groups)

MIN_TITLE_WORDS = 4  #: shorter titles ("Introduction", "Editorial") say too little to be a query


def titled_documents(ds, min_words: int = MIN_TITLE_WORDS) -> list[tuple[str, str]]:
    """``(doc_id, title)`` of every document with a title of at least ``min_words`` words and a body,
    sorted by id (whitespace normalised)."""
    fields = ds.docs_cls()._fields
    if "title" not in fields or "text" not in fields:
        raise ValueError(f"title groups need documents with 'title' and 'text' fields; this collection has {fields}")
    out = []
    for doc in ds.docs_iter():
        title = " ".join(str(doc.title or "").split())
        if len(title.split()) >= min_words and str(doc.text or "").strip():
            out.append((doc.doc_id, title))
    return sorted(out)


def mine_title_groups(dataset: str, num_docs: int, retriever=None, *, num_negatives: int = 15,
                      window: tuple[int, int] = (10, 100), seed: int = 42) -> tuple[list[dict], GroupsSummary]:
    """Groups for ``num_docs`` documents of ``dataset`` drawn at random (seeded): query = title, positive = the
    document's body, negatives = bodies of documents the first stage ranks in ``window`` for the title.

    Args:
        retriever: PyTerrier transformer from topics to ranked results; default the project's PISA BM25.
    Returns the groups in the format of :func:`train.groups.mine_groups` (``qid`` is ``title:<doc_id>``) and
    the counts.
    """
    if num_docs < 1:
        raise ValueError(f"num_docs must be at least 1, got {num_docs}")
    ds = load_dataset(dataset)
    titled = titled_documents(ds)
    if not titled:
        raise ValueError(f"no document of {dataset} has a title of {MIN_TITLE_WORDS}+ words and a body")
    chosen = random.Random(f"{seed}:titles").sample(titled, min(num_docs, len(titled)))
    topics = pd.DataFrame({"qid": [f"title:{d}" for d, _ in chosen], "query": [t for _, t in chosen]})
    if retriever is None:
        from pyterrier_matroyshka.offline.bm25 import bm25

        retriever = bm25(dataset, num_results=window[1])
    ranked = ranked_docnos(retriever(topics))
    summary = GroupsSummary(dataset=f"{dataset} (titles)", queries=len(titled))
    corpus_ids = CorpusIds(ds)
    picks = []
    for (doc_id, title), qid in zip(chosen, topics["qid"]):
        rng = random.Random(f"{seed}:{qid}")
        negs, extra = pick_negatives(ranked.get(qid, []), {doc_id}, num_negatives, window, rng, corpus_ids)
        picks.append((qid, title, [doc_id], negs, extra))
    bodies = doc_texts(dataset, ds, [d for p in picks for d in p[2] + p[3]], fields=("text",))
    return assemble_groups(picks, bodies, summary), summary


def main() -> None:
    parser = argparse.ArgumentParser(description="training groups from a collection's titles (no labels used)")
    parser.add_argument("--dataset", required=True, help="ir_datasets id of a titled collection")
    parser.add_argument("--num_docs", type=int, required=True, help="documents drawn at random; their titles are queries")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--num_negatives", type=int, default=15)
    parser.add_argument("--window", default="10,100", help="rank window [start,stop) of the negatives, from 0")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    start, stop = (int(x) for x in args.window.split(","))
    groups, summary = mine_title_groups(args.dataset, args.num_docs, num_negatives=args.num_negatives,
                                        window=(start, stop), seed=args.seed)
    write_groups(groups, summary, args.output)


if __name__ == "__main__":
    main()
