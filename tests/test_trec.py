"""TREC run file I/O (pure pandas)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pyterrier_matroyshka.trec import read_trec_run, write_trec_run

SHARED_RUN = Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-passage-dl19" / "bm25_top100.run"


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "qid": ["q2", "q2", "q1", "q1", "q1"],
        "docno": ["d9", "d8", "d1", "d2", "d3"],
        "score": [0.5, 1.25, -3.0, 7.123456789012345, -3.0],
        "rank": [9, 9, 9, 9, 9],  # ignored: ranks come from the scores
    })


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    path = write_trec_run(_frame(), tmp_path / "run.txt", run_name="test")
    lines = path.read_text().splitlines()
    assert lines[0] == "q2 Q0 d8 1 1.25 test"
    assert lines[1] == "q2 Q0 d9 2 0.5 test"
    assert lines[2].split()[:4] == ["q1", "Q0", "d2", "1"]
    # ties keep frame order
    assert [line.split()[2] for line in lines[3:]] == ["d1", "d3"]

    back = read_trec_run(path)
    assert list(back.columns) == ["qid", "docno", "score", "rank"]
    assert back["docno"].tolist() == ["d8", "d9", "d2", "d1", "d3"]
    assert back["rank"].tolist() == [0, 1, 0, 1, 2]
    assert back["score"].tolist()[2] == 7.123456789012345  # full precision
    assert back["qid"].map(type).eq(str).all() and back["docno"].map(type).eq(str).all()


def test_numeric_looking_ids_stay_strings(tmp_path: Path) -> None:
    path = tmp_path / "run.gz"
    write_trec_run(pd.DataFrame({"qid": [1, 1], "docno": ["007", "10"], "score": [1.0, 2.0]}), path)
    back = read_trec_run(path)
    assert back["qid"].tolist() == ["1", "1"] and back["docno"].tolist() == ["10", "007"]


@pytest.mark.parametrize("bad, reason", [
    ("q1 Q0 d3 3 1.0\n", "expected 6 fields"),
    ("q1 Q0 d3 x 1.0 run\n", "rank 'x' is not an integer"),
    ("q1 Q0 d3 3 high run\n", "score 'high' is not a number"),
])
def test_malformed_line_names_its_number(tmp_path: Path, bad: str, reason: str) -> None:
    path = tmp_path / "bad.run"
    path.write_text("q1 Q0 d1 1 3.0 run\n\nq1 Q0 d2 2 2.0 run\n" + bad)
    with pytest.raises(ValueError, match=rf"line 4: {reason}"):
        read_trec_run(path)


def test_write_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lacks column"):
        write_trec_run(pd.DataFrame({"qid": ["q"], "docno": ["d"]}), tmp_path / "x")
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run(pd.DataFrame({"qid": ["q 1"], "docno": ["d"], "score": [1.0]}), tmp_path / "x")


def test_empty_run(tmp_path: Path) -> None:
    path = write_trec_run(pd.DataFrame({"qid": [], "docno": [], "score": []}), tmp_path / "empty")
    assert path.read_text() == ""
    assert read_trec_run(path).empty


@pytest.mark.integration
@pytest.mark.skipif(not SHARED_RUN.is_file(), reason=f"shared DL19 run file not found at {SHARED_RUN}")
def test_reads_anserini_run() -> None:
    run = read_trec_run(SHARED_RUN)
    assert len(run) == 4300 and run["qid"].nunique() == 43
    assert (run.groupby("qid")["rank"].max() == 99).all()
