"""Ship a trained LoRA adapter small: truncate each module's update to its top singular directions.

A LoRA update ``scale * B @ A`` (rank r) is re-factored exactly through two thin QR decompositions
and an r x r SVD, then cut to ``rank`` directions (the best rank-``rank`` approximation in Frobenius
norm) and saved in half precision as an ordinary PEFT adapter (``lora_alpha = r`` so the scale is 1).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pyterrier_matroyshka.adapters import ADAPTER_INFO
from pyterrier_matroyshka.errors import UserError, check_int

ADAPTER_FILE = "adapter_model.safetensors"


def truncate_update(lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float, rank: int
                    ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """New (A, B) of rank ``rank`` with ``B @ A ~= scale * lora_b @ lora_a``; also the squared
    Frobenius norms of the kept and the full update."""
    qb, rb = torch.linalg.qr(lora_b.double())
    qa, ra = torch.linalg.qr(lora_a.double().T)
    u, s, vh = torch.linalg.svd(scale * rb @ ra.T)
    k = min(rank, s.numel())
    new_b = torch.zeros(lora_b.shape[0], rank, dtype=torch.float64)
    new_a = torch.zeros(rank, lora_a.shape[1], dtype=torch.float64)
    # a head's update has one output row, so rank <= 1: the unused directions stay zero
    new_b[:, :k] = qb @ (u[:, :k] * s[:k])
    new_a[:k] = (qa @ vh[:k].T).T
    return new_a, new_b, float((s[:k] ** 2).sum()), float((s ** 2).sum())


def export_adapter(source: str | Path, target: str | Path, rank: int, dtype: torch.dtype = torch.float16) -> dict:
    """Write the rank-``rank`` version of the adapter in ``source`` to ``target``; returns a summary
    with the share of the update's energy kept."""
    check_int("rank", rank, 1)
    source, target = Path(source), Path(target)
    try:
        config = json.loads((source / "adapter_config.json").read_text())
        source_rank, scale = config["r"], config["lora_alpha"] / config["r"]
        weights = load_file(str(source / ADAPTER_FILE))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise UserError(f"cannot read the adapter in {source} ({err}): give a PEFT LoRA adapter folder") from err
    out, kept, total = {}, 0.0, 0.0
    for name in weights:
        if ".lora_A." not in name:
            continue
        b_name = name.replace(".lora_A.", ".lora_B.")
        new_a, new_b, k, t = truncate_update(weights[name], weights[b_name], scale, rank)
        out[name], out[b_name] = new_a.to(dtype).contiguous(), new_b.to(dtype).contiguous()
        kept, total = kept + k, total + t
    target.mkdir(parents=True, exist_ok=True)
    save_file(out, str(target / ADAPTER_FILE))
    config.update(r=rank, lora_alpha=rank, lora_dropout=0.0, inference_mode=True, base_model_name_or_path=None)
    config.pop("rank_pattern", None), config.pop("alpha_pattern", None)
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2))
    summary = {"source_rank": source_rank, "rank": rank, "energy_kept": kept / total if total else 1.0,
               "bytes": (target / ADAPTER_FILE).stat().st_size}
    info = source / ADAPTER_INFO
    if info.is_file():
        note = json.loads(info.read_text())
        note["export"] = {"rank": rank, "energy_kept": summary["energy_kept"], "dtype": str(dtype)}
        (target / info.name).write_text(json.dumps(note, indent=2))
    for extra in ("train_config.json",):
        if (source / extra).is_file():
            shutil.copy(source / extra, target / extra)
    return summary
