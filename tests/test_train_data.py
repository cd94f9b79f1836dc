"""Training groups: the JSONL reader's errors, group sampling, determinism and resumable order."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyterrier_matroyshka.offline.paths import shared_data_dir
from train.config import load_config, parse_overrides, stage_help
from train.data import GroupBatches, read_groups, require_teacher_scores, sample_group
from train.shape_sampling import ShapeSampler, candidate_layers


def _write(path: Path, records) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def _group(i: int, negatives: int = 5, scores: bool = True) -> dict:
    record = {"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}.{j}" for j in range(negatives)]}
    if scores:
        record |= {"pos_scores": [1.0], "neg_scores": [float(j) for j in range(negatives)]}
    return record


def test_malformed_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "g.jsonl", [_group(0), _group(1), '{"query": "q2", "pos": ["x"'])
    with pytest.raises(ValueError, match=r"g\.jsonl:3: malformed JSON"):
        read_groups(path)


def test_missing_fields_name_file_and_line(tmp_path):
    path = _write(tmp_path / "g.jsonl", [_group(0), {"query": "q1", "neg": ["n"]}])
    with pytest.raises(ValueError, match=r"g\.jsonl:2: 'pos' must be a list"):
        read_groups(path)


def test_teacher_score_length_names_query(tmp_path):
    bad = _group(7) | {"neg_scores": [1.0, 2.0]}
    path = _write(tmp_path / "g.jsonl", [_group(0), bad])
    with pytest.raises(ValueError, match=r"g\.jsonl:2: query 'q7' has 2 neg_scores for 5 neg"):
        read_groups(path)


def test_missing_teacher_scores_fail_loudly(tmp_path):
    groups = read_groups(_write(tmp_path / "g.jsonl", [_group(0), _group(1, scores=False)]))
    with pytest.raises(ValueError, match="query 'q1' has no pos_scores"):
        require_teacher_scores(groups)


def test_folders_are_walked(tmp_path):
    (tmp_path / "a").mkdir()
    _write(tmp_path / "a" / "x.jsonl", [_group(0), _group(1)])
    _write(tmp_path / "y.jsonl", [_group(2)])
    assert [g.query for g in read_groups(tmp_path)] == ["q0", "q1", "q2"]
    assert len(read_groups(tmp_path, max_per_file=1)) == 2


def test_sample_group_positive_first_without_replacement(tmp_path):
    import random

    group = read_groups(_write(tmp_path / "g.jsonl", [_group(0, negatives=10)]))[0]
    sample = sample_group(group, 6, random.Random(0))
    assert sample.passages[0] == "p0" and len(sample.passages) == 6
    assert len(set(sample.passages[1:])) == 5 and not sample.repeated
    # the teacher score follows its passage
    assert sample.teacher == [1.0] + [float(p.split(".")[1]) for p in sample.passages[1:]]


def test_short_groups_repeat_and_are_counted(tmp_path):
    groups = read_groups(_write(tmp_path / "g.jsonl", [_group(0, negatives=2), _group(1, negatives=8)]))
    batches = GroupBatches(groups, group_size=6, batch_size=2, seed=1)
    samples = batches.batch(0)
    short = next(s for s in samples if s.group.query == "q0")
    assert short.repeated and len(short.passages) == 6
    assert sorted(set(short.passages[1:])) == ["n0.0", "n0.1"]
    assert batches.repeated == 1


def test_order_deterministic_resumable_and_split_across_ranks(tmp_path):
    groups = read_groups(_write(tmp_path / "g.jsonl", [_group(i) for i in range(10)]))
    one = GroupBatches(groups, 3, 2, seed=5)
    again = GroupBatches(groups, 3, 2, seed=5)
    seq = [[s.passages for s in one.batch(m)] for m in range(7)]
    # a fresh object asked for step 4 directly (a resumed run) gets what the first run got at step 4
    assert [s.passages for s in again.batch(4)] == seq[4]
    assert [[s.passages for s in again.batch(m)] for m in range(7)] == seq
    # one epoch = 5 micro-batches of 2: every group once; the next epoch reshuffles
    first_epoch = [s.group.query for m in range(5) for s in one.batch(m)]
    assert sorted(first_epoch) == sorted(f"q{i}" for i in range(10))
    assert [s.group.query for m in range(5, 10) for s in one.batch(m)] != first_epoch
    # two ranks: disjoint halves of each global micro-batch
    r0, r1 = GroupBatches(groups, 3, 1, seed=5, rank=0, world=2), GroupBatches(groups, 3, 1, seed=5, rank=1, world=2)
    assert r0.per_epoch == 5
    assert [s.group.query for s in r0.batch(0) + r1.batch(0)] == first_epoch[:2]
    other_seed = [[s.passages for s in GroupBatches(groups, 3, 2, seed=6).batch(m)] for m in range(7)]
    assert other_seed != seq


def test_reference_training_format_file_reads():
    data = shared_data_dir()
    if data is None:
        pytest.skip("../shared/data is absent")
    groups = read_groups(data / "training-format" / "flagembedding_reranker_groups.jsonl")
    assert len(groups) == 10 and all(g.has_scores for g in groups)


def test_candidate_layers_default_and_errors():
    assert candidate_layers(32, 4) == [4, 8, 12, 16, 20, 24, 28]
    assert candidate_layers(30, 4) == [4, 8, 12, 16, 20, 24, 28]
    assert candidate_layers(8, 2, [6, 2]) == [2, 6]
    with pytest.raises(ValueError, match=r"compress_layers \[40\] not in this 30-layer model"):
        candidate_layers(30, 4, [8, 40])
    with pytest.raises(ValueError):
        candidate_layers(30, 4, [0])


def test_shape_sampler_deterministic_and_covers_subsets():
    sampler = ShapeSampler(list(range(4, 33)), [1, 2, 4, 8], [4, 8, 12, 16, 20, 24, 28], seed=3)
    shapes = [sampler.draw(m) for m in range(400)]
    assert shapes == [ShapeSampler(list(range(4, 33)), [1, 2, 4, 8], [4, 8, 12, 16, 20, 24, 28], seed=3).draw(m)
                      for m in range(400)]
    ratios = {s.ratio for s in shapes}
    assert ratios == {1, 2, 4, 8}
    assert all(s.exits == tuple(range(4, 33)) for s in shapes)
    kept = [len(s.compress_layers) for s in shapes if s.ratio > 1]
    assert 2.5 < sum(kept) / len(kept) < 4.5  # about half of 7 kept
    fixed = ShapeSampler([2, 3, 4], [2], [2], keep_prob=1.0)
    assert str(fixed.draw(0)) == "L2,3,4:r2@2"


def test_config_overrides_and_errors(tmp_path):
    assert parse_overrides(["--lr", "1e-4", "--ratios", "2,4", "--bf16=false", "--train_data", "a.jsonl"]) == {
        "lr": 1e-4, "ratios": [2, 4], "bf16": False, "train_data": ["a.jsonl"]}
    with pytest.raises(ValueError, match="unknown setting --nope"):
        parse_overrides(["--nope", "1"])
    config = load_config("stage3", None, ["--train_data", "x.jsonl", "--ratios", "4"])
    assert config.ratios == [4] and config.lr == 2e-5 and not config.kd_external
    with pytest.raises(ValueError, match="one fixed ratio"):
        load_config("stage3", None, ["--train_data", "x.jsonl", "--ratios", "1"])
    with pytest.raises(ValueError, match="ratios must be \\[1\\]"):
        load_config("stage2", None, ["--train_data", "x.jsonl", "--ratios", "2"])
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"group_size": 8, "typo_key": 1}))
    with pytest.raises(ValueError, match="typo_key"):
        load_config("stage1", str(file), ["--train_data", "x"])


def test_stage_help_lists_every_setting_with_the_stage_default(capsys):
    from train.__main__ import main

    main(["stage2", "--help"])
    text = capsys.readouterr().out
    assert text == stage_help("stage2") + "\n"
    assert text.startswith("usage: python -m train stage2")
    assert "--lr (default 2e-05)" in text and "--ratios (default [1])" in text and "--kd_external (default false)" in text
    assert "--lr (default 0.0002)" in stage_help("stage1")


def test_shipped_configs_load():
    root = Path(__file__).resolve().parent.parent / "train" / "configs"
    for stage in ("stage1", "stage2", "stage3"):
        config = load_config(stage, str(root / f"{stage}.json"))
        assert config.stage == stage and config.train_data


def test_the_naive_mix_baseline_trains_the_last_exit_on_the_mix_models_data_and_batches():
    root = Path(__file__).resolve().parent.parent / "train" / "configs"
    naive = load_config("stage2", str(root / "naive_mix.json"))
    mix = load_config("stage1", str(root / "stage1_mix.json"))
    assert naive.train_exits == [30] and naive.merge_adapters == [] and naive.init_adapter is None
    assert naive.ratios == [1] and not naive.kd_external and not naive.kd_cascade
    same = ("train_data", "group_size", "batch_size", "grad_accum", "query_max_len", "passage_max_len",
            "balance_domains", "seed", "lora_r")
    assert {k: getattr(naive, k) for k in same} == {k: getattr(mix, k) for k in same}
