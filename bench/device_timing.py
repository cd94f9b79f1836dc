"""Timing and peak memory that work on a GPU and a CPU alike: every CUDA-only call sits behind a device check,
so a benchmark tested on a CPU runs unchanged on a GPU."""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable, Optional

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (a no-op on a CPU, whose ops return when done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> Optional[int]:
    """Peak bytes allocated on the GPU since the last reset; ``None`` on a CPU (no allocator statistics)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def timed(run: Callable, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds of ``iters`` calls of ``run`` after ``warmup`` untimed ones, each ended by a device sync."""
    for _ in range(warmup):
        run()
    synchronize(device)
    seconds = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def device_name(device: torch.device) -> str:
    """A GPU by its CUDA name; a CPU by its model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                 platform.processor() or "unknown model")
    threads = torch.get_num_threads()
    return f"CPU ({model}, {threads} thread{'s' if threads != 1 else ''})"
