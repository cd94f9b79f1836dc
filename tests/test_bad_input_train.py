"""Bad input and faults in training (``python -m train``): settings and data are checked before any model
loads and named in one line with exit code 2; a non-finite loss or gradient stops training at its step with
nothing applied; resuming reads no pickle (a planted ``trainer.pt`` is never executed) and stays bit-exact.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyterrier_matroyshka.errors import UserError, run_cli
from train.__main__ import main as train_main
from train.checkpoints import PICKLE_FILE
from train.config import load_config
from train.stages import Trainer

REPO = Path(__file__).resolve().parent.parent
NO_MODEL = "/no/such/model"  # an error about anything else shows the model was never loaded
pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "apple banana cherry delta echo falcon gamma harbor island jungle kettle lemon mango nectar".split()


def write_groups(path: Path, n: int = 4, negatives: int = 3, **override) -> Path:
    """``n`` toy groups with teacher scores; ``override`` replaces fields of the first group."""
    lines = []
    for i in range(n):
        words = WORDS[i:i + 3]
        record = dict(qid=str(i), query=" ".join(words), pos=[" ".join(words * 2)],
                      neg=[" ".join(WORDS[(i + 5 + j) % len(WORDS):][:4]) for j in range(negatives)],
                      pos_scores=[3.0], neg_scores=[float(-j) for j in range(negatives)])
        if i == 0:
            record.update(override)
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def groups(tmp_path_factory) -> Path:
    return write_groups(tmp_path_factory.mktemp("groups") / "g.jsonl")


def run_train_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``python -m train ARGV`` in this process: exit code and stderr."""
    try:
        code = run_cli(train_main, argv, prog="python -m train")
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def stage_args(model, groups, out, *extra) -> list[str]:
    return ["--model", str(model), "--start_layer", "2", "--train_data", str(groups), "--output_dir", str(out),
            "--group_size", "4", "--batch_size", "2", "--grad_accum", "1", "--lr", "3e-3", "--warmup_ratio", "0",
            "--lora_r", "2", "--lora_alpha", "4", "--lora_dropout", "0", "--compress_every", "2",
            "--save_steps", "0", "--bf16", "false", *extra]


# ---- 7. help and one-line errors ---------------------------------------------------------------------------

def test_help_exits_0():
    done = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m train COMMAND")


@pytest.mark.parametrize("argv", [["-h"], ["stage1", "--help"], ["holdout", "--help"], ["split", "-h"]])
def test_every_help_exits_0(argv, capsys):
    code, _ = run_train_cli(argv, capsys)
    assert code == 0


def test_a_user_error_is_one_line_and_exit_2_from_the_real_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "train", "stage1", "--train_data", "x.jsonl", "--epochs", "0"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "python -m train: error: --epochs must be >= 1, got 0 (--debug for the traceback)"]
    debug = subprocess.run([sys.executable, "-m", "train", "stage1", "--train_data", "x.jsonl", "--epochs", "0",
                            "--debug"], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UserError" in debug.stderr


# ---- 1 and 6. settings out of range or of the wrong type, before any model loads ----------------------------

@pytest.mark.parametrize("extra, message", [
    (["--lr", "abc"], "--lr must be a number, got 'abc'"),
    (["--lr", "-1"], "--lr must be > 0, got -1.0"),
    (["--lr", "1e999"], "--lr must be > 0, got inf"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--epochs", "1.5"], "--epochs must be a whole number, got 1.5"),
    (["--max_steps", "0"], "--max_steps must be >= 1, got 0"),
    (["--batch_size", "-1"], "--batch_size must be >= 1, got -1"),
    (["--grad_accum", "0"], "--grad_accum must be >= 1"),
    (["--passage_max_len", "0"], "--passage_max_len must be >= 1"),
    (["--group_size", "1"], "group_size must be >= 2"),
    (["--warmup_ratio", "2"], "--warmup_ratio must be >= 0 and <= 1, got 2.0"),
    (["--lora_dropout", "1"], r"--lora_dropout must lie in \[0, 1\)"),
    (["--lora_r", "0"], "--lora_r must be >= 1"),
    (["--save_steps", "-2"], "--save_steps must be >= 0"),
    (["--ratios", "2,x"], "--ratios must be a list of whole numbers"),
    (["--bf16", "maybe"], "--bf16 must be true or false or a string, got 'maybe'|--bf16 must be true, false or auto"),
    (["--nope", "1"], "unknown setting --nope"),
    (["--config"], "--config needs a file"),
    (["--config", "missing.json"], "config file missing.json does not exist"),
    (["--lr"], "--lr needs a value"),
])
def test_bad_settings_fail_in_one_line_before_the_model(groups, tmp_path, capsys, extra, message):
    code, err = run_train_cli(["stage1", *stage_args(NO_MODEL, groups, tmp_path / "out"), *extra], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_a_malformed_config_file_names_its_line(groups, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text('{\n  "lr": 0.1,\n  "epochs": \n}\n')
    argv = ["stage1", "--config", str(config), *stage_args(NO_MODEL, groups, tmp_path / "o")]
    code, err = run_train_cli(argv, capsys)
    assert code == 2 and f"{config}, line 4: malformed JSON" in err


# ---- 5 and 6. training data, checked with file and line before the model loads -----------------------------

@pytest.mark.parametrize("override, message", [
    (dict(neg=[], neg_scores=[]), r"g.jsonl:1: query 'apple banana cherry' has no negatives"),
    (dict(neg_scores=[1.0, float("nan"), 0.0]), r"g.jsonl:1: 'neg_scores'\[1\] is nan"),
    (dict(pos_scores=[float("inf")]), r"g.jsonl:1: 'pos_scores'\[0\] is inf"),
    (dict(pos_scores=[1e39]), r"g.jsonl:1: 'pos_scores'\[0\] is 1e\+39 .* not finite in float32"),
    (dict(pos_scores=[True]), r"g.jsonl:1: 'pos_scores' must be a list of numbers"),
    (dict(neg=["fine", "broken \ud800 text", "fine"]), r"g.jsonl:1: 'neg'\[1\] holds a lone surrogate"),
    (dict(query=None), "g.jsonl:1: missing or non-string 'query'"),
])
def test_bad_groups_are_named_by_file_and_line(tmp_path, capsys, override, message):
    data = write_groups(tmp_path / "g.jsonl", **override)
    code, err = run_train_cli(["stage1", *stage_args(NO_MODEL, data, tmp_path / "out")], capsys)
    assert code == 2 and re.search(message, err), err


def test_latin1_bytes_in_a_group_file_name_the_line(tmp_path, capsys):
    data = write_groups(tmp_path / "g.jsonl")
    data.write_bytes(data.read_bytes().replace(b"cherry", b"ch\xe9rry", 1).replace(b"apple", b"apple", 1))
    lines = data.read_bytes().splitlines()
    bad_line = next(i for i, line in enumerate(lines, 1) if b"\xe9" in line)
    code, err = run_train_cli(["stage1", *stage_args(NO_MODEL, data, tmp_path / "out")], capsys)
    assert code == 2 and f"g.jsonl, line {bad_line}: byte 0xe9" in err


def test_a_bom_in_a_group_file_is_not_an_error(tmp_path):
    data = write_groups(tmp_path / "g.jsonl")
    data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    from train.data import read_groups

    assert [g.qid for g in read_groups([data])] == ["0", "1", "2", "3"]


def test_missing_training_data_is_named(tmp_path, capsys):
    code, err = run_train_cli(["stage1", *stage_args(NO_MODEL, tmp_path / "none.jsonl", tmp_path / "out")], capsys)
    assert code == 2 and "none.jsonl does not exist" in err


def test_budgets_that_leave_no_passage_are_refused(raw_llama, groups, tmp_path):
    config = load_config("stage1", None, stage_args(raw_llama, groups, tmp_path / "out", "--query_max_len", "4",
                                                    "--passage_max_len", "4"))
    with pytest.raises(UserError, match="leave no room for a passage beside the .*-token prompt"):
        Trainer(config)


def test_a_model_folder_that_does_not_exist_is_named_before_loading(groups, tmp_path, capsys):
    code, err = run_train_cli(["stage1", *stage_args(NO_MODEL, groups, tmp_path / "out")], capsys)
    assert code == 2 and f"model folder {NO_MODEL} does not exist" in err


@pytest.mark.parametrize("argv, message", [
    (["holdout", "--data", "{empty}", "--model", NO_MODEL], "no groups in .*empty.jsonl"),
    (["holdout", "--data", "{groups}", "--model", NO_MODEL, "--shapes", "L8.5"], "cannot parse shape 'L8.5'"),
    (["holdout", "--data", "{groups}", "--batch_size", "0"], "argument --batch_size: 0 is below 1"),
    (["teacher", "--input", "{missing}", "--output", "{out}"], "missing.jsonl does not exist"),
    (["teacher", "--input", "{groups}", "--output", "{out}", "--batch_size", "-1"], "-1 is below 1"),
    (["groups", "--dataset", "cranfield", "--output", "{out}", "--window", "10"], "--window must be two whole"),
    (["groups", "--dataset", "cranfield", "--output", "{out}", "--window", "50,10"], "0 <= start < stop"),
    (["split", "--input", "{empty}", "--train", "{out}", "--holdout", "{out}"], "no groups in .*empty.jsonl"),
    (["split", "--input", "{groups}", "--train", "{out}", "--holdout", "{out}", "--every", "1"], "1 is below 2"),
    (["groups", "--sources", "nope", "--output", "{out}"], r"--sources: unknown source\(s\) \['nope'\]"),
    (["groups", "--output", "{out}"], "give --dataset or --sources"),
    (["export", "--adapter", "{missing}", "--output", "{out}", "--rank", "0"], "0 is below 1"),
    (["export", "--adapter", "{missing}", "--output", "{out}", "--rank", "2"], "adapter config .* does not exist"),
    (["export", "--adapter", "{broken_adapter}", "--output", "{out}", "--rank", "2"], "cannot read the adapter in"),
    (["nonsense"], "unknown command 'nonsense'"),
    ([], "no command given"),
])
def test_other_commands_fail_in_one_line(groups, tmp_path, capsys, argv, message):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text('{"r": 4}')
    paths = {"empty": tmp_path / "empty.jsonl", "groups": groups, "missing": tmp_path / "missing.jsonl",
             "out": tmp_path / "out.jsonl", "broken_adapter": tmp_path / "broken"}
    code, err = run_train_cli([a.format(**paths) for a in argv], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


# ---- 5. a non-finite loss or gradient stops training at its step -----------------------------------------

class _InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


@pytest.mark.parametrize("fault, message", [
    (lambda total: total * float("nan"), r"step 2/4: the loss is nan \(micro-batch 1 of 1, shape L"),
    (lambda total: _InfiniteGradient.apply(total), r"step 2/4: the gradient norm is (inf|nan)"),
])
def test_training_stops_at_the_first_non_finite_step(raw_llama, groups, tmp_path, fault, message):
    trainer = Trainer(load_config("stage1", None, stage_args(raw_llama, groups, tmp_path / "out", "--max_steps", "4")))
    loss = trainer.loss

    def faulty(batch, shape):
        terms = loss(batch, shape)
        if trainer.step == 1:
            terms.total = fault(terms.total)
        return terms

    trainer.loss = faulty
    before = {}

    def remember(record):
        before.update({n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if p.requires_grad})
        return Trainer._log(trainer, record)

    trainer._log = remember
    with pytest.raises(UserError, match=message):
        trainer.run()
    assert trainer.step == 1 and [h["step"] for h in trainer.history] == [1]
    after = {n: p for n, p in trainer.peft_model.named_parameters() if p.requires_grad}
    assert all(torch.equal(before[n], after[n]) for n in before)  # nothing of step 2 applied
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


# ---- 3. resuming: safe files only, bit-exact ------------------------------------------------------------

class _WritesAFile:
    """Unpickling this object creates ``marker``: what a planted checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crash_after(trainer: Trainer, step: int) -> None:
    original = trainer.train_step

    def train_step():
        if trainer.step == step:
            raise KeyboardInterrupt("simulated crash")
        return original()

    trainer.train_step = train_step


@pytest.fixture(scope="module")
def interrupted(raw_llama, groups, tmp_path_factory):
    """A full 4-step run and one that crashed after step 3 (checkpoint-2 kept): both folders."""
    root = tmp_path_factory.mktemp("resume")
    extra = ["--max_steps", "4", "--save_steps", "2", "--lora_dropout", "0.1"]
    full = Trainer(load_config("stage1", None, stage_args(raw_llama, groups, root / "full", *extra)))
    full.run()
    crashing = Trainer(load_config("stage1", None, stage_args(raw_llama, groups, root / "part", *extra)))
    _crash_after(crashing, 3)
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    return full, root, extra


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if p.requires_grad}


def test_checkpoints_hold_no_pickle(interrupted):
    _, root, _ = interrupted
    files = sorted(p.name for p in (root / "part" / "checkpoint-2").iterdir())
    assert {"resume.safetensors", "resume.json", "trainer_state.json", "adapter_model.safetensors"} <= set(files)
    assert not [f for f in files if f.endswith((".pt", ".pth", ".bin", ".pkl", ".pickle"))], files


def test_resume_is_bit_exact(raw_llama, groups, interrupted, tmp_path):
    import shutil

    full, root, extra = interrupted
    shutil.copytree(root / "part", tmp_path / "part")
    resumed = Trainer(load_config("stage1", None, stage_args(raw_llama, groups, tmp_path / "part", *extra)))
    resumed.run()
    assert [h["step"] for h in resumed.history] == [3, 4]
    for a, b in zip(full.history[2:], resumed.history):
        assert (a["shapes"], a["loss"], a["grad_norm"], a["lr"]) == (b["shapes"], b["loss"], b["grad_norm"], b["lr"])
    expected, got = _weights(full), _weights(resumed)
    assert expected.keys() == got.keys() and all(torch.equal(expected[n], got[n]) for n in expected)


def test_a_planted_trainer_pt_is_never_executed(raw_llama, groups, interrupted, tmp_path, capsys):
    import shutil

    _, root, extra = interrupted
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(_WritesAFile(marker), f)
    pickle.loads((tmp_path / "evil.pt").read_bytes()).close()  # the planted file does write when unpickled
    assert marker.exists()
    marker.unlink()

    # beside the safe files: resuming reads them and ignores the pickle
    shutil.copytree(root / "part", tmp_path / "beside")
    shutil.copy(tmp_path / "evil.pt", tmp_path / "beside" / "checkpoint-2" / PICKLE_FILE)
    resumed = Trainer(load_config("stage1", None, stage_args(raw_llama, groups, tmp_path / "beside", *extra)))
    resumed.run()
    assert [h["step"] for h in resumed.history] == [3, 4] and not marker.exists()

    # alone (a checkpoint of an older version, or a planted one): refused by name, still never opened
    shutil.copytree(root / "part", tmp_path / "alone")
    checkpoint = tmp_path / "alone" / "checkpoint-2"
    for name in ("resume.safetensors", "resume.json"):
        (checkpoint / name).unlink()
    shutil.copy(tmp_path / "evil.pt", checkpoint / PICKLE_FILE)
    code, err = run_train_cli(["stage1", *stage_args(raw_llama, groups, tmp_path / "alone", *extra)], capsys)
    assert code == 2 and "only trainer.pt, a pickle that is never loaded" in err and "--resume false" in err
    assert not marker.exists()


def test_no_torch_load_with_pickle_anywhere():
    sources = [p for folder in ("pyterrier_matroyshka", "train") for p in (REPO / folder).rglob("*.py")]
    offenders = [str(p) for p in sources if "weights_only=False" in p.read_text() or "pickle.load" in p.read_text()]
    assert offenders == []
