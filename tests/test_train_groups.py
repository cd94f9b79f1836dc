"""Hard-negative groups on Cranfield (offline copy in ../shared/data) and teacher scores on them."""
from __future__ import annotations

import json
import random

import pandas as pd
import pyterrier as pt
import pytest

from pyterrier_matroyshka.paths import shared_data_dir
from train.data import read_groups
from train.groups import CorpusIds, mine_groups, pick_negatives, relevant_docs, write_groups
from train.teacher import add_teacher_scores, score_function

needs_data = pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data (Cranfield) is absent")


@pytest.fixture(scope="module")
def cranfield(tmp_path_factory):
    """Groups of the first 40 Cranfield queries with positives, written twice with the same seed."""
    out = tmp_path_factory.mktemp("groups")
    groups, summary = mine_groups("cranfield", num_negatives=7, window=(10, 100), seed=3, max_queries=40)
    first = write_groups(groups, summary, out / "a.jsonl")
    again, summary_again = mine_groups("cranfield", num_negatives=7, window=(10, 100), seed=3, max_queries=40)
    second = write_groups(again, summary_again, out / "b.jsonl")
    return first, second, summary


@needs_data
def test_positives_relevant_negatives_not(cranfield):
    from pyterrier_matroyshka.collections import ensure_dataset

    judged = relevant_docs(ensure_dataset("cranfield"))
    records = [json.loads(line) for line in cranfield[0].read_text().splitlines()]
    assert len(records) == 40
    for r in records:
        assert r["pos_ids"] and set(r["pos_ids"]) <= judged[r["qid"]]
        assert not set(r["neg_ids"]) & judged[r["qid"]]
        assert len(r["neg_ids"]) == len(set(r["neg_ids"])) == 7
        assert len(r["pos"]) == len(r["pos_ids"]) and len(r["neg"]) == len(r["neg_ids"])
        assert all(isinstance(t, str) and t for t in r["pos"] + r["neg"])


@needs_data
def test_same_seed_same_file_and_counts_match_summary(cranfield):
    first, second, summary = cranfield
    assert first.read_bytes() == second.read_bytes()
    records = [json.loads(line) for line in first.read_text().splitlines()]
    saved = json.loads((first.parent / "a.jsonl.summary.json").read_text())
    assert saved["used"] == summary.used == len(records)
    assert saved["positives"] == sum(len(r["pos"]) for r in records)
    assert saved["negatives"] == sum(len(r["neg"]) for r in records)
    assert saved["queries"] == 225 and saved["skipped_no_positive"] >= 0
    read_groups(first)  # the training reader accepts the file


def test_negatives_window_exclusion_and_top_up():
    class Corpus(CorpusIds):
        def __init__(self):
            self._ids = [f"r{i}" for i in range(50)]

    ranked = [f"d{i}" for i in range(20)]
    rng = random.Random(0)
    negs, extra = pick_negatives(ranked, {"d12", "r1"}, 5, (10, 20), rng, Corpus())
    assert extra == 0 and set(negs) <= {f"d{i}" for i in range(10, 20)} - {"d12"}
    negs, extra = pick_negatives(ranked, {"d12"}, 12, (10, 20), random.Random(0), Corpus())
    assert extra == 3 and len(set(negs)) == 12 and "d12" not in negs
    assert all(n.startswith("r") for n in negs[9:])


def test_any_retriever_and_frame_teacher(tmp_path):
    """A custom PyTerrier retriever and a PyTerrier re-scorer as the teacher."""
    if shared_data_dir() is None:
        pytest.skip("../shared/data (Cranfield) is absent")

    def retrieve(topics: pd.DataFrame) -> pd.DataFrame:  # every query gets the same 30 documents
        rows = [(qid, q, str(d), 30.0 - d, d) for qid, q in zip(topics["qid"], topics["query"]) for d in range(1, 31)]
        return pd.DataFrame(rows, columns=["qid", "query", "docno", "score", "rank"])

    groups, summary = mine_groups("cranfield", pt.apply.generic(retrieve), num_negatives=25, window=(10, 30),
                                  max_queries=3)
    assert summary.topped_up >= 1 and summary.random_negatives >= 5
    path = write_groups(groups, summary, tmp_path / "g.jsonl")
    length_teacher = pt.apply.doc_score(lambda row: float(len(row["text"])))
    add_teacher_scores(path, tmp_path / "t.jsonl", length_teacher)
    scored = read_groups(tmp_path / "t.jsonl")
    assert all(g.has_scores for g in scored)
    assert scored[0].neg_scores == tuple(float(len(t)) for t in scored[0].neg)


def test_compute_score_teacher_and_errors(tmp_path):
    class Half:
        def compute_score(self, pairs):
            return [len(p) / 2 for _, p in pairs]

    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"qid": "1", "query": "q", "pos": ["aa"], "neg": ["b", "cccc"]}) + "\n")
    add_teacher_scores(path, tmp_path / "t.jsonl", Half())
    record = json.loads((tmp_path / "t.jsonl").read_text())
    assert record["pos_scores"] == [1.0] and record["neg_scores"] == [0.5, 2.0] and record["qid"] == "1"
    path.write_text('{"query": "q", "pos": ["a"], "neg": ["b"]}\nnot json\n')
    with pytest.raises(ValueError, match=r"g\.jsonl:2: malformed JSON"):
        add_teacher_scores(path, tmp_path / "t.jsonl", Half())
    with pytest.raises(TypeError):
        score_function(42)
