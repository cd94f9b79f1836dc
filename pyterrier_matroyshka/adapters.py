"""LoRA adapters on a Matroyshka model: loading (merged or kept switchable), switching per call, and the
note a project-trained adapter carries (``matroyshka_adapter.json``: what it was trained for), from which the
compensation adapter that fits a shape is picked (spec 8).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from safetensors import SafetensorError

from .errors import UserError, check_local, unreadable
from .model import MatroyshkaModel

AdapterSpec = Union[None, str, Sequence[str], Mapping[str, str]]
#: the note beside a project-trained adapter's weights (written by training, read to pick adapters by shape)
ADAPTER_INFO = "matroyshka_adapter.json"


def adapter_items(adapters: AdapterSpec) -> list[tuple[str, str]]:
    """``(name, folder)`` pairs; unnamed adapters are called after their folder (with '.', which PyTorch
    module names cannot hold, read as '_')."""
    if adapters is None:
        return []
    if isinstance(adapters, (str, os.PathLike)):
        adapters = [adapters]
    if isinstance(adapters, Mapping):
        return [(str(k), str(v)) for k, v in adapters.items()]
    return [(Path(path).name.replace(".", "_") or f"adapter_{i}", str(path)) for i, path in enumerate(adapters)]


def check_adapter_folders(adapters: AdapterSpec, unique_names: bool) -> list[tuple[str, str]]:
    """:func:`adapter_items`, each an adapter folder that is there (or may be a hub id); with ``unique_names``
    (switchable adapters, told apart by name) two folders of one name are refused: the second would
    silently replace the first."""
    items = adapter_items(adapters)
    seen: dict[str, str] = {}
    for name, path in items:
        check_local(path, "adapter folder")
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise UserError(f"adapter folder {path} holds no adapter_config.json: not a PEFT LoRA adapter")
        if unique_names and name in seen:
            raise UserError(f"adapters {seen[name]} and {path} are both called {name!r} (their folder name): the "
                            "second would replace the first. Rename a folder, or name them: "
                            "{'vertical': folder1, 'r2': folder2}")
        seen[name] = path
    return items


def apply_adapters(model: MatroyshkaModel, adapters: AdapterSpec, merge: bool = True):
    """Load LoRA adapters onto ``model``: merged one after another (``W += scale * B @ A``), or kept
    as named, switchable adapters (returns a ``PeftModel``)."""
    from peft import PeftConfig, PeftModel

    items = check_adapter_folders(adapters, unique_names=not merge)
    peft_model = None
    for name, path in items:
        _check_adapter_note(model, path)
        with unreadable(path, "adapter config", OSError, ValueError):
            config = PeftConfig.from_pretrained(path)
        config.task_type = None  # a plain PeftModel: the wrapper is not a generation model
        config.inference_mode = True
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, path, adapter_name=name, config=config)
            else:
                peft_model.load_adapter(path, adapter_name=name, peft_config=config)
        except (OSError, SafetensorError) as err:
            raise UserError(f"{path}: cannot read the adapter weights ({' '.join(str(err).split())[:240]}): the "
                            "files are damaged or incomplete") from err
        except (RuntimeError, ValueError) as err:
            raise UserError(f"adapter {path} does not fit this model ({model.config.model_type}, "
                            f"{model.num_layers} layers, hidden {model.config.hidden_size}, "
                            f"{len(model.exit_depths)} heads): {err}") from err
        _check_adapter_loaded(peft_model, name, path)
        if merge:
            model = peft_model.merge_and_unload()
            peft_model = None
    return peft_model if peft_model is not None else model


def _check_adapter_loaded(peft_model, name: str, path: str) -> None:
    """PEFT warns, but loads, when adapter weights have no module to go to, and leaves modules the file has
    no weights for at their fresh initialisation (an adapter for fewer layers); refuse both, naming them."""
    from peft.utils import load_peft_weights

    saved = set(load_peft_weights(path))
    own = {k for k, _ in peft_model.named_parameters() if f".{name}." in k or k.endswith(f".{name}")}
    own_lora = {k.replace(f".{name}.", ".") for k in own if ".lora_" in k}
    saved_lora = {k for k in saved if ".lora_" in k}
    core = unwrap(peft_model)
    model = f"this model ({core.num_layers} layers, {len(core.exit_depths)} heads)"
    if len(own) < len(saved) or saved_lora - own_lora:
        unused = sorted(saved_lora - own_lora) or sorted(saved)
        raise UserError(f"adapter {path} holds {len(saved)} tensors but only {len(own)} found a module in {model}, "
                        f"e.g. {_short(unused[0])}: it was trained for another base")
    untrained = sorted(own_lora - saved_lora)
    if untrained:
        raise UserError(f"adapter {path} has no weights for {len(untrained)} LoRA tensor(s) of {model}, e.g. "
                        f"{_short(untrained[0])}: it was trained for a model with fewer layers or heads")


def _short(key: str) -> str:
    return key.removeprefix("base_model.model.")


def _check_adapter_note(model, path: str) -> None:
    """A project adapter's note (``matroyshka_adapter.json``) says which exits it was trained for; refuse
    it on a model whose exits differ."""
    core = unwrap(model)
    info = adapter_info(path) if os.path.isdir(path) else {}
    trained = {k: info[k] for k in ("start_layer", "layer_sep") if k in info}
    own = {"start_layer": core.start_layer, "layer_sep": core.layer_sep}
    differ = {k: (v, own[k]) for k, v in trained.items() if v != own[k]}
    deepest = max(info.get("exits") or [0])
    if differ or deepest > core.num_layers:
        detail = ", ".join(f"{k} {a} (model {b})" for k, (a, b) in differ.items()) or \
            f"exits up to {deepest} (model has {core.num_layers} layers)"
        raise UserError(f"adapter {path} was trained for other exits: {detail}; load it on the model it was "
                        "trained on")


def _check_switchable(model, names: Optional[Sequence[str]]) -> bool:
    """True when ``model`` holds switchable adapters; errors for names it does not have."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        if names:
            raise UserError("adapters were merged at load time; load with merge_adapters=False to switch them")
        return False
    available = list(model.peft_config)
    unknown = [n for n in names or [] if n not in available]
    if unknown:
        raise UserError(f"unknown adapter(s) {unknown}; this model has {available}")
    return True


def set_active_adapters(model, names: Optional[Sequence[str]]) -> None:
    """Choose which unmerged adapters are active (their deltas add up); ``[]``/``None`` for none."""
    if not _check_switchable(model, names):
        return
    _restore_unmerged_weights(model)
    lora = model.base_model
    if names:
        lora.enable_adapter_layers()
        lora.set_adapter(list(names))
    else:
        lora.disable_adapter_layers()


def merge_active_adapters(model, names: Optional[Sequence[str]]) -> None:
    """Like :func:`set_active_adapters`, but the chosen adapters are merged into the weights, so a
    forward pass runs no LoRA matmuls (on a CPU an unmerged LoRA on every linear layer nearly doubles
    the time of a small model). The merge is computed in fp32 from a kept copy of the unmerged weights,
    so switching back and forth never drifts; the copy costs one more set of the adapted weights."""
    from peft.tuners.lora import LoraLayer

    if not _check_switchable(model, names):
        return
    wanted = tuple(names or ())
    if getattr(model, "_matroyshka_merged", None) == wanted:
        return
    originals = model.__dict__.setdefault("_matroyshka_unmerged", {})
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        weight = module.get_base_layer().weight
        original = originals.setdefault(name, weight.detach().clone())
        merged = original.to(torch.float32, copy=True)  # never add into the kept copy
        for adapter in wanted:
            if adapter in module.lora_A:
                merged += module.get_delta_weight(adapter).float()
        weight.data.copy_(merged)
    model.base_model.disable_adapter_layers()  # the deltas are in the weights now
    model._matroyshka_merged = wanted


def _restore_unmerged_weights(model) -> None:
    """Undo :func:`merge_active_adapters` and leave its mode, so its next call re-applies even the same
    names (the LoRA layers may have been switched back on meanwhile)."""
    merged = getattr(model, "_matroyshka_merged", None)
    if merged:  # () merged nothing: the weights are the kept copy already
        originals = model.__dict__["_matroyshka_unmerged"]
        for name, module in model.named_modules():
            if name in originals:
                module.get_base_layer().weight.data.copy_(originals[name])
    model._matroyshka_merged = None


def adapter_info(path: str) -> dict:
    """What a project-trained adapter was trained for (``kind``: vertical/horizontal, ``ratios``);
    empty for adapters without the note (e.g. the released ones)."""
    note = Path(path) / ADAPTER_INFO
    if not note.is_file():
        return {}
    try:
        info = json.loads(note.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{note} is not valid JSON ({err}); restore it or delete it") from None
    if not isinstance(info, dict):
        raise UserError(f"{note} must hold a JSON object, got {type(info).__name__}")
    return info


def pick_adapters(ratio: int, infos: Mapping[str, dict]) -> list[str]:
    """The compensation adapters that fit a compression ratio: the horizontal ones trained for it when
    the shape compresses, else the vertical ones (factorized compensation, spec 8). Adapters without
    a note of their kind are always used."""
    always = [n for n, i in infos.items() if i.get("kind") not in ("vertical", "horizontal")]
    if ratio > 1:
        horizontal = [n for n, i in infos.items() if i.get("kind") == "horizontal" and ratio in i.get("ratios", [])]
        if horizontal:
            return always + horizontal
    return always + [n for n, i in infos.items() if i.get("kind") == "vertical"]


def unwrap(model) -> MatroyshkaModel:
    """The :class:`MatroyshkaModel` inside a possible ``PeftModel``."""
    from peft import PeftModel

    return model.base_model.model if isinstance(model, PeftModel) else model
