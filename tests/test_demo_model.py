"""Regression test of the shipped demo model (slow: loads SmolLM2-135M and scores real SciFact pairs)."""
from __future__ import annotations

import numpy as np
import pytest

from pyterrier_matroyshka.demo import DEFAULT_ADAPTERS

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(DEFAULT_ADAPTERS is None, reason="demo adapters not in models/ (not trained yet)")]

# Recorded with this engine in fp32 on BM25 top-10 of the first three SciFact test queries (the shipped
# adapters: stage 1 merged; vertical for L30, r2 for L15:r2@4, picked by shape). After re-shipping the
# model, tests/record_demo_model.py prints the new table.
EXPECTED = {
    "L30": {"1": [("18953920", 14.4201), ("3770726", 12.0068), ("43385013", 11.5091)],
            "3": [("2739854", 25.4186), ("9196472", 24.5347), ("23389795", 23.5698)],
            "5": [("13734012", 19.8203), ("1292369", 19.3766), ("17333231", 17.9441)]},
    "L15:r2@4": {"1": [("18953920", -7.5221), ("6550579", -9.8224), ("3770726", -10.7132)],
                 "3": [("2739854", -0.6006), ("14717500", -2.634), ("9196472", -2.9161)],
                 "5": [("13734012", -4.264), ("1292369", -5.4112), ("18617259", -6.3666)]},
}


@pytest.fixture(scope="module")
def result(data_dir):
    from pyterrier_matroyshka.bm25 import bm25
    from pyterrier_matroyshka.collections import pt_dataset
    from pyterrier_matroyshka.demo import demo_reranker

    topics = pt_dataset("beir/scifact/test").get_topics().head(3)
    reranker = demo_reranker(dtype="fp32", device="cpu")
    return {shape: (bm25("beir/scifact/test", num_results=10) >> reranker.with_shape(shape))(topics)
            for shape in EXPECTED}


@pytest.mark.parametrize("shape", sorted(EXPECTED))
def test_top_documents_and_scores(result, shape):
    frame = result[shape]
    for qid, expected in EXPECTED[shape].items():
        top = frame[frame.qid == qid].sort_values("rank").head(3)
        assert list(top.docno) == [d for d, _ in expected]
        assert np.allclose(top.score, [s for _, s in expected], atol=1e-3)
