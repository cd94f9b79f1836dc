"""A rough forecast of an experiment's running time on this machine, from timing a few pairs.

One Matroyshka shape is timed on a sample of the candidates; the other shapes are scaled from it by their
estimated FLOPs (the engine's cost model), and any other system (e.g. a teacher) is timed on the same sample.
Rough by design: it leaves out loading and one-off costs, and a busy machine runs slower than it measured.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Mapping, Optional

import pandas as pd
import pyterrier as pt
import torch

from .reranker import MatroyshkaReRanker
from .shape_comparison import mean_lengths

SAMPLE_PAIRS = 16  #: 8 pairs (one small batch) timed ~2x slower per pair than a run's 32-pair batches; 16 comes closer


def estimate_seconds(systems: Mapping[str, Optional[pt.Transformer]], candidates: pd.DataFrame,
                     sample: int = SAMPLE_PAIRS) -> dict[str, float]:
    """Estimated seconds each of ``systems`` takes to re-rank all of ``candidates`` (0 for ``None``, the
    candidates as they are), from timing ``sample`` of them."""
    rows = candidates.sample(min(sample, len(candidates)), random_state=0)
    estimates: dict[str, float] = {}
    reference: Optional[tuple[MatroyshkaReRanker, float]] = None
    lengths = None
    for name, system in systems.items():
        if system is None:
            estimates[name] = 0.0
            continue
        if isinstance(system, MatroyshkaReRanker):
            lengths = lengths or mean_lengths(system, candidates)
            if reference is None:
                reference = (system, _seconds_per_pair(system, rows) / system.scorer.flops(system.shape, *lengths))
            estimates[name] = reference[1] * system.scorer.flops(system.shape, *lengths) * len(candidates)
        else:
            estimates[name] = _seconds_per_pair(system, rows) * len(candidates)
    return estimates


def _seconds_per_pair(system: pt.Transformer, rows: pd.DataFrame) -> float:
    system(rows.head(2))  # one-off costs (tokenizer tables, adapter merges, allocations) out of the timing
    started = time.perf_counter()
    system(rows)
    return (time.perf_counter() - started) / len(rows)


def cpu_name() -> str:
    """This machine's processor as the OS names it, with the threads torch uses, e.g.
    ``"AMD EPYC 7B13, 2 threads"``."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} of {os.cpu_count()} threads"


def minutes(seconds: float) -> str:
    """``"~ 12 min"``, ``"~ 0.5 min"`` or ``"< 0.1 min"``."""
    value = seconds / 60
    if value < 0.1:
        return "< 0.1 min"
    return f"~ {value:.1f} min" if value < 10 else f"~ {value:.0f} min"


def plan_text(estimates: Mapping[str, float], pairs: int, sample: int = SAMPLE_PAIRS,
              fused_name: Optional[str] = None) -> str:
    """What an experiment will run and roughly how long, one line per system, for printing up front."""
    lines = [f"  {name:<28} {minutes(seconds) if seconds else 'the candidates as they are (baseline)'}"
             for name, seconds in estimates.items()]
    if fused_name:
        lines.append(f"  each '{fused_name}' row fuses its shape's own scores: no extra scoring")
    lines.append(f"  total {minutes(sum(estimates.values()))} for {pairs} pairs on this CPU ({cpu_name()}), "
                 f"from timing {sample} pairs")
    return "\n".join(lines)
