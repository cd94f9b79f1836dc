"""Command line: ``python -m train groups|teacher|stage1|stage2|stage3 ...``.

    python -m train groups --dataset beir/scifact/train --output runs/scifact.groups.jsonl
    python -m train teacher --input runs/scifact.groups.jsonl --output runs/scifact.teacher.jsonl --scorer minilm
    python -m train holdout --data runs/holdout.jsonl --adapters runs/stage1 --shapes L30 L10
    python -m train split --input runs/scifact.teacher.jsonl --train runs/train.jsonl --holdout runs/holdout.jsonl
    python -m train stage1 --config train/configs/stage1.json --train_data runs/scifact.teacher.jsonl
    torchrun --nproc_per_node 2 -m train stage1 --config train/configs/stage1.json ...   (DDP)

Stage commands take ``--config FILE`` and any setting of :class:`train.config.StageConfig` as ``--key value``.
Bad input stops a command with one line and exit code 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from pyterrier_matroyshka.errors import ArgumentParser, UserError, int_at_least, run_cli

from .config import STAGES

PROG = "python -m train"


def _parser(command: str, description: str) -> ArgumentParser:
    parser = ArgumentParser(prog=f"{PROG} {command}", description=description)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    return parser


def _existing_file(path: Path, what: str = "input") -> Path:
    """``path`` when it is a file; else a UserError saying what is missing."""
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    return path


def _window(text: str) -> tuple[int, int]:
    """``start,stop`` ranks from 0 with start < stop."""
    try:
        start, stop = (int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--window must be two whole numbers start,stop (e.g. 10,100), got {text!r}") from None
    if not 0 <= start < stop:
        raise UserError(f"--window must satisfy 0 <= start < stop, got {start},{stop}")
    return start, stop


def _groups(argv: Sequence[str]) -> None:
    from .groups import mine_groups, write_groups

    p = _parser("groups", "hard-negative groups from ir_datasets")
    p.add_argument("--dataset", default=None,
                   help="ir_datasets id, e.g. beir/scifact/train or cranfield (default with --sources: the training "
                        "mix, local/training-mix)")
    p.add_argument("--sources", default=None,
                   help="comma-separated training-mix sources (msmarco,nq,squad,ares,medquad,autoq) and/or scifact "
                        "(SciFact train, mined from beir/scifact/train); each group records its source as 'src'")
    p.add_argument("--per_source", type=int_at_least(1), default=None, help="at most this many queries of each source")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--num_negatives", type=int_at_least(1), default=15)
    p.add_argument("--window", default="10,100", help="rank window [start,stop) of the negatives, from 0")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--min_relevance", type=int, default=1)
    p.add_argument("--max_queries", type=int_at_least(1), default=None)
    p.add_argument("--other_positives", type=int_at_least(0), default=0,
                   help="more negatives per group: documents judged relevant to other queries (against a "
                        "learned document prior)")
    a = p.parse_args(argv)
    start, stop = _window(a.window)
    if a.sources is not None:
        _mix_groups(a, (start, stop))
        return
    if a.dataset is None:
        p.error("give --dataset or --sources")
    groups, summary = mine_groups(a.dataset, num_negatives=a.num_negatives, window=(start, stop), seed=a.seed,
                                  min_relevance=a.min_relevance, max_queries=a.max_queries,
                                  other_positives=a.other_positives)
    write_groups(groups, summary, a.output)


def _mix_groups(a: argparse.Namespace, window: tuple[int, int]) -> None:
    """Groups of the chosen training-mix sources (and SciFact train), written to one file."""
    from .groups import GroupsSummary, mine_groups, write_groups
    from .mix import MIX_ID, SOURCES

    names = [s.strip() for s in a.sources.split(",") if s.strip()]
    unknown = [s for s in names if s not in SOURCES and s != "scifact"]
    if unknown or not names:
        raise UserError(f"--sources: unknown source(s) {unknown or names}; choose from {sorted(SOURCES)} and scifact")
    options = dict(num_negatives=a.num_negatives, window=window, seed=a.seed, min_relevance=a.min_relevance,
                   other_positives=a.other_positives)
    groups, summary = [], GroupsSummary(dataset=a.dataset or MIX_ID)
    parts = [(a.dataset or MIX_ID, [s for s in names if s != "scifact"])] if set(names) - {"scifact"} else []
    if "scifact" in names:
        parts.append(("beir/scifact/train", None))
    for dataset, sources in parts:
        kept, part = mine_groups(dataset, sources=sources, per_source=a.per_source, max_queries=a.max_queries,
                                 **options)
        groups += kept
        for key in ("queries", "used", "skipped_no_positive", "topped_up", "positives", "negatives",
                    "random_negatives", "other_positive_negatives"):
            setattr(summary, key, getattr(summary, key) + getattr(part, key))
    write_groups(groups, summary, a.output)


def _teacher(argv: Sequence[str]) -> None:
    from .data import read_groups
    from .teacher import add_teacher_scores, make_scorer

    p = _parser("teacher", "add pos_scores/neg_scores (raw logits)")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--scorer", default="minilm", choices=["minilm", "matroyshka"])
    p.add_argument("--model", default=None, help="matroyshka teacher: base or released folder / hub id")
    p.add_argument("--adapters", default="", help="matroyshka teacher: comma-separated adapter folders")
    p.add_argument("--shape", default=None, help="matroyshka teacher: one-exit shape, default the deepest exit")
    p.add_argument("--batch_size", type=int_at_least(1), default=32)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    a = p.parse_args(argv)
    read_groups([_existing_file(a.input)])  # the whole file checked before the teacher loads
    scorer = make_scorer(a.scorer, a.model, [x for x in a.adapters.split(",") if x], a.shape, a.batch_size, a.dtype)
    add_teacher_scores(a.input, a.output, scorer, verbose=True)


def _split(argv: Sequence[str]) -> None:
    from .groups import split_holdout

    p = _parser("split", "hold out every n-th group")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--holdout", required=True, type=Path)
    p.add_argument("--every", type=int_at_least(2), default=10, help="hold out every n-th group (n >= 2)")
    p.add_argument("--by_positives", action="store_true",
                   help="hold out whole clusters of queries that share a positive passage (no held-out positive "
                        "is a training positive)")
    a = p.parse_args(argv)
    counts = split_holdout(_existing_file(a.input), a.train, a.holdout, a.every, a.by_positives)
    print("train %d, holdout %d groups" % counts)


def _export(argv: Sequence[str]) -> None:
    from .export import export_adapter

    p = _parser("export", "truncate an adapter's rank, fp16")
    p.add_argument("--adapter", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--rank", type=int_at_least(1), required=True)
    a = p.parse_args(argv)
    _existing_file(a.adapter / "adapter_config.json", "adapter config")
    print(export_adapter(a.adapter, a.output, a.rank))


def _holdout(argv: Sequence[str]) -> None:
    import json

    from .holdout import holdout_report

    recipe = json.loads((Path(__file__).parent / "configs" / "stage1.json").read_text())

    p = _parser("holdout", "RR@10/nDCG@10 on held-out groups")
    p.add_argument("--data", required=True, nargs="+")
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--adapters", nargs="*", default=[], help="adapter folders merged in order")
    p.add_argument("--shapes", nargs="+", default=["L30"])
    p.add_argument("--max_length", type=int_at_least(1), default=recipe["passage_max_len"],
                   help="passage tokens (the recipe's)")
    p.add_argument("--batch_size", type=int_at_least(1), default=64)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--output", type=Path, default=None, help="also write the report here (JSON)")
    a = p.parse_args(argv)
    report = holdout_report(a.data, a.model, a.adapters, a.shapes, max_length=a.max_length,
                            batch_size=a.batch_size, dtype=a.dtype)
    text = json.dumps(report, indent=1)
    print(text)
    if a.output:
        a.output.write_text(text)


def _stage(stage: str, argv: Sequence[str]) -> None:
    from .config import load_config, stage_help

    argv = [a for a in argv if a != "--debug"]
    if "-h" in argv or "--help" in argv:
        print(stage_help(stage))
        return
    config_file, argv = _config_option(argv)
    config = load_config(stage, config_file, argv)
    from .stages import run_stage  # torch and transformers: only once the settings are known to be good

    print(run_stage(config))


def _config_option(argv: list[str]) -> tuple[Optional[str], list[str]]:
    """``--config FILE`` (or ``--config=FILE``) taken out of ``argv``: ``(FILE or None, the rest)``."""
    found = [i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")]
    if len(found) > 1:
        raise UserError("--config is given more than once; give one file (later settings go as --key value)")
    if not found:
        return None, argv
    i = found[0]
    if "=" in argv[i]:
        return argv[i].split("=", 1)[1] or None, argv[:i] + argv[i + 1:]
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise UserError("--config needs a file, e.g. --config train/configs/stage1.json")
    return argv[i + 1], argv[:i] + argv[i + 2:]


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for a command's options)")
        print(__doc__)
        print(f"commands: {', '.join(COMMANDS)}")
        return
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    for noisy in ("transformers", "httpx", "ir_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not argv or argv[0] not in COMMANDS:
        problem = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"{PROG}: error: {problem}; use one of {', '.join(COMMANDS)} ({PROG} --help)", file=sys.stderr)
        raise SystemExit(2)
    command, rest = argv[0], argv[1:]
    if command == "groups":
        _groups(rest)
    elif command == "teacher":
        _teacher(rest)
    elif command == "split":
        _split(rest)
    elif command == "export":
        _export(rest)
    elif command == "holdout":
        _holdout(rest)
    else:
        _stage(command, rest)


COMMANDS = ("groups", "teacher", "split", "export", "holdout") + STAGES

if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
