"""Fingerprints of what decides a scorer's scores, so a cache never serves one model's scores for another's.

:meth:`MatroyshkaScorer.fingerprint <pyterrier_matroyshka.scorer.MatroyshkaScorer.fingerprint>` lists the
weights (by :func:`weights_digest`), dtype, active adapters, shape and token budgets; :func:`digest` condenses
any such mapping to a short name for a cache folder.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import torch

#: Values read from each weight tensor: enough that any trained change shows (a LoRA update or a merge
#: changes every value of the matrices it targets), few enough to take milliseconds even for a 7B model.
SAMPLE = 4096


@torch.no_grad()
def weights_digest(model: torch.nn.Module, sample: int = SAMPLE) -> str:
    """A hex digest of ``model``'s weights: every tensor's name, shape and dtype, and ``sample`` of its
    values taken at even strides (the whole tensor when it is smaller)."""
    hasher = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        picked = flat[:: max(1, flat.numel() // sample)][:sample]
        hasher.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        hasher.update(picked.to(device="cpu", dtype=torch.float64).numpy().tobytes())
    return hasher.hexdigest()


def digest(fingerprint: Mapping[str, Any], length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``fingerprint`` as sorted JSON."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
