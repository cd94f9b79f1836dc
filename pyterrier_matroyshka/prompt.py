"""The input layout shared by scoring and training (spec section 2)::

    [BOS] ids("A: " + query) ids("\\n") ids("B: " + passage) ids("\\n") ids(prompt)
    |<-------------- query span -------------->|<- passage ->|<------ prompt span ------->|

Every piece is tokenised on its own without special tokens. The score is read at the last prompt
token. The model needs, per sequence, the query span length (BOS, query, first newline) and the
prompt span length (second newline, prompt); the passage is what lies between.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

DEFAULT_PROMPT = "Predict whether passage B contains an answer to query A."
QUERY_PREFIX = "A: "
PASSAGE_PREFIX = "B: "

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedPair:
    """One tokenised (query, passage) pair, unpadded."""

    input_ids: list[int]
    query_len: int
    prompt_len: int
    truncated: bool

    @property
    def passage_len(self) -> int:
        return len(self.input_ids) - self.query_len - self.prompt_len


class PromptEncoder:
    """Tokenises pairs into the layout above and pads batches on the right.

    Budgets (in tokens): the query (with "A: ") is cut to ``query_max_tokens``, the passage (with
    "B: ") to ``passage_max_tokens``, and then the passage again so that BOS + query + newline +
    passage fit ``joint_max_tokens``. The prompt is never cut. Use :meth:`for_inference` or
    :meth:`for_training` for the reference budgets.
    """

    def __init__(self, tokenizer, prompt: str = DEFAULT_PROMPT, *, query_max_tokens: int,
                 passage_max_tokens: int, joint_max_tokens: int, pad_to_multiple_of: int = 8):
        self.tokenizer = tokenizer
        self.query_max_tokens = query_max_tokens
        self.passage_max_tokens = passage_max_tokens
        self.joint_max_tokens = joint_max_tokens
        self.pad_to_multiple_of = pad_to_multiple_of
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.sep = self._ids("\n")
        self.pad_id = pad_token_id(tokenizer)
        self._prompt_cache: dict[str, list[int]] = {}
        self.default_prompt = prompt or DEFAULT_PROMPT

    @classmethod
    def for_inference(cls, tokenizer, prompt: Optional[str] = None, max_length: int = 512,
                      query_max_length: Optional[int] = None, **kwargs) -> "PromptEncoder":
        """Inference budgets of the reference: query <= 3/4 of ``max_length`` unless given, passage
        <= ``max_length``, BOS + query + newline + passage <= ``max_length`` + newline + prompt."""
        encoder = cls(tokenizer, prompt or DEFAULT_PROMPT, query_max_tokens=query_max_length or max_length * 3 // 4,
                      passage_max_tokens=max_length, joint_max_tokens=0, **kwargs)
        encoder.joint_max_tokens = max_length + len(encoder.sep) + len(encoder.prompt_ids())
        return encoder

    @classmethod
    def for_training(cls, tokenizer, prompt: Optional[str] = None, query_max_len: int = 32,
                     passage_max_len: int = 192, **kwargs) -> "PromptEncoder":
        """Training budgets of the reference: whole sequence <= ``query_max_len + passage_max_len``."""
        encoder = cls(tokenizer, prompt or DEFAULT_PROMPT, query_max_tokens=query_max_len,
                      passage_max_tokens=passage_max_len + query_max_len // 2, joint_max_tokens=0, **kwargs)
        encoder.joint_max_tokens = query_max_len + passage_max_len - len(encoder.prompt_ids()) - len(encoder.sep)
        return encoder

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: Optional[str] = None) -> list[int]:
        prompt = prompt or self.default_prompt
        if prompt not in self._prompt_cache:
            self._prompt_cache[prompt] = self._ids(prompt)
        return self._prompt_cache[prompt]

    def encode(self, pairs: Sequence[tuple[str, str]], prompt: Optional[str] = None) -> list[EncodedPair]:
        """Tokenise pairs (already validated strings). Logs how many were truncated."""
        if not pairs:
            return []
        queries = self.tokenizer([QUERY_PREFIX + q for q, _ in pairs], add_special_tokens=False)["input_ids"]
        passages = self.tokenizer([PASSAGE_PREFIX + p for _, p in pairs], add_special_tokens=False)["input_ids"]
        tail = self.sep + self.prompt_ids(prompt)
        encoded = [self._join(q, p, tail) for q, p in zip(queries, passages)]
        cut = sum(e.truncated for e in encoded)
        if cut:
            log.info("truncated %d of %d pairs to the token budgets (query %d, passage %d, joint %d)", cut,
                     len(encoded), self.query_max_tokens, self.passage_max_tokens, self.joint_max_tokens)
        return encoded

    def _join(self, query: list[int], passage: list[int], tail: list[int]) -> EncodedPair:
        head = self.bos + query[: self.query_max_tokens] + self.sep
        room = max(self.joint_max_tokens - len(head), 0)
        kept = passage[: min(self.passage_max_tokens, room)]
        truncated = len(query) > self.query_max_tokens or len(kept) < len(passage)
        return EncodedPair(head + kept + tail, len(head), len(tail), truncated)

    def collate(self, batch: Sequence[EncodedPair], device: Optional[torch.device] = None) -> dict[str, torch.Tensor]:
        """Right-pad a batch to its longest sequence, rounded up to ``pad_to_multiple_of``."""
        longest = max(len(e.input_ids) for e in batch)
        width = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[row, : len(e.input_ids)] = 1
        return {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "query_lengths": torch.tensor([e.query_len for e in batch], device=device),
            "prompt_lengths": torch.tensor([e.prompt_len for e in batch], device=device),
        }


def pad_token_id(tokenizer) -> int:
    """The pad id: the tokenizer's own, else ``<unk>`` as the reference training sets it (B8), else EOS."""
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0
