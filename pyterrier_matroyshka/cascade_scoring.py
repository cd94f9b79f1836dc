"""Progressive deepening for plain Python users: one query's candidates through a :class:`CascadePlan`.

Every candidate runs to the first stage's exit; the best ``keep`` continue from the states already
computed (hidden states, masks, positions, compression weights: :class:`ForwardState`), so no block
runs twice for a candidate. :func:`score_cascade` returns the per-stage scores (NaN where a candidate
did not reach a stage); :func:`cascade_ranking` turns them into the cascade's ranking.

Adapters picked by shape: with ``adapters="auto"`` each stage activates the adapters its own shape
picks (:meth:`MatroyshkaScorer.adapters_for`). Resuming is exact only if the adapters that differ
between two stages touch none of the blocks the earlier stage ran; otherwise :func:`stage_adapters`
refuses with an error that names both ways out: ``adapters="deepest"`` (every stage runs the deepest
stage's adapters, so the final scores equal a one-pass at the deepest shape) or a fixed list of names.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .errors import UserError
from .cascade_plan import CascadePlan
from .adapters import merge_active_adapters, set_active_adapters
from .forward_state import ForwardState, concat_states
from .scorer import MatroyshkaScorer, Pair, _as_pairs

AdapterChoice = Union[str, Sequence[str]]
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EMBEDDING = -1  # "block" index of the token embeddings: below every block


def adapter_blocks(model, name: str) -> set[int]:
    """The decoder blocks an unmerged adapter changes (``-1``: the token embeddings, below block 0).
    Scoring heads are left out: a stage's head is read with that stage's own adapters."""
    from peft.tuners.lora import LoraLayer

    blocks: set[int] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if name not in module.lora_A and name not in getattr(module, "lora_embedding_A", {}):
            continue
        match = _LAYER.search(module_name)
        if match:
            blocks.add(int(match.group(1)))
        elif ".lm_head." not in f".{module_name}.":
            blocks.add(_EMBEDDING)  # embeddings or anything outside the blocks: assume it feeds all of them
    return blocks


def stage_adapters(scorer: MatroyshkaScorer, plan: CascadePlan, adapters: AdapterChoice = "auto") -> list[list[str]]:
    """The adapters each stage runs: ``"auto"`` (each stage's shape picks, as a one-pass at it would),
    ``"deepest"`` (all stages use the deepest stage's pick) or a list of names for all stages.

    Raises ValueError when, under ``"auto"``, a later stage's adapters differ from an earlier stage's in
    an adapter that changes blocks the earlier stage ran: those hidden states are not the later shape's.
    """
    if adapters == "deepest":
        return [scorer.adapters_for(plan.stages[-1].shape)] * len(plan.stages)
    if adapters != "auto":
        if isinstance(adapters, str):
            raise UserError(f"adapters={adapters!r}: use 'auto', 'deepest' or a list of adapter names")
        return [list(adapters)] * len(plan.stages)
    sets = [scorer.adapters_for(stage.shape) for stage in plan.stages]
    starts = [_EMBEDDING] + plan.depths[:-1]
    for later in range(1, len(sets)):
        for earlier in range(later):
            ran = set(range(starts[earlier], plan.depths[earlier]))
            for name in sorted(set(sets[earlier]) ^ set(sets[later])):
                shared = sorted(adapter_blocks(scorer.model, name) & ran)
                if shared:
                    raise UserError(
                        f"cascade {plan}: stage {plan.stages[later].shape} picks adapters {sets[later]} but stage "
                        f"{plan.stages[earlier].shape} ran blocks {_blocks(shared)} with {sets[earlier]}, and "
                        f"adapter {name!r} changes those blocks, so the deeper stage cannot resume from them. "
                        f"Pass adapters='deepest' (every stage runs {sets[-1]}) or a fixed list of adapter names, "
                        "or choose stages whose shapes pick the same adapters")
    return sets


def _blocks(blocks: Sequence[int]) -> str:
    names = ["embeddings" if b == _EMBEDDING else str(b) for b in blocks]
    return ", ".join(names) if len(names) <= 4 else f"{names[0]}..{names[-1]}"


def keep_top(scores: np.ndarray, rows: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` of ``rows`` with the highest ``scores[row]``, best first; ties keep the earlier row."""
    rows = np.sort(np.asarray(rows))
    order = np.argsort(-scores[rows], kind="stable")
    return rows[order[:keep]]


def prune(stage_scores: np.ndarray, plan: CascadePlan) -> np.ndarray:
    """What the cascade sees, from every candidate's score at every stage ([n_stages, n], e.g. from one
    multi-exit pass at ``plan.path``): scores of candidates a stage never reaches become NaN. Exactness
    of the resumed forward makes this the cascade's own output (up to float noise between passes)."""
    seen = np.full(stage_scores.shape, np.nan)
    rows = np.arange(stage_scores.shape[1])
    for i, stage in enumerate(plan.stages):
        seen[i, rows] = stage_scores[i, rows]
        if stage.keep is not None:
            rows = keep_top(stage_scores[i], rows, stage.keep)
    return seen


def cascade_ranking(stage_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cascade's ranking of one query's candidates from their per-stage scores (NaN = not reached).

    Rule: candidates that reached the deepest stage come first, by its score; below them those pruned
    after the stage before, by that stage's score; and so on down to the first stage. Returns the index
    of the last stage each candidate reached, and a score that sorts in that order: the last stage's own
    score, shifted down per group so each group lies below the one above (gaps of 1; differences inside
    a group kept)."""
    reached = stage_scores.shape[0] - 1 - np.argmax(~np.isnan(stage_scores[::-1]), axis=0)
    own = stage_scores[reached, np.arange(stage_scores.shape[1])]
    score = own.copy()
    floor: Optional[float] = None
    for stage in range(stage_scores.shape[0] - 1, -1, -1):
        group = reached == stage
        if not group.any():
            continue
        if floor is not None:
            score[group] = own[group] - own[group].max() + floor - 1.0
        floor = float(score[group].min())
    return reached, score


def _activate(scorer: MatroyshkaScorer, names: list[str]) -> None:
    (merge_active_adapters if scorer.merge_compensation else set_active_adapters)(scorer.model, names)


@torch.inference_mode()
def score_cascade(scorer: MatroyshkaScorer, pairs: Sequence[Pair], plan: Union[CascadePlan, str, Sequence],
                  adapters: AdapterChoice = "auto", batch_size: Optional[int] = None) -> np.ndarray:
    """Per-stage raw scores ``[n_stages, n]`` of one query's candidate ``pairs`` (NaN where pruned).

    A candidate's score at a stage equals its one-pass score at that stage's shape (with that stage's
    adapters); the stage's blocks run only for the candidates that reach it.
    """
    plan = CascadePlan.coerce(plan).validate(scorer.exits)
    if scorer.reference_bugs:
        raise UserError("the cascade runs the corrected forward only (reference bug B1 reorders heads by the "
                         "call's exits, B2 makes compression depend on the batch); use reference_compat=False")
    sets = stage_adapters(scorer, plan, adapters)
    pairs = _as_pairs(pairs)
    scores = np.full((len(plan.stages), len(pairs)), np.nan)
    if not pairs:
        return scores
    encoder = scorer.encoder()
    encoded = encoder.encode(pairs)
    size = batch_size or scorer.batch_size
    core, path = scorer.core, plan.path
    order = sorted(range(len(pairs)), key=lambda r: -len(encoded[r].input_ids))
    batches: list[tuple[list[int], ForwardState]] = [
        (rows, core.begin(**encoder.collate([encoded[r] for r in rows], scorer.device)))
        for rows in (order[i: i + size] for i in range(0, len(order), size))]
    for index, stage in enumerate(plan.stages):
        _activate(scorer, sets[index])
        advanced = []
        for rows, state in batches:
            stage_scores, state = core.advance(state, path, stage.depth)
            scores[index, rows] = stage_scores[-1].cpu().numpy()
            advanced.append((rows, state))
        if stage.keep is not None:
            entered = [r for rows, _ in advanced for r in rows]
            batches = _regroup(advanced, keep_top(scores[index], np.array(entered), stage.keep), size)
    return scores


def _regroup(batches: list[tuple[list[int], ForwardState]], kept: np.ndarray, size: int
             ) -> list[tuple[list[int], ForwardState]]:
    """The ``kept`` rows of paused batches as new batches of up to ``size``, longest first (less padding)."""
    where = {row: (b, i) for b, (rows, _) in enumerate(batches) for i, row in enumerate(rows)}
    length = {row: int(batches[where[row][0]][1].mask[where[row][1]].sum()) for row in kept.tolist()}
    ordered = sorted(kept.tolist(), key=lambda r: -length[r])
    out = []
    for start in range(0, len(ordered), size):
        chunk = ordered[start: start + size]
        parts, rows = [], []
        for b, (batch_rows, state) in enumerate(batches):
            mine = [where[r][1] for r in chunk if where[r][0] == b]
            if mine:
                parts.append(state.select(mine))
                rows.extend(batch_rows[i] for i in mine)
        out.append((rows, concat_states(parts)))
    return out
