"""The check that a model reads the first-stage score in its passages: shuffled scores, score changes."""
from __future__ import annotations

import re

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def bench(load_experiment):
    return load_experiment("score_sensitivity")


class ReadsTheNumber:
    """Scores a pair by the BM25 value in its text (plus the passage length, which shuffling leaves alone)."""

    def compute_score(self, pairs, shape):
        return [float(re.match(r"\[BM25 ([0-9.]+)\]", p).group(1)) + len(p) % 3 for _, p in pairs]


class IgnoresTheNumber:
    def compute_score(self, pairs, shape):
        return [float(len(re.sub(r"^\[BM25 [0-9.]+\] ", "", p))) for _, p in pairs]


@pytest.fixture
def frame():
    return pd.DataFrame({"qid": ["1"] * 4 + ["2"] * 4, "query": ["q"] * 8, "docno": list("abcdefgh"),
                         "text": ["x" * n for n in range(1, 9)], "score": [9.0, 7.0, 5.0, 3.0, 8.0, 6.0, 4.0, 2.0]})


def test_shuffle_stays_within_each_query(bench, frame):
    fake = bench.shuffled_within_query(frame, seed=3)
    for qid, group in frame.groupby("qid"):
        assert sorted(fake[group.index]) == sorted(group["score"])
    assert not fake.equals(frame["score"])


def test_a_model_that_reads_the_number_follows_it_and_one_that_ignores_it_does_not(bench, frame):
    reads = bench.sensitivity(ReadsTheNumber(), frame, "L30", seed=3)
    assert reads["Spearman(change, BM25 change)"] == pytest.approx(1.0)
    assert reads["mean |change|"] > 1
    ignores = bench.sensitivity(IgnoresTheNumber(), frame, "L30", seed=3)
    assert ignores["mean |change|"] == 0 and ignores["score sd"] > 0
