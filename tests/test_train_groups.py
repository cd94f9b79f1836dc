"""Hard-negative groups on Cranfield (offline copy in ../shared/data) and teacher scores on them."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pyterrier as pt
import pytest

from pyterrier_matroyshka.offline.paths import shared_data_dir
from train.data import read_groups
from train.groups import (CorpusIds, mine_groups, pick_negatives, pick_other_positives, positive_clusters,
                          relevant_docs, split_holdout, write_groups)
from train.teacher import add_teacher_scores, score_function

needs_data = pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data (Cranfield) is absent")


@pytest.fixture(scope="module")
def cranfield(tmp_path_factory, data_dir):
    """Groups of the first 40 Cranfield queries with positives, written twice with the same seed."""
    out = tmp_path_factory.mktemp("groups")
    groups, summary = mine_groups("cranfield", num_negatives=7, window=(10, 100), seed=3, max_queries=40)
    first = write_groups(groups, summary, out / "a.jsonl")
    again, summary_again = mine_groups("cranfield", num_negatives=7, window=(10, 100), seed=3, max_queries=40)
    second = write_groups(again, summary_again, out / "b.jsonl")
    return first, second, summary


@needs_data
def test_positives_relevant_negatives_not(cranfield):
    from pyterrier_matroyshka.offline.collections import ensure_dataset

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


def test_other_positives_exclude_own_and_taken():
    all_positives = ["a", "b", "c", "d", "e"]  # query 1's are a and b
    picked = pick_other_positives(all_positives, {"a", "b", "e"}, 5, random.Random(0))
    assert sorted(picked) == ["c", "d"]  # a, b are query 1's own positives, e already taken: only two left
    assert len(pick_other_positives(all_positives, {"d"}, 2, random.Random(0))) == 2


@needs_data
def test_other_positives_extend_the_same_hard_negatives(cranfield):
    from pyterrier_matroyshka.offline.collections import ensure_dataset

    plain = [json.loads(line) for line in cranfield[0].read_text().splitlines()]
    groups, summary = mine_groups("cranfield", num_negatives=7, window=(10, 100), seed=3, max_queries=40,
                                  other_positives=3)
    judged = relevant_docs(ensure_dataset("cranfield"))
    positives_of_others = {d for g in plain for d in g["pos_ids"]}
    assert summary.other_positive_negatives == 3 * len(groups) == summary.negatives - 7 * len(groups)
    for before, after in zip(plain, groups):
        assert after["neg_ids"][:7] == before["neg_ids"]  # the hard negatives do not move
        added = after["neg_ids"][7:]
        assert len(set(added)) == 3 and set(added) <= positives_of_others
        assert not set(added) & (judged[after["qid"]] | set(before["neg_ids"]))
        assert len(after["neg"]) == len(after["neg_ids"])


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
        add_teacher_scores(path, tmp_path / "t2.jsonl", Half())
    with pytest.raises(ValueError, match=r"t\.jsonl is not a scored copy of the first groups.*line 1"):
        add_teacher_scores(path, tmp_path / "t.jsonl", Half())  # another source's scores are never overwritten
    with pytest.raises(TypeError):
        score_function(42)


def test_teacher_scores_resume_after_a_stop(tmp_path):
    class Counting:
        calls = 0

        def compute_score(self, pairs):
            Counting.calls += len(pairs)
            return [float(len(p)) for _, p in pairs]

    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps({"qid": str(i), "query": f"q{i}", "pos": ["p" * i], "neg": ["n", "nn"]}) + "\n"
                            for i in range(10)))
    whole = tmp_path / "whole.jsonl"
    add_teacher_scores(path, whole, Counting(), chunk=3)
    stopped = tmp_path / "stopped.jsonl"
    lines = whole.read_text().splitlines(keepends=True)
    stopped.write_text("".join(lines[:4]) + lines[4][:17])  # four groups written, the fifth cut mid-line
    Counting.calls = 0
    assert add_teacher_scores(path, stopped, Counting(), chunk=3) == 10
    assert stopped.read_bytes() == whole.read_bytes()
    assert Counting.calls == 6 * 3  # only the six unfinished groups were scored


def _write_groups(path: Path, positives: list[list[str]], negatives: list[str] = ("n",)) -> Path:
    path.write_text("".join(json.dumps({"qid": str(i), "query": f"q{i}", "pos": pos, "neg": list(negatives),
                                        "neg_ids": [f"id-{n}" for n in negatives],
                                        "neg_scores": [float(len(n)) for n in negatives]}) + "\n"
                            for i, pos in enumerate(positives)))
    return path


def test_split_every_nth_group(tmp_path):
    source = _write_groups(tmp_path / "g.jsonl", [[f"p{i}"] for i in range(9)])
    assert split_holdout(source, tmp_path / "t.jsonl", tmp_path / "h.jsonl", every=3) == (6, 3)
    held = [json.loads(line)["qid"] for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert held == ["2", "5", "8"]


def test_split_by_positives_keeps_clusters_on_one_side(tmp_path):
    # clusters in order of first appearance: {0, 2, 5} (via a, then c), {1}, {3, 4}, {6}, {7}
    positives = [["a"], ["b"], ["a", "c"], ["d"], ["d"], ["c"], ["e"], ["f"]]
    source = _write_groups(tmp_path / "g.jsonl", positives, negatives=["n", "bb", "b", "e"])
    assert positive_clusters(positives) == [0, 1, 0, 3, 3, 0, 6, 7]
    assert split_holdout(source, tmp_path / "t.jsonl", tmp_path / "h.jsonl", every=2, by_positives=True) == (6, 2)
    held = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    kept = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [r["qid"] for r in held] == ["1", "6"]  # the 2nd and 4th clusters
    assert not {p for r in held for p in r["pos"]} & {p for r in kept for p in r["pos"]}
    # held-out positives b and e leave the training negatives, with their ids and teacher scores
    assert all(r["neg"] == ["n", "bb"] and r["neg_ids"] == ["id-n", "id-bb"] and r["neg_scores"] == [1.0, 2.0]
               for r in kept)
    assert all(r["neg"] == ["n", "bb", "b", "e"] for r in held)
