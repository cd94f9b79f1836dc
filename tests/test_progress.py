"""Progress a person can follow: bars with an ETA through pt.tqdm, and a time estimate said up front."""
from __future__ import annotations

import pandas as pd
import pyterrier as pt
import pytest

from pyterrier_matroyshka import MatroyshkaReRanker, MatroyshkaScorer
from pyterrier_matroyshka.time_estimate import estimate_seconds, minutes, plan_text

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu", batch_size=2)


@pytest.fixture
def candidates() -> pd.DataFrame:
    texts = ["flutter of a swept wing", "boundary layer", "wings", "heat transfer", "a laminar flow", "supersonic"]
    return pd.DataFrame({"qid": ["1"] * 3 + ["2"] * 3, "query": ["wing flutter"] * 3 + ["heat"] * 3,
                         "docno": list("abcdef"), "text": texts, "score": [6.0, 5, 4, 3, 2, 1]})


class RecordingBar:
    """A tqdm stand-in that remembers how it was made and what it counted."""

    made: list["RecordingBar"] = []

    def __init__(self, *args, **kwargs):
        self.kwargs, self.count = kwargs, 0
        RecordingBar.made.append(self)

    def update(self, n=1):
        self.count += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_reranker_progress_goes_through_pt_tqdm(scorer, candidates, monkeypatch) -> None:
    RecordingBar.made = []
    monkeypatch.setattr(pt, "tqdm", RecordingBar)  # what pt.set_tqdm(...) changes
    MatroyshkaReRanker(scorer=scorer, shape="L4", verbose=True)(candidates)
    (bar,) = RecordingBar.made
    assert bar.kwargs["total"] == 6 and bar.count == 6 and bar.kwargs["unit"] == "pair"  # pairs: a true ETA
    assert bar.kwargs["desc"] == "matroyshka L4" and bar.kwargs["disable"] is False
    MatroyshkaReRanker(scorer=scorer, shape="L4")(candidates)
    assert RecordingBar.made[-1].kwargs["disable"] is True  # quiet unless verbose


def test_progress_bar_shows_an_eta(scorer, candidates, capsys) -> None:
    pt.set_tqdm("tqdm")
    MatroyshkaReRanker(scorer=scorer, shape="L4", verbose=True)(candidates)
    err = capsys.readouterr().err
    assert "matroyshka L4" in err and "6/6" in err and "pair" in err and "<" in err  # elapsed<remaining


def test_estimate_scales_shapes_by_their_cost(scorer, candidates) -> None:
    reranker = MatroyshkaReRanker(scorer=scorer)
    systems = {"BM25": None, "L8": reranker.with_shape("L8"), "L2": reranker.with_shape("L2"),
               "identity": pt.Transformer.identity()}
    estimates = estimate_seconds(systems, candidates, sample=4)
    assert estimates["BM25"] == 0.0 and 0 < estimates["L2"] < estimates["L8"]
    l2, l8 = reranker.with_shape("L2").flops(), reranker.with_shape("L8").flops()
    assert estimates["L2"] / estimates["L8"] == pytest.approx(l2 / l8, rel=0.05)  # the cost model's ratio
    assert 0 <= estimates["identity"] < estimates["L8"]
    text = plan_text(estimates, len(candidates), sample=4, fused_name="+ BM25 (0.5)").splitlines()
    assert [line.split()[0] for line in text[:4]] == ["BM25", "L8", "L2", "identity"]
    assert "fuses its shape's own scores" in text[4] and text[5].startswith("  total") and "from timing 4 pairs" in text[5]


def test_minutes() -> None:
    assert [minutes(s) for s in (1, 30, 90, 1500)] == ["< 0.1 min", "~ 0.5 min", "~ 1.5 min", "~ 25 min"]
