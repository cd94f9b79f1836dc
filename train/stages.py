"""The three training stages on one loop (spec sections 7 and 8).

* **stage1**, cascaded self-distillation: every micro-step draws a shape (a ratio, a random subset of the
  candidate compression layers), scores all exits with it, and adds CE, soft CE to the external teacher and
  soft CE to the uncompressed scores of each exit's anchor (a second pass under ``no_grad``).
* **stage2**, vertical compensation: a fresh LoRA on the merged stage-1 weights, ratio 1, CE only.
* **stage3**, horizontal compensation: the same with one fixed ratio (one adapter per ratio).

The same code runs on CPU, one GPU or several (``torchrun``: DDP, each rank takes its slice of every global
micro-batch and all ranks draw the same shape).

Why a loop of our own rather than ``transformers.Trainer`` or ``accelerate``: every micro-step draws a shape
(exits, compression layers, ratio) that changes the forward pass itself, and all ranks must draw the same one
(checked with :func:`~train.shape_sampling.assert_same_on_all_ranks`) or DDP's gradient all-reduce would mix
different graphs; stage 1 also runs a second, uncompressed no-grad pass as the cascade target. Those are a
few lines here and awkward hooks there. What a library does well is taken from it: the learning-rate schedule
(transformers, :mod:`train.lr_schedule`), LoRA (peft), DDP (torch).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from pyterrier_matroyshka.adapters import ADAPTER_INFO, check_adapter_folders
from pyterrier_matroyshka.checkpoint import load_model
from pyterrier_matroyshka.errors import UserError, check_local
from pyterrier_matroyshka.model import MatroyshkaModel
from pyterrier_matroyshka.prompt import PromptEncoder
from pyterrier_matroyshka.scorer import fast_dtype, resolve_device
from pyterrier_matroyshka.shape import Shape
from pyterrier_matroyshka.sharded import Ranks, join_ranks

from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import StageConfig
from .data import GroupBatches, check_negatives, collate, read_groups, require_teacher_scores
from .losses import LossTerms, cascade_anchors, ce_loss, stage1_loss
from .lr_schedule import lr_scheduler
from .shape_sampling import ShapeSampler, assert_same_on_all_ranks, candidate_layers

log = logging.getLogger(__name__)


@dataclass
class Runtime(Ranks):
    """Where this process runs (rank, world size, device: :class:`~pyterrier_matroyshka.sharded.Ranks`) and
    the autocast dtype."""

    autocast: Optional[torch.dtype] = None


def setup_runtime(config: StageConfig) -> Runtime:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); pick device and dtype."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    wanted = resolve_device(config.device) if config.device else None
    cuda = wanted.type == "cuda" if wanted is not None else torch.cuda.is_available()
    ranks = join_ranks(wanted, backend="nccl" if cuda else "gloo")
    use_bf16 = fast_dtype(ranks.device) == torch.bfloat16 if config.bf16 == "auto" else bool(config.bf16)
    return Runtime(ranks.rank, ranks.world, ranks.device, ranks.owns_group, torch.bfloat16 if use_bf16 else None)


def build_model(config: StageConfig, runtime: Runtime):
    """The base (with ``merge_adapters`` merged), wrapped with a fresh trainable LoRA. Returns
    ``(peft_model, core, tokenizer)``."""
    from peft import LoraConfig, get_peft_model

    with runtime.main_first():  # rank 0 converts and caches the base once
        core, tokenizer = load_model(config.model, adapters=config.merge_adapters or None, dtype=torch.float32,
                                     device=runtime.device, start_layer=config.start_layer,
                                     layer_sep=config.layer_sep)
    core.gradient_checkpointing = config.gradient_checkpointing
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), bias="none", task_type=None)
    try:
        peft_model = get_peft_model(core, lora)
    except ValueError as err:
        raise UserError(f"lora_targets {config.lora_targets} do not fit this model: {err}") from err
    if config.init_adapter:
        load_initial_adapter(peft_model, config.init_adapter)
    peft_model.train()
    return peft_model, core, tokenizer


def load_initial_adapter(peft_model, folder: str) -> None:
    """Start the new LoRA from a trained adapter of the same rank and targets (another epoch of a finished
    run, with a fresh schedule); anything that does not fit is refused rather than silently skipped."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    weights = load_peft_weights(folder, device="cpu")
    result = set_peft_model_state_dict(peft_model, weights)
    if result.unexpected_keys:
        raise UserError(f"init_adapter {folder} does not fit this LoRA (rank or targets differ): "
                        f"{sorted(result.unexpected_keys)[:3]}...")
    log.info("LoRA initialised from %s", folder)


class Trainer:
    """One stage's training loop; :meth:`run` trains, checkpoints and saves the adapter."""

    def __init__(self, config: StageConfig, runtime: Optional[Runtime] = None):
        self.config = config.check()
        self.runtime = runtime or setup_runtime(config)
        torch.manual_seed(config.seed)
        self.groups = read_groups(config.train_data, config.max_examples_per_file)
        check_negatives(self.groups, config.group_size)
        if config.kd_external:
            require_teacher_scores(self.groups)
        self.batches = GroupBatches(self.groups, config.group_size, config.batch_size, config.seed,
                                    self.runtime.rank, self.runtime.world, config.balance_domains)
        self.total_steps = config.max_steps or (self.batches.per_epoch * config.epochs) // config.grad_accum
        if self.total_steps < 1:
            raise UserError(f"{len(self.groups)} groups give {self.batches.per_epoch} micro-batches per epoch, fewer "
                            f"than grad_accum {config.grad_accum}: no optimizer step")
        check_local(config.model)  # the folders named, before the model loads
        check_adapter_folders(config.merge_adapters + ([config.init_adapter] if config.init_adapter else []),
                              unique_names=False)
        self.peft_model, self.core, self.tokenizer = build_model(config, self.runtime)
        core: MatroyshkaModel = self.core
        self.exits = self._train_exits(core.exit_depths)
        layers = candidate_layers(core.num_layers, core.start_layer, config.compress_layers, config.compress_every)
        self.sampler = ShapeSampler(self.exits, config.ratios, layers, config.keep_prob, config.seed)
        self.anchor_shape = self._anchor_shape()
        self.encoder = PromptEncoder.for_training(self.tokenizer, config.prompt, config.query_max_len,
                                                  config.passage_max_len)
        self._check_passage_room()
        self.model = self._wrap_ddp()
        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = lr_scheduler(self.optimizer, config.lr_schedule, self.total_steps, config.warmup_ratio)
        self.output = Path(config.output_dir)
        self.step = 0
        self.bugs = frozenset(config.reference_bugs)
        self.history: list[dict] = []

    def _check_passage_room(self) -> None:
        """The token budgets leave the passage at least one token next to the prompt, BOS, a one-token query
        and the separator: else every passage would be cut away without a word."""
        encoder, c = self.encoder, self.config
        room = encoder.joint_max_tokens - len(encoder.bos) - 1 - len(encoder.sep)
        if room < 1:
            raise UserError(f"--query_max_len {c.query_max_len} + --passage_max_len {c.passage_max_len} tokens leave "
                            f"no room for a passage beside the {len(encoder.prompt_ids())}-token prompt; raise "
                            "--passage_max_len")

    def _train_exits(self, available: list[int]) -> list[int]:
        wanted = self.config.train_exits or available
        missing = [e for e in wanted if e not in available]
        if missing:
            raise UserError(f"train_exits {missing} are not exits of this model ({available[0]}..{available[-1]})")
        return sorted(wanted)

    def _anchor_shape(self) -> Optional[Shape]:
        if not self.config.kd_cascade:
            return None
        anchors = sorted({a for a in cascade_anchors(self.exits, self.config.anchor_spacing).values() if a})
        return Shape(anchors) if anchors else None

    def _wrap_ddp(self):
        if self.runtime.world == 1:
            return self.peft_model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
        return DistributedDataParallel(self.peft_model, device_ids=ids)

    def _autocast(self):
        dtype = self.runtime.autocast
        return torch.autocast(self.runtime.device.type, dtype=dtype, enabled=dtype is not None)

    def loss(self, batch: dict[str, torch.Tensor], shape: Shape) -> LossTerms:
        """The stage's loss on one micro-batch (inputs already on the device)."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "query_lengths", "prompt_lengths")}
        group = self.config.group_size
        with self._autocast():
            student = self.model(**inputs, shape=shape, reference_bugs=self.bugs)
            if self.config.stage != "stage1":
                return ce_loss(student, self.exits, group, self.config.loss_reduction)
            uncompressed = None
            if self.anchor_shape is not None:
                uncompressed = self._uncompressed(inputs, student, shape)
            external = batch["teacher_scores"] if self.config.kd_external else None
            return stage1_loss(student, self.exits, group, external=external, uncompressed=uncompressed,
                               anchor_spacing=self.config.anchor_spacing, reduction=self.config.loss_reduction,
                               external_weight=self.config.kd_external_weight)

    def _uncompressed(self, inputs, student: torch.Tensor, shape: Shape) -> dict[int, torch.Tensor]:
        """Anchor scores without compression, under ``no_grad`` and without dropout (a clean target; also
        skips the dropout masks, a large share of a CPU step). An uncompressed student pass already is
        that pass up to dropout noise, so it is reused instead of run twice."""
        if not shape.compresses:
            return {d: s.detach() for d, s in zip(self.exits, student)}
        self.peft_model.eval()
        try:
            with torch.no_grad():
                scores = self.peft_model(**inputs, shape=self.anchor_shape, reference_bugs=self.bugs)
        finally:
            self.peft_model.train()
        return dict(zip(self.anchor_shape.exits, scores))

    def _resume(self) -> None:
        path = latest_checkpoint(self.output) if self.config.resume else None
        if path is None:
            return
        state = load_checkpoint(path, self.peft_model, self.optimizer, self.scheduler)
        expected = dict(batch_size=self.config.batch_size, grad_accum=self.config.grad_accum,
                        world=self.runtime.world, seed=self.config.seed, group_size=self.config.group_size)
        changed = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if changed:
            raise UserError(f"cannot resume {path}: settings changed since it was saved {changed} (saved, now); "
                            "the data order would differ. Use the same settings or --resume false")
        self.step = state["step"]
        log.info("resumed from %s at step %d/%d", path, self.step, self.total_steps)

    def _state(self) -> dict:
        c = self.config
        return dict(step=self.step, micro_step=self.step * c.grad_accum, total_steps=self.total_steps,
                    batch_size=c.batch_size, grad_accum=c.grad_accum, world=self.runtime.world, seed=c.seed,
                    group_size=c.group_size, stage=c.stage)

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns its log record."""
        c, started = self.config, time.perf_counter()
        sums: dict[str, float] = {}
        shapes = []
        first_bad = None  # (micro-batch, shape, loss): raised once every rank is past the gradient sync
        for accum in range(c.grad_accum):
            micro = self.step * c.grad_accum + accum
            batch = collate(self.batches.batch(micro), self.encoder, self.runtime.device)
            shape = self.sampler.draw(micro)
            if self.runtime.world > 1:
                assert_same_on_all_ranks(shape, self.core.num_layers, self.runtime.device)
            sync = self.runtime.world == 1 or accum == c.grad_accum - 1
            with contextlib.nullcontext() if sync else self.model.no_sync():
                terms = self.loss(batch, shape)
                (terms.total / c.grad_accum).backward()
            shapes.append(str(shape))
            loss = terms.total.item()
            if not math.isfinite(loss) and first_bad is None:
                first_bad = (accum, shape, loss, {k: float(v) for k, v in terms.terms.items()})
            sums["loss"] = sums.get("loss", 0.0) + loss / c.grad_accum
            for (kind, depth), value in terms.terms.items():
                key = f"{kind}@{depth}"
                sums[key] = sums.get(key, 0.0) + float(value) / c.grad_accum
        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
        grad_norm = float(grad_norm)
        self._stop_if_not_finite(first_bad, grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        record = dict(step=self.step, loss=sums.pop("loss"), lr=lr,
                      grad_norm=grad_norm, shapes=shapes, repeated_negatives=self.batches.repeated,
                      seconds=round(time.perf_counter() - started, 3), terms=sums)
        if self.runtime.device.type == "cuda":
            record["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated(self.runtime.device) / 2**30, 2)
        return record

    def _stop_if_not_finite(self, first_bad, grad_norm: float) -> None:
        """Stop before the optimizer step that a non-finite loss or gradient would spoil (every weight NaN),
        naming the step; the last checkpoint stays as it was."""
        step = self.step + 1
        if first_bad is not None:
            accum, shape, loss, terms = first_bad
            bad_terms = sorted(f"{kind}@{depth}" for (kind, depth), v in terms.items() if not math.isfinite(v))
            raise UserError(f"training stopped at step {step}/{self.total_steps}: the loss is {loss} (micro-batch "
                            f"{accum + 1} of {self.config.grad_accum}, shape {shape}, non-finite terms "
                            f"{bad_terms[:6]}); nothing of this step was applied. Check the data (teacher scores) "
                            f"or lower --lr (now {self.config.lr:g})")
        if not math.isfinite(grad_norm):
            raise UserError(f"training stopped at step {step}/{self.total_steps}: the gradient norm is {grad_norm}; "
                            f"nothing of this step was applied. Lower --lr (now {self.config.lr:g}) or train in "
                            "fp32 (--bf16 false)")

    def run(self) -> Path:
        """Train to ``total_steps`` (resuming if a checkpoint exists) and save the adapter."""
        c = self.config
        if self.runtime.main:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "train_config.json").write_text(c.to_json())
        self.runtime.barrier()
        self._resume()
        log.info("%s: %d groups, %d optimizer steps of %d x %d queries x %d passages x %d process(es); "
                 "autocast %s; shapes from ratios %s over layers %s", c.stage, len(self.groups), self.total_steps,
                 c.grad_accum, c.batch_size, c.group_size, self.runtime.world, self.runtime.autocast,
                 c.ratios, self.sampler.layers)
        left_out = len(self.groups) - self.batches.per_epoch * c.batch_size * self.runtime.world
        if left_out:
            log.info("%d of %d groups are left out of each epoch (an incomplete last micro-batch; another set each "
                     "epoch)", left_out, len(self.groups))
        while self.step < self.total_steps:
            record = self.train_step()
            self._log(record)
            if c.save_steps and self.step % c.save_steps == 0 and self.step < self.total_steps:
                if self.runtime.main:
                    save_checkpoint(self.output, self.peft_model, self.optimizer, self.scheduler, self._state(),
                                    c.save_total_limit)
                self.runtime.barrier()
        if self.runtime.main:
            self.save_adapter(self.output)
        self.runtime.barrier()
        return self.output

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if not self.runtime.main:
            return
        with open(self.output / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.step % max(1, self.config.log_steps) == 0 or self.step == self.total_steps:
            ce = {k: round(v, 3) for k, v in record["terms"].items() if k.startswith("CE@")}
            log.info("step %d/%d loss %.4f lr %.2e grad %.2f %.1fs shapes %s repeated %d CE %s", self.step,
                     self.total_steps, record["loss"], record["lr"], record["grad_norm"], record["seconds"],
                     record["shapes"], record["repeated_negatives"], ce)

    def save_adapter(self, folder: Path) -> None:
        """The trained LoRA (PEFT layout, loadable by ``MatroyshkaScorer(adapters=[...])``) plus a note of what it
        was trained for, so the engine can pick the adapter that fits a shape."""
        self.peft_model.save_pretrained(str(folder))
        c = self.config
        kind = {"stage1": "self_distillation", "stage2": "vertical", "stage3": "horizontal"}[c.stage]
        info = dict(stage=c.stage, kind=kind, ratios=c.ratios, compress_layers=self.sampler.layers,
                    base=c.model, merged_before=c.merge_adapters, exits=self.exits,
                    start_layer=self.core.start_layer, layer_sep=self.core.layer_sep, steps=self.step)
        (folder / ADAPTER_INFO).write_text(json.dumps(info, indent=2))
        log.info("saved %s adapter to %s", kind, folder)


def run_stage(config: StageConfig) -> Path:
    """Train one stage from its config; returns the adapter folder."""
    return Trainer(config).run()
