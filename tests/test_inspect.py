"""PyTerrier's own tools see the re-ranker's and the fusion pass's real inputs and attributes."""
from __future__ import annotations

import pandas as pd
import pyterrier as pt
import pytest

from pyterrier_matroyshka import FirstStageFusion, MatroyshkaReRanker, MatroyshkaScorer


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu", batch_size=4)


@pytest.fixture
def candidates() -> pd.DataFrame:
    return pd.DataFrame({"qid": ["1", "1", "1"], "query": ["wing flutter"] * 3, "docno": ["a", "b", "c"],
                         "body": ["flutter of a wing", "nothing", "wings"], "score": [3.0, 2.0, 1.0],
                         "rank": [0, 1, 2]})


def test_reranker_attributes_name_its_scorer_and_settings(scorer) -> None:
    reranker = MatroyshkaReRanker(scorer=scorer, shape="L6", text_field="body", batch_size=2)
    attributes = {a.name: a.value for a in pt.inspect.transformer_attributes(reranker)}
    assert attributes["scorer"] is scorer and str(attributes["shape"]) == "L6"
    assert attributes["text_field"] == "body" and attributes["batch_size"] == 2
    assert "model" not in attributes  # a load-time option: the scorer holds what it loaded
    assert pt.inspect.subtransformers(reranker) == {}


def test_apply_attributes_rebuilds_on_the_same_weights(scorer, candidates) -> None:
    reranker = MatroyshkaReRanker(scorer=scorer, shape="L6", text_field="body")
    deeper = pt.inspect.transformer_apply_attributes(reranker, shape="L8")
    assert isinstance(deeper, MatroyshkaReRanker) and deeper is not reranker
    assert deeper.scorer is scorer and str(deeper.shape) == "L8" and deeper.text_field == "body"
    pd.testing.assert_frame_equal(deeper(candidates), reranker.with_shape("L8")(candidates))


def test_reranker_inputs_and_outputs(scorer) -> None:
    reranker = MatroyshkaReRanker(scorer=scorer, shape="L4,8", text_field="body")
    assert [sorted(c) for c in pt.inspect.transformer_inputs(reranker)] == [["body", "docno", "qid", "query"]]
    outputs = pt.inspect.transformer_outputs(reranker, ["qid", "query", "docno", "body", "score", "rank"])
    assert {"score", "rank", "score_L4", "score_L8", "features", "body"} <= set(outputs)


def test_fusion_reports_the_rerankers_inputs_plus_the_first_stage_score(scorer, candidates) -> None:
    fusion = FirstStageFusion(MatroyshkaReRanker(scorer=scorer, text_field="body"), 0.3)
    assert [sorted(c) for c in pt.inspect.transformer_inputs(fusion)] == [["body", "docno", "qid", "query", "score"]]
    outputs = pt.inspect.transformer_outputs(fusion, list(candidates.columns))
    assert {"score", "rank", "score_first_stage", "score_reranker"} <= set(outputs)
    assert set(pt.inspect.subtransformers(fusion)) == {"reranker"}
    rebuilt = pt.inspect.transformer_apply_attributes(fusion, weight=1.0)
    assert rebuilt.reranker is fusion.reranker and rebuilt(candidates)["docno"].tolist() == ["a", "b", "c"]
    with pytest.raises(pt.validate.InputValidationError):  # what inspection reports is what it needs
        fusion(candidates.drop(columns=["body"]))


class TestFusionContract(pt.testing.TransformerTestCase):
    """PyTerrier's own transformer checks (inspection of inputs and outputs, schematic) on the fusion pass."""

    @staticmethod
    def get_transformer():
        from pyterrier_matroyshka.offline.paths import shared_golden_dir

        if shared_golden_dir() is None:
            pytest.skip("../shared/golden is not beside the repository")
        scorer = MatroyshkaScorer(str(shared_golden_dir() / "tiny-matroyshka"), dtype="fp32", device="cpu")
        return FirstStageFusion(MatroyshkaReRanker(scorer=scorer), 0.3)
