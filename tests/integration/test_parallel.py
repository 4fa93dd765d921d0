"""Dask scale-out gives the same picks as the in-process path, and one corrupt file does not stop the others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryojoint.config import CryojointConfig
from cryojoint.io.coords import read_coordinates
from cryojoint.prediction import predict_files
from cryojoint.runtime import threads_per_worker
from cryojoint.simulation import simulate, write_dataset
from cryojoint.training import train

TINY = {
    "model": {"unet_encoder_channels": 8, "unet_decoder_channels": 16, "unet_depth": 3,
              "detector_channels": [8, 16, 16]},
    "train": {"steps": 6, "eval_every": 6, "checkpoint_every": 6},
    "data": {"particle_diameter_px": 22.0},
    "predict": {"tile_size_px": 128, "tile_overlap_px": 32},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("parallel")
    dataset = simulate(n_micrographs=3, size=192, seed=11, preset="ruvb")
    write_dataset(dataset, root / "data")
    mics = sorted((root / "data" / "dose_060").glob("*.mrc"))
    result = train(mics, dataset.labels, root / "run", CryojointConfig.from_dict(TINY), progress=False)
    return result.model_path, mics


def test_threads_are_shared_between_workers() -> None:
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(1, cores=8) == 8
    assert threads_per_worker(16, cores=4) == 1


@pytest.mark.slow
def test_local_cluster_matches_in_process_and_survives_a_corrupt_file(
    trained: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    model, mics = trained
    corrupt = tmp_path / "broken.mrc"
    corrupt.write_bytes(b"\x00" * 100)

    # Scores are log-odds: -100 keeps every candidate peak.
    serial = predict_files(model, mics, tmp_path / "serial", threshold=-100.0, progress=False)
    parallel = predict_files(model, [*mics, corrupt], tmp_path / "dask", threshold=-100.0, progress=False,
                             workers=2, scheduler="local")
    assert serial.failures == {}
    assert set(parallel.failures) == {"broken"}
    assert "broken.mrc" in parallel.failures["broken"]

    a = read_coordinates(tmp_path / "serial" / "picks.star").sort_values(["micrograph", "x", "y"])
    b = read_coordinates(tmp_path / "dask" / "picks.star").sort_values(["micrograph", "x", "y"])
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a[["x", "y"]].to_numpy(), b[["x", "y"]].to_numpy(), atol=1e-3)
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), atol=1e-4)

    # A rerun resumes: only the corrupt file is tried again, and it still fails.
    rerun = predict_files(model, [*mics, corrupt], tmp_path / "dask", threshold=-100.0, progress=False,
                          workers=2, scheduler="local")
    assert rerun.n_skipped == len(mics) and set(rerun.failures) == {"broken"}


@pytest.mark.slow
def test_a_shipped_model_is_found_by_name_on_every_worker(trained: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """`cryojoint denoise --workers 2` runs the shipped model by name: each worker finds it in its installation (a
    resolved path of the name pointed into the current folder and failed every micrograph)."""
    from cryojoint.io.mrc import read_micrograph

    _, mics = trained
    options = {"outputs": ["denoised"], "particle_diameter_px": 72.0, "denoise_at_input_size": True,
               "progress": False}
    serial = predict_files("general", mics, tmp_path / "serial", **options)
    parallel = predict_files("general", mics, tmp_path / "dask", workers=2, scheduler="local", **options)
    assert serial.failures == parallel.failures == {}
    for mic in mics:
        a = read_micrograph(tmp_path / "serial" / "denoised" / mic.name).data
        b = read_micrograph(tmp_path / "dask" / "denoised" / mic.name).data
        assert a.shape == read_micrograph(mic).shape
        np.testing.assert_allclose(a, b, atol=1e-4)
