"""experiments/select_sentences.py: each candidate pair gets the sentences of its document that match its query."""
from __future__ import annotations

import pandas as pd


def test_selected_run_rewrites_each_pairs_text_and_keeps_the_rows(load_experiment):
    bench = load_experiment("select_sentences")
    body = "Cells grow. Mice eat fat daily. A grant paid."
    run = pd.DataFrame({"qid": ["2", "1"], "query": ["grant", "fat mice"], "docno": ["d", "d"], "rank": [0, 0],
                        "score": [1.0, 2.0], "text": ["T " + body] * 2})
    docs = pd.DataFrame({"docno": ["d"], "title": ["T"], "body": [body]})
    selector = load_experiment("sentence_selection").SentenceSelector(6, text_field="body", title_field="title")
    out = bench.selected_run(run, docs, selector)
    assert out.columns.tolist() == run.columns.tolist()
    pd.testing.assert_frame_equal(out.drop(columns="text"), run.drop(columns="text"))
    assert out["text"].tolist() == ["T Cells grow. A grant paid.", "T Mice eat fat daily."]
