"""Sharded, resumable re-ranking: the shard files (kill at any moment, damage, a second job), the Python API
with a stand-in re-ranker, and the command under torchrun (gloo, 2 CPU processes) with the golden checkpoint."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyterrier as pt
import pytest

from pyterrier_matroyshka.candidate_stream import FrameCandidates, TrecRunCandidates
from pyterrier_matroyshka.cli import main
from pyterrier_matroyshka.errors import UserError
from pyterrier_matroyshka.shard_store import DamagedShardError, JobMismatchError, ShardStore
from pyterrier_matroyshka.sharded import TEST_STOP_VARIABLE, rerank_sharded
from pyterrier_matroyshka.trec import format_trec_run, write_trec_run

REPO = Path(__file__).resolve().parent.parent


# -- the shard files ------------------------------------------------------------------------------------------
def _lines(qid: str, n: int = 3) -> str:
    return format_trec_run(pd.DataFrame({"qid": [qid] * n, "docno": [f"{qid}d{i}" for i in range(n)],
                                         "score": [float(n - i) for i in range(n)]}), "t")


def test_a_killed_writers_unfinished_tail_is_cut_off_and_never_counted(tmp_path):
    store = ShardStore(tmp_path / "parts")
    with store.writer(0) as writer:
        for qid in ("a", "b"):
            writer.append(qid, _lines(qid), 3, 0.1)
    shard, manifest = store.shard_paths(0)
    with open(shard, "ab") as f:  # killed while appending query c: its lines half written...
        f.write(_lines("c").encode()[:20])
    with open(manifest, "ab") as f:  # ...or written, with its manifest line cut short
        f.write(b'{"qid": "c", "offs')
    assert list(store.finished()) == ["a", "b"] and store.count_records(0)[0] == 2
    with store.writer(0) as writer:  # the next writer of the shard cuts the tail off
        writer.append("c", _lines("c"), 3, 0.1)
    assert store.merge(["c", "a", "b"], tmp_path / "out.run") == 9
    assert (tmp_path / "out.run").read_text() == _lines("c") + _lines("a") + _lines("b")


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "garble the manifest"])
def test_a_damaged_shard_is_refused_naming_the_file_and_the_fix(tmp_path, damage):
    store = ShardStore(tmp_path / "parts")
    with store.writer(0) as writer:
        for qid in ("a", "b", "c"):
            writer.append(qid, _lines(qid), 3, 0.1)
    shard, manifest = store.shard_paths(0)
    if damage == "flip a byte":
        data = bytearray(shard.read_bytes())
        data[len(_lines("a")) + 5] ^= 1
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-10])
    else:
        lines = manifest.read_text().splitlines(keepends=True)
        manifest.write_text(lines[0] + "not json\n" + lines[2])
    named = str(manifest) if damage == "garble the manifest" else str(shard)
    with pytest.raises(DamagedShardError, match="delete") as err:
        store.writer(0)
    assert named in str(err.value)
    with pytest.raises(DamagedShardError):
        store.merge(["a", "b", "c"], tmp_path / "out.run")
    assert not (tmp_path / "out.run").exists()


def test_a_second_job_cannot_write_the_same_shard(tmp_path):
    store = ShardStore(tmp_path / "parts")
    with store.writer(0):
        with pytest.raises(UserError, match="another process"):
            ShardStore(tmp_path / "parts").writer(0)


# -- the Python API, with a stand-in re-ranker (no model) ------------------------------------------------------
def _candidates(queries: int = 7, docs: int = 4) -> pd.DataFrame:
    rows = [{"qid": f"q{q}", "query": f"query {q}", "docno": f"d{q}-{d}", "score": float(d), "text": f"text {q} {d}"}
            for q in range(queries) for d in range(docs)]
    return pd.DataFrame(rows)


class _FailAfter(pt.Transformer):
    """Scores by text length; raises on the query after ``limit`` (a job that dies midway)."""

    def __init__(self, limit=None):
        self.limit, self.calls = limit, 0

    def transform(self, inp):
        self.calls += 1
        if self.limit is not None and self.calls > self.limit:
            raise KeyboardInterrupt("stopped")
        return pt.model.add_ranks(inp.assign(score=inp["text"].str.len() + inp["score"] * 0.5))


def test_python_api_resumes_where_it_stopped_and_refuses_other_arguments(tmp_path):
    candidates = FrameCandidates(_candidates())
    reference = tmp_path / "reference.run"
    rerank_sharded(candidates, _FailAfter(), reference, arguments={"model": "m"}, progress=False)
    assert not (tmp_path / "reference.run.parts").exists()  # the work folder goes once merged

    out = tmp_path / "out.run"
    with pytest.raises(KeyboardInterrupt):
        rerank_sharded(candidates, _FailAfter(limit=3), out, arguments={"model": "m", "adapters": ("a",)},
                       progress=False)
    assert not out.exists() and ShardStore(tmp_path / "out.run.parts").count_records(0)[0] == 3
    with pytest.raises(JobMismatchError, match="model: started with 'm', now 'other'"):
        rerank_sharded(candidates, _FailAfter(), out, arguments={"model": "other", "adapters": ("a",)},
                       progress=False)
    resumed = _FailAfter()
    summary = rerank_sharded(candidates, resumed, out, arguments={"model": "m", "adapters": ("a",)}, progress=False)
    assert resumed.calls == 4 and summary.ranks[0].skipped == 3 and summary.ranks[0].queries == 4
    assert out.read_bytes() == reference.read_bytes()
    assert summary.lines == 28 and summary.queries == 7 and summary.pairs == 16


def test_a_run_file_is_streamed_with_topics_and_text(tmp_path):
    frame = _candidates(queries=3, docs=5)
    run = write_trec_run(frame, tmp_path / "in.run")
    texts = dict(zip(frame["docno"], frame["text"]))
    source = TrecRunCandidates(run, frame[["qid", "query"]].drop_duplicates(),
                               lambda df: df.assign(text=df["docno"].map(texts)), top_k=2, max_queries=2)
    loaded = [(qid, load()) for qid, load in source]
    assert [qid for qid, _ in loaded] == ["q0", "q1"]
    assert list(loaded[1][1]["docno"]) == ["d1-4", "d1-3"] and list(loaded[1][1]["query"]) == ["query 1"] * 2
    unknown = TrecRunCandidates(run, {"q0": "x"}, lambda df: df)
    with pytest.raises(UserError, match=r"2 qid\(s\) are not among the topics given: \['q1', 'q2'\]"):
        list(unknown)


# -- the command: torchrun with 2 processes, the golden checkpoint ----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", **extra)


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_checkpoint, data_dir):
    """A BM25 run of 6 Cranfield queries x 8 documents, the rerank arguments, and the one-process output."""
    from pyterrier_matroyshka.offline.bm25 import bm25
    from pyterrier_matroyshka.offline.collections import pt_dataset

    folder = tmp_path_factory.mktemp("sharded")
    topics = pt_dataset("cranfield").get_topics().head(6)
    run = write_trec_run(bm25("cranfield", num_results=8)(topics), folder / "bm25.run")
    args = ["rerank", "--dataset", "cranfield", "--run-file", str(run), "--model", str(tiny_checkpoint), "--dtype", "fp32",
            "--shape", "L6", "--max-length", "48", "--batch-size", "4"]
    reference = folder / "one-process.run"
    _main_one_thread([*args, "--output", str(reference)])
    assert len(reference.read_text().splitlines()) == 48
    return args, reference


def _main_one_thread(argv) -> None:
    """The command in this process with one thread, as each torchrun worker has."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(argv)
    finally:
        torch.set_num_threads(threads)


def _torchrun(args, output, **env) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "pyterrier_matroyshka", *args, "--output", str(output)]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=_env(**env), cwd=REPO)


def test_two_processes_write_the_one_process_output_byte_for_byte(job, tmp_path):
    args, reference = job
    out = tmp_path / "two.run"
    done = _torchrun(args, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_bytes() == reference.read_bytes()
    table = [line.split() for line in done.stdout.splitlines() if line.split()[:1] in (["0"], ["1"], ["total"])]
    assert [row[0] for row in table] == ["0", "1", "total"]
    assert [int(row[2]) for row in table] == [3, 3, 6]  # the 1st, 3rd, 5th query on rank 0, the others on rank 1
    assert "wrote 48 rows for 6 queries" in done.stdout


def test_a_rank_that_dies_midway_is_resumed_even_by_another_number_of_processes(job, tmp_path, capsys):
    args, reference = job
    out = tmp_path / "two.run"
    died = _torchrun(args, out, **{TEST_STOP_VARIABLE: "1:1:exit"})  # rank 1 dies after its first query
    assert died.returncode != 0 and not out.exists()
    finished = ShardStore(tmp_path / "two.run.parts").finished()
    assert "2" in finished and len(finished) < 6  # qid "2": the second query, rank 1's first

    capsys.readouterr()
    _main_one_thread([*args, "--output", str(out)])  # resumed by one process
    assert out.read_bytes() == reference.read_bytes()
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["0"])
    assert int(row[3]) == len(finished) and int(row[2]) == 6 - len(finished)


def test_a_job_killed_with_sigkill_resumes_and_a_damaged_shard_is_detected(job, tmp_path, capsys):
    args, reference = job
    out = tmp_path / "one.run"
    command = [sys.executable, "-m", "pyterrier_matroyshka", *args, "--output", str(out)]
    process = subprocess.Popen(command, env=_env(**{TEST_STOP_VARIABLE: "0:2:hold"}), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = ShardStore(tmp_path / "one.run.parts")
    try:
        deadline = time.time() + 180
        while store.count_records(0)[0] < 2 and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert store.count_records(0)[0] == 2, process.stderr.read().decode()[-3000:] if process.poll() else "timeout"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        process.stderr.close()
    assert not out.exists()
    with pytest.raises(JobMismatchError, match="shape"):
        _main_one_thread([*[a if a != "L6" else "L4" for a in args], "--output", str(out)])

    shard = store.shard_paths(0)[0]
    intact = shard.read_bytes()
    shard.write_bytes(intact.replace(b" Q0 ", b" Q1 ", 1))
    with pytest.raises(DamagedShardError, match=str(shard)):
        _main_one_thread([*args, "--output", str(out)])
    shard.write_bytes(intact)

    capsys.readouterr()
    _main_one_thread([*args, "--output", str(out)])
    assert out.read_bytes() == reference.read_bytes()
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["0"])
    assert row[2:4] == ["4", "2"]  # 4 queries scored now, 2 skipped
    assert not store.folder.exists()


def test_the_benchmark_table_reports_scaling_against_one_process_one_thread(load_bench):
    bench = load_bench("bench_sharded")
    args = type("Args", (), dict(queries=2, top_k=3, shape="L4", max_length=128, batch_size=32))()

    def result(processes, threads, per_rank, sha="same"):
        ranks = [{"pairs_per_second": rate, "peak_rss_mb": 900.0} for rate in per_rank]
        return {"processes": processes, "threads": threads, "pairs_per_second": sum(per_rank), "seconds": 10.0,
                "wall_seconds": 20.0, "output_sha256": sha, "ranks": ranks}

    table = bench.report(args, {"queries": 2, "pairs": 6}, [result(1, 1, [10.0]), result(2, 1, [9.0, 8.0]),
                                                              result(1, 2, [15.0], sha="other")], "1 / 2")
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "x" in line[:6]]
    assert [row[3].strip() for row in rows] == ["1.00", "0.85", "0.75"]  # 17 / (2 x 10), 15 / (2 x 10)
    assert [row[-1].strip() for row in rows] == ["yes", "yes", "NO"]


def test_an_ungrouped_run_is_refused_naming_the_line_and_the_fix(tmp_path):
    from pyterrier_matroyshka.trec import iter_trec_run

    run = tmp_path / "ungrouped.run"
    run.write_text("1 Q0 a 1 2.0 x\n1 Q0 b 2 1.0 x\n2 Q0 c 1 3.0 x\n1 Q0 d 3 0.5 x\n")
    with pytest.raises(UserError, match=r"ungrouped.run, line 4: query '1' comes back after other queries.*"
                                        r"write_trec_run\(read_trec_run\(path\), grouped_path\)"):
        list(iter_trec_run(run))
