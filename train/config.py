"""Stage configuration: one dataclass, stage presets, JSON files and ``--key value`` overrides."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from pyterrier_matroyshka.errors import UserError, check_int, check_real

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "linear_head"]
STAGES = ("stage1", "stage2", "stage3")

#: What differs between the stages (spec 7.5 and 8); everything else is shared.
STAGE_PRESETS: dict[str, dict[str, Any]] = {
    "stage1": dict(ratios=[1, 2, 4, 8], kd_external=True, kd_cascade=True, lr=2e-4),
    "stage2": dict(ratios=[1], kd_external=False, kd_cascade=False, lr=2e-5),
    "stage3": dict(ratios=[2], kd_external=False, kd_cascade=False, lr=2e-5),
}


@dataclass
class StageConfig:
    """Everything a training stage reads. Defaults follow the reference README (spec 7.5)."""

    stage: str = "stage1"
    # model
    model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"  #: base LM or released-layout folder / hub id
    merge_adapters: list[str] = field(default_factory=list)  #: merged in order before the new LoRA (stage 2/3)
    init_adapter: Optional[str] = None  #: start the new LoRA from this adapter (same rank and targets)
    start_layer: Optional[int] = None  #: shallowest exit of a raw base (default 4)
    layer_sep: int = 1
    reference_bugs: list[str] = field(default_factory=list)  #: e.g. ["B2"] to train like the reference
    # data
    train_data: list[str] = field(default_factory=list)
    max_examples_per_file: Optional[int] = None
    balance_domains: bool = False  #: domains (the groups' ``src``) take turns in every epoch's order
    group_size: int = 16
    batch_size: int = 4  #: queries per micro-batch per process
    grad_accum: int = 4
    query_max_len: int = 32
    passage_max_len: int = 192
    prompt: Optional[str] = None
    # schedule
    epochs: int = 1
    max_steps: Optional[int] = None  #: optimizer steps; default: the epochs' worth
    lr: float = 2e-4
    lr_schedule: str = "linear"  #: after warm-up: linear, cosine or constant (transformers' schedules)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # shapes and loss
    ratios: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    compress_layers: Optional[list[int]] = None  #: candidates; default every ``compress_every``-th from start_layer
    compress_every: int = 4
    keep_prob: float = 0.5
    kd_external: bool = True
    kd_external_weight: float = 1.0  #: weight of the external-teacher terms (1 = the reference)
    train_exits: Optional[list[int]] = None  #: exits that get a loss (default all); [last] = plain fine-tuning
    kd_cascade: bool = True
    anchor_spacing: int = 8
    loss_reduction: str = "sum"
    # LoRA
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # machinery
    output_dir: str = "runs/stage1"
    bf16: Union[bool, str] = "auto"  #: "auto": bf16 autocast where the hardware has it
    gradient_checkpointing: bool = True
    save_steps: int = 100
    save_total_limit: int = 2
    log_steps: int = 1
    seed: int = 42
    device: Optional[str] = None
    num_threads: Optional[int] = None  #: CPU threads per process; 1 is fastest on a busy shared machine
    resume: bool = True

    def check(self) -> "StageConfig":
        """Errors for settings that cannot work, before any model is loaded: every value of the right type,
        every size and count in range."""
        if self.stage not in STAGES:
            raise UserError(f"unknown stage {self.stage!r}; use one of {STAGES}")
        _check_types(self)
        if not self.train_data:
            raise UserError("no train_data: give --train_data groups.jsonl (files or folders)")
        if not self.ratios or any(r < 1 for r in self.ratios):
            raise UserError(f"ratios must be integers >= 1, got {self.ratios}")
        if self.stage == "stage2" and self.ratios != [1]:
            raise UserError(f"stage2 (vertical compensation) trains without compression: ratios must be [1], "
                            f"got {self.ratios}")
        if self.stage == "stage3" and (len(self.ratios) != 1 or self.ratios[0] == 1):
            raise UserError(f"stage3 (horizontal compensation) trains one fixed ratio > 1, got {self.ratios}; "
                            "run it once per ratio, e.g. --ratios 2")
        if self.stage != "stage1" and (self.kd_external or self.kd_cascade):
            raise UserError(f"{self.stage} is CE only: set kd_external and kd_cascade false")
        if not 0.0 <= self.keep_prob <= 1.0:
            raise UserError(f"keep_prob must lie in [0, 1], got {self.keep_prob}")
        if self.group_size < 2:
            raise UserError(f"group_size must be >= 2 (a positive and negatives), got {self.group_size}")
        if self.lr_schedule not in ("linear", "cosine", "constant"):
            raise UserError(f"lr_schedule must be 'linear', 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.loss_reduction not in ("sum", "mean"):
            raise UserError(f"loss_reduction must be 'sum' or 'mean', got {self.loss_reduction!r}")
        _check_ranges(self)
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(StageConfig)


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as JSON gives it) is of the annotated type ``tp`` (a bool is not a number)."""
    if typing.get_origin(tp) is Union:
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(tp)[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Union:
        return " or ".join(_describe(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ')}s (e.g. a,b or a JSON list)"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _check_types(config: StageConfig) -> None:
    """Every setting has its annotated type (``--lr abc`` is refused here, not after the model has loaded)."""
    for name, tp in _field_types().items():
        value = getattr(config, name)
        if not _matches(value, tp):
            raise UserError(f"--{name} must be {_describe(tp)}, got {value!r}")
        if tp is float:  # JSON gives 1 for 1.0
            setattr(config, name, float(value))


def _check_ranges(c: StageConfig) -> None:
    """Every size, count and rate within the range it can work in."""
    for name in ("batch_size", "grad_accum", "query_max_len", "passage_max_len", "epochs", "layer_sep",
                 "compress_every", "anchor_spacing", "lora_r", "lora_alpha", "log_steps"):
        check_int(f"--{name}", getattr(c, name), 1)
    for name in ("max_steps", "start_layer", "max_examples_per_file", "num_threads"):
        check_int(f"--{name}", getattr(c, name), 1, optional=True)
    for name in ("save_steps", "save_total_limit"):
        check_int(f"--{name}", getattr(c, name), 0)
    check_real("--lr", c.lr, 0.0, above_minimum=True)
    check_real("--warmup_ratio", c.warmup_ratio, 0.0, 1.0)
    check_real("--weight_decay", c.weight_decay, 0.0)
    check_real("--max_grad_norm", c.max_grad_norm, 0.0, above_minimum=True)
    check_real("--kd_external_weight", c.kd_external_weight, 0.0)
    if not 0.0 <= c.lora_dropout < 1.0:
        raise UserError(f"--lora_dropout must lie in [0, 1), got {c.lora_dropout}")
    for name in ("compress_layers", "train_exits"):
        values = getattr(c, name)
        if values is not None and (not values or any(v < 1 for v in values)):
            raise UserError(f"--{name} must be a non-empty list of layers >= 1 (or null for the default), got {values}")
    if not c.lora_targets:
        raise UserError("--lora_targets is empty: name the modules to adapt, e.g. q_proj,v_proj")
    if c.bf16 not in (True, False, "auto"):
        raise UserError(f"--bf16 must be true, false or auto, got {c.bf16!r}")
    unknown = sorted(set(c.reference_bugs) - {"B1", "B2"})
    if unknown:
        raise UserError(f"--reference_bugs names unknown bugs {unknown}; use B1 and/or B2")
    for name in ("model", "output_dir"):
        if not getattr(c, name):
            raise UserError(f"--{name} is empty")


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in typing.get_args(tp))


def parse_value(name: str, raw: str) -> Any:
    """A command-line string for field ``name``: JSON when it parses (numbers, booleans, lists, null),
    else the string; ``a,b`` or one bare value become a list for list fields."""
    types = _field_types()
    if name not in types:
        raise UserError(f"unknown setting --{name}; known: {', '.join(sorted(types))}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if _is_list(types[name]) and value is not None and not isinstance(value, list):
        value = [json.loads(v) if v.strip().lstrip("-").isdigit() else v for v in raw.split(",")]
    return value


def load_config(stage: str, config_file: Optional[str] = None, overrides: Sequence[str] = ()) -> StageConfig:
    """Stage preset, then the JSON file, then ``--key value`` pairs (later wins); checked."""
    values: dict[str, Any] = dict(STAGE_PRESETS.get(stage, {}))
    if config_file:
        loaded = read_config_file(config_file)
        unknown = sorted(set(loaded) - set(_field_types()) - {"_comment"})
        if unknown:
            raise UserError(f"{config_file}: unknown setting(s) {unknown}")
        values.update({k: v for k, v in loaded.items() if k != "_comment"})
    values.update(parse_overrides(overrides))
    values["stage"] = stage
    return StageConfig(**values).check()


def read_config_file(path: str) -> dict[str, Any]:
    """A JSON object of settings from ``path``; errors name the file (and line) and what is wrong."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file {path} does not exist" if not file.exists() else f"config {path} is not a file")
    try:
        loaded = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: byte {err.object[err.start]:#04x} at offset {err.start} is not UTF-8") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}, line {err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path} must hold a JSON object of settings, got {type(loaded).__name__}")
    return loaded


def stage_help(stage: str) -> str:
    """The usage of ``python -m train STAGE``: every setting with its default for that stage (preset applied)."""
    defaults = StageConfig(stage=stage, **STAGE_PRESETS.get(stage, {}))
    lines = [f"usage: python -m train {stage} [--config FILE.json] [--key value ...]",
             "settings (a JSON --config first, then --key value pairs; later wins):"]
    for f in dataclasses.fields(StageConfig):
        if f.name != "stage":
            lines.append(f"  --{f.name} (default {json.dumps(getattr(defaults, f.name))})")
    return "\n".join(lines)


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--lr", "1e-4", "--ratios", "2"]`` -> ``{"lr": 1e-4, "ratios": [2]}``; ``--key=value`` works too."""
    values, args = {}, list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError(f"expected --key value, got {arg!r}")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise UserError(f"{arg} needs a value")
            key, raw = arg[2:], args[i + 1]
            i += 2
        key = key.replace("-", "_")
        values[key] = parse_value(key, raw)
    return values
