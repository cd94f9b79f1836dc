"""Token compression (spec section 3.4) as pure tensor functions.

Only the passage span of each sequence shrinks: consecutive groups of ``r`` passage tokens become
their weighted average (the last group may be partial); query and prompt tokens are kept. The
weights come from the attention that the scoring token pays to each token in the previous block.
"""
from __future__ import annotations

import torch

# A group whose weights sum below this (underflow, or an all-zero row) falls back to a plain mean
# instead of 0/0 = NaN (bug B4 of the reference).
_MIN_GROUP_WEIGHT = 1e-20


def compress_passages(hidden: torch.Tensor, mask: torch.Tensor, query_lengths: torch.Tensor,
                      prompt_lengths: torch.Tensor, weights: torch.Tensor, ratio: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the passage span of every right-padded row in groups of ``ratio``.

    Args:
        hidden: [N, L, D] residual stream. mask: [N, L], 1 on real tokens (right padded).
        query_lengths, prompt_lengths: [N] span lengths. weights: [N, L] token importances.
    Returns:
        the new [N, L', D] states (padding positions are zero vectors) and the new [N, L'] mask.
    Gradients flow through the weights, as in training.
    """
    n, length, dim = hidden.shape
    real = mask.sum(dim=1)
    q, p = query_lengths.view(-1, 1), prompt_lengths.view(-1, 1)
    passage = real.view(-1, 1) - q - p
    pooled = torch.div(passage + ratio - 1, ratio, rounding_mode="floor")
    new_real = (q + pooled + p).view(-1)
    new_length = int(new_real.max())

    t = torch.arange(length, device=hidden.device).view(1, -1)
    in_passage = (t >= q) & (t < q + passage)
    in_tail = (t >= q + passage) & (t < real.view(-1, 1))
    # Where each token lands; padding goes to an extra slot that is cut off at the end.
    target = torch.where(t < q, t, torch.full_like(t, new_length))
    target = torch.where(in_passage, q + torch.div(t - q, ratio, rounding_mode="floor"), target)
    target = torch.where(in_tail, t - passage + pooled, target)

    w = torch.where(in_passage, weights.float(), torch.zeros((), device=hidden.device))
    group_sum = torch.zeros(n, new_length + 1, device=hidden.device).scatter_add(1, target, w)
    group_size = torch.zeros(n, new_length + 1, device=hidden.device).scatter_add(1, target, in_passage.float())
    total, size = group_sum.gather(1, target), group_size.gather(1, target).clamp(min=1)
    usable = total > _MIN_GROUP_WEIGHT
    alpha = torch.where(usable, w / torch.where(usable, total, torch.ones_like(total)), 1.0 / size)
    alpha = torch.where(in_passage, alpha, (t < q).float() + in_tail.float())

    contributions = alpha.unsqueeze(-1) * hidden.float()
    out = torch.zeros(n, new_length + 1, dim, device=hidden.device, dtype=torch.float32)
    out = out.scatter_add(1, target.unsqueeze(-1).expand(-1, -1, dim), contributions)
    new_mask = (torch.arange(new_length, device=hidden.device).view(1, -1) < new_real.view(-1, 1)).to(mask.dtype)
    return out[:, :new_length].to(hidden.dtype), new_mask


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The RoPE partner of each feature: (x1, x2) -> (-x2, x1) over the two halves."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def scoring_token_attention(layer, hidden: torch.Tensor, mask: torch.Tensor, query_index: torch.Tensor,
                            position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Attention that the token at ``query_index`` (one per row) pays to every token in ``layer``,
    summed over heads: [N, L] in fp32.

    Computed from the layer's own norm, projections and rotary embedding for that single query row,
    so no [N, H, L, L] matrix is ever built (bug B3 of the reference). The query attends causally
    to the real tokens at or before it, exactly as in the block's full attention.
    """
    attn = layer.self_attn
    head_dim = attn.head_dim
    n, length, _ = hidden.shape
    rows = torch.arange(n, device=hidden.device)
    x = layer.input_layernorm(hidden)
    query = attn.q_proj(x[rows, query_index]).view(n, -1, head_dim)
    key = attn.k_proj(x).view(n, length, -1, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3-style per-head norms
        query, key = attn.q_norm(query), attn.k_norm(key)
    cos, sin = (pe.expand(n, -1, -1) for pe in position_embeddings)
    query = query * cos[rows, query_index].unsqueeze(1) + rotate_half(query) * sin[rows, query_index].unsqueeze(1)
    key = key * cos.unsqueeze(2) + rotate_half(key) * sin.unsqueeze(2)

    kv_heads = key.shape[2]
    query = query.view(n, kv_heads, -1, head_dim).float()  # grouped-query attention: heads share keys
    logits = torch.einsum("nhgd,nlhd->nhgl", query, key.float()) * getattr(attn, "scaling", head_dim ** -0.5)
    positions = torch.arange(length, device=hidden.device).view(1, -1)
    visible = mask.bool() & (positions <= query_index.view(-1, 1))
    logits = logits.masked_fill(~visible.view(n, 1, 1, length), float("-inf"))
    return torch.softmax(logits, dim=-1).sum(dim=(1, 2))
