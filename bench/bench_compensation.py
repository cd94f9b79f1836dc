"""Time of a pretrained variant's compensation adapters run as LoRA against merged into the weights.

The same loaded default variant (stage 1 merged; vertical, r2 and r4 compensation adapters) scores the same
real SciFact pairs (BM25 candidates) at several shapes, once with ``merge_compensation=False`` (every
linear layer adds its LoRA product) and once with ``True`` (the shape's adapter merged into the weights).
Rounds alternate between the two so machine load hits both alike; the table prints ms per pair (best of
the rounds) and the largest score difference between the two paths.

    python bench/bench_compensation.py [--variant NAME] [--pairs 64] [--rounds 2] [--max-length 256] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = ["L30", "L15", "L30:r2@4", "L30:r4@4"]


def scifact_pairs(count: int) -> list[tuple[str, str]]:
    from pyterrier_matroyshka.offline.bm25 import bm25
    from pyterrier_matroyshka.offline.collections import pt_dataset

    topics = pt_dataset("beir/scifact/test").get_topics().head(-(-count // 10))  # ten candidates a topic
    frame = bm25("beir/scifact/test", num_results=10)(topics)  # with the document text
    return list(zip(frame["query"], frame["text"]))[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", default=None, help="a pretrained variant (default: the default one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from pyterrier_matroyshka.scorer import MatroyshkaScorer

    pairs = scifact_pairs(args.pairs)
    scorers = {mode: MatroyshkaScorer.from_pretrained(args.variant, merge_compensation=mode == "merged",
                                                      max_length=args.max_length)
               for mode in ("lora", "merged")}
    best = {(mode, shape): float("inf") for mode in scorers for shape in SHAPES}
    scores = {}
    for _ in range(args.rounds):
        for shape in SHAPES:
            for mode, scorer in scorers.items():
                start = time.perf_counter()
                scores[mode, shape] = torch.tensor(scorer.compute_score(pairs, shape=shape))
                best[mode, shape] = min(best[mode, shape], time.perf_counter() - start)
    print(f"{scorers['lora'].name}, {len(pairs)} SciFact pairs, {args.max_length}-token passages, "
          f"{scorers['lora'].dtype}, {args.threads} thread(s)\n")
    print(f"{'shape':>10} {'LoRA ms/pair':>13} {'merged ms/pair':>15} {'speed-up':>9} {'max |diff|':>11}")
    for shape in SHAPES:
        lora, merged = (1000 * best[m, shape] / len(pairs) for m in ("lora", "merged"))
        diff = (scores["lora", shape] - scores["merged", shape]).abs().max().item()
        print(f"{shape:>10} {lora:>13.1f} {merged:>15.1f} {lora / merged:>8.2f}x {diff:>11.3f}")


if __name__ == "__main__":
    main()
