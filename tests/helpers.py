"""Test helpers: tiny random bases and toy training groups (seconds on a CPU)."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

import torch


def tiny_base(folder: Path, tokenizer_source: str, layers: int = 6, hidden: int = 32, seed: int = 0,
              model_type: str = "llama") -> Path:
    """Save a tiny random causal LM (raw base LM, the tokenizer's vocabulary) with its tokenizer into ``folder``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), hidden_size=hidden,
                                  intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # peaked attention, so that compression weights matter
        for name, p in model.named_parameters():
            if "proj" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


WORDS = ("apple banana cherry delta echo falcon gamma harbor island jungle kettle lemon mango nectar ocean "
         "pepper quartz river salmon tiger umbrella violet walnut xenon yellow zebra").split()


def toy_groups(path: Path, n: int = 8, negatives: int = 5, scores: bool = True, seed: int = 0,
               short: Optional[int] = None) -> Path:
    """Write ``n`` toy groups: the positive repeats the query's words, negatives are other words.
    ``short`` gives the first group only that many negatives."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            words = rng.sample(WORDS, 3)
            others = [w for w in WORDS if w not in words]
            neg = [" ".join(rng.sample(others, 6)) for _ in range(short if (short is not None and i == 0) else negatives)]
            record = dict(qid=str(i), query=" ".join(words), pos=[" ".join(words * 2)], neg=neg)
            if scores:
                record["pos_scores"] = [3.0]
                record["neg_scores"] = [rng.uniform(-2, 1) for _ in neg]
            f.write(json.dumps(record) + "\n")
    return path
