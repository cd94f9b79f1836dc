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

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig
from transformers.utils import cached_file

from .errors import UserError, check_int
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
    with _reading(source, "tokenizer", ValueError):
        tokenizer = load_tokenizer(source)
    with _reading(source, "weights"):
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


@contextlib.contextmanager
def _reading(source: str, what: str, *also: type):
    """A file that cannot be read (truncated safetensors, malformed JSON, ...) as a :class:`UserError` naming it."""
    try:
        yield
    except UserError:
        raise
    except (OSError, SafetensorError, json.JSONDecodeError, *also) as err:
        raise UserError(f"{source}: cannot read its {what} ({' '.join(str(err).split())[:240]}): the files are "
                        "damaged or incomplete") from err


def check_finite_weights(model: nn.Module, source: str) -> None:
    """Refuse a model (with its adapters) whose weights hold NaN or infinity: every score would be NaN."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise UserError(f"{source}: {len(bad)} weight tensor(s) hold NaN or infinity, e.g. {', '.join(bad[:3])}: "
                        "the checkpoint or an adapter is damaged")


#: what a Hugging Face hub id looks like: ``name`` or ``namespace/name``
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def check_local(path, what: str = "model folder") -> str:
    """``path`` as a string, refused with a clear error when it names a local folder that is not there
    (a path that exists, starts with ``/``, ``.`` or ``~``, or has more parts than a hub id ``org/name``)
    or a file; a string that may be a hub id passes."""
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise UserError(f"{what}: expected a folder or hub id, got {path!r}")
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise UserError(f"{what} {path} is a file; give the folder that holds it")
    if not _HUB_ID.match(path) or path.startswith((".", "~")) or ".." in path:
        raise UserError(f"{what} {path} does not exist (looked in {os.path.abspath(os.path.expanduser(path))})")
    return path


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
        with _reading(path, "adapter config", ValueError):
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


ADAPTER_INFO = "matroyshka_adapter.json"


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
