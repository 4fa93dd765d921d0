"""End to end through the real CLI on a tiny simulated dataset: simulate -> train -> predict -> evaluate -> report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cryojoint.io.coords import read_coordinates
from cryojoint.io.mrc import read_micrograph


def cryojoint(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cryojoint.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_cli_pipeline_on_a_tiny_simulated_dataset(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    done = cryojoint("simulate", str(data), "--micrographs", "3", "--size", "256", "--seed", "5",
                     "--preset", "ruvb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    mics = sorted(str(p) for p in (data / "dose_060").glob("*.mrc"))
    assert len(mics) == 3

    done = cryojoint("train", *mics, "--labels", str(data / "labels.star"), "--out", str(run), "--steps", "12",
                     "--particle-diameter", "22", "--config", str(_tiny_config(tmp_path)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (run / "model.pt").is_file() and (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()

    pred = run / "pred"
    done = cryojoint("predict", str(run / "model.pt"), *mics, "--out", str(pred), "--formats", "star,box,csv",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for mic in mics:
        name = Path(mic).stem
        denoised = read_micrograph(pred / "denoised" / f"{name}.mrc")
        assert denoised.shape == read_micrograph(mic).shape
        assert denoised.pixel_size == pytest.approx(read_micrograph(mic).pixel_size, rel=1e-4)
        assert (pred / "heatmaps" / f"{name}.mrc").is_file()
        assert (pred / "picks" / "box" / f"{name}.box").is_file()
    picks = read_coordinates(pred / "picks.star")
    assert len(picks) > 0 and set(picks["micrograph"]) <= {Path(m).stem for m in mics}
    record = json.loads((pred / "predict.json").read_text())
    assert record["threshold_was_automatic"] is True

    # A rerun skips what is done and still succeeds.
    again = cryojoint("predict", str(run / "model.pt"), *mics, "--out", str(pred), cwd=tmp_path)
    assert again.returncode == 0 and "3 already done" in again.stdout

    report_json = tmp_path / "eval.json"
    done = cryojoint("evaluate", "--picks", str(pred / "picks.star"), "--truth", str(data / "truth.star"),
                     "--denoised", str(pred / "denoised"), "--reference", str(data / "dose_100"),
                     "--clean", str(data / "clean"), "--json", str(report_json), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads(report_json.read_text())
    assert 0.0 <= results["picking"]["overall"]["average_precision"] <= 1.0
    # The default match radius is the TRUE particle radius (simulation.yaml beside truth.star), not the
    # --particle-diameter 22 the model was trained with.
    true_diameter = yaml.safe_load((data / "simulation.yaml").read_text())["particle_diameter_px"]
    assert results["match_radius_px"] == pytest.approx(true_diameter / 2)
    assert results["match_radius_source"] == f"truth: particle radius from {data / 'simulation.yaml'}"
    assert f"match radius {true_diameter / 2:g} px (truth: particle radius" in done.stdout

    done = cryojoint("report", str(run), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (run / "report.html").stat().st_size > 1000


def _tiny_config(folder: Path) -> Path:
    """Small network and frequent validation so the test runs in seconds on two cores."""
    path = folder / "tiny.yaml"
    path.write_text(
        "model:\n  unet_encoder_channels: 8\n  unet_decoder_channels: 16\n  unet_depth: 3\n"
        "  detector_channels: [8, 16, 16]\n"
        "train:\n  eval_every: 6\n  checkpoint_every: 6\n"
        "predict:\n  tile_size_px: 128\n  tile_overlap_px: 32\n"
    )
    return path
