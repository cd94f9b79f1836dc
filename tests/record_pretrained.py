"""Print the EXPECTED table of tests/test_pretrained.py for a pretrained variant as now in models/ (run after
re-shipping it, then paste): BM25 top-10 of the first three SciFact test queries, fp32, top 3 per query.

    python tests/record_pretrained.py [VARIANT]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = ["L30", "L15:r2@4"]


def main(variant: str | None = None) -> None:
    from pyterrier_matroyshka import MatroyshkaReRanker
    from pyterrier_matroyshka.offline.bm25 import bm25
    from pyterrier_matroyshka.offline.collections import pt_dataset
    from pyterrier_matroyshka.pretrained import variant as named

    topics = pt_dataset("beir/scifact/test").get_topics().head(3)
    reranker = MatroyshkaReRanker.from_pretrained(variant, dtype="fp32", device="cpu")
    print(f"EXPECTED[{named(variant).name!r}] = {{")
    for shape in SHAPES:
        frame = (bm25("beir/scifact/test", num_results=10) >> reranker.with_shape(shape))(topics)
        rows = {qid: [(d, round(s, 4)) for d, s in zip(*group.sort_values("rank").head(3)[["docno", "score"]].T.values)]
                for qid, group in frame.groupby("qid", sort=False)}
        print(f"    {shape!r}: {rows!r},")
    print("}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
