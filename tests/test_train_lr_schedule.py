"""The learning-rate schedules come from transformers and keep the stages' own schedule step for step."""
from __future__ import annotations

import math

import pytest
import torch

from train.config import load_config
from train.lr_schedule import lr_scheduler


def _lrs(name: str, total: int, warmup_ratio: float, lr: float = 1e-3) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    scheduler = lr_scheduler(optimizer, name, total, warmup_ratio)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def _previous_schedule(step: int, total: int, warmup_ratio: float) -> float:
    """The factor the stages used before the schedules came from transformers (written out again here)."""
    warmup = math.ceil(total * warmup_ratio)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


@pytest.mark.parametrize("total,warmup_ratio", [(10, 0.3), (7, 0.0), (1, 0.1), (25, 0.1)])
def test_linear_is_the_previous_schedule_bit_for_bit(total, warmup_ratio) -> None:
    expected = [1e-3 * _previous_schedule(s, total, warmup_ratio) for s in range(total)]
    assert _lrs("linear", total, warmup_ratio) == expected  # exact: resumed runs and shipped adapters rely on it


def test_no_update_is_wasted_at_lr_zero_and_the_others_shapes() -> None:
    linear, cosine, constant = (_lrs(n, 10, 0.2) for n in ("linear", "cosine", "constant"))
    assert min(linear) > 0 and min(cosine) > 0 and min(constant) > 0
    assert linear[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])  # 2 warm-up steps, then the peak
    assert cosine[:3] == linear[:3] and cosine[2] > cosine[5] > cosine[-1]  # same warm-up, cosine decay
    assert constant[2:] == [1e-3] * 8


def test_a_resumed_scheduler_continues_where_it_stopped() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = lr_scheduler(optimizer, "cosine", 12, 0.25)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    saved_opt, saved_sched = optimizer.state_dict(), scheduler.state_dict()
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    resumed = lr_scheduler(fresh, "cosine", 12, 0.25)
    fresh.load_state_dict(saved_opt)
    resumed.load_state_dict(saved_sched)
    for _ in range(6):
        assert fresh.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
        for opt, sched in ((optimizer, scheduler), (fresh, resumed)):
            opt.step()
            sched.step()


def test_unknown_schedule_is_refused_before_training(tmp_path) -> None:
    with pytest.raises(ValueError, match="lr_schedule must be 'linear', 'cosine' or 'constant', got 'step'"):
        load_config("stage2", None, ["--train_data", str(tmp_path), "--lr_schedule", "step"])
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'"):
        lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "step", 3, 0.0)
