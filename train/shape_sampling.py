"""Per-step sub-architecture sampling (spec 7.2): all exits, one ratio, a random subset of layers.

A draw is a pure function of ``(seed, micro_step)``: every DDP rank draws the same shape without talking to
the others, and a resumed run draws what the interrupted one would have.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence

import torch

from pyterrier_matroyshka.errors import UserError
from pyterrier_matroyshka.shape import Shape


def candidate_layers(num_layers: int, start_layer: int, layers: Optional[Sequence[int]] = None,
                     every: int = 4) -> list[int]:
    """The compression-layer candidates, checked against the model.

    Default: every ``every``-th block from ``start_layer``, below the last block (the reference's 4, 8,
    ..., 28 on 32 layers). A layer outside ``1 .. num_layers - 1`` raises: compression happens before a
    block and must leave a block to run.
    """
    if layers is None:
        layers = list(range(start_layer, num_layers, every))
    bad = [c for c in layers if not isinstance(c, int) or not 1 <= c < num_layers]
    if bad:
        raise UserError(f"compress_layers {bad} not in this {num_layers}-layer model: a compression layer is a "
                        f"block index in 1..{num_layers - 1} (compression happens before that block)")
    return sorted(set(layers))


class ShapeSampler:
    """Draws the training shape of each micro-step: all ``exits``; a ratio from ``ratios``; each candidate
    layer kept with probability ``keep_prob``. A ratio of 1 or an empty subset gives no compression."""

    def __init__(self, exits: Sequence[int], ratios: Sequence[int], layers: Sequence[int], keep_prob: float = 0.5,
                 seed: int = 42):
        self.exits, self.ratios, self.layers = list(exits), list(ratios), list(layers)
        self.keep_prob, self.seed = keep_prob, seed
        if any(r > 1 for r in self.ratios) and not self.layers:
            raise UserError(f"ratios {self.ratios} compress, but there are no candidate compression layers")

    def draw(self, micro_step: int) -> Shape:
        rng = random.Random(f"shape:{self.seed}:{micro_step}")
        ratio = rng.choice(self.ratios)
        kept = [c for c in self.layers if rng.random() < self.keep_prob]
        if ratio == 1 or not kept:
            return Shape(self.exits)
        return Shape(self.exits, kept, ratio)


def shape_code(shape: Shape, num_layers: int) -> torch.Tensor:
    """A fixed-size integer encoding of a shape (ratio, then a 0/1 flag per block) to compare across ranks."""
    code = torch.zeros(num_layers + 1, dtype=torch.long)
    code[0] = shape.ratio
    for c in shape.compress_layers:
        code[c + 1] = 1
    return code


def assert_same_on_all_ranks(shape: Shape, num_layers: int, device: torch.device) -> None:
    """Raise if DDP ranks drew different shapes (a desynchronised run would hang or train garbage)."""
    import torch.distributed as dist

    code = shape_code(shape, num_layers).to(device)
    low, high = code.clone(), code.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError(f"rank {dist.get_rank()} drew shape {shape} but other ranks drew another one")
