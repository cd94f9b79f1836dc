"""7B-scale speed and memory of the Matroyshka forward against a plain transformers forward.

A randomly initialised Mistral-7B-config model in the released layout (32 blocks, a head at every exit
4..32) is built from its config directly on the device in the run's dtype (bf16 on a GPU): nothing is
downloaded and no fp32 copy ever sits on the host. The script then, in this order:

1. checks itself: the layer-by-layer path at the full shape against the backbone's own forward with the
   same last-token head, a multi-exit shape against its single exits, a padded batch against the same
   pairs one by one (plain and compressed), and finite scores at every shape;
2. times ``compute_score`` at every shape and batch size on synthetic pairs that fill ``max_length``
   (pairs/s, FLOP-predicted vs measured speedup over the full shape, peak GPU memory per shape against
   the weights), beside the plain forward (SDPA, last-token head) over the same length-sorted batches;
3. the same on real-length TREC DL19 pairs at batch 32, where padding waste shows;
4. times the compression step (scoring-token attention + pooling) against one block at batch 32;
5. records which SDPA kernel every attention call runs (flash / memory-efficient / cuDNN / math), with
   the mask the layer loop passes and the reason PyTorch gives for refusing each other kernel.

Results go to ``bench_7b.json`` and ``bench_7b.md`` in ``--out`` (rewritten after every measurement, so a
run cut short keeps what it measured). On a GPU (see ``scripts/gpu/bench_7b.sh``)::

    python bench/bench_7b.py --pack .bench7b               # here: tokenizer + DL19 pairs to carry along
    python bench/bench_7b.py --assets .bench7b --out DIR   # there: the measurement

By its FLOP count the 7B measurement should take 3 to 6 minutes on an H100 (an estimate: it has not run on
a GPU yet); ``--time-budget`` (default 480 s) stops the timings in any case. ``--config tiny`` runs the same
code with a 32-block Mistral of hidden size 64, on a CPU in about a minute; its numbers check the plumbing
and are no performance figure.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from bench_7b_report import PLAIN, add_ratios, markdown, targets
from device_timing import device_name, peak_memory, reset_peak_memory, synchronize, timed

SHAPES = ["L32", "L24", "L16", "L8", "L16,24,32", "L32:r2@8", "L32:r4@8", "L24:r2@8,16"]
FULL = "L32"
DL19_SYSTEMS = [PLAIN, "L32", "L16", "L32:r2@8"]
TARGET_BATCH = 32

# The released checkpoints' config.json (Mistral-7B-v0.1 backbone, heads at exits 4..32).
MISTRAL_7B = dict(model_type="cost_wise_mistral", layer_wise=True, start_layer=4, layer_sep=1, vocab_size=32000,
                  hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-5,
                  rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False, bos_token_id=1,
                  eos_token_id=2, initializer_range=0.02)
# Same depth, exits, vocabulary and grouped-query ratio (4 query heads per key/value head), tiny widths.
TINY = {**MISTRAL_7B, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 8,
        "num_key_value_heads": 2}
CONFIGS = {"mistral-7b": MISTRAL_7B, "tiny": TINY}
# Per config: max_length, batch sizes, warm-up calls, timed calls, batches per call, DL19 pairs, time budget (s).
DEFAULTS = {"mistral-7b": dict(max_length=512, batch_sizes=[16, 32, 64], warmup=1, iters=3, batches=2,
                               dl19_pairs=256, time_budget=480.0),
            "tiny": dict(max_length=64, batch_sizes=[16, 32, 64], warmup=1, iters=1, batches=1,
                         dl19_pairs=64, time_budget=None)}

WORDS = ("the of and to in is was for that with as on by are from at an be this which or have it not were has "
         "but had their one all can also more after been other first new two may into time years most only over "
         "city such where used many some these its between state would during school world under known three "
         "water system river year family part later well national university until government high early "
         "because including area both while second since team film series group season called people number "
         "north south east west protein cell energy market court history music county village population "
         "species disease treatment company product service temperature pressure answer passage query").split()


# ---------------------------------------------------------------------------------------------- setup

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":  # bf16 is the GPU's fast path; the CPU run is a correctness smoke test in fp32
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def build_model(released: dict, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A random :class:`MatroyshkaModel` from a released-layout config, allocated on ``device`` in ``dtype``."""
    from torch import nn
    from transformers import AutoModel

    from pyterrier_matroyshka.checkpoint import _backbone_config
    from pyterrier_matroyshka.model import ExitHead, MatroyshkaModel

    config = _backbone_config(released)  # cost_wise_mistral -> mistral, as loading a released checkpoint does
    start, sep = released["start_layer"], released["layer_sep"]
    torch.manual_seed(seed)
    with torch.device(device):  # parameters are born on the device: no host copy, no fp32 detour
        backbone = AutoModel.from_config(config, dtype=dtype)
        heads = nn.ModuleList(ExitHead(config.hidden_size) for _ in range(start, config.num_hidden_layers + 1, sep))
    for head in heads:
        nn.init.normal_(head.linear_head.weight, std=released["initializer_range"])
    return MatroyshkaModel(backbone, heads.to(dtype), start, sep).eval()


def weights_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def synthetic_pairs(count: int, seed: int = 0, passage_words: Sequence[int] = (600,)) -> list[tuple[str, str]]:
    """Fixed pseudo-English pairs; 600-word passages overflow a 512-token budget, so every pair fills it."""
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        query = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) + "?"
        words = passage_words[i % len(passage_words)]
        passage = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
        pairs.append((query, passage))
    return pairs


def dl19_pairs(count: int, assets: Optional[Path]) -> Optional[list[tuple[str, str]]]:
    """Real DL19 BM25 pairs: from ``assets/dl19_pairs.jsonl`` if packed, else from ../shared/data, else None."""
    packed = assets / "dl19_pairs.jsonl" if assets else None
    if packed and packed.is_file():
        return [tuple(json.loads(line)) for line in packed.read_text().splitlines()][:count]
    from pyterrier_matroyshka.offline.paths import shared_data_dir

    if shared_data_dir() is None or not (shared_data_dir() / "msmarco-passage-dl19").is_dir():
        return None
    from bench_shapes import dl19_pairs as spread_dl19_pairs

    return spread_dl19_pairs(count)


def tokenizer_source(assets: Optional[Path]) -> str:
    if assets:
        if not (assets / "tokenizer").is_dir():
            raise SystemExit(f"{assets}/tokenizer is missing: run `python bench/bench_7b.py --pack {assets}` "
                             "where ../shared is, and carry that folder along")
        return str(assets / "tokenizer")
    from pyterrier_matroyshka.offline.paths import shared_golden_dir

    golden = shared_golden_dir()
    if golden is None:
        raise SystemExit("no tokenizer: ../shared/golden is not beside the repository; give --assets DIR made by "
                         "`python bench/bench_7b.py --pack DIR` on a machine that has it")
    return str(golden / "tiny-matroyshka")  # the Mistral v1 SentencePiece vocabulary of the 7B models


TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def pack(folder: Path, dl19_count: int = 256) -> None:
    """Everything the GPU run reads from ../shared, in one folder to carry: tokenizer and DL19 pairs. The
    tokenizer files are copied as they are, so the GPU machine loads them as the checkpoints are loaded."""
    source = Path(tokenizer_source(None))
    (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / "tokenizer" / name)
    pairs = dl19_pairs(dl19_count, None)
    if pairs is None:
        raise SystemExit("../shared/data/msmarco-passage-dl19 is missing: cannot pack the DL19 pairs")
    (folder / "dl19_pairs.jsonl").write_text("".join(json.dumps(list(p)) + "\n" for p in pairs))
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"packed tokenizer and {len(pairs)} DL19 pairs into {folder} ({size / 2**20:.1f} MiB)")


# ------------------------------------------------------------------------------------------ the paths

def plain_scorer(model, encoder, device: torch.device) -> Callable:
    """The backbone's own forward (SDPA, its own masks, no cache) over the same length-sorted batches as
    ``compute_score``, scored by the full-depth head at each row's last real token: [N] fp32."""
    head = model.lm_head[model.head_index(model.num_layers)].linear_head

    @torch.inference_mode()
    def score(pairs, batch_size: int) -> torch.Tensor:
        encoded = encoder.encode(pairs)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
        scores = torch.empty(len(pairs))
        for start in range(0, len(order), batch_size):
            batch = order[start: start + batch_size]
            inputs = encoder.collate([encoded[i] for i in batch], device)
            hidden = model.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                 use_cache=False).last_hidden_state
            last = inputs["attention_mask"].sum(dim=1) - 1
            state = hidden[torch.arange(len(batch), device=device), last]
            scores[batch] = head(state).float().squeeze(-1).cpu()
        return scores

    return score


def system_runner(system: str, scorer, plain: Callable) -> Callable:
    if system == PLAIN:
        return lambda pairs, batch_size: plain(pairs, batch_size)
    return lambda pairs, batch_size: scorer.compute_score(pairs, shape=system, batch_size=batch_size)


def padding_waste(encoder, pairs, batch_size: int) -> dict:
    """Real and padded token counts of the length-sorted batches ``compute_score`` builds."""
    lengths = sorted((len(e.input_ids) for e in encoder.encode(pairs)), reverse=True)
    real = padded = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start: start + batch_size]
        width = math.ceil(batch[0] / encoder.pad_to_multiple_of) * encoder.pad_to_multiple_of
        real, padded = real + sum(batch), padded + width * len(batch)
    return dict(real_tokens=real, padded_tokens=padded, mean_real_tokens=real / len(lengths),
                waste=1 - real / padded)


# ---------------------------------------------------------------------------------------- measurements

def tolerance(dtype: torch.dtype, scale: float) -> float:
    """fp32 paths agree to rounding; bf16/fp16 kernels differ in summation order through 32 blocks."""
    return (1e-4 if dtype == torch.float32 else 0.05) * max(1.0, scale)


def self_check(scorer, plain: Callable, dtype: torch.dtype, batch_size: int) -> dict:
    """Correctness before timing, on pairs of mixed lengths (so batches carry padding): the layer loop at the
    full shape against the plain forward, a multi-exit shape against its single exits, a padded batch against
    one pair at a time (plain and compressed), and finite scores at every shape."""
    pairs = synthetic_pairs(batch_size, seed=1, passage_words=(600, 25, 140, 3, 320, 60))

    def score(shape: str, some=pairs, size: int = batch_size) -> torch.Tensor:
        return torch.tensor(scorer.compute_score(some, shape=shape, batch_size=size))

    def gap(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max())

    reference = plain(pairs, batch_size)
    tol = tolerance(dtype, float(reference.abs().max()))
    singles = torch.stack([score(f"L{depth}") for depth in (16, 24, 32)])
    diffs = dict(layer_loop_vs_plain=gap(score(FULL), reference),
                 multi_exit_vs_single_exits=gap(score("L16,24,32"), singles),
                 batched_vs_alone=max(gap(score(s, pairs[:4], 4), score(s, pairs[:4], 1)) for s in (FULL, "L32:r2@8")))
    finite = all(bool(torch.isfinite(score(s)).all()) for s in SHAPES)
    passed = finite and all(d <= tol for d in diffs.values())  # NaN compares False: a NaN gap fails too
    return dict(pairs=len(pairs), tolerance=tol, max_abs_score=float(reference.abs().max()), **diffs,
                finite_at_every_shape=finite, passed=passed)


def sdpa_kernels(scorer, plain: Callable, pairs, batch_size: int) -> list[dict]:
    """The SDPA calls of one batch through each path, with the kernel each runs and why."""
    from sdpa_probe import kernel_report, recorded_sdpa_calls

    rows = []
    for system in (FULL, "L32:r2@8", PLAIN):
        with recorded_sdpa_calls() as calls:
            system_runner(system, scorer, plain)(pairs[:batch_size], batch_size)
        with torch.inference_mode():
            rows += [dict(path=system, **row) for row in kernel_report(calls)]
        del calls
    return rows


def compression_cost(model, encoder, pairs, batch_size: int, device, warmup: int, iters: int) -> dict:
    """Milliseconds of the two compression steps against one decoder block, on one batch at its full length:
    the scoring token's attention in block c-1 and the pooling before block c (ratio 2)."""
    from pyterrier_matroyshka.compress import compress_passages, scoring_token_attention

    inputs = encoder.collate(encoder.encode(pairs[:batch_size]), device)
    mask = inputs["attention_mask"]
    with torch.inference_mode():
        hidden = model.model.embed_tokens(inputs["input_ids"])
        positions = torch.arange(hidden.shape[1], device=device).unsqueeze(0)
        rotary = model.model.rotary_emb(hidden, positions)
        layer = model.model.layers[7]
        last = mask.sum(dim=1) - 1
        weights = scoring_token_attention(layer, hidden, mask, last, rotary)
        steps = {
            "block": lambda: layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rotary),
            "scoring_token_attention": lambda: scoring_token_attention(layer, hidden, mask, last, rotary),
            "compress_passages": lambda: compress_passages(hidden, mask, inputs["query_lengths"],
                                                           inputs["prompt_lengths"], weights, 2),
        }
        ms = {name: 1000 * statistics.median(timed(step, device, warmup, max(iters, 3)))
              for name, step in steps.items()}
    return dict(batch_size=batch_size, tokens=int(hidden.shape[1]), ms=ms,
                share_of_block=(ms["scoring_token_attention"] + ms["compress_passages"]) / ms["block"])


def measure(system: str, run: Callable, pairs, batch_size: int, device, warmup: int, iters: int) -> dict:
    """One row: the median seconds of scoring ``pairs`` and the peak GPU memory of those calls."""
    reset_peak_memory(device)
    try:
        seconds = timed(lambda: run(pairs, batch_size), device, warmup, iters)
    except torch.OutOfMemoryError:
        reset_peak_memory(device)
        return dict(system=system, batch_size=batch_size, pairs=len(pairs), status="out of memory")
    median = statistics.median(seconds)
    return dict(system=system, batch_size=batch_size, pairs=len(pairs), status="ok", seconds=median,
                seconds_all=seconds, pairs_per_s=len(pairs) / median, peak_bytes=peak_memory(device))


# ------------------------------------------------------------------------------------------------ main

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="mistral-7b")
    parser.add_argument("--device", default="auto", help="auto (cuda if there is one), cuda, cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="auto: bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--iters", type=int)
    parser.add_argument("--batches", type=int, help="batches per timed compute_score call")
    parser.add_argument("--dl19-pairs", type=int, help="real-length pairs for the DL19 section (0: skip it)")
    parser.add_argument("--time-budget", type=float, help="seconds after which the remaining timings are skipped")
    parser.add_argument("--assets", type=Path, help="folder made by --pack (tokenizer, DL19 pairs)")
    parser.add_argument("--out", type=Path, help="folder for bench_7b.json and bench_7b.md")
    parser.add_argument("--pack", type=Path, metavar="DIR", help="only write the assets folder DIR and exit")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.config].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {SHAPES}")
    return args


class Run:
    """What every stage needs: settings, the model, its two scoring paths, the result so far, the deadline."""

    def __init__(self, args: argparse.Namespace, device: torch.device, model, scorer, plain: Callable, result: dict,
                 deadline: float):
        self.args, self.device, self.model, self.scorer, self.plain = args, device, model, scorer, plain
        self.result, self.deadline = result, deadline

    def save(self) -> None:
        if self.args.out:
            self.args.out.mkdir(parents=True, exist_ok=True)
            (self.args.out / "bench_7b.json").write_text(json.dumps(self.result, indent=1))
            (self.args.out / "bench_7b.md").write_text(markdown(self.result))

    def rows(self, systems: Sequence[str], pairs, batch_size: int) -> list[dict]:
        rows = []
        for system in systems:
            if time.monotonic() > self.deadline:
                rows.append(dict(system=system, batch_size=batch_size, status="skipped (time budget)"))
                continue
            rows.append(measure(system, system_runner(system, self.scorer, self.plain), pairs, batch_size,
                                self.device, self.args.warmup, self.args.iters))
            row = rows[-1]
            peak = "n/a" if row.get("peak_bytes") is None else f"{row['peak_bytes'] / 2**30:.2f} GiB"
            print(f"[bench_7b] batch {batch_size} {system}: {row['status']}, "
                  f"{row.get('pairs_per_s', 0):.1f} pairs/s, peak {peak}", flush=True)
        return rows

    def flops(self, pairs, systems: Sequence[str]) -> dict:
        lengths = self.scorer.mean_lengths(pairs)
        return {s: self.scorer.flops(FULL if s == PLAIN else s, *lengths) for s in systems}


def prepare(args: argparse.Namespace, begin: float) -> Run:
    """Build the model on the device, both scoring paths over it, and the result's header."""
    import transformers

    from pyterrier_matroyshka import MatroyshkaScorer
    from pyterrier_matroyshka.tokenizer import load_tokenizer

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    print(f"[bench_7b] {args.config} on {device_name(device)}, {str(dtype).removeprefix('torch.')}", flush=True)
    tokenizer = load_tokenizer(tokenizer_source(args.assets))
    model = build_model(CONFIGS[args.config], dtype, device)
    synchronize(device)
    scorer = MatroyshkaScorer(model=model, tokenizer=tokenizer, device=device, max_length=args.max_length)
    result = dict(config=args.config, device=dict(type=device.type, name=device_name(device), cuda=torch.version.cuda),
                  versions=dict(torch=torch.__version__, transformers=transformers.__version__),
                  dtype=str(dtype).removeprefix("torch."), max_length=args.max_length,
                  parameters=sum(p.numel() for p in model.parameters()), weights_bytes=weights_bytes(model),
                  warmup=args.warmup, iters=args.iters, batches=args.batches, shapes=list(args.shapes), full=FULL,
                  target_batch=TARGET_BATCH, build_s=time.monotonic() - begin, rows=[])
    print(f"[bench_7b] built {result['parameters'] / 1e9:.3f} B parameters in {result['build_s']:.0f} s", flush=True)
    deadline = begin + args.time_budget if args.time_budget else math.inf
    return Run(args, device, model, scorer, plain_scorer(model, scorer.encoder(), device), result, deadline)


def time_grid(run: Run, pairs) -> None:
    """Every shape and the plain forward at every batch size, the targets' batch size first."""
    args, result = run.args, run.result
    flops = run.flops(pairs, [PLAIN] + list(args.shapes))
    systems = [PLAIN, FULL] + [s for s in args.shapes if s != FULL]
    for batch_size in sorted(args.batch_sizes, key=lambda b: (b != TARGET_BATCH, b)):
        result["rows"] += run.rows(systems, pairs[: batch_size * args.batches], batch_size)
        add_ratios(result["rows"], flops, FULL, result["weights_bytes"])
        run.save()


def time_dl19(run: Run) -> None:
    """The plain forward and a few shapes on real-length DL19 pairs, where padding shows."""
    args = run.args
    real = dl19_pairs(args.dl19_pairs, args.assets) if args.dl19_pairs else None
    if not real:
        return
    batch_size = min(TARGET_BATCH, max(args.batch_sizes))
    rows = run.rows(DL19_SYSTEMS, real, batch_size)
    add_ratios(rows, run.flops(real, DL19_SYSTEMS), FULL, run.result["weights_bytes"])
    run.result["dl19"] = dict(pairs=len(real), batch_size=batch_size, rows=rows,
                              padding=padding_waste(run.scorer.encoder(), real, batch_size))
    run.save()


def main(argv: Optional[Sequence[str]] = None) -> dict:
    begin = time.monotonic()
    args = parse_args(argv)
    if args.pack:
        pack(args.pack)
        return {}
    run = prepare(args, begin)
    result, small = run.result, min(args.batch_sizes)
    result["check"] = self_check(run.scorer, run.plain, run.scorer.dtype, small)
    print(f"[bench_7b] self-check {'passed' if result['check']['passed'] else 'FAILED'}: {result['check']}", flush=True)
    pairs = synthetic_pairs(max(args.batch_sizes) * args.batches)
    result["padding"] = {str(b): padding_waste(run.scorer.encoder(), pairs[: b * args.batches], b)
                         for b in args.batch_sizes}
    run.save()
    time_grid(run, pairs)
    time_dl19(run)
    result["targets"] = targets(result)
    run.save()
    # Last, so that the timings are on disk even if replaying attention on a refused kernel upsets the device.
    result["compression"] = compression_cost(run.model, run.scorer.encoder(), pairs,
                                             min(TARGET_BATCH, max(args.batch_sizes)), run.device, args.warmup,
                                             args.iters)
    result["sdpa"] = sdpa_kernels(run.scorer, run.plain, pairs, small)
    result["wall_s"] = time.monotonic() - begin
    run.save()
    print(markdown(result), flush=True)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    outcome = main()
    sys.exit(0 if not outcome or outcome["check"]["passed"] else 2)
