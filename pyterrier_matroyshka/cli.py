"""Command line: ``python -m pyterrier_matroyshka {seed,rerank,evaluate,experiment} ...``.

    seed        make the offline collections (../shared/data layout) usable through ir_datasets
    rerank      re-rank a TREC run (or BM25 candidates) for a dataset, or BM25 on a Lucene index (Pyserini)
                for a topics file or Pyserini topic name, and write a TREC run; resumable, and sharded over
                processes/GPUs under torchrun: torchrun --nproc_per_node N -m pyterrier_matroyshka rerank
                --run-file RUN ...
    evaluate    nDCG@10 / RR@10 (or --measures) of TREC runs against a dataset's or a file's qrels
    experiment  BM25 top-k re-ranked at several shapes: a table of effectiveness, cost and time
    budget      the best shape or cascade for a cost budget, chosen on development topics (Pareto frontier)

Bad input stops a command with one line and exit code 2; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import warnings
from typing import Optional, Sequence

import ir_measures
from ir_measures import RR, nDCG

from .errors import ArgumentParser, UserError, int_at_least, positive_real, run_cli

PROG = "python -m pyterrier_matroyshka"
DEFAULT_SHAPES = ["L30", "L20", "L10", "L30:r2@4", "L30:r4@4"]
VARIANT_WEIGHT = "variant"  #: a bare --fuse: the pretrained variant's own weight


def _weight_or_variant(text: str):
    """--fuse's value: 'variant' or a number in [0, 1]."""
    if text == VARIANT_WEIGHT:
        return text
    try:
        weight = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (give the first stage's share in [0, 1], "
                                         "or no value for the variant's)") from None
    if not 0.0 <= weight <= 1.0:
        raise argparse.ArgumentTypeError(f"fusion weight {weight:g} is outside [0, 1]: 0 keeps the re-ranker's "
                                         "order, 1 the first stage's")
    return weight


def _shape(text: str) -> str:
    """A shape string that parses (checked against the model's exits once it is loaded)."""
    from .shape import Shape

    try:
        Shape.parse(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _shape_or_cascade(text: str) -> str:
    """A shape, or a cascade such as ``L6 top30 > L20``, that parses."""
    if ">" not in text:
        return _shape(text)
    from .cascade_plan import CascadePlan

    try:
        CascadePlan.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _measure(text: str):
    try:
        return ir_measures.parse_measure(text)
    except Exception:  # ir_measures raises ValueError, NameError, ... for a name it does not know
        raise argparse.ArgumentTypeError(f"unknown measure {text!r}; e.g. nDCG@10, RR@10, AP, R@100, P@5") from None


def _model_args(parser: argparse.ArgumentParser) -> None:
    from .pretrained import DEFAULT_VARIANT, VARIANTS

    parser.add_argument("--variant", default=None, choices=sorted(VARIANTS),
                        help=f"a pretrained variant with its trained adapters (default: {DEFAULT_VARIANT})")
    parser.add_argument("--model", default=None, help="instead of a variant: a folder or hub id, released layout "
                                                      "or a raw base LM")
    parser.add_argument("--adapters", nargs="*", default=None, help="LoRA adapter folders, merged in order")
    parser.add_argument("--compensation", nargs="*", default=None,
                        help="adapters kept switchable, picked by the shape's ratio")
    parser.add_argument("--merge-compensation", action=argparse.BooleanOptionalAction, default=None,
                        help="merge the active compensation adapter into the weights: faster, one more copy "
                             "of the weights in memory (default: on for a variant, off for --model)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int_at_least(1), default=32)
    parser.add_argument("--max-length", type=int_at_least(1), default=None, help="passage token budget (default: the "
                                                                     "variant's, as trained; 512 for --model)")
    parser.add_argument("--reference-compat", action="store_true", help="replay the reference's bugs B1 and B2")
    parser.add_argument("--fuse", nargs="?", type=_weight_or_variant, const=VARIANT_WEIGHT, default=None,
                        metavar="WEIGHT", help="interpolate with the first stage's scores, WEIGHT its share in [0, 1] "
                                               "(z-scores per query); without a value: the variant's weight, chosen "
                                               "on its held-out training queries")


def _candidate_args(parser: argparse.ArgumentParser, pyserini: bool = False) -> None:
    parser.add_argument("--dataset", required=not pyserini,
                        help="ir_datasets id, e.g. cranfield, beir/scifact/test, local/msmarco-passage-dl19"
                             + (" (or --index and --topics)" if pyserini else ""))
    if pyserini:
        parser.add_argument("--index", default=None, help="a Lucene index (Pyserini): BM25 candidates, their text "
                                                          "from the index's stored raw records (--storeRaw)")
        parser.add_argument("--topics", default=None, help="with --index: a topics file (TREC, or qid<TAB>query "
                                                           "per line) or a Pyserini topic name")
    parser.add_argument("--run", "--run-file", dest="run", default=None,
                        help="TREC run of candidates (default: PISA BM25); under torchrun write --run-file "
                             "(torchrun reads --run as an abbreviation of its own --run-path)")
    parser.add_argument("--top-k", type=int_at_least(1), default=100, help="candidates per query")
    parser.add_argument("--queries", type=int_at_least(1), default=None, help="only the first N queries (quick runs)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    commands = parser.add_subparsers(dest="command", required=True)
    debug = ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an input error")

    seed = commands.add_parser("seed", help="seed ir_datasets from local archives", parents=[debug])
    seed.add_argument("--source", default=None, help="folder in the ../shared/data layout")

    rerank = commands.add_parser("rerank", help="re-rank candidates and write a TREC run", parents=[debug])
    _candidate_args(rerank, pyserini=True)
    _model_args(rerank)
    rerank.add_argument("--shape", type=_shape, default=None, help="e.g. L30, L20:r2@4 (default: deepest exit)")
    rerank.add_argument("--output", required=True, help="TREC run to write")

    evaluate = commands.add_parser("evaluate", help="evaluate TREC runs (pt.Experiment: the first run is the "
                                                    "baseline of Holm-corrected paired t-tests)", parents=[debug])
    evaluate.add_argument("--dataset", default=None, help="ir_datasets id whose qrels to use")
    evaluate.add_argument("--qrels", default=None, help="or a TREC qrels file or a Pyserini qrels name")
    evaluate.add_argument("runs", nargs="+")
    evaluate.add_argument("--measures", nargs="+", type=_measure, default=[nDCG @ 10, RR @ 10],
                          help="ir_measures names, e.g. nDCG@10 RR@10 R@100")

    experiment = commands.add_parser("experiment", help="compare shapes on a dataset", parents=[debug])
    _candidate_args(experiment)
    _model_args(experiment)
    experiment.add_argument("--shapes", nargs="+", type=_shape_or_cascade, default=None,
                            help=f"shapes (or cascades, e.g. 'L6 top30 > L20') to compare (default for 30 layers: "
                                 f"{' '.join(DEFAULT_SHAPES)})")
    experiment.add_argument("--teacher", action="store_true", help="add the MiniLM cross-encoder as a row")

    budget = commands.add_parser("budget", parents=[debug],
                                 help="pick the best shape or cascade for a cost budget on development topics")
    budget.add_argument("--dataset", default="beir/scifact/train", help="development topics (never test topics; "
                                                                         "default beir/scifact/train)")
    budget.add_argument("--holdout", action="store_true", help="only the training recipe's held-out queries "
                                                               "(every 10th query with a judged-relevant document)")
    budget.add_argument("--run", default=None, help="TREC run of candidates (default: PISA BM25)")
    budget.add_argument("--top-k", type=int_at_least(1), default=100, help="candidates per query")
    budget.add_argument("--queries", type=int_at_least(1), default=None, help="only the first N queries")
    _model_args(budget)
    budget.add_argument("--systems", nargs="+", type=_shape_or_cascade, default=None,
                        help="shapes and cascades to compare, e.g. L20 'L6 top30 > L20' (default: a grid of both)")
    budget.add_argument("--max-gflop", type=positive_real, default=None, help="budget: estimated GFLOP per query")
    budget.add_argument("--max-fraction", type=positive_real, default=None,
                        help="budget: share of the full-depth shape's GFLOP per query, e.g. 0.5")
    budget.add_argument("--max-ms", type=positive_real, default=None,
                        help="budget: measured ms per query (frontier systems)")
    budget.add_argument("--time-queries", type=int_at_least(0), default=2,
                        help="queries each frontier system is timed on (0: none)")
    budget.add_argument("--cache", default=None, help="folder to keep the multi-exit passes in (re-runs score nothing)")
    budget.add_argument("--all", action="store_true", help="print every system, not only the frontier")
    return parser


def _scorer(args):
    from .scorer import MatroyshkaScorer

    options = dict(dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                   reference_compat=args.reference_compat, verbose=args.verbose)
    if args.max_length is not None:
        options["max_length"] = args.max_length
    if args.merge_compensation is not None:
        options["merge_compensation"] = args.merge_compensation
    if args.model is None:
        if args.adapters is not None or args.compensation is not None:
            raise UserError("--adapters and --compensation go with --model; a --variant brings its own")
        return MatroyshkaScorer.from_pretrained(args.variant, **options)
    if args.variant is not None:
        raise UserError("give either --variant or --model, not both")
    return MatroyshkaScorer(args.model, adapters=args.adapters, compensation=args.compensation, **options)


def _fusion_weight(args) -> Optional[float]:
    """--fuse's weight: as given (checked before any scoring), or the variant's holdout-chosen one for a
    bare --fuse."""
    from .fusion import check_weight
    from .pretrained import variant

    if args.fuse is None:
        return None
    if args.fuse != VARIANT_WEIGHT:
        check_weight(args.fuse)
        return args.fuse
    if args.model is not None:
        raise UserError("--fuse without a weight means the pretrained variant's weight; for --model give one, "
                        "e.g. --fuse 0.3, chosen on held-out training queries")
    return variant(args.variant).fusion_weight


def _candidates(args):
    from .shape_comparison import first_stage

    if getattr(args, "index", None):
        return _lucene_candidates(args)
    if args.run is not None and not os.path.isfile(args.run):
        raise UserError(f"run file {args.run} does not exist" if not os.path.exists(args.run)
                        else f"run file {args.run} is not a file")
    candidates = first_stage(args.dataset, args.top_k, args.run)
    given = len(candidates)
    if given == 0:
        raise UserError(f"no candidates to re-rank: {args.run or 'the first stage'} gave no rows for {args.dataset}")
    candidates = candidates[candidates["rank"] < args.top_k]
    if args.queries:
        keep = list(dict.fromkeys(candidates["qid"]))[: args.queries]
        candidates = candidates[candidates["qid"].isin(keep)]
    if len(candidates) < given:  # rows left out on purpose are counted, never dropped silently
        print(f"kept {len(candidates)} of {given} candidate rows (--top-k {args.top_k}"
              + (f", --queries {args.queries})" if args.queries else ")"), file=sys.stderr)
    return candidates.reset_index(drop=True)


def _check_output(path: str) -> None:
    """The run can be written where asked: checked before any scoring."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"--output {path} is a folder; give a file name, e.g. {os.path.join(path, 'run.txt')}")
    if not os.path.isdir(folder):
        raise UserError(f"--output {path}: the folder {folder} does not exist")


def _lucene_candidates(args):
    """Pyserini's workflow: BM25 on a Lucene index for a topics file or name, texts from the index."""
    from . import pyserini

    topics = pyserini.read_topics(args.topics)
    if args.queries:
        topics = topics.head(args.queries)
    return pyserini.bm25_candidates(args.index, topics, k=args.top_k)


def _check_candidate_source(args) -> None:
    if getattr(args, "index", None) is None and getattr(args, "topics", None) is None:
        if args.dataset is None:
            raise UserError("give --dataset (an ir_datasets id), or --index (a Lucene index) and --topics")
        return
    if args.index is None or args.topics is None:
        raise UserError("--index and --topics go together: a Lucene index and a topics file or Pyserini topic name")
    if args.dataset is not None or args.run is not None:
        raise UserError("--index/--topics take the candidates from the index: leave out --dataset and --run")


def cmd_seed(args) -> None:
    from .offline.collections import seed_local_collections

    print(f"ir_datasets home: {seed_local_collections(args.source)}")


def cmd_rerank(args) -> None:
    """Re-rank query by query, sharded over the ranks of ``torchrun`` (one process otherwise) and resumable:
    see :mod:`.sharded`."""
    from .candidate_stream import query_order
    from .reranker import MatroyshkaReRanker
    from .sharded import join_ranks, rerank_sharded

    recorded = {key: value for key, value in vars(args).items() if key not in ("verbose", "debug")}  # a resume matches
    _check_candidate_source(args)
    weight = _fusion_weight(args)
    _check_output(args.output)
    ranks = join_ranks(args.device)
    args.device = str(ranks.device)
    with ranks.main_first():  # rank 0 fills the caches (docstores, converted base model) the others then read
        candidates = _candidate_stream(args)
        order = query_order(candidates, ranks.rank, ranks.world, load=True)  # the data, before the model loads
        if not order:
            raise UserError(f"run file {args.run} holds no lines: nothing to re-rank" if args.run
                            else "no candidates to re-rank: the first stage gave no rows")
        given, kept = getattr(candidates, "rows_given", 0), getattr(candidates, "rows_kept", 0)
        if ranks.main and kept < given:  # rows left out on purpose are counted, never dropped silently
            print(f"kept {kept} of {given} candidate rows (--top-k {args.top_k}"
                  + (f", --queries {args.queries})" if args.queries else ")"), file=sys.stderr)
        reranker = MatroyshkaReRanker(scorer=_scorer(args), shape=args.shape)  # the job's bars show progress
    name = f"matroyshka-{reranker.shape}"
    if weight is not None:
        from .fusion import FirstStageFusion

        reranker, name = FirstStageFusion(reranker, weight), f"{name}-fused{weight:g}"
    summary = rerank_sharded(candidates, reranker, args.output, run_name=name, arguments=recorded, ranks=ranks,
                             order=order)
    ranks.leave()
    if ranks.main:
        print(f"wrote {summary.lines} rows for {summary.queries} queries to {summary.output}")


def _candidate_stream(args):
    """The candidates of ``rerank``: a ``--run`` streamed query by query, else the first stage's in memory."""
    from .candidate_stream import FrameCandidates, TrecRunCandidates

    if args.run is None or getattr(args, "index", None):
        return FrameCandidates(_candidates(args))
    if not os.path.isfile(args.run):
        raise UserError(f"run file {args.run} does not exist" if not os.path.exists(args.run)
                        else f"run file {args.run} is not a file")
    from .offline.bm25 import text_loader
    from .offline.collections import pt_dataset

    return TrecRunCandidates(args.run, pt_dataset(args.dataset).get_topics(), text_loader(args.dataset),
                             top_k=args.top_k, max_queries=args.queries, topics_name=f"the topics of {args.dataset}")


def cmd_evaluate(args) -> None:
    import pandas as pd
    import pyterrier as pt

    from .shape_comparison import format_table
    from .trec import read_trec_run

    measures = args.measures  # parsed by argparse: an unknown one stops before any file is read
    runs = [read_trec_run(run) for run in args.runs]
    # the runs' queries (a query missing from one run counts 0 there), not every query of the qrels
    topics = pd.DataFrame({"qid": list(dict.fromkeys(q for run in runs for q in run["qid"]))})
    several = len(runs) > 1
    table = pt.Experiment(runs, topics, _qrels(args), measures, names=args.runs, baseline=0 if several else None,
                          correction="holm" if several else None)
    print(format_table(table))


def _qrels(args):
    if (args.dataset is None) == (args.qrels is None):
        raise UserError("give one of --dataset (an ir_datasets id) or --qrels (a qrels file or Pyserini qrels name)")
    if args.qrels is not None:
        from .pyserini import read_qrels

        return read_qrels(args.qrels)
    from .offline.collections import pt_dataset

    return pt_dataset(args.dataset).get_qrels()


def cmd_experiment(args) -> None:
    from .offline.collections import pt_dataset
    from .reranker import MatroyshkaReRanker
    from .shape_comparison import compare, format_table
    from .time_estimate import estimate_seconds, plan_text

    weight = _fusion_weight(args)
    candidates = _candidates(args)  # the data, checked before the model loads
    reranker = MatroyshkaReRanker(scorer=_scorer(args), verbose=True)
    shapes = args.shapes or default_shapes(reranker.scorer.exits)
    systems = {"BM25": None}
    if args.teacher:
        from .offline.minilm import MiniLMCrossEncoder

        systems["MiniLM-L12 teacher"] = MiniLMCrossEncoder(verbose=True)
    for shape in shapes:  # each checked, before scoring
        if ">" in str(shape):
            cascade = reranker.cascade(shape)
            systems[str(cascade.plan)] = cascade
        else:
            systems[str(shape)] = reranker.with_shape(shape)
    scorer = reranker.scorer
    print(f"{args.dataset}: {candidates['qid'].nunique()} queries, top {args.top_k} candidates; model "
          f"{scorer.name} ({str(scorer.dtype).removeprefix('torch.')} on {scorer.device}). Will run:", flush=True)
    quiet = {name: _quiet(system) for name, system in systems.items()}
    print(plan_text(estimate_seconds(quiet, candidates), len(candidates),
                    fused_name=f"+ BM25 ({weight:g})" if weight is not None else None), flush=True)
    table = compare(candidates, pt_dataset(args.dataset).get_qrels(), systems, fusion_weight=weight,
                    report=lambda line: print(line, flush=True))
    print(f"\nmeasures with Holm-corrected p-values against BM25 (paired t-test); mrt: ms per query of "
          f"re-ranking on {scorer.device}\n")
    print(format_table(table))


def _quiet(system):
    """A shallow copy of ``system`` without its progress bar (the time estimate's few pairs need none)."""
    if getattr(system, "verbose", False):
        system = copy.copy(system)
        system.verbose = False
    return system


def cmd_budget(args) -> None:
    from . import budget
    from .offline.collections import pt_dataset
    from .reranker import MatroyshkaReRanker
    from .shape_comparison import format_table

    if args.fuse is not None:
        raise UserError("budget compares the re-ranker alone: drop --fuse")
    try:
        budget.refuse_test_topics(args.dataset)
    except ValueError as err:
        raise UserError(str(err)) from err
    if args.max_ms is not None and args.time_queries < 1:
        raise UserError("--max-ms needs measured times: give --time-queries 1 or more")
    if args.run is not None and not os.path.isfile(args.run):
        raise UserError(f"run file {args.run} does not exist")
    qids = budget.holdout_qids(args.dataset) if args.holdout else None
    candidates = budget.candidates_for(args.dataset, args.top_k, args.queries, qids, args.run)  # before the model
    reranker = MatroyshkaReRanker(scorer=_scorer(args), verbose=args.verbose)
    systems = args.systems or budget.default_systems(reranker.scorer.exits)
    table = budget.evaluate_systems(reranker, systems, candidates, pt_dataset(args.dataset).get_qrels(),
                                    cache=args.cache, time_queries=args.time_queries)
    shown = table if args.all else budget.pareto_frontier(table)
    print(f"\n{args.dataset}{' held-out queries' if args.holdout else ''}: {candidates['qid'].nunique()} queries, "
          f"top {args.top_k} candidates, {len(table)} systems; model {reranker.scorer.name} ({reranker.scorer.dtype}), "
          f"time on {reranker.scorer.device}\n")
    print(("all systems" if args.all else "Pareto frontier (nDCG@10 against GFLOP/query)") + ":")
    print(format_table(shown.drop(columns=["pass"])))
    if any(v is not None for v in (args.max_gflop, args.max_fraction, args.max_ms)):
        try:
            best = budget.best_under(table, args.max_gflop, args.max_ms, args.max_fraction)
        except ValueError as err:
            raise UserError(str(err)) from err
        print(f"\nbest within the budget: {best['name']}  (nDCG@10 {best['nDCG@10']:.4f}, "
              f"{best['GFLOP/query']:.1f} GFLOP/query = {best['of full']:.0%} of full depth"
              + (f", {best['ms/query']:.0f} ms/query" if best['ms/query'] == best['ms/query'] else "") + ")")


def default_shapes(exits: Sequence[int]) -> list[str]:
    """Full depth, about 2/3 and 1/3 depth, and the full depth compressed by 2 and 4 early on."""
    deepest = exits[-1]
    pick = lambda target: min(exits, key=lambda e: abs(e - target))
    early = max(1, exits[0])
    depths = sorted({deepest, pick(deepest * 2 / 3), pick(deepest / 3)}, reverse=True)
    return [f"L{d}" for d in depths] + [f"L{deepest}:r2@{early}", f"L{deepest}:r4@{early}"]


def _warnings_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; bad input raises :class:`~pyterrier_matroyshka.errors.UserError` (see :func:`cli`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:  # ir_datasets logs every docstore it opens (a filter: it sets its level to INFO itself)
        logging.getLogger("ir_datasets").addFilter(_warnings_only)
    warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    commands = {"seed": cmd_seed, "rerank": cmd_rerank, "evaluate": cmd_evaluate, "experiment": cmd_experiment,
                "budget": cmd_budget}
    commands[args.command](args)
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`main`, with bad input reported as one line and exit code 2."""
    return run_cli(main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(cli())
