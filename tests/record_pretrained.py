"""Print the EXPECTED table of tests/test_demo_model.py for the demo model now in models/ (run after
re-shipping it, then paste): BM25 top-10 of the first three SciFact test queries, fp32, top 3 per query."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_demo_model import EXPECTED  # noqa: E402


def main() -> None:
    from pyterrier_matroyshka.offline.bm25 import bm25
    from pyterrier_matroyshka.offline.collections import pt_dataset
    from pyterrier_matroyshka.demo import demo_reranker

    topics = pt_dataset("beir/scifact/test").get_topics().head(3)
    reranker = demo_reranker(dtype="fp32", device="cpu")
    print("EXPECTED = {")
    for shape in EXPECTED:
        frame = (bm25("beir/scifact/test", num_results=10) >> reranker.with_shape(shape))(topics)
        rows = {qid: [(d, round(s, 4)) for d, s in zip(*group.sort_values("rank").head(3)[["docno", "score"]].T.values)]
                for qid, group in frame.groupby("qid", sort=False)}
        print(f"    {shape!r}: {rows!r},")
    print("}")


if __name__ == "__main__":
    main()
