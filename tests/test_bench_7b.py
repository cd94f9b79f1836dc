"""bench/bench_7b.py end to end on a CPU through its GPU wrapper, with the tiny 32-block Mistral config."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZES = [2, 4]
SMALL = f"--batch-sizes {' '.join(map(str, BATCH_SIZES))} --max-length 32 --dl19-pairs 6 --warmup 0 --iters 1"


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("bench_7b")


@pytest.fixture(scope="module")
def assets(bench, tmp_path_factory, data_dir, golden_dir):
    folder = tmp_path_factory.mktemp("assets")
    bench.main(["--pack", str(folder)])
    return folder


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
    """``scripts/gpu/bench_7b.sh`` as the device call runs it, but with the tiny config on this CPU."""
    out = tmp_path_factory.mktemp("out")
    env = dict(os.environ, ASSETS=str(assets), OUT=str(out), CONFIG="tiny", PYTHON=sys.executable,
               BENCH_ARGS=f"{SMALL} --device cpu", OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", "scripts/gpu/bench_7b.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "bench_7b.json").read_text()), (out / "bench_7b.md").read_text()


def test_pack_carries_the_mistral_tokenizer_and_dl19_pairs(assets, tiny_checkpoint):
    from pyterrier_matroyshka.tokenizer import load_tokenizer

    packed, shared = load_tokenizer(str(assets / "tokenizer")), load_tokenizer(str(tiny_checkpoint))
    assert type(packed) is type(shared)
    text = ["A: what is a panda?", "B: The  giant panda is a bear.\nPredict whether passage B contains an answer."]
    assert packed(text)["input_ids"] == shared(text)["input_ids"]
    pairs = [json.loads(line) for line in (assets / "dl19_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 256 and all(len(p) == 2 and p[0] and p[1] for p in pairs)


def test_every_shape_and_batch_size_has_a_finite_row(run, bench):
    result, _ = run
    rows = {(r["system"], r["batch_size"]): r for r in result["rows"]}
    assert set(rows) == {(s, b) for s in ["plain"] + bench.SHAPES for b in BATCH_SIZES}
    for row in rows.values():
        assert row["status"] == "ok"
        assert row["pairs"] == row["batch_size"]  # one batch per timed call (tiny default)
        for key in ("seconds", "pairs_per_s", "flop_predicted_speedup", "speedup", "realised", "vs_plain"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["system"], key)
        assert row["peak_bytes"] is None  # no allocator statistics on a CPU, rather than a made-up figure
    for b in BATCH_SIZES:
        assert rows[("L32", b)]["speedup"] == 1.0 and rows[("plain", b)]["vs_plain"] == 1.0
        assert rows[("L8", b)]["flop_predicted_speedup"] > rows[("L16", b)]["flop_predicted_speedup"] > 1
        assert rows[("L16,24,32", b)]["flop_predicted_speedup"] == pytest.approx(1.0)


def test_self_check_ran_before_timing_and_passed(run):
    result, markdown = run
    check = result["check"]
    assert check["passed"] and check["finite_at_every_shape"]
    assert check["tolerance"] <= 1e-4 * max(1.0, check["max_abs_score"])  # fp32 on a CPU: rounding only
    assert check["layer_loop_vs_plain"] <= check["tolerance"]
    assert "PASSED" in markdown


def test_report_names_the_kernels_the_compression_and_the_dl19_rows(run):
    result, markdown = run
    assert result["device"]["type"] == "cpu" and "CPU" in result["device"]["name"]
    assert "Not a performance figure" in markdown and "not judged (no GPU)" in markdown
    paths = {row["path"] for row in result["sdpa"]}
    assert paths == {"L32", "L32:r2@8", "plain"}
    for row in result["sdpa"]:
        assert row["calls"] > 0 and row["kernel"] and "MATH" in row["backends"]
    loop = [row for row in result["sdpa"] if row["path"] == "L32"]
    assert [row["mask"] for row in loop] == ["none"] and loop[0]["is_causal"]  # no mask: causal kernels
    assert {row["query"][2] for row in result["sdpa"] if row["path"] == "L32:r2@8"} != {loop[0]["query"][2]}
    assert result["compression"]["share_of_block"] > 0
    dl19 = result["dl19"]
    assert [r["system"] for r in dl19["rows"]] == ["plain", "L32", "L16", "L32:r2@8"]
    assert all(r["status"] == "ok" and math.isfinite(r["pairs_per_s"]) for r in dl19["rows"])
    assert 0 <= dl19["padding"]["waste"] < 1
    for system in ["plain", "L32", "L24:r2@8,16"]:
        assert f"| {BATCH_SIZES[0]} | {system} |" in markdown


def test_self_check_catches_a_wrong_head(bench, tiny_checkpoint, one_thread):
    """The check can fail: a plain forward scored by another exit's head is caught."""
    from pyterrier_matroyshka import MatroyshkaScorer
    from pyterrier_matroyshka.tokenizer import load_tokenizer

    model = bench.build_model(bench.TINY, torch.float32, torch.device("cpu"))
    scorer = MatroyshkaScorer(model=model, tokenizer=load_tokenizer(str(tiny_checkpoint)), device="cpu",
                              max_length=32)
    plain = bench.plain_scorer(model, scorer.encoder(), torch.device("cpu"))  # holds the depth-32 head
    assert bench.self_check(scorer, plain, torch.float32, 3)["passed"]
    model.lm_head[-1] = model.lm_head[0]  # the layer loop now scores depth 32 with the depth-4 head
    wrong = bench.self_check(scorer, plain, torch.float32, 3)
    assert not wrong["passed"] and wrong["layer_loop_vs_plain"] > wrong["tolerance"]


def test_gpu_defaults_are_the_issues_grid(bench):
    args = bench.parse_args([])
    assert (args.config, args.max_length, args.batch_sizes) == ("mistral-7b", 512, [16, 32, 64])
    assert bench.SHAPES == ["L32", "L24", "L16", "L8", "L16,24,32", "L32:r2@8", "L32:r4@8", "L24:r2@8,16"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--shapes", "L33"])


def test_the_7b_model_is_built_in_the_released_layout(bench):
    """Built on the meta device (no memory): Mistral-7B's blocks, a head at every exit 4..32, released names."""
    model = bench.build_model(bench.MISTRAL_7B, torch.bfloat16, torch.device("meta"))
    assert model.config.model_type == "mistral" and model.exit_depths == list(range(4, 33))
    hidden, dims = 4096, model.dims
    assert (dims.heads, dims.kv_heads, dims.head_dim, dims.intermediate) == (32, 8, 128, 14336)
    expected = 32 * (dims.block_params + 2 * hidden) + 32000 * hidden + hidden + 29 * hidden
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == expected and 7.1e9 < parameters < 7.2e9
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert bench.weights_bytes(model) >= 2 * parameters
    keys = set(model.state_dict())
    assert {"model.layers.31.mlp.down_proj.weight", "lm_head.28.linear_head.weight", "model.norm.weight"} <= keys
