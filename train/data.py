"""Training groups: reading the JSONL files and sampling one group per query (spec section 6).

One JSON object a line::

    {"query": str, "pos": [str, ...], "neg": [str, ...],
     "pos_scores": [float, ...], "neg_scores": [float, ...],     # optional teacher logits, aligned
     "prompt": str,                                              # optional instruction
     "qid": str, "pos_ids": [...], "neg_ids": [...]}             # optional ids (written by ``groups``)

A sampled group is ``[one positive, G - 1 negatives]`` (the label is index 0). Sampling is a pure function
of ``(seed, epoch, position in the epoch)``, so a resumed run draws exactly what the interrupted one would
have, and every DDP rank agrees on the order.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import torch

from pyterrier_matroyshka.errors import UserError, numbered_lines, text_problem
from pyterrier_matroyshka.prompt import PromptEncoder

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  #: teacher scores are used in float32


@dataclass(frozen=True)
class Group:
    """One query with its positives, negatives and optional teacher scores."""

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...]
    pos_scores: Optional[tuple[float, ...]] = None
    neg_scores: Optional[tuple[float, ...]] = None
    prompt: Optional[str] = None
    qid: Optional[str] = None
    source: str = ""  #: where it was read (``file:line``)
    domain: str = ""  #: the collection or training-mix source it came from (the file's ``src``)

    @property
    def has_scores(self) -> bool:
        return self.pos_scores is not None and self.neg_scores is not None


def data_files(paths: Union[PathLike, Sequence[PathLike]]) -> list[Path]:
    """The ``.jsonl``/``.json`` files of ``paths`` (files, or folders walked recursively), sorted."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json") and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"training data {path} does not exist (give JSONL files or folders of them)")
    if not files:
        raise UserError(f"no .jsonl/.json files under {[str(p) for p in paths]}")
    return files


def _strings(record: dict, key: str, where: str, required: bool) -> Optional[tuple[str, ...]]:
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: '{key}' must be a list of strings, got {str(value)[:80]!r}")
    for i, text in enumerate(value):
        _check_text(text, f"{where}: '{key}'[{i}]")
    return tuple(value)


def _check_text(text: str, what: str) -> None:
    problem = text_problem(text)
    if problem:
        raise UserError(f"{what} {problem}")


def _scores(record: dict, key: str, texts: tuple[str, ...], where: str) -> Optional[tuple[float, ...]]:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise UserError(f"{where}: '{key}' must be a list of numbers, got {str(value)[:80]}")
    bad = [i for i, v in enumerate(value) if not (math.isfinite(v) and abs(v) <= FLOAT32_MAX)]
    if bad:
        raise UserError(f"{where}: '{key}'[{bad[0]}] is {value[bad[0]]} ({len(bad)} score(s) not finite in float32): "
                        "teacher scores must be finite numbers; rescore this group (python -m train teacher) or "
                        "drop it")
    if len(value) != len(texts):
        text_key = key.removesuffix("_scores")
        raise UserError(f"{where}: query {record.get('query')!r} has {len(value)} {key} for "
                        f"{len(texts)} {text_key} passages; teacher scores must align with '{text_key}'")
    return tuple(float(v) for v in value)


def parse_group(line: str, where: str) -> Group:
    """One JSONL line -> :class:`Group`; errors name ``where`` (``file:line``)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("query"), str):
        raise UserError(f"{where}: missing or non-string 'query'")
    _check_text(record["query"], f"{where}: 'query'")
    pos = _strings(record, "pos", where, required=True)
    neg = _strings(record, "neg", where, required=True)
    if not pos:
        raise UserError(f"{where}: query {record['query']!r} has no positive passage")
    pos_scores = _scores(record, "pos_scores", pos, where)
    neg_scores = _scores(record, "neg_scores", neg, where)
    if (pos_scores is None) != (neg_scores is None):
        raise UserError(f"{where}: query {record['query']!r} has only one of pos_scores/neg_scores")
    prompt = record.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise UserError(f"{where}: 'prompt' must be a string, got {prompt!r:.80}")
        _check_text(prompt, f"{where}: 'prompt'")
    qid = record.get("qid")
    return Group(record["query"], pos, neg, pos_scores, neg_scores, prompt, None if qid is None else str(qid), where,
                 str(record.get("src") or ""))


def read_groups(paths: Union[PathLike, Sequence[PathLike]], max_per_file: Optional[int] = None) -> list[Group]:
    """Read every group of ``paths`` (files or folders); ``max_per_file`` keeps the first n of each file."""
    groups: list[Group] = []
    for file in data_files(paths):
        kept = 0
        for number, line in numbered_lines(file):
            if not line.strip():
                continue
            if max_per_file is not None and kept >= max_per_file:
                break
            groups.append(parse_group(line, f"{file}:{number}"))
            kept += 1
    log.info("read %d groups from %s", len(groups), [str(p) for p in data_files(paths)])
    return groups


@dataclass
class Sample:
    """A sampled group: G passages (positive first), teacher scores if any, and whether negatives repeat."""

    group: Group
    passages: list[str]
    teacher: Optional[list[float]]
    repeated: bool


def sample_group(group: Group, group_size: int, rng: random.Random) -> Sample:
    """One positive and ``group_size - 1`` negatives without replacement; when the group has too few
    negatives, the list is repeated ``ceil(need / len)`` times first (the reference's rule)."""
    pos = rng.randrange(len(group.pos))
    need = group_size - 1
    pool = list(range(len(group.neg)))
    if need and not pool:
        raise UserError(f"{group.source}: query {group.query!r} has no negatives; a group of {group_size} needs "
                        f"{need}")
    repeated = len(pool) < need
    if repeated:
        pool = pool * math.ceil(need / len(pool))
    negs = rng.sample(pool, need)
    teacher = None
    if group.has_scores:
        teacher = [group.pos_scores[pos]] + [group.neg_scores[i] for i in negs]
    return Sample(group, [group.pos[pos]] + [group.neg[i] for i in negs], teacher, repeated)


class GroupBatches:
    """Micro-batches of sampled groups, for one DDP rank, in a resumable order.

    Each epoch shuffles the groups with ``seed + epoch``; a global micro-batch is ``batch_size * world``
    consecutive groups of that order, of which this rank takes its slice. Incomplete tails are dropped
    (every rank must step together). ``micro_step`` counts global micro-batches from the start of training.
    """

    def __init__(self, groups: Sequence[Group], group_size: int, batch_size: int, seed: int = 42,
                 rank: int = 0, world: int = 1, balance_domains: bool = False):
        if group_size < 1 or batch_size < 1:
            raise UserError(f"group_size and batch_size must be >= 1, got {group_size} and {batch_size}")
        self.groups, self.group_size, self.batch_size = list(groups), group_size, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.balance_domains = balance_domains
        self.repeated = 0  # groups sampled with repeated negatives so far (this rank)
        if self.per_epoch == 0:
            raise UserError(f"{len(self.groups)} groups cannot fill one micro-batch of {batch_size} queries on "
                            f"{world} rank(s)")

    @property
    def per_epoch(self) -> int:
        """Global micro-batches per epoch."""
        return len(self.groups) // (self.batch_size * self.world)

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.groups)))
        random.Random(self.seed + epoch).shuffle(order)
        return interleave_domains(order, [g.domain for g in self.groups]) if self.balance_domains else order

    def batch(self, micro_step: int) -> list[Sample]:
        """This rank's samples of global micro-batch ``micro_step``."""
        epoch, index = divmod(micro_step, self.per_epoch)
        order = self._order(epoch)
        start = (index * self.world + self.rank) * self.batch_size
        samples = []
        for position in range(start, start + self.batch_size):
            rng = random.Random(f"{self.seed}:{epoch}:{position}")
            sample = sample_group(self.groups[order[position]], self.group_size, rng)
            self.repeated += sample.repeated
            samples.append(sample)
        return samples

    def __iter__(self) -> Iterator[list[Sample]]:
        micro_step = 0
        while True:
            yield self.batch(micro_step)
            micro_step += 1


def interleave_domains(order: Sequence[int], domains: Sequence[str]) -> list[int]:
    """``order`` rearranged so that domains take turns (round robin, in order of first appearance), each
    domain's groups keeping their order: any window of the epoch then holds every domain about equally, while
    they last."""
    queues: dict[str, list[int]] = {}
    for index in order:
        queues.setdefault(domains[index], []).append(index)
    mixed: list[int] = []
    for turn in range(max(map(len, queues.values()), default=0)):
        mixed += [queue[turn] for queue in queues.values() if turn < len(queue)]
    return mixed


def collate(samples: Sequence[Sample], encoder: PromptEncoder, device: Optional[torch.device] = None
            ) -> dict[str, torch.Tensor]:
    """Model inputs for ``B * G`` sequences (group-major, positive first) and ``teacher_scores`` [B * G]
    when every sample has teacher scores."""
    encoded = []
    for sample in samples:
        pairs = [(sample.group.query, passage) for passage in sample.passages]
        encoded += encoder.encode(pairs, prompt=sample.group.prompt)
    batch = encoder.collate(encoded, device)
    if all(s.teacher is not None for s in samples):
        batch["teacher_scores"] = torch.tensor([x for s in samples for x in s.teacher], device=device)
    return batch


def check_negatives(groups: Iterable[Group], group_size: int) -> None:
    """Every group has a negative when a group holds more than its positive: found when the data is read,
    not optimizer steps later when the group is first drawn."""
    if group_size < 2:
        return
    empty = [g for g in groups if not g.neg]
    if empty:
        raise UserError(f"{empty[0].source}: query {empty[0].query!r} has no negatives ({len(empty)} such group(s)); "
                        f"a group of {group_size} needs at least one (they are repeated to fill it): add negatives "
                        "or drop the group")


def require_teacher_scores(groups: Iterable[Group]) -> None:
    """Fail loudly (B10) when external distillation is asked for and a group has no teacher scores."""
    for group in groups:
        if not group.has_scores:
            raise UserError(f"{group.source}: query {group.query!r} has no pos_scores/neg_scores, but the config "
                            "asks for external distillation (kd_external); add them with `python -m train teacher` "
                            "or set kd_external false")
