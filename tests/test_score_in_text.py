"""The first-stage score written before each passage, as a model input."""
from __future__ import annotations

import math

import pytest

from pyterrier_matroyshka.score_in_text import passage_with_score, passages_with_scores


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
