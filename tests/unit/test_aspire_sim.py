"""The ``aspire`` benchmark profile's data step: what it writes from ASPIRE's arrays, and how it names the folder.

ASPIRE itself runs only in its own venv (``benchmarks/.venv-aspire``); these tests feed the writer arrays shaped
as ``benchmarks/peers/aspire_generate.py`` returns them, and the last test runs the generator when that venv
exists (``python -m benchmarks.aspire_sim`` makes it).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import aspire_sim  # noqa: E402
from benchmarks.suite.datasets import load_dose_data  # noqa: E402
from benchmarks.suite.profiles import PROFILES  # noqa: E402

from cryojoint.io.mrc import read_micrograph  # noqa: E402

SIZE = 128
PROFILE = dataclasses.replace(PROFILES["aspire"], n_train=2, n_test=1, size_px=SIZE)


def gaussian_projection(sigma_px: float, half: int = 24) -> np.ndarray:
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    return np.exp(-(xx**2 + yy**2) / (2 * sigma_px**2))


def fake_arrays(spec: aspire_sim.AspireSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Arrays as the generator writes them: per micrograph 6 objects on a grid, volumes 1 and 2 alternating."""
    grid = np.array([(r, c) for r in (30, 64, 98) for c in (40, 90)])
    centres = np.stack([grid] * spec.n_micrographs)
    volume_index = np.tile(np.array([1, 2, 1, 2, 1, 2]), (spec.n_micrographs, 1))
    clean = rng.normal(size=(spec.n_micrographs, SIZE, SIZE)).astype(np.float32)
    arrays = {"clean": clean, "centres_rc": centres, "volume_index": volume_index,
              "defocus_angstrom": np.full(spec.n_micrographs, 15_000.0),
              "projection": gaussian_projection(4.0), "noise_variance_full": np.array(1.0)}
    arrays.update({f"noisy_{dose}": clean + rng.normal(size=clean.shape).astype(np.float32) for dose in spec.doses})
    return arrays


def test_diameter_is_where_the_profile_falls_to_the_fraction() -> None:
    """A Gaussian of sd σ falls to 5 % of its peak at σ·sqrt(2 ln 20) ≈ 2.45 σ (rings rounded to whole px)."""
    sigma = 4.0
    expected = 2 * np.ceil(sigma * np.sqrt(2 * np.log(1 / aspire_sim.DIAMETER_PROFILE_FRACTION)))
    assert aspire_sim.particle_diameter_px(gaussian_projection(sigma)) == pytest.approx(expected, abs=2)
    assert aspire_sim.particle_diameter_px(gaussian_projection(2 * sigma)) > aspire_sim.particle_diameter_px(
        gaussian_projection(sigma))


def test_a_projection_that_never_falls_off_is_refused() -> None:
    with pytest.raises(aspire_sim.AspireError, match="never falls off"):
        aspire_sim.particle_diameter_px(np.ones((21, 21)))


def test_the_folder_name_follows_the_spec() -> None:
    spec = aspire_sim.AspireSpec.for_profile(PROFILE)
    assert aspire_sim.dataset_key(spec) == aspire_sim.dataset_key(aspire_sim.AspireSpec.for_profile(PROFILE))
    assert aspire_sim.dataset_key(spec) != aspire_sim.dataset_key(dataclasses.replace(spec, snr_full_dose=0.2))
    assert aspire_sim.dataset_key(spec) != aspire_sim.dataset_key(dataclasses.replace(spec, seed=1))
    assert spec.doses == ("010", "020", "100")  # the profile's doses and the full-dose reference


def test_written_data_reads_back_as_a_benchmark_dose(tmp_path: Path) -> None:
    """Truth = volume 1 only (x = column, y = row), decoys apart, labels on training micrographs only and a
    subset of the truth, images in every dose folder with the pixel size, the facts load_dose_data needs."""
    spec = aspire_sim.AspireSpec.for_profile(PROFILE)
    arrays = fake_arrays(spec, np.random.default_rng(0))
    aspire_sim._write(tmp_path, spec, arrays, PROFILE, seconds=1.0)

    data = load_dose_data(tmp_path, "010", PROFILE)
    assert data.train_names == ["mic_0000", "mic_0001"] and data.test_names == ["mic_0002"]
    truth = pd.read_csv(tmp_path / "truth_exact.csv")
    particles = arrays["centres_rc"][0][arrays["volume_index"][0] == 1]
    first = truth[truth["micrograph"] == "mic_0000"]
    assert sorted(zip(first["x"], first["y"])) == sorted((float(c), float(r)) for r, c in particles)
    decoys = pd.read_csv(tmp_path / "decoys.csv")
    assert len(decoys) == len(truth) == 9
    labels = pd.read_csv(tmp_path / "labels_exact.csv")
    assert set(labels["micrograph"]) <= set(data.train_names)
    merged = labels.merge(truth, on=["micrograph", "x", "y"])
    assert len(merged) == len(labels)
    assert data.true_diameter_px == aspire_sim.particle_diameter_px(arrays["projection"])
    image = read_micrograph(tmp_path / "dose_020" / "mic_0002.mrc")
    np.testing.assert_allclose(image.data, arrays["noisy_020"][2], rtol=1e-6)
    assert image.pixel_size == pytest.approx(spec.pixel_size_angstrom)
    assert data.has_denoising_truth and data.references()["mic_0002"].shape == (SIZE, SIZE)
    assert not data.masks()["mic_0002"].any()


def test_the_profile_scores_denoising() -> None:
    assert PROFILES["aspire"].has_denoising_truth
    assert not PROFILES["real-bgal"].has_denoising_truth


@pytest.mark.skipif(not aspire_sim.DEFAULT_VENV.joinpath("bin", "python").exists(),
                    reason="ASPIRE's venv is not made (python -m benchmarks.aspire_sim makes it)")
def test_aspire_simulates_particles_where_it_says(tmp_path: Path) -> None:
    """The generator in ASPIRE's venv: particles sit at the centres it reports, dark, and the dose sets the noise."""
    spec = dataclasses.replace(aspire_sim.AspireSpec.for_profile(PROFILE), n_micrographs=2, box_px=32,
                               particles_per_micrograph=4, interparticle_distance_px=32)
    arrays = aspire_sim._simulate(spec, aspire_sim.DEFAULT_VENV / "bin" / "python", log=lambda _: None)
    clean = arrays["clean"]
    assert clean.shape == (2, SIZE, SIZE)
    rows, columns = arrays["centres_rc"][..., 0], arrays["centres_rc"][..., 1]
    at_centres = np.stack([clean[i][rows[i], columns[i]] for i in range(2)])
    assert at_centres.mean() < clean.mean() - clean.std()
    residual = {dose: np.var(arrays[f"noisy_{dose}"] - clean) for dose in ("010", "100")}
    assert residual["010"] / residual["100"] == pytest.approx(10, rel=0.05)
