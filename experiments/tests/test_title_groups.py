"""experiments/title_groups.py: training groups from a collection's own titles, no labels used."""
from __future__ import annotations

import pytest

from title_groups import MIN_TITLE_WORDS, mine_title_groups, titled_documents
from train.data import read_groups
from train.groups import write_groups


def test_title_groups_are_bodies_for_titles_without_labels(tmp_path, data_dir):
    from pyterrier_matroyshka.offline.collections import ensure_dataset

    groups, summary = mine_title_groups("cranfield", 12, num_negatives=5, seed=7)
    again, _ = mine_title_groups("cranfield", 12, num_negatives=5, seed=7)
    assert groups == again and summary.used == len(groups) == 12
    docs = {d.doc_id: d for d in ensure_dataset("cranfield").docs_iter()}
    for g in groups:
        (doc_id,) = g["pos_ids"]
        assert g["qid"] == f"title:{doc_id}" and g["query"] == " ".join(docs[doc_id].title.split())
        assert len(g["query"].split()) >= MIN_TITLE_WORDS
        assert doc_id not in g["neg_ids"] and len(set(g["neg_ids"])) == 5
        # every passage is a body: the title is never handed to the model as part of a passage
        assert g["pos"] == [docs[doc_id].text.strip()]
        assert g["neg"] == [docs[d].text.strip() for d in g["neg_ids"]]
    read_groups(write_groups(groups, summary, tmp_path / "titles.jsonl"))  # the training reader accepts them


def test_title_groups_refuse_untitled_collections_and_bad_counts():
    class Untitled:  # an ir_datasets dataset whose documents have no title
        Doc = type("Doc", (), {"_fields": ("doc_id", "text")})

        def docs_cls(self):
            return self.Doc

    with pytest.raises(ValueError, match="'title' and 'text'"):
        titled_documents(Untitled())
    with pytest.raises(ValueError, match="num_docs must be at least 1"):
        mine_title_groups("cranfield", 0)
