"""The plan of a progressive-deepening cascade: which exits score in turn, and how many candidates go on.

A plan is model independent, like a :class:`Shape`. Its string form round-trips and names a system
in an experiment table::

    L10 top50 > L20 top15 > L30        all candidates at exit 10, the best 50 go on to 20, the best 15 to 30
    L12 top30 > L30:r2@12              the 30 go on compressed by 2 from block 12 (the pass stopped there)

Every stage is one exit of one *path*: the deepest stage's shape with all stage depths as exits. A
later stage resumes where the previous one stopped, so the blocks below that depth must run as the
deeper shape would run them: a later stage may add compression only at or after the previous stage's
depth (or compress exactly as the earlier stages do below it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from .errors import UserError
from .shape import BackboneDims, Shape, ShapeLike

_STAGE = re.compile(r"^(?P<shape>\S+?)(?:\s+top(?P<keep>\d+))?$")


@dataclass(frozen=True)
class CascadeStage:
    """One stage: its one-exit ``shape`` and how many of its best candidates go on (None: the last)."""

    shape: Shape
    keep: Optional[int] = None

    @property
    def depth(self) -> int:
        return self.shape.depth

    def __str__(self) -> str:
        return f"{self.shape}" + (f" top{self.keep}" if self.keep is not None else "")


StageLike = Union[CascadeStage, ShapeLike, tuple]


class CascadePlan:
    """Stages of increasing depth; all but the last keep a number of candidates for the next one.

    Args:
        stages: ``[("L10", 50), ("L20", 15), "L30"]``: ``(shape, keep)`` pairs, then the last shape
            alone. Each shape has one exit (its score ranks the candidates at that stage).
    """

    def __init__(self, stages: Sequence[StageLike]):
        if isinstance(stages, str):
            raise TypeError("give a list of stages, e.g. [('L10', 50), 'L30'], or CascadePlan.parse('L10 top50 > L30')")
        if len(stages) < 2:
            raise UserError("a cascade needs at least two stages, e.g. [('L10', 50), 'L30']; "
                             "for one shape use the re-ranker itself")
        stages = [self._stage(stage, i == len(stages) - 1) for i, stage in enumerate(stages)]
        self.stages: tuple[CascadeStage, ...] = tuple(stages)
        self._check_order()
        self._check_compression()

    @staticmethod
    def _stage(stage: StageLike, last: bool) -> CascadeStage:
        if isinstance(stage, CascadeStage):
            shape, keep = stage.shape, stage.keep
        elif isinstance(stage, tuple):
            if len(stage) != 2:
                raise UserError(f"stage {stage!r}: expected (shape, keep), e.g. ('L10', 50)")
            shape, keep = Shape.coerce(stage[0]), stage[1]
        else:
            shape, keep = Shape.coerce(stage), None
        if len(shape.exits) != 1:
            raise UserError(f"stage {shape}: a stage scores at one exit; give e.g. 'L{shape.depth}'")
        if last and keep is not None:
            raise UserError(f"the last stage ({shape}) ranks everything that reaches it: give it without a count")
        if not last and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
            raise UserError(f"stage {shape}: keep must be a positive number of candidates, got {keep!r}; "
                             "e.g. ('L10', 50)")
        return CascadeStage(shape, keep)

    def _check_order(self) -> None:
        depths = [s.depth for s in self.stages]
        if any(b <= a for a, b in zip(depths, depths[1:])):
            raise UserError(f"cascade {self}: stage depths {depths} must strictly increase")
        keeps = [s.keep for s in self.stages[:-1]]
        if any(b > a for a, b in zip(keeps, keeps[1:])):
            raise UserError(f"cascade {self}: keep counts {keeps} must not grow (a stage sees only what the "
                             "one before kept)")

    def _check_compression(self) -> None:
        deepest = self.stages[-1].shape
        for stage in self.stages[:-1]:
            below = tuple(c for c in deepest.compress_layers if c < stage.depth)
            same = stage.shape.compress_layers == below and (not below or stage.shape.ratio == deepest.ratio)
            if not same:
                expected = Shape(stage.depth, below, deepest.ratio if below else 1)
                raise UserError(
                    f"cascade {self}: stage {stage.shape} and the deepest stage {deepest} differ below depth "
                    f"{stage.depth}, so the deeper stage cannot resume from it; a later stage may only add "
                    f"compression at or after the earlier stage's depth (here the earlier stage would be {expected})")

    @classmethod
    def parse(cls, text: str) -> "CascadePlan":
        """The string form: stages joined by ``>``, each ``SHAPE topK`` but the last."""
        stages: list[StageLike] = []
        for part in text.split(">"):
            match = _STAGE.match(part.strip())
            if not match:
                raise UserError(f"cannot parse cascade stage {part.strip()!r} in {text!r}: expected e.g. "
                                 "'L10 top50 > L20 top15 > L30'")
            shape = Shape.parse(match["shape"])
            stages.append((shape, int(match["keep"])) if match["keep"] else shape)
        return cls(stages)

    @classmethod
    def coerce(cls, plan: Union["CascadePlan", str, Sequence[StageLike]]) -> "CascadePlan":
        if isinstance(plan, CascadePlan):
            return plan
        if isinstance(plan, str):
            return cls.parse(plan)
        return cls(plan)

    def __str__(self) -> str:
        return " > ".join(map(str, self.stages))

    def __repr__(self) -> str:
        return f"CascadePlan('{self}')"

    def __eq__(self, other) -> bool:
        return isinstance(other, CascadePlan) and self.stages == other.stages

    def __hash__(self) -> int:
        return hash(self.stages)

    @property
    def depths(self) -> list[int]:
        return [s.depth for s in self.stages]

    @property
    def path(self) -> Shape:
        """The one shape every stage is an exit of: the deepest stage's compression, all stage depths."""
        deepest = self.stages[-1].shape
        return Shape(self.depths, deepest.compress_layers, deepest.ratio)

    def validate(self, available_exits: Sequence[int]) -> "CascadePlan":
        self.path.validate(available_exits)
        return self

    def reaching(self, candidates: int) -> list[int]:
        """How many of ``candidates`` each stage scores."""
        counts, n = [], candidates
        for stage in self.stages:
            counts.append(n)
            n = min(n, stage.keep) if stage.keep is not None else n
        return counts

    def flops(self, dims: BackboneDims, candidates: int, query_len: int, passage_len: int, prompt_len: int) -> float:
        """Estimated FLOPs for one query with ``candidates`` candidates: each stage's blocks (those between
        the previous stage's depth and its own), for the candidates that reach it (:meth:`Shape.flops`'s
        cost model, on the path shape)."""
        per_block = self.path.block_flops(dims, query_len, passage_len, prompt_len)
        starts = [0] + self.depths[:-1]
        return sum(n * sum(per_block[start:stage.depth])
                   for n, start, stage in zip(self.reaching(candidates), starts, self.stages))
