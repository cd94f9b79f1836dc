"""A checkpoint's tokenizer, giving the token ids its model was trained with.

The released Matroyshka checkpoints (Mistral v1 vocabulary) were trained, and the reference runs, with
transformers 4.41.1's *slow* ``LlamaTokenizer``: the ``sentencepiece`` library encoding each piece of
text. Transformers 5 builds every Llama tokenizer as a ``tokenizers`` BPE instead, and for these
SentencePiece models that BPE gives other ids on whitespace (``'▁pass', '▁▁', 'through'`` where
SentencePiece gives ``'▁pass', '▁', '▁through'``):

* its merges are ranked by the id of the merged piece, not by the piece's score; the whitespace pieces
  ``'▁▁'`` and ``'▁▁▁▁'`` (ids 259, 260, score -1e9, SentencePiece's very last merges) come first;
* its ``Metaspace`` pre-tokenizer adds the dummy-prefix ``'▁'`` only when the text does not already start
  with a space, where SentencePiece always adds it (``"  lead"``: ``'▁▁', 'le', 'ad'`` against
  ``'▁▁', '▁lead'``).

So for a checkpoint that ships a SentencePiece ``tokenizer.model`` with a Llama tokenizer class, the
tokenizer here is transformers' own SentencePiece backend, as the slow tokenizer was; every other
tokenizer (e.g. the GPT-2 style BPE of SmolLM2 or Qwen2) is loaded by ``AutoTokenizer`` as it is.
``tests/test_token_golden.py`` checks the ids against transformers 4.41.1 on a stress set and DL19.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from transformers import AutoTokenizer
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
from transformers.utils import cached_file

from .prompt import pad_token_id

SPIECE_UNDERLINE = "▁"
# Tokenizer classes whose slow (4.x) implementation encoded with the sentencepiece library.
SENTENCEPIECE_LLAMA_CLASSES = frozenset({"LlamaTokenizer", "LlamaTokenizerFast"})
# Backbones whose tokenizer is a Llama SentencePiece one when the config names no tokenizer class.
SENTENCEPIECE_LLAMA_MODEL_TYPES = frozenset({"llama", "mistral", "cost_wise_mistral"})
# Which special tokens ``add_special_tokens=True`` wraps a text in, by (add_bos_token, add_eos_token).
_SPECIAL_TOKENS_PATTERN = {(True, False): "bos", (False, True): "eos", (True, True): "bos_eos", (False, False): "none"}


class SentencePieceLlamaTokenizer(SentencePieceBackend):
    """The Llama/Mistral tokenizer that encodes with the ``sentencepiece`` library, giving the ids of
    transformers 4.x's slow ``LlamaTokenizer`` (``legacy`` and not) under any transformers version.

    Special tokens written in the text (``<s>``, ``</s>``, ``<unk>``) become their ids, and each stretch of
    text between them is encoded on its own, as the slow tokenizer did.
    """

    def __init__(self, vocab_file: Optional[str] = None, *, add_bos_token: bool = True, add_eos_token: bool = False,
                 add_prefix_space: bool = True, legacy: Optional[bool] = None, **kwargs):
        self.add_bos_token, self.add_eos_token = bool(add_bos_token), bool(add_eos_token)
        self.add_prefix_space = add_prefix_space is not False
        kwargs.setdefault("special_tokens_pattern", _SPECIAL_TOKENS_PATTERN[self.add_bos_token, self.add_eos_token])
        # legacy unset meant legacy in transformers 4.x (with a warning), so it does here too
        super().__init__(vocab_file=vocab_file, legacy=legacy is not False, add_prefix_space=self.add_prefix_space,
                         **kwargs)

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """Pieces of ``text``. Without ``legacy`` the model's own dummy prefix is off (see the backend), so the
        ``'▁'`` is put in front here, once for the whole text, and dropped when a special token follows it."""
        if self.legacy or not text:
            return super().tokenize(text, **kwargs)
        text = text.replace(SPIECE_UNDERLINE, " ")
        pieces = super().tokenize(SPIECE_UNDERLINE + text if self.add_prefix_space else text, **kwargs)
        if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self.all_special_tokens:
            return pieces[1:]
        return pieces


def load_tokenizer(source: str):
    """The checkpoint's tokenizer, right padded, with a pad token (``<unk>`` when missing: B8).

    A Llama/Mistral SentencePiece checkpoint gets :class:`SentencePieceLlamaTokenizer` (the ids it was
    trained with), any other the tokenizer ``AutoTokenizer`` builds.
    """
    if uses_sentencepiece_llama(source):
        tokenizer = SentencePieceLlamaTokenizer.from_pretrained(source)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = pad_token_id(tokenizer)
    return tokenizer


def uses_sentencepiece_llama(source: str) -> bool:
    """True when ``source`` ships a SentencePiece ``tokenizer.model`` for a Llama tokenizer class (named in
    ``tokenizer_config.json``, or implied by a Llama/Mistral backbone when none is named)."""
    if not _optional_file(source, "tokenizer.model"):
        return False
    tokenizer_class = _json_field(source, "tokenizer_config.json", "tokenizer_class")
    if tokenizer_class is not None:
        return tokenizer_class in SENTENCEPIECE_LLAMA_CLASSES
    return _json_field(source, "config.json", "model_type") in SENTENCEPIECE_LLAMA_MODEL_TYPES


def _optional_file(source: str, name: str) -> Optional[str]:
    """The local path of ``name`` in a folder or hub repository, or None when it has no such file."""
    return cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)


def _json_field(source: str, name: str, field: str):
    path = _optional_file(source, name)
    return json.loads(Path(path).read_text(encoding="utf-8")).get(field) if path else None
