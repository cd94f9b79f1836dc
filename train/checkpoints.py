"""Periodic training checkpoints and resume.

A checkpoint folder ``checkpoint-<step>`` holds the adapter (loadable by the engine as it is) and
``trainer.pt`` (trainable weights, optimizer, scheduler, step, random states). ``trainer_state.json`` is
written last: a folder without it is an interrupted save and is ignored.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, peft_model, optimizer, scheduler, state: dict[str, Any], keep: int) -> Path:
    """Write ``folder/checkpoint-<step>`` and drop all but the ``keep`` newest complete checkpoints."""
    target = folder / f"checkpoint-{state['step']}"
    shutil.rmtree(target, ignore_errors=True)
    peft_model.save_pretrained(str(target))
    torch.save({"trainable": trainable_state(peft_model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate()}, target / "trainer.pt")
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


def load_checkpoint(path: Path, peft_model, optimizer, scheduler) -> dict[str, Any]:
    """Restore the trainable weights, optimizer, scheduler and random states; returns the saved state."""
    saved = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    missing = set(saved["trainable"]) - {n for n, _ in peft_model.named_parameters()}
    if missing:
        raise ValueError(f"{path}: checkpoint weights {sorted(missing)[:3]}... do not fit this model")
    peft_model.load_state_dict(saved["trainable"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate(saved["python_rng"])
    return json.loads((path / STATE_FILE).read_text())
