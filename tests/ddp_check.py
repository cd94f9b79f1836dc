"""A few DDP steps of any stage, recording per rank what it drew and what it ended with.

    torchrun --nproc_per_node 2 tests/ddp_check.py stage1 --model BASE --train_data G.jsonl --output_dir OUT ...

Each rank writes ``OUT/rank<r>.json``: the shapes it drew per step, the queries it trained on, and a
checksum of its trainable weights. Identical shapes and weights on every rank (and disjoint queries)
show that the ranks drew together and stayed in sync.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repository's train/
from train.config import load_config  # noqa: E402
from train.stages import Trainer  # noqa: E402


def main(argv: list[str]) -> None:
    config = load_config(argv[0], None, argv[1:])
    trainer = Trainer(config)
    seen: list[str] = []
    original = trainer.batches.batch

    def batch(micro_step: int):
        samples = original(micro_step)
        seen.extend(s.group.query for s in samples)
        return samples

    trainer.batches.batch = batch
    trainer.run()
    weights = [p.detach().double().sum().item() for p in trainer.peft_model.parameters() if p.requires_grad]
    record = dict(rank=trainer.runtime.rank, world=trainer.runtime.world,
                  shapes=[h["shapes"] for h in trainer.history], losses=[h["loss"] for h in trainer.history],
                  queries=seen, weights=weights)
    Path(config.output_dir, f"rank{trainer.runtime.rank}.json").write_text(json.dumps(record))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
