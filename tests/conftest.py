"""Shared fixtures (the golden checkpoint, tiny random backbones saved as raw base LMs, bench scripts as modules)
and the test groups: ``pytest -m unit`` is the quick subset, ``golden``, ``integration`` and ``slow`` the rest."""
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

from helpers import tiny_base
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


#: each module's group (markers registered in setup.cfg); a test may name its own with a marker instead
MODULE_GROUPS = {
    "unit": {"test_compress.py", "test_shape.py", "test_trec.py", "test_fusion.py", "test_model_properties.py",
             "test_evaluate_demo.py", "test_recipe.py", "test_train_data.py", "test_train_export.py",
             "test_train_losses.py", "test_train_holdout.py", "test_train_stages.py", "test_train_groups.py",
             "test_reranker.py", "test_train_mix.py", "test_train_lr_schedule.py"},
    "golden": {"test_golden.py", "test_token_golden.py"},
    "integration": {"test_bm25.py", "test_collections.py", "test_cli.py", "test_pyserini.py", "test_notebooks.py",
                    "test_teacher.py", "test_offline.py", "test_train_ddp.py"},
}
SLOW_MODULES = {"test_notebooks.py", "test_offline.py", "test_teacher.py"}
GROUPS = tuple(MODULE_GROUPS)


def group_of(item: pytest.Item) -> str:
    """A test's group: its own marker; else integration when it reads the real collections (``data_dir``) or
    its module is not listed (so a new test never slows the quick subset); else its module's."""
    for group in GROUPS:
        if item.get_closest_marker(group):
            return group
    module = Path(str(item.fspath)).name
    listed = next((group for group, modules in MODULE_GROUPS.items() if module in modules), "integration")
    return "integration" if "data_dir" in getattr(item, "fixturenames", ()) else listed


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(group) for group in GROUPS):
            item.add_marker(group_of(item))
        if Path(str(item.fspath)).name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def raw_llama(tmp_path_factory, tiny_checkpoint) -> Path:
    return tiny_base(tmp_path_factory.mktemp("llama"), tiny_checkpoint, layers=4, model_type="llama")


@pytest.fixture(scope="session")
def raw_qwen2(tmp_path_factory, tiny_checkpoint) -> Path:
    return tiny_base(tmp_path_factory.mktemp("qwen2"), tiny_checkpoint, layers=4, model_type="qwen2")


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
