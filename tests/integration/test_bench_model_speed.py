"""benchmarks/bench_model_speed.py at smoke-test size: it runs the shipped training loop and ``cryojoint predict``
and writes every row of its tables (the figures themselves depend on the machine and are not checked)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import bench_model_speed as speed  # noqa: E402

#: Rows of seconds every run writes (Topaz and the compared revision are optional).
TIMED_ROWS = ("train_loop_step", "train_step_call", "sampling", "network_step", "weight_average", "loop_gap",
              "validation_pass", "validate_call", "checkpoint", "train_setup", "train_wind_down",
              "train_whole_per_step", "amortised_default_step", "default_run_per_step", "predict_in_process",
              "predict_network", "predict_non_square", "predict_cli", "predict_cli_command")
MEMORY_ROWS = ("rss_large", "rss_one", "rss_many")


@pytest.mark.slow
def test_quick_run_writes_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "speed"
    # 4 steps: one pure interval after the warm-up step, one validation pass before the last step.
    code = speed.main(["--quick", "--skip-topaz", "--train-steps", "4", "--out", str(out),
                       "--cache", str(tmp_path / "cache")])
    assert code == 0

    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["measurements"]
    for key in TIMED_ROWS:
        assert rows[key]["median_s"] > 0, key
        assert 0 < rows[key]["min_s"] <= rows[key]["median_s"], key
    assert rows["train_loop_step"]["n"] >= 1 and rows["train_loop_step"]["goal_s"] == speed.GOAL_TRAIN_STEP_S
    assert rows["predict_non_square"]["us_per_pixel"] > 0
    for key in MEMORY_ROWS:
        assert rows[key]["peak_rss_mib"] > 0 and rows[key]["wall_s"] > 0, key
    # The wrapper gives each command its own peak RSS, not this (larger) process's high-water mark.
    assert rows["rss_one"]["peak_rss_mib"] < 10 * 1024
    assert rows["rss_many"]["n_micrographs"] == speed.QUICK.rss_micrographs
    assert {"rss_many_vs_one", "rss_large_vs_goal"} <= set(report["ratios"])

    meta = report["meta"]
    assert meta["quick"] is True and meta["training"]["steps_per_run"] == 4
    assert len(meta["load_average_start"]) == 3 and len(meta["load_average_end"]) == 3
    markdown = out.with_suffix(".md").read_text()
    assert "## Training" in markdown and "## Memory" in markdown and "Load average" in markdown


def test_completion_intervals_leave_out_the_first_micrograph(tmp_path: Path) -> None:
    folder = tmp_path / "candidates"
    folder.mkdir()
    for index, seconds in enumerate((100.0, 103.5, 105.0)):
        path = folder / f"mic_{index}.csv"
        path.write_text("")
        os.utime(path, (seconds, seconds))
    assert speed.completion_intervals(tmp_path) == pytest.approx([3.5, 1.5])


def test_process_runs_report_their_own_peak_rss(tmp_path: Path) -> None:
    allocate = "import numpy; a = numpy.ones(64 * 2**20 // 8); a += 1"  # 64 MiB
    run = speed.run_process([sys.executable, "-c", allocate], dict(os.environ), tmp_path / "run.log")
    assert run.returncode == 0 and run.cpu_s > 0
    assert 64 < run.peak_rss_mib < 1024
    failed = speed.run_process([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), tmp_path / "x.log")
    assert failed.returncode == 3
    with pytest.raises(RuntimeError, match="exit code 3"):
        failed.check()

