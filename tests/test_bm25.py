"""Offline BM25 (PISA) on the real collections, and the official DL19 BM25 run."""
from __future__ import annotations

import warnings

import pytest

from pyterrier_matroyshka.offline.paths import shared_data_dir

pytestmark = pytest.mark.skipif(shared_data_dir() is None,
                                reason="no offline collections folder (../shared/data or $MATROYSHKA_SHARED_DATA)")

pt = pytest.importorskip("pyterrier")
pytest.importorskip("pyterrier_pisa")

from pyterrier.measures import nDCG  # noqa: E402

import pandas as pd  # noqa: E402

from pyterrier_matroyshka.offline.bm25 import bm25, dl19_bm25_run, pisa_index, text_loader  # noqa: E402
from pyterrier_matroyshka.offline.collections import DL19_ID, pt_dataset  # noqa: E402


def _ndcg10(run, name: str) -> float:
    ds = pt_dataset(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pt.Experiment([run], ds.get_topics(), ds.get_qrels(), [nDCG @ 10], names=["run"])
    return float(result["nDCG@10"].iloc[0])


@pytest.mark.parametrize("name", ["cranfield", "vaswani"])
def test_bm25_evaluates(name: str):
    topics = pt_dataset(name).get_topics()
    res = bm25(name, num_results=100)(topics)
    assert list(res.columns) == ["qid", "query", "docno", "score", "rank", "text"]
    assert set(res.qid) == set(topics.qid)  # every query gets results
    assert res.groupby("qid").size().max() <= 100
    # the re-ranker sees the original query text, and the document text
    original = dict(zip(topics.qid, topics["query"]))
    assert (res["query"] == res.qid.map(original)).all()
    assert res.text.str.len().gt(0).all()
    ndcg = _ndcg10(res, name)
    print(f"BM25 nDCG@10 on {name}: {ndcg:.4f}")
    assert ndcg > 0.2


def test_scifact_text_joins_title():
    ds = pt_dataset("beir/scifact/test")
    res = bm25("irds:beir/scifact/test", num_results=5)(ds.get_topics().head(3))
    assert len(res) == 15
    doc = ds.irds_ref().docs_store().get(res.docno.iloc[0])
    assert res.text.iloc[0] == f"{doc.title} {doc.text}".strip()
    # the train and test subsets share one corpus, so one index
    assert pisa_index("beir/scifact/train").path == pisa_index("beir/scifact/test").path


def test_text_loader_on_an_empty_frame():
    out = text_loader("beir/scifact/test")(pd.DataFrame({"qid": pd.Series([], dtype=str),
                                                          "docno": pd.Series([], dtype=str)}))
    assert len(out) == 0 and "text" in out.columns


def test_dl19_official_run():
    run = dl19_bm25_run()
    assert list(run.columns) == ["qid", "query", "docno", "score", "rank", "text"]
    assert len(run) == 4300 and run.qid.nunique() == 43
    assert run.text.str.len().gt(0).all() and run["query"].notna().all()
    assert (run.groupby("qid")["rank"].min() == 0).all()
    ndcg = _ndcg10(run, DL19_ID)
    print(f"official BM25 run nDCG@10 on DL19: {ndcg:.4f}")
    assert ndcg == pytest.approx(0.5058, abs=1e-3)


def test_pisa_index_is_reused():
    first = pisa_index("cranfield")
    assert first.built() and len(first) == 1400
    stamps = {f.name: f.stat().st_mtime_ns for f in first.path.iterdir() if f.is_file()}
    second = pisa_index("irds:cranfield")
    assert second.path == first.path
    assert {f.name: f.stat().st_mtime_ns for f in second.path.iterdir() if f.name in stamps} == stamps
    assert not list(first.path.parent.glob(f"{first.path.name}.tmp*"))  # no leftover build folder
