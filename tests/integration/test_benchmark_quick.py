"""The benchmark driver end to end at test size: simulate, train, predict, score, write tables, resume."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import run as bench  # noqa: E402
from benchmarks.suite.cells import shipped_model_sha256  # noqa: E402


@pytest.mark.slow
def test_tiny_profile_writes_tables_with_every_method_and_resumes(tmp_path: Path) -> None:
    out, cache = tmp_path / "results", tmp_path / "cache"
    result = bench.run_benchmark("tiny", out, cache, skip_topaz=True, write_html=True, log=lambda _: None)

    markdown = result["paths"]["markdown"].read_text()
    for label in ("cryojoint joint (default)", "floor: LoG blob picker", "floor: Gaussian low-pass (oracle σ)",
                  "raw low-dose input (no denoising)"):
        assert label in markdown
    assert "failed:" not in markdown and "pending" not in markdown
    assert "| 20% |" in markdown

    cells = json.loads(result["paths"]["json"].read_text())["cells"]
    joint = cells["ribosome/020/cryojoint-joint-default"]
    assert joint["status"] == "ok"
    for key in ("average_precision", "best_f1", "f1_at_own", "precision_at_best", "recall_at_best"):
        assert 0.0 <= joint["picking"][key] <= 1.0, key
    for key in ("psnr_full_dose", "psnr_lowpass_full_dose", "psnr_clean_outside_masks", "frc_clean"):
        assert math.isfinite(joint["denoising"][key]), key
    assert joint["cost"]["train_peak_rss_mb"] > 0 and joint["cost"]["infer_seconds_per_micrograph"] > 0
    assert joint["cost"]["steps_done"] == bench.PROFILES["tiny"].steps
    blob = cells["ribosome/020/floor-blob"]
    assert 0.0 <= blob["picking"]["average_precision"] <= 1.0
    lowpass = cells["ribosome/020/floor-lowpass"]
    assert math.isfinite(lowpass["denoising"]["psnr_clean_outside_masks"])

    benchmark = json.loads(result["paths"]["benchmark_json"].read_text())
    ap_table = benchmark["tables"]["Picking: average precision (AP)"]
    assert ap_table["columns"] == ["20%"]
    assert ap_table["rows"]["cryojoint joint (default)"][0] == pytest.approx(joint["picking"]["average_precision"])
    assert "html" in result["paths"] and result["paths"]["html"].exists()

    started = time.perf_counter()
    again = bench.run_benchmark("tiny", out, cache, skip_topaz=True, write_html=False, log=lambda _: None)
    assert time.perf_counter() - started < 30, "finished cells must be reused, not recomputed"
    assert again["cells"]["ribosome/020/cryojoint-joint-default"]["picking"] == joint["picking"]

    # A second seed of one row: trained with that seed, averaged in the main row, no row of its own there.
    seeded = bench.run_benchmark("tiny", out, cache, skip_topaz=True, write_html=False, log=lambda _: None,
                                 seeds=[1], only=["cryojoint-joint-default"])
    replicate = seeded["cells"]["ribosome/020/cryojoint-joint-default-seed1"]
    assert replicate["status"] == "ok" and replicate["settings"]["seed"] == 1
    assert joint["settings"]["seed"] == bench.TRAIN_SEED
    markdown = seeded["paths"]["markdown"].read_text()
    assert "## Spread over training seeds" in markdown and "seed 1" not in markdown.split("## Spread")[0]
    assert "(2) |" in markdown
    ap_rows = json.loads(seeded["paths"]["benchmark_json"].read_text())["tables"]["Picking: average precision (AP)"]
    assert ap_rows["rows"]["cryojoint joint (default)"][0] == pytest.approx(
        (joint["picking"]["average_precision"] + replicate["picking"]["average_precision"]) / 2)

    # A cell computed on other data (e.g. before the simulator changed) is never shown: it is recomputed.
    assert joint["dataset"] == bench._dataset_key("ribosome", bench.PROFILES["tiny"])
    blob_path = cache / "tiny" / "cells" / "ribosome" / "020" / "floor-blob.json"
    stale = json.loads(blob_path.read_text())
    blob_path.write_text(json.dumps({**stale, "dataset": "ribosome-older-simulator", "picking": {
        **stale["picking"], "average_precision": -1.0}}))
    notes: list[str] = []
    redone = bench.run_benchmark("tiny", out, cache, skip_topaz=True, write_html=False, log=notes.append,
                                 only=["floor-blob"])
    assert redone["cells"]["ribosome/020/floor-blob"]["picking"] == blob["picking"]
    assert any("computed on other data" in note for note in notes)

    # So is a cell made from another version of a shipped model ("general" names a new file when it moves on).
    joint_path = cache / "tiny" / "cells" / "ribosome" / "020" / "cryojoint-joint-default.json"
    made = json.loads(joint_path.read_text())
    assert made["settings"]["init"] == "general"
    assert made["starting_model_sha256"] == shipped_model_sha256("general")
    joint_path.write_text(json.dumps({**made, "starting_model_sha256": "0" * 64}))
    notes.clear()
    redone = bench.run_benchmark("tiny", out, cache, skip_topaz=True, write_html=False, log=notes.append,
                                 only=["cryojoint-joint-default"])
    assert any("another version of a shipped model" in note for note in notes)
    assert redone["cells"]["ribosome/020/cryojoint-joint-default"]["starting_model_sha256"] == \
        shipped_model_sha256("general")
    assert json.loads(joint_path.read_text())["starting_model_sha256"] == shipped_model_sha256("general")


@pytest.mark.slow
def test_quick_profile_runs_topaz_beside_cryojoint(tmp_path: Path, topaz_launcher: Path) -> None:
    """The CI-size benchmark with Topaz, as the issue asks (CI installs Topaz's venv; elsewhere it may skip)."""
    assert topaz_launcher.exists()
    result = bench.run_benchmark("quick", tmp_path / "results", tmp_path / "cache", skip_topaz=False,
                                 write_html=False, log=lambda _: None)
    cells = json.loads(result["paths"]["json"].read_text())["cells"]
    assert {k: c.get("reason") for k, c in cells.items() if c["status"] != "ok"} == {}
    picker, denoiser = cells["ribosome/020/topaz-picker"], cells["ribosome/020/topaz-denoise"]
    joint = cells["ribosome/020/cryojoint-joint-default"]
    for cell in (picker, joint, cells["ribosome/020/cryojoint-detect-only-default"]):
        assert 0.0 <= cell["picking"]["average_precision"] <= 1.0
    for cell in (denoiser, joint):
        assert math.isfinite(cell["denoising"]["psnr_full_dose"])
    # Topaz never gets less training than the profile's floor, nor less time than our joint model's plan.
    profile = bench.PROFILES["quick"]
    assert picker["cost"]["steps_done"] >= profile.topaz_min_minibatches
    assert picker["cost"]["train_seconds"] > 0 and picker["cost"]["infer_seconds_per_micrograph"] > 0
    markdown = result["paths"]["markdown"].read_text()
    assert "Topaz" in markdown and "failed" not in markdown


def test_failed_cell_is_shown_with_its_reason() -> None:
    profile = bench.PROFILES["tiny"]
    specs = bench.method_specs(profile)
    cells = {"ribosome/020/floor-blob": {"status": "failed", "reason": "ValueError: no picks"}}
    lines, tables = bench.build_tables(profile, specs, ["020"], cells)
    text = "\n".join(lines)
    assert "failed: ValueError: no picks" in text
    assert "pending" in text
    assert tables["Picking: average precision (AP)"]["rows"]["floor: LoG blob picker"] == [None]


def test_seed_spread_is_mean_and_sample_sd_and_main_rows_show_the_mean() -> None:
    profile = bench.PROFILES["tiny"]
    specs = bench.method_specs(profile)
    specs += bench.seed_replicates(specs, [0, 1, 2])  # seed 0 is the main row, not a replicate
    assert [s.method_id for s in specs if s.is_replicate] == [
        "topaz-picker-seed1", "cryojoint-joint-default-seed1", "topaz-picker-seed2", "cryojoint-joint-default-seed2"]
    cells = {f"ribosome/020/{row}": {"status": "ok", "picking": {"average_precision": ap, "best_f1": 0.5}}
             for row, ap in (("cryojoint-joint-default", 0.5), ("cryojoint-joint-default-seed1", 0.6),
                             ("cryojoint-joint-default-seed2", 0.7))}
    lines, _ = bench.spread_lines(profile, specs, ["020"], cells)
    text = "\n".join(lines)
    assert "| cryojoint joint (default) | 0.600 ± 0.100 (3) |" in text
    assert "| cryojoint joint (default) | 0.500 ± 0.000 (3) |" in text
    main_lines, tables = bench.build_tables(profile, specs, ["020"], cells)
    assert not any(", seed " in line for line in main_lines)  # replicates are averaged in, not rows of their own
    assert tables["Picking: average precision (AP)"]["rows"]["cryojoint joint (default)"] == [pytest.approx(0.6)]
    assert bench.spread_lines(profile, bench.method_specs(profile), ["020"], cells) == ([], {})


def test_unknown_row_in_only_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown row 'cryojoint-jiont-default'"):
        bench.run_benchmark("tiny", tmp_path / "r", tmp_path / "c", skip_topaz=True, write_html=False,
                            log=lambda _: None, only=["cryojoint-jiont-default"])
