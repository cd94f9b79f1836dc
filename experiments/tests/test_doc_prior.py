"""experiments/doc_prior.py: which queries are "seen", and how much a ranking leans on training positives."""
from __future__ import annotations

import json

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def doc_prior(load_experiment):
    return load_experiment("doc_prior")


QRELS = pd.DataFrame({"qid": ["1", "1", "2"], "docno": ["a", "x", "b"], "label": [1, 0, 1]})


def test_seen_queries_count_only_relevant_training_positives(doc_prior):
    assert doc_prior.seen_queries(QRELS, {"a"}) == {"1"}
    assert doc_prior.seen_queries(QRELS, {"x"}) == set()  # judged, but not relevant


def test_prior_share_among_wrong_top_documents(doc_prior):
    run = pd.DataFrame({"qid": ["1"] * 4 + ["2"] * 2, "docno": ["a", "p", "c", "d", "b", "p"],
                        "score": [4.0, 3.0, 2.0, 1.0, 2.0, 1.0]})
    # wrong documents in the top 3: query 1 -> p, c; query 2 -> p: two of three are training positives
    assert doc_prior.prior_share(run, QRELS, {"p", "a"}, depth=3) == pytest.approx(2 / 3)
    assert doc_prior.prior_share(run, QRELS, {"p"}, depth=4) == pytest.approx(2 / 4)  # p, c, d; p
    assert doc_prior.prior_share(run, QRELS, {"p"}, depth=1) == 0.0  # both top documents are relevant


def test_training_positives_need_ids(doc_prior, tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": ["t"], "pos_ids": ["a"], "neg": ["n"]}) + "\n")
    assert doc_prior.training_positives(path) == {"a"}
    path.write_text(json.dumps({"query": "q", "pos": ["t"], "neg": ["n"]}) + "\n")
    with pytest.raises(ValueError, match="no pos_ids"):
        doc_prior.training_positives(path)


def test_table_marks_an_empty_split(doc_prior):
    run = pd.DataFrame({"qid": ["2", "2"], "docno": ["b", "p"], "score": [2.0, 1.0]})
    rows = [doc_prior.row("m", run, QRELS, ["2"], set(), {"p"})]  # b, relevant, was never trained on
    assert doc_prior.table(rows).splitlines()[-1] == "| m | 1.0000 | - | 1.0000 | 1.000 |"  # p: wrong, trained
