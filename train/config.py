"""Stage configuration: one dataclass, stage presets, JSON files and ``--key value`` overrides."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

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
        """Errors for settings that cannot work, before any model is loaded."""
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; use one of {STAGES}")
        if not self.train_data:
            raise ValueError("no train_data: give --train_data groups.jsonl (files or folders)")
        if not self.ratios or any(not isinstance(r, int) or r < 1 for r in self.ratios):
            raise ValueError(f"ratios must be integers >= 1, got {self.ratios}")
        if self.stage == "stage2" and self.ratios != [1]:
            raise ValueError(f"stage2 (vertical compensation) trains without compression: ratios must be [1], "
                             f"got {self.ratios}")
        if self.stage == "stage3" and (len(self.ratios) != 1 or self.ratios[0] == 1):
            raise ValueError(f"stage3 (horizontal compensation) trains one fixed ratio > 1, got {self.ratios}; "
                             "run it once per ratio, e.g. --ratios 2")
        if self.stage != "stage1" and (self.kd_external or self.kd_cascade):
            raise ValueError(f"{self.stage} is CE only: set kd_external and kd_cascade false")
        if not 0.0 <= self.keep_prob <= 1.0:
            raise ValueError(f"keep_prob must lie in [0, 1], got {self.keep_prob}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a positive and negatives), got {self.group_size}")
        if self.lr_schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'linear', 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.loss_reduction not in ("sum", "mean"):
            raise ValueError(f"loss_reduction must be 'sum' or 'mean', got {self.loss_reduction!r}")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(StageConfig)


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in typing.get_args(tp))


def parse_value(name: str, raw: str) -> Any:
    """A command-line string for field ``name``: JSON when it parses (numbers, booleans, lists, null),
    else the string; ``a,b`` or one bare value become a list for list fields."""
    types = _field_types()
    if name not in types:
        raise ValueError(f"unknown setting --{name}; known: {', '.join(sorted(types))}")
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
        loaded = json.loads(Path(config_file).read_text())
        unknown = sorted(set(loaded) - set(_field_types()) - {"_comment"})
        if unknown:
            raise ValueError(f"{config_file}: unknown setting(s) {unknown}")
        values.update({k: v for k, v in loaded.items() if k != "_comment"})
    values.update(parse_overrides(overrides))
    values["stage"] = stage
    return StageConfig(**values).check()


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
            raise ValueError(f"expected --key value, got {arg!r}")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"{arg} needs a value")
            key, raw = arg[2:], args[i + 1]
            i += 2
        key = key.replace("-", "_")
        values[key] = parse_value(key, raw)
    return values
