"""Matroyshka Re-Ranker for PyTerrier and Pyserini: an LLM cross-encoder whose depth and width are
chosen at run time."""
from .checkpoint import load_model
from .prompt import DEFAULT_PROMPT, PromptEncoder
from .scorer import MatroyshkaScorer
from .cascade_plan import CascadePlan
from .shape import BackboneDims, Shape

__version__ = "0.1.0"
__all__ = ["MatroyshkaReRanker", "MatroyshkaCascade", "CascadePlan", "FirstStageFusion", "MatroyshkaCache",
           "MatroyshkaScorer", "Shape", "BackboneDims", "PromptEncoder", "DEFAULT_PROMPT", "load_model"]


def __getattr__(name: str):
    # The PyTerrier face is imported on first use, so the engine (scoring, training) runs where only
    # torch, transformers and peft are installed, e.g. on a bare GPU machine.
    if name == "MatroyshkaReRanker":
        from .reranker import MatroyshkaReRanker

        return MatroyshkaReRanker
    if name == "MatroyshkaCascade":
        from .cascade import MatroyshkaCascade

        return MatroyshkaCascade
    if name == "FirstStageFusion":
        from .fusion import FirstStageFusion

        return FirstStageFusion
    if name == "MatroyshkaCache":
        from .caching import MatroyshkaCache

        return MatroyshkaCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
