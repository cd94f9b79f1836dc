"""Loading Matroyshka models (spec section 5).

Three sources, all through transformers' own loaders (safetensors, no remote code):

* the **released layout**: a config with ``layer_wise``/``start_layer``/``layer_sep`` and weights
  holding ``lm_head.{i}.linear_head.weight`` (e.g. ``BAAI/Matroyshka-ReRanker-passage``);
* a **raw base LM** (Mistral, Llama, Qwen2, ...): one head per exit, each a copy of the LM-head row
  of the token "Yes" (the reference's ``from_raw``);
* on top of either, **PEFT LoRA adapters** (:mod:`pyterrier_matroyshka.adapters`), merged in order as the
  released usage does, or kept unmerged under names so a call can choose which are active.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig
from transformers.utils import cached_file

from .adapters import AdapterSpec, apply_adapters
from .model import ExitHead, MatroyshkaModel
from .tokenizer import load_tokenizer

log = logging.getLogger(__name__)

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
