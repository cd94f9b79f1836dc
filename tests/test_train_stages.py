"""The three stages on a tiny random Llama: the loss falls, adapters load in the engine and change its scores,
checkpoints resume without repeating data, and bad settings fail before training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pyterrier_matroyshka.adapters import ADAPTER_INFO
from pyterrier_matroyshka.offline.paths import shared_golden_dir
from pyterrier_matroyshka.scorer import MatroyshkaScorer
from pyterrier_matroyshka.shape import Shape
from train.config import load_config
from train.data import collate
from train.stages import Trainer
from helpers import tiny_base, toy_groups

GOLDEN = shared_golden_dir()
pytestmark = [pytest.mark.skipif(GOLDEN is None, reason="needs the Mistral tokenizer of ../shared/golden"),
              pytest.mark.usefixtures("one_thread")]



PAIRS = [("apple banana cherry", "apple banana cherry apple banana cherry"),
         ("apple banana cherry", "tiger umbrella violet walnut xenon zebra")]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_base(tmp_path_factory.mktemp("base"), str(GOLDEN / "tiny-matroyshka"), layers=6)


@pytest.fixture(scope="module")
def groups(tmp_path_factory) -> Path:
    return toy_groups(tmp_path_factory.mktemp("data") / "groups.jsonl", n=4, negatives=5)


def _config(stage: str, base: Path, groups: Path, out: Path, *extra: str):
    args = ["--model", str(base), "--start_layer", "2", "--train_data", str(groups), "--output_dir", str(out),
            "--group_size", "4", "--batch_size", "2", "--grad_accum", "1", "--epochs", "3", "--lr", "3e-3",
            "--warmup_ratio", "0", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0",
            "--compress_every", "2", "--save_steps", "0", "--bf16", "false", *extra]
    return load_config(stage, None, args)


def _eval_loss(trainer: Trainer, shape: Shape) -> float:
    """The stage loss over all groups at a fixed shape, no dropout, no gradient."""
    trainer.peft_model.eval()
    total = 0.0
    with torch.no_grad():
        for micro in range(trainer.batches.per_epoch):
            batch = collate(trainer.batches.batch(micro), trainer.encoder)
            total += trainer.loss(batch, shape).total.item()
    trainer.peft_model.train()
    return total


def _train_and_check(config, shape: Shape) -> Trainer:
    trainer = Trainer(config)
    before = _eval_loss(trainer, shape)
    trainer.run()
    after = _eval_loss(trainer, shape)
    assert after < before, (before, after)
    assert len(trainer.history) == trainer.total_steps == 6
    assert all(f"CE@{d}" in trainer.history[0]["terms"] for d in trainer.exits)
    return trainer


def _scores(base: Path, adapters=None, shape="L6") -> list[float]:
    return MatroyshkaScorer(str(base), adapters=adapters, dtype="fp32", device="cpu", start_layer=2,
                            shape=shape).compute_score(PAIRS)


@pytest.mark.integration  # whole training runs: not in the quick subset
def test_stage1_stage2_stage3_train_and_load_in_engine(base, groups, tmp_path):
    s1 = _train_and_check(_config("stage1", base, groups, tmp_path / "s1"), Shape([2, 3, 4, 5, 6], [2, 4], 2))
    assert {k.split("@")[0] for k in s1.history[0]["terms"]} == {"CE", "KD_external", "KD_cascade"}
    info = json.loads((tmp_path / "s1" / ADAPTER_INFO).read_text())
    assert info["kind"] == "self_distillation" and info["compress_layers"] == [2, 4]
    plain, with_s1 = _scores(base), _scores(base, [tmp_path / "s1"])
    assert with_s1 != pytest.approx(plain, abs=1e-4)

    merged = ["--merge_adapters", str(tmp_path / "s1")]
    _train_and_check(_config("stage2", base, groups, tmp_path / "s2", *merged), Shape([2, 3, 4, 5, 6]))
    _train_and_check(_config("stage3", base, groups, tmp_path / "s3", *merged, "--ratios", "2"),
                     Shape([2, 3, 4, 5, 6], [2, 4], 2))
    with_s2 = _scores(base, [tmp_path / "s1", tmp_path / "s2"])
    with_s3 = _scores(base, [tmp_path / "s1", tmp_path / "s3"], shape="L6:r2@2,4")
    with_both = _scores(base, [tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"], shape="L6:r2@2,4")
    assert with_s2 != pytest.approx(with_s1, abs=1e-5)
    assert with_s3 != pytest.approx(_scores(base, [tmp_path / "s1"], shape="L6:r2@2,4"), abs=1e-5)
    assert with_both != pytest.approx(with_s3, abs=1e-6)
    assert json.loads((tmp_path / "s3" / ADAPTER_INFO).read_text())["ratios"] == [2]


@pytest.mark.integration  # whole training runs: not in the quick subset
def test_resume_continues_without_repeating_data(base, groups, tmp_path):
    """A run that crashes after step 3 resumes from checkpoint-2 and then logs exactly what an
    uninterrupted run logs: same data, same shapes, same losses."""
    extra = ["--save_steps", "2"]
    full = Trainer(_config("stage1", base, groups, tmp_path / "full", *extra))
    full.run()
    crashing = Trainer(_config("stage1", base, groups, tmp_path / "part", *extra))
    step = crashing.train_step

    def train_step():
        if crashing.step == 3:
            raise KeyboardInterrupt("simulated crash")
        return step()

    crashing.train_step = train_step
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    assert sorted(p.name for p in (tmp_path / "part").glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = Trainer(_config("stage1", base, groups, tmp_path / "part", *extra))
    resumed.run()
    assert [h["step"] for h in resumed.history] == [3, 4, 5, 6]
    for a, b in zip(full.history[2:], resumed.history):
        assert a["shapes"] == b["shapes"] and a["step"] == b["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    logged = [json.loads(line)["step"] for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 3, 4, 5, 6]  # the crashed run's step 3 is redone once, nothing skipped


def test_bad_compression_layer_fails_before_training(base, groups, tmp_path):
    with pytest.raises(ValueError, match=r"compress_layers \[9\] not in this 6-layer model"):
        Trainer(_config("stage1", base, groups, tmp_path / "x", "--compress_layers", "2,9"))
    assert not (tmp_path / "x").exists()


def test_external_distillation_without_teacher_scores_fails(base, tmp_path):
    plain = toy_groups(tmp_path / "plain.jsonl", n=4, scores=False)
    with pytest.raises(ValueError, match="no pos_scores/neg_scores"):
        Trainer(_config("stage1", base, plain, tmp_path / "x"))
    Trainer(_config("stage1", base, plain, tmp_path / "y", "--kd_external", "false"))  # allowed without


@pytest.mark.integration  # whole training runs: not in the quick subset
def test_command_line_with_config_file_and_overrides(base, groups, tmp_path):
    from train.__main__ import main

    config = Path(__file__).resolve().parent.parent / "train" / "configs" / "stage2.json"
    out = tmp_path / "cli_s2"
    main(["stage2", "--config", str(config), "--model", str(base), "--start_layer", "2", "--merge_adapters", "[]",
          "--train_data", str(groups), "--output_dir", str(out), "--group_size", "4", "--batch_size", "2",
          "--grad_accum", "1", "--max_steps", "2", "--lora_r", "2", "--lora_alpha", "4", "--bf16", "false"])
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["stage"] == "stage2" and saved["lr"] == 2e-5 and saved["lora_r"] == 2 and saved["ratios"] == [1]
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert _scores(base, [out]) != pytest.approx(_scores(base), abs=1e-7)


def test_matroyshka_model_as_teacher(tmp_path):
    """A full-shape Matroyshka model (the golden tiny checkpoint) scores groups as a teacher."""
    from train.teacher import add_teacher_scores, make_scorer

    path = toy_groups(tmp_path / "g.jsonl", n=2, negatives=3, scores=False)
    teacher = make_scorer("matroyshka", str(GOLDEN / "tiny-matroyshka"), dtype="fp32")
    add_teacher_scores(path, tmp_path / "t.jsonl", teacher)
    record = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    expected = teacher.compute_score([(record["query"], p) for p in record["pos"] + record["neg"]])
    assert record["pos_scores"] + record["neg_scores"] == pytest.approx(expected, abs=1e-4)
