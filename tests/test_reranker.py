"""The PyTerrier stage: a real BM25 >> re-ranker pipeline, experiments over shapes, frame contracts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest
from pyterrier.measures import RR, nDCG

import pyterrier_matroyshka.scorer as scorer_module
from pyterrier_matroyshka import MatroyshkaReRanker, MatroyshkaScorer

# Recorded from this engine (golden-verified against the reference) on Cranfield BM25 top-20, with the
# tokenizer ids of transformers 4.41.1 (every one of these texts holds a run of whitespace).
EXPECTED_TOP3 = {
    "1": [("573", 0, 3.65908), ("746", 1, 3.62576), ("329", 2, 3.48827)],
    "2": [("1380", 0, 4.44998), ("810", 1, 4.40827), ("172", 2, 3.84831)],
    "3": [("90", 0, 5.82005), ("181", 1, 5.07429), ("349", 2, 4.98142)],
}


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def cranfield(data_dir):
    from pyterrier_matroyshka.offline.bm25 import bm25
    from pyterrier_matroyshka.offline.collections import pt_dataset

    dataset = pt_dataset("cranfield")
    return dataset, bm25("cranfield", num_results=20)


@pytest.fixture
def frame():
    return pd.DataFrame({"qid": ["q1", "q1", "q2", "q1", "q2"], "query": ["panda", "panda", "tall", "panda", "tall"],
                         "docno": ["d1", "d2", "d3", "d1", "d4"],
                         "text": ["a bear", "a car", "everest", "a bear", "the sea"],
                         "score": [1.0, 2.0, 3.0, 4.0, 5.0], "rank": [0, 1, 0, 2, 1], "extra": list("abcde")})


def test_bm25_pipeline_regression(scorer, cranfield):
    dataset, bm25 = cranfield
    topics = dataset.get_topics().head(3)
    candidates = bm25(topics)
    result = (bm25 >> MatroyshkaReRanker(scorer=scorer))(topics)
    assert len(result) == len(candidates) == 60
    assert set(zip(result.qid, result.docno)) == set(zip(candidates.qid, candidates.docno))
    for qid, expected in EXPECTED_TOP3.items():
        top = result[result.qid == qid].sort_values("rank").head(3)
        assert list(top.docno) == [d for d, _, _ in expected]
        assert list(top["rank"]) == [r for _, r, _ in expected]
        assert np.allclose(top.score, [s for _, _, s in expected], atol=1e-4)
    for _, group in result.groupby("qid"):  # ranks follow scores within each query
        assert list(group.sort_values("rank").score) == sorted(group.score, reverse=True)


def test_experiment_over_shapes_loads_weights_once(tiny_checkpoint, cranfield, monkeypatch):
    dataset, bm25 = cranfield
    loads = []
    real_load = scorer_module.load_model
    monkeypatch.setattr(scorer_module, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    reranker = MatroyshkaReRanker(str(tiny_checkpoint), dtype="fp32", device="cpu")
    shapes = [reranker.with_shape(s) for s in ("L8", "L4", "L8:r2@2")]
    table = pt.Experiment([bm25] + [bm25 >> r for r in shapes], dataset.get_topics().head(5), dataset.get_qrels(),
                          [nDCG @ 10, RR @ 10], names=["BM25"] + [repr(r) for r in shapes])
    assert len(loads) == 1
    assert list(table.name) == ["BM25", "MatroyshkaReRanker(L8)", "MatroyshkaReRanker(L4)",
                                "MatroyshkaReRanker(L8:r2@2)"]
    assert table["nDCG@10"].between(0, 1).all()


def test_keeps_rows_columns_order_and_duplicates(scorer, frame):
    out = MatroyshkaReRanker(scorer=scorer)(frame)
    assert list(out.docno) == list(frame.docno) and list(out.extra) == list(frame.extra)
    assert len(out) == 5  # the duplicate (q1, d1) is scored, not dropped
    assert out.score.iloc[0] == pytest.approx(out.score.iloc[3], abs=1e-5)
    expected = scorer.compute_score(list(zip(frame["query"], frame.text)))
    assert np.allclose(out.score, expected)
    q1 = out[out.qid == "q1"]
    assert sorted(q1["rank"]) == [0, 1, 2]


def test_several_exits_give_columns_and_features(scorer, frame):
    out = MatroyshkaReRanker(scorer=scorer, shape="L4,6,8")(frame)
    assert {"score_L4", "score_L6", "score_L8", "features"} <= set(out.columns)
    assert np.allclose(out.score, out.score_L8)
    assert np.allclose(np.stack(out.features), out[["score_L4", "score_L6", "score_L8"]].to_numpy())


def test_empty_input_gives_empty_frame_with_columns(scorer, frame):
    out = MatroyshkaReRanker(scorer=scorer, shape="L4,8")(frame.iloc[:0])
    assert len(out) == 0 and {"score", "rank", "score_L4", "score_L8", "features", "extra"} <= set(out.columns)


def test_missing_text_column_names_the_fix(scorer, frame):
    with pytest.raises(pt.validate.InputValidationError, match=r"lacks column\(s\) \['text'\].*pt.text.get_text"):
        MatroyshkaReRanker(scorer=scorer)(frame.drop(columns=["text"]))


def test_nan_text_names_qid_and_docno(scorer, frame):
    frame.loc[2, "text"] = float("nan")
    with pytest.raises(ValueError, match="qid 'q2', docno 'd3'"):
        MatroyshkaReRanker(scorer=scorer)(frame)


def test_repr_schematic_and_normalize(scorer, frame):
    reranker = MatroyshkaReRanker(scorer=scorer, shape="L6", normalize=True)
    assert repr(reranker) == "MatroyshkaReRanker(L6)"
    assert reranker.schematic == {"label": "Matroyshka L6", "help_url": None}
    assert reranker(frame).score.between(0, 1).all()
    assert reranker.flops() < reranker.with_shape("L8").flops()


class TestTransformerContract(pt.testing.TransformerTestCase):
    @staticmethod
    def get_transformer():
        from pyterrier_matroyshka.offline.paths import shared_golden_dir

        if shared_golden_dir() is None:
            pytest.skip("../shared/golden is not beside the repository")
        return MatroyshkaReRanker(str(shared_golden_dir() / "tiny-matroyshka"), dtype="fp32", device="cpu")
