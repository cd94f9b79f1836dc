"""Losses of the three training stages (spec sections 7.4 and 8).

Scores come from ``MatroyshkaModel.forward`` as ``[n_exits, B * G]``: B groups of G candidates each, the
positive first. Every loss is a softmax over the G candidates of a group (temperature 1):

* ``CE``: cross-entropy with the positive (index 0) as the label;
* ``KD_external``: soft cross-entropy to ``softmax(external teacher scores)``;
* ``KD_cascade``: soft cross-entropy to ``softmax`` of the *uncompressed* scores of the exit's anchor.

Stage 1 sums all three at every exit (a plain sum, as the reference: its learning rate is tuned to it, B5);
stages 2 and 3 use CE alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

REDUCTIONS = ("sum", "mean")


def by_group(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[..., B * G]`` scores -> ``[..., B, G]``, in fp32."""
    if scores.shape[-1] % group_size:
        raise ValueError(f"{scores.shape[-1]} scores do not split into groups of {group_size}")
    return scores.float().reshape(*scores.shape[:-1], -1, group_size)


def hard_ce(scores: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``[B, G]`` scores with the positive at index 0, averaged over groups."""
    return -F.log_softmax(scores, dim=-1)[:, 0].mean()


def soft_ce(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-mean_b sum_g target[b, g] * log_softmax(scores)[b, g]``; ``target`` rows are distributions."""
    return -(target * F.log_softmax(scores, dim=-1)).sum(dim=-1).mean()


def cascade_anchors(exits: Sequence[int], spacing: int = 8) -> dict[int, Optional[int]]:
    """The anchor exit each exit is distilled from (``None``: no cascade term).

    The reference's rule: visit exits deepest first at list positions ``idx = 0, 1, ...``; an exit learns
    from the current anchor, and after its own terms, position ``idx`` becomes the anchor whenever
    ``idx % spacing == 0``. So each exit learns from the nearest anchor strictly deeper than itself; the
    deepest exit has none. ``spacing=8`` with exits 4..32 gives anchors 32, 24, 16, 8; ``spacing=1``
    distills every exit from the next deeper one; a spacing at least the number of exits uses the
    deepest exit for all.
    """
    if spacing < 1:
        raise ValueError(f"anchor spacing must be >= 1, got {spacing}")
    anchors: dict[int, Optional[int]] = {}
    current: Optional[int] = None
    for idx, depth in enumerate(sorted(exits, reverse=True)):
        anchors[depth] = current
        if idx % spacing == 0:
            current = depth
    return anchors


@dataclass
class LossTerms:
    """A loss and its parts: ``terms[(kind, exit)]`` holds each term, detached (read when logged, so
    that a GPU step does not wait on every term)."""

    total: torch.Tensor
    terms: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)

    def per_exit(self, kind: str) -> dict[int, float]:
        """``{exit: value}`` for one kind (``CE``, ``KD_external``, ``KD_cascade``), ascending exits."""
        return {depth: float(value) for (k, depth), value in sorted(self.terms.items(), key=lambda t: t[0][1])
                if k == kind}


def _reduce(parts: dict[str, list[torch.Tensor]], reduction: str) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; use one of {REDUCTIONS}")
    sums = [torch.stack(v).sum() if reduction == "sum" else torch.stack(v).mean() for v in parts.values() if v]
    return torch.stack(sums).sum()


def stage1_loss(student: torch.Tensor, exits: Sequence[int], group_size: int, *,
                external: Optional[torch.Tensor] = None, uncompressed: Optional[dict[int, torch.Tensor]] = None,
                anchor_spacing: int = 8, reduction: str = "sum", external_weight: float = 1.0) -> LossTerms:
    """Cascaded self-distillation loss (spec 7.4).

    Args:
        student: ``[n_exits, B * G]`` scores of the sampled (compressed) shape, ``exits`` ascending.
        external: ``[B * G]`` external teacher scores (raw logits); ``None`` leaves out ``KD_external``.
        uncompressed: ``{exit: [B * G]}`` scores of the uncompressed pass at least at every anchor exit
            (detached here); ``None`` leaves out ``KD_cascade``.
        reduction: ``"sum"`` adds every term (the reference); ``"mean"`` averages each kind over its
            exits and adds the three averages (rescale the learning rate, B5).
        external_weight: multiplies every ``KD_external`` term (1 = the reference); lower it when the
            external teacher is weak on the training domain.
    """
    if student.shape[0] != len(exits):
        raise ValueError(f"{student.shape[0]} score rows for {len(exits)} exits")
    scores = by_group(student, group_size)
    target = F.softmax(by_group(external, group_size), dim=-1) if external is not None else None
    anchors = cascade_anchors(exits, anchor_spacing) if uncompressed is not None else {}
    parts: dict[str, list[torch.Tensor]] = {"CE": [], "KD_external": [], "KD_cascade": []}
    terms: dict[tuple[str, int], torch.Tensor] = {}
    for row, depth in enumerate(exits):
        values = {"CE": hard_ce(scores[row])}
        if target is not None:
            values["KD_external"] = external_weight * soft_ce(scores[row], target)
        anchor = anchors.get(depth)
        if anchor is not None:
            if anchor not in uncompressed:
                raise ValueError(f"uncompressed scores of anchor exit {anchor} missing (have {sorted(uncompressed)})")
            soft = F.softmax(by_group(uncompressed[anchor].detach(), group_size), dim=-1)
            values["KD_cascade"] = soft_ce(scores[row], soft)
        for kind, value in values.items():
            parts[kind].append(value)
            terms[(kind, depth)] = value.detach()
    return LossTerms(_reduce(parts, reduction), terms)


def ce_loss(student: torch.Tensor, exits: Sequence[int], group_size: int, reduction: str = "sum") -> LossTerms:
    """Stages 2 and 3 (spec 8): CE at every exit, summed (or averaged) over exits."""
    return stage1_loss(student, exits, group_size, reduction=reduction)
