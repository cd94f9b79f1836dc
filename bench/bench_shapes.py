"""Throughput and peak memory per shape against a plain Hugging Face forward.

A SmolLM2-sized random Llama (30 layers, hidden 576, 9/3 heads) scores 256 real TREC DL19 pairs
(BM25 candidates) at several shapes; the baseline is ``AutoModelForCausalLM`` (SDPA, last-token
logits only) over the same length-sorted batches. Each measurement runs in its own process so the
peak resident memory belongs to it alone.

    python bench/bench_shapes.py [--pairs 256] [--batch-size 16] [--dtype auto|bf16|fp32]

``auto`` (default) is what the scorer picks: bf16 on CPUs with AMX/AVX-512 BF16, fp32 elsewhere (on an AVX2-only
AMD EPYC bf16 is several times slower than fp32).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = ["L30", "L20", "L15", "L10", "L30:r2@4", "L30:r4@4", "L20:r2@4", "L15:r2@4,8"]
CONFIG = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
              num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)


def dl19_pairs(count: int) -> list[tuple[str, str]]:
    from pyterrier_matroyshka.offline.paths import shared_data_dir

    data = shared_data_dir() / "msmarco-passage-dl19"
    docs = dict(line.rstrip("\n").split("\t", 1) for line in open(data / "docs.tsv"))
    queries = dict(line.rstrip("\n").split("\t", 1) for line in open(data / "queries.tsv"))
    run = [line.split() for line in open(data / "bm25_top100.run")]
    step = max(len(run) // count, 1)  # spread over queries and ranks
    return [(queries[r[0]], docs[r[2]]) for r in run[::step][:count]]


def build_model(dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built directly in ``dtype``: no fp32 copy inflates the memory baseline
    try:
        return LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="sdpa")).eval()
    finally:
        torch.set_default_dtype(default)


def setup(pairs_n: int, batch_size: int, dtype_name: str):
    """The random SmolLM2-sized model as a plain causal LM and as a Matroyshka scorer (shared weights)."""
    from pyterrier_matroyshka import MatroyshkaScorer
    from pyterrier_matroyshka.checkpoint import load_tokenizer
    from pyterrier_matroyshka.model import ExitHead, MatroyshkaModel
    from pyterrier_matroyshka.offline.paths import shared_golden_dir

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    tokenizer = load_tokenizer(str(shared_golden_dir() / "tiny-matroyshka"))
    lm = build_model(dtype)
    heads = torch.nn.ModuleList(ExitHead(576).to(dtype) for _ in range(4, 31))
    scorer = MatroyshkaScorer(model=MatroyshkaModel(lm.model, heads, 4), tokenizer=tokenizer, device="cpu",
                              batch_size=batch_size, max_length=512)
    pairs = dl19_pairs(pairs_n)
    return lm, scorer, pairs


def runner(shape: str, lm, scorer, pairs, batch_size: int):
    """A callable that scores all pairs at ``shape`` ('plain': the HF forward, last-token logits)."""
    if shape != "plain":
        return lambda: scorer.compute_score(pairs, shape=shape)
    encoded = scorer.encoder().encode(pairs)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    batches = [scorer.encoder().collate([encoded[i] for i in order[s: s + batch_size]])
               for s in range(0, len(order), batch_size)]
    return lambda: [lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], logits_to_keep=1)
                    for b in batches]


def peak_memory(shape: str, pairs_n: int, batch_size: int, dtype_name: str) -> dict:
    """Peak resident memory of one process that builds the model and scores once at ``shape``."""
    lm, scorer, pairs = setup(pairs_n, batch_size, dtype_name)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        runner(shape, lm, scorer, pairs, batch_size)()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(peak_mb=peak / 1024, extra_mb=(peak - base) / 1024)


def timings(shapes: list[str], pairs_n: int, batch_size: int, dtype_name: str, rounds: int) -> dict:
    """Best-of-``rounds`` seconds per shape, the shapes interleaved so machine load hits all alike."""
    lm, scorer, pairs = setup(pairs_n, batch_size, dtype_name)
    runs = {shape: runner(shape, lm, scorer, pairs, batch_size) for shape in shapes}
    best = {shape: float("inf") for shape in shapes}
    with torch.inference_mode():
        scorer.compute_score(pairs[:batch_size])  # warm-up
        for _ in range(rounds):
            for shape, run in runs.items():
                start = time.perf_counter()
                run()
                best[shape] = min(best[shape], time.perf_counter() - start)
    encoded = scorer.encoder().encode(pairs)
    tokens = sum(len(e.input_ids) for e in encoded)
    mean = lambda attr: round(sum(getattr(e, attr) for e in encoded) / len(encoded))
    lengths = (mean("query_len"), mean("passage_len"), mean("prompt_len"))
    return {shape: dict(shape=shape, seconds=s, pairs_per_s=pairs_n / s, tokens_per_s=tokens / s,
                        gflops_per_pair=scorer.flops(shape if shape != "plain" else "L30", *lengths) / 1e9)
            for shape, s in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", nargs="*", default=SHAPES)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dtype == "auto":
        from pyterrier_matroyshka.scorer import fast_dtype

        args.dtype = "bf16" if fast_dtype("cpu") == torch.bfloat16 else "fp32"
    if args.memory_of:
        print(json.dumps(peak_memory(args.memory_of, args.pairs, args.batch_size, args.dtype)))
        return
    shapes = ["plain"] + args.shapes
    rows = timings(shapes, args.pairs, args.batch_size, args.dtype, args.rounds)
    for shape in shapes:
        out = subprocess.run([sys.executable, __file__, "--memory-of", shape, "--pairs", str(args.pairs),
                              "--batch-size", str(args.batch_size), "--dtype", args.dtype],
                             capture_output=True, text=True, check=True)
        rows[shape].update(json.loads(out.stdout.strip().splitlines()[-1]))
    plain, full = rows["plain"], rows[args.shapes[0]]
    print(f"\n{args.pairs} DL19 pairs, batch {args.batch_size}, {args.dtype}, {torch.get_num_threads()} threads, "
          f"SmolLM2-sized random Llama (30 x 576), best of {args.rounds} interleaved rounds\n")
    print(f"{'shape':<12} {'pairs/s':>8} {'tokens/s':>9} {'peak MB':>8} {'+scoring':>8} {'GFLOP/pair':>10} "
          f"{'speedup':>8} {'predicted':>9} {'realised':>8}")
    for shape in shapes:
        row = rows[shape]
        speed = full["seconds"] / row["seconds"]
        predicted = full["gflops_per_pair"] / row["gflops_per_pair"]
        print(f"{shape:<12} {row['pairs_per_s']:>8.1f} {row['tokens_per_s']:>9.0f} {row['peak_mb']:>8.0f} "
              f"{row['extra_mb']:>8.0f} "
              f"{row['gflops_per_pair']:>10.2f} {speed:>8.2f} {predicted:>9.2f} {speed / predicted:>8.0%}")
    print(f"\nfull shape ({args.shapes[0]}) vs plain HF forward: {plain['seconds'] / full['seconds']:.2f}x "
          f"the plain throughput")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
