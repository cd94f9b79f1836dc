"""Regression test of the shipped demo model (slow: loads SmolLM2-135M and scores real SciFact pairs)."""
from __future__ import annotations

import numpy as np
import pytest

from pyterrier_matroyshka.demo import DEFAULT_ADAPTERS

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(DEFAULT_ADAPTERS is None, reason="demo adapters not in models/ (not trained yet)")]

# Recorded with this engine in fp32 on BM25 top-10 of the first three SciFact test queries (the shipped
# adapters: stage 1 merged; vertical for L30, r2 for L15:r2@4, picked by shape).
EXPECTED = {
    "L30": {"1": [("18953920", 14.9099), ("43385013", 11.3154), ("3770726", 10.2387)],
            "3": [("2739854", 20.5764), ("9196472", 20.1602), ("23389795", 19.8166)],
            "5": [("13734012", 17.7796), ("17333231", 16.8984), ("1292369", 16.8742)]},
    "L15:r2@4": {"1": [("18953920", -10.89), ("6550579", -11.2481), ("3770726", -12.9445)],
                 "3": [("2739854", -5.0141), ("9196472", -6.4387), ("23389795", -7.4899)],
                 "5": [("13734012", -6.32), ("17333231", -7.7094), ("1292369", -7.8487)]},
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
