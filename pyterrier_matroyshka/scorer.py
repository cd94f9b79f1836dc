"""``compute_score`` for plain Python users: the object the PyTerrier and Pyserini faces share.

Usage follows the reference README::

    scorer = MatroyshkaScorer("BAAI/Matroyshka-ReRanker-passage",
                              adapters=["./compensate/layer/full"], shape="L20,24:r2@8,16")
    scorer.compute_score([("what is a panda?", "The giant panda is a bear ...")])
    # -> [[s20], [s24]]  (one list per exit, ascending depth)
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .adapters import (AdapterSpec, adapter_info, adapter_items, merge_active_adapters, pick_adapters,
                       set_active_adapters, unwrap)
from .checkpoint import load_model
from .errors import UserError, check_int, text_problem
from .fingerprint import weights_digest
from .model import MatroyshkaModel, reference_bug_set
from .prompt import PromptEncoder
from .shape import Shape, ShapeLike


Pair = tuple[str, str]
Scores = Union[list[float], list[list[float]]]
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``device`` as a ``torch.device`` this machine has (default: CUDA when there is one, else the CPU)."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"unknown device {device!r}; use e.g. 'cpu', 'cuda' or 'cuda:1'") from err
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device {device} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s); "
                        "use 'cpu'")
    return device


def fast_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AMX/AVX-512 BF16), else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return torch.float32
    return torch.bfloat16 if ("amx_bf16" in flags or "avx512_bf16" in flags) else torch.float32


def resolve_dtype(dtype: Union[str, torch.dtype, None], device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return fast_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use 'auto', 'fp32', 'bf16' or 'fp16'")
    return _DTYPES[dtype]


def shape_from_reference_kwargs(shape: Optional[ShapeLike], cutoff_layers=None, compress_layers=None,
                                compress_ratio=None, default: Optional[Shape] = None) -> Optional[Shape]:
    """A :class:`Shape` from either ``shape`` or the reference's keyword names."""
    if shape is not None:
        if cutoff_layers is not None or compress_ratio is not None:
            raise UserError("give either shape= or cutoff_layers/compress_layers/compress_ratio, not both")
        return Shape.coerce(shape)
    if cutoff_layers is None and compress_ratio is None:
        return default
    exits = cutoff_layers if cutoff_layers is not None else (default.exits if default else None)
    if exits is None:
        raise UserError("compress_ratio given without cutoff_layers and no default shape")
    ratio = compress_ratio or 1
    return Shape(exits, compress_layers if compress_layers is not None else [8], ratio)


class MatroyshkaScorer:
    """A loaded Matroyshka re-ranker with default settings; every call may override them.

    Args:
        model_name_or_path: folder or hub id (released layout, or a raw base LM); or pass ``model``
            and ``tokenizer`` already loaded.
        adapters: LoRA adapters (``peft_path`` in the reference), merged in order; a mapping
            ``{name: folder}`` with ``merge_adapters=False`` keeps them switchable per call.
        compensation: adapters kept unmerged on top of the merged ones (names: folder names), e.g.
            the vertical and per-ratio horizontal LoRAs of a stage-1 model.
        active_adapters: which switchable adapters a call uses: ``"auto"`` (default) picks by the
            shape (the horizontal adapter trained for its ratio, else the vertical one), or names.
        merge_compensation: merge the active compensation adapters into the weights (from a kept
            copy, re-merged when a call needs other adapters) instead of running them as LoRA; faster,
            most of all for small models on a CPU, at the memory of one more copy of the weights.
        shape: default :class:`Shape` (default: the deepest exit, no compression). The reference's
            ``cutoff_layers``, ``compress_layers``, ``compress_ratio`` are accepted too.
        batch_size, max_length, query_max_length: batching and token budgets (reference defaults).
        dtype: 'auto' (bf16 where the hardware has it), 'fp32', 'bf16' or 'fp16'.
        normalize: apply a sigmoid to the scores.
        prompt: instruction placed after the passage (default: the reference prompt).
        reference_compat: replay the reference's bugs B1 and B2 (``True``, or e.g. ``{"B2"}``) for
            adapters trained with them; the default is the corrected behaviour.
    """

    def __init__(self, model_name_or_path: Optional[str] = None, *, model: Optional[MatroyshkaModel] = None,
                 tokenizer=None, adapters: AdapterSpec = None, peft_path: AdapterSpec = None,
                 merge_adapters: bool = True, compensation: AdapterSpec = None,
                 active_adapters: Union[str, Sequence[str], None] = "auto", merge_compensation: bool = False,
                 shape: Optional[ShapeLike] = None, cutoff_layers=None, compress_layers=None, compress_ratio=None,
                 batch_size: int = 32, max_length: int = 512, query_max_length: Optional[int] = None,
                 dtype: Union[str, torch.dtype, None] = "auto", device: Union[str, torch.device, None] = None,
                 normalize: bool = False, prompt: Optional[str] = None,
                 reference_compat: Union[bool, Sequence[str]] = False, verbose: bool = False,
                 start_layer: Optional[int] = None, layer_sep: int = 1):
        check_budgets(batch_size, max_length, query_max_length)
        self.device = resolve_device(device)
        if model is None:
            if model_name_or_path is None:
                raise UserError("give model_name_or_path, or an already loaded model and tokenizer")
            self.dtype = resolve_dtype(dtype, self.device)
            model, tokenizer = load_model(model_name_or_path, adapters=adapters if adapters is not None else peft_path,
                                          merge_adapters=merge_adapters, switchable=compensation, dtype=self.dtype,
                                          device=self.device, start_layer=start_layer, layer_sep=layer_sep)
        elif tokenizer is None:
            raise UserError("a loaded model needs its tokenizer too")
        else:
            self.dtype = next(model.parameters()).dtype
        self.model, self.tokenizer = model, tokenizer
        self.name = str(model_name_or_path or getattr(unwrap(model).config, "_name_or_path", "model"))
        self.shape = shape_from_reference_kwargs(shape, cutoff_layers, compress_layers, compress_ratio,
                                                 default=Shape(self.core.num_layers))
        self.shape.validate(self.core.exit_depths)
        self.batch_size, self.max_length, self.query_max_length = batch_size, max_length, query_max_length
        self.normalize, self.prompt, self.verbose = normalize, prompt, verbose
        self.reference_bugs = reference_bug_set(reference_compat)
        self.active_adapters, self.merge_compensation = active_adapters, merge_compensation
        switchable = compensation if merge_adapters else (adapters if adapters is not None else peft_path)
        self.adapter_infos = {name: adapter_info(path) for name, path in adapter_items(switchable)}
        self._encoders: dict = {}
        self.weights_digest = weights_digest(self.model)  # now, before any compensation is merged in

    @classmethod
    def from_pretrained(cls, variant: Optional[str] = None, **kwargs) -> "MatroyshkaScorer":
        """A named pretrained variant (default: the package's default model) with its trained adapters and
        settings; keyword arguments override them (see :mod:`pyterrier_matroyshka.pretrained`)."""
        from .pretrained import scorer_settings

        base, settings = scorer_settings(variant)
        return cls(base, **{**settings, **kwargs})

    @property
    def core(self) -> MatroyshkaModel:
        return unwrap(self.model)

    @property
    def exits(self) -> list[int]:
        """Depths that have a scoring head."""
        return self.core.exit_depths

    def with_shape(self, shape: ShapeLike) -> "MatroyshkaScorer":
        """The same loaded weights at another default shape (nothing is reloaded)."""
        other = object.__new__(MatroyshkaScorer)
        other.__dict__.update(self.__dict__)
        other.shape = Shape.coerce(shape).validate(self.exits)
        return other

    def adapters_for(self, shape: Shape, requested: Union[str, Sequence[str], None] = None) -> list[str]:
        """The switchable adapters a call at ``shape`` uses (see ``active_adapters``)."""
        chosen = requested if requested is not None else self.active_adapters
        if chosen == "auto":
            return pick_adapters(shape.ratio, self.adapter_infos)
        return list(chosen or [])

    def encoder(self, max_length: Optional[int] = None, query_max_length: Optional[int] = None,
                prompt: Optional[str] = None) -> PromptEncoder:
        key = (self.max_length if max_length is None else max_length,
               self.query_max_length if query_max_length is None else query_max_length, prompt or self.prompt)
        if key not in self._encoders:
            self._encoders[key] = PromptEncoder.for_inference(self.tokenizer, key[2], key[0], key[1])
        return self._encoders[key]

    def fingerprint(self, shape: Optional[ShapeLike] = None) -> dict:
        """Everything that decides this scorer's scores at ``shape`` (default: its own): the weights (a
        digest, see :func:`~pyterrier_matroyshka.fingerprint.weights_digest`), dtype, the adapters a call
        switches on, the shape, token budgets, prompt, reference bugs and normalization; not the model's name
        (one folder reached by two paths is one model). Equal fingerprints give equal scores for equal
        (query, passage) pairs; caches key on it."""
        shape = (Shape.coerce(shape) if shape is not None else self.shape).validate(self.exits)
        encoder = self.encoder()
        return {"weights": self.weights_digest, "dtype": str(self.dtype).removeprefix("torch."),
                "adapters": self.adapters_for(shape), "shape": str(shape), "max_length": self.max_length,
                "query_max_length": self.query_max_length, "prompt": encoder.default_prompt,
                "reference_bugs": sorted(self.reference_bugs), "normalize": bool(self.normalize)}

    def mean_lengths(self, pairs: Sequence[Pair]) -> tuple[int, int, int]:
        """Mean query, passage and prompt token counts of ``pairs`` as this scorer encodes them (the
        lengths :meth:`flops` takes)."""
        encoded = self.encoder().encode(_as_pairs(pairs))
        n = max(len(encoded), 1)
        return (round(sum(e.query_len for e in encoded) / n), round(sum(e.passage_len for e in encoded) / n),
                round(sum(e.prompt_len for e in encoded) / n))

    def flops(self, shape: Optional[ShapeLike] = None, query_len: int = 16, passage_len: int = 96,
              prompt_len: Optional[int] = None) -> float:
        """Estimated forward FLOPs per pair for ``shape`` at the given token lengths."""
        for name, length in (("query_len", query_len), ("passage_len", passage_len), ("prompt_len", prompt_len)):
            check_int(name, length, 0, optional=name == "prompt_len")
        shape = Shape.coerce(shape) if shape is not None else self.shape
        if prompt_len is None:
            encoder = self.encoder()
            prompt_len = len(encoder.sep) + len(encoder.prompt_ids())
        return shape.validate(self.exits).flops(self.core.dims, query_len, passage_len, prompt_len)

    @torch.inference_mode()
    def compute_score(self, pairs: Union[Pair, Sequence[Pair]], *, shape: Optional[ShapeLike] = None,
                      cutoff_layers=None, compress_layers=None, compress_ratio=None,
                      batch_size: Optional[int] = None, max_length: Optional[int] = None,
                      query_max_length: Optional[int] = None, normalize: Optional[bool] = None,
                      prompt: Optional[str] = None, adapters: Optional[Sequence[str]] = None,
                      verbose: Optional[bool] = None, progress: Optional[Callable[..., Any]] = None) -> Scores:
        """Score (query, passage) pairs.

        Returns a list of N floats for a one-exit shape, else ``[n_exits][N]`` in ascending depth.
        Results are in input order; pairs are length-sorted into batches internally. With ``verbose``, a
        progress bar counts the pairs with an ETA; ``progress`` is its tqdm-like class (default
        ``tqdm.auto.tqdm``; the PyTerrier face passes ``pt.tqdm``, so ``pt.set_tqdm`` applies).
        """
        check_budgets(batch_size, max_length, query_max_length)
        shape = shape_from_reference_kwargs(shape, cutoff_layers, compress_layers, compress_ratio, self.shape)
        shape.validate(self.exits)
        pairs = _as_pairs(pairs)
        # NaN until written: every column must be filled (and finite) before anything is returned
        scores = torch.full((len(shape.exits), len(pairs)), float("nan"))
        filled = torch.zeros(len(pairs), dtype=torch.bool)
        if pairs:
            activate = merge_active_adapters if self.merge_compensation else set_active_adapters
            activate(self.model, self.adapters_for(shape, adapters))
            encoder = self.encoder(max_length, query_max_length, prompt)
            encoded = encoder.encode(pairs, prompt)
            order = sorted(range(len(pairs)), key=lambda i: -len(encoded[i].input_ids))
            size = batch_size or self.batch_size
            batches = [order[i: i + size] for i in range(0, len(order), size)]
            show = self.verbose if verbose is None else verbose
            with (progress or tqdm)(total=len(pairs), desc=f"matroyshka {shape}", unit="pair", disable=not show,
                                    smoothing=0.1) as bar:
                for batch in batches:
                    inputs = encoder.collate([encoded[i] for i in batch], self.device)
                    scores[:, batch] = self.model(**inputs, shape=shape, reference_bugs=self.reference_bugs).cpu()
                    filled[batch] = True
                    bar.update(len(batch))
        _check_filled(scores, filled, pairs, self.dtype)
        if self.normalize if normalize is None else normalize:
            scores = torch.sigmoid(scores.double())
        result = scores.tolist()
        return result[0] if len(shape.exits) == 1 else result

    def __repr__(self) -> str:
        return (f"MatroyshkaScorer({self.name!r}, shape='{self.shape}', exits={self.exits[0]}..{self.exits[-1]}, "
                f"dtype={str(self.dtype).removeprefix('torch.')}, device='{self.device}')")


def check_budgets(batch_size: Optional[int], max_length: Optional[int], query_max_length: Optional[int]) -> None:
    """Batch size and token budgets: whole numbers >= 1 (``None``: the default)."""
    check_int("batch_size", batch_size, 1, optional=True)
    check_int("max_length (passage tokens)", max_length, 1, optional=True)
    check_int("query_max_length (query tokens)", query_max_length, 1, optional=True)


def _check_filled(scores: torch.Tensor, filled: torch.Tensor, pairs: Sequence[Pair], dtype: torch.dtype) -> None:
    """Every pair scored, every score finite: else an error names the first bad pair."""
    if not bool(filled.all()):  # a batching bug, never bad input
        raise RuntimeError(f"internal error: {int((~filled).sum())} of {len(pairs)} pairs were not scored")
    bad = (~torch.isfinite(scores)).any(dim=0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        hint = ("fp16 overflows on some inputs: use dtype='bf16' or 'fp32'" if dtype == torch.float16
                else "the weights may be damaged (look for NaN/inf tensors in the checkpoint and adapters)")
        raise UserError(f"the model gave a non-finite score ({scores[:, i].tolist()}) to pair {i} "
                        f"({pairs[i][0]!r:.60}, {pairs[i][1]!r:.60}) and {int(bad.sum()) - 1} other pair(s); {hint}")


def _as_pairs(pairs) -> list[Pair]:
    """Validate input: one pair or a list of pairs of strings; a TypeError names the bad index, a lone
    surrogate (text no tokenizer can read) a UserError."""
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs):
        pairs = [pairs]
    if isinstance(pairs, (str, bytes)):
        raise TypeError(f"pairs is one string {pairs!r:.80}; expected (query, passage) tuples")
    pairs = list(pairs)
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"pair {i} is {type(pair).__name__} {pair!r:.80}; expected a (query, passage) tuple")
        for what, text in zip(("query", "passage"), pair):
            problem = text_problem(text)
            if problem is None:
                continue
            if not isinstance(text, str):
                raise TypeError(f"pair {i}: {what} {problem}")
            raise UserError(f"pair {i}: {what} {problem}")
    return [tuple(p) for p in pairs]
