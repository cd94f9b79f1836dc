"""Progressive deepening on the golden checkpoint: resumed scores equal one-pass scores, the ranking rule,
adapters picked per stage, and the FLOP accounting."""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest
import torch

from pyterrier_matroyshka import CascadePlan, MatroyshkaScorer, Shape
from pyterrier_matroyshka.cascade_scoring import cascade_ranking, prune, score_cascade
from pyterrier_matroyshka.adapters import ADAPTER_INFO
from pyterrier_matroyshka.checkpoint import load_model
from pyterrier_matroyshka.forward_state import concat_states
from pyterrier_matroyshka.shape import BackboneDims

EXACT = 1e-5
PLANS = ["L3 top6 > L5 top3 > L8",       # three stages, no compression
         "L4 top5 > L8:r2@4,6",           # compression right where the first stage paused (weights carried)
         "L2 top7 > L5:r2@3 top4 > L8:r2@3,6",  # compression inside a later stage, compounding
         "L3 top4 > L7:r8@3,5",           # ratio 8 at two layers, one of them at the pause
         "L6 top12 > L8"]                 # keeps everything


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint, one_thread):
    return MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu", batch_size=4, max_length=128)


def one_pass(scorer, pairs, shape, **kwargs) -> np.ndarray:
    return np.asarray(scorer.compute_score(pairs, shape=shape, **kwargs))


def assert_stages_exact(scorer, pairs, plan, scores, adapters=None):
    plan = CascadePlan.coerce(plan)
    for stage, got in zip(plan.stages, scores):
        reached = ~np.isnan(got)
        want = one_pass(scorer, pairs, stage.shape, adapters=adapters)
        assert np.abs(got[reached] - want[reached]).max() <= EXACT, f"{plan}: stage {stage.shape}"


@pytest.mark.parametrize("plan", PLANS)
def test_kept_candidates_score_as_in_one_pass(scorer, golden_pairs, plan):
    scores = score_cascade(scorer, golden_pairs, plan)
    assert_stages_exact(scorer, golden_pairs, plan, scores)


@pytest.mark.parametrize("plan", PLANS)
def test_each_stage_scores_the_best_of_the_stage_before(scorer, golden_pairs, plan):
    plan = CascadePlan.parse(plan)
    scores = score_cascade(scorer, golden_pairs, plan, batch_size=3)
    reached = [set(np.flatnonzero(~np.isnan(s))) for s in scores]
    assert reached[0] == set(range(len(golden_pairs)))
    for before, after, stage in zip(reached, reached[1:], plan.stages):
        best = sorted(before, key=lambda r: -scores[plan.stages.index(stage)][r])[: stage.keep]
        assert after == set(best)
    # the one-pass scores, pruned the same way, give the same pattern of reached candidates
    full = np.stack([one_pass(scorer, golden_pairs, s.shape) for s in plan.stages])
    assert np.array_equal(np.isnan(prune(full, plan)), np.isnan(scores))


def test_batching_does_not_change_cascade_scores(scorer, golden_pairs):
    plan = "L2 top7 > L5:r2@3 top4 > L8:r2@3,6"
    together = score_cascade(scorer, golden_pairs, plan, batch_size=12)
    alone = score_cascade(scorer, golden_pairs, plan, batch_size=1)
    assert np.array_equal(np.isnan(together), np.isnan(alone))
    assert np.nanmax(np.abs(together - alone)) <= EXACT


def test_each_block_runs_once_per_candidate_that_reaches_it(scorer, golden_pairs):
    """The real work: block b runs for the candidates of the stage that owns it, never again for them."""
    rows_per_block = [0] * scorer.core.num_layers
    hooks = [layer.register_forward_hook(lambda m, a, o, b=b: rows_per_block.__setitem__(b, rows_per_block[b] + a[0].shape[0]))
             for b, layer in enumerate(scorer.core.model.layers)]
    try:
        score_cascade(scorer, golden_pairs, "L3 top6 > L5 top3 > L8", batch_size=4)
    finally:
        for hook in hooks:
            hook.remove()
    assert rows_per_block == [12, 12, 12, 6, 6, 3, 3, 3]


def test_ranking_rule():
    nan = np.nan
    stage_scores = np.array([[5.0, 1.0, 4.0, 3.0, 2.0, 0.5],
                             [9.0, nan, -2.0, 7.0, nan, nan],
                             [-1.0, nan, nan, 3.0, nan, nan]])
    reached, score = cascade_ranking(stage_scores)
    assert reached.tolist() == [2, 0, 1, 2, 0, 0]
    order = np.argsort(-score, kind="stable").tolist()
    # deepest stage by its score (3 > -1), then the one pruned at stage 2, then stage 1's rest by their stage-1 scores
    assert order == [3, 0, 2, 4, 1, 5]
    assert score[4] - score[1] == pytest.approx(2.0 - 1.0)  # differences inside a group are kept


def test_prune_breaks_ties_by_input_order():
    plan = CascadePlan([("L2", 2), "L4"])
    seen = prune(np.array([[1.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]]), plan)
    assert np.flatnonzero(~np.isnan(seen[1])).tolist() == [1, 2]


def test_select_and_concat_keep_rows_and_trim_padding(scorer, golden_pairs):
    encoder = scorer.encoder()
    encoded = encoder.encode(golden_pairs[:4])
    state = scorer.core.begin(**encoder.collate(encoded, scorer.device))
    short = state.select([3, 1])
    assert short.hidden.shape[1] == max(len(encoded[i].input_ids) for i in (3, 1))
    assert torch.equal(short.hidden[0, : len(encoded[3].input_ids)], state.hidden[3, : len(encoded[3].input_ids)])
    joined = concat_states([short, state.select([0])])
    assert joined.mask.sum(dim=1).tolist() == [len(encoded[i].input_ids) for i in (3, 1, 0)]
    assert joined.positions.shape == (1, joined.hidden.shape[1]) and joined.rotary[0].shape[1] == joined.hidden.shape[1]
    assert not joined.hidden[2, len(encoded[0].input_ids):].any()  # padding columns are zero vectors


def test_plan_string_round_trips_and_path():
    plan = CascadePlan([("L10", 50), ("L20", 15), "L30:r2@20,24"])
    assert str(plan) == "L10 top50 > L20 top15 > L30:r2@20,24"
    assert CascadePlan.parse(str(plan)) == plan
    assert plan.path == Shape([10, 20, 30], [20, 24], 2)
    assert plan.reaching(100) == [100, 50, 15] and plan.reaching(30) == [30, 30, 15]


@pytest.mark.parametrize("stages, problem", [
    ([("L10", 50)], "at least two stages"),
    ([("L20", 50), "L10"], "strictly increase"),
    ([("L10", 15), ("L20", 50), "L30"], "must not grow"),
    ([("L10", 50), ("L20", 10)], "without a count"),
    ([("L10", 0), "L20"], "positive number"),
    ([("L10,12", 50), "L20"], "one exit"),
    ([("L10:r2@4", 50), "L30:r4@4"], "cannot resume"),
    ([("L10", 50), "L30:r2@4"], "cannot resume"),
])
def test_bad_plans_are_refused_with_the_fix(stages, problem):
    with pytest.raises(ValueError, match=problem):
        CascadePlan(stages)


def test_reference_bugs_are_refused(tiny_checkpoint, golden_pairs, scorer):
    buggy = MatroyshkaScorer(model=scorer.model, tokenizer=scorer.tokenizer, device="cpu", reference_compat=True)
    with pytest.raises(ValueError, match="reference_compat=False"):
        score_cascade(buggy, golden_pairs, "L4 top5 > L8")


# -- FLOP accounting, against values worked out by hand -------------------------------------------------
DIMS = BackboneDims(hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16)
# block parameters: q,o 2*8*8 = 128; k,v 2*8*4 = 64; MLP 3*8*16 = 384 -> 576; attention width 2*4 = 8
# a block over T tokens: 2*576*T + 2*T*T*8.  query 3 + prompt 2 + passage 10: T = 15 -> 17280 + 3600 = 20880;
# the passage pooled by 2 (5 tokens): T = 10 -> 11520 + 1600 = 13120.
T15, T10 = 20880.0, 13120.0


def test_block_cost_by_hand():
    assert DIMS.block_params == 576
    assert Shape(4, [3], 2).block_flops(DIMS, 3, 10, 2) == [T15, T15, T15, T10]


def test_cascade_flops_by_hand():
    plan = CascadePlan([("L2", 3), "L4:r2@3"])
    # 10 candidates run blocks 0-1 (uncompressed), the best 3 run block 2 and block 3 (compressed)
    assert plan.flops(DIMS, 10, 3, 10, 2) == 10 * 2 * T15 + 3 * (T15 + T10)
    # a query with only 2 candidates: both go all the way, which is what a one-pass at the deepest shape costs
    assert plan.flops(DIMS, 2, 3, 10, 2) == 2 * (3 * T15 + T10) == Shape(4, [3], 2).flops(DIMS, 3, 10, 2) * 2
    three = CascadePlan([("L1", 6), ("L2", 4), "L4"])
    assert three.flops(DIMS, 10, 3, 10, 2) == 10 * T15 + 6 * T15 + 4 * 2 * T15


def test_transformer_flops_use_the_model_dims(scorer):
    from pyterrier_matroyshka.reranker import MatroyshkaReRanker

    cascade = MatroyshkaReRanker(scorer=scorer).cascade([("L4", 20), "L8"])
    dims = scorer.core.dims
    # 14 prompt tokens (newline + 12-token prompt) + 16 query tokens; 96 passage tokens
    block = 2.0 * dims.block_params * 126 + 2.0 * 126 * 126 * dims.attention_width
    assert cascade.flops(100, 16, 96) == pytest.approx(100 * 4 * block + 20 * 4 * block)
    assert cascade.flops(100, 16, 96) < MatroyshkaReRanker(scorer=scorer, shape="L8").flops(16, 96) * 100


# -- the PyTerrier face -----------------------------------------------------------------------------------
def candidates(pairs, queries=2):
    rows = []
    for q in range(queries):
        for d, (query, text) in enumerate(pairs[q::queries]):
            rows.append({"qid": f"q{q}", "query": query, "docno": f"d{q}-{d}", "text": text, "score": -d, "rank": d})
    return pd.DataFrame(rows)


def test_transformer_ranks_every_row_by_the_rule(scorer, golden_pairs):
    from pyterrier_matroyshka.reranker import MatroyshkaReRanker

    frame = candidates(golden_pairs)
    cascade = MatroyshkaReRanker(scorer=scorer).cascade([("L3", 4), ("L5", 2), "L8"])
    out = cascade(frame)
    assert len(out) == len(frame) and set(out.docno) == set(frame.docno)
    assert cascade.columns == ["score_L3", "score_L5", "score_L8"]
    for qid, group in out.groupby("qid"):
        group = group.sort_values("rank")
        assert group["exit_depth"].tolist() == [8, 8, 5, 5, 3, 3]
        assert group["score_L8"].head(2).is_monotonic_decreasing
        assert group["score_L5"].iloc[2:4].is_monotonic_decreasing
        assert group["score_L3"].tail(2).is_monotonic_decreasing
        pairs = list(zip(group["query"], group["text"]))
        assert np.allclose(group["score_L3"], one_pass(scorer, pairs, "L3"), atol=EXACT)
        assert group["score_L8"].notna().sum() == 2 and group["score_L5"].notna().sum() == 4


def test_transformer_with_few_candidates_and_no_rows(scorer, golden_pairs):
    from pyterrier_matroyshka.reranker import MatroyshkaReRanker

    cascade = MatroyshkaReRanker(scorer=scorer).cascade("L3 top50 > L8")
    out = cascade(candidates(golden_pairs[:3], queries=1))
    assert out["exit_depth"].tolist() == [8, 8, 8]
    empty = cascade(candidates(golden_pairs, queries=1).head(0))
    assert len(empty) == 0 and {"score", "rank", "score_L3", "score_L8", "exit_depth"} <= set(empty.columns)


# -- adapters picked by shape ------------------------------------------------------------------------------
def noted_copy(source, folder, kind, ratios):
    shutil.copytree(source, folder)
    (folder / ADAPTER_INFO).write_text(json.dumps({"kind": kind, "ratios": ratios}))
    return str(folder)


@pytest.fixture(scope="module")
def late_adapter(tiny_checkpoint, tmp_path_factory):
    """A horizontal (ratio 2) LoRA that changes only blocks 5-7, and one that also changes block 2."""
    from peft import LoraConfig, get_peft_model

    folders = {}
    for name, blocks in {"late": [5, 6, 7], "early": [2, 6]}.items():
        model, _ = load_model(str(tiny_checkpoint))
        torch.manual_seed(1)
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                layers_to_transform=blocks))
        with torch.no_grad():
            for p_name, p in peft.named_parameters():
                if "lora_B" in p_name:
                    p.normal_(0, 0.5)
        folder = tmp_path_factory.mktemp(name)
        peft.save_pretrained(folder)
        (folder / ADAPTER_INFO).write_text(json.dumps({"kind": "horizontal", "ratios": [2]}))
        folders[name] = str(folder)
    return folders


@pytest.fixture(scope="module", params=[False, True], ids=["lora", "merged"])
def noted_scorer(request, tiny_checkpoint, tmp_path_factory, late_adapter):
    """The golden adapters noted as vertical / horizontal r2, kept switchable and picked by shape."""
    root = tmp_path_factory.mktemp("noted")
    compensation = {"vertical": noted_copy(tiny_checkpoint / "compensate/layer/full", root / "v", "vertical", [1]),
                    "r2": noted_copy(tiny_checkpoint / "compensate/token/ratio_2", root / "h", "horizontal", [2]),
                    **late_adapter}
    return MatroyshkaScorer(str(tiny_checkpoint), compensation=compensation, dtype="fp32", device="cpu",
                            batch_size=4, max_length=128, merge_compensation=request.param)


def with_active(scorer, names):
    """The same loaded scorer with its own ``active_adapters`` and adapter notes (changed by some tests)."""
    other = copy.copy(scorer)
    other.active_adapters, other.adapter_infos = names, dict(scorer.adapter_infos)
    return other


def test_adapters_that_change_shared_blocks_are_refused(noted_scorer, golden_pairs):
    # L4 picks the vertical adapter, L8:r2@4,6 the horizontal one; both change blocks 0-3
    with pytest.raises(ValueError, match="adapters='deepest'"):
        score_cascade(with_active(noted_scorer, "auto"), golden_pairs, "L4 top5 > L8:r2@4,6")


def test_deepest_adapters_give_the_deepest_shape_exactly(noted_scorer, golden_pairs):
    scorer = with_active(noted_scorer, "auto")
    scores = score_cascade(scorer, golden_pairs, "L4 top5 > L8:r2@4,6", adapters="deepest")
    assert scorer.adapters_for(Shape(8, [4, 6], 2)) == ["r2", "late", "early"]
    assert_stages_exact(scorer, golden_pairs, "L4 top5 > L8:r2@4,6", scores, adapters=["r2", "late", "early"])


def test_switching_to_an_adapter_of_later_blocks_only_is_exact(noted_scorer, golden_pairs):
    """Without a vertical adapter, L4 runs no adapter and L8:r2@4,6 adds one that changes blocks 5-7 only:
    the blocks L4 ran are the same under both, so the cascade switches adapters between the stages."""
    scorer = with_active(noted_scorer, "auto")
    scorer.adapter_infos = {"late": scorer.adapter_infos["late"]}
    scores = score_cascade(scorer, golden_pairs, "L4 top5 > L8:r2@4,6")
    assert_stages_exact(scorer, golden_pairs, "L4 top5 > L8:r2@4,6", scores)
    # the adapter matters: without it the deep stage would score otherwise
    without = one_pass(scorer, golden_pairs, "L8:r2@4,6", adapters=[])
    assert np.nanmax(np.abs(scores[1] - without)) > 0.01
    scorer.adapter_infos = {"early": noted_scorer.adapter_infos["early"]}
    with pytest.raises(ValueError, match="blocks 2"):
        score_cascade(scorer, golden_pairs, "L4 top5 > L8:r2@4,6")


class TestCascadeTransformerContract(pt.testing.TransformerTestCase):
    @staticmethod
    def get_transformer():
        from pyterrier_matroyshka.offline.paths import shared_golden_dir
        from pyterrier_matroyshka.reranker import MatroyshkaReRanker

        if shared_golden_dir() is None:
            pytest.skip("../shared/golden is not beside the repository")
        reranker = MatroyshkaReRanker(str(shared_golden_dir() / "tiny-matroyshka"), dtype="fp32", device="cpu")
        return reranker.cascade([("L3", 2), "L8"])
