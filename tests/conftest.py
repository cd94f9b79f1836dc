"""Shared fixtures: the golden checkpoint, tiny random backbones saved as raw base LMs, bench scripts as modules."""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch

from pyterrier_matroyshka.offline.paths import shared_data_dir, shared_golden_dir

BENCH = Path(__file__).resolve().parent.parent / "bench"

warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")
logging.getLogger("transformers").setLevel(logging.ERROR)

try:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    golden = shared_golden_dir()
    if golden is None:
        pytest.skip("../shared/golden is not beside the repository: golden vectors unavailable")
    return golden


@pytest.fixture(scope="session")
def golden(golden_dir) -> dict:
    return json.loads((golden_dir / "golden.json").read_text())


@pytest.fixture(scope="session")
def tiny_checkpoint(golden_dir) -> Path:
    return golden_dir / "tiny-matroyshka"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    data = shared_data_dir()
    if data is None:
        pytest.skip("../shared/data is not beside the repository: real collections unavailable")
    return data


def build_raw_base(folder: Path, tokenizer_source: Path, model_type: str = "llama", layers: int = 4,
                   hidden: int = 32, seed: int = 0) -> Path:
    """Save a tiny random causal LM (Mistral v1 vocabulary) plus tokenizer as a raw base folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=32000, hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=1024, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # peaked attention, so compression weights matter
        for name, p in model.named_parameters():
            if "proj" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def raw_llama(tmp_path_factory, tiny_checkpoint) -> Path:
    return build_raw_base(tmp_path_factory.mktemp("llama"), tiny_checkpoint, "llama")


@pytest.fixture(scope="session")
def raw_qwen2(tmp_path_factory, tiny_checkpoint) -> Path:
    return build_raw_base(tmp_path_factory.mktemp("qwen2"), tiny_checkpoint, "qwen2")


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread: tiny ops on a shared 2-core machine are many times faster than with two (the
    second thread waits for a time slice at every op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def golden_pairs(golden) -> list[tuple[str, str]]:
    return [(p["query"], p["passage"]) for p in golden["pairs"]]


def _load_bench(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:  # the scripts import their siblings, as when run from bench/
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_bench():
    """``load_bench(name)``: the script ``bench/<name>.py`` (not a package) imported as a module."""
    return _load_bench
