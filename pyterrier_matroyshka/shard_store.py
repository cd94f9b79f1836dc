"""The files of a sharded, resumable re-ranking job: per-rank shards, their manifests, the job record, the merge.

A job's work folder holds::

    job.json                 the job's arguments and its input's query list (hash); a resume must match it
    shard-00001.trec         rank 1's finished queries, TREC lines, appended one query at a time
    shard-00001.jsonl        its manifest: one line per finished query (qid, byte offset, length, sha256, ...)

A query counts as finished only once its manifest line is complete: the query's lines are appended to the shard
and fsync'd first, then the manifest line is appended and fsync'd. A process killed at any moment leaves at most
an unfinished tail (shard bytes past the last manifest entry, a manifest line without its newline); the next
writer of that shard cuts it off, and readers never count it. Checksums catch a shard changed or damaged later.
The merge writes the output next to itself and renames it into place, so a half-written output never exists.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Sequence, Union

from .errors import UserError

__all__ = ["ShardStore", "ShardWriter", "Record", "DamagedShardError", "JobMismatchError"]

JOB_FILE = "job.json"
PathLike = Union[str, Path]


class DamagedShardError(UserError):
    """A shard file disagrees with its manifest (changed, truncated or damaged after it was written)."""


class JobMismatchError(UserError):
    """The work folder belongs to a job started with other arguments or another input."""


@dataclass(frozen=True)
class Record:
    """One finished query in a shard: where its TREC lines are and their checksum."""

    qid: str
    offset: int
    length: int
    sha256: str
    rows: int
    seconds: float


def _fsync_dir(folder: Path) -> None:
    """Make a file creation or rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fix_hint(shard: Path, manifest: Path) -> str:
    return (f"delete {shard} and {manifest} and rerun the same command: the queries recorded there are scored "
            f"again (or restore both files from a copy)")


def read_manifest(manifest: Path, shard: Path) -> tuple[list[Record], int]:
    """The complete records of ``manifest`` and the byte length they span. A last line without its newline
    (the writer was killed while writing it) is not a record; any other unreadable line is damage."""
    if not manifest.exists():
        return [], 0
    data = manifest.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    records = []
    for lineno, line in enumerate(complete.splitlines(), start=1):
        try:
            records.append(Record(**json.loads(line)))
        except (ValueError, TypeError) as err:
            raise DamagedShardError(f"{manifest}, line {lineno} is not a manifest record ({err}); the file was "
                                    f"changed or damaged: {_fix_hint(shard, manifest)}") from None
    return records, len(complete)


class ShardStore:
    """The work folder of one job (see the module's docstring)."""

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)

    def shard_paths(self, rank: int) -> tuple[Path, Path]:
        """``(shard, manifest)`` of ``rank``."""
        return self.folder / f"shard-{rank:05d}.trec", self.folder / f"shard-{rank:05d}.jsonl"

    def _ranks_on_disk(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("shard-*.jsonl"))

    # -- the job record -------------------------------------------------------------------------------------
    def check_job(self, job: dict) -> None:
        """Refuse a work folder that holds another job's shards (other arguments, another input)."""
        path = self.folder / JOB_FILE
        if not path.exists():
            if self._ranks_on_disk():
                raise JobMismatchError(f"{self.folder} holds shards but no {JOB_FILE}: it is not a job this "
                                       f"version can resume; delete the folder to start over")
            return
        recorded = json.loads(path.read_text())
        if recorded == job:
            return
        differences = _differences(recorded, job)
        raise JobMismatchError(
            f"{self.folder} belongs to a job started with other settings ({'; '.join(differences)}). "
            f"To resume it, rerun with the settings it was started with; to start over, delete {self.folder} "
            f"(or give another output)")

    def write_job(self, job: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / JOB_FILE
        if not path.exists():
            _write_atomically(path, (json.dumps(job, indent=1, sort_keys=True) + "\n").encode())

    # -- finished queries -----------------------------------------------------------------------------------
    def finished(self, verify: bool = False) -> dict[str, tuple[int, Record]]:
        """``{qid: (rank, record)}`` over every shard on disk (the first record wins should a query appear
        twice); ``verify`` checks every record's checksum."""
        done: dict[str, tuple[int, Record]] = {}
        for rank in self._ranks_on_disk():
            shard, manifest = self.shard_paths(rank)
            records, _ = read_manifest(manifest, shard)
            if verify:
                _verify(shard, manifest, records)
            for record in records:
                done.setdefault(record.qid, (rank, record))
        return done

    def count_records(self, rank: int, since: tuple[int, int] = (0, 0)) -> tuple[int, int]:
        """``(records, bytes read)``: how many queries ``rank``'s manifest holds now (complete lines). Pass the
        last answer as ``since`` to read only what was appended after it (cheap enough to poll)."""
        count, offset = since
        _, manifest = self.shard_paths(rank)
        try:
            with open(manifest, "rb") as f:
                f.seek(offset)
                new = f.read()
        except FileNotFoundError:
            return since
        complete = new.rfind(b"\n") + 1
        return count + new.count(b"\n"), offset + complete

    def writer(self, rank: int) -> "ShardWriter":
        self.folder.mkdir(parents=True, exist_ok=True)
        return ShardWriter(*self.shard_paths(rank))

    # -- the end of a job -----------------------------------------------------------------------------------
    def merge(self, order: Sequence[str], output: PathLike) -> int:
        """Write every query of ``order`` (each exactly once, in that order) from the shards to ``output``
        (gzip-compressed for ``.gz``, with no time stamp, so equal runs give equal bytes); return the number
        of lines. Checksums are verified on the way; a missing query is an error naming it."""
        done = self.finished(verify=True)
        missing = [qid for qid in order if qid not in done]
        if missing:
            raise RuntimeError(f"{len(missing)} queries have no finished record in {self.folder} (first: "
                               f"{missing[0]!r}); rerun the same command to score them")
        output = Path(output)
        tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
        handles: dict[int, IO[bytes]] = {}
        lines = 0
        try:
            with open(tmp, "wb") as raw:
                sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if output.suffix == ".gz" else raw
                for qid in order:
                    rank, record = done[qid]
                    if rank not in handles:
                        handles[rank] = open(self.shard_paths(rank)[0], "rb")
                    data = _read_record(handles[rank], record, *self.shard_paths(rank))
                    sink.write(data)
                    lines += data.count(b"\n")
                if sink is not raw:
                    sink.close()
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, output)
            _fsync_dir(output.parent)
        finally:
            for handle in handles.values():
                handle.close()
            tmp.unlink(missing_ok=True)
        return lines

    def remove(self) -> None:
        """Delete the work folder; the job record goes last, so a folder half deleted still resumes."""
        for rank in self._ranks_on_disk():
            for path in self.shard_paths(rank):
                path.unlink(missing_ok=True)
        (self.folder / JOB_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def _differences(recorded: dict, job: dict) -> list[str]:
    keys = sorted(set(recorded) | set(job))
    out = []
    for key in keys:
        old, new = recorded.get(key), job.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key}.{d}" for d in _differences(old, new)]
        elif old != new:
            out.append(f"{key}: started with {old!r}, now {new!r}")
    return out


def _read_record(handle: IO[bytes], record: Record, shard: Path, manifest: Path) -> bytes:
    handle.seek(record.offset)
    data = handle.read(record.length)
    if len(data) != record.length:
        raise DamagedShardError(f"{shard} ends before query {record.qid!r} (manifest says bytes {record.offset}.."
                                f"{record.offset + record.length}): the file was truncated; "
                                f"{_fix_hint(shard, manifest)}")
    if hashlib.sha256(data).hexdigest() != record.sha256:
        raise DamagedShardError(f"{shard}: the lines of query {record.qid!r} (bytes {record.offset}.."
                                f"{record.offset + record.length}) do not match the checksum in {manifest}: the "
                                f"file was changed or damaged; {_fix_hint(shard, manifest)}")
    return data


def _verify(shard: Path, manifest: Path, records: Sequence[Record]) -> None:
    if not records:
        return
    if not shard.exists():
        raise DamagedShardError(f"{shard} is missing but {manifest} lists {len(records)} finished queries; "
                                f"{_fix_hint(shard, manifest)}")
    with open(shard, "rb") as handle:
        end = 0
        for record in records:
            if record.offset != end:
                raise DamagedShardError(f"{manifest}: query {record.qid!r} starts at byte {record.offset}, "
                                        f"expected {end}; {_fix_hint(shard, manifest)}")
            _read_record(handle, record, shard, manifest)
            end += record.length


class ShardWriter:
    """Appends finished queries to one rank's shard, durably and in order.

    Opening checks the shard against its manifest (checksums), cuts off an unfinished tail left by a killed
    writer, and locks the shard so that a second job writing into the same folder fails at once.
    """

    def __init__(self, shard: Path, manifest: Path):
        self.shard, self.manifest = shard, manifest
        self._data = open(shard, "a+b")
        try:
            fcntl.flock(self._data.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._data.close()
            raise UserError(f"{shard} is being written by another process: the same job runs twice in "
                               f"{shard.parent}; stop the other one first") from None
        records, manifest_end = read_manifest(manifest, shard)
        _verify(shard, manifest, records)
        self.records = records
        self._end = records[-1].offset + records[-1].length if records else 0
        self._data.truncate(self._end)
        self._index = open(manifest, "a+b")
        self._index.truncate(manifest_end)
        _fsync_dir(shard.parent)

    def append(self, qid: str, text: str, rows: int, seconds: float) -> Record:
        """Record one finished query: its TREC lines, then (once they are on disk) its manifest line."""
        data = text.encode("utf-8")
        self._data.write(data)
        self._data.flush()
        os.fsync(self._data.fileno())
        record = Record(qid, self._end, len(data), hashlib.sha256(data).hexdigest(), rows, round(seconds, 6))
        self._index.write((json.dumps(asdict(record)) + "\n").encode())
        self._index.flush()
        os.fsync(self._index.fileno())
        self._end += len(data)
        self.records.append(record)
        return record

    def close(self) -> None:
        self._index.close()
        self._data.close()  # releases the lock

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

