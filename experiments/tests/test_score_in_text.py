"""experiments/score_in_text.py: the first-stage score written before each passage, as a model input."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pyterrier_matroyshka import MatroyshkaReRanker, MatroyshkaScorer
from score_in_text import passage_with_score, passages_with_scores, score_in_text, write_candidates


def test_score_goes_before_the_passage_with_one_decimal():
    assert passage_with_score("The giant panda.", 22.04) == "[BM25 22.0] The giant panda."
    assert passage_with_score("", 0) == "[BM25 0.0] "
    assert passages_with_scores(["a", "b"], [1.25, 13.0]) == ["[BM25 1.2] a", "[BM25 13.0] b"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, None, "high"])
def test_refuses_a_score_that_is_not_a_finite_number(bad):
    with pytest.raises(ValueError, match="first-stage score"):
        passage_with_score("text", bad)


def test_refuses_misaligned_lists():
    with pytest.raises(ValueError, match="2 passages but 1 first-stage scores"):
        passages_with_scores(["a", "b"], [1.0])


@pytest.fixture
def frame():
    return pd.DataFrame({"qid": ["q1", "q1", "q2"], "query": ["panda", "panda", "tall"], "docno": ["d1", "d2", "d3"],
                         "text": ["a bear", "a car", "everest"], "score": [1.0, 2.0, 3.0], "rank": [0, 1, 0]})


def test_a_pipeline_feeds_the_first_stage_score_before_each_passage(tiny_checkpoint, frame):
    scorer = MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu")
    out = (score_in_text() >> MatroyshkaReRanker(scorer=scorer, shape="L6"))(frame)
    texts = [f"[BM25 {s:.1f}] {t}" for s, t in zip(frame.score, frame.text)]
    assert list(out.text) == texts
    assert np.allclose(out.score, scorer.compute_score(list(zip(frame["query"], texts)), shape="L6"))
    with pytest.raises(ValueError, match="pipe the retriever"):
        score_in_text()(frame.drop(columns=["score", "rank"]))


def test_candidates_carry_each_pairs_score_in_its_own_passage(tmp_path, frame):
    from evaluate_demo import read_candidates

    source, target = tmp_path / "plain", tmp_path / "sit"
    source.mkdir()
    frame.drop(columns="text").to_parquet(source / "vaswani.run.parquet")
    frame[["docno", "text"]].to_parquet(source / "vaswani.docs.parquet")
    pd.DataFrame({"qid": ["q1"], "docno": ["d1"], "relevance": [1]}).to_parquet(source / "vaswani.qrels.parquet")
    write_candidates("vaswani", source, target)
    assert read_candidates("vaswani", target)["text"].tolist() == ["[BM25 1.0] a bear", "[BM25 2.0] a car",
                                                                   "[BM25 3.0] everest"]
    assert (target / "vaswani.qrels.parquet").is_file()
