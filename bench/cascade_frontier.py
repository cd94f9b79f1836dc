"""Fixed shapes against progressive-deepening cascades of the demo model: nDCG@10, GFLOP per query, ms per query.

Every system is evaluated from cached exit scores (``pyterrier_matroyshka.budget``): one multi-exit pass per
compression setting scores all candidates at every exit, fixed shapes read their exit and cascades are
replayed from the same scores, which the exactness of the resumed forward makes equal to running them
(tests/test_cascade.py, tests/test_cascade_demo.py). Time is measured by running the frontier systems
themselves on the first few queries.

    python bench/cascade_frontier.py evaluate --dataset local/msmarco-passage-dl19 --ratios 1 2 --time-queries 0
    python bench/cascade_frontier.py evaluate --dataset beir/scifact/test --queries 50 --ratios 1 2
    python bench/cascade_frontier.py evaluate --dataset beir/scifact/train --holdout --queries 40 --ratios 1 2
    python bench/cascade_frontier.py report          # tables of bench/results/cascade.json, the frontier plot

The passes are cached under ``--cache`` (re-running with timing, or other systems, scores nothing again).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
JSON = RESULTS / "cascade.json"
PLOT = RESULTS / "cascade_frontier.png"
COLUMNS = ["name", "kind", "nDCG@10", "RR@10", "GFLOP/query", "of full", "ms/query", "pass"]


def evaluate(args) -> None:
    import torch

    from pyterrier_matroyshka.budget import (candidates_for, default_systems, evaluate_systems, exit_scores,
                                             holdout_qids, plan_for)
    from pyterrier_matroyshka.shape import Shape
    from pyterrier_matroyshka import MatroyshkaReRanker
    from pyterrier_matroyshka.offline.collections import pt_dataset
    from pyterrier_matroyshka.pretrained import DEFAULT_VARIANT

    torch.set_num_threads(args.threads)
    qids = holdout_qids(args.dataset) if args.holdout else None
    candidates = candidates_for(args.dataset, args.top_k, args.queries, qids)
    reranker = MatroyshkaReRanker.from_pretrained(args.variant, dtype="fp32", device="cpu", batch_size=args.batch_size)
    systems = default_systems(reranker.scorer.exits, args.ratios)
    start = time.perf_counter()
    table = evaluate_systems(reranker, systems, candidates, pt_dataset(args.dataset).get_qrels(), cache=args.cache,
                             time_queries=args.time_queries, time_which="frontier" if args.time_queries else "none")
    variant = args.variant or DEFAULT_VARIANT
    name = f"{args.dataset}{' (held-out queries)' if args.holdout else ''}, {variant}"
    entry = {"dataset": name, "variant": variant, "queries": int(candidates["qid"].nunique()),
             "top_k": args.top_k, "candidates": len(candidates), "time_queries": args.time_queries, "threads": args.threads,
             "batch_size": args.batch_size, "cpu": cpu_name(), "seconds": round(time.perf_counter() - start, 1),
             "systems": table.to_dict(orient="records")}
    full = plan_for(reranker, Shape(reranker.scorer.exits[-1]))[0]
    scores = exit_scores(reranker, candidates, full, args.cache)  # cached by the evaluation above
    qrels = pt_dataset(args.dataset).get_qrels()
    entry["bm25_cuts"] = bm25_cuts(reranker, candidates, scores, qrels, table)
    entry["pruning"] = pruning_recall(candidates, scores, qrels)
    entry["fused_first_stage"] = fused_cascades(reranker, candidates, scores, qrels, table)
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results[name] = entry
    args.output.write_text(json.dumps(results, indent=1))
    print(f"{name}: {entry['queries']} queries x top {args.top_k}, {entry['seconds']} s")
    print(frontier_markdown(table))


PRUNERS = [4, 6, 8, 10, 12, 15]
KEEPS = [10, 20, 30, 50]


def top_by(values, qids, keep: int):
    """Per query, a mask of the ``keep`` rows with the highest values (ties: earlier row)."""
    import numpy as np
    import pandas as pd

    mask = np.zeros(len(values), dtype=bool)
    for rows in pd.Series(range(len(values))).groupby(qids, sort=False).indices.values():
        mask[rows[np.argsort(-values[rows], kind="stable")[:keep]]] = True
    return mask


def bm25_cuts(reranker, candidates, scores, qrels, table) -> list[dict]:
    """BM25's top ``k`` re-ranked at one exit, the rest in BM25's order below: pruning by the first stage
    instead of a shallow exit (cost: ``k`` pairs at that exit)."""
    import numpy as np

    from pyterrier_matroyshka.cascade_scoring import cascade_ranking
    from pyterrier_matroyshka.shape_comparison import evaluate as measure

    qids = candidates["qid"].to_numpy()
    bm25 = candidates["score"].to_numpy(dtype=float)
    per_pair = table.set_index("name")["GFLOP/pair"]
    full = table.set_index("name").loc[f"L{reranker.scorer.exits[-1]}", "GFLOP/query"]
    rows = []
    for keep in (20, 30, 50):
        kept = top_by(bm25, qids, keep)
        reaching = candidates.groupby("qid", sort=False).size().clip(upper=keep).mean()
        for depth in (15, 20, 30):
            stages = np.stack([bm25, np.where(kept, scores[depth], np.nan)])
            final = np.empty(len(candidates))
            for idx in candidates.groupby("qid", sort=False).indices.values():
                _, final[idx] = cascade_ranking(stages[:, idx])
            run = candidates[["qid", "docno"]].assign(score=final)
            gflop = float(per_pair[f"L{depth}"] * reaching)
            rows.append({"name": f"BM25 top{keep} > L{depth}", **measure(run, qrels, queries=candidates["qid"].unique()),
                         "GFLOP/query": gflop, "of full": gflop / full})
    return rows


def fused_cascades(reranker, candidates, scores, qrels, table, weight: float = 0.5) -> list[dict]:
    """Cascades whose first stage prunes by its exit's score interpolated with BM25's (z-scores per query,
    BM25's share ``weight``, as ``FirstStageFusion``), then rank the kept candidates by the deep exit: what a
    weak shallow exit gains from the first stage's evidence, at the plain cascade's cost."""
    import numpy as np

    from pyterrier_matroyshka import CascadePlan
    from pyterrier_matroyshka.cascade_scoring import cascade_ranking
    from pyterrier_matroyshka.fusion import interpolate
    from pyterrier_matroyshka.shape_comparison import evaluate as measure

    qids = candidates["qid"]
    cost = table.set_index("name")
    rows = []
    for first in (4, 6, 8, 10):
        fused = interpolate(qids, candidates["score"], pd_series(scores[first], candidates), weight)
        for keep in (20, 30, 50):
            kept = top_by(fused, qids.to_numpy(), keep)
            for last in (15, 20, 30):
                stages = np.stack([fused, np.where(kept, scores[last], np.nan)])
                final = np.empty(len(candidates))
                for idx in candidates.groupby("qid", sort=False).indices.values():
                    _, final[idx] = cascade_ranking(stages[:, idx])
                run = candidates[["qid", "docno"]].assign(score=final)
                plain = str(CascadePlan([(f"L{first}", keep), f"L{last}"]))
                rows.append({"name": f"L{first}+BM25 top{keep} > L{last}", **measure(run, qrels, queries=qids.unique()),
                             "GFLOP/query": float(cost.loc[plain, "GFLOP/query"]),
                             "of full": float(cost.loc[plain, "of full"])})
    return rows


def pd_series(values, like):
    import pandas as pd

    return pd.Series(values, index=like.index)


def pruning_recall(candidates, scores, qrels) -> list[dict]:
    """How well each first stage keeps what matters: the share of a query's judged-relevant candidates
    (recall) and of L30's top 10 that its top ``k`` holds, averaged over queries (recall: over queries
    with a relevant candidate)."""
    import numpy as np

    qids = candidates["qid"].to_numpy()
    relevant = candidates.merge(qrels[qrels["label"] >= 1][["qid", "docno"]].drop_duplicates(), on=["qid", "docno"],
                                how="left", indicator=True)["_merge"].eq("both").to_numpy()
    deepest = max(scores)
    top10 = top_by(scores[deepest], qids, 10)
    groups = list(candidates.groupby("qid", sort=False).indices.values())
    pruners = {"BM25": candidates["score"].to_numpy(dtype=float), **{f"L{d}": scores[d] for d in PRUNERS}}
    rows = []
    for name, values in pruners.items():
        row = {"first stage": name}
        for keep in KEEPS:
            kept = top_by(values, qids, keep)
            recall = [kept[g][relevant[g]].mean() for g in groups if relevant[g].any()]
            row[f"recall@{keep}"] = float(np.mean(recall))
            row[f"L{deepest} top10 kept@{keep}"] = float(np.mean([kept[g][top10[g]].mean() for g in groups]))
        rows.append(row)
    return rows


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def frontier_markdown(table) -> str:
    import pandas as pd

    from pyterrier_matroyshka.budget import pareto_frontier

    frontier = set(pareto_frontier(table)["name"])
    lines = ["| system | nDCG@10 | RR@10 | GFLOP/query | of L30 | ms/query | frontier |", "|---|---|---|---|---|---|---|"]
    for _, row in table.sort_values("GFLOP/query", kind="stable").iterrows():
        ms = "-" if pd.isna(row["ms/query"]) else f"{row['ms/query']:.0f}"
        lines.append(f"| {row['name']} | {row['nDCG@10']:.4f} | {row['RR@10']:.4f} | {row['GFLOP/query']:.0f} | "
                     f"{row['of full']:.0%} | {ms} | {'yes' if row['name'] in frontier else ''} |")
    return "\n".join(lines)


def report(args) -> None:
    import pandas as pd

    results = {}
    for path in args.inputs or [JSON]:
        results.update(json.loads(Path(path).read_text()))
    JSON.write_text(json.dumps(results, indent=1))
    for name, entry in results.items():
        table = pd.DataFrame(entry["systems"])
        print(f"\n### {name}: {entry['queries']} queries x BM25 top {entry['top_k']}\n")
        print(frontier_markdown(table))
    plot(results, PLOT)
    print(f"\nplot: {PLOT.relative_to(ROOT)}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from pyterrier_matroyshka.budget import pareto_frontier

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, (name, entry) in zip(axes[0], results.items()):
        table = pd.DataFrame(entry["systems"])
        for kind, marker in (("shape", "o"), ("cascade", "^")):
            part = table[table["kind"] == kind]
            ax.scatter(part["of full"], part["nDCG@10"], marker=marker, s=18, alpha=0.6, label=f"{kind}s")
        for key, marker, label in (("fused_first_stage", "x", "cascades pruning by exit + BM25"),
                                   ("bm25_cuts", "+", "BM25 top-k > one exit")):
            extra = pd.DataFrame(entry.get(key, []))
            if len(extra):
                ax.scatter(extra["of full"], extra["nDCG@10"], marker=marker, s=18, alpha=0.6, label=label)
        frontier = pareto_frontier(table)
        ax.step(frontier["of full"], frontier["nDCG@10"], where="post", color="black", linewidth=1, label="frontier")
        full = table.loc[table["name"] == "L30", "nDCG@10"].iloc[0]
        ax.axhline(full - 0.005, color="gray", linestyle=":", label="L30 - 0.005")
        ax.axvline(0.5, color="gray", linestyle="--", linewidth=0.8)
        ax.set_xlabel("GFLOP per query, share of L30")
        ax.set_ylabel("nDCG@10")
        ax.set_title(f"{name}\n{entry['queries']} queries x top {entry['top_k']}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("evaluate")
    run.add_argument("--dataset", required=True)
    run.add_argument("--variant", default=None, help="the pretrained variant (default: the default model)")
    run.add_argument("--queries", type=int, default=None)
    run.add_argument("--top-k", type=int, default=100)
    run.add_argument("--holdout", action="store_true", help="the training recipe's held-out queries only")
    run.add_argument("--ratios", type=int, nargs="+", default=[1, 2, 4], help="passes to run (1 = uncompressed)")
    run.add_argument("--time-queries", type=int, default=2, help="queries timed per frontier system (0: none)")
    run.add_argument("--batch-size", type=int, default=16)
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--cache", type=Path, default=ROOT / "runs" / "cascade")
    run.add_argument("--output", type=Path, default=JSON, help="JSON the dataset's table is added to")
    merge = commands.add_parser("report")
    merge.add_argument("inputs", nargs="*", help="JSON files of evaluate runs to merge into bench/results/cascade.json")
    args = parser.parse_args()
    {"evaluate": evaluate, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
