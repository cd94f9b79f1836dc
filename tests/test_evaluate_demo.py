"""The evaluation script's bookkeeping: merging query shards and ratios, fused rows next to each shape."""
from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pandas as pd
import pytest

from pyterrier_matroyshka.fusion import interpolate


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("evaluate_demo")


def write(folder: Path, name: str, frame: pd.DataFrame, timing: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / f"{name}.parquet")
    (folder / f"{name}.timing.json").write_text(json.dumps(timing))


def test_merge_joins_shards_and_ratios(bench, tmp_path):
    name = "beir_scifact_test__matroyshka"
    write(tmp_path / "a", name, pd.DataFrame({"qid": ["1", "1"], "docno": ["x", "y"], "score_L30": [1.0, 2.0],
                                              "score_L30:r2@4": [3.0, 4.0]}), {"device": "cpu", "pairs": 2})
    write(tmp_path / "b", name, pd.DataFrame({"qid": ["2"], "docno": ["z"], "score_L30": [5.0]}), {"pairs": 1})
    write(tmp_path / "b_r2", name, pd.DataFrame({"qid": ["2"], "docno": ["z"], "score_L30:r2@4": [6.0]}), {})
    bench.merge_scores([tmp_path / "a", tmp_path / "b", tmp_path / "b_r2"], tmp_path / "all")
    merged = pd.read_parquet(tmp_path / "all" / f"{name}.parquet")
    assert merged.to_dict("list") == {"qid": ["1", "1", "2"], "docno": ["x", "y", "z"], "score_L30": [1.0, 2.0, 5.0],
                                      "score_L30:r2@4": [3.0, 4.0, 6.0]}
    timing = json.loads((tmp_path / "all" / f"{name}.timing.json").read_text())
    assert timing["device"] == "cpu" and timing["pairs"] == 3 and len(timing["merged_from"]) == 3


def test_metrics_have_a_fused_entry_per_shape(bench, tmp_path):
    dataset, candidates, scores = "beir/scifact/test", tmp_path / "candidates", tmp_path / "scores"
    candidates.mkdir()
    run = pd.DataFrame({"qid": ["1"] * 3, "docno": ["a", "b", "c"], "score": [3.0, 2.0, 1.0], "rank": [0, 1, 2]})
    run.to_parquet(candidates / "beir_scifact_test.run.parquet")
    qrels = pd.DataFrame({"qid": ["1"], "docno": ["b"], "label": [1]})
    qrels.to_parquet(candidates / "beir_scifact_test.qrels.parquet")
    # the model puts b last, BM25 second: alone it ranks b third; fused at 0.5 (z-scores) b comes second
    write(scores, "beir_scifact_test__matroyshka",
          pd.DataFrame({"qid": ["1"] * 3, "docno": ["a", "b", "c"], "score_L30": [1.0, 0.0, 0.1]}),
          {"device": "cpu", "gflops": {"L30": 2.0}})
    bench.write_metrics(Namespace(datasets=[dataset], candidates=candidates, scores=scores, out=tmp_path / "out",
                                  fusion_weight=0.5))
    results = json.loads((tmp_path / "out" / "beir_scifact_test__matroyshka.json").read_text())
    assert results["L30"]["RR@10"] == pytest.approx(1 / 3)
    fused = interpolate(run.qid, run.score, pd.Series([1.0, 0.0, 0.1]), 0.5)
    assert fused[1] < fused[0] and fused[1] > fused[2]
    assert results["L30 + BM25"]["RR@10"] == pytest.approx(1 / 2) and results["L30 + BM25"]["gflops"] == 2.0
    meta = json.loads((tmp_path / "out" / "beir_scifact_test__bm25.json").read_text())
    assert meta["fusion_weight"] == 0.5 and meta["RR@10"] == pytest.approx(1 / 2)
    table = bench.report(tmp_path / "out")
    assert "| nDCG@10 + BM25 |" in table
    row = next(line for line in table.splitlines() if line.startswith("| matroyshka | L30 |"))
    assert row.split(" | ")[4] == f"{results['L30 + BM25']['nDCG@10']:.4f}"
    assert "nDCG@10 + BM25" not in bench.report(tmp_path / "out", fused=False)


def test_compressed_pass_scores_only_exits_after_its_layer(bench):
    assert bench.scored_exits(1, compress_at=8) == bench.EXITS
    assert bench.scored_exits(4, compress_at=8) == [e for e in bench.EXITS if e > 8]
    assert bench.scored_exits(4, compress_at=8, exits=[6, 10, 15]) == [10, 15]
    assert str(bench.single_shape(30, 4, compress_at=8)) == "L30:r4@8"
    assert str(bench.single_shape(30, 1, compress_at=8)) == "L30"


def test_merge_a_folder_listed_first_replaces_a_shape(bench, tmp_path):
    name = "vaswani__matroyshka"
    write(tmp_path / "old", name, pd.DataFrame({"qid": ["1"], "docno": ["x"], "score_L30": [1.0], "score_L30:r4@4": [2.0]}),
          {"device": "cpu", "shape_seconds": {"L30": 5.0, "L30:r4@4": 3.0}, "gflops": {"L30": 33.0, "L30:r4@4": 16.0}})
    write(tmp_path / "new", name, pd.DataFrame({"qid": ["1"], "docno": ["x"], "score_L30:r4@4": [7.0]}),
          {"device": "cpu", "shape_seconds": {"L30:r4@4": 2.5}, "gflops": {"L30:r4@4": 16.0}})
    bench.merge_scores([tmp_path / "new", tmp_path / "old"], tmp_path / "all")
    merged = pd.read_parquet(tmp_path / "all" / f"{name}.parquet")
    assert merged.to_dict("list") == {"qid": ["1"], "docno": ["x"], "score_L30:r4@4": [7.0], "score_L30": [1.0]}
    timing = json.loads((tmp_path / "all" / f"{name}.timing.json").read_text())
    assert timing["shape_seconds"] == {"L30": 5.0, "L30:r4@4": 2.5}


def test_significance_against_the_same_system_scored_elsewhere(bench, tmp_path, capsys):
    candidates = tmp_path / "candidates"
    candidates.mkdir()
    run = pd.DataFrame({"qid": ["1", "1", "2", "2"], "docno": ["a", "b", "c", "d"], "score": [2.0, 1.0, 2.0, 1.0],
                        "rank": [0, 1, 0, 1]})
    run.to_parquet(candidates / "beir_scifact_test.run.parquet")
    pd.DataFrame({"qid": ["1", "2"], "docno": ["b", "d"], "label": [1, 1]}).to_parquet(
        candidates / "beir_scifact_test.qrels.parquet")
    # the new training puts the relevant document first for query 1 only; the old one never does
    for folder, column in (("new", [0.0, 1.0, 1.0, 0.0]), ("old", [1.0, 0.0, 1.0, 0.0])):
        write(tmp_path / folder, "beir_scifact_test__stage1",
              run[["qid", "docno"]].assign(score_L30=column), {"device": "cpu"})
    bench.significance(Namespace(datasets=["beir/scifact/test"], candidates=candidates, scores=tmp_path / "new",
                                 systems=["stage1"], versus="stage1", versus_scores=tmp_path / "old",
                                 fusion_weight=0.5))
    out = capsys.readouterr().out
    ndcg_second = 1 / 1.5849625007211562  # log2(3): the relevant document at rank 2
    assert f"the same shape of stage1 in {tmp_path / 'old'}" in out
    assert f"| stage1 | L30 | {(1 - ndcg_second) / 2:+.4f} |" in out


def test_candidates_get_each_documents_text_in_the_runs_order(bench, tmp_path):
    run = pd.DataFrame({"qid": ["1", "1", "2"], "query": ["q"] * 3, "docno": ["a", "b", "a"],
                        "rank": [0, 1, 0], "score": [12.34, 5.0, 7.96]})
    run.to_parquet(tmp_path / "vaswani.run.parquet")
    pd.DataFrame({"docno": ["a", "b"], "text": ["alpha", "beta"]}).to_parquet(tmp_path / "vaswani.docs.parquet")
    frame = bench.read_candidates("vaswani", tmp_path)
    assert frame["text"].tolist() == ["alpha", "beta", "alpha"]
    assert frame[["qid", "docno"]].equals(run[["qid", "docno"]])  # the user's rows, in their order


def test_a_run_file_with_its_own_texts_gives_each_pair_its_passage(bench, tmp_path):
    run = pd.DataFrame({"qid": ["1", "2"], "query": ["q1", "q2"], "docno": ["a", "a"], "rank": [0, 0],
                        "score": [2.0, 1.0], "text": ["alpha for q1", "alpha for q2"]})
    run.to_parquet(tmp_path / "vaswani.run.parquet")
    pd.DataFrame({"docno": ["a"], "text": ["alpha"]}).to_parquet(tmp_path / "vaswani.docs.parquet")
    assert bench.read_candidates("vaswani", tmp_path)["text"].tolist() == ["alpha for q1", "alpha for q2"]
