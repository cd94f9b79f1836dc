"""Matroyshka Re-Ranker for PyTerrier and Pyserini: an LLM cross-encoder whose depth and width are
chosen at run time."""
from .checkpoint import load_model
from .prompt import DEFAULT_PROMPT, PromptEncoder
from .reranker import MatroyshkaReRanker
from .scorer import MatroyshkaScorer
from .shape import BackboneDims, Shape

__version__ = "0.1.0"
__all__ = ["MatroyshkaReRanker", "MatroyshkaScorer", "Shape", "BackboneDims", "PromptEncoder", "DEFAULT_PROMPT", "load_model"]
