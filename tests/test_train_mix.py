"""The training mix as a local collection: files, registration, source selection and groups, on a tiny mix."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from train import mix
from train.groups import mine_groups, select_by_source

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TOPICS = ["solar panels", "river delta", "violin maker", "glacier melt", "coffee roasting", "chess opening"]


def _write(path: Path, records: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


@pytest.fixture()
def tiny_mix(tmp_path, monkeypatch) -> Path:
    """Six topics: a pool paragraph each plus filler, MS MARCO- and NQ-like queries, a query whose positive is
    also a pool paragraph, and an AutoQ query pointing at the pool by id."""
    folder = tmp_path / "mix"
    folder.mkdir()
    pool = [{"pid": f"wk{i}", "title": t, "text": f"The {t} article says {t} matters.\tTabbed"}
            for i, t in enumerate(TOPICS)]
    pool += [{"pid": f"wk{100 + i}", "title": "filler", "text": f"Filler paragraph {i} about {TOPICS[i % 6]} and more"}
             for i in range(60)]
    _write(folder / mix.POOL_FILE, pool)
    _write(folder / "msmarco_devsmall_pos.jsonl.gz",
           [{"qid": f"msm{i}", "query": f"what about {t}", "pos": [f"A passage on {t} for msmarco."], "src": "m"}
            for i, t in enumerate(TOPICS)])
    _write(folder / "qed_nq.jsonl.gz",
           [{"qid": f"nq{i}", "query": f"who made the {t}", "pos": [pool[i]["text"]], "src": "n"}
            for i, t in enumerate(TOPICS)])
    for file in ("squad11_dev.jsonl.gz", "ares_synth.jsonl.gz", "medquad.jsonl.gz"):
        _write(folder / file, [])
    _write(folder / "wiki_autoq_synth.jsonl.gz", [{"qid": "wq0", "query": "solar panels article", "pos_pid": ["wk0"]}])
    monkeypatch.setenv("MATROYSHKA_TRAINING_MIX", str(folder))
    monkeypatch.setenv("MATROYSHKA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mix, "_registered", None)
    return folder


def test_files_merge_positives_with_the_pool(tiny_mix, tmp_path):
    out = mix.build_files(tmp_path / "files", tiny_mix)
    docs = dict(line.split("\t") for line in (out / "docs.tsv").read_text().splitlines())
    assert len(docs) == 66 + 6  # the pool, plus the six MS MARCO positives; NQ's are pool paragraphs
    assert all("\n" not in text and "\t" not in text for text in docs.values())
    qrels = [line.split() for line in (out / "qrels.txt").read_text().splitlines()]
    by_qid = {q: d for q, _, d, _ in qrels}
    assert by_qid["nq2"] == "wk2" and by_qid["wq0"] == "wk0"  # a positive found in the pool is that document
    assert by_qid["msm0"].startswith("p") and by_qid["msm0"] in docs
    assert len((out / "queries.tsv").read_text().splitlines()) == 13


def test_source_of_and_selection(tiny_mix):
    assert [mix.source_of(q) for q in ("msm3", "nq1", "sq-x-0-1", "ares-fever-2", "mq4", "wq0", "17")] == \
        ["msmarco", "nq", "squad", "ares", "medquad", "autoq", ""]
    topics = pd.DataFrame({"qid": ["msm0", "nq0", "msm1", "nq1", "msm2"], "query": list("abcde")})
    picked = select_by_source(topics, ["msmarco"], 2, seed=1)
    assert len(picked) == 2 and set(picked["qid"]) <= {"msm0", "msm1", "msm2"}
    assert picked.equals(select_by_source(topics, ["msmarco"], 2, seed=1))  # seeded
    assert len(select_by_source(topics, None, 1, seed=1)) == 2  # one of each source present
    assert len(select_by_source(topics, None, 2, seed=1, mix=False)) == 2  # another dataset: one source
    with pytest.raises(ValueError, match="unknown source.*'bing'"):
        select_by_source(topics, ["bing"], None, seed=1)
    with pytest.raises(ValueError, match="per_source must be >= 1"):
        select_by_source(topics, None, 0, seed=1)


def test_groups_of_the_mix_carry_their_source(tiny_mix):
    groups, summary = mine_groups(mix.MIX_ID, sources=["msmarco", "nq"], per_source=4, num_negatives=3,
                                  window=(0, 20), seed=5)
    assert summary.used == len(groups) == 8
    assert sorted({g["src"] for g in groups}) == ["msmarco", "nq"]
    for group in groups:
        assert group["src"] == mix.source_of(group["qid"])
        assert len(group["neg"]) == 3 and not set(group["neg_ids"]) & set(group["pos_ids"])
        assert all(text not in group["pos"] for text in group["neg"])


def test_domains_take_turns_in_every_epoch():
    from train.data import GroupBatches, Group, interleave_domains

    assert interleave_domains([5, 0, 1, 2, 3, 4], ["a", "a", "a", "b", "b", "c"]) == [5, 0, 3, 1, 4, 2]
    groups = [Group(f"q{i}", ("p",), ("n",), domain="big" if i < 8 else "small") for i in range(12)]
    batches = GroupBatches(groups, group_size=2, batch_size=2, seed=3, balance_domains=True)
    first_four = [s.group.domain for step in range(2) for s in batches.batch(step)]
    assert first_four.count("small") == 2  # uniform order would give 'small' 4/12 of the time on average
    epoch = [s.group.query for step in range(batches.per_epoch) for s in batches.batch(step)]
    assert sorted(epoch) == sorted(g.query for g in groups)  # nothing lost or repeated
    again = GroupBatches(groups, group_size=2, batch_size=2, seed=3, balance_domains=True)
    assert [s.group.query for s in again.batch(1)] == epoch[2:4]  # a pure function of the step: resumable


def test_split_interleaves_the_training_sources(tmp_path):
    from train.groups import split_holdout

    path = tmp_path / "g.jsonl"
    rows = [{"qid": f"{src}{i}", "query": "q", "pos": [f"{src}{i}"], "neg": ["n"], "src": src}
            for src in ("a", "b") for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert split_holdout(path, tmp_path / "t.jsonl", tmp_path / "h.jsonl", every=3) == (8, 4)
    train = [json.loads(line)["qid"] for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    held = [json.loads(line)["qid"] for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert train == ["a0", "b0", "a1", "b1", "a3", "b3", "a4", "b4"] and held == ["a2", "a5", "b2", "b5"]
