"""Pack what the GPU job needs into two folders that each fit one device call (64 MiB a call).

The base travels as its GGUF file (the exact source of the cached fp32 base), with the embedding rows
of tokens that none of the carried texts uses set to zero: the model never reads those rows for these
texts, so every score is unchanged, and the zeroed rows compress to almost nothing. The compressed file
is split in two, one half per call.

    .venv/bin/python scripts/gpu/pack.py        # -> .payload1/, .payload2/ (git-ignored via .git/info/exclude)
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pyterrier_matroyshka.offline.base_models import OFFLINE_SOURCES, PROBE_TEXT, SMOLLM2_ID, resolve_pretrained  # noqa: E402
from pyterrier_matroyshka.prompt import PromptEncoder  # noqa: E402

P1, P2 = ROOT / ".payload1", ROOT / ".payload2"
DATA = ROOT / "runs" / "scifact"
CANDIDATES = ROOT / "runs" / "eval" / "candidates"


def carried_texts() -> tuple[list[str], list[tuple[str, str]]]:
    texts, pairs = [PROBE_TEXT, "Yes"], []
    for file in ("train.jsonl", "holdout.jsonl"):
        for line in open(DATA / file):
            g = json.loads(line)
            texts += [g["query"], *g["pos"], *g["neg"]]
            pairs += [(g["query"], p) for p in g["pos"] + g["neg"]]
    for run_file in sorted(CANDIDATES.glob("*.run.parquet")):
        run = pd.read_parquet(run_file)
        docs = pd.read_parquet(str(run_file).replace(".run.", ".docs."))
        frame = run.merge(docs, on="docno")
        texts += list(frame["query"].unique()) + list(docs["text"])
        pairs += list(zip(frame["query"], frame["text"]))
    return texts, pairs


def used_token_ids(tokenizer) -> set[int]:
    texts, pairs = carried_texts()
    used = set(tokenizer.all_special_ids)
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        used.update(ids)
    encoder = PromptEncoder.for_inference(tokenizer, max_length=512)
    for encoded in encoder.encode(pairs):
        used.update(encoded.input_ids)
    print(f"{len(texts)} texts, {len(pairs)} pairs: {len(used)} of {len(tokenizer)} token ids used")
    return used


def zeroed_gguf(source: Path, target: Path, keep: set[int]) -> None:
    from gguf import GGUFReader

    shutil.copyfile(source, target)
    reader = GGUFReader(target, "r+")
    (embedding,) = [t for t in reader.tensors if t.name == "token_embd.weight"]
    rows = embedding.data.reshape(int(embedding.shape[1]), -1)  # one row of quantized blocks per token
    drop = np.array(sorted(set(range(rows.shape[0])) - keep))
    rows[drop] = 0
    reader.data.flush()
    print(f"zeroed {len(drop)} embedding rows in {target.name}")


def main() -> None:
    from transformers import AutoTokenizer

    for folder in (P1, P2):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    base = Path(resolve_pretrained(SMOLLM2_ID))
    tokenizer = AutoTokenizer.from_pretrained(base)
    gguf = ROOT / "runs" / "smollm2.zeroed.gguf"
    zeroed_gguf(OFFLINE_SOURCES[SMOLLM2_ID][0].path(), gguf, used_token_ids(tokenizer))
    packed = gguf.with_suffix(".gguf.xz")  # xz: the device unpacks it with Python's own lzma
    subprocess.run(["xz", "-k", "-f", "-9", "-T2", str(gguf)], check=True)
    blob = packed.read_bytes()
    half = len(blob) // 2 - 6 * 2**20  # part 1 travels with the wheels, part 2 with the candidates
    (P1 / "gguf.xz.part1").write_bytes(blob[:half])
    (P2 / "gguf.xz.part2").write_bytes(blob[half:])
    for wheel in (ROOT / ".whl").glob("*.whl"):
        shutil.copy(wheel, P1)
    with tarfile.open(P1 / "base_meta.tar.xz", "w:xz") as tar:  # config + tokenizer: a random twin for timing
        for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            tar.add(base / name, arcname=name)
    with tarfile.open(P1 / "data.tar.xz", "w:xz") as tar:
        for name in ("train.jsonl", "holdout.jsonl"):
            tar.add(DATA / name, arcname=name)
    shutil.copytree(CANDIDATES, P2 / "candidates")
    for folder in (P1, P2):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{folder.name}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
