"""Evaluate a trained model across shapes, with its ablations, on real collections.

Three steps, so the expensive one runs wherever there is compute (it needs only torch, transformers, peft
and pandas, not PyTerrier):

    python bench/evaluate_demo.py candidates              # BM25 top-k with texts -> runs/eval/*.parquet
    python bench/evaluate_demo.py score --systems zero_shot naive stage1 matroyshka teacher
    python bench/evaluate_demo.py merge --merge-from A B  # (optional) join scores of query shards / ratios
    python bench/evaluate_demo.py evaluate                # scores + qrels -> bench/results/*.json
    python bench/evaluate_demo.py report                  # the tables (README, model card)
    python bench/evaluate_demo.py significance            # paired t-tests against BM25, alone and fused
    python bench/evaluate_demo.py fusion                  # the BM25 fusion weight grid (run on the holdout)

Systems: the MiniLM teacher, the zero-shot SmolLM2 base, the base fine-tuned at its last exit only
("naive", cut at earlier exits), stage 1 only, and stage 1 + compensation (the shipped model). Every exit
of a model comes from one multi-exit pass per compression ratio. ``score`` also times each single shape
on the same fixed sample of pairs, so the time column compares shapes on equal work.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyterrier_matroyshka.pretrained import DEFAULT_VARIANT, variant, variant_dir  # noqa: E402
from pyterrier_matroyshka.scorer import MatroyshkaScorer  # noqa: E402
from pyterrier_matroyshka.shape import Shape  # noqa: E402

BASE = variant().base
DEFAULT_MAX_LENGTH = variant().max_length  #: the default variant's passage budget, as trained
EXITS = [6, 10, 15, 20, 30]           # about 1/5, 1/3, 1/2, 2/3 and all of 30 layers
RATIOS = [1, 2, 4]
COMPRESS_AT = 4                      # an early compression layer (below the first exit)
DATASETS = ["beir/scifact/test", "local/msmarco-passage-dl19", "vaswani"]
SYSTEMS = ("teacher", "zero_shot", "naive", "stage1", "matroyshka")
FUSED = " + BM25"                    # the suffix of a shape interpolated with BM25 (FirstStageFusion)


def tag(dataset: str) -> str:
    return dataset.replace("/", "_")


def single_shape(depth: int, ratio: int, compress_at: int = COMPRESS_AT) -> Shape:
    return Shape(depth, [compress_at], ratio)  # at ratio 1, Shape drops the compression layer


def scored_exits(ratio: int, compress_at: int = COMPRESS_AT, exits: list[int] = EXITS) -> list[int]:
    """The exits of one pass at ``ratio``: a compressed pass scores only the exits after its compression
    layer (an exit before it would be the uncompressed shape, already scored at ratio 1)."""
    return list(exits) if ratio == 1 else [d for d in exits if d > compress_at]


# -- step 1: candidates ---------------------------------------------------------------------------------
def write_candidates(dataset: str, top_k: int, queries: int | None, folder: Path,
                     only_qids: set[str] | None = None) -> None:
    """BM25 top-``top_k`` of the first ``queries`` topics (all by default; only ``only_qids`` if given),
    texts kept once per document."""
    from pyterrier_matroyshka.offline.collections import pt_dataset
    from pyterrier_matroyshka.shape_comparison import first_stage

    frame = first_stage(dataset, top_k)
    frame = frame[frame["rank"] < top_k]
    if only_qids is not None:
        frame = frame[frame["qid"].isin(only_qids)]
    keep = list(dict.fromkeys(frame["qid"]))[:queries]
    frame = frame[frame["qid"].isin(keep)].reset_index(drop=True)
    folder.mkdir(parents=True, exist_ok=True)
    frame[["qid", "query", "docno", "rank", "score"]].to_parquet(folder / f"{tag(dataset)}.run.parquet")
    frame[["docno", "text"]].drop_duplicates("docno").to_parquet(folder / f"{tag(dataset)}.docs.parquet")
    qrels = pt_dataset(dataset).get_qrels()
    qrels[qrels["qid"].isin(keep)].to_parquet(folder / f"{tag(dataset)}.qrels.parquet")
    print(f"{dataset}: {len(keep)} queries, {len(frame)} pairs, {frame.docno.nunique()} documents")


def read_candidates(dataset: str, folder: Path) -> pd.DataFrame:
    """The candidates with their texts: the run file's own ``text`` column where it has one (per-pair,
    query-dependent passages), else each document's text."""
    run = pd.read_parquet(folder / f"{tag(dataset)}.run.parquet")
    if "text" in run.columns:
        return run
    docs = pd.read_parquet(folder / f"{tag(dataset)}.docs.parquet")
    return run.merge(docs, on="docno", how="left", validate="many_to_one")


# -- step 2: scores -------------------------------------------------------------------------------------
def system_specs(shipped: Path, naive: Path) -> dict[str, dict]:
    """name -> how to build the scorer (adapters merged / compensation kept switchable) and its ratios."""
    compensation = {k: str(shipped / k) for k in ("vertical", "r2", "r4") if (shipped / k).is_dir()}
    return {
        "zero_shot": dict(adapters=None, ratios=[1]),
        "naive": dict(adapters=[str(naive)], ratios=[1]),
        "stage1": dict(adapters=[str(shipped / "stage1")], ratios=RATIOS),
        "matroyshka": dict(adapters=[str(shipped / "stage1")], compensation=compensation, ratios=RATIOS),
    }


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def score_system(name: str, spec: dict, frames: dict[str, pd.DataFrame], args) -> dict[str, tuple[pd.DataFrame, dict]]:
    """Per dataset: a frame of score columns (one per single shape) and timings."""
    scorer = MatroyshkaScorer(BASE, adapters=spec["adapters"], compensation=spec.get("compensation"),
                              merge_compensation=True, max_length=args.max_length, batch_size=args.batch_size)
    ratios = [r for r in spec["ratios"] if r in args.ratios]
    out = {}
    for dataset, frame in frames.items():
        pairs = list(zip(frame["query"], frame["text"]))
        scores, timing = frame[["qid", "docno"]].copy(), {"device": str(scorer.device), "pairs": len(pairs)}
        for ratio in ratios:
            exits = scored_exits(ratio, args.compress_at, args.exits)
            grid = Shape(exits, [args.compress_at], ratio)
            per_exit, seconds = timed(lambda: scorer.compute_score(pairs, shape=grid), scorer.device)
            timing[f"pass {grid}"] = seconds
            for depth, column in zip(exits, per_exit):
                scores[f"score_{single_shape(depth, ratio, args.compress_at)}"] = column
        out[dataset] = (scores, timing)
    # every shape is timed on the same pairs: those of --timing-dataset (default: the first scored)
    first = (read_candidates(args.timing_dataset, args.candidates) if args.timing_dataset
             else next(iter(frames.values())))
    sample = list(zip(first["query"], first["text"]))[:args.timing_pairs]
    scorer.compute_score(sample[:args.batch_size], shape=Shape(args.exits[-1]))  # warm-up
    shapes = [single_shape(d, r, args.compress_at) for r in ratios
              for d in scored_exits(r, args.compress_at, args.exits)]
    per_shape = {str(shape): timed(lambda: scorer.compute_score(sample, shape=shape), scorer.device)[1]
                 for shape in shapes}
    for dataset, frame in frames.items():  # estimated cost at each dataset's own mean lengths
        lengths = scorer.mean_lengths(list(zip(frame["query"], frame["text"]))[::max(1, len(frame) // 256)])
        flops = {str(shape): scorer.flops(shape, *lengths) / 1e9 for shape in shapes}
        out[dataset][1].update(shape_seconds=per_shape, timing_pairs=len(sample), gflops=flops)
    return out


def score_teacher(frames: dict[str, pd.DataFrame], threads: int | None) -> dict[str, tuple[pd.DataFrame, dict]]:
    from pyterrier_matroyshka.offline.minilm import MiniLMCrossEncoder

    teacher, out = MiniLMCrossEncoder(num_threads=threads), {}
    for dataset, frame in frames.items():
        start = time.perf_counter()
        scored = teacher(frame)
        out[dataset] = (scored[["qid", "docno"]].assign(score_teacher=scored["score"].to_numpy()),
                        {"device": "cpu", "pairs": len(frame), "pass teacher": time.perf_counter() - start})
    return out


def write_scores(args) -> None:
    frames = {d: read_candidates(d, args.candidates) for d in args.datasets}
    specs = system_specs(args.shipped, args.naive)
    for name in args.systems:
        if all((args.scores / f"{tag(d)}__{name}.parquet").exists() for d in frames):
            continue
        print(f"{time.strftime('%T')} scoring {name}", flush=True)
        results = (score_teacher(frames, args.threads) if name == "teacher"
                   else score_system(name, specs[name], frames, args))
        for dataset, (scores, timing) in results.items():
            args.scores.mkdir(parents=True, exist_ok=True)
            scores.to_parquet(args.scores / f"{tag(dataset)}__{name}.parquet")
            (args.scores / f"{tag(dataset)}__{name}.timing.json").write_text(json.dumps(timing, indent=1))


def merge_scores(sources: list[Path], target: Path) -> None:
    """Score files of the same name from several folders (query shards, or other ratios of the same
    queries) as one: rows joined on (qid, docno), each column and each shape's timing taken from the first
    folder that has it (so a folder listed first replaces a shape's scores; merged shards keep the costs
    of one timing run)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in sorted({p.name for folder in sources for p in folder.glob("*.parquet")}):
        present = [folder / name for folder in sources if (folder / name).exists()]
        frames = [pd.read_parquet(file) for file in present]
        merged = pd.concat(frames, ignore_index=True).groupby(["qid", "docno"], sort=False).first().reset_index()
        merged.to_parquet(target / name)
        timings = [json.loads(file.with_suffix(".timing.json").read_text()) for file in present]
        meta = {**timings[0], "pairs": len(merged), "merged_from": [str(s) for s in sources]}
        for key in ("shape_seconds", "gflops"):  # per shape: the first timing that measured it
            meta[key] = {k: v for timing in reversed(timings) for k, v in timing.get(key, {}).items()}
        (target / present[0].with_suffix(".timing.json").name).write_text(json.dumps(meta, indent=1))
        print(f"{name}: {len(merged)} rows, {merged.qid.nunique()} queries, {merged.columns.size - 2} score columns")


# -- step 3: metrics ------------------------------------------------------------------------------------
def read_judged(dataset: str, folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The candidates' BM25 run and their qrels."""
    return (pd.read_parquet(folder / f"{tag(dataset)}.run.parquet"),
            pd.read_parquet(folder / f"{tag(dataset)}.qrels.parquet"))


def scored_systems(dataset: str, run: pd.DataFrame, folder: Path, names) -> Iterator[tuple[str, Path, pd.DataFrame]]:
    """Each of ``names`` scored on ``dataset`` in ``folder``: its name, score file, and score columns beside
    BM25's ``score`` of the same (qid, docno). Systems not scored there are skipped."""
    for name in names:
        file = folder / f"{tag(dataset)}__{name}.parquet"
        if file.exists():
            yield name, file, pd.read_parquet(file).merge(run[["qid", "docno", "score"]], on=["qid", "docno"],
                                                          validate="one_to_one")


def shape_columns(scores: pd.DataFrame) -> Iterator[tuple[str, str]]:
    """(shape, column) of each score column of a system's frame."""
    return ((c.removeprefix("score_"), c) for c in scores.columns if c.startswith("score_"))


def with_bm25(scores: pd.DataFrame, column: str, weight: float) -> pd.DataFrame:
    """The frame scored by ``column`` interpolated with BM25's ``score`` (what FirstStageFusion does)."""
    from pyterrier_matroyshka.fusion import interpolate

    return scores.assign(score=interpolate(scores["qid"], scores["score"], scores[column], weight))


def write_metrics(args) -> None:
    from pyterrier_matroyshka.shape_comparison import evaluate

    args.out.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        run, qrels = read_judged(dataset, args.candidates)
        queries = run["qid"].unique()
        meta = {**evaluate(run, qrels, queries=queries), "queries": len(queries),
                "top_k": int(run["rank"].max()) + 1, "pairs": len(run), "fusion_weight": args.fusion_weight}
        (args.out / f"{tag(dataset)}__bm25.json").write_text(json.dumps(meta, indent=1))
        for name, file, scores in scored_systems(dataset, run, args.scores, SYSTEMS):
            timing = json.loads(file.with_suffix(".timing.json").read_text())
            results = {}
            for shape, column in shape_columns(scores):
                cost = {"gflops": timing.get("gflops", {}).get(shape),
                        "ms_per_pair": 1000 * timing["shape_seconds"][shape] / timing["timing_pairs"]
                        if shape in timing.get("shape_seconds", {}) else None, "device": timing["device"]}
                alone = evaluate(scores.assign(score=scores[column]), qrels, queries=queries)
                fused = evaluate(with_bm25(scores, column, args.fusion_weight), qrels, queries=queries)
                results[shape] = {**alone, **cost}
                results[shape + FUSED] = {**fused, **cost}
            (args.out / f"{tag(dataset)}__{name}.json").write_text(json.dumps(results, indent=1))


def fusion_grid(args) -> None:
    """nDCG@10 of every scored shape interpolated with BM25 at weights 0, 0.1, ..., 1 (0 = the re-ranker
    alone, 1 = BM25): run it on the SciFact-train holdout to choose the weight."""
    from pyterrier_matroyshka.shape_comparison import evaluate

    weights = [round(w / 10, 1) for w in range(11)]
    for dataset in args.datasets:
        run, qrels = read_judged(dataset, args.candidates)
        print(f"\n{dataset}: {run.qid.nunique()} queries, nDCG@10 by BM25 weight")
        print("| system | shape | " + " | ".join(map(str, weights)) + " | best |")
        print("|---|---|" + "---|" * (len(weights) + 1))
        for name, _, scores in scored_systems(dataset, run, args.scores, args.systems):
            for shape, column in shape_columns(scores):
                values = [evaluate(with_bm25(scores, column, w), qrels, queries=run["qid"].unique())["nDCG@10"]
                          for w in weights]
                best = weights[max(range(len(weights)), key=values.__getitem__)]
                print(f"| {name} | {shape} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {best} |")


def significance(args) -> None:
    """Paired t-tests over queries of every scored shape, alone and fused with BM25: against BM25, or with
    ``--versus SYSTEM`` against the same shape (alone, fused) of that system, scored in ``--versus-scores``
    (default: the same folder; another folder compares two trainings of one system)."""
    from ir_measures import nDCG
    from scipy.stats import ttest_rel

    from pyterrier_matroyshka.shape_comparison import evaluate_per_query

    for dataset in args.datasets:
        run, qrels = read_judged(dataset, args.candidates)
        queries = run["qid"].unique()

        def per_shape(name: str, folder: Path = args.scores) -> dict[str, tuple[pd.Series, pd.Series]]:
            """shape -> per-query nDCG@10 of the system alone and fused (empty if it was not scored)."""
            return {shape: (evaluate_per_query(scores.assign(score=scores[column]), qrels, nDCG @ 10, queries),
                            evaluate_per_query(with_bm25(scores, column, args.fusion_weight), qrels, nDCG @ 10,
                                               queries))
                    for _, _, scores in scored_systems(dataset, run, folder, [name])
                    for shape, column in shape_columns(scores)}

        bm25 = evaluate_per_query(run, qrels, nDCG @ 10, queries)
        versus = per_shape(args.versus, args.versus_scores or args.scores) if args.versus else None
        where = f" in {args.versus_scores}" if args.versus_scores else ""
        against = (f"that of the same shape of {args.versus}{where}" if args.versus
                   else f"BM25's ({bm25.mean():.4f})")
        print(f"\n{dataset}: {len(queries)} queries, nDCG@10 minus {against}, paired t-test p\n")
        print("| system | shape | alone | p | + BM25 | p |\n|---|---|---|---|---|---|")
        for name in args.systems:
            for shape, pair in per_shape(name).items():
                if versus is not None and shape not in versus:
                    continue
                cells = []
                for ndcg, reference in zip(pair, versus[shape] if versus is not None else (bm25, bm25)):
                    cells += [f"{(ndcg - reference).mean():+.4f}", f"{ttest_rel(ndcg, reference).pvalue:.2g}"]
                print(f"| {name} | {shape} | " + " | ".join(cells) + " |")


def report(out: Path, fused: bool = True, datasets: Sequence[str] = DATASETS) -> str:
    """One table per dataset (of ``datasets`` evaluated in ``out``), a row per system and shape; with ``fused``
    a column of the same run interpolated with BM25 (the weight ``evaluate`` used)."""
    lines = []
    for dataset in datasets:
        files = {p.stem.split("__")[1]: json.loads(p.read_text()) for p in out.glob(f"{tag(dataset)}__*.json")}
        if not files:
            continue
        meta = files.pop("bm25")
        show = fused and meta.get("fusion_weight") is not None
        extra = (f"; '+ BM25': interpolated with BM25 at weight {meta['fusion_weight']} (z-scores per query)"
                 if show else "")
        lines += [f"\n### {dataset}: {meta['queries']} queries, BM25 top-{meta['top_k']} re-ranked{extra}\n",
                  "| system | shape | nDCG@10 | RR@10 |" + (" nDCG@10 + BM25 |" if show else "")
                  + " GFLOP/pair | ms/pair |", "|---|---|---|---|" + ("---|" if show else "") + "---|---|",
                  f"| BM25 | - | {meta['nDCG@10']:.4f} | {meta['RR@10']:.4f} |" + (" - |" if show else "")
                  + " - | - |"]
        for name in SYSTEMS:
            results = files.get(name, {})
            shapes = sorted((s for s in results if not s.endswith(FUSED)), key=lambda s: -(results[s]["gflops"] or 0))
            for shape in shapes:
                r = results[shape]
                cost = "-" if r["gflops"] is None else f"{r['gflops']:.2f}"
                ms = "-" if r["ms_per_pair"] is None else f"{r['ms_per_pair']:.2f}"
                with_bm25 = f" {results[shape + FUSED]['nDCG@10']:.4f} |" if show else ""
                lines.append(f"| {'MiniLM-L12 teacher' if name == 'teacher' else name} | "
                             f"{'-' if name == 'teacher' else shape} | {r['nDCG@10']:.4f} | {r['RR@10']:.4f} |"
                             f"{with_bm25} {cost} | {ms} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["candidates", "score", "merge", "evaluate", "report", "significance",
                                         "fusion"])
    parser.add_argument("--datasets", nargs="*", default=DATASETS)
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS))
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--timing-pairs", type=int, default=512, help="score: pairs timed at each single shape")
    parser.add_argument("--timing-dataset", default=None,
                        help="score: the dataset whose pairs are timed (default: the first of --datasets)")
    parser.add_argument("--exits", type=int, nargs="+", default=EXITS,
                        help="score: the exits of each pass (a pass costs its deepest exit: leave out L30 to "
                             "score the early exits at a fraction of the time)")
    parser.add_argument("--ratios", type=int, nargs="*", default=RATIOS, help="score: compression ratios to run")
    parser.add_argument("--compress-at", type=int, default=COMPRESS_AT,
                        help="score: the block before which a compressed pass pools the passage")
    parser.add_argument("--queries", type=int, nargs="*", default=None,
                        help="candidates: first N topics, one N for all datasets or one per dataset (default all)")
    parser.add_argument("--qids-from", type=Path, default=None,
                        help="candidates: keep only the qids of this JSONL file of groups (e.g. the training "
                             "holdout, to make choices on held-out SciFact train queries, never on test)")
    parser.add_argument("--fusion-weight", type=float, default=variant().fusion_weight,
                        help=f"evaluate: BM25's share in the '+ BM25' rows (default: {DEFAULT_VARIANT}'s, chosen on "
                             "its held-out training queries with the fusion step)")
    parser.add_argument("--merge-from", type=Path, nargs="*", default=[],
                        help="merge: score folders to join into --scores (query shards, other ratios)")
    parser.add_argument("--versus", default=None,
                        help="significance: compare with the same shape of this system instead of BM25")
    parser.add_argument("--versus-scores", type=Path, default=None,
                        help="significance: where the --versus system was scored (default: --scores)")
    parser.add_argument("--no-fused", action="store_true", help="report: leave out the '+ BM25' rows")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                        help=f"passage token budget (default: {DEFAULT_VARIANT}'s, as trained)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--candidates", type=Path, default=ROOT / "runs" / "eval" / "candidates")
    parser.add_argument("--scores", type=Path, default=ROOT / "runs" / "eval" / "scores")
    parser.add_argument("--shipped", type=Path, default=None,
                        help=f"the shipped model's adapter folder (default: {DEFAULT_VARIANT}'s)")
    parser.add_argument("--naive", type=Path, default=ROOT / "runs" / "smollm2" / "naive_last_exit")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.shipped = args.shipped or variant_dir()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.step == "candidates":
        counts = args.queries or [None]
        if len(counts) not in (1, len(args.datasets)):
            parser.error(f"--queries takes one number or one per dataset ({len(args.datasets)})")
        only = ({json.loads(line)["qid"] for line in args.qids_from.open()} if args.qids_from else None)
        for dataset, count in zip(args.datasets, counts * len(args.datasets) if len(counts) == 1 else counts):
            write_candidates(dataset, args.top_k, count, args.candidates, only)
    elif args.step == "score":
        write_scores(args)
    elif args.step == "merge":
        merge_scores(args.merge_from, args.scores)
    elif args.step == "evaluate":
        write_metrics(args)
    elif args.step == "fusion":
        fusion_grid(args)
    elif args.step == "significance":
        significance(args)
    else:
        print(report(args.out, not args.no_fused, args.datasets))


if __name__ == "__main__":
    main()
