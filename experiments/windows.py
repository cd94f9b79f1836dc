"""Score long documents as windows (MaxP): does the re-ranker lose by reading only a document's start?

The demo model reads 128 tokens (BOS, query, passage), about the title and the first 90 tokens of a SciFact
abstract, while BM25 reads all of it. This splits each candidate into windows of ``--length`` model tokens
(title prepended to each, PyTerrier's ``pt.text.sliding``), scores every window with the ordinary ``score``
step, and keeps each document's best window (what ``pt.text.max_passage`` does):

    python experiments/windows.py split --candidates runs/eval/holdout/candidates --out runs/eval/holdout/windows
    python bench/evaluate_demo.py score --systems matroyshka --ratios 1 \\
        --candidates runs/eval/holdout/windows --scores runs/eval/holdout/scores_windows
    python experiments/windows.py max --scores runs/eval/holdout/scores_windows --out runs/eval/holdout/scores_maxp
    python bench/evaluate_demo.py fusion --candidates runs/eval/holdout/candidates \\
        --scores runs/eval/holdout/scores_maxp ...                      # or evaluate / significance

Where the whole documents are scored already, ``split --skip-first`` leaves window 0 out (one window in 3.4
on SciFact) and ``max --scores WINDOWS WHOLE`` lets the whole-document scores (title + the body's start, cut
to the budget) stand for it.

In a pipeline the same is ``bm25 >> pt.text.sliding(...) >> reranker >> pt.text.max_passage()``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # evaluate_demo
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_demo import BASE  # noqa: E402

SEPARATOR = "%p"  # pt.text.sliding's passage suffix: docno%p0, docno%p1, ...


def titled_bodies(dataset: str, docnos) -> pd.DataFrame:
    """``docno``, ``title`` (empty where the collection has no title field) and ``body`` (the text field
    alone) of each document, from the collection."""
    from pyterrier_matroyshka.offline.bm25 import text_loader
    from pyterrier_matroyshka.offline.collections import ensure_dataset

    frame = text_loader(dataset, ("text",), "body")(pd.DataFrame({"qid": "0", "docno": list(docnos)}))
    ds = ensure_dataset(dataset)
    title = ({d: doc.title or "" for d, doc in ds.docs_store().get_many(list(docnos)).items()}
             if "title" in ds.docs_cls()._fields else {})
    return frame.assign(title=[title.get(d, "") for d in frame["docno"]])[["docno", "title", "body"]]


def windows(docs: pd.DataFrame, length: int, stride: int, tokenizer=None) -> pd.DataFrame:
    """``docs`` (docno, title, body) as windows of ``length`` body tokens every ``stride`` (``tokenizer``'s
    tokens; whitespace words without one), each with its title prepended, docnos ``docno%pK``."""
    import pyterrier as pt

    # a document frame (no qid): pyterrier 1.1.2's result-frame path fails on short documents with a title
    split = pt.text.sliding(text_attr="body", length=length, stride=stride, prepend_attr="title",
                            tokenizer=tokenizer)(docs[["docno", "title", "body"]])
    split["body"] = split["body"].str.strip()  # an untitled window starts with the join space
    return split.rename(columns={"body": "text"})[["docno", "text"]].reset_index(drop=True)


def parent(docnos: pd.Series) -> pd.Series:
    """The document of each window docno (``d%p3`` -> ``d``)."""
    return docnos.str.rsplit(SEPARATOR, n=1).str[0]


def windowed_run(run: pd.DataFrame, parts: pd.DataFrame) -> pd.DataFrame:
    """Each row of ``run`` repeated for every window of its document (qid, rank and score kept)."""
    lookup = pd.DataFrame({"docno": parent(parts["docno"]), "window": parts["docno"]})
    out = run.merge(lookup, on="docno", how="left")
    missing = out["window"].isna()
    if missing.any():
        raise ValueError(f"{int(missing.sum())} candidate row(s) have no windows (first: docno "
                         f"{out.loc[missing, 'docno'].iloc[0]!r}); every candidate needs its text")
    return out.drop(columns=["docno"]).rename(columns={"window": "docno"})


def split_candidates(candidates: Path, out: Path, length: int, stride: int, skip_first: bool = False) -> None:
    """A candidates folder of ``bench/evaluate_demo.py`` with every document replaced by its windows of
    the base model's tokens (without window 0 if ``skip_first``: the ordinary scores stand for it)."""
    from transformers import AutoTokenizer

    from pyterrier_matroyshka.offline.base_models import resolve_pretrained

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(BASE))
    out.mkdir(parents=True, exist_ok=True)
    for run_file in sorted(candidates.glob("*.run.parquet")):
        name = run_file.name.removesuffix(".run.parquet")
        dataset = dataset_id(name)
        docs = pd.read_parquet(candidates / f"{name}.docs.parquet")
        parts = windows(titled_bodies(dataset, docs["docno"]), length, stride, tokenizer)
        run = windowed_run(pd.read_parquet(run_file), parts)
        if skip_first:
            run = run[~run["docno"].str.endswith(SEPARATOR + "0")]
        run.to_parquet(out / run_file.name)
        parts.to_parquet(out / f"{name}.docs.parquet")
        shutil.copy(candidates / f"{name}.qrels.parquet", out / f"{name}.qrels.parquet")
        print(f"{dataset}: {len(docs)} documents -> {len(parts)} windows ({len(parts) / len(docs):.2f} each), "
              f"{len(run)} pairs to score")


def dataset_id(tag: str) -> str:
    """The ir_datasets id behind a candidates file name (``beir_scifact_test`` -> ``beir/scifact/test``)."""
    from evaluate_demo import DATASETS, tag as tag_of

    known = {tag_of(d): d for d in DATASETS + ["beir/scifact/train"]}
    if tag not in known:
        raise ValueError(f"unknown candidates file {tag!r}: expected one of {sorted(known)}")
    return known[tag]


def max_passage(scores: pd.DataFrame) -> pd.DataFrame:
    """Window scores (qid, docno%pK, score columns) -> document scores: each column's maximum over a
    document's windows, documents in first-seen order."""
    return scores.assign(docno=parent(scores["docno"])).groupby(["qid", "docno"], sort=False).max().reset_index()


def max_passage_folder(folders: list[Path], out: Path) -> None:
    """:func:`max_passage` of the score files of ``evaluate_demo.py score`` folders, joined by file name and
    kept to the queries every folder scored. A folder of ordinary (whole-document) scores counts as each
    document's window 0: with ``split --skip-first`` only the later windows need scoring."""
    out.mkdir(parents=True, exist_ok=True)
    for file in sorted(folders[0].glob("*.parquet")):
        frames = [pd.read_parquet(folder / file.name) for folder in folders]
        common = set.intersection(*(set(frame["qid"]) for frame in frames))
        frame = pd.concat(frames, ignore_index=True)
        frame = frame[frame["qid"].isin(common)]
        best = max_passage(frame)
        best.to_parquet(out / file.name)
        timing = json.loads(file.with_suffix(".timing.json").read_text())
        timing.update(windows=len(frame), pairs=len(best))  # costs stay per window: x windows/pairs per document
        (out / file.with_suffix(".timing.json").name).write_text(json.dumps(timing, indent=1))
        print(f"{file.name}: {len(common)} queries, {len(frame)} windows -> {len(best)} documents "
              f"({len(frame) / len(best):.2f} each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["split", "max"])
    parser.add_argument("--candidates", type=Path, help="split: the candidates folder to window")
    parser.add_argument("--scores", type=Path, nargs="+", help="max: window score folders (and whole-document "
                        "scores standing for window 0)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--length", type=int, default=88, help="split: body tokens per window (the title is added)")
    parser.add_argument("--stride", type=int, default=88, help="split: tokens between window starts")
    parser.add_argument("--skip-first", action="store_true",
                        help="split: leave out window 0 (title + the body's start, about what the model reads of "
                             "a whole document), to be stood for by the ordinary scores in `max`")
    args = parser.parse_args()
    if args.step == "split":
        split_candidates(args.candidates, args.out, args.length, args.stride, args.skip_first)
    else:
        max_passage_folder(args.scores, args.out)


if __name__ == "__main__":
    main()
