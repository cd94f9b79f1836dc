"""Command line: ``python -m pyterrier_matroyshka {seed,rerank,evaluate,experiment} ...``.

    seed        make the offline collections (../shared/data layout) usable through ir_datasets
    rerank      re-rank a TREC run (or BM25 candidates) for a dataset and write a TREC run
    evaluate    nDCG@10 / RR@10 (or --measures) of TREC runs against a dataset's qrels
    experiment  BM25 top-k re-ranked at several shapes: a table of effectiveness, cost and time

Bad input stops a command with one line and exit code 2; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Optional, Sequence

import ir_measures
from ir_measures import RR, nDCG

from .errors import ArgumentParser, UserError, int_at_least, run_cli

PROG = "python -m pyterrier_matroyshka"
DEFAULT_SHAPES = ["L30", "L20", "L10", "L30:r2@4", "L30:r4@4"]


def _weight_or_demo(text: str):
    """--fuse's value: 'demo' or a number in [0, 1]."""
    if text == "demo":
        return text
    try:
        weight = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (give the first stage's share in [0, 1], "
                                         "or no value for the demo model's)") from None
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


def _measure(text: str):
    try:
        return ir_measures.parse_measure(text)
    except Exception:  # ir_measures raises ValueError, NameError, ... for a name it does not know
        raise argparse.ArgumentTypeError(f"unknown measure {text!r}; e.g. nDCG@10, RR@10, AP, R@100, P@5") from None


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
    parser.add_argument("--batch-size", type=int_at_least(1), default=32)
    parser.add_argument("--max-length", type=int_at_least(1), default=None, help="passage token budget (default 512; "
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
    parser.add_argument("--run", default=None, help="TREC run of candidates (default: PISA BM25)")
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
    _candidate_args(rerank)
    _model_args(rerank)
    rerank.add_argument("--shape", type=_shape, default=None, help="e.g. L30, L20:r2@4 (default: deepest exit)")
    rerank.add_argument("--output", required=True, help="TREC run to write")

    evaluate = commands.add_parser("evaluate", help="evaluate TREC runs", parents=[debug])
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("runs", nargs="+")
    evaluate.add_argument("--measures", nargs="+", type=_measure, default=[nDCG @ 10, RR @ 10])

    experiment = commands.add_parser("experiment", help="compare shapes on a dataset", parents=[debug])
    _candidate_args(experiment)
    _model_args(experiment)
    experiment.add_argument("--shapes", nargs="+", type=_shape, default=None,
                            help=f"shapes to compare (default for 30 layers: {' '.join(DEFAULT_SHAPES)})")
    experiment.add_argument("--teacher", action="store_true", help="add the MiniLM cross-encoder as a row")
    return parser


def _scorer(args):
    from .demo import demo_scorer
    from .scorer import MatroyshkaScorer

    options = dict(dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                   reference_compat=args.reference_compat, verbose=args.verbose)
    if args.max_length is not None:
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
        raise UserError("--fuse without a weight means the demo model's weight; for --model give one, "
                        "e.g. --fuse 0.3, chosen on held-out training queries")
    return DEMO_FUSION_WEIGHT


def _candidates(args):
    from .shape_comparison import first_stage

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


def cmd_seed(args) -> None:
    from .offline.collections import seed_local_collections

    print(f"ir_datasets home: {seed_local_collections(args.source)}")


def cmd_rerank(args) -> None:
    from .reranker import MatroyshkaReRanker
    from .trec import write_trec_run

    weight = _fusion_weight(args)
    _check_output(args.output)
    candidates = _candidates(args)  # the data, checked before the model loads
    reranker = MatroyshkaReRanker(scorer=_scorer(args), shape=args.shape, verbose=args.verbose,
                                  score_in_text=args.score_in_text)
    name = f"matroyshka-{reranker.shape}"
    if weight is not None:
        from .fusion import FirstStageFusion

        reranker, name = FirstStageFusion(reranker, weight), f"{name}-fused{weight:g}"
    result = reranker(candidates)
    if len(result) != len(candidates):  # never write a run that lost rows
        raise RuntimeError(f"the re-ranker returned {len(result)} rows for {len(candidates)} candidates")
    path = write_trec_run(result, args.output, run_name=name)
    print(f"wrote {len(result)} rows for {result['qid'].nunique()} queries to {path}")


def cmd_evaluate(args) -> None:
    from .offline.collections import pt_dataset
    from .shape_comparison import evaluate, format_table
    from .trec import read_trec_run

    import pandas as pd

    runs = {run: read_trec_run(run) for run in args.runs}  # every file checked before the qrels load
    qrels = pt_dataset(args.dataset).get_qrels()
    rows = [{"run": run, **evaluate(frame, qrels, args.measures)} for run, frame in runs.items()]
    print(format_table(pd.DataFrame(rows)))


def cmd_experiment(args) -> None:
    from .offline.collections import pt_dataset
    from .shape_comparison import compare_shapes, format_table
    from .reranker import MatroyshkaReRanker

    weight = _fusion_weight(args)
    candidates = _candidates(args)  # the data, checked before the model loads
    reranker = MatroyshkaReRanker(scorer=_scorer(args), verbose=args.verbose, score_in_text=args.score_in_text)
    shapes = args.shapes or default_shapes(reranker.scorer.exits)
    for shape in shapes:
        reranker.with_shape(shape)  # every shape against the model's exits, before any scoring
    extra = {}
    if args.teacher:
        from .offline.minilm import MiniLMCrossEncoder

        extra["MiniLM-L12 teacher"] = MiniLMCrossEncoder()
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
    """Run one command; bad input raises :class:`~pyterrier_matroyshka.errors.UserError` (see :func:`cli`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:  # ir_datasets logs every docstore it opens
        logging.getLogger("ir_datasets").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    {"seed": cmd_seed, "rerank": cmd_rerank, "evaluate": cmd_evaluate, "experiment": cmd_experiment}[args.command](args)
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`main`, with bad input reported as one line and exit code 2."""
    return run_cli(main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(cli())
