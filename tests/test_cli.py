"""The command line on real data (Cranfield), with the tiny golden checkpoint for speed."""
from __future__ import annotations

import pytest

from pyterrier_matroyshka.cli import default_shapes, main
from pyterrier_matroyshka.errors import UserError
from pyterrier_matroyshka.trec import read_trec_run, write_trec_run


@pytest.fixture(scope="module")
def bm25_run(tmp_path_factory, data_dir):
    from pyterrier_matroyshka.offline.bm25 import bm25
    from pyterrier_matroyshka.offline.collections import pt_dataset

    topics = pt_dataset("cranfield").get_topics().head(4)
    return write_trec_run(bm25("cranfield", num_results=10)(topics), tmp_path_factory.mktemp("runs") / "bm25.run")


def test_rerank_evaluate_round_trip(bm25_run, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "reranked.run"
    main(["rerank", "--dataset", "cranfield", "--run", str(bm25_run), "--model", str(tiny_checkpoint),
          "--dtype", "fp32", "--shape", "L6:r2@2", "--output", str(out)])
    assert "wrote 40 rows for 4 queries" in capsys.readouterr().out
    before, after = read_trec_run(bm25_run), read_trec_run(out)
    assert set(zip(before.qid, before.docno)) == set(zip(after.qid, after.docno))
    assert not after.score.equals(before.score)
    main(["evaluate", "--dataset", "cranfield", str(bm25_run), str(out)])
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["name", "nDCG@10", "p(nDCG@10)", "RR@10", "p(RR@10)"]  # pt.Experiment's, vs. the first
    assert [row.split()[0] for row in rows] == [str(bm25_run), str(out)] and rows[0].split()[2] == "-"
    assert 0 <= float(rows[1].split()[2]) <= 1


def test_experiment_table(tiny_checkpoint, data_dir, capsys):
    main(["experiment", "--dataset", "cranfield", "--queries", "3", "--top-k", "10", "--model", str(tiny_checkpoint),
          "--dtype", "fp32", "--shapes", "L8", "L4", "L8:r2@2"])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    header = lines[-5].split()
    assert header == ["name", "nDCG@10", "p(nDCG@10)", "RR@10", "p(RR@10)", "GFLOP/pair", "mrt"]
    names = [line.split()[0] for line in lines[-4:]]
    assert names == ["BM25", "L8", "L4", "L8:r2@2"]
    flops = {line.split()[0]: float(line.split()[5]) for line in lines[-3:]}
    assert flops["L4"] < flops["L8"] and flops["L8:r2@2"] < flops["L8"]
    # said up front: what will run and roughly how long; then each row as it finishes; bars on stderr
    plan = lines[:lines.index(next(line for line in lines if line.startswith("  total")))]
    assert "3 queries, top 10 candidates" in plan[0] and [line.split()[0] for line in plan[1:]] == ["BM25", *names[1:]]
    assert all("min" in line for line in plan[2:])
    finished = [line for line in lines if "so far)" in line]
    assert [line.split()[0] for line in finished] == names and "nDCG@10" in finished[1]
    assert "matroyshka L8:r2@2" in captured.err and "30/30" in captured.err


def test_malformed_run_names_the_line(tmp_path, tiny_checkpoint, data_dir):
    bad = tmp_path / "bad.run"
    bad.write_text("1 Q0 d1 1 2.0 x\n1 Q0 d2 two\n")
    with pytest.raises(ValueError, match="line 2"):
        main(["rerank", "--dataset", "cranfield", "--run", str(bad), "--model", str(tiny_checkpoint),
              "--dtype", "fp32", "--output", str(tmp_path / "o.run")])


def test_default_shapes_for_30_layers():
    assert default_shapes(list(range(4, 31))) == ["L30", "L20", "L10", "L30:r2@4", "L30:r4@4"]


def test_evaluate_averages_over_the_run_queries_only(data_dir):
    import pandas as pd

    from pyterrier_matroyshka.shape_comparison import evaluate

    qrels = pd.DataFrame({"qid": ["1", "2", "3"], "docno": ["a", "b", "c"], "label": [1, 1, 1]})
    run = pd.DataFrame({"qid": ["1", "2"], "docno": ["a", "x"], "score": [1.0, 1.0]})
    assert evaluate(run, qrels)["RR@10"] == 0.5  # query 3 is not part of this experiment
    assert evaluate(run, qrels, queries=["1", "2", "3"])["RR@10"] == pytest.approx(1 / 3)


def test_merge_compensation_flag_keeps_the_scores(bm25_run, tiny_checkpoint, tmp_path):
    """--merge-compensation runs the compensation adapter merged: the same run as the LoRA path, and
    not the run without the adapter."""
    compensation = ["--compensation", str(tiny_checkpoint / "compensate/layer/full")]
    runs = {}
    for name, extra in {"merged": [*compensation, "--merge-compensation"],
                        "lora": [*compensation, "--no-merge-compensation"], "none": []}.items():
        runs[name] = tmp_path / f"{name}.run"
        main(["rerank", "--dataset", "cranfield", "--run", str(bm25_run), "--model", str(tiny_checkpoint),
              "--dtype", "fp32", *extra, "--output", str(runs[name])])
    merged, lora, none = (read_trec_run(path).sort_values(["qid", "docno"]) for path in runs.values())
    assert merged.score.to_numpy() == pytest.approx(lora.score.to_numpy(), abs=1e-4)
    assert merged.score.to_numpy() != pytest.approx(none.score.to_numpy(), abs=1e-2)


def test_experiment_fuse_adds_a_fused_row_per_shape(tiny_checkpoint, data_dir, capsys):
    main(["experiment", "--dataset", "cranfield", "--queries", "3", "--top-k", "10", "--model", str(tiny_checkpoint),
          "--dtype", "fp32", "--shapes", "L8", "L4", "--fuse", "1"])
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()[-5:]]
    assert [row[0] for row in rows] == ["BM25", "L8", "L8", "L4", "L4"]
    assert rows[2][1:4] == ["+", "BM25", "(1)"]
    # at weight 1 the fused ranking is BM25's own, whatever the shape (nDCG@10 and RR@10; p-values 1 or NaN)
    assert [rows[2][4], rows[2][6]] == [rows[0][1], rows[0][3]] and [rows[4][4], rows[4][6]] == [rows[0][1], rows[0][3]]


def test_rerank_fuse_writes_the_interpolated_run(bm25_run, tiny_checkpoint, tmp_path):
    from pyterrier_matroyshka.fusion import interpolate

    runs = {}
    for name, extra in {"plain": [], "fused": ["--fuse", "0.4"]}.items():
        runs[name] = tmp_path / f"{name}.run"
        main(["rerank", "--dataset", "cranfield", "--run", str(bm25_run), "--model", str(tiny_checkpoint),
              "--dtype", "fp32", *extra, "--output", str(runs[name])])
    bm25, plain, fused = (read_trec_run(p).sort_values(["qid", "docno"]).reset_index(drop=True)
                          for p in (bm25_run, runs["plain"], runs["fused"]))
    expected = interpolate(plain.qid, bm25.score, plain.score, 0.4)
    assert fused.score.to_numpy() == pytest.approx(expected, abs=1e-4)


def test_bare_fuse_needs_a_weight_for_other_models(bm25_run, tiny_checkpoint, tmp_path):
    with pytest.raises(UserError, match="give one"):
        main(["rerank", "--dataset", "cranfield", "--run", str(bm25_run), "--model", str(tiny_checkpoint),
              "--fuse", "--output", str(tmp_path / "o.run")])


def test_fuse_weight_out_of_range_fails_before_scoring(bm25_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["rerank", "--dataset", "cranfield", "--run", str(bm25_run), "--model", "no/such-model",
              "--fuse", "-0.5", "--output", str(tmp_path / "o.run")])
    assert exit_.value.code == 2 and "outside [0, 1]" in capsys.readouterr().err


def test_per_query_values_average_to_the_aggregate():
    import pandas as pd
    from ir_measures import RR

    from pyterrier_matroyshka.shape_comparison import evaluate, evaluate_per_query

    qrels = pd.DataFrame({"qid": ["1", "2", "3"], "docno": ["a", "b", "c"], "label": [1, 1, 1]})
    run = pd.DataFrame({"qid": ["1", "1", "2"], "docno": ["x", "a", "b"], "score": [2.0, 1.0, 1.0]})
    values = evaluate_per_query(run, qrels, RR @ 10, ["1", "2", "3"])
    assert values.to_dict() == {"1": 0.5, "2": 1.0, "3": 0.0}  # query 3 has no results: 0
    assert values.mean() == pytest.approx(evaluate(run, qrels, queries=["1", "2", "3"])["RR@10"])
