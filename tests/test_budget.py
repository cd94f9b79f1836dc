"""Choosing a shape for a budget: the frontier, the pick, the replay of cascades from cached exit scores (against
running them), the cost columns and the command, with the golden checkpoint on real data (Cranfield)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pyterrier_matroyshka import CascadePlan, MatroyshkaScorer, Shape
from pyterrier_matroyshka.budget import (best_under, default_systems, evaluate_systems, exit_scores, holdout_qids,
                                         pareto_frontier, plan_for, refuse_test_topics, replay)
from pyterrier_matroyshka.cli import main
from pyterrier_matroyshka.errors import UserError

SYSTEMS = ["L8", "L4", "L3 top4 > L8", "L2 top6 > L4 top3 > L8", "L8:r2@2", "L2 top5 > L8:r2@2"]


@pytest.fixture(scope="module")
def reranker(tiny_checkpoint, one_thread):
    from pyterrier_matroyshka.reranker import MatroyshkaReRanker

    scorer = MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu", batch_size=8, max_length=128)
    return MatroyshkaReRanker(scorer=scorer)


@pytest.fixture(scope="module")
def candidates(data_dir):
    from pyterrier_matroyshka.budget import candidates_for

    return candidates_for("cranfield", top_k=10, queries=3)


@pytest.fixture(scope="module")
def qrels(data_dir):
    from pyterrier_matroyshka.offline.collections import pt_dataset

    return pt_dataset("cranfield").get_qrels()


def table_of(rows):
    return pd.DataFrame(rows, columns=["name", "nDCG@10", "GFLOP/query", "of full", "ms/query"])


def test_frontier_keeps_only_systems_better_than_everything_cheaper():
    table = table_of([("a", 0.50, 10, 0.1, 5), ("b", 0.45, 20, 0.2, 6), ("c", 0.60, 30, 0.3, 9),
                      ("d", 0.60, 40, 0.4, 8), ("e", 0.70, 100, 1.0, 20), ("f", 0.55, 10, 0.1, 4)])
    assert pareto_frontier(table)["name"].tolist() == ["f", "c", "e"]


def test_best_under_a_budget():
    table = table_of([("a", 0.50, 10, 0.1, 5), ("c", 0.60, 30, 0.3, 9), ("d", 0.60, 25, 0.25, np.nan),
                      ("e", 0.70, 100, 1.0, 20)])
    assert best_under(table, max_fraction=0.5)["name"] == "d"  # as good as c, and cheaper
    assert best_under(table, max_gflop=100)["name"] == "e"
    assert best_under(table, max_ms=10)["name"] == "c"        # d was not timed: it never fits a time budget
    with pytest.raises(ValueError, match="cheapest is a"):
        best_under(table, max_gflop=5)


def test_replayed_cascades_equal_running_them(reranker, candidates):
    for text in SYSTEMS:
        system = CascadePlan.parse(text) if ">" in text else Shape.parse(text)
        key, _, choice = plan_for(reranker, system)
        replayed = replay(candidates, exit_scores(reranker, candidates, key), system)
        ran = (reranker.cascade(system, adapters=choice) if ">" in text else reranker.with_shape(system))(candidates)
        merged = replayed.merge(ran[["qid", "docno", "score"]], on=["qid", "docno"], suffixes=("", "_ran"))
        assert len(merged) == len(candidates)
        assert np.allclose(merged["score"], merged["score_ran"], atol=1e-5), text


def test_evaluate_systems_reads_each_pass_once_and_costs_by_the_plan(reranker, candidates, qrels, tmp_path,
                                                                       monkeypatch):
    from pyterrier_matroyshka.shape_comparison import mean_lengths

    table = evaluate_systems(reranker, SYSTEMS, candidates, qrels, cache=tmp_path, time_queries=1, time_which="all")
    assert sorted(table["name"]) == sorted(SYSTEMS)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # uncompressed, and r2@2
    row = table.set_index("name")
    assert row.loc["L8", "of full"] == 1.0 and (row["ms/query"] > 0).all()
    query_len, passage_len, prompt_len = mean_lengths(reranker, candidates)
    dims = reranker.scorer.core.dims
    plan = CascadePlan.parse("L3 top4 > L8")
    assert row.loc["L3 top4 > L8", "GFLOP/query"] == pytest.approx(
        plan.flops(dims, 10, query_len, passage_len, prompt_len) / 1e9)
    assert row.loc["L3 top4 > L8", "of full"] == pytest.approx((10 * 3 + 4 * 5) / (10 * 8))
    # a second evaluation scores nothing: every pass comes from the cache
    monkeypatch.setattr(reranker.scorer, "compute_score", lambda *a, **k: pytest.fail("scored again"))
    again = evaluate_systems(reranker, SYSTEMS, candidates, qrels, cache=tmp_path, time_which="none")
    assert np.allclose(again.set_index("name").loc[table["name"], "nDCG@10"], table["nDCG@10"])


def test_the_pass_cache_never_serves_another_models_scores(reranker, tiny_checkpoint, candidates, tmp_path):
    """Same base, same shape, other weights (an adapter merged in): its own cache file, its own scores."""
    from pyterrier_matroyshka.reranker import MatroyshkaReRanker

    key = plan_for(reranker, Shape.parse("L8"))[0]
    first = exit_scores(reranker, candidates, key, tmp_path)
    merged = MatroyshkaScorer(str(tiny_checkpoint), adapters=[str(tiny_checkpoint / "compensate" / "layer" / "full")],
                              dtype="fp32", device="cpu", batch_size=8, max_length=128)
    second = exit_scores(MatroyshkaReRanker(scorer=merged), candidates, key, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert np.abs(first[8] - second[8]).max() > 1e-3


def test_default_systems_of_a_30_layer_model():
    systems = [str(s) for s in default_systems(list(range(4, 31)))]
    assert {"L30", "L15", "L6", "L30:r2@4", "L6 top30 > L20", "L6 top50 > L15 top20 > L30",
            "L4 top30 > L30:r2@4", "L10:r2@4 top20 > L30:r2@4"} <= set(systems)
    assert len(systems) == len(set(systems))


def test_test_topics_are_refused():
    for dataset in ("beir/scifact/test", "local/msmarco-passage-dl19", "irds:msmarco-passage/trec-dl-2020"):
        with pytest.raises(ValueError, match="development topics"):
            refuse_test_topics(dataset)
    refuse_test_topics("beir/scifact/train")


def test_holdout_is_every_tenth_judged_training_query(data_dir):
    qids = holdout_qids("beir/scifact/train")
    assert len(qids) == 80 and len(set(qids)) == 80


def test_budget_command(tiny_checkpoint, data_dir, capsys):
    main(["budget", "--dataset", "cranfield", "--queries", "3", "--top-k", "10", "--model", str(tiny_checkpoint),
          "--dtype", "fp32", "--systems", "L8", "L4", "L3 top4 > L8", "--max-fraction", "0.7",
          "--time-queries", "1", "--all"])
    out = capsys.readouterr().out
    assert "GFLOP/query" in out and "L3 top4 > L8" in out
    assert "best within the budget: L" in out and "of full depth" in out
    with pytest.raises(UserError, match="development topics"):
        main(["budget", "--dataset", "beir/scifact/test", "--model", str(tiny_checkpoint)])


def test_experiment_table_with_a_cascade(reranker, candidates, qrels, tiny_checkpoint, capsys):
    from pyterrier_matroyshka.shape_comparison import compare_shapes

    table = compare_shapes(reranker, ["L8", "L3 top4 > L8"], candidates, qrels).set_index("name")
    # the cascade runs 3 of 8 blocks for all 10 candidates and the other 5 for 4 of them
    assert table.loc["L3 top4 > L8", "GFLOP/query"] == pytest.approx(table.loc["L8", "GFLOP/query"] * 50 / 80)
    assert table.loc["L3 top4 > L8", "GFLOP/pair"] == pytest.approx(table.loc["L3 top4 > L8", "GFLOP/query"] / 10)
    main(["experiment", "--dataset", "cranfield", "--queries", "3", "--top-k", "10", "--model", str(tiny_checkpoint),
          "--dtype", "fp32", "--shapes", "L8", "L3 top4 > L8"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "GFLOP/query" in lines[-4].split() and lines[-1].startswith("L3 top4 > L8")


def test_default_systems_by_ratio():
    uncompressed = default_systems(list(range(4, 31)), ratios=[1])
    assert all((s if isinstance(s, Shape) else s.path).ratio == 1 for s in uncompressed)
    assert Shape(30) in uncompressed and Shape(30, [4], 2) not in uncompressed
