"""Token ids for released-layout (Mistral v1 SentencePiece) checkpoints equal those of transformers 4.41.1,
the version the reference pins and the released checkpoints were trained with.

The golden file is made by ``tests/golden_tokens/make_token_golden.py`` (in a transformers 4.41.1 venv):
a stress set of texts (whitespace runs, tabs, newlines, NBSP and other spaces, leading/trailing spaces,
accents, CJK, RTL, emoji, special-token look-alikes), full prompt layouts, and 256 DL19 pairs, every
one whose passage holds a run of whitespace among them.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pyterrier_matroyshka import MatroyshkaScorer
from pyterrier_matroyshka.checkpoint import load_model, yes_token_id
from pyterrier_matroyshka.prompt import DEFAULT_PROMPT, PASSAGE_PREFIX, QUERY_PREFIX, PromptEncoder
from pyterrier_matroyshka.tokenizer import SentencePieceLlamaTokenizer, load_tokenizer, uses_sentencepiece_llama

GOLDEN = Path(__file__).resolve().parent / "golden_tokens" / "token_golden.json"
UNTRUNCATED = 8192  # token budget above every golden text, so the layout holds whole pieces


@pytest.fixture(scope="module")
def token_golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return load_tokenizer(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def dl19_texts(data_dir, token_golden) -> list[tuple[str, str]]:
    """The golden's DL19 (query, passage) texts, read from the shared collection and checked by sha256."""
    folder = data_dir / "msmarco-passage-dl19"
    queries = dict(line.rstrip("\n").split("\t", 1) for line in open(folder / "queries.tsv", encoding="utf-8"))
    docs = dict(line.rstrip("\n").split("\t", 1) for line in open(folder / "docs.tsv", encoding="utf-8"))
    pairs = []
    for entry in token_golden["dl19"]:
        query, passage = queries[entry["qid"]], docs[entry["docno"]]
        assert _sha256(query) == entry["query_sha256"], f"query {entry['qid']} differs from the golden's"
        assert _sha256(passage) == entry["passage_sha256"], f"passage {entry['docno']} differs from the golden's"
        pairs.append((query, passage))
    return pairs


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _mismatches(texts: list[str], got: list[list[int]], want: list[list[int]]) -> list[str]:
    return [f"{text[:60]!r}: {g[:12]} != {w[:12]}" for text, g, w in zip(texts, got, want) if g != w]


def test_golden_was_made_for_this_layout_and_vocabulary(token_golden, tiny_checkpoint):
    about = token_golden["about"]
    assert about["transformers"] == "4.41.1"
    assert (about["query_prefix"], about["passage_prefix"], about["default_prompt"]) == (
        QUERY_PREFIX, PASSAGE_PREFIX, DEFAULT_PROMPT)
    assert about["tokenizer_model_sha256"] == hashlib.sha256((tiny_checkpoint / "tokenizer.model").read_bytes()).hexdigest()


def test_released_checkpoint_gets_the_sentencepiece_tokenizer(tiny_checkpoint, tokenizer):
    assert uses_sentencepiece_llama(str(tiny_checkpoint))
    assert isinstance(tokenizer, SentencePieceLlamaTokenizer) and tokenizer.legacy
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.padding_side) == (1, 0, "right")
    assert tokenizer("hi")["input_ids"][0] == 1  # add_bos_token from tokenizer_config.json


def test_stress_texts_match_golden(token_golden, tokenizer):
    stress = token_golden["stress"]
    texts = [e["text"] for e in stress]
    problems = (_mismatches(texts, _ids(tokenizer, texts), [e["ids"] for e in stress])
                + _mismatches(texts, _ids(tokenizer, [QUERY_PREFIX + t for t in texts]), [e["query_ids"] for e in stress])
                + _mismatches(texts, _ids(tokenizer, [PASSAGE_PREFIX + t for t in texts]),
                              [e["passage_ids"] for e in stress]))
    assert not problems, f"{len(problems)} stress pieces differ from transformers 4.41.1:\n" + "\n".join(problems[:20])


def test_layout_pieces_match_golden(token_golden, tokenizer):
    encoder = PromptEncoder.for_inference(tokenizer, max_length=UNTRUNCATED)
    pieces = token_golden["pieces"]
    assert encoder.sep == pieces["separator"]
    assert encoder.prompt_ids() == pieces["default_prompt"]
    assert [yes_token_id(tokenizer)] == pieces["yes"]


def test_full_layouts_match_golden(token_golden, tokenizer):
    encoder = PromptEncoder.for_inference(tokenizer, max_length=UNTRUNCATED)
    for entry in token_golden["layout"]:
        [pair] = encoder.encode([(entry["query"], entry["passage"])], entry["prompt"] or None)
        assert pair.input_ids == entry["input_ids"], repr(entry["passage"])
        assert (pair.query_len, pair.prompt_len, pair.truncated) == (entry["query_len"], entry["prompt_len"], False)


def test_dl19_pairs_match_golden(token_golden, tokenizer, dl19_texts):
    """Every pair as the scorer encodes it: [BOS] "A: "+query "\\n" "B: "+passage "\\n" prompt."""
    golden, encoder = token_golden, PromptEncoder.for_inference(tokenizer, max_length=UNTRUNCATED)
    tail = golden["pieces"]["separator"] + golden["pieces"]["default_prompt"]
    problems = []
    for (query, passage), entry, pair in zip(dl19_texts, golden["dl19"], encoder.encode(dl19_texts)):
        want = [golden["about"]["bos"]] + entry["query_ids"] + golden["pieces"]["separator"] + entry["passage_ids"] + tail
        if pair.input_ids != want or pair.truncated:
            problems.append(f"{entry['qid']}/{entry['docno']}: {passage[:60]!r}")
    assert len(dl19_texts) == 256
    assert not problems, f"{len(problems)} DL19 pairs differ from transformers 4.41.1:\n" + "\n".join(problems[:20])


def test_non_legacy_sentencepiece_matches_golden(token_golden, tiny_checkpoint, tmp_path):
    """A checkpoint whose tokenizer_config says ``legacy: false`` gets 4.41.1's non-legacy ids."""
    for name in ("tokenizer.model", "special_tokens_map.json", "config.json"):
        shutil.copy(tiny_checkpoint / name, tmp_path / name)
    config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": False}))
    tokenizer = load_tokenizer(str(tmp_path))
    assert isinstance(tokenizer, SentencePieceLlamaTokenizer) and not tokenizer.legacy
    entries = token_golden["non_legacy"]
    texts = [e["text"] for e in entries]
    problems = _mismatches(texts, _ids(tokenizer, texts), [e["ids"] for e in entries])
    assert not problems, "\n".join(problems[:20])


def test_other_tokenizers_are_left_to_auto_tokenizer(raw_llama, tiny_checkpoint, tmp_path):
    """No SentencePiece model (e.g. a tokenizer.json-only folder, as SmolLM2's GPT-2 BPE), or a tokenizer class
    that is not Llama's: AutoTokenizer's tokenizer as it is."""
    from transformers import AutoTokenizer

    assert not uses_sentencepiece_llama(str(raw_llama))
    tokenizer = load_tokenizer(str(raw_llama))
    assert type(tokenizer) is type(AutoTokenizer.from_pretrained(str(raw_llama)))
    shutil.copy(tiny_checkpoint / "tokenizer.model", tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer"}))
    assert not uses_sentencepiece_llama(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text("{}")  # no class named: the backbone decides
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    assert uses_sentencepiece_llama(str(tmp_path))


class GoldenIdsTokenizer:
    """Gives the golden's 4.41.1 ids for the texts it knows, so a scorer can run on them."""

    def __init__(self, tokenizer, ids_by_text: dict[str, list[int]]):
        self.bos_token_id, self.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
        self.unk_token_id, self.eos_token_id = tokenizer.unk_token_id, tokenizer.eos_token_id
        self.ids_by_text = ids_by_text

    def __call__(self, texts, add_special_tokens: bool = False):
        assert not add_special_tokens
        return {"input_ids": [self.ids_by_text[t] for t in texts] if isinstance(texts, list) else self.ids_by_text[texts]}


def test_reference_compat_scores_of_whitespace_runs_use_the_golden_ids(token_golden, tiny_checkpoint, dl19_texts,
                                                                        one_thread):
    """Regression: scores of passages with runs of spaces, in reference_compat mode at a compressing shape
    (golden settings: max_length 128, batch size 4), equal those computed from the 4.41.1 ids."""
    chosen = [i for i, (_, passage) in enumerate(dl19_texts) if "  " in passage][:8]
    pairs = [dl19_texts[i] for i in chosen]
    golden = token_golden
    ids_by_text = {"\n": golden["pieces"]["separator"], DEFAULT_PROMPT: golden["pieces"]["default_prompt"]}
    for i, (query, passage) in zip(chosen, pairs):
        ids_by_text[QUERY_PREFIX + query] = golden["dl19"][i]["query_ids"]
        ids_by_text[PASSAGE_PREFIX + passage] = golden["dl19"][i]["passage_ids"]
    model, tokenizer = load_model(str(tiny_checkpoint))
    settings = dict(model=model, device="cpu", batch_size=4, max_length=128, reference_compat=True)
    shape = dict(cutoff_layers=[6, 8], compress_layers=[2, 4], compress_ratio=2)
    got = MatroyshkaScorer(tokenizer=tokenizer, **settings).compute_score(pairs, **shape)
    want = MatroyshkaScorer(tokenizer=GoldenIdsTokenizer(tokenizer, ids_by_text), **settings).compute_score(pairs, **shape)
    assert len(pairs) == 8 and got == want
