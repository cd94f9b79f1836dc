"""Rank truncation of shipped adapters."""
from __future__ import annotations

import pytest
import torch

from pyterrier_matroyshka import MatroyshkaScorer
from train.export import export_adapter, truncate_update


def test_truncation_is_exact_at_full_rank_and_optimal_below():
    torch.manual_seed(0)
    a, b = torch.randn(6, 20), torch.randn(12, 6)
    new_a, new_b, kept, total = truncate_update(a, b, 2.0, 6)
    assert torch.allclose(new_b @ new_a, 2.0 * (b @ a).double(), atol=1e-8) and kept == pytest.approx(total)
    new_a, new_b, kept, total = truncate_update(a, b, 2.0, 2)
    singular = torch.linalg.svdvals(2.0 * (b @ a).double())
    assert torch.linalg.norm(new_b @ new_a - 2.0 * (b @ a).double()) ** 2 == pytest.approx(
        float((singular[2:] ** 2).sum()), rel=1e-6)
    assert kept / total < 1


def test_exported_adapter_loads_and_matches(tiny_checkpoint, golden_pairs, tmp_path):
    source = tiny_checkpoint / "compensate/layer/full"
    summary = export_adapter(source, tmp_path / "same", rank=4, dtype=torch.float32)
    assert summary["energy_kept"] == pytest.approx(1.0)
    original = MatroyshkaScorer(str(tiny_checkpoint), adapters=[str(source)], dtype="fp32", device="cpu")
    exported = MatroyshkaScorer(str(tiny_checkpoint), adapters=[str(tmp_path / "same")], dtype="fp32", device="cpu")
    assert exported.compute_score(golden_pairs) == pytest.approx(original.compute_score(golden_pairs), abs=1e-4)
    small = export_adapter(source, tmp_path / "small", rank=2)
    assert small["energy_kept"] < 1 and small["bytes"] < summary["bytes"] / 3
