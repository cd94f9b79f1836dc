"""Properties of the forward pass on tiny random Llama and Qwen2 backbones built in the test."""
from __future__ import annotations

import logging

import pytest
import torch

from pyterrier_matroyshka import MatroyshkaScorer, Shape

PAIRS = [("what is a panda?", "The giant panda is a bear species endemic to China, black and white."),
         ("how tall is everest", "Mount Everest is Earth's highest mountain above sea level at 8,849 m. " * 3),
         ("hi", "short"),
         ("capital of france", "Paris is the capital and most populous city of France, on the Seine river.")]


@pytest.fixture(scope="module", params=["raw_llama", "raw_qwen2"])
def scorer(request):
    folder = request.getfixturevalue(request.param)
    return MatroyshkaScorer(str(folder), dtype="fp32", device="cpu", start_layer=1, batch_size=8)


def test_exits_follow_start_layer(scorer):
    assert scorer.exits == [1, 2, 3, 4]
    assert len(scorer.compute_score(PAIRS, shape="L2,4")) == 2


def test_full_depth_equals_plain_hf_model(scorer, request):
    """The deepest exit is the HF model's final-norm hidden state at the last token, scored by its head."""
    backbone = scorer.core.model
    head = scorer.core.lm_head[scorer.core.head_index(4)].linear_head
    encoded = scorer.encoder().encode(PAIRS)
    ours = scorer.compute_score(PAIRS, shape="L4")
    for pair, score in zip(encoded, ours):
        with torch.no_grad():
            out = backbone(input_ids=torch.tensor([pair.input_ids]))
            expected = head(out.last_hidden_state[0, -1]).item()
        assert score == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_exit_k_runs_exactly_k_blocks(scorer, depth):
    calls = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
             for i, layer in enumerate(scorer.core.model.layers)]
    try:
        scorer.compute_score(PAIRS, shape=Shape(depth))
        scorer.compute_score(PAIRS, shape=Shape(depth, [1], 2) if depth > 1 else Shape(depth))
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(set(calls)) == list(range(depth))


@pytest.mark.parametrize("shape", ["L4", "L1,2,3,4", "L2,4:r2@1,3", "L4:r4@2"])
def test_scores_do_not_depend_on_batching(scorer, shape):
    together = torch.tensor(scorer.compute_score(PAIRS, shape=shape, batch_size=4))
    alone = torch.tensor(scorer.compute_score(PAIRS, shape=shape, batch_size=1))
    assert torch.allclose(together, alone, atol=1e-5)
    # and not on the other pairs in the batch
    other = torch.tensor(scorer.compute_score(PAIRS[:1] + [("zz", "a much longer passage " * 40)], shape=shape))
    assert torch.allclose(other[..., 0], together[..., 0], atol=1e-5)


def test_compression_changes_scores_and_multi_exit_is_ascending(scorer):
    plain = scorer.compute_score(PAIRS, shape="L2,4")
    compressed = scorer.compute_score(PAIRS, shape="L2,4:r2@1")
    assert plain[0] != plain[1]
    assert max(abs(a - b) for a, b in zip(plain[1], compressed[1])) > 1e-4
    assert scorer.compute_score(PAIRS, shape="L4") == pytest.approx(plain[1], abs=1e-6)


def test_reference_kwargs_and_single_pair(scorer):
    single = scorer.compute_score(PAIRS[0], cutoff_layers=[4])
    assert isinstance(single, list) and len(single) == 1
    both = scorer.compute_score(PAIRS, cutoff_layers=[2, 4], compress_layers=[1], compress_ratio=2)
    assert torch.allclose(torch.tensor(both), torch.tensor(scorer.compute_score(PAIRS, shape="L2,4:r2@1")))
    probs = scorer.compute_score(PAIRS, shape="L4", normalize=True)
    raw = scorer.compute_score(PAIRS, shape="L4")
    assert probs == pytest.approx(torch.sigmoid(torch.tensor(raw, dtype=torch.float64)).tolist())


def test_with_shape_shares_weights(scorer):
    other = scorer.with_shape("L2")
    assert other.model is scorer.model and str(other.shape) == "L2" and str(scorer.shape) == "L4"
    assert other.compute_score(PAIRS) == pytest.approx(scorer.compute_score(PAIRS, shape="L2"))
    assert scorer.flops("L2") == pytest.approx(scorer.flops("L4") / 2)


def test_bf16_is_close_to_fp32(raw_llama):
    fp32 = MatroyshkaScorer(str(raw_llama), dtype="fp32", device="cpu", start_layer=1)
    bf16 = MatroyshkaScorer(str(raw_llama), dtype="bf16", device="cpu", start_layer=1)
    a, b = torch.tensor(fp32.compute_score(PAIRS)), torch.tensor(bf16.compute_score(PAIRS))
    assert not torch.isnan(b).any() and torch.allclose(a, b, atol=0.1 * a.abs().max().item() + 0.05)


# ---- bad input ---------------------------------------------------------------------------------

def test_bad_pairs_name_the_index(scorer):
    with pytest.raises(TypeError, match="pair 1: passage is float"):
        scorer.compute_score([("q", "p"), ("q", float("nan"))])
    with pytest.raises(TypeError, match="pair 0: query is int"):
        scorer.compute_score([(3, "p")])
    with pytest.raises(TypeError, match="pair 0 is str"):
        scorer.compute_score(["just a string"])


def test_empty_strings_and_empty_list(scorer):
    scores = scorer.compute_score([("", "passage"), ("query", ""), ("", "")])
    assert len(scores) == 3 and all(s == s for s in scores)
    assert scorer.compute_score([]) == []
    assert scorer.compute_score([], shape="L2,4") == [[], []]


def test_shape_outside_model(scorer):
    with pytest.raises(ValueError, match=r"exit\(s\) \[9\] not among the model's exits \[1, 2, 3, 4\]"):
        scorer.compute_score(PAIRS, shape="L9")
    with pytest.raises(ValueError, match="compression layer"):
        scorer.compute_score(PAIRS, shape="L2:r2@3")


def test_overlong_input_is_truncated_and_counted(scorer, caplog):
    long_pair = ("q", "word " * 2000)
    with caplog.at_level(logging.INFO, logger="pyterrier_matroyshka.prompt"):
        scores = scorer.compute_score([long_pair, PAIRS[0]], max_length=64)
    assert len(scores) == 2 and "truncated 1 of 2 pairs" in caplog.text


def test_unknown_architecture_is_refused(tmp_path, tiny_checkpoint):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=32000, n_layer=2, n_embd=32, n_head=2)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported backbone architecture 'gpt2'.*llama, mistral, qwen2"):
        MatroyshkaScorer(str(tmp_path), dtype="fp32", device="cpu")


def test_adapter_for_another_base_is_refused(tiny_checkpoint, raw_llama):
    with pytest.raises(ValueError, match="does not fit this model.*4 layers, hidden 32"):
        MatroyshkaScorer(str(raw_llama), adapters=[str(tiny_checkpoint / "compensate/layer/full")],
                         dtype="fp32", device="cpu", start_layer=1)


def test_switchable_adapters(tiny_checkpoint, golden_pairs):
    base = str(tiny_checkpoint)
    named = {"layer": f"{base}/compensate/layer/full", "r2": f"{base}/compensate/token/ratio_2"}
    switch = MatroyshkaScorer(base, adapters=named, merge_adapters=False, dtype="fp32", device="cpu")
    merged = MatroyshkaScorer(base, adapters=[named["layer"]], dtype="fp32", device="cpu")
    plain = MatroyshkaScorer(base, dtype="fp32", device="cpu")
    assert switch.compute_score(golden_pairs, adapters=["layer"]) == pytest.approx(
        merged.compute_score(golden_pairs), abs=1e-4)
    assert switch.compute_score(golden_pairs, adapters=[]) == pytest.approx(plain.compute_score(golden_pairs), abs=1e-4)
    with pytest.raises(ValueError, match="unknown adapter"):
        switch.compute_score(golden_pairs, adapters=["nope"])


def test_merged_switch_matches_lora_and_never_drifts(tiny_checkpoint, golden_pairs):
    """merge_compensation puts the active adapter into the weights: the scores of the LoRA path, in
    any order of switches, and the unmerged weights come back bit for bit."""
    from pyterrier_matroyshka.adapters import set_active_adapters

    base = str(tiny_checkpoint)
    named = {"layer": f"{base}/compensate/layer/full", "r2": f"{base}/compensate/token/ratio_2"}
    lora = MatroyshkaScorer(base, adapters=named, merge_adapters=False, dtype="fp32", device="cpu")
    merged = MatroyshkaScorer(base, adapters=named, merge_adapters=False, merge_compensation=True,
                              dtype="fp32", device="cpu")
    weight = merged.core.model.layers[0].self_attn.q_proj.weight
    before = weight.detach().clone()
    for names in (["layer"], ["r2"], ["layer", "r2"], [], ["layer"]):
        expected = lora.compute_score(golden_pairs, adapters=names, shape="L8:r2@2")
        assert merged.compute_score(golden_pairs, adapters=names, shape="L8:r2@2") == pytest.approx(expected, abs=1e-4)
        assert torch.equal(weight, before) == (names == [])
    set_active_adapters(merged.model, ["r2"])  # back to the LoRA path: weights restored first
    assert torch.equal(weight, before)
    assert merged.compute_score(golden_pairs, adapters=["r2"]) == pytest.approx(
        lora.compute_score(golden_pairs, adapters=["r2"]), abs=1e-4)
    set_active_adapters(merged.model, ["r2"])  # LoRA layers on; merging nothing must switch them off again
    assert merged.compute_score(golden_pairs, adapters=[]) == pytest.approx(
        lora.compute_score(golden_pairs, adapters=[]), abs=1e-4)


def test_auto_adapter_choice_by_shape(tiny_checkpoint, golden_pairs, tmp_path):
    """Compensation adapters with a note of their kind are picked by the shape's ratio."""
    import json
    import shutil

    from pyterrier_matroyshka.adapters import ADAPTER_INFO, pick_adapters

    base = str(tiny_checkpoint)
    vertical, horizontal = tmp_path / "vertical", tmp_path / "r2"
    shutil.copytree(tiny_checkpoint / "compensate/layer/full", vertical)
    shutil.copytree(tiny_checkpoint / "compensate/token/ratio_2", horizontal)
    (vertical / ADAPTER_INFO).write_text(json.dumps({"kind": "vertical", "ratios": [1]}))
    (horizontal / ADAPTER_INFO).write_text(json.dumps({"kind": "horizontal", "ratios": [2]}))
    auto = MatroyshkaScorer(base, compensation=[str(vertical), str(horizontal)], dtype="fp32", device="cpu")
    assert auto.adapters_for(Shape(8)) == ["vertical"] and auto.adapters_for(Shape(8, [2], 2)) == ["r2"]
    assert auto.adapters_for(Shape(8, [2], 4)) == ["vertical"]  # no horizontal adapter for r=4
    only_vertical = MatroyshkaScorer(base, adapters=[str(vertical)], dtype="fp32", device="cpu")
    only_r2 = MatroyshkaScorer(base, adapters=[str(horizontal)], dtype="fp32", device="cpu")
    assert auto.compute_score(golden_pairs, shape="L8") == pytest.approx(only_vertical.compute_score(
        golden_pairs, shape="L8"), abs=1e-4)
    assert auto.compute_score(golden_pairs, shape="L8:r2@2") == pytest.approx(only_r2.compute_score(
        golden_pairs, shape="L8:r2@2"), abs=1e-4)
    assert pick_adapters(2, {"released": {}}) == ["released"]
