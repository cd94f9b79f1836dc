"""experiments/bm25_target.py: the teacher fused with exact BM25 per group, as a distillation target."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pyterrier_matroyshka.offline.paths import shared_data_dir
from bm25_target import add_first_stage_target, bm25_scores, fused_logits
from train.groups import mine_groups, write_groups

needs_data = pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data (Cranfield) is absent")


def test_fused_logits_weight_ends_and_spread():
    teacher, bm25 = np.array([4.0, 1.0, 0.0, -2.0]), np.array([3.0, 9.0, 5.0, 1.0])
    assert np.allclose(fused_logits(teacher, bm25, 0.0), teacher)
    only_bm25 = fused_logits(teacher, bm25, 1.0)
    assert list(np.argsort(-only_bm25)) == list(np.argsort(-bm25))
    assert np.isclose(only_bm25.std(), teacher.std()) and np.isclose(only_bm25.mean(), teacher.mean())
    half = fused_logits(teacher, bm25, 0.5)
    assert np.isclose(half.std(), teacher.std())
    assert half[1] > half[0] and half[0] > half[3]  # BM25 lifts passage 1 over the teacher's top; both rank 3 last
    # a group where BM25 cannot tell passages apart keeps the teacher's order
    assert list(np.argsort(-fused_logits(teacher, np.zeros(4), 0.5))) == list(np.argsort(-teacher))


@needs_data
def test_bm25_scores_are_the_retrievers_and_cover_the_corpus():
    from pyterrier_matroyshka.offline.bm25 import bm25

    queries = {"1": "what similarity laws must be obeyed when constructing aeroelastic models"}
    scores = bm25_scores("cranfield", queries)["1"]
    top = bm25("cranfield", num_results=10)(pd.DataFrame({"qid": ["1"], "query": [queries["1"]]}))
    for docno, score in zip(top["docno"], top["score"]):
        assert scores[docno] == pytest.approx(score)
    assert 100 < len(scores) <= 1400  # every matching document, not a top-k


@needs_data
def test_groups_get_the_fused_target_and_keep_both_sources(tmp_path):
    groups, summary = mine_groups("cranfield", num_negatives=5, seed=1, max_queries=6)
    rng = np.random.default_rng(0)
    for g in groups:
        g["pos_scores"] = rng.normal(size=len(g["pos"])).tolist()
        g["neg_scores"] = rng.normal(size=len(g["neg"])).tolist()
    source = write_groups(groups, summary, tmp_path / "teacher.jsonl")
    counts = add_first_stage_target(source, tmp_path / "fused.jsonl", "cranfield", weight=0.5)
    assert counts["groups"] == 6
    out = [json.loads(line) for line in (tmp_path / "fused.jsonl").read_text().splitlines()]
    for before, after in zip(groups, out):
        assert after["teacher_pos_scores"] == before["pos_scores"]
        assert len(after["bm25_neg_scores"]) == len(after["neg_ids"]) == len(after["neg_scores"])
        teacher = np.array(before["pos_scores"] + before["neg_scores"])
        bm25 = np.array(after["bm25_pos_scores"] + after["bm25_neg_scores"])
        assert np.allclose(after["pos_scores"] + after["neg_scores"], fused_logits(teacher, bm25, 0.5))
        assert bm25[len(before["pos"]):].min() > 0  # negatives come from the BM25 ranking: all matched


@needs_data
def test_score_in_text_writes_each_passages_bm25_before_it(tmp_path):
    groups, summary = mine_groups("cranfield", num_negatives=3, seed=2, max_queries=3)
    for g in groups:
        g["pos_scores"], g["neg_scores"] = [1.0] * len(g["pos"]), [0.0] * len(g["neg"])
    source = write_groups(groups, summary, tmp_path / "teacher.jsonl")
    add_first_stage_target(source, tmp_path / "plain.jsonl", "cranfield", weight=0.5)
    counts = add_first_stage_target(source, tmp_path / "sit.jsonl", "cranfield", weight=0.5, score_in_text=True)
    assert counts["score_in_text"] is True
    plain = [json.loads(line) for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    sit = [json.loads(line) for line in (tmp_path / "sit.jsonl").read_text().splitlines()]
    for before, after in zip(plain, sit):
        assert after["pos_scores"] == before["pos_scores"]  # the target does not change, only the input
        for side in ("pos", "neg"):
            for text, written, score in zip(before[side], after[side], after[f"bm25_{side}_scores"]):
                assert written == f"[BM25 {score:.1f}] {text}"


def test_refuses_groups_without_teacher_scores_and_bad_weights(tmp_path):
    source = tmp_path / "plain.jsonl"
    source.write_text(json.dumps(dict(qid="1", query="q", pos=["a"], neg=["b"], pos_ids=["d1"], neg_ids=["d2"])) + "\n")
    with pytest.raises(ValueError, match="lacks pos_scores, neg_scores.*train teacher"):
        add_first_stage_target(source, tmp_path / "out.jsonl", "cranfield")
    with pytest.raises(ValueError, match="outside"):
        add_first_stage_target(source, tmp_path / "out.jsonl", "cranfield", weight=1.5)
