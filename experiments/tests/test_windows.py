"""experiments/windows.py: documents split into titled windows, and window scores back to document scores (MaxP)."""
from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def windows(load_experiment):
    return load_experiment("windows")


DOCS = pd.DataFrame({"docno": ["a", "b"], "title": ["Title A", ""], "body": ["w1 w2 w3 w4 w5", "w1 w2"]})


def test_windows_prepend_the_title_to_every_window_of_the_body(windows):
    parts = windows.windows(DOCS, length=3, stride=2)  # whitespace words without a tokenizer
    assert parts["docno"].tolist() == ["a%p0", "a%p1", "b%p0"]
    assert parts["text"].tolist() == ["Title A w1 w2 w3", "Title A w3 w4 w5", "w1 w2"]  # b: untitled, one window


def test_windowed_run_repeats_each_candidate_per_window(windows):
    parts = windows.windows(DOCS, length=3, stride=2)
    run = pd.DataFrame({"qid": ["1", "1", "2"], "docno": ["b", "a", "a"], "rank": [0, 1, 0], "score": [3., 2., 5.]})
    out = windows.windowed_run(run, parts)
    assert list(zip(out["qid"], out["docno"], out["rank"])) == [("1", "b%p0", 0), ("1", "a%p0", 1), ("1", "a%p1", 1),
                                                                 ("2", "a%p0", 0), ("2", "a%p1", 0)]
    with pytest.raises(ValueError, match="no windows"):
        windows.windowed_run(run.assign(docno=["b", "a", "zzz"]), parts)


def test_max_passage_keeps_each_documents_best_window_per_column(windows):
    scores = pd.DataFrame({"qid": ["1", "1", "1", "2"], "docno": ["d%p0", "d%p1", "e%p0", "d%p0"],
                           "score_L30": [1.0, 3.0, 2.0, -1.0], "score_L15": [5.0, 0.0, 1.0, 0.5]})
    best = windows.max_passage(scores)
    assert best.to_dict("list") == {"qid": ["1", "1", "2"], "docno": ["d", "e", "d"],
                                    "score_L30": [3.0, 2.0, -1.0], "score_L15": [5.0, 1.0, 0.5]}


def test_docnos_with_the_separator_keep_their_own(windows):
    assert windows.parent(pd.Series(["x%py%p2", "plain%p0"])).tolist() == ["x%py", "plain"]


def test_whole_document_scores_stand_for_window_zero_on_common_queries(windows, tmp_path):
    def write(folder, frame):
        folder.mkdir()
        frame.to_parquet(folder / "ds__m.parquet")
        (folder / "ds__m.timing.json").write_text('{"device": "cpu"}')

    write(tmp_path / "later", pd.DataFrame({"qid": ["1", "1"], "docno": ["d%p1", "d%p2"], "score_L30": [4.0, 0.0]}))
    write(tmp_path / "whole", pd.DataFrame({"qid": ["1", "1", "9"], "docno": ["d", "e", "d"],
                                            "score_L30": [2.0, 1.0, 7.0]}))
    windows.max_passage_folder([tmp_path / "later", tmp_path / "whole"], tmp_path / "out")
    best = pd.read_parquet(tmp_path / "out" / "ds__m.parquet")
    assert best.to_dict("list") == {"qid": ["1", "1"], "docno": ["d", "e"], "score_L30": [4.0, 1.0]}  # 9: unscored
