"""Progressive deepening on a shipped model with compensation adapters, the SciFact variant (slow: loads
SmolLM2-135M with its adapters): resumed scores equal one-pass scores, with compression in a later stage and the
compensation adapters picked by shape."""
from __future__ import annotations

import numpy as np
import pytest

from pyterrier_matroyshka import CascadePlan
from pyterrier_matroyshka.cascade_scoring import score_cascade
from pyterrier_matroyshka import MatroyshkaScorer
from pyterrier_matroyshka.pretrained import variant_dir


VARIANT = "smollm2-scifact"  # a variant with vertical and horizontal compensation adapters


def _installed() -> bool:
    try:
        variant_dir(VARIANT)
    except FileNotFoundError:
        return False
    return True


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not _installed(), reason=f"{VARIANT}'s adapters are absent")]

EXACT = 1e-5


@pytest.fixture(scope="module")
def scorer(one_thread):
    return MatroyshkaScorer.from_pretrained(VARIANT, dtype="fp32", device="cpu", batch_size=8)


def assert_exact(scorer, pairs, plan, scores, adapters=None):
    for stage, got in zip(CascadePlan.coerce(plan).stages, scores):
        reached = ~np.isnan(got)
        want = np.asarray(scorer.compute_score(pairs, shape=stage.shape, adapters=adapters))
        assert np.abs(got[reached] - want[reached]).max() <= EXACT, f"{plan}: stage {stage.shape}"


def test_uncompressed_cascade_is_exact(scorer, golden_pairs):
    plan = "L6 top8 > L15 top4 > L30"
    assert [scorer.adapters_for(s.shape) for s in CascadePlan.parse(plan).stages] == [["vertical"]] * 3
    assert_exact(scorer, golden_pairs, plan, score_cascade(scorer, golden_pairs, plan))


@pytest.mark.parametrize("plan", ["L12 top6 > L30:r2@12,20", "L10 top5 > L20:r4@16"])
def test_compressed_later_stage_with_its_adapter_is_exact(scorer, golden_pairs, plan):
    deepest = CascadePlan.parse(plan).stages[-1].shape
    adapters = scorer.adapters_for(deepest)
    assert adapters == [f"r{deepest.ratio}"]
    # picked per stage, the vertical adapter of the first stage would have changed every block the deep stage reuses
    with pytest.raises(ValueError, match="adapters='deepest'"):
        score_cascade(scorer, golden_pairs, plan)
    scores = score_cascade(scorer, golden_pairs, plan, adapters="deepest")
    assert_exact(scorer, golden_pairs, plan, scores, adapters=adapters)
