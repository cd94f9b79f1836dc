"""Bad input through ``python -m pyterrier_matroyshka``: each user mistake prints one line and exits with code 2
(``--debug`` shows the traceback), data is checked before the model loads, bugs keep their traceback, and a
run that should work loses no row. Real data (Cranfield) and the tiny golden checkpoint.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyterrier_matroyshka.cli import cli
from pyterrier_matroyshka.errors import run_cli
from pyterrier_matroyshka.trec import read_trec_run, write_trec_run

REPO = Path(__file__).resolve().parent.parent
NO_MODEL = "/no/such/model"  # an error about anything else shows the model was never loaded
pytestmark = pytest.mark.usefixtures("one_thread")


def python_m(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyterrier_matroyshka", *argv], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    """The command line in this process: exit code, stdout, stderr."""
    try:
        code = cli(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def bm25_run(tmp_path_factory, data_dir) -> Path:
    from pyterrier_matroyshka.offline.bm25 import bm25
    from pyterrier_matroyshka.offline.collections import pt_dataset

    topics = pt_dataset("cranfield").get_topics().head(3)
    return write_trec_run(bm25("cranfield", num_results=5)(topics), tmp_path_factory.mktemp("runs") / "bm25.run")


@pytest.fixture
def runs(bm25_run, tmp_path) -> dict[str, Path]:
    """Broken variants of the BM25 run, one per mistake."""
    lines = bm25_run.read_text().splitlines(keepends=True)

    def edit(number: int, field: int, value: str) -> list[str]:
        fields = lines[number].split()
        fields[field] = value
        return lines[:number] + [" ".join(fields) + "\n"] + lines[number + 1:]

    variants = {
        "malformed": lines[:1] + ["1 Q0 184 two\n"] + lines[2:],
        "nan": edit(1, 4, "nan"),
        "inf": edit(2, 4, "-inf"),
        "unknown_qid": lines + ["99999 Q0 184 1 1.0 x\n"],
        "unknown_docno": edit(0, 2, "no-such-doc")[:1] + lines,  # in its query's block: runs are read query by query
    }
    paths = {name: tmp_path / f"{name}.run" for name in variants}
    for name, content in variants.items():
        paths[name].write_text("".join(content))
    paths["latin1"] = tmp_path / "latin1.run"
    paths["latin1"].write_bytes(bm25_run.read_bytes().replace(b" Q0 ", b" Q\xe90 ", 1))
    paths["empty"] = tmp_path / "empty.run"
    paths["empty"].write_text("\n")
    paths["bom"] = tmp_path / "bom.run"
    paths["bom"].write_bytes(b"\xef\xbb\xbf" + bm25_run.read_bytes())
    return paths


# ---- 7. help exits 0; one line and exit 2 for mistakes; --debug; bugs keep their traceback ---------------

def test_help_exits_0():
    done = python_m("--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m pyterrier_matroyshka"), done.stderr


@pytest.mark.parametrize("argv", [["rerank", "--help"], ["evaluate", "-h"], ["experiment", "--help"]])
def test_every_help_exits_0(argv, capsys):
    code, out, _ = run_in_process(argv, capsys)
    assert code == 0 and out.startswith(f"usage: python -m pyterrier_matroyshka {argv[0]}")


def test_a_mistake_is_one_line_and_exit_2_and_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "missing.run"
    done = python_m("evaluate", "--dataset", "cranfield", str(missing))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"python -m pyterrier_matroyshka: error: No such file or directory: {missing} (--debug for the traceback)"]
    debug = python_m("evaluate", "--dataset", "cranfield", str(missing), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


def test_a_bug_keeps_its_traceback():
    def buggy(argv):
        return 1 / 0

    with pytest.raises(ZeroDivisionError):
        run_cli(buggy, [])


# ---- 1, 4, 5, 6: every mistake named in one line, data before the model ---------------------------------

@pytest.mark.parametrize("argv, message", [
    # 1. numbers out of range
    (["rerank", "--dataset", "cranfield", "--run", "{bm25}", "--batch-size", "-1"], "--batch-size: -1 is below 1"),
    (["rerank", "--dataset", "cranfield", "--run", "{bm25}", "--batch-size", "0"], "--batch-size: 0 is below 1"),
    (["rerank", "--dataset", "cranfield", "--run", "{bm25}", "--batch-size", "abc"], "'abc' is not a whole number"),
    (["rerank", "--dataset", "cranfield", "--run", "{bm25}", "--max-length", "0"], "--max-length: 0 is below 1"),
    (["rerank", "--dataset", "cranfield", "--run", "{bm25}", "--top-k", "0"], "--top-k: 0 is below 1"),
    (["experiment", "--dataset", "cranfield", "--queries", "-2"], "--queries: -2 is below 1"),
    (["rerank", "--dataset", "cranfield", "--run", "{bm25}", "--fuse", "1.5"], r"outside \[0, 1\]"),
    (["rerank", "--dataset", "cranfield", "--run", "{bm25}", "--fuse", "abc"], "'abc' is not a number"),
    # 4 and 5. rows that would be lost, values that are not finite
    (["rerank", "--dataset", "cranfield", "--run", "{nan}"], r"nan.run, line 2: score 'nan' is not finite"),
    (["rerank", "--dataset", "cranfield", "--run", "{inf}"], r"inf.run, line 3: score '-inf' is not finite"),
    (["rerank", "--dataset", "cranfield", "--run", "{unknown_qid}"], r"qid\(s\) are not among the topics of "
                                                                      r"cranfield: \['99999'\]"),
    (["rerank", "--dataset", "cranfield", "--run", "{unknown_docno}"], r"not in the corpus of cranfield: "
                                                                        r"\['no-such-doc'\]"),
    # 6 and 7. unclear or late errors
    (["rerank", "--dataset", "cranfield", "--run", "{malformed}"], "malformed.run, line 2: expected 6 fields"),
    (["rerank", "--dataset", "cranfield", "--run", "{latin1}"], r"latin1.run, line 1: byte 0xe9 at column 4"),
    (["rerank", "--dataset", "cranfield", "--run", "{missing}"], "run file .*missing.run does not exist"),
    (["rerank", "--dataset", "cranfield", "--run", "{empty}"], "run file .*empty.run holds no lines"),
    (["rerank", "--dataset", "no/such/dataset", "--run", "{bm25}"], "unknown dataset 'no/such/dataset'"),
    (["rerank", "--dataset", "cranfield", "--run", "{bm25}", "--shape", "L8.5"], "cannot parse shape 'L8.5'"),
    (["rerank", "--dataset", "cranfield", "--run", "{bm25}", "--output", "{nowhere}"], "the folder .* does not exist"),
    (["evaluate", "--dataset", "cranfield", "{bm25}", "--measures", "Foo@3"], "unknown measure 'Foo@3'"),
    (["evaluate", "--dataset", "cranfield", "{nan}"], "line 2: score 'nan' is not finite"),
    (["rerank", "--dataset", "cranfield", "--run", "{bm25}"], f"model folder {NO_MODEL} does not exist"),
    (["budget", "--top-k", "0"], "--top-k: 0 is below 1"),
    (["budget", "--max-fraction", "-0.5"], "-0.5 must be a finite number > 0"),
    (["budget", "--time-queries", "-1"], "--time-queries: -1 is below 0"),
    (["budget", "--systems", "L6 top30 > L2"], "stage depths .* must strictly increase"),
    (["budget", "--fuse", "0.5", "--model", NO_MODEL], "budget compares the re-ranker alone: drop --fuse"),
    (["budget", "--dataset", "beir/scifact/test", "--model", NO_MODEL], "holds evaluation topics"),
    (["budget", "--max-ms", "5", "--time-queries", "0", "--model", NO_MODEL], "--max-ms needs measured times"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: command"),
])
def test_mistakes_print_one_line_and_exit_2(runs, bm25_run, tmp_path, capsys, argv, message):
    paths = {**runs, "bm25": bm25_run, "missing": tmp_path / "missing.run", "nowhere": tmp_path / "no" / "o.run"}
    argv = [a.format(**paths) for a in argv]
    if argv and argv[0] == "rerank":
        argv += ["--model", NO_MODEL] + ([] if "--output" in argv else ["--output", str(tmp_path / "out.run")])
    code, _, err = run_in_process(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "out.run").exists()


@pytest.mark.parametrize("extra, message", [
    (["--shape", "L9"], r"exit\(s\) \[9\] not among the model's exits"),
    (["--shape", "L8:r2@8"], "compression layer"),
    (["--fuse"], "--fuse without a weight means the pretrained variant's weight"),
    (["--compensation", "{full}", "{other_full}"], "are both called 'full'"),
    (["--adapters", "./no/such/adapter"], "adapter folder ./no/such/adapter does not exist"),
])
def test_model_mistakes_print_one_line_and_exit_2(bm25_run, tiny_checkpoint, tmp_path, capsys, extra, message):
    other = tmp_path / "other" / "full"
    shutil.copytree(tiny_checkpoint / "compensate/token/ratio_2", other)
    paths = {"full": tiny_checkpoint / "compensate/layer/full", "other_full": other}
    code, _, err = run_in_process(["rerank", "--dataset", "cranfield", "--run", str(bm25_run), "--model",
                                   str(tiny_checkpoint), "--output", str(tmp_path / "o.run"),
                                   *[a.format(**paths) for a in extra]], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "o.run").exists()


def test_a_damaged_checkpoint_is_named_on_the_command_line(bm25_run, tiny_checkpoint, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_checkpoint, damaged)
    tensors = load_file(str(damaged / "model.safetensors"))
    del tensors["model.layers.5.self_attn.k_proj.weight"]
    save_file(tensors, str(damaged / "model.safetensors"))
    code, _, err = run_in_process(["rerank", "--dataset", "cranfield", "--run", str(bm25_run), "--model",
                                   str(damaged), "--output", str(tmp_path / "o.run")], capsys)
    assert code == 2 and "missing 1: layers.5.self_attn.k_proj.weight" in err


# ---- runs that should work lose nothing -----------------------------------------------------------------

def _check_nothing_lost(candidates: Path, output: Path) -> None:
    before, after = read_trec_run(candidates), read_trec_run(output)
    assert len(after) == len(before)
    assert sorted(zip(after.qid, after.docno)) == sorted(zip(before.qid, before.docno))
    assert all(math.isfinite(s) for s in after.score)
    lines = [line.split() for line in output.read_text().splitlines()]
    for qid in set(after.qid):  # file ranks 1..n by descending score within each query
        mine = [(int(rank), float(score)) for q, _, _, rank, score, _ in lines if q == qid]
        assert [r for r, _ in mine] == list(range(1, len(mine) + 1))
        assert [s for _, s in mine] == sorted((s for _, s in mine), reverse=True)


def test_a_bom_run_reranks_every_row(runs, bm25_run, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out.run"
    code, stdout, err = run_in_process(["rerank", "--dataset", "cranfield", "--run", str(runs["bom"]), "--model",
                                        str(tiny_checkpoint), "--dtype", "fp32", "--batch-size", "4",
                                        "--output", str(out)], capsys)
    assert code == 0, err
    assert "wrote 15 rows for 3 queries" in stdout
    _check_nothing_lost(bm25_run, out)


def test_rows_left_out_by_a_flag_are_counted(bm25_run, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out.run"
    code, stdout, err = run_in_process(["rerank", "--dataset", "cranfield", "--run", str(bm25_run), "--model",
                                        str(tiny_checkpoint), "--dtype", "fp32", "--top-k", "2", "--queries", "2",
                                        "--fuse", "0.3", "--output", str(out)], capsys)
    assert code == 0, err
    assert "kept 4 of 15 candidate rows (--top-k 2, --queries 2)" in err
    assert "wrote 4 rows for 2 queries" in stdout and len(read_trec_run(out)) == 4
