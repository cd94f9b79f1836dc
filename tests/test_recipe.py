"""train/recipe.sh and train/recipe_100min.sh: which stages run, in what order, with which settings.

The scripts run for real, with a stand-in interpreter that records each call and leaves the files a real stage
would (a finished stage's ``matroyshka_adapter.json``, an export's folder), so the plan is checked in a second.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
[ "$1" = -c ] && { echo 30; exit 0; }        # num_layers
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  value=${args[i + 1]:-}
  case ${args[i]} in
    --output_dir) mkdir -p "$value"; touch "$value/matroyshka_adapter.json" ;;
    --output) if [ "$3" = export ]; then mkdir -p "$value"; else echo '{}' > "$value"; fi ;;
    --train|--holdout) echo '{}' > "$value" ;;
  esac
done
"""


def run_recipe(tmp_path: Path, script: str, **env: str) -> list[list[str]]:
    """Run a recipe with the stand-in interpreter; the recorded calls, each as its argument list."""
    log = start_recipe(tmp_path, script, check=True, **env)
    return [shlex.split(line) for line in log.read_text().splitlines()]


def start_recipe(tmp_path: Path, script: str, check: bool, **env: str) -> Path:
    """Run a recipe with the stand-in interpreter; the file its calls were recorded in."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    settings = dict(os.environ, PY=str(fake), FAKE_LOG=str(log), RUNS=str(tmp_path / "runs"),
                    DATA=str(tmp_path / "data"), OUT=str(tmp_path / "ship"), POLL_SECONDS="0.1")
    settings.update(env)
    done = subprocess.run(["bash", f"train/{script}"], cwd=ROOT, env=settings, capture_output=True, text=True,
                          timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    log.with_suffix(".stderr").write_text(done.stderr)
    return log


def value(call: list[str], flag: str) -> str | None:
    """The value after the last ``flag`` of a call (later settings win), or None."""
    spots = [i for i, arg in enumerate(call) if arg == flag]
    return call[spots[-1] + 1] if spots else None


def stages(calls: list[list[str]]) -> dict[str, list[str]]:
    """Training stages by output folder name."""
    return {Path(value(c, "--output_dir")).name: c for c in calls if value(c, "--output_dir")}


def test_full_recipe_runs_three_epochs_compensation_and_the_naive_baseline(tmp_path):
    calls = run_recipe(tmp_path, "recipe.sh")
    runs = stages(calls)
    assert set(runs) == {"stage1_epoch1", "stage1_epoch2", "stage1", "stage2_vertical", "stage3_r2", "stage3_r4",
                         "naive_epoch1", "naive_last_exit"}
    assert value(runs["stage1"], "--init_adapter").endswith("stage1_epoch2")
    assert [value(runs[s], "--lr") for s in ("stage1_epoch1", "stage1_epoch2", "stage1")] == ["1e-3", "5e-4", "3e-4"]
    assert [value(runs[s], "--seed") for s in ("stage1_epoch2", "stage1")] == ["43", "44"]
    assert [value(runs[s], "--kd_external_weight") for s in ("stage1_epoch1", "stage1_epoch2", "stage1")] == \
        ["1.0", "1.0", "0.2"]
    assert value(runs["stage1"], "--max_steps") is None  # whole epochs
    assert value(runs["stage2_vertical"], "--max_steps") == "100"
    assert value(runs["naive_last_exit"], "--train_exits") == "30"
    exports = [c for c in calls if c[:2] == ["-m", "train"] and c[2] == "export"]
    assert len(exports) == 5  # the rank-8 stage 1 for compensation, then ship.sh's four adapters
    assert (tmp_path / "ship").is_dir()


def test_100_minute_recipe_trains_two_stage1_epochs_on_both_cores_and_short_compensation(tmp_path):
    calls = run_recipe(tmp_path, "recipe_100min.sh", RUNS=str(tmp_path / "fast"))
    runs = stages(calls)
    assert set(runs) == {"stage1_epoch1", "stage1", "stage2_vertical", "stage3_r2", "stage3_r4"}
    assert value(runs["stage1"], "--init_adapter").endswith("stage1_epoch1")
    assert value(runs["stage1"], "--kd_external_weight") == "0.2"
    assert value(runs["stage1"], "--lr") == "5e-4"
    assert value(runs["stage1"], "--seed") == "43"
    assert value(runs["stage1"], "--max_steps") == "60"
    assert value(runs["stage1_epoch1"], "--max_steps") is None
    assert {value(runs[s], "--num_threads") for s in ("stage1_epoch1", "stage1")} == {"2"}
    assert {value(runs[s], "--max_steps") for s in ("stage2_vertical", "stage3_r2", "stage3_r4")} == {"40"}
    assert all(value(runs[s], "--merge_adapters").endswith("fast/stage1_rank8")
               for s in ("stage2_vertical", "stage3_r2", "stage3_r4"))


def test_a_dry_run_setting_still_overrides_every_stage(tmp_path):
    calls = run_recipe(tmp_path, "recipe_100min.sh", EXTRA="--max_steps 1")
    assert {value(c, "--max_steps") for c in stages(calls).values()} == {"1"}


@pytest.mark.parametrize("finished", ["stage1_epoch1", "stage1"])
def test_a_rerun_skips_finished_stages(tmp_path, finished):
    (tmp_path / "fast" / finished).mkdir(parents=True)
    (tmp_path / "fast" / finished / "matroyshka_adapter.json").write_text("{}")
    runs = stages(run_recipe(tmp_path, "recipe_100min.sh", RUNS=str(tmp_path / "fast")))
    assert finished not in runs and "stage2_vertical" in runs


@pytest.mark.parametrize("setting", [{"STAGE1_EPOCHS": "4"}, {"STAGE1_EPOCHS": "1"}, {"NAIVE": "yes"}])
def test_an_unsupported_setting_is_refused_before_anything_runs(tmp_path, setting):
    log = start_recipe(tmp_path, "recipe.sh", check=False, **setting)
    assert not log.exists()  # not even the groups were built
    assert "STAGE1_EPOCHS must be 2 or 3 and NAIVE 0 or 1" in log.with_suffix(".stderr").read_text()
