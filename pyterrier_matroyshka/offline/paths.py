"""Where the project keeps its run-time cache and where it finds the offline collections.

Nothing here downloads: the cache holds what the project builds itself (converted base models, PISA
indexes, seeded ir_datasets files), and the shared data folder holds real collections copied from
the web by whoever prepared the machine.
"""
from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir(*parts: str) -> Path:
    """The project's cache folder (``$MATROYSHKA_CACHE``, default ``~/.cache/pyterrier_matroyshka``),
    created on demand, joined with ``parts``."""
    root = Path(os.environ.get("MATROYSHKA_CACHE", Path.home() / ".cache" / "pyterrier_matroyshka"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data_dir() -> Path | None:
    """The folder of offline collections (``$MATROYSHKA_SHARED_DATA``, else ``../shared/data`` beside
    the repository or the working directory), or ``None`` when there is none."""
    candidates = [os.environ.get("MATROYSHKA_SHARED_DATA"), _REPO_ROOT.parent / "shared" / "data",
                  Path.cwd().parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def shared_golden_dir() -> Path | None:
    """The golden test-vector folder beside the shared data, or ``None``."""
    data = shared_data_dir()
    golden = data.parent / "golden" if data else _REPO_ROOT.parent / "shared" / "golden"
    return golden if golden.is_dir() else None
