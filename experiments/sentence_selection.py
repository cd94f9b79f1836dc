"""Query-aware sentence selection: what a short-context re-ranker should read of a long document.

The demo model reads 128 passage tokens, about the title and the first 90 tokens of a SciFact abstract
(median 291 tokens), while BM25 reads all of it. Scoring every window (MaxP, ``experiments/windows.py``) costs
3.4 times as much. This keeps the cost of one pass: the document is cut into sentences, each sentence gets
the IDF-weighted count of the query's terms it holds (IDF over the query's candidate documents), and the
best sentences are kept, in the document's order, until the token budget is full. A document that fits
the budget is left as it is; so is the title, always kept in front.

Terms are lowercased words without stopwords, cut to their first :data:`PREFIX` letters: a crude stemmer
("compress", "compression" and "compressed" meet) that needs no language resources.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Optional

import pandas as pd
import pyterrier as pt

from pyterrier_matroyshka.prompt import PASSAGE_PREFIX

PREFIX = 6
# sentence ends: ., ! or ? followed by space and an upper-case letter, a digit or an opening bracket
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he
her here hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or
other our out over own same she should so some such than that the their them then there these they this those
through to too under until up very was we were what when where which while who whom why will with would you your""".split())


def terms(text: str) -> set[str]:
    """The distinct matching terms of ``text``: lowercased words, stopwords dropped, cut to :data:`PREFIX`."""
    return {w[:PREFIX] for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


def sentences(text: str) -> list[str]:
    """``text`` split after sentence-ending punctuation (the pieces joined by a space give it back, up to
    whitespace)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def select(query: str, body: str, budget: int, count: Callable[[str], int], idf: dict[str, float],
           title: str = "") -> str:
    """``title`` and the sentences of ``body`` that best match ``query``, in the body's order, in at most
    ``budget`` units of ``count`` (the title included). Sentences are taken by their summed ``idf`` of query
    terms (earlier first on ties, so unmatched room is filled from the start of the body); a sentence that
    does not fit is skipped for the next. Where the whole text fits, or no sentence does, it is returned
    unchanged (the re-ranker's own cut then applies, and is logged)."""
    whole = f"{title} {body}".strip()
    room = budget - (count(title) if title else 0)
    pieces = sentences(body)
    if count(whole) <= budget or not pieces:
        return whole
    wanted = terms(query)
    weight = [sum(idf.get(t, 0.0) for t in terms(s) & wanted) for s in pieces]
    chosen = []
    for i in sorted(range(len(pieces)), key=lambda i: (-weight[i], i)):
        size = count(pieces[i])
        if size <= room:
            chosen.append(i)
            room -= size
    if not chosen:
        return whole
    return " ".join([title] * bool(title) + [pieces[i] for i in sorted(chosen)])


def idf_over(texts: Sequence[str]) -> dict[str, float]:
    """Smoothed IDF of each term over ``texts`` (one query's candidate documents)."""
    df = Counter(t for text in texts for t in terms(text))
    n = len(texts)
    return {t: math.log((n + 1) / (k + 0.5)) for t, k in df.items()}


def token_counter(tokenizer=None) -> Callable[[str], int]:
    """Counts a text's ``tokenizer`` tokens as a piece of a longer text (with a leading space, no special
    tokens); whitespace words without a tokenizer."""
    if tokenizer is None:
        return lambda text: len(text.split())
    return lambda text: len(tokenizer(" " + text, add_special_tokens=False)["input_ids"]) if text else 0


class SentenceSelector(pt.Transformer):
    """Rewrites ``text_field`` of a candidate frame to the sentences of each document that best match its
    query, within ``budget`` tokens (see the module). The original text is kept in ``<text_field>_full``;
    rows and their order are unchanged.

    Args:
        budget: tokens the re-ranker reads of a passage, title included (the demo model reads 128 with
            "B: "; :meth:`for_scorer` works it out).
        tokenizer: the re-ranker's tokenizer (``reranker.scorer.tokenizer``); whitespace words if ``None``.
        text_field: the column to rewrite.
        title_field: a column with each document's title, kept in front and not counted as a sentence
            (``text_field`` then holds the body alone); ``None`` if the text carries its title.
    """

    def __init__(self, budget: int = 125, tokenizer=None, text_field: str = "text",
                 title_field: Optional[str] = None):
        if budget < 1:
            raise ValueError(f"budget={budget}: give the number of passage tokens the re-ranker reads (>= 1)")
        self.budget, self.text_field, self.title_field = budget, text_field, title_field
        self.count = token_counter(tokenizer)

    @classmethod
    def for_scorer(cls, scorer, **kwargs) -> "SentenceSelector":
        """A selector filling what ``scorer`` (a :class:`~pyterrier_matroyshka.MatroyshkaScorer`, or a re-ranker
        holding one) reads of a passage: its ``max_length`` less the "B: " prefix and one token for the joins."""
        scorer = getattr(scorer, "scorer", scorer)
        prefix = len(scorer.tokenizer(PASSAGE_PREFIX, add_special_tokens=False)["input_ids"])
        return cls(scorer.max_length - prefix - 1, scorer.tokenizer, **kwargs)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        columns = ["qid", "query", self.text_field] + ([self.title_field] if self.title_field else [])
        pt.validate.columns(inp, includes=columns)
        out = inp.copy()
        queries = inp["query"].astype(str).tolist()
        texts = inp[self.text_field].fillna("").astype(str).tolist()
        titles = (inp[self.title_field].fillna("").astype(str).tolist() if self.title_field
                  else [""] * len(inp))
        selected = list(texts)
        # positions, not index labels: the user's index may repeat
        for rows in inp.reset_index(drop=True).groupby("qid", sort=False).indices.values():
            idf = idf_over([f"{titles[i]} {texts[i]}" for i in rows])
            for i in rows:
                selected[i] = select(queries[i], texts[i], self.budget, self.count, idf, titles[i])
        out[f"{self.text_field}_full"] = inp[self.text_field]
        out[self.text_field] = selected
        return out
