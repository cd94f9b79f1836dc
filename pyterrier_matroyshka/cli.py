"""Command line: ``python -m pyterrier_matroyshka {seed,rerank,evaluate,experiment} ...``.

    seed        make the offline collections (../shared/data layout) usable through ir_datasets
    rerank      re-rank a TREC run (or BM25 candidates) for a dataset and write a TREC run; resumable, and
                sharded over processes/GPUs under torchrun: torchrun --nproc_per_node N -m pyterrier_matroyshka
                rerank --run-file RUN ...
    evaluate    nDCG@10 / RR@10 (or --measures) of TREC runs against a dataset's qrels
    experiment  BM25 top-k re-ranked at several shapes: a table of effectiveness, cost and time
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Optional, Sequence

import ir_measures

DEFAULT_SHAPES = ["L30", "L20", "L10", "L30:r2@4", "L30:r4@4"]


def _weight_or_demo(text: str):
    return text if text == "demo" else float(text)


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="folder or hub id: released layout or a raw base LM "
                                                      "(default: the demo model, SmolLM2-135M + its adapters)")
    parser.add_argument("--adapters", nargs="*", default=None, help="LoRA adapter folders, merged in order")
    parser.add_argument("--compensation", nargs="*", default=None,
                        help="adapters kept switchable, picked by the shape's ratio")
    parser.add_argument("--merge-compensation", action=argparse.BooleanOptionalAction, default=None,
                        help="merge the active compensation adapter into the weights: faster, one more copy "
                             "of the weights in memory (default: on for the demo model, off otherwise)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=None, help="passage token budget (default 512; "
                                                                     "128 for the demo model)")
    parser.add_argument("--reference-compat", action="store_true", help="replay the reference's bugs B1 and B2")
    parser.add_argument("--score-in-text", action="store_true",
                        help="write the first stage's score before each passage, for a model trained so "
                             "(train bm25_target --score_in_text)")
    parser.add_argument("--fuse", nargs="?", type=_weight_or_demo, const="demo", default=None, metavar="WEIGHT",
                        help="interpolate with the first stage's scores, WEIGHT its share in [0, 1] (z-scores per "
                             "query); without a value (or 'demo'): the demo model's weight, chosen on its "
                             "SciFact-train holdout")


def _candidate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="ir_datasets id, e.g. cranfield, beir/scifact/test, "
                                                         "local/msmarco-passage-dl19")
    parser.add_argument("--run", "--run-file", dest="run", default=None,
                        help="TREC run of candidates (default: PISA BM25); under torchrun write --run-file "
                             "(torchrun reads --run as an abbreviation of its own --run-path)")
    parser.add_argument("--top-k", type=int, default=100, help="candidates per query")
    parser.add_argument("--queries", type=int, default=None, help="only the first N queries (quick runs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pyterrier_matroyshka", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    seed = commands.add_parser("seed", help="seed ir_datasets from local archives")
    seed.add_argument("--source", default=None, help="folder in the ../shared/data layout")

    rerank = commands.add_parser("rerank", help="re-rank candidates and write a TREC run")
    _candidate_args(rerank)
    _model_args(rerank)
    rerank.add_argument("--shape", default=None, help="e.g. L30, L20:r2@4 (default: deepest exit)")
    rerank.add_argument("--output", required=True, help="TREC run to write")

    evaluate = commands.add_parser("evaluate", help="evaluate TREC runs")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("runs", nargs="+")
    evaluate.add_argument("--measures", nargs="*", default=["nDCG@10", "RR@10"])

    experiment = commands.add_parser("experiment", help="compare shapes on a dataset")
    _candidate_args(experiment)
    _model_args(experiment)
    experiment.add_argument("--shapes", nargs="+", default=None,
                            help=f"shapes to compare (default for 30 layers: {' '.join(DEFAULT_SHAPES)})")
    experiment.add_argument("--teacher", action="store_true", help="add the MiniLM cross-encoder as a row")
    return parser


def _scorer(args):
    from .demo import demo_scorer
    from .scorer import MatroyshkaScorer

    options = dict(dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                   reference_compat=args.reference_compat, verbose=args.verbose)
    if args.max_length:
        options["max_length"] = args.max_length
    if args.merge_compensation is not None:
        options["merge_compensation"] = args.merge_compensation
    if args.model is None:
        return demo_scorer(**options)
    return MatroyshkaScorer(args.model, adapters=args.adapters, compensation=args.compensation, **options)


def _fusion_weight(args) -> Optional[float]:
    """--fuse's weight: as given (checked before any scoring), or the demo model's holdout-chosen one for a
    bare --fuse."""
    from .demo import DEMO_FUSION_WEIGHT
    from .fusion import check_weight

    if args.fuse is None:
        return None
    if args.fuse != "demo":
        check_weight(args.fuse)
        return args.fuse
    if args.model is not None:
        raise SystemExit("--fuse without a weight means the demo model's weight; for --model give one, "
                         "e.g. --fuse 0.3, chosen on held-out training queries")
    return DEMO_FUSION_WEIGHT


def _candidates(args):
    from .shape_comparison import first_stage

    candidates = first_stage(args.dataset, args.top_k, args.run)
    candidates = candidates[candidates["rank"] < args.top_k]
    if args.queries:
        keep = list(dict.fromkeys(candidates["qid"]))[: args.queries]
        candidates = candidates[candidates["qid"].isin(keep)]
    return candidates.reset_index(drop=True)


def cmd_seed(args) -> None:
    from .offline.collections import seed_local_collections

    print(f"ir_datasets home: {seed_local_collections(args.source)}")


def cmd_rerank(args) -> None:
    """Re-rank query by query, sharded over the ranks of ``torchrun`` (one process otherwise) and resumable:
    see :mod:`.sharded`."""
    from .candidate_stream import query_order
    from .reranker import MatroyshkaReRanker
    from .sharded import join_ranks, rerank_sharded

    recorded = {key: value for key, value in vars(args).items() if key != "verbose"}  # what a resume must match
    weight = _fusion_weight(args)
    if not args.verbose:  # ir_datasets logs each docstore opening, i.e. every query's text lookup
        logging.getLogger("ir_datasets").addFilter(lambda record: record.levelno >= logging.WARNING)
    ranks = join_ranks(args.device)
    args.device = str(ranks.device)
    with ranks.main_first():  # rank 0 fills the caches (docstores, converted base model) the others then read
        candidates = _candidate_stream(args)
        query_order(candidates)  # a malformed or ungrouped run fails here, before the model loads
        reranker = MatroyshkaReRanker(scorer=_scorer(args), shape=args.shape, score_in_text=args.score_in_text)
    name = f"matroyshka-{reranker.shape}"  # (no per-query bars: the job's progress bars follow every rank)
    if weight is not None:
        from .fusion import FirstStageFusion

        reranker, name = FirstStageFusion(reranker, weight), f"{name}-fused{weight:g}"
    summary = rerank_sharded(candidates, reranker, args.output, run_name=name, arguments=recorded, ranks=ranks)
    ranks.leave()
    if ranks.main:
        print(f"wrote {summary.lines} rows for {summary.queries} queries to {summary.output}")


def _candidate_stream(args):
    """The candidates of ``rerank``: a ``--run`` streamed query by query, else the first stage's in memory."""
    from .candidate_stream import FrameCandidates, TrecRunCandidates

    if args.run is None:
        return FrameCandidates(_candidates(args))
    from .offline.bm25 import text_loader
    from .offline.collections import pt_dataset

    return TrecRunCandidates(args.run, pt_dataset(args.dataset).get_topics(), text_loader(args.dataset),
                             top_k=args.top_k, max_queries=args.queries)


def cmd_evaluate(args) -> None:
    from .offline.collections import pt_dataset
    from .shape_comparison import evaluate, format_table
    from .trec import read_trec_run

    import pandas as pd

    measures = [ir_measures.parse_measure(m) for m in args.measures]
    qrels = pt_dataset(args.dataset).get_qrels()
    rows = [{"run": run, **evaluate(read_trec_run(run), qrels, measures)} for run in args.runs]
    print(format_table(pd.DataFrame(rows)))


def cmd_experiment(args) -> None:
    from .offline.collections import pt_dataset
    from .shape_comparison import compare_shapes, format_table
    from .reranker import MatroyshkaReRanker

    weight = _fusion_weight(args)
    reranker = MatroyshkaReRanker(scorer=_scorer(args), verbose=args.verbose, score_in_text=args.score_in_text)
    shapes = args.shapes or default_shapes(reranker.scorer.exits)
    extra = {}
    if args.teacher:
        from .offline.minilm import MiniLMCrossEncoder

        extra["MiniLM-L12 teacher"] = MiniLMCrossEncoder()
    candidates = _candidates(args)
    table = compare_shapes(reranker, shapes, candidates, pt_dataset(args.dataset).get_qrels(), extra=extra,
                           fusion_weight=weight)
    print(f"\n{args.dataset}: {candidates['qid'].nunique()} queries, top {args.top_k} candidates, "
          f"model {reranker.scorer.name} ({reranker.scorer.dtype}), re-ranking time on {reranker.scorer.device}\n")
    print(format_table(table))


def default_shapes(exits: Sequence[int]) -> list[str]:
    """Full depth, about 2/3 and 1/3 depth, and the full depth compressed by 2 and 4 early on."""
    deepest = exits[-1]
    pick = lambda target: min(exits, key=lambda e: abs(e - target))
    early = max(1, exits[0])
    depths = sorted({deepest, pick(deepest * 2 / 3), pick(deepest / 3)}, reverse=True)
    return [f"L{d}" for d in depths] + [f"L{deepest}:r2@{early}", f"L{deepest}:r4@{early}"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    {"seed": cmd_seed, "rerank": cmd_rerank, "evaluate": cmd_evaluate, "experiment": cmd_experiment}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
