"""Fixtures for the experiments' own tests (``python -m pytest experiments``; CI runs ``tests/`` only)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for folder in (ROOT, ROOT / "bench", HERE):  # the scripts import the package, evaluate_demo and each other
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from pyterrier_matroyshka.offline.paths import shared_data_dir, shared_golden_dir  # noqa: E402


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if shared_data_dir() is None:
        pytest.skip("../shared/data is not beside the repository: real collections unavailable")
    return shared_data_dir()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if shared_golden_dir() is None:
        pytest.skip("../shared/golden is not beside the repository: golden vectors unavailable")
    return shared_golden_dir()


@pytest.fixture(scope="session")
def tiny_checkpoint(golden_dir) -> Path:
    return golden_dir / "tiny-matroyshka"


@pytest.fixture(scope="session")
def load_experiment():
    """``load_experiment(name)``: the script ``experiments/<name>.py`` (not a package) imported as a module."""
    return _load
