"""Sharded, resumable re-ranking over processes and machines, on ``torch.distributed`` (``torchrun``).

::

    torchrun --nproc_per_node 4 -m pyterrier_matroyshka rerank --dataset D --run-file bm25.run --output out.run

(``--run-file`` is ``--run``'s other name: torchrun would take ``--run`` for an abbreviation of its ``--run-path``)

or from Python, in a script launched the same way (or as a plain one-process run)::

    from pyterrier_matroyshka.sharded import rerank_sharded
    from pyterrier_matroyshka.candidate_stream import TrecRunCandidates
    candidates = TrecRunCandidates("bm25.run", topics, pt.text.get_text(dataset, "text"), top_k=100)
    rerank_sharded(candidates, lambda device: MatroyshkaReRanker(model, device=device), "out.run",
                   arguments={"model": model})

How it works. Every rank reads the candidate stream (cheaply: its own queries' text only), query ``i`` going
to rank ``i % world``. Each query is re-ranked alone, so its scores do not depend on which rank scored it or on
what else was in its batches, and the merged output is byte-identical for any number of processes on the same
kind of hardware. Each rank appends its finished queries to its own shard in a work folder (``<output>.parts``,
see :mod:`.shard_store`); rank 0 shows the progress of every rank, then merges the shards in the input's query
order and deletes the folder. A job stopped at any moment (``kill -9`` included) and started again with the same
command skips the queries already finished; a different command is refused. The world size may change between
a stop and a resume.

Each rank uses one GPU (``cuda:LOCAL_RANK``) where there are GPUs, else the CPU. The processes talk over gloo,
only to wait for one another and to exchange their timings: scoring needs no communication, so ranks may be spread
over machines (``torchrun --nnodes``) as long as they share the work folder's filesystem.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import pandas as pd
import pyterrier as pt
import torch
import torch.distributed as dist

from .candidate_stream import QueryCandidates, query_order
from .shard_store import ShardStore
from .trec import format_trec_run

__all__ = ["Ranks", "join_ranks", "rerank_sharded", "RankStats", "ShardedSummary", "TEST_STOP_VARIABLE"]


#: test hook: ``"RANK:K:exit"`` makes rank RANK leave with ``os._exit`` after finishing K queries, ``"RANK:K:hold"``
#: makes it wait there (to be killed); for tests of the resume, never set otherwise
TEST_STOP_VARIABLE = "MATROYSHKA_SHARDED_TEST_STOP"
_FORMAT = 1  # version of the work folder's layout, recorded in job.json
RerankerLike = Union[pt.Transformer, Callable[[torch.device], pt.Transformer]]


@dataclass
class Ranks:
    """This process's place in the job: rank, world size, its device; ``owns_group`` when
    :func:`join_ranks` started the process group (and so ends it)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, value) -> list:
        """``value`` of every rank, in rank order (on every rank)."""
        if self.world == 1:
            return [value]
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others: a cache it fills (converted models, docstores) is then
        read, not written, by the rest."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def leave(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def join_ranks(device: Union[str, torch.device, None] = None, timeout: timedelta = timedelta(hours=24),
               backend: str = "gloo") -> Ranks:
    """This process's :class:`Ranks`, joining the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    The default group is gloo even on GPUs: re-ranking ranks only wait for one another and swap small objects
    (training asks for nccl on GPUs, to reduce gradients). ``timeout`` is how long a rank that has finished waits
    for the slowest one. ``device``: default ``cuda:LOCAL_RANK`` where there are GPUs, else the CPU; a bare
    ``"cuda"`` also means ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return Ranks(rank, world, device, owns)


@dataclass
class RankStats:
    """What one rank did in this run (queries finished before it started are counted in ``skipped``);
    ``seconds``: reading candidates, re-ranking and writing, without loading the model."""

    rank: int
    device: str
    queries: int = 0
    pairs: int = 0
    seconds: float = 0.0
    skipped: int = 0
    peak_rss_mb: float = 0.0

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ShardedSummary:
    """The outcome of :func:`rerank_sharded`: the output, its size, and every rank's throughput."""

    output: Path
    queries: int
    lines: int
    ranks: list[RankStats] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return sum(r.pairs for r in self.ranks)

    @property
    def seconds(self) -> float:
        """Wall time of this run's scoring: the slowest rank's."""
        return max((r.seconds for r in self.ranks), default=0.0)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> str:
        rows = [f"{'rank':>5} {'device':>8} {'queries':>8} {'skipped':>8} {'pairs':>9} {'seconds':>9} "
                f"{'pairs/s':>9} {'peak RSS MB':>12}"]
        for r in self.ranks:
            rows.append(f"{r.rank:>5} {r.device:>8} {r.queries:>8} {r.skipped:>8} {r.pairs:>9} {r.seconds:>9.1f} "
                        f"{r.pairs_per_second:>9.1f} {r.peak_rss_mb:>12.0f}")
        rows.append(f"{'total':>5} {'-':>8} {sum(r.queries for r in self.ranks):>8} "
                    f"{sum(r.skipped for r in self.ranks):>8} {self.pairs:>9} {self.seconds:>9.1f} "
                    f"{self.pairs_per_second:>9.1f}")
        return "\n".join(rows)


def rerank_sharded(candidates: QueryCandidates, reranker: RerankerLike, output: Union[str, Path], *,
                   run_name: str = "matroyshka", arguments: Optional[dict] = None,
                   work_dir: Union[str, Path, None] = None, ranks: Optional[Ranks] = None, progress: bool = True,
                   keep_parts: bool = False, order: Optional[Sequence[str]] = None) -> ShardedSummary:
    """Re-rank ``candidates`` query by query over every rank of the job and write one TREC run to ``output``.

    Call it on every rank (under ``torchrun``) or in a single process: the output is the same, byte for byte.

    Args:
        candidates: a re-iterable query source, e.g. a
            :class:`~pyterrier_matroyshka.candidate_stream.TrecRunCandidates` (streamed) or
            :class:`~pyterrier_matroyshka.candidate_stream.FrameCandidates`.
        reranker: a PyTerrier transformer, or a function ``device -> transformer`` (called only when this rank
            has queries left, with its device).
        output: the TREC run to write (``.gz``: compressed).
        run_name: the run's tag column.
        arguments: what defines the job's results (model, shape, lengths, ...), recorded in the work folder: a
            resume with other arguments is refused. Give everything that changes the scores.
        work_dir: where the shards go (default ``<output>.parts``); on a filesystem every rank sees.
        ranks: from :func:`join_ranks` (default: joined here, and left at the end).
        progress: rank 0 shows a bar for the job and one for each rank (up to 8), and prints the throughput table.
        keep_parts: keep the work folder after the merge.
        order: the candidates' qids in order, when the caller has listed them already
            (:func:`~pyterrier_matroyshka.candidate_stream.query_order`): saves a pass over the input.

    Returns:
        a :class:`ShardedSummary` (every rank gets it; the output exists when it returns).
    """
    joined_here = ranks is None
    ranks = ranks or join_ranks()
    try:
        order = list(order) if order is not None else query_order(candidates)
        return _run(candidates, order, reranker, Path(output), run_name, arguments or {}, work_dir, ranks, progress,
                    keep_parts)
    finally:
        if joined_here:
            ranks.leave()


def _run(candidates, order: list[str], reranker, output: Path, run_name, arguments, work_dir, ranks: Ranks, progress,
         keep_parts):
    format_trec_run(pd.DataFrame({"qid": ["q"], "docno": ["d"], "score": [0.0]}), run_name)  # check it up front
    store = ShardStore(work_dir if work_dir is not None else output.with_name(output.name + ".parts"))
    job = {"format": _FORMAT, "run_name": run_name, "arguments": arguments, "queries": len(order),
           "queries_sha256": hashlib.sha256("\n".join(order).encode()).hexdigest()}
    job = json.loads(json.dumps(job, default=str))  # as job.json will hold it (tuples as lists, paths as text)
    store.check_job(job)  # every rank decides alike before anyone writes
    ranks.barrier()
    if ranks.main:
        store.write_job(job)
    ranks.barrier()
    display = None
    try:
        with store.writer(ranks.rank) as writer:
            done = store.finished()
            todo = [sum(1 for i, q in enumerate(order) if i % ranks.world == r and q not in done)
                    for r in range(ranks.world)]
            counts = [store.count_records(r) for r in range(ranks.world)] if progress and ranks.main else []
            ranks.barrier()  # every rank has cleaned its shard and read what is done before anyone writes
            display = _Progress(store, len(order), len(done), todo, counts) if counts else None
            stats = _score_my_queries(candidates, order, done, reranker, writer, ranks, run_name)
        all_stats = ranks.gather(stats)  # waits for the slowest rank while rank 0's bars keep polling
    finally:
        if display:
            display.close()
    lines = 0
    if ranks.main:
        lines = store.merge(order, output)
        if not keep_parts:
            store.remove()
    ranks.barrier()  # the others return once the output exists
    summary = ShardedSummary(output, len(order), ranks.gather(lines)[0], all_stats)
    if progress and ranks.main:
        print(summary.table(), flush=True)
    return summary


def _score_my_queries(candidates, order: Sequence[str], done, reranker: RerankerLike, writer, ranks: Ranks,
                      run_name: str) -> RankStats:
    stats = RankStats(ranks.rank, str(ranks.device))
    stop = _test_stop(ranks.rank)
    model = reranker if isinstance(reranker, pt.Transformer) else None
    start = time.perf_counter()
    for index, (qid, load) in enumerate(candidates):
        if index >= len(order) or qid != order[index]:
            raise RuntimeError(f"the candidates changed while being read (query {index} is now {qid!r}); a source "
                               f"must give the same queries in the same order every time")
        if index % ranks.world != ranks.rank:
            continue
        if qid in done:
            stats.skipped += 1
            continue
        if model is None:  # built on first need, its loading time kept out of the throughput
            loading = time.perf_counter()
            model = reranker(ranks.device)
            start += time.perf_counter() - loading
        began = time.perf_counter()
        frame = load()
        result = model(frame) if len(frame) else frame.assign(score=pd.Series(dtype=float))
        writer.append(qid, format_trec_run(result, run_name), len(frame), time.perf_counter() - began)
        stats.queries += 1
        stats.pairs += len(frame)
        if stop and stats.queries == stop[0]:
            _stop_for_test(stop[1])
    stats.seconds = time.perf_counter() - start
    stats.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return stats


def _test_stop(rank: int) -> Optional[tuple[int, str]]:
    value = os.environ.get(TEST_STOP_VARIABLE)
    if not value:
        return None
    stop_rank, count, how = value.split(":")
    return (int(count), how) if int(stop_rank) == rank else None


def _stop_for_test(how: str) -> None:
    if how == "hold":
        while True:
            time.sleep(60)
    os._exit(17)


class _Progress:
    """Bars for the whole job and each rank, fed by polling the manifests (so rank 0 sees every rank without
    any messages between them), with rates and ETAs from tqdm."""

    MAX_RANK_BARS = 8

    def __init__(self, store: ShardStore, total: int, finished: int, todo: Sequence[int],
                 base: Sequence[tuple[int, int]], interval: float = 1.0):
        self.store, self.interval = store, interval
        self.now = list(base)  # (records, bytes read) of each manifest
        self.total = pt.tqdm(total=total, initial=finished, desc="queries (all ranks)", unit="q", position=0,
                             dynamic_ncols=True)
        show = 1 < len(todo) <= self.MAX_RANK_BARS
        self.bars = [pt.tqdm(total=n, desc=f"rank {r}", unit="q", position=r + 1, leave=True, dynamic_ncols=True)
                     for r, n in enumerate(todo)] if show else []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        for rank, before in enumerate(self.now):
            self.now[rank] = self.store.count_records(rank, since=before)
            step = self.now[rank][0] - before[0]
            if step:
                self.total.update(step)
                if self.bars:
                    self.bars[rank].update(step)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()
        for bar in [*self.bars, self.total]:
            bar.close()
