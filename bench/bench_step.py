"""Time one training micro-step (forward + backward, plus the stage-1 teacher pass) per query group.

    python bench/bench_step.py stage1 --config train/configs/stage1.json --train_data G.jsonl [--steps 8]

Uses the stage's own sampler, so the mix of shapes is the one training sees; prints each micro-step's
time and shape, the mean per query and the projection for one epoch of the data.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train.config import load_config  # noqa: E402
from train.data import collate  # noqa: E402
from train.stages import Trainer  # noqa: E402


def main(argv: list[str]) -> None:
    argv = list(argv)
    steps = 8
    if "--steps" in argv:
        i = argv.index("--steps")
        steps = int(argv[i + 1])
        del argv[i:i + 2]
    config_file = None
    if "--config" in argv:
        i = argv.index("--config")
        config_file = argv[i + 1]
        del argv[i:i + 2]
    config = load_config(argv[0], config_file, argv[1:] + ["--resume", "false"])
    trainer = Trainer(config)
    times = []
    for micro in range(steps + 1):
        batch = collate(trainer.batches.batch(micro), trainer.encoder, trainer.runtime.device)
        shape = trainer.sampler.draw(micro)
        start = time.perf_counter()
        trainer.loss(batch, shape).total.backward()
        trainer.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        if micro:  # the first step warms up kernels and allocators
            times.append(elapsed)
        print(f"micro-step {micro}: {elapsed:.2f}s  {tuple(batch['input_ids'].shape)}  "
              f"r{shape.ratio}@{list(shape.compress_layers)}{'  (warm-up, not counted)' if not micro else ''}")
    per_query = statistics.mean(times) / config.batch_size
    queries = len(trainer.groups)
    print(f"mean {per_query:.2f}s per query group of {config.group_size} ({config.stage}); one epoch of {queries} "
          f"queries ~ {per_query * queries / 60:.0f} min on {trainer.runtime.world} process(es)")


if __name__ == "__main__":
    main(sys.argv[1:])
