"""Write ``token_golden.json``: the token ids that transformers 4.41.1 gives for the golden checkpoint's
Mistral v1 SentencePiece tokenizer, over a stress set of texts and 256 DL19 pairs.

The released Matroyshka checkpoints were trained, and the reference implementation runs, with
transformers 4.41.1 and the slow SentencePiece tokenizer (``use_fast=False``). This file pins those ids,
so tests can check that the project's tokenisation under newer transformers has not drifted.

Every text is stored the way the project tokenises it (spec 2.1, ``pyterrier_matroyshka/prompt.py``):
each piece on its own without special tokens: ``"A: " + query``, ``"B: " + passage``, ``"\\n"`` and the
prompt; the full layout is ``[BOS] query "\\n" passage "\\n" prompt``.

It needs transformers 4.41.1, which the project's own environment does not have; run it in a scratch
virtual environment (no torch needed), from the repository root, with ``../shared`` beside it::

    python3 -m venv /tmp/tok441
    /tmp/tok441/bin/pip install transformers==4.41.1 sentencepiece protobuf
    /tmp/tok441/bin/python tests/golden_tokens/make_token_golden.py

DL19 texts are not copied into the file: each pair is stored by qid/docno with the sha256 of its
texts, and the test reads the texts from ``../shared/data/msmarco-passage-dl19``.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO.parent / "shared" / "golden" / "tiny-matroyshka"
DL19 = REPO.parent / "shared" / "data" / "msmarco-passage-dl19"
OUTPUT = Path(__file__).resolve().parent / "token_golden.json"

# The project's layout constants (pyterrier_matroyshka/prompt.py; the test checks they still agree).
QUERY_PREFIX = "A: "
PASSAGE_PREFIX = "B: "
SEPARATOR = "\n"
DEFAULT_PROMPT = "Predict whether passage B contains an answer to query A."
CUSTOM_PROMPTS = ["Is  passage B  relevant to query A?", " Judge:\tdoes B answer A ?  ", "Réponds : B répond-il à A ?"]
DL19_PAIRS = 256

SPACES = [" " * n for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17, 31, 33, 64)]
UNICODE_SPACES = ["\u00a0", "\u2002", "\u2003", "\u2009", "\u200a", "\u202f", "\u205f", "\u3000", "\u200b",
                  "\u2028", "\u2029", "\u0085", "\u000b", "\u000c", "\u1680", "\ufeff"]
WORDS = ["pass  through", "the   quick    brown     fox", "end.  Next", "1  2   3", "a  (b)  c", "x  -  y",
         "word  ,  comma", "U.S.  Army", "e.g.  this", "     indented", "trailing     ", "  both  ",
         "a \t b", "a\t b", "a \tb", "tab\tseparated\tvalues", "\tlead tab", "trail tab\t", "\t\t\t",
         "a\nb", "a\n\nb", "a\n\n\nb", "a\r\nb", "a\rb", "line one\n  indented line", " \n ", "\n ", " \n",
         "\n", "\n\n", "", " ", "  ", "   ", "\t", "\r\n",
         "a\u00a0b", "\u00a0lead nbsp", "trail nbsp\u00a0", "a\u00a0\u00a0b", "a \u00a0 b", "100\u00a0km",
         "café naïve résumé", "e\u0301 combining", "Ångström", "Straße", "ﬁnance ligature", "ＡＢＣ１２３ fullwidth",
         "中文文本", "中文  文本", "日本語のテキストです。", "한국어 텍스트", "Привет,  мир", "Γειά σου κόσμε",
         "مرحبا بالعالم", "שלום  עולם", "hello שלום world", "नमस्ते दुनिया", "สวัสดีชาวโลก", "ĳ ǆ Ω ℃ ™ ½",
         "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷🇩🇪", "❤️", "emoji  😀  spaced", "😀😀😀", "a😀b", "🤷‍♀️ shrug",
         "<s>", "</s>", "<unk>", "a <s> b", "x</s>y", " <unk> ", "<s><s>", "<0x0A>", "▁", "▁▁x", "a▁b", "[INST] hi [/INST]",
         "\x00", "\x01 ctrl", "del\x7f", "\u200e\u200f marks", "\U0010fffd private", "\ue000",
         "12345.678", "3.14159e-10", "https://example.com/a_b?c=d&e=f", "user@example.org",
         "def f(x):\n    return x  # comment", "C++ && C#", "$100,000.00", "50%", "#hashtag @mention",
         "ALL CAPS TEXT", "MiXeD cAsE", "don't won't it's", "“quotes” ‘single’ — dash – en …",
         "Yes", " Yes", "yes", "A:", "B:", "A: ", "B: "]
MIXED = ("The  café\u00a0serves 中文 food 😀.\tOpen   9–5,\nMon–Fri.  Call +1 (555) 010-0199 or see "
         "https://example.com/menu?lang=fr  —  “Bon appétit!”  ")


def stress_texts() -> list[str]:
    """Hand-made texts that exercise whitespace handling, unicode and special-token look-alikes."""
    texts = list(WORDS)
    texts += [f"a{s}b" for s in SPACES] + [f"{s}lead" for s in SPACES] + [f"trail{s}" for s in SPACES]
    texts += [f"a{s}b" for s in UNICODE_SPACES] + [f"{s}lead" for s in UNICODE_SPACES]
    texts += [MIXED, MIXED * 3, " ".join(WORDS[:40]), DEFAULT_PROMPT, *CUSTOM_PROMPTS]
    return list(dict.fromkeys(texts))  # unique, order kept


def layout_pairs() -> list[tuple[str, str, str]]:
    """(query, passage, prompt) triples for full-layout sequences; "" means the default prompt."""
    pairs = [("what is  wifi", "WiFi  is a  wireless   networking technology.", ""),
             ("  leading query", "trailing passage  ", ""),
             ("tabs\tin\tquery", "newlines\nin\n\npassage", CUSTOM_PROMPTS[0]),
             ("nbsp\u00a0query", "nbsp\u00a0\u00a0passage", CUSTOM_PROMPTS[1]),
             ("中文 query", "emoji 😀  passage 👍🏽", CUSTOM_PROMPTS[2]),
             ("<s> special", "</s> look-alike <unk>", ""),
             ("", "", ""),
             (" ", "  ", ""),
             ("café?", MIXED, "")]
    return pairs


def load_dl19() -> tuple[dict[str, str], dict[str, str], list[tuple[str, str]]]:
    queries = dict(line.rstrip("\n").split("\t", 1) for line in open(DL19 / "queries.tsv", encoding="utf-8"))
    docs = dict(line.rstrip("\n").split("\t", 1) for line in open(DL19 / "docs.tsv", encoding="utf-8"))
    run = [line.split()[:3:2] for line in open(DL19 / "bm25_top100.run", encoding="utf-8")]
    return queries, docs, [(qid, docno) for qid, docno in run]


def choose_dl19_pairs(docs: dict[str, str], run: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every pair whose passage holds a run of whitespace, then non-ASCII passages, then an even spread of
    the rest, up to ``DL19_PAIRS`` in all (deterministic: run order)."""
    spaced = [p for p in run if re.search(r"\s\s", docs[p[1]])]
    rest = [p for p in run if p not in spaced]
    non_ascii = [p for p in rest if re.search(r"[^\x00-\x7f]", docs[p[1]])]
    plain = [p for p in rest if p not in non_ascii]
    chosen = spaced + non_ascii[:: max(1, len(non_ascii) // 48)][:48]
    room = DL19_PAIRS - len(chosen)
    if room < 0:
        raise SystemExit(f"{len(spaced)} pairs with whitespace runs: raise DL19_PAIRS")
    chosen += plain[:: len(plain) // room][:room]
    return chosen


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def main() -> None:
    import sentencepiece
    import transformers
    from transformers import AutoTokenizer

    if transformers.__version__ != "4.41.1":
        raise SystemExit(f"needs transformers 4.41.1 (the reference's pin), found {transformers.__version__}")
    # As the reference loads it (inference/rank_model.py): the slow SentencePiece tokenizer.
    tokenizer = AutoTokenizer.from_pretrained(str(CHECKPOINT), use_fast=False)
    non_legacy = AutoTokenizer.from_pretrained(str(CHECKPOINT), use_fast=False, legacy=False)
    fast = AutoTokenizer.from_pretrained(str(CHECKPOINT))

    def ids(text: str, tok=tokenizer) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    sep, default_prompt = ids(SEPARATOR), ids(DEFAULT_PROMPT)
    texts = stress_texts()
    stress = [{"text": t, "ids": ids(t), "query_ids": ids(QUERY_PREFIX + t), "passage_ids": ids(PASSAGE_PREFIX + t)}
              for t in texts]
    layout = []
    for query, passage, prompt in layout_pairs():
        sequence = ([tokenizer.bos_token_id] + ids(QUERY_PREFIX + query) + sep + ids(PASSAGE_PREFIX + passage)
                    + sep + ids(prompt or DEFAULT_PROMPT))
        layout.append({"query": query, "passage": passage, "prompt": prompt, "input_ids": sequence,
                       "query_len": 1 + len(ids(QUERY_PREFIX + query)) + len(sep),
                       "prompt_len": len(sep) + len(ids(prompt or DEFAULT_PROMPT))})
    queries, docs, run = load_dl19()
    dl19 = [{"qid": qid, "docno": docno, "query_sha256": sha256(queries[qid]), "passage_sha256": sha256(docs[docno]),
             "query_ids": ids(QUERY_PREFIX + queries[qid]), "passage_ids": ids(PASSAGE_PREFIX + docs[docno])}
            for qid, docno in choose_dl19_pairs(docs, run)]
    golden = {
        "about": {"made_by": "tests/golden_tokens/make_token_golden.py", "transformers": transformers.__version__,
                  "sentencepiece": sentencepiece.__version__,
                  "load": "AutoTokenizer.from_pretrained(checkpoint, use_fast=False)",
                  "tokenizer_model_sha256": hashlib.sha256((CHECKPOINT / "tokenizer.model").read_bytes()).hexdigest(),
                  "query_prefix": QUERY_PREFIX, "passage_prefix": PASSAGE_PREFIX, "separator": SEPARATOR,
                  "default_prompt": DEFAULT_PROMPT, "bos": tokenizer.bos_token_id},
        "pieces": {"separator": sep, "default_prompt": default_prompt, "yes": ids("Yes")},
        "stress": stress,
        "layout": layout,
        "dl19": dl19,
        "non_legacy": [{"text": t, "ids": ids(t, non_legacy)} for t in texts],
    }
    OUTPUT.write_text(json.dumps(golden, ensure_ascii=True, separators=(",", ":")) + "\n")
    with_runs = sum(bool(re.search(r"\s\s", docs[d["docno"]])) for d in dl19)
    fast_differs = sum(ids(t, fast) != ids(t) for t in texts)
    print(f"{OUTPUT.name}: {len(stress)} stress texts, {len(layout)} layouts, {len(dl19)} DL19 pairs "
          f"({with_runs} with whitespace runs), {OUTPUT.stat().st_size / 1e3:.0f} kB; "
          f"4.41.1 fast tokenizer differs from slow on {fast_differs} stress texts", file=sys.stderr)


if __name__ == "__main__":
    main()
