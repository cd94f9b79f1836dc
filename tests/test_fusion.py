"""Interpolation with the first stage: per-query normalization, the two extremes, frame contracts, errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest

from pyterrier_matroyshka import FirstStageFusion, MatroyshkaReRanker, MatroyshkaScorer
from pyterrier_matroyshka.fusion import interpolate, zscore_per_query


class TextLength(pt.Transformer):
    """A stand-in re-ranker that prefers long passages (and reverses its input's row order)."""

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        out = inp.drop(columns=["rank"]).assign(score=inp["text"].str.len().astype(float)).iloc[::-1]
        return pt.model.add_ranks(out)


@pytest.fixture
def candidates() -> pd.DataFrame:
    return pd.DataFrame({"qid": ["1", "1", "1", "2", "2"], "query": ["a", "a", "a", "b", "b"],
                         "docno": ["d1", "d2", "d3", "d4", "d5"],
                         "text": ["x", "xxxxxxxx", "xxxxxx", "yy", "yyyyy"],
                         "score": [30.0, 10.0, 20.0, 5.0, 7.0], "rank": [0, 2, 1, 1, 0], "extra": list("abcde")})


def test_zscore_is_per_query_and_zero_for_ties():
    qids = pd.Series(["1", "1", "1", "2", "2"])
    z = zscore_per_query(qids, pd.Series([1.0, 2.0, 3.0, 4.0, 4.0]))
    np.testing.assert_allclose(z[:3], [-1.224744871, 0.0, 1.224744871])
    np.testing.assert_array_equal(z[3:], [0.0, 0.0])  # a tie carries no information, and never NaN


def test_weight_zero_keeps_the_reranker_and_one_the_first_stage(candidates):
    def ranking(frame):
        return frame.sort_values(["qid", "rank"])["docno"].tolist()

    assert ranking(FirstStageFusion(TextLength(), 0.0)(candidates)) == ranking(TextLength()(candidates))
    assert ranking(FirstStageFusion(TextLength(), 1.0)(candidates)) == ["d1", "d3", "d2", "d5", "d4"]


def test_fused_frame_keeps_rows_and_adds_both_scores(candidates):
    out = FirstStageFusion(TextLength(), 0.5)(candidates)
    assert len(out) == len(candidates) and set(out["extra"]) == set(candidates["extra"])
    row = out.set_index("docno").loc["d2"]
    assert row["score_first_stage"] == 10.0 and row["score_reranker"] == 8.0
    expected = interpolate(pd.Series(["1"] * 3), pd.Series([30.0, 10.0, 20.0]), pd.Series([1.0, 8.0, 6.0]), 0.5)
    np.testing.assert_allclose(out.set_index("docno").loc[["d1", "d2", "d3"], "score"], expected)
    # d2 is last for BM25 and first for the re-ranker; halfway, d3 (second for both) wins query 1
    assert out[out["qid"] == "1"].sort_values("rank")["docno"].iloc[0] == "d3"


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_weight_outside_unit_interval_is_refused(weight):
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        FirstStageFusion(TextLength(), weight)


def test_missing_first_stage_score_is_named(candidates):
    with pytest.raises(ValueError, match="missing .NaN. for qid '1', docno 'd2'"):
        FirstStageFusion(TextLength(), 0.3)(candidates.assign(score=[30.0, np.nan, 20.0, 5.0, 7.0]))


def test_duplicate_candidates_are_refused(candidates):
    doubled = pd.concat([candidates, candidates.iloc[[0]]], ignore_index=True)
    with pytest.raises(ValueError, match="more than once"):
        FirstStageFusion(TextLength(), 0.3)(doubled)


def test_rows_the_reranker_invented_are_refused(candidates):
    class Inventor(pt.Transformer):
        def transform(self, inp):
            return pd.concat([inp, inp.iloc[[0]].assign(docno="new")], ignore_index=True)

    with pytest.raises(ValueError, match="not among its candidates"):
        FirstStageFusion(Inventor(), 0.3)(candidates)


def test_fuses_a_matroyshka_reranker_in_a_pipeline(tiny_checkpoint, candidates):
    scorer = MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu", batch_size=8)
    reranker = MatroyshkaReRanker(scorer=scorer)
    pipeline = pt.Transformer.from_df(candidates) >> FirstStageFusion(reranker, 0.25)
    out = pipeline(candidates[["qid", "query"]].drop_duplicates())
    alone = reranker(candidates)
    np.testing.assert_allclose(out["score_reranker"], alone["score"])
    np.testing.assert_allclose(out["score"], interpolate(alone["qid"], candidates["score"], alone["score"], 0.25))


class TestTransformerContract(pt.testing.TransformerTestCase):
    """PyTerrier's own checks (inspection, schematic) of the fusion over the re-ranker on the golden checkpoint."""

    @staticmethod
    def get_transformer():
        from pyterrier_matroyshka.offline.paths import shared_golden_dir

        if shared_golden_dir() is None:
            pytest.skip("../shared/golden is not beside the repository")
        reranker = MatroyshkaReRanker(str(shared_golden_dir() / "tiny-matroyshka"), dtype="fp32", device="cpu")
        return FirstStageFusion(reranker, weight=0.5)
