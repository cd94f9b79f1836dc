"""The Matroyshka forward pass over any Hugging Face decoder backbone (spec section 3).

The backbone's own decoder layers run one by one, so one code path serves Llama, Mistral and Qwen2
(and Qwen3): scores are read at the requested exits, blocks after the deepest exit never run, and
the passage span is pooled before the chosen blocks. Module names follow the released checkpoints
(``model.layers.*``, ``lm_head.{i}.linear_head``) so PEFT adapters trained by the reference load.
"""
from __future__ import annotations

from typing import AbstractSet, Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .compress import compress_passages, scoring_token_attention
from .forward_state import ForwardState
from .errors import UserError
from .shape import BackboneDims, Shape

SUPPORTED_BACKBONES = ("llama", "mistral", "qwen2", "qwen3")
REFERENCE_BUGS = frozenset({"B1", "B2"})


class ExitHead(nn.Module):
    """A bias-free ``Linear(hidden -> 1)`` read at one exit depth."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear_head = nn.Linear(hidden_size, 1, bias=False)


class MatroyshkaModel(nn.Module):
    """A decoder backbone (``.model``) plus one scoring head per exit depth (``.lm_head``).

    Exits are ``range(start_layer, num_layers + 1, layer_sep)``; head ``i`` belongs to depth
    ``start_layer + i * layer_sep``.
    """

    def __init__(self, backbone: nn.Module, heads: nn.ModuleList, start_layer: int, layer_sep: int = 1):
        super().__init__()
        model_type = getattr(backbone.config, "model_type", "?")
        if model_type not in SUPPORTED_BACKBONES or not all(
                hasattr(backbone, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
            raise UserError(f"unsupported backbone architecture {model_type!r}: the Matroyshka forward drives "
                            f"decoder layers of {', '.join(SUPPORTED_BACKBONES)} models")
        self.model = backbone
        self.lm_head = heads
        self.start_layer, self.layer_sep = start_layer, layer_sep
        if len(heads) != len(self.exit_depths):
            raise UserError(f"{len(heads)} heads for exits {self.exit_depths} (start_layer {start_layer}, "
                            f"layer_sep {layer_sep}, {self.num_layers} layers): the checkpoint and its config disagree")
        self.gradient_checkpointing = False
        # The layer-by-layer loop passes its own mask; SDPA works with it, eager would also.
        backbone.config._attn_implementation = "sdpa"

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def exit_depths(self) -> list[int]:
        return list(range(self.start_layer, self.num_layers + 1, self.layer_sep))

    @property
    def dims(self) -> BackboneDims:
        return BackboneDims.from_config(self.model.config)

    def head_index(self, depth: int) -> int:
        return (depth - self.start_layer) // self.layer_sep

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, query_lengths: torch.Tensor,
                prompt_lengths: torch.Tensor, shape: Shape, reference_bugs: AbstractSet[str] = frozenset()
                ) -> torch.Tensor:
        """Score a right-padded batch at every exit of ``shape``: [n_exits, N] fp32 raw scores.

        ``reference_bugs`` replays the reference's B1 (the i-th returned exit uses head i) and/or B2
        (compression weights from the last *padded* position) for adapters trained with them.
        """
        state = self.begin(input_ids, attention_mask, query_lengths, prompt_lengths)
        scores, _ = self.advance(state, shape, shape.depth, reference_bugs)
        return scores

    def begin(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, query_lengths: torch.Tensor,
              prompt_lengths: torch.Tensor) -> ForwardState:
        """The batch before block 0: token embeddings, positions and masks."""
        hidden = self.model.embed_tokens(input_ids)
        positions, rotary = self._positions(hidden)
        return ForwardState(hidden, attention_mask, query_lengths, prompt_lengths, depth=0, positions=positions,
                            rotary=rotary)

    def advance(self, state: ForwardState, shape: Shape, stop: int, reference_bugs: AbstractSet[str] = frozenset()
                ) -> tuple[torch.Tensor, ForwardState]:
        """Run blocks ``state.depth .. stop - 1`` as a pass at ``shape`` would, scoring the exits of ``shape``
        in ``(state.depth, stop]``: returns their [n, N] scores and the state after ``stop`` blocks.

        Going from 0 to ``a`` and then from ``a`` to ``b`` computes what one pass to ``b`` does; a
        compression at ``a`` itself happens at the start of the second call (the first one keeps the
        attention weights it needs in the state), after exit ``a`` was scored.
        """
        shape.validate(self.exit_depths)
        if not state.depth <= stop <= shape.depth:
            raise ValueError(f"cannot advance from depth {state.depth} to {stop} with shape {shape} "
                             f"(stops must lie between the state's depth and the shape's deepest exit {shape.depth})")
        hidden, mask, weights = state.hidden, state.mask, state.weights
        positions, rotary = state.positions, state.rotary
        hide_padding = shape.compresses and "B2" in reference_bugs  # B2 reads a padded row's state
        block_mask = self._block_mask(mask, hide_padding)
        lengths = (state.query_lengths, state.prompt_lengths)
        scores: list[torch.Tensor] = []
        for block in range(state.depth, stop):
            if block in shape.exits and block > state.depth:
                scores.append(self._score(hidden, mask, shape, block, reference_bugs))
            if shape.compresses and block in shape.compress_layers:
                hidden, mask = compress_passages(hidden, mask, *lengths, weights, shape.ratio)
                positions, rotary = self._positions(hidden)
                block_mask = self._block_mask(mask, hide_padding)
            layer = self.model.layers[block]
            weights = None
            if shape.compresses and block + 1 in shape.compress_layers:
                weights = scoring_token_attention(layer, hidden, mask, self._query_row(mask, reference_bugs), rotary)
            hidden = self._run_block(layer, hidden, block_mask, positions, rotary)
        if stop in shape.exits and stop > state.depth:
            scores.append(self._score(hidden, mask, shape, stop, reference_bugs))
        after = ForwardState(hidden, mask, *lengths, depth=stop, positions=positions, rotary=rotary,
                             weights=weights if stop > state.depth else state.weights)
        empty = hidden.new_zeros(0, hidden.shape[0], dtype=torch.float32)
        return (torch.stack(scores) if scores else empty), after

    def _positions(self, hidden: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Positions 0..L-1 (renumbered after every compression) and their rotary embedding."""
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        return positions, self.model.rotary_emb(hidden, positions)

    def _block_mask(self, mask: torch.Tensor, hide_padding: bool) -> Optional[torch.Tensor]:
        """The blocks' attention mask.

        Rows are right padded, so a real token's causal past holds real tokens only: causal attention
        alone is exact for every state that is ever read (scores, compression weights). The mask is
        then ``None``, which lets SDPA run its causal kernels (flash on a GPU) with shared key/value
        heads instead of a boolean [N, 1, L, L] mask that rules flash out and copies keys and values
        per query head. Padded keys are hidden only where a padded row is read (``hide_padding``, the
        reference's B2) or where attention is eager, which needs an explicit mask; every row has a
        real first token, so no query row is then fully masked."""
        if not hide_padding and self.model.config._attn_implementation != "eager":
            return None
        length = mask.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
        return (causal.unsqueeze(0) & mask.bool().unsqueeze(1)).unsqueeze(1)

    def _run_block(self, layer, hidden, block_mask, positions, rotary):
        kwargs = dict(attention_mask=block_mask, position_ids=positions, position_embeddings=rotary)
        if self.gradient_checkpointing and self.training:
            out = checkpoint(lambda h: layer(h, **kwargs), hidden, use_reentrant=False)
        else:
            out = layer(hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    @staticmethod
    def _query_row(mask: torch.Tensor, reference_bugs: AbstractSet[str]) -> torch.Tensor:
        if "B2" in reference_bugs:
            return torch.full((mask.shape[0],), mask.shape[1] - 1, device=mask.device)
        return mask.sum(dim=1) - 1

    def _score(self, hidden, mask, shape: Shape, depth: int, reference_bugs: AbstractSet[str]) -> torch.Tensor:
        """Final norm + head at each row's last real token only, in fp32."""
        last = mask.sum(dim=1) - 1
        state = self.model.norm(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        index = shape.exits.index(depth) if "B1" in reference_bugs else self.head_index(depth)
        return self.lm_head[index].linear_head(state).float().squeeze(-1)


def reference_bug_set(reference_compat: bool | Sequence[str]) -> frozenset[str]:
    """``True`` replays both reference bugs, ``False`` none, or name them: ``{"B1"}``, ``{"B2"}``."""
    if reference_compat is True:
        return REFERENCE_BUGS
    if not reference_compat:
        return frozenset()
    bugs = frozenset(reference_compat)
    if not bugs <= REFERENCE_BUGS:
        raise UserError(f"reference_compat names unknown bugs {sorted(bugs - REFERENCE_BUGS)}; use B1 and/or B2")
    return bugs
