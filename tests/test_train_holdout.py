"""Holdout metrics, continuing from a trained adapter, and adapter folders whose names hold dots."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyterrier_matroyshka.offline.paths import shared_golden_dir
from pyterrier_matroyshka.scorer import MatroyshkaScorer
from train.config import load_config
from train.data import read_groups
from train.holdout import evaluate_groups, ranking_metrics
from train.stages import Trainer
from helpers import tiny_base, toy_groups

GOLDEN = shared_golden_dir()


def test_ranking_metrics_by_hand():
    # positive second of four: RR 1/2, nDCG 1/log2(3)
    m = ranking_metrics([0.5], [0.9, 0.1, 0.0])
    assert m["RR@10"] == 0.5
    assert m["nDCG@10"] == pytest.approx(1 / math.log2(3))
    # two positives at ranks 1 and 3 of 3
    m = ranking_metrics([3.0, 1.0], [2.0])
    assert m["RR@10"] == 1.0
    assert m["nDCG@10"] == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))
    # a tie with a negative is not a win, and a positive below the cut-off gives nothing
    assert ranking_metrics([1.0], [1.0])["RR@10"] == 0.5
    assert ranking_metrics([-1.0], [float(i) for i in range(10)]) == {"RR@10": 0.0, "nDCG@10": 0.0}


@pytest.mark.integration  # a fresh interpreter
def test_importing_the_engine_does_not_import_pyterrier():
    code = ("import sys, pyterrier_matroyshka; from pyterrier_matroyshka import MatroyshkaScorer; "
            "assert 'pyterrier' not in sys.modules; from pyterrier_matroyshka import MatroyshkaReRanker; "
            "assert 'pyterrier' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.skipif(GOLDEN is None, reason="needs the Mistral tokenizer of ../shared/golden")
@pytest.mark.usefixtures("one_thread")
class TestWithTinyBase:
    @pytest.fixture(scope="class")
    def base(self, tmp_path_factory) -> Path:
        return tiny_base(tmp_path_factory.mktemp("base"), str(GOLDEN / "tiny-matroyshka"), layers=4)

    @pytest.fixture(scope="class")
    def groups(self, tmp_path_factory) -> Path:
        return toy_groups(tmp_path_factory.mktemp("data") / "groups.jsonl", n=4, negatives=3)

    def config(self, base, groups, out, *extra):
        args = ["--model", str(base), "--start_layer", "2", "--train_data", str(groups), "--output_dir", str(out),
                "--group_size", "4", "--batch_size", "2", "--grad_accum", "1", "--max_steps", "2", "--lr", "3e-3",
                "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--save_steps", "0", "--bf16", "false",
                *extra]
        return load_config("stage1", None, args)

    def test_init_adapter_starts_from_the_trained_weights(self, base, groups, tmp_path):
        first = Trainer(self.config(base, groups, tmp_path / "epoch1")).run()
        trained = {n: p.detach().clone() for n, p in Trainer(self.config(base, groups, tmp_path / "x",
                   "--init_adapter", str(first))).peft_model.named_parameters() if "lora_" in n}
        fresh = {n: p for n, p in Trainer(self.config(base, groups, tmp_path / "y")).peft_model.named_parameters()
                 if "lora_" in n}
        saved = Trainer(self.config(base, groups, tmp_path / "z", "--init_adapter", str(first)))
        assert trained.keys() == fresh.keys() and trained
        # lora_B starts at zero in a fresh LoRA; from the first epoch it holds what was learned
        b = [n for n in trained if "lora_B" in n]
        assert all(torch.count_nonzero(fresh[n]) == 0 for n in b)
        assert any(torch.count_nonzero(trained[n]) > 0 for n in b)
        again = dict(saved.peft_model.named_parameters())
        assert all(torch.equal(trained[n], again[n]) for n in trained)

    def test_init_adapter_of_another_rank_is_refused(self, base, groups, tmp_path):
        first = Trainer(self.config(base, groups, tmp_path / "epoch1")).run()
        with pytest.raises((ValueError, RuntimeError), match="size mismatch|does not fit"):
            Trainer(self.config(base, groups, tmp_path / "r8", "--init_adapter", str(first), "--lora_r", "8"))

    def test_dotted_adapter_folder_and_holdout(self, base, groups, tmp_path):
        trained = Trainer(self.config(base, groups, tmp_path / "run")).run()
        dotted = tmp_path / "stage1_e1_kd1.0"
        shutil.copytree(trained, dotted)
        scorer = MatroyshkaScorer(str(base), adapters=[str(dotted)], dtype="fp32", start_layer=2)
        plain = MatroyshkaScorer(str(base), adapters=[str(trained)], dtype="fp32", start_layer=2)
        report = evaluate_groups(scorer, read_groups([str(groups)]), "L4")
        assert report == evaluate_groups(plain, read_groups([str(groups)]), "L4")
        assert report["groups"] == 4 and 0 < report["RR@10"] <= 1 and 0 < report["nDCG@10"] <= 1


def test_holdout_reports_each_domain():
    from train.data import Group

    class ByLength:  # the longer passage wins: positives are long in domain 'a', short in domain 'b'
        def compute_score(self, pairs, shape=None):
            return [float(len(p)) for _, p in pairs]

    groups = [Group("q", ("long positive",), ("n", "m")), Group("q", ("p",), ("negative one", "negative two"))]
    groups = [Group(g.query, g.pos, g.neg, domain=d) for g, d in zip(groups, ("a", "b"))]
    report = evaluate_groups(ByLength(), groups, "L4")
    assert report["by_domain"]["a"]["RR@10"] == 1.0 and report["by_domain"]["b"]["RR@10"] == pytest.approx(1 / 3)
    assert report["RR@10"] == pytest.approx((1 + 1 / 3) / 2) and report["groups"] == 2
    assert "by_domain" not in evaluate_groups(ByLength(), groups[:1], "L4")
