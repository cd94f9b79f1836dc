"""Command line: ``python -m train groups|teacher|stage1|stage2|stage3 ...``.

    python -m train groups --dataset beir/scifact/train --output runs/scifact.groups.jsonl
    python -m train teacher --input runs/scifact.groups.jsonl --output runs/scifact.teacher.jsonl --scorer minilm
    python -m train holdout --data runs/holdout.jsonl --adapters runs/stage1 --shapes L30 L10
    python -m train split --input runs/scifact.teacher.jsonl --train runs/train.jsonl --holdout runs/holdout.jsonl
    python -m train stage1 --config train/configs/stage1.json --train_data runs/scifact.teacher.jsonl
    torchrun --nproc_per_node 2 -m train stage1 --config train/configs/stage1.json ...   (DDP)

Stage commands take ``--config FILE`` and any setting of :class:`train.config.StageConfig` as ``--key value``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .config import STAGES


def _groups(argv: Sequence[str]) -> None:
    from .groups import mine_groups, write_groups

    p = argparse.ArgumentParser(prog="python -m train groups", description="hard-negative groups from ir_datasets")
    p.add_argument("--dataset", default=None,
                   help="ir_datasets id, e.g. beir/scifact/train or cranfield (default with --sources: the training "
                        "mix, local/training-mix)")
    p.add_argument("--sources", default=None,
                   help="comma-separated training-mix sources (msmarco,nq,squad,ares,medquad,autoq) and/or scifact "
                        "(SciFact train, mined from beir/scifact/train); each group records its source as 'src'")
    p.add_argument("--per_source", type=int, default=None, help="at most this many queries of each source")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--num_negatives", type=int, default=15)
    p.add_argument("--window", default="10,100", help="rank window [start,stop) of the negatives, from 0")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--min_relevance", type=int, default=1)
    p.add_argument("--max_queries", type=int, default=None)
    p.add_argument("--other_positives", type=int, default=0,
                   help="more negatives per group: documents judged relevant to other queries (against a "
                        "learned document prior)")
    a = p.parse_args(argv)
    start, stop = (int(x) for x in a.window.split(","))
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
        raise SystemExit(f"--sources: unknown source(s) {unknown or names}; choose from {sorted(SOURCES)} and scifact")
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
    from .teacher import add_teacher_scores, make_scorer

    p = argparse.ArgumentParser(prog="python -m train teacher", description="add pos_scores/neg_scores (raw logits)")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--scorer", default="minilm", choices=["minilm", "matroyshka"])
    p.add_argument("--model", default=None, help="matroyshka teacher: base or released folder / hub id")
    p.add_argument("--adapters", default="", help="matroyshka teacher: comma-separated adapter folders")
    p.add_argument("--shape", default=None, help="matroyshka teacher: one-exit shape, default the deepest exit")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--dtype", default="auto")
    a = p.parse_args(argv)
    scorer = make_scorer(a.scorer, a.model, [x for x in a.adapters.split(",") if x], a.shape, a.batch_size, a.dtype)
    add_teacher_scores(a.input, a.output, scorer, verbose=True)


def _split(argv: Sequence[str]) -> None:
    from .groups import split_holdout

    p = argparse.ArgumentParser(prog="python -m train split", description="hold out every n-th group")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--holdout", required=True, type=Path)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--by_positives", action="store_true",
                   help="hold out whole clusters of queries that share a positive passage (no held-out positive "
                        "is a training positive)")
    a = p.parse_args(argv)
    print("train %d, holdout %d groups" % split_holdout(a.input, a.train, a.holdout, a.every, a.by_positives))


def _export(argv: Sequence[str]) -> None:
    from .export import export_adapter

    p = argparse.ArgumentParser(prog="python -m train export", description="truncate an adapter's rank, fp16")
    p.add_argument("--adapter", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--rank", type=int, required=True)
    a = p.parse_args(argv)
    print(export_adapter(a.adapter, a.output, a.rank))


def _holdout(argv: Sequence[str]) -> None:
    import json

    from .holdout import holdout_report

    recipe = json.loads((Path(__file__).parent / "configs" / "stage1.json").read_text())

    p = argparse.ArgumentParser(prog="python -m train holdout", description="RR@10/nDCG@10 on held-out groups")
    p.add_argument("--data", required=True, nargs="+")
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--adapters", nargs="*", default=[], help="adapter folders merged in order")
    p.add_argument("--shapes", nargs="+", default=["L30"])
    p.add_argument("--max_length", type=int, default=recipe["passage_max_len"], help="passage tokens (the recipe's)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--dtype", default="auto")
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

    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        print(stage_help(stage))
        return
    config_file: Optional[str] = None
    if "--config" in argv:
        i = argv.index("--config")
        config_file = argv[i + 1]
        del argv[i:i + 2]
    config = load_config(stage, config_file, argv)
    from .stages import run_stage  # torch and transformers: only once the settings are known to be good

    print(run_stage(config))


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    for noisy in ("transformers", "httpx", "ir_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    commands = ("groups", "teacher", "split", "export", "holdout") + STAGES
    if not argv or argv[0] not in commands:
        print(__doc__)
        print(f"commands: {', '.join(commands)}")
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


if __name__ == "__main__":
    main()
