"""A batch paused between two blocks of the Matroyshka forward pass, so a later call can go on from it.

:meth:`MatroyshkaModel.advance` runs blocks up to a depth and returns one of these; the cascade keeps
only some rows (:meth:`ForwardState.select`), gathers rows of several batches (:func:`concat_states`)
and advances them deeper. Everything a later block needs is here: the residual stream, the mask (after
any compression), the span lengths that compression uses, the scoring token's attention of the last
block run (when the shape compresses right at the pause), and the positions and rotary embedding the
blocks read (their attention mask follows from ``mask``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch


@dataclass(frozen=True)
class ForwardState:
    """Rows of a right-padded batch after ``depth`` blocks (before any compression at ``depth``).

    Attributes:
        hidden: [N, L, D] residual stream. mask: [N, L], 1 on real tokens.
        query_lengths, prompt_lengths: [N] span lengths (compression keeps those spans).
        depth: blocks already applied.
        weights: [N, L] attention that each row's scoring token paid in block ``depth - 1``, kept only
            when the shape compresses before block ``depth`` (compression reads it); else None.
        positions: [1, L] positions 0..L-1 (renumbered after each compression).
        rotary: the backbone's (cos, sin) for ``positions``.
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    query_lengths: torch.Tensor
    prompt_lengths: torch.Tensor
    depth: int
    positions: torch.Tensor
    rotary: tuple[torch.Tensor, torch.Tensor]
    weights: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def select(self, rows: Sequence[int] | torch.Tensor) -> "ForwardState":
        """Only ``rows`` (in that order), with right padding trimmed to their longest real length.

        Dropping padding columns changes no real token's value: rows are right padded, so a real token
        attends only to real tokens before it; positions and rotary angles of the kept columns are
        unchanged; and compression reads only real tokens."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.hidden.device)
        mask = self.mask.index_select(0, index)
        length = int(mask.sum(dim=1).max()) if len(index) else 0
        take = lambda t: t.index_select(0, index)[:, :length]  # noqa: E731 - rows, then columns
        return replace(self, hidden=take(self.hidden), mask=mask[:, :length],
                       query_lengths=self.query_lengths.index_select(0, index),
                       prompt_lengths=self.prompt_lengths.index_select(0, index),
                       positions=self.positions[:, :length], rotary=tuple(r[:, :length] for r in self.rotary),
                       weights=None if self.weights is None else take(self.weights))


def concat_states(states: Sequence[ForwardState]) -> ForwardState:
    """The rows of several states (all at one depth) as one batch, right padded to the longest.

    Padding columns hold zero vectors and mask 0, as compression leaves them; the positions and rotary
    angles are those of the longest state (the same 0..L-1 for every row)."""
    if not states:
        raise ValueError("concat_states needs at least one state")
    depths = {s.depth for s in states}
    if len(depths) > 1:
        raise ValueError(f"cannot join states paused at different depths {sorted(depths)}")
    if len({s.weights is None for s in states}) > 1:
        raise ValueError("cannot join states where only some carry compression weights")
    longest = max(states, key=lambda s: s.hidden.shape[1])
    length = longest.hidden.shape[1]
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1])) if t.dim() == 3 else \
        torch.nn.functional.pad(t, (0, length - t.shape[1]))  # noqa: E731
    mask = torch.cat([pad(s.mask) for s in states])
    return ForwardState(hidden=torch.cat([pad(s.hidden) for s in states]), mask=mask,
                        query_lengths=torch.cat([s.query_lengths for s in states]),
                        prompt_lengths=torch.cat([s.prompt_lengths for s in states]), depth=longest.depth,
                        positions=longest.positions, rotary=longest.rotary,
                        weights=None if longest.weights is None else torch.cat([pad(s.weights) for s in states]))
