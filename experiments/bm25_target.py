"""A distillation target that knows what BM25 knows: the teacher's logits fused with each passage's BM25 score.

On SciFact the MS MARCO teacher alone is only at BM25's level, but the two fused are well above either
(test nDCG@10: BM25 0.678, teacher 0.679, teacher + BM25 at weight 0.5 0.709), and the student, trained on 729
queries, learns a document prior instead of lexical evidence (experiments/results/doc_prior.md). Distilling from
the fused scores asks the student for that evidence itself, so that it need not be fused at inference.
Tried on the shipped stage 1 (``experiments/results/bm25_target_holdout.md``): the student fitted the training
groups' fused order but carried none of it to held-out queries (L30 unchanged, its order no closer to BM25's).

    python experiments/bm25_target.py --input runs/scifact/train.jsonl --output runs/scifact/train.fused.jsonl \
        --dataset beir/scifact/train --weight 0.5 [--score_in_text]
    python -m train stage1 ... --train_data runs/scifact/train.fused.jsonl

Per group (its positives and negatives, all scored for the group's query), as :mod:`pyterrier_matroyshka.fusion`
does per query at inference:

    fused = (1 - weight) * z(teacher) + weight * z(BM25),  then rescaled to the teacher's spread in the group

The rescaling keeps the target's softmax as sharp as the teacher's (the stage-1 loss takes a softmax at
temperature 1, spec 10), so only its order changes. BM25 scores are exact: every document sharing a term with
the query is retrieved (``depth`` at least the corpus size) and one that shares none scores 0.
The teacher's own logits are kept as ``teacher_pos_scores`` / ``teacher_neg_scores``, BM25's as
``bm25_pos_scores`` / ``bm25_neg_scores``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_in_text import passages_with_scores  # noqa: E402
from train.data import parse_group  # noqa: E402

from pyterrier_matroyshka.fusion import check_weight, interpolate, zscore_per_query  # noqa: E402

log = logging.getLogger(__name__)


def bm25_scores(dataset: str, queries: dict[str, str], depth: Optional[int] = None,
                batch: int = 64) -> dict[str, dict[str, float]]:
    """``{qid: {docno: BM25 score}}`` for every document of ``dataset``'s corpus that matches the query
    (PISA, the project's BM25 settings); ``depth`` defaults to the corpus size, so nothing is cut off."""
    from pyterrier_matroyshka.offline.bm25 import bm25
    from pyterrier_matroyshka.offline.collections import ensure_dataset

    depth = depth or ensure_dataset(dataset.removeprefix("irds:")).docs_count()
    retriever = bm25(dataset, num_results=depth, with_text=False)
    topics = pd.DataFrame({"qid": list(queries), "query": list(queries.values())})
    scores: dict[str, dict[str, float]] = {}
    for start in range(0, len(topics), batch):
        run = retriever(topics.iloc[start:start + batch])
        for qid, frame in run.groupby("qid", sort=False):
            scores[str(qid)] = dict(zip(frame["docno"].astype(str), frame["score"].astype(float)))
    return scores


def fused_logits(teacher: np.ndarray, bm25: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) z(teacher) + weight z(bm25)`` over one group, as inference fuses a query's candidates,
    rescaled to the teacher's mean and standard deviation in the group."""
    group = pd.Series(np.zeros(len(teacher)))
    fused = interpolate(group, pd.Series(bm25, dtype=float), pd.Series(teacher, dtype=float), weight)
    return zscore_per_query(group, pd.Series(fused)) * teacher.std() + teacher.mean()


def add_first_stage_target(source: Path, output: Path, dataset: str, weight: float = 0.5,
                           depth: Optional[int] = None, score_in_text: bool = False) -> dict:
    """Copy the groups of ``source`` (with teacher ``pos_scores``/``neg_scores`` and corpus ``pos_ids``/
    ``neg_ids``) to ``output`` with the fused target in ``pos_scores``/``neg_scores``; returns counts.
    ``score_in_text`` also writes each passage's BM25 score before its text
    (``experiments/score_in_text.py``), for a model that reads it as an input."""
    check_weight(weight)  # before the retrieval: 0 keeps the teacher, 1 is BM25 alone
    records = []
    for n, line in enumerate(Path(source).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        group = parse_group(line, f"{source}:{n}")  # malformed lines and misaligned scores, with file:line
        record = json.loads(line)
        missing = [k for k in ("qid", "pos_ids", "neg_ids") if k not in record]
        missing += [] if group.has_scores else ["pos_scores, neg_scores"]
        if missing:
            raise ValueError(f"{source}:{n} lacks {', '.join(missing)}: give groups from `python -m train groups` "
                             "with teacher scores from `python -m train teacher`")
        records.append(record)
    scores = bm25_scores(dataset, {str(r["qid"]): r["query"] for r in records}, depth)
    unmatched = 0
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as out:
        for record in records:
            by_doc = scores.get(str(record["qid"]), {})
            ids = record["pos_ids"] + record["neg_ids"]
            bm25 = np.array([by_doc.get(d, 0.0) for d in ids])
            unmatched += sum(d not in by_doc for d in ids)
            teacher = np.array(record["pos_scores"] + record["neg_scores"], dtype=float)
            fused = fused_logits(teacher, bm25, weight).tolist()
            n_pos = len(record["pos_ids"])
            record.update(teacher_pos_scores=record["pos_scores"], teacher_neg_scores=record["neg_scores"],
                          bm25_pos_scores=bm25[:n_pos].tolist(), bm25_neg_scores=bm25[n_pos:].tolist(),
                          pos_scores=fused[:n_pos], neg_scores=fused[n_pos:])
            if score_in_text:
                record.update(pos=passages_with_scores(record["pos"], bm25[:n_pos]),
                              neg=passages_with_scores(record["neg"], bm25[n_pos:]))
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    counts = dict(groups=len(records), passages_without_query_terms=unmatched, weight=weight,
                  score_in_text=score_in_text)
    log.info("BM25-fused teacher target -> %s: %s", output, counts)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description="replace teacher scores by the teacher fused with BM25 (per group)")
    parser.add_argument("--input", required=True, type=Path, help="groups with teacher scores")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--dataset", required=True, help="the ir_datasets id the groups were mined from")
    parser.add_argument("--weight", type=float, default=0.5, help="BM25's share in [0, 1]")
    parser.add_argument("--score_in_text", action="store_true",
                        help="also write each passage's BM25 score before its text, as the model's input")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(add_first_stage_target(args.input, args.output, args.dataset, args.weight, score_in_text=args.score_in_text))


if __name__ == "__main__":
    main()
