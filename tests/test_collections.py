"""Offline collections through ir_datasets: seeding, counts (data/README.md), clear errors."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from pyterrier_matroyshka.offline.collections import DL19_ID, ensure_dataset, pt_dataset, seed_local_collections
from pyterrier_matroyshka.offline.paths import shared_data_dir

pytestmark = pytest.mark.skipif(shared_data_dir() is None,
                                reason="no offline collections folder (../shared/data or $MATROYSHKA_SHARED_DATA)")


def _counts(name: str) -> tuple[int, int, int]:
    """Docs, queries and qrels counted by iterating the files (not ir_datasets' metadata)."""
    ds = ensure_dataset(name)
    return (sum(1 for _ in ds.docs_iter()), sum(1 for _ in ds.queries_iter()), sum(1 for _ in ds.qrels_iter()))


def test_cranfield_counts():
    assert _counts("irds:cranfield") == (1400, 225, 1837)
    labels = {q.relevance for q in ensure_dataset("cranfield").qrels_iter()}
    assert labels == {-1, 1, 2, 3, 4}


def test_dl19_counts_and_text():
    ds = ensure_dataset(DL19_ID)
    assert _counts(DL19_ID) == (7555, 43, 9260)
    assert (ds.docs_count(), ds.queries_count(), ds.qrels_count(), ds.scoreddocs_count()) == (7555, 43, 9260, 4300)
    assert {q.relevance for q in ds.qrels_iter()} == {0, 1, 2, 3}
    # every candidate of the run and every relevant passage has text
    wanted = {s.doc_id for s in ds.scoreddocs_iter()} | {q.doc_id for q in ds.qrels_iter() if q.relevance > 0}
    found = {d.doc_id: d.text for d in ds.docs_store().get_many_iter(wanted)}
    assert set(found) == wanted and all(found.values())


def test_vaswani_and_scifact_counts():
    assert _counts("vaswani") == (11429, 93, 2083)
    assert _counts("beir/scifact/test") == (5183, 300, 339)
    assert _counts("beir/scifact/train") == (5183, 809, 919)


def test_pt_dataset():
    ds = pt_dataset("irds:cranfield")
    topics = ds.get_topics()
    assert list(topics.columns) == ["qid", "query"] and len(topics) == 225
    results = pt_dataset(DL19_ID).get_results()
    assert len(results) == 4300 and results["query"].notna().all()


def test_seeding_is_idempotent_and_cheap():
    home = seed_local_collections()
    archive = home / "cranfield" / "cran.tar.gz"
    mtime = archive.stat().st_mtime_ns
    start = time.perf_counter()
    assert seed_local_collections() == home
    assert time.perf_counter() - start < 1.0
    assert archive.stat().st_mtime_ns == mtime


def test_seeding_a_fresh_home_after_import(tmp_path: Path):
    """ir_datasets fixes its built-in paths at import; seeding another home must still redirect them."""
    import ir_datasets

    try:
        home = seed_local_collections(ir_datasets_home=tmp_path, collections=["cranfield"])
        assert home == tmp_path.resolve()
        assert sum(1 for _ in ir_datasets.load("cranfield").docs_iter()) == 1400
        assert (tmp_path / "cranfield" / "docs.txt").is_file()  # extracted into the new home
    finally:
        seed_local_collections()  # back to the default home for the other tests


def test_missing_source_folder(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="MATROYSHKA_SHARED_DATA") as info:
        seed_local_collections(source=missing, ir_datasets_home=tmp_path / "home")
    assert str(missing) in str(info.value)


def test_missing_file(tmp_path: Path):
    (tmp_path / "cranfield").mkdir()
    (tmp_path / "cranfield" / "cran.tar.gz").symlink_to(shared_data_dir() / "cranfield" / "cran.tar.gz")
    with pytest.raises(FileNotFoundError, match="vaswani/npl.tar.gz"):
        seed_local_collections(source=tmp_path, ir_datasets_home=tmp_path / "home", collections=["vaswani"])
