"""experiments/sentence_selection.py: query-aware sentence selection: the sentences of a long document that best match the query, in budget."""
from __future__ import annotations

import pandas as pd
import pytest



@pytest.fixture(scope="module")
def sel(load_experiment):
    """experiments/sentence_selection.py (a measured try, not part of the package)."""
    return load_experiment("sentence_selection")


@pytest.fixture(scope="module")
def words(sel):
    return sel.token_counter()  # whitespace words

BODY = ("Background on cells is given here. Mice were fed a diet rich in fat. "
        "Obesity raised tumour growth in mice. Funding came from a grant.")


def test_terms_drop_stopwords_and_meet_at_a_prefix(sel):
    assert sel.terms("The compression of compressed Tumours") == {"compre", "tumour"}


def test_sentences_split_after_end_punctuation_and_join_back(sel):
    pieces = sel.sentences(BODY)
    assert pieces == ["Background on cells is given here.", "Mice were fed a diet rich in fat.",
                      "Obesity raised tumour growth in mice.", "Funding came from a grant."]
    assert " ".join(pieces) == BODY
    assert sel.sentences("e.g. this and 3.5 mg stay whole.") == ["e.g. this and 3.5 mg stay whole."]


def test_a_text_within_budget_is_left_whole(sel, words):
    assert sel.select("tumour", BODY, budget=100, count=words, idf={"tumour": 2.0}) == BODY


def test_the_best_matching_sentences_are_kept_in_document_order_within_budget(sel, words):
    idf = {"obesit": 3.0, "tumour": 2.0, "mice": 0.1}
    out = sel.select("obesity and tumours in mice", BODY, budget=14, count=words, idf=idf)
    # the obesity/tumour sentence (6 words) first, then the next best that fits: the diet one (8 words; "mice")
    assert out == "Mice were fed a diet rich in fat. Obesity raised tumour growth in mice."
    assert words(out) <= 14


def test_unmatched_room_is_filled_from_the_start_and_a_sentence_too_long_is_skipped(sel, words):
    out = sel.select("grant", BODY, budget=12, count=words, idf={"grant": 1.0})
    # the grant sentence (5), then from the start: background (6) fits, the diet sentence (8) does not
    assert out == "Background on cells is given here. Funding came from a grant."


def test_the_title_stays_in_front_and_counts_against_the_budget(sel, words):
    out = sel.select("grant", BODY, budget=8, count=words, idf={"grant": 1.0}, title="A Title")
    assert out == "A Title Funding came from a grant."


def test_nothing_fits_gives_the_text_back_for_the_reranker_to_cut(sel, words):
    assert sel.select("grant", BODY, budget=3, count=words, idf={"grant": 1.0}) == BODY


def test_idf_is_higher_for_rarer_terms(sel):
    idf = sel.idf_over(["tumour mice", "mice diet", "mice diet"])
    assert idf["tumour"] > idf["diet"] > idf["mice"] > 0


def frame() -> pd.DataFrame:
    other = "Mice are common. Diet matters for mice. Mice sleep in the day and at night."
    return pd.DataFrame({"qid": ["q2", "q1", "q2", "q1"], "query": ["grant", "obesity tumour", "grant", "diet"],
                         "docno": ["d1", "d1", "d2", "d2"], "text": [BODY, BODY, other, other],
                         "score": [4.0, 3.0, 2.0, 1.0]}, index=[7, 7, 3, 3])  # repeated labels on purpose


def test_selector_keeps_rows_order_and_the_original_text(sel):
    inp = frame()
    out = sel.SentenceSelector(budget=11)(inp)
    assert out.index.tolist() == [7, 7, 3, 3]
    pd.testing.assert_frame_equal(out.drop(columns=["text", "text_full"]), inp.drop(columns=["text"]))
    assert out["text_full"].tolist() == inp["text"].tolist()
    assert out["text"].tolist() == ["Background on cells is given here. Funding came from a grant.",
                                    "Obesity raised tumour growth in mice. Funding came from a grant.",
                                    "Mice are common. Diet matters for mice.",  # no match: from the start
                                    "Mice are common. Diet matters for mice."]


def test_selector_reads_a_title_column_and_counts_real_tokens(sel, golden_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(golden_dir / "tiny-matroyshka")
    count = sel.token_counter(tokenizer)
    inp = frame().drop(columns=["text"]).assign(title="Fat and tumours", body=BODY)
    budget = count("Fat and tumours") + count("Obesity raised tumour growth in mice.") + 1
    out = sel.SentenceSelector(budget, tokenizer, text_field="body", title_field="title")(inp)
    assert out["body"].iloc[1] == "Fat and tumours Obesity raised tumour growth in mice."
    assert all(count(text) <= budget for text in out["body"])


def test_selector_names_what_is_missing_and_refuses_a_useless_budget(sel):
    with pytest.raises(ValueError, match="budget=0"):
        sel.SentenceSelector(budget=0)
    with pytest.raises(KeyError, match="title"):
        sel.SentenceSelector(10, title_field="title")(frame())


def test_for_scorer_fills_what_the_scorer_reads_less_the_prefix(sel, golden_dir):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(golden_dir / "tiny-matroyshka")
    prefix = len(tokenizer("B: ", add_special_tokens=False)["input_ids"])
    reranker = SimpleNamespace(scorer=SimpleNamespace(tokenizer=tokenizer, max_length=128))
    selector = sel.SentenceSelector.for_scorer(reranker, text_field="body")
    assert (selector.budget, selector.text_field) == (128 - prefix - 1, "body")
    assert selector.count("Obesity raised tumour growth.") == len(
        tokenizer(" Obesity raised tumour growth.", add_special_tokens=False)["input_ids"])
