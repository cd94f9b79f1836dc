"""The multi-exit cache: one pass scored once serves every exit (scorer calls counted), fusion on top costs
nothing more, and two re-rankers that score differently can never share a cache entry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest

from pyterrier_matroyshka import FirstStageFusion, MatroyshkaReRanker, MatroyshkaScorer
from pyterrier_matroyshka.caching import FINGERPRINT_FILE, MatroyshkaCache, cache_folder
from pyterrier_matroyshka.fusion import fuse

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu", batch_size=4)


@pytest.fixture
def counted(scorer, monkeypatch) -> list[int]:
    """The number of pairs of each ``compute_score`` call on ``scorer``, as they happen."""
    calls: list[int] = []
    real = MatroyshkaScorer.compute_score

    def counting(self, pairs, **kwargs):
        calls.append(len(pairs))
        return real(self, pairs, **kwargs)

    monkeypatch.setattr(MatroyshkaScorer, "compute_score", counting)
    return calls


@pytest.fixture
def candidates() -> pd.DataFrame:
    return pd.DataFrame({"qid": ["1", "1", "1", "2", "2"],
                         "query": ["wing flutter", "wing flutter", "wing flutter", "heat transfer", "heat transfer"],
                         "docno": ["a", "b", "c", "a", "d"],
                         "text": ["flutter of a swept wing", "boundary layer", "wings", "flutter of a swept wing",
                                  "heat transfer in a laminar flow"],
                         "score": [9.0, 8.0, 7.0, 6.0, 5.0], "rank": [0, 1, 2, 0, 1]})


def _same_scores(got: pd.DataFrame, expected: pd.DataFrame, columns=("score",)) -> None:
    for column in columns:
        assert got[column].tolist() == pytest.approx(expected[column].tolist(), abs=1e-5), column
    assert got["rank"].tolist() == expected["rank"].tolist()


def test_one_pass_serves_every_exit_without_rescoring(scorer, counted, candidates, tmp_path) -> None:
    reranker = MatroyshkaReRanker(scorer=scorer, shape="L4,6,8")
    cache = MatroyshkaCache(tmp_path / "cache", reranker)
    first = cache(candidates)
    assert counted == [5]  # one multi-exit pass over the five pairs
    direct = reranker(candidates)
    _same_scores(first, direct, ["score", "score_L4", "score_L6", "score_L8"])
    assert list(first.columns) == list(direct.columns)
    np.testing.assert_allclose(np.stack(first["features"]), np.stack(direct["features"]), atol=1e-5)
    counted.clear()

    views = {depth: cache.with_exits(depth)(candidates) for depth in (4, 6, 8)}
    two = cache.with_exits([4, 8])(candidates)
    fused = FirstStageFusion(cache.with_exits(6), 0.3)(candidates)
    reopened = MatroyshkaCache(tmp_path / "cache", reranker).with_exits(4)(candidates)  # e.g. the next day
    assert counted == []  # every exit, a fusion and a reopened cache: nothing scored again

    for depth, view in views.items():  # each exit's own scores (never another exit's)
        alone = MatroyshkaReRanker(scorer=scorer, shape=f"L{depth}")(candidates)
        _same_scores(view, alone)
        assert "features" not in view.columns and view["query"].tolist() == candidates["query"].tolist()
    assert views[4]["score"].tolist() != views[8]["score"].tolist()
    _same_scores(two, reranker.with_shape("L4,8")(candidates), ["score", "score_L4", "score_L8"])
    _same_scores(fused, fuse(candidates, views[6], 0.3))
    _same_scores(reopened, views[4])


def test_only_missing_pairs_are_scored(scorer, counted, candidates, tmp_path) -> None:
    cache = MatroyshkaCache(tmp_path / "cache", MatroyshkaReRanker(scorer=scorer, shape="L4,8"))
    cache(candidates.iloc[:3])
    more = pd.concat([candidates, candidates.iloc[[0]].assign(docno="e", text="a wing")], ignore_index=True)
    assert len(cache(more)) == 6
    assert counted == [3, 3]  # the second call scored the two rows of query 2 and the new docno only
    empty = cache.with_exits(4)(candidates.iloc[:0])
    assert len(empty) == 0 and {"score", "rank"} <= set(empty.columns)


def test_two_shapes_never_share_an_entry(scorer, tiny_checkpoint, candidates, tmp_path) -> None:
    reranker = MatroyshkaReRanker(scorer=scorer, shape="L4,8")
    MatroyshkaCache(tmp_path / "cache", reranker)(candidates)
    compressed = reranker.with_shape("L4,8:r2@2")
    with pytest.raises(ValueError, match=r"another re-ranker \(shape: 'L4,8' there, 'L4,8:r2@2' here\)"):
        MatroyshkaCache(tmp_path / "cache", compressed)
    with pytest.raises(ValueError, match="shape: 'L4,8' there, 'L4,6,8' here"):
        MatroyshkaCache(tmp_path / "cache", reranker.with_shape("L4,6,8"))
    shorter = MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu", max_length=8)
    with pytest.raises(ValueError, match="max_length: 512 there, 8 here"):
        MatroyshkaCache(tmp_path / "cache", MatroyshkaReRanker(scorer=shorter, shape="L4,8"))
    with pytest.raises(ValueError, match="text_field: 'text' there, 'title' here"):
        MatroyshkaCache(tmp_path / "cache", MatroyshkaReRanker(scorer=scorer, shape="L4,8", text_field="title"))

    root = tmp_path / "caches"
    variants = [reranker, compressed, reranker.with_shape("L4,8:r2@4"), reranker.with_shape("L4,6,8"),
                MatroyshkaReRanker(scorer=shorter, shape="L4,8"),
                MatroyshkaReRanker(scorer=scorer, shape="L4,8", normalize=True)]
    folders = [cache_folder(root, v) for v in variants]
    assert len(set(folders)) == len(variants)
    by_folder = {f: MatroyshkaCache(f, v).with_exits(8)(candidates)["score"].tolist() for f, v in zip(folders, variants)}
    assert by_folder[folders[0]] != by_folder[folders[1]]  # each folder its own re-ranker's scores
    same_model = MatroyshkaScorer(str(Path(tiny_checkpoint).resolve()), dtype="fp32", device="cpu")
    assert cache_folder(root, MatroyshkaReRanker(scorer=same_model, shape="L4,8")) == folders[0]


def test_other_weights_and_foreign_folders_are_refused(scorer, raw_llama, tmp_path) -> None:
    other = MatroyshkaScorer(str(raw_llama), dtype="fp32", device="cpu", start_layer=2)
    assert other.weights_digest != scorer.weights_digest
    MatroyshkaCache(tmp_path / "cache", MatroyshkaReRanker(scorer=scorer, shape="L4"))
    with pytest.raises(ValueError, match="weights: '[0-9a-f]+' there, '[0-9a-f]+' here"):
        MatroyshkaCache(tmp_path / "cache", MatroyshkaReRanker(scorer=other, shape="L4"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "pt_meta.json").write_text("{}")
    with pytest.raises(ValueError, match=f"not a Matroyshka cache \\(no {FINGERPRINT_FILE}\\)"):
        MatroyshkaCache(tmp_path / "plain", MatroyshkaReRanker(scorer=scorer))
    with pytest.raises(ValueError, match=r"exit\(s\) \[5\] are not among the cached pass's exits \[4\]"):
        MatroyshkaCache(tmp_path / "cache", MatroyshkaReRanker(scorer=scorer, shape="L4")).with_exits(5)


def test_cache_is_inspectable(scorer, tmp_path) -> None:
    cache = MatroyshkaCache(tmp_path / "cache", MatroyshkaReRanker(scorer=scorer, shape="L4,8"), exits=[8])
    assert [sorted(c) for c in pt.inspect.transformer_inputs(cache)] == [["docno", "qid", "query", "text"]]
    attributes = {a.name: a.value for a in pt.inspect.transformer_attributes(cache)}
    assert attributes["exits"] == (8,) and attributes["path"] == tmp_path / "cache"
