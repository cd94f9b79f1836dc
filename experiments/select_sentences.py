"""Query-aware sentence selection for the candidates of ``bench/evaluate_demo.py``: does the re-ranker gain by
reading the sentences that match the query instead of the document's start, at the same cost?

    python experiments/select_sentences.py --candidates runs/eval/holdout/candidates --out runs/eval/holdout/selected
    python bench/evaluate_demo.py score --systems matroyshka --ratios 1 \\
        --candidates runs/eval/holdout/selected --scores runs/eval/holdout/scores_selected
    python bench/evaluate_demo.py significance ... --versus-scores runs/eval/holdout/scores   # paired

Each pair gets its own passage (the run file's ``text`` column): the title, then the body's sentences picked
by :class:`sentence_selection.SentenceSelector` (experiments/sentence_selection.py) within ``--budget`` base-model tokens.
In a pipeline the same is ``bm25 >> SentenceSelector(125, reranker.scorer.tokenizer) >> reranker``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # evaluate_demo
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_demo import BASE, read_candidates  # noqa: E402
from windows import dataset_id, titled_bodies  # noqa: E402


def selected_run(run: pd.DataFrame, docs: pd.DataFrame, selector) -> pd.DataFrame:
    """``run`` (candidates with texts) with each pair's ``text`` replaced by ``selector``'s choice from the
    document's ``title`` and ``body`` (``docs``); rows, their order and the other columns unchanged."""
    frame = run.drop(columns=["text"]).merge(docs[["docno", "title", "body"]], on="docno", how="left",
                                             validate="many_to_one")
    return selector(frame).rename(columns={"body": "text"})[list(run.columns)]


def select_candidates(candidates: Path, out: Path, budget: int) -> None:
    """A copy of the ``candidates`` folder whose run files carry each pair's selected passage."""
    from transformers import AutoTokenizer

    from pyterrier_matroyshka.offline.base_models import resolve_pretrained
    from sentence_selection import SentenceSelector

    selector = SentenceSelector(budget, AutoTokenizer.from_pretrained(resolve_pretrained(BASE)),
                                text_field="body", title_field="title")
    out.mkdir(parents=True, exist_ok=True)
    for run_file in sorted(candidates.glob("*.run.parquet")):
        name = run_file.name.removesuffix(".run.parquet")
        dataset = dataset_id(name)
        run = read_candidates(dataset, candidates)
        selected = selected_run(run, titled_bodies(dataset, run["docno"].unique()), selector)
        changed = int((selected["text"] != run["text"]).sum())
        selected.to_parquet(out / run_file.name)
        for suffix in (".docs.parquet", ".qrels.parquet"):
            shutil.copy(candidates / f"{name}{suffix}", out / f"{name}{suffix}")
        print(f"{dataset}: {len(run)} pairs, {changed} passages changed ({changed / len(run):.0%}); "
              f"the others fit {budget} tokens whole")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=Path, required=True, help="a candidates folder of evaluate_demo.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=int, default=125,
                        help="passage tokens (title included); the demo model reads 128 with 'B: '")
    args = parser.parse_args()
    select_candidates(args.candidates, args.out, args.budget)


if __name__ == "__main__":
    main()
