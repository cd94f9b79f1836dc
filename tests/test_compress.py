"""Token compression on toy tensors (spec 3.4 worked example and edge cases)."""
from __future__ import annotations

import torch

from pyterrier_matroyshka.compress import compress_passages


def _toy(values_by_row, length):
    hidden = torch.zeros(len(values_by_row), length, 1)
    mask = torch.zeros(len(values_by_row), length, dtype=torch.long)
    for row, values in enumerate(values_by_row):
        hidden[row, : len(values), 0] = torch.tensor(values, dtype=torch.float)
        mask[row, : len(values)] = 1
    return hidden, mask


def test_spec_worked_example():
    # Row A: q_len 3, passage 7, prompt 2; row B: q_len 2, passage 3, prompt 2 (padded).
    hidden, mask = _toy([list(range(12)), list(range(7))], 12)
    weights = torch.rand(2, 12) + 0.1
    out, new_mask = compress_passages(hidden, mask, torch.tensor([3, 2]), torch.tensor([2, 2]), weights, 2)

    def wavg(row, a, b):
        return (weights[row, a] * a + weights[row, b] * b) / (weights[row, a] + weights[row, b])

    row_a = [0, 1, 2, wavg(0, 3, 4), wavg(0, 5, 6), wavg(0, 7, 8), 9, 10, 11]
    row_b = [0, 1, wavg(1, 2, 3), 4, 5, 6, 0, 0, 0]
    assert torch.allclose(out[0, :, 0], torch.tensor(row_a, dtype=torch.float))
    assert torch.allclose(out[1, :, 0], torch.tensor(row_b, dtype=torch.float))
    assert new_mask.tolist() == [[1] * 9, [1] * 6 + [0] * 3]


def test_ratio_one_is_identity():
    hidden = torch.randn(3, 16, 8)
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[1, 11:] = 0
    out, new_mask = compress_passages(hidden, mask, torch.tensor([3, 4, 2]), torch.tensor([2, 3, 5]),
                                      torch.rand(3, 16), 1)
    assert torch.equal(new_mask, mask)
    assert torch.allclose(out * mask.unsqueeze(-1), hidden * mask.unsqueeze(-1))


def test_zero_weight_group_falls_back_to_mean_not_nan():
    hidden, mask = _toy([list(range(10))], 10)
    weights = torch.zeros(1, 10)  # underflowed attention
    out, _ = compress_passages(hidden, mask, torch.tensor([2]), torch.tensor([2]), weights, 4)
    assert not torch.isnan(out).any()
    assert out[0, :, 0].tolist() == [0, 1, 3.5, 6.5, 8, 9]  # groups {2..5}, {6,7}


def test_compounding_and_gradients_flow_through_weights():
    hidden = torch.randn(2, 24, 4, requires_grad=True)
    mask = torch.ones(2, 24, dtype=torch.long)
    weights = torch.rand(2, 24, requires_grad=True)
    q, p = torch.tensor([3, 5]), torch.tensor([4, 4])
    once, mask1 = compress_passages(hidden, mask, q, p, weights, 2)
    twice, mask2 = compress_passages(once, mask1, q, p, torch.rand(2, once.shape[1]), 2)
    assert mask2.sum(1).tolist() == [3 + 5 + 4, 5 + 4 + 4]  # ceil(ceil(17/2)/2)=5, ceil(ceil(15/2)/2)=4
    (twice ** 2).sum().backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0
