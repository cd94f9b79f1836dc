from __future__ import annotations

import pytest

from pyterrier_matroyshka import BackboneDims, Shape


@pytest.mark.parametrize("text", ["L32", "L4,6,8", "L6,8:r2@2,4", "L20,24:r2@8,16", "L5:r4@3"])
def test_string_form_round_trips(text):
    shape = Shape.parse(text)
    assert str(shape) == text and Shape.parse(str(shape)) == shape


def test_normalises_order_duplicates_and_inactive_compression():
    assert Shape([8, 4, 8]) == Shape([4, 8])
    assert Shape([8], [8], 1) == Shape(8)  # ratio 1: compression layers are irrelevant
    assert Shape([8], [0, 4, 0], 2).compress_layers == (4,)  # 0 = switched off, as in the reference
    assert Shape.coerce("L8") == Shape.coerce(8) == Shape.coerce([8])


@pytest.mark.parametrize("bad, message", [
    (lambda: Shape([]), "at least one exit"),
    (lambda: Shape([8], [2], 0), "ratio must be an integer >= 1"),
    (lambda: Shape([8], [], 2), "needs at least one compression layer"),
    (lambda: Shape.parse("8:r2"), "cannot parse shape"),
])
def test_bad_shapes_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


def test_validation_names_the_model_exits():
    exits = list(range(4, 33))
    with pytest.raises(ValueError, match=r"exit\(s\) \[40\].*4\.\.32"):
        Shape([40]).validate(exits)
    with pytest.raises(ValueError, match=r"compression layer\(s\) \[16\]"):
        Shape([16], [16], 2).validate(exits)
    assert Shape([20, 24], [8, 16], 2).validate(exits).depth == 24


def test_tokens_per_block_compound_with_partial_groups():
    # query+prompt 31 tokens, passage 125: ceil(125/2)=63 from block 2, ceil(63/2)=32 from block 4
    assert Shape([6], [2, 4], 2).tokens_per_block(125, 31) == [156, 156, 94, 94, 63, 63]


def test_flops_cost_model():
    dims = BackboneDims(hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336)
    assert dims.block_params == 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    full = Shape(32).flops(dims, 20, 150, 14)
    tokens = 184
    assert full == pytest.approx(32 * (2 * dims.block_params * tokens + 2 * tokens ** 2 * 4096))
    half_depth = Shape(16).flops(dims, 20, 150, 14)
    assert half_depth == pytest.approx(full / 2)
    compressed = Shape(32, [8], 4).flops(dims, 20, 150, 14)
    assert half_depth < full and compressed < full * 0.6
