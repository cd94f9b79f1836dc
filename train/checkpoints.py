"""Periodic training checkpoints and resume, in safe formats only.

A checkpoint folder ``checkpoint-<step>`` holds the adapter (loadable by the engine as it is), ``resume.safetensors``
(every tensor of the run's state: trainable weights, optimizer moments, the torch and CUDA random states) and
``resume.json`` (the rest: optimizer hyper-parameters, scheduler, Python's random state, with each tensor's
place). Nothing is pickled, so loading a checkpoint never runs code from the file. ``trainer_state.json`` is
written last: a folder without it is an interrupted save and is ignored. A ``trainer.pt`` (the pickle of older
versions) is never read.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from pyterrier_matroyshka.errors import UserError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
TENSORS_FILE = "resume.safetensors"
REST_FILE = "resume.json"
PICKLE_FILE = "trainer.pt"  #: older versions' resume state: refused, never unpickled


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def to_safe(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """``value`` (nested dicts, lists, tuples, numbers, strings, tensors) as JSON; each tensor goes into
    ``tensors`` under its path and is replaced by ``{"tensor": path}``. Dict keys and tuples keep their type."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous().clone()
        return {"tensor": path}
    if isinstance(value, dict):
        return {"dict": [[key, to_safe(item, tensors, f"{path}.{key}")] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [to_safe(item, tensors, f"{path}.{i}") for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [to_safe(item, tensors, f"{path}.{i}") for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {path!r} in a checkpoint")


def from_safe(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`to_safe`."""
    if isinstance(value, list):
        return [from_safe(item, tensors) for item in value]
    if isinstance(value, dict):
        if "tensor" in value:
            return tensors[value["tensor"]]
        if "tuple" in value:
            return tuple(from_safe(item, tensors) for item in value["tuple"])
        return {key: from_safe(item, tensors) for key, item in value["dict"]}
    return value


def save_checkpoint(folder: Path, peft_model, optimizer, scheduler, state: dict[str, Any], keep: int) -> Path:
    """Write ``folder/checkpoint-<step>`` and drop all but the ``keep`` newest complete checkpoints."""
    target = folder / f"checkpoint-{state['step']}"
    shutil.rmtree(target, ignore_errors=True)
    peft_model.save_pretrained(str(target))
    tensors: dict[str, torch.Tensor] = {}
    rest = to_safe({"trainable": trainable_state(peft_model), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "python_rng": random.getstate()}, tensors, "state")
    save_file(tensors, str(target / TENSORS_FILE))
    (target / REST_FILE).write_text(json.dumps(rest))
    (target / STATE_FILE).write_text(json.dumps(state, indent=2))
    for old in complete_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    log.info("saved %s", target)
    return target


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    found = [p for p in folder.glob("checkpoint-*") if (p / STATE_FILE).is_file() and p.name[11:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[11:]))


def latest_checkpoint(folder: Path) -> Optional[Path]:
    found = complete_checkpoints(folder)
    return found[-1] if found else None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The resume state saved in ``path`` (safetensors + JSON only). A checkpoint of an older version, which
    kept it in a pickle (``trainer.pt``), is refused without being opened."""
    if not (path / TENSORS_FILE).is_file() or not (path / REST_FILE).is_file():
        found = f"only {PICKLE_FILE}, a pickle that is never loaded (it could run code)" \
            if (path / PICKLE_FILE).exists() else f"no {TENSORS_FILE} and {REST_FILE}"
        raise UserError(f"cannot resume from {path}: it holds {found}. Start afresh with --resume false, or "
                        f"move {path} away")
    try:
        tensors = load_file(str(path / TENSORS_FILE))
        return from_safe(json.loads((path / REST_FILE).read_text()), tensors)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot resume from {path}: its resume files are damaged ({err}); start afresh with "
                        "--resume false, or delete that checkpoint to resume from an earlier one") from err


def load_checkpoint(path: Path, peft_model, optimizer, scheduler) -> dict[str, Any]:
    """Restore the trainable weights, optimizer, scheduler and random states; returns the saved state."""
    saved = read_checkpoint(path)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    unexpected, missing = sorted(set(saved["trainable"]) - trainable), sorted(trainable - set(saved["trainable"]))
    if unexpected or missing:
        raise UserError(f"{path}: checkpoint weights do not fit this model (not in the model: {unexpected[:3]}, "
                        f"not in the checkpoint: {missing[:3]}); resume with the settings it was saved with")
    try:
        peft_model.load_state_dict(saved["trainable"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError) as err:
        raise UserError(f"{path}: checkpoint does not fit this model ({' '.join(str(err).split())[:300]})") from err
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    cuda_rng = saved.get("cuda_rng") or []
    if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_rng)  # dropout on a GPU draws from these
    random.setstate(saved["python_rng"])
    return json.loads((path / STATE_FILE).read_text())
