"""Two-process DDP (torchrun, gloo, CPU): a few stage-1 steps; both ranks draw the same shapes, train on
disjoint queries and end with the same weights."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pyterrier_matroyshka.offline.paths import shared_golden_dir
from helpers import tiny_base, toy_groups

GOLDEN = shared_golden_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(GOLDEN is None, reason="needs the Mistral tokenizer of ../shared/golden")
def test_two_process_torchrun_draws_identical_shapes(tmp_path):
    base = tiny_base(tmp_path / "base", str(GOLDEN / "tiny-matroyshka"), layers=6)
    data = toy_groups(tmp_path / "g.jsonl", n=8, negatives=5)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               str(Path(__file__).with_name("ddp_check.py")), "stage1", "--model", str(base), "--start_layer", "2",
               "--train_data", str(data), "--output_dir", str(out), "--group_size", "4", "--batch_size", "1",
               "--grad_accum", "2", "--max_steps", "3", "--lora_r", "4", "--lora_alpha", "8",
               "--compress_every", "2", "--bf16", "false", "--save_steps", "2", "--lr", "1e-3"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["shapes"] == ranks[1]["shapes"] and len(ranks[0]["shapes"]) == 3
    # 8 groups = 4 global micro-batches of 2 per epoch: in each epoch, each rank trains on its own half
    first_epoch = ranks[0]["queries"][:4] + ranks[1]["queries"][:4]
    assert len(set(first_epoch)) == 8
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-6, abs=1e-9)  # gradients averaged
    assert (out / "adapter_model.safetensors").is_file() and (out / "checkpoint-2").is_dir()
