"""Which scaled-dot-product-attention kernel a forward pass runs, and why the others were refused.

:func:`recorded_sdpa_calls` watches ``torch.nn.functional.scaled_dot_product_attention`` (the call that
transformers' SDPA attention makes in every decoder layer) and keeps one example call per distinct
signature: query/key shapes, dtype, the mask's dtype and shape (or none), ``is_causal`` and
``enable_gqa``. :func:`kernel_report` replays such a call: PyTorch's own dispatcher names the kernel it
picks, and running the call with only one backend allowed at a time shows which kernels accept it and
the reason PyTorch gives for each refusal (e.g. flash refuses an explicit mask).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def describe_mask(mask) -> str:
    if mask is None:
        return "none"
    return f"{str(mask.dtype).removeprefix('torch.')} {list(mask.shape)}"


@contextlib.contextmanager
def recorded_sdpa_calls() -> Iterator[dict]:
    """Within the block, every SDPA call is counted by signature; the first call of each is kept."""
    calls: dict[tuple, dict] = {}
    original = F.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        signature = (tuple(query.shape), tuple(key.shape), str(query.dtype), describe_mask(attn_mask),
                     bool(is_causal), bool(kwargs.get("enable_gqa", False)))
        if signature not in calls:
            calls[signature] = dict(args=(query, key, value), attn_mask=attn_mask, dropout_p=dropout_p,
                                    is_causal=is_causal, scale=scale, kwargs=kwargs, count=0)
        calls[signature]["count"] += 1
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, **kwargs)

    F.scaled_dot_product_attention = recording
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = original


def _replay(call: dict):
    return F.scaled_dot_product_attention(*call["args"], attn_mask=call["attn_mask"], dropout_p=call["dropout_p"],
                                          is_causal=call["is_causal"], scale=call["scale"], **call["kwargs"])


def chosen_kernel(call: dict) -> str:
    """The backend PyTorch's dispatcher picks for this call (its private ``_fused_sdp_choice``)."""
    query, key, value = call["args"]
    try:
        choice = torch._fused_sdp_choice(query, key, value, attn_mask=call["attn_mask"], dropout_p=call["dropout_p"],
                                         is_causal=call["is_causal"], scale=call["scale"], **call["kwargs"])
        return SDPBackend(choice).name
    except (AttributeError, TypeError, RuntimeError, ValueError) as err:  # private API: it may move
        return f"unknown ({type(err).__name__})"


def backend_verdicts(call: dict) -> dict[str, str]:
    """Each backend alone: ``"ok"``, or ``"refused: <PyTorch's reasons>"``."""
    verdicts = {}
    for name in BACKENDS:
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel([backend]):
                    _replay(call)
                verdicts[name] = "ok"
            except Exception as err:  # a refusal is a RuntimeError; a kernel's own failure must not end the run
                # PyTorch warns why each kernel declined (GPU builds); the error itself only says none was left
                reasons = [" ".join(str(w.message).split()) for w in caught] or [str(err).split(".")[0]]
                verdicts[name] = "refused: " + " | ".join(reasons)
    return verdicts


def kernel_report(calls: dict) -> list[dict]:
    """One row per recorded signature: what was passed, the kernel that ran, each backend's verdict."""
    rows = []
    for (q_shape, k_shape, dtype, mask, is_causal, gqa), call in calls.items():
        rows.append(dict(query=list(q_shape), key=list(k_shape), dtype=dtype.removeprefix("torch."), mask=mask,
                         is_causal=is_causal, enable_gqa=gqa, calls=call["count"], kernel=chosen_kernel(call),
                         backends=backend_verdicts(call)))
    return rows
