"""The engine against the reference implementation's golden vectors (../shared/golden)."""
from __future__ import annotations

import pytest

from pyterrier_matroyshka import MatroyshkaScorer, Shape

ADAPTERS = {"none": [], "layer_full": ["compensate/layer/full"],
            "layer_full+token_ratio_2": ["compensate/layer/full", "compensate/token/ratio_2"]}
# variant -> (reference bugs replayed, batch size)
VARIANTS = {"corrected": (False, 4), "corrected_bs1": (False, 1), "reference": (True, 4), "reference_bs1": (True, 1),
            "fixB1_only": ({"B2"}, 4), "fixB2_only": ({"B1"}, 4)}
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=list(ADAPTERS))
def adapter_scorer(request, tiny_checkpoint):
    paths = [str(tiny_checkpoint / p) for p in ADAPTERS[request.param]]
    return request.param, MatroyshkaScorer(str(tiny_checkpoint), adapters=paths, dtype="fp32", device="cpu",
                                           batch_size=4, max_length=128)


def test_token_ids_match_reference(tiny_checkpoint, golden, golden_pairs):
    scorer = MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu", max_length=128)
    encoded = scorer.encoder().encode(golden_pairs)
    for pair, expected in zip(encoded, golden["pairs"]):
        assert pair.input_ids == expected["input_ids"]
        assert (pair.query_len, pair.prompt_len) == (expected["q_len"], expected["p_len"])
        assert pair.passage_len == expected["passage_span_len"]
    assert encoded[0].truncated and not encoded[1].truncated


def test_length_sorted_batches_match_reference(golden, tiny_checkpoint, golden_pairs):
    scorer = MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu", max_length=128)
    encoded = scorer.encoder().encode(golden_pairs)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    assert order == golden["batching"]["batch_size_4"]["sorted_order"]


@pytest.mark.parametrize("shape_name", ["a", "b", "c", "d", "e"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_scores_match_golden(adapter_scorer, golden, golden_pairs, shape_name, variant):
    adapter_set, base = adapter_scorer
    compat, batch_size = VARIANTS[variant]
    scorer = MatroyshkaScorer(model=base.model, tokenizer=base.tokenizer, device="cpu", batch_size=batch_size,
                              max_length=128, reference_compat=compat)
    spec = golden["shapes"][shape_name]
    expected = golden["scores"][shape_name][adapter_set][variant]
    for normalize, family in [(False, "raw"), (True, "sigmoid")]:
        scores = scorer.compute_score(golden_pairs, normalize=normalize, **spec["call_kwargs"])
        per_exit = [scores] if len(spec["exits"]) == 1 else scores
        for depth, got in zip(spec["exits"], per_exit):
            want = expected[family][str(depth)]
            worst = max(abs(a - b) for a, b in zip(got, want))
            assert worst < TOLERANCE, f"{shape_name}/{adapter_set}/{variant}/{family} exit {depth}: {worst}"


@pytest.mark.parametrize("shape_name", ["a", "b", "c", "d", "e"])
def test_cost_model_token_counts_match_exit_lengths(golden, shape_name):
    spec = golden["shapes"][shape_name]
    kwargs = spec["call_kwargs"]
    shape = Shape(kwargs["cutoff_layers"], kwargs["compress_layers"], kwargs["compress_ratio"])
    for index, pair in enumerate(golden["pairs"]):
        fixed = pair["q_len"] + pair["p_len"]
        lengths = shape.tokens_per_block(pair["passage_span_len"], fixed)
        for depth, real_len in spec["exit_real_lengths_per_pair"][str(index)].items():
            assert lengths[int(depth) - 1] == real_len
