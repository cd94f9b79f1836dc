"""Evaluate the trained demo model across shapes, with its ablations, on real collections.

For each dataset, BM25 top-k candidates of the first N queries are re-ranked by: the MiniLM teacher,
the zero-shot SmolLM2 base, the base fine-tuned at its last exit only ("naive", then cut at earlier
exits), stage 1 only, and stage 1 + compensation (the shipped model). Every exit of a model comes
from one multi-exit pass per compression ratio, so a grid costs a few passes. Results go to one JSON
file per (dataset, system) in --out (finished ones are skipped), and --report prints the tables.

    python bench/evaluate_demo.py --systems teacher zero_shot naive      # one process
    python bench/evaluate_demo.py --systems stage1 matroyshka            # another, in parallel
    python bench/evaluate_demo.py --report
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyterrier_matroyshka import MatroyshkaReRanker, MatroyshkaScorer, Shape  # noqa: E402
from pyterrier_matroyshka.experiment import evaluate, first_stage, mean_lengths  # noqa: E402

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
RUNS = ROOT / "runs" / "smollm2"
SHIPPED = ROOT / "models" / "matroyshka-smollm2-scifact"
EXITS = [6, 10, 15, 20, 30]           # about 1/5, 1/3, 1/2, 2/3 and all of 30 layers
RATIOS = [1, 2, 4]
COMPRESS_AT = 4                      # an early compression layer (the first exit depth)
DATASETS = {"beir/scifact/test": 80, "local/msmarco-passage-dl19": 43, "vaswani": 40}


def systems() -> dict[str, dict]:
    """name -> how to build the scorer (adapters merged / compensation) and which ratios to run."""
    shipped = {k: str(SHIPPED / k) for k in ("vertical", "r2", "r4")}
    return {
        "zero_shot": dict(adapters=None, ratios=[1]),
        "naive": dict(adapters=[str(RUNS / "naive_last_exit")], ratios=[1]),
        "stage1": dict(adapters=[str(SHIPPED / "stage1")], ratios=RATIOS),
        "matroyshka": dict(adapters=[str(SHIPPED / "stage1")], compensation=shipped, ratios=RATIOS),
    }


def candidates(dataset: str, queries: int, top_k: int) -> pd.DataFrame:
    frame = first_stage(dataset, top_k)
    frame = frame[frame["rank"] < top_k]
    keep = list(dict.fromkeys(frame["qid"]))[:queries]
    return frame[frame["qid"].isin(keep)].reset_index(drop=True)


def run_system(name: str, frame: pd.DataFrame, qrels: pd.DataFrame, max_length: int) -> dict:
    if name == "teacher":
        from pyterrier_matroyshka.teacher import MiniLMCrossEncoder

        start = time.perf_counter()
        out = MiniLMCrossEncoder()(frame)
        return {"teacher": {**evaluate(out, qrels, queries=frame.qid.unique()), "seconds": time.perf_counter() - start}}
    spec = systems()[name]
    scorer = MatroyshkaScorer(BASE, adapters=spec["adapters"], compensation=spec.get("compensation"),
                              max_length=max_length, batch_size=16)
    results = {}
    for ratio in spec["ratios"]:
        shape = Shape(EXITS, [COMPRESS_AT], ratio) if ratio > 1 else Shape(EXITS)
        start = time.perf_counter()
        out = MatroyshkaReRanker(scorer=scorer, shape=shape)(frame)
        seconds = time.perf_counter() - start
        lengths = mean_lengths(MatroyshkaReRanker(scorer=scorer), frame)
        for depth in EXITS:
            single = Shape(depth, [COMPRESS_AT], ratio) if ratio > 1 and COMPRESS_AT < depth else Shape(depth)
            run = out.assign(score=out[f"score_L{depth}"])
            results[str(single)] = {**evaluate(run, qrels, queries=frame.qid.unique()), "gflops": scorer.flops(single, *lengths) / 1e9,
                                    "pass_seconds": seconds, "pass_shape": str(shape)}
    return results


def report(out: Path) -> str:
    lines = []
    for dataset in DATASETS:
        tag = dataset.replace("/", "_")
        files = {p.stem.split("__")[1]: json.loads(p.read_text()) for p in out.glob(f"{tag}__*.json")}
        if not files:
            continue
        meta = files.pop("bm25")
        lines += [f"\n### {dataset}: {meta['queries']} queries, BM25 top-{meta['top_k']} re-ranked\n",
                  "| system | shape | nDCG@10 | RR@10 | GFLOP/pair |", "|---|---|---|---|---|",
                  f"| BM25 | - | {meta['nDCG@10']:.4f} | {meta['RR@10']:.4f} | - |"]
        if "teacher" in files:
            t = files.pop("teacher")["teacher"]
            lines.append(f"| MiniLM-L12 teacher | - | {t['nDCG@10']:.4f} | {t['RR@10']:.4f} | - |")
        for name in ("zero_shot", "naive", "stage1", "matroyshka"):
            for shape, r in sorted(files.get(name, {}).items(), key=lambda kv: (-kv[1]["gflops"])):
                lines.append(f"| {name} | {shape} | {r['nDCG@10']:.4f} | {r['RR@10']:.4f} | {r['gflops']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="*", default=["teacher", "zero_shot", "naive", "stage1", "matroyshka"])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=128, help="passage token budget (trained at 128)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        print(report(args.out))
        return
    torch.set_num_threads(args.threads)
    from pyterrier_matroyshka.collections import pt_dataset

    for dataset in args.datasets:
        tag = dataset.replace("/", "_")
        frame = candidates(dataset, DATASETS[dataset], args.top_k)
        qrels = pt_dataset(dataset).get_qrels()
        bm25_file = args.out / f"{tag}__bm25.json"
        if not bm25_file.exists():
            bm25_file.write_text(json.dumps({**evaluate(frame, qrels), "queries": int(frame.qid.nunique()),
                                             "top_k": args.top_k, "pairs": len(frame)}))
        for name in args.systems:
            target = args.out / f"{tag}__{name}.json"
            if target.exists():
                continue
            print(f"{time.strftime('%T')} {dataset} {name}", flush=True)
            target.write_text(json.dumps(run_system(name, frame, qrels, args.max_length), indent=1))


if __name__ == "__main__":
    main()
