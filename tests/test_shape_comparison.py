"""Shape comparison on top of pt.Experiment: its measures, significance and mrt, plus our cost column and
fused rows that reuse their shape's one scoring pass."""
from __future__ import annotations

import pandas as pd
import pytest
from ir_measures import RR, nDCG

from pyterrier_matroyshka import MatroyshkaReRanker, MatroyshkaScorer
from pyterrier_matroyshka.fusion import fuse
from pyterrier_matroyshka.shape_comparison import compare_shapes, evaluate, format_table

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu", batch_size=8)


@pytest.fixture
def candidates() -> pd.DataFrame:
    rows = []
    for q in range(4):
        for d in range(4):
            rows.append((str(q), f"query {q} wing", f"{q}-{d}", f"passage {d} about wings and flutter {q * d}",
                         float(4 - d), d))
    return pd.DataFrame(rows, columns=["qid", "query", "docno", "text", "score", "rank"])


@pytest.fixture
def qrels() -> pd.DataFrame:
    return pd.DataFrame({"qid": ["0", "1", "2", "3"], "docno": ["0-0", "1-2", "2-3", "3-1"], "label": [1, 1, 2, 1]})


def test_fused_rows_reuse_their_shapes_pass(scorer, candidates, qrels, monkeypatch) -> None:
    calls = []
    real = MatroyshkaScorer.compute_score
    monkeypatch.setattr(MatroyshkaScorer, "compute_score",
                        lambda self, pairs, **kw: calls.append(str(kw["shape"])) or real(self, pairs, **kw))
    lines: list[str] = []
    reranker = MatroyshkaReRanker(scorer=scorer)
    table = compare_shapes(reranker, ["L8", "L4"], candidates, qrels, fusion_weight=0.5, report=lines.append)
    assert calls == ["L8", "L4"]  # one pass per shape; its fused row scores nothing more
    assert table["name"].tolist() == ["BM25", "L8", "L8 + BM25 (0.5)", "L4", "L4 + BM25 (0.5)"]
    assert [line.split()[0] for line in lines] == ["BM25", "L8", "L8", "L4", "L4"]  # each row as it finishes

    l4 = reranker.with_shape("L4")(candidates)
    by_name = table.set_index("name")
    assert by_name.loc["L4", "nDCG@10"] == pytest.approx(evaluate(l4, qrels)["nDCG@10"])
    assert by_name.loc["L4 + BM25 (0.5)", "RR@10"] == pytest.approx(evaluate(fuse(candidates, l4, 0.5), qrels)["RR@10"])
    assert by_name.loc["BM25", "nDCG@10"] == pytest.approx(evaluate(candidates, qrels)["nDCG@10"])
    # pt.Experiment's own columns: significance against the first stage with Holm's correction, mrt
    assert {"nDCG@10 p-value", "nDCG@10 p-value corrected", "RR@10 reject", "mrt"} <= set(table.columns)
    assert by_name.loc["L8", "mrt"] > 0 and by_name.loc["L8 + BM25 (0.5)", "mrt"] >= by_name.loc["L8", "mrt"]
    # ours: the estimated cost of a pair (the same for a shape and its fused row; none for BM25)
    assert by_name.loc["L4", "GFLOP/pair"] < by_name.loc["L8", "GFLOP/pair"] == by_name.loc["L8 + BM25 (0.5)", "GFLOP/pair"]
    assert pd.isna(by_name.loc["BM25", "GFLOP/pair"])
    header = format_table(table).splitlines()[0].split()
    assert header == ["name", "nDCG@10", "p(nDCG@10)", "RR@10", "p(RR@10)", "GFLOP/pair", "GFLOP/query", "mrt"]


def test_experiment_options_pass_through(scorer, candidates, qrels) -> None:
    table = compare_shapes(MatroyshkaReRanker(scorer=scorer), ["L4"], candidates, qrels, measures=[nDCG @ 5, RR],
                           report=None, correction=None, round=2)
    assert "nDCG@5" in table.columns and "RR" in table.columns and "nDCG@5 p-value corrected" not in table.columns
    assert table["nDCG@5"].tolist() == [round(v, 2) for v in table["nDCG@5"]]
