"""``cryojoint train`` under ``torchrun`` with 2 gloo processes: replicas stay identical, resume is bit-exact."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cryojoint.checkpoint import load_model
from cryojoint.io.coords import write_coordinates
from cryojoint.io.mrc import write_mrc
from cryojoint.simulation import simulate

PROCESSES = 2
LAUNCH_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, Path]:
    """Three 256 px fields, every true particle as a label (so a micrograph is held out for validation)."""
    root = tmp_path_factory.mktemp("torchrun")
    data = simulate(n_micrographs=3, size=256, seed=5, preset="ruvb")
    mics = []
    for mic in data.micrographs["dose_060"]:
        mics.append(str(write_mrc(root / f"{mic.name}.mrc", mic.data, mic.pixel_size)))
    labels = root / "labels.star"
    write_coordinates(data.truth[["micrograph", "x", "y"]], labels)
    # Tiny network; a constant learning rate, so 6 steps + 6 resumed steps follow the same schedule as 12.
    config = root / "tiny.yaml"
    config.write_text(
        "model:\n  unet_encoder_channels: 8\n  unet_decoder_channels: 16\n  unet_depth: 3\n"
        "  detector_channels: [8, 16, 16]\n"
        "train:\n  eval_every: 3\n  checkpoint_every: 3\n  rampup_fraction: 0.0\n  rampdown_fraction: 0.0\n"
    )
    return mics, labels, config


def torchrun_train(dataset: tuple[list[str], Path, Path], out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node 2 -m cryojoint.cli train ...`` (a free port, 1 thread each)."""
    mics, labels, config = dataset
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(PROCESSES),
               "-m", "cryojoint.cli", "train", *mics, "--labels", str(labels), "--out", str(out),
               "--particle-diameter", "22px", "--config", str(config), "--device", "cpu", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_two_processes_keep_identical_parameters_and_resume_bit_exactly(
    dataset: tuple[list[str], Path, Path], tmp_path: Path
) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    torchrun_train(dataset, straight, "--steps", "12")
    done = torchrun_train(dataset, interrupted, "--steps", "6")
    assert "finished after 6 steps" in done.stdout
    assert done.stdout.count("step 3: validation") == 1  # only rank 0 logs

    first = checkpoint(interrupted)
    assert first["world_size"] == PROCESSES and first["state"]["step"] == 6
    digests = first["parameter_digests"]
    assert len(digests) == PROCESSES and len(set(digests)) == 1  # the same parameters on both ranks ...
    rank_states = [s["numpy_rng"]["state"] for s in first["rank_random_states"]]
    assert rank_states[0] != rank_states[1]  # ... although each rank sampled its own batches
    model = load_model(interrupted / "model.pt")
    assert model.meta["best_step"] in (3, 6)

    shutil.copy(interrupted / "metrics.csv", tmp_path / "metrics_at_6.csv")
    done = torchrun_train(dataset, interrupted, "--steps", "12", "--resume")
    assert "finished after 12 steps" in done.stdout
    resumed, reference = checkpoint(interrupted), checkpoint(straight)
    assert resumed["state"]["step"] == 12
    for name, tensor in reference["network"].items():
        assert torch.equal(resumed["network"][name], tensor), name
    assert resumed["parameter_digests"] == reference["parameter_digests"]
    metrics = (interrupted / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 4 and metrics[:3] == (tmp_path / "metrics_at_6.csv").read_text().splitlines()
    load_model(interrupted / "model.pt")


@pytest.mark.slow
def test_sequential_mode_rewraps_when_the_denoiser_freezes(
    dataset: tuple[list[str], Path, Path], tmp_path: Path
) -> None:
    run = tmp_path / "sequential"
    torchrun_train(dataset, run, "--steps", "12", "--mode", "sequential")
    saved = checkpoint(run)
    assert saved["state"]["stage"] == 1 and saved["state"]["step"] == 24  # each stage: the whole 12-step budget
    assert len(set(saved["parameter_digests"])) == 1
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "loss_detect" in header and "validation_ap" in header
    assert load_model(run / "model.pt").meta["mode"] == "sequential"
