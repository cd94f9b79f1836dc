"""Learning-rate schedules: transformers' ``get_*_schedule_with_warmup``, counted from the first update.

transformers' schedules give step 0 a factor of 0 (warm-up ``s / W``): the first optimizer step changes
nothing. The stages here have always started one step in: warm-up factor ``(s + 1) / (W + 1)``, then down
to ``(T - s) / (T - W)`` at step ``s`` of ``T`` (never quite 0). That is transformers' schedule with one more
warm-up step and one more step in all, read one step later; trained adapters and resumed checkpoints rely on
it, so :func:`lr_scheduler` keeps it exactly (the same floats, step for step).
"""
from __future__ import annotations

import math

import torch
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

SCHEDULES = ("linear", "cosine", "constant")


def lr_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                 warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` for ``total_steps`` optimizer steps: warm-up over ``ceil(total_steps * warmup_ratio)``
    steps, then transformers' ``name`` schedule (``linear``, ``cosine`` or ``constant``), one step in."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {name!r}; use one of {', '.join(SCHEDULES)}")
    warmup = math.ceil(total_steps * warmup_ratio)
    if name == "constant":
        shifted = get_constant_schedule_with_warmup(optimizer, warmup + 1)
    else:
        make = get_linear_schedule_with_warmup if name == "linear" else get_cosine_schedule_with_warmup
        shifted = make(optimizer, warmup + 1, total_steps + 1)
    factor = shifted.lr_lambdas[0]
    # A plain function (not the partial) so the scheduler's state_dict stays as it was: resumable both ways.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step + 1))
