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
from typing import Optional, Sequence, Union

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig
from transformers.utils import cached_file

from .adapters import AdapterSpec, apply_adapters, check_adapter_folders
from .errors import UserError, check_int, check_local, unreadable
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
    check_int("start_layer", start_layer, 1, optional=True)
    check_int("layer_sep", layer_sep, 1)
    check_adapter_folders(adapters, unique_names=not merge_adapters)  # before any weights load
    check_adapter_folders(switchable, unique_names=True)
    source = _resolve(name_or_path)
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise UserError(f"model folder {source} holds no config.json: give the folder of a Hugging Face model "
                        "(config.json, weights, tokenizer)")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source)
    except OSError as err:
        where = (f"the folder {source} holds no readable config.json" if os.path.isdir(source)
                 else f"{name_or_path!r} is not a local folder and could not be fetched")
        raise UserError(f"cannot load a model: {where} ({' '.join(str(err).split())[:200]})") from err
    with unreadable(source, "tokenizer", OSError, ValueError):
        tokenizer = load_tokenizer(source)
    with unreadable(source, "weights", OSError, SafetensorError, json.JSONDecodeError):
        if config_dict.get("layer_wise"):
            model = _load_released(source, config_dict, dtype)
        else:
            model = _load_raw(source, tokenizer, dtype, start_layer, layer_sep)
    model = apply_adapters(model, adapters, merge=merge_adapters)
    if switchable:
        if not merge_adapters:
            raise UserError("switchable adapters go on top of merged ones; with merge_adapters=False list them all "
                            "in adapters")
        model = apply_adapters(model, switchable, merge=False)
    model = model.to(device).eval()
    check_finite_weights(model, source)
    return model, tokenizer


def check_finite_weights(model: nn.Module, source: str) -> None:
    """Refuse a model (with its adapters) whose weights hold NaN or infinity: every score would be NaN."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise UserError(f"{source}: {len(bad)} weight tensor(s) hold NaN or infinity, e.g. {', '.join(bad[:3])}: "
                        "the checkpoint or an adapter is damaged")


def _resolve(name_or_path: str) -> str:
    """Local folders as they are; hub ids through the offline fallbacks when the project has one."""
    name_or_path = check_local(name_or_path)
    if os.path.isdir(name_or_path):
        return name_or_path
    try:
        from .offline.base_models import resolve_pretrained
    except ImportError:
        return name_or_path
    return resolve_pretrained(name_or_path)


def _load_released(source: str, config_dict: dict, dtype: torch.dtype) -> MatroyshkaModel:
    config = _backbone_config(config_dict)
    start = check_int(f"{source}: config start_layer", config_dict.get("start_layer"), 1, config.num_hidden_layers)
    sep = check_int(f"{source}: config layer_sep", config_dict.get("layer_sep", 1), 1)
    backbone, report = AutoModel.from_pretrained(source, config=config, dtype=dtype, output_loading_info=True,
                                                 ignore_mismatched_sizes=True)
    check_loading_report(source, report, ignore_unexpected="lm_head.")
    tensors = _read_tensors(source, prefix="lm_head.")
    expected = [f"lm_head.{i}.linear_head.weight" for i in range(len(range(start, config.num_hidden_layers + 1, sep)))]
    _check_names(source, "head weights", missing=[k for k in expected if k not in tensors],
                 unexpected=sorted(set(tensors) - set(expected)),
                 hint=f"the config (start_layer {start}, layer_sep {sep}, {config.num_hidden_layers} layers) and "
                      "the weights disagree")
    heads = nn.ModuleList()
    for key in expected:
        if tuple(tensors[key].shape) != (1, config.hidden_size):
            raise UserError(f"{source}: {key} has shape {list(tensors[key].shape)}, expected [1, {config.hidden_size}] "
                            "(the config's hidden_size): the config and the weights disagree")
        head = ExitHead(config.hidden_size).to(dtype)
        head.linear_head.weight.data.copy_(tensors[key])
        heads.append(head)
    return MatroyshkaModel(backbone, heads, start, sep)


def check_loading_report(source: str, report: dict, ignore_unexpected: str = "", ignore_missing=()) -> None:
    """Refuse weights that ``from_pretrained`` reported missing (left randomly initialised), unexpected
    (no place in the model) or mis-shaped, naming them: a damaged checkpoint, or a config that disagrees
    with its weights, must not load as a different model."""
    mismatched = [f"{name} (file {list(saved)}, model {list(model)})" for name, saved, model in
                  sorted(report.get("mismatched_keys", ()))]
    if mismatched:
        raise UserError(f"{source}: {len(mismatched)} tensor(s) have the wrong shape for the config: "
                        f"{', '.join(mismatched[:4])}: the config and the weights disagree (or the file is damaged)")
    _check_names(source, "tensors", missing=sorted(set(report.get("missing_keys", ())) - set(ignore_missing)),
                 unexpected=sorted(k for k in report.get("unexpected_keys", ())
                                   if not (ignore_unexpected and k.startswith(ignore_unexpected))),
                 hint="the checkpoint is damaged or its config does not describe its weights")
    if report.get("error_msgs"):
        raise UserError(f"{source}: loading failed: {'; '.join(report['error_msgs'])[:400]}")


def _check_names(source: str, what: str, missing: Sequence[str], unexpected: Sequence[str], hint: str) -> None:
    """Refuse ``missing`` or ``unexpected`` tensor names, naming the first few of each."""
    def listed(label: str, names: Sequence[str]) -> list[str]:
        return [f"{label} {len(names)}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"] if names else []

    if missing or unexpected:
        parts = listed("missing", missing) + listed("unexpected", unexpected)
        raise UserError(f"{source}: {what} do not match the model ({'; '.join(parts)}): {hint}")


def _backbone_config(config_dict: dict) -> PretrainedConfig:
    """The plain backbone config of a released checkpoint (``cost_wise_mistral`` -> ``mistral``)."""
    values = {k: v for k, v in config_dict.items() if k not in ("architectures", "auto_map")}
    model_type = values.pop("model_type", "")
    model_type = model_type.removeprefix("cost_wise_")
    try:
        return AutoConfig.for_model(model_type, **values)
    except ValueError as err:
        raise UserError(f"unknown backbone architecture {model_type!r} in the checkpoint config") from err


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
    lm, report = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, output_loading_info=True,
                                                      ignore_mismatched_sizes=True)
    tied = ["lm_head.weight"] if getattr(lm.config, "tie_word_embeddings", False) else []
    check_loading_report(source, report, ignore_missing=tied)
    backbone = lm.get_decoder()
    layers = backbone.config.num_hidden_layers
    start = start_layer if start_layer is not None else min(DEFAULT_START_LAYER, layers)
    if not 1 <= start <= layers:
        raise UserError(f"start_layer {start} outside 1..{layers} for this {layers}-layer model")
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
