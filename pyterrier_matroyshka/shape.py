"""The run-time shape of a Matroyshka re-ranker: which exits to score and how much to compress.

A shape is model independent; :meth:`Shape.validate` checks it against a model's exits. Its string
form is compact and round-trips, so it can name a system in ``pt.Experiment``::

    L8            one exit, after 8 blocks, no compression
    L4,6,8        three exits from one pass
    L6,8:r2@2,4   exits 6 and 8; the passage is pooled in groups of 2 before blocks 2 and 4 (so by 4
                  from block 4 on)
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from .errors import UserError, check_int

_PATTERN = re.compile(r"^L(?P<exits>\d+(?:,\d+)*)(?::r(?P<ratio>\d+)@(?P<layers>\d+(?:,\d+)*))?$")


@dataclass(frozen=True)
class Shape:
    """Exit depths (ascending), compression layers (ascending) and the compression ratio.

    ``ratio == 1`` means no compression; the compression layers are then dropped, so equal shapes
    compare and print equal.
    """

    exits: tuple[int, ...]
    compress_layers: tuple[int, ...] = ()
    ratio: int = 1

    def __init__(self, exits: Union[int, Iterable[int]], compress_layers: Iterable[int] = (), ratio: int = 1):
        exits = (exits,) if isinstance(exits, numbers.Integral) else tuple(_sequence("exits", exits))
        if not exits:
            raise UserError("a shape needs at least one exit depth, e.g. Shape(exits=[32])")
        exits = [check_int("an exit depth", e, 1) for e in exits]
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Integral) or ratio < 1:
            raise UserError(f"compression ratio must be an integer >= 1 (1 = no compression), got {ratio!r}")
        ratio = int(ratio)
        # 0 is how the reference switches a compression layer off; accept it and drop it.
        layers = [check_int("a compression layer", c, 0) for c in _sequence("compress_layers", compress_layers)]
        layers = tuple(sorted({c for c in layers if c != 0})) if ratio > 1 else ()
        if ratio > 1 and not layers:
            raise UserError(f"ratio {ratio} needs at least one compression layer, e.g. compress_layers=[8]")
        object.__setattr__(self, "exits", tuple(sorted(set(exits))))
        object.__setattr__(self, "compress_layers", layers)
        object.__setattr__(self, "ratio", ratio)

    @classmethod
    def parse(cls, text: str) -> "Shape":
        """Parse the compact string form (see the module docstring)."""
        if not isinstance(text, str):
            raise UserError(f"a shape string is needed, got {type(text).__name__} {text!r}")
        match = _PATTERN.match(text.replace(" ", ""))
        if not match:
            raise UserError(f"cannot parse shape {text!r}: expected e.g. 'L32', 'L16,32' or 'L20,24:r2@8,16'")
        exits = [int(e) for e in match["exits"].split(",")]
        if match["ratio"] is None:
            return cls(exits)
        return cls(exits, [int(c) for c in match["layers"].split(",")], int(match["ratio"]))

    @classmethod
    def coerce(cls, shape: "ShapeLike") -> "Shape":
        """Accept a :class:`Shape`, its string form, one depth or a list of depths."""
        if isinstance(shape, Shape):
            return shape
        if isinstance(shape, str):
            return cls.parse(shape)
        return cls(shape)

    def __str__(self) -> str:
        text = "L" + ",".join(map(str, self.exits))
        if self.ratio > 1:
            text += f":r{self.ratio}@" + ",".join(map(str, self.compress_layers))
        return text

    @property
    def depth(self) -> int:
        """The deepest exit: the number of blocks that run."""
        return self.exits[-1]

    @property
    def compresses(self) -> bool:
        return self.ratio > 1

    def validate(self, available_exits: Sequence[int]) -> "Shape":
        """Check the shape against a model whose heads sit at ``available_exits``; returns self."""
        missing = [e for e in self.exits if e not in available_exits]
        if missing:
            raise UserError(f"shape {self}: exit(s) {missing} not among the model's exits "
                            f"{_span(available_exits)}; pick exits from that list")
        late = [c for c in self.compress_layers if not 1 <= c < self.depth]
        if late:
            raise UserError(f"shape {self}: compression layer(s) {late} must lie in 1..{self.depth - 1} "
                            f"(before the deepest exit {self.depth}); layers at or after it would never run")
        return self

    def tokens_per_block(self, passage_len: int, fixed_len: int) -> list[int]:
        """Sequence length seen by each block 0..depth-1 for a pair with ``passage_len`` passage
        tokens and ``fixed_len`` query + prompt tokens (compressions compound)."""
        lengths, passage = [], passage_len
        for block in range(self.depth):
            if block in self.compress_layers:
                passage = math.ceil(passage / self.ratio)
            lengths.append(fixed_len + passage)
        return lengths

    def flops(self, dims: "BackboneDims", query_len: int, passage_len: int, prompt_len: int) -> float:
        """Estimated forward FLOPs for one pair (spec section 9): per block, 2 x parameters x tokens
        for the projections and MLP, plus 2 x T^2 x attention width for the causal QK^T and AV."""
        return sum(self.block_flops(dims, query_len, passage_len, prompt_len))

    def block_flops(self, dims: "BackboneDims", query_len: int, passage_len: int, prompt_len: int) -> list[float]:
        """The :meth:`flops` of each block 0..depth-1 for one pair (a cascade sums a range of them)."""
        return [2.0 * dims.block_params * tokens + 2.0 * tokens * tokens * dims.attention_width
                for tokens in self.tokens_per_block(passage_len, query_len + prompt_len)]


@dataclass(frozen=True)
class BackboneDims:
    """The few backbone dimensions the cost model needs."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    @classmethod
    def from_config(cls, config) -> "BackboneDims":
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.hidden_size, heads, getattr(config, "num_key_value_heads", None) or heads,
                   head_dim, config.intermediate_size)

    @property
    def attention_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def block_params(self) -> int:
        q_and_o = 2 * self.hidden * self.attention_width
        k_and_v = 2 * self.hidden * self.kv_heads * self.head_dim
        return q_and_o + k_and_v + 3 * self.hidden * self.intermediate


def _sequence(name: str, values) -> Sequence:
    """``values`` as a sequence of items (a string or a lone number is refused, not split or wrapped)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise UserError(f"{name} must be a list of whole numbers, got {type(values).__name__} {values!r}")
    return list(values)


def _span(values: Sequence[int]) -> str:
    values = list(values)
    if len(values) > 4 and values == list(range(values[0], values[-1] + 1, values[1] - values[0])):
        return f"{values[0]}..{values[-1]}" + (f" step {values[1] - values[0]}" if values[1] - values[0] > 1 else "")
    return str(values)


ShapeLike = Union[Shape, str, int, Sequence[int]]
