"""Loading Matroyshka models (spec section 5).

Three sources, all through transformers' own loaders (safetensors, no remote code):

* the **released layout**: a config with ``layer_wise``/``start_layer``/``layer_sep`` and weights
  holding ``lm_head.{i}.linear_head.weight`` (e.g. ``BAAI/Matroyshka-ReRanker-passage``);
* a **raw base LM** (Mistral, Llama, Qwen2, ...): one head per exit, each a copy of the LM-head row
  of the token "Yes" (the reference's ``from_raw``);
* on top of either, **PEFT LoRA adapters**, merged in order as the released usage does, or kept
  unmerged under names so a call can choose which are active.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig
from transformers.utils import cached_file

from .model import ExitHead, MatroyshkaModel
from .tokenizer import load_tokenizer

log = logging.getLogger(__name__)

AdapterSpec = Union[None, str, Sequence[str], Mapping[str, str]]
DEFAULT_START_LAYER = 4


def load_model(name_or_path: str, *, adapters: AdapterSpec = None, merge_adapters: bool = True,
               switchable: AdapterSpec = None, dtype: torch.dtype = torch.float32,
               device: Union[str, torch.device] = "cpu", start_layer: Optional[int] = None, layer_sep: int = 1):
    """Load a :class:`MatroyshkaModel` and its tokenizer.

    Args:
        name_or_path: a local folder or a hub id, in the released layout or a raw base LM.
        adapters: LoRA adapter folders, applied in order; a ``{name: folder}`` mapping keeps names.
        merge_adapters: merge the adapters into the weights (fast, fixed); if False they stay
            switchable (see :func:`set_active_adapters`) and the returned model is a ``PeftModel``.
        switchable: more adapters loaded unmerged after ``adapters`` were merged, e.g. the
            compensation LoRAs on top of a merged stage-1 adapter.
        start_layer, layer_sep: exits of a raw base (default 4 and 1, as the released models).
    Returns:
        ``(model, tokenizer)``; the model is in eval mode on ``device``.
    """
    source = _resolve(name_or_path)
    config_dict, _ = PretrainedConfig.get_config_dict(source)
    tokenizer = load_tokenizer(source)
    if config_dict.get("layer_wise"):
        model = _load_released(source, config_dict, dtype)
    else:
        model = _load_raw(source, tokenizer, dtype, start_layer, layer_sep)
    model = apply_adapters(model, adapters, merge=merge_adapters)
    if switchable:
        if not merge_adapters:
            raise ValueError("switchable adapters go on top of merged ones; with merge_adapters=False list them all "
                             "in adapters")
        model = apply_adapters(model, switchable, merge=False)
    return model.to(device).eval(), tokenizer


def _resolve(name_or_path: str) -> str:
    """Local folders as they are; hub ids through the offline fallbacks when the project has one."""
    if os.path.isdir(name_or_path):
        return name_or_path
    try:
        from .offline.base_models import resolve_pretrained
    except ImportError:
        return name_or_path
    return resolve_pretrained(name_or_path)


def _load_released(source: str, config_dict: dict, dtype: torch.dtype) -> MatroyshkaModel:
    config = _backbone_config(config_dict)
    backbone = AutoModel.from_pretrained(source, config=config, dtype=dtype)
    start, sep = config_dict["start_layer"], config_dict.get("layer_sep", 1)
    tensors = _read_tensors(source, prefix="lm_head.")
    heads = nn.ModuleList()
    for i in range(len(range(start, config.num_hidden_layers + 1, sep))):
        key = f"lm_head.{i}.linear_head.weight"
        if key not in tensors:
            raise ValueError(f"{source}: config says layer_wise with start_layer {start}, but the weights lack {key}")
        head = ExitHead(config.hidden_size).to(dtype)
        head.linear_head.weight.data.copy_(tensors[key])
        heads.append(head)
    return MatroyshkaModel(backbone, heads, start, sep)


def _backbone_config(config_dict: dict) -> PretrainedConfig:
    """The plain backbone config of a released checkpoint (``cost_wise_mistral`` -> ``mistral``)."""
    values = {k: v for k, v in config_dict.items() if k not in ("architectures", "auto_map")}
    model_type = values.pop("model_type", "")
    model_type = model_type.removeprefix("cost_wise_")
    try:
        return AutoConfig.for_model(model_type, **values)
    except ValueError as err:
        raise ValueError(f"unknown backbone architecture {model_type!r} in the checkpoint config") from err


def _read_tensors(source: str, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose names start with ``prefix`` from the checkpoint's safetensors file(s)."""
    index = cached_file(source, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        files = sorted({f for k, f in weight_map.items() if k.startswith(prefix)})
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        with safe_open(cached_file(source, name), framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    return tensors


def _load_raw(source: str, tokenizer, dtype: torch.dtype, start_layer: Optional[int], layer_sep: int) -> MatroyshkaModel:
    lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    backbone = lm.get_decoder()
    layers = backbone.config.num_hidden_layers
    start = start_layer if start_layer is not None else min(DEFAULT_START_LAYER, layers)
    if not 1 <= start <= layers:
        raise ValueError(f"start_layer {start} outside 1..{layers} for this {layers}-layer model")
    yes_row = lm.get_output_embeddings().weight[yes_token_id(tokenizer)].detach()
    heads = nn.ModuleList()
    for _ in range(start, layers + 1, layer_sep):
        head = ExitHead(backbone.config.hidden_size).to(dtype)
        head.linear_head.weight.data.copy_(yes_row.unsqueeze(0))
        heads.append(head)
    return MatroyshkaModel(backbone, heads, start, layer_sep)


def yes_token_id(tokenizer) -> int:
    """The id of "Yes" (its last piece, as the reference's training code reads it)."""
    return tokenizer("Yes", add_special_tokens=False)["input_ids"][-1]


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


def apply_adapters(model: MatroyshkaModel, adapters: AdapterSpec, merge: bool = True):
    """Load LoRA adapters onto ``model``: merged one after another (``W += scale * B @ A``), or kept
    as named, switchable adapters (returns a ``PeftModel``)."""
    from peft import PeftConfig, PeftModel

    items = adapter_items(adapters)
    peft_model = None
    for name, path in items:
        config = PeftConfig.from_pretrained(path)
        config.task_type = None  # a plain PeftModel: the wrapper is not a generation model
        config.inference_mode = True
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, path, adapter_name=name, config=config)
            else:
                peft_model.load_adapter(path, adapter_name=name, peft_config=config)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"adapter {path} does not fit this model ({model.config.model_type}, "
                             f"{model.num_layers} layers, hidden {model.config.hidden_size}, "
                             f"{len(model.exit_depths)} heads): {err}") from err
        _check_adapter_loaded(peft_model, name, path)
        if merge:
            model = peft_model.merge_and_unload()
            peft_model = None
    return peft_model if peft_model is not None else model


def _check_adapter_loaded(peft_model, name: str, path: str) -> None:
    """PEFT warns, but loads, when adapter weights have no module to go to; refuse instead."""
    from peft.utils import load_peft_weights

    saved = load_peft_weights(path)
    own = {k for k, _ in peft_model.named_parameters() if f".{name}." in k or k.endswith(f".{name}")}
    if len(own) < len(saved):
        raise ValueError(f"adapter {path} holds {len(saved)} LoRA tensors but only {len(own)} found a module "
                         "in this model: it was trained for another base")


def _check_switchable(model, names: Optional[Sequence[str]]) -> bool:
    """True when ``model`` holds switchable adapters; errors for names it does not have."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        if names:
            raise ValueError("adapters were merged at load time; load with merge_adapters=False to switch them")
        return False
    available = list(model.peft_config)
    unknown = [n for n in names or [] if n not in available]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; this model has {available}")
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


ADAPTER_INFO = "matroyshka_adapter.json"


def adapter_info(path: str) -> dict:
    """What a project-trained adapter was trained for (``kind``: vertical/horizontal, ``ratios``);
    empty for adapters without the note (e.g. the released ones)."""
    note = Path(path) / ADAPTER_INFO
    return json.loads(note.read_text()) if note.is_file() else {}


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
