"""The simulator is the ground truth of every quality figure: check its truth, noise and files."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import yaml

from cryojoint.errors import UserInputError
from cryojoint.io.mrc import read_micrograph
from cryojoint.simulation import (
    MASK_NONE,
    NO_DECOYS,
    SimulationConfig,
    dose_frames,
    list_presets,
    simulate,
    write_dataset,
)

SMALL = 192


@pytest.fixture(scope="module")
def dataset():
    config = SimulationConfig.for_preset(
        "ruvb", n_micrographs=2, size_px=(SMALL, SMALL + 32), seed=3, contamination_per_micrograph=(1, 2),
        carbon_probability=1.0, labelled_fraction=(1.0, 1.0),
    )
    return simulate(config=config)


def _far_from_objects(data, name: str, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of micrograph ``name`` at least a particle diameter from every particle and decoy centre."""
    from scipy import ndimage

    centres = np.concatenate([table.loc[table["micrograph"] == name, ["y", "x"]].to_numpy()
                              for table in (data.truth, data.decoys)])
    empty = np.ones(shape, dtype=bool)
    empty[np.clip(centres[:, 0].astype(int), 0, shape[0] - 1), np.clip(centres[:, 1].astype(int), 0, shape[1] - 1)] = (
        False)
    return ndimage.distance_transform_edt(empty) > data.particle_diameter_px


def _psnr(image: np.ndarray, reference: np.ndarray, fraction: float) -> float:
    """PSNR of a dose image scaled to full dose, peak = reference range."""
    mse = np.mean((image / fraction - reference) ** 2)
    return float(10 * np.log10(np.ptp(reference) ** 2 / mse))


def test_presets_ship_ribosome_and_a_smaller_complex():
    presets = list_presets()
    assert "ribosome" in presets and len(presets) >= 2


def test_dataset_shapes_and_keys(dataset):
    assert list(dataset.micrographs) == ["dose_100", "dose_060", "dose_020", "dose_010"]
    for images in dataset.micrographs.values():
        assert [m.name for m in images] == ["mic_0000", "mic_0001"]
        assert all(m.data.shape == (SMALL, SMALL + 32) and m.data.dtype == np.float32 for m in images)
        assert all(m.pixel_size == pytest.approx(5.3) for m in images)
    assert all(mask.dtype == np.uint8 and mask.shape == (SMALL, SMALL + 32) for mask in dataset.masks)
    assert set(dataset.truth.columns) >= {"micrograph", "x", "y", "angle_rot", "angle_tilt", "angle_psi",
                                          "defocus_u", "defocus_v"}
    assert 15 < dataset.particle_diameter_px < 30  # RuvB hexamer ~118 Å at 5.3 Å/px


def test_truth_sits_on_particle_signal(dataset):
    """The clean image differs from its smooth background more at truth centres than at random points of empty
    ice (a diameter from every particle and decoy)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    radius = dataset.particle_diameter_px / 2
    at_truth, at_random = [], []
    for clean, mask in zip(dataset.clean, dataset.masks, strict=True):
        image = clean.data.astype(np.float64)
        detail = ndimage.gaussian_filter(np.abs(image - ndimage.gaussian_filter(image, 2 * radius)), radius / 3)
        rows = dataset.truth[dataset.truth["micrograph"] == clean.name]
        at_truth += [detail[int(round(y)), int(round(x))] for x, y in rows[["x", "y"]].to_numpy()]
        empty = _far_from_objects(dataset, clean.name, mask.shape)
        free = np.argwhere(ndimage.binary_erosion(mask == MASK_NONE, iterations=int(radius)) & empty)
        picks = free[rng.choice(len(free), size=200)]
        at_random += [detail[r, c] for r, c in picks]
    assert len(at_truth) > 10
    assert np.median(at_truth) > 1.3 * np.median(at_random)


def test_masks_exclude_particles_and_hold_supports(dataset):
    for mask, clean in zip(dataset.masks, dataset.clean, strict=True):
        rows = dataset.truth[dataset.truth["micrograph"] == clean.name]
        cols = np.clip(np.round(rows["x"].to_numpy()).astype(int), 0, mask.shape[1] - 1)
        rws = np.clip(np.round(rows["y"].to_numpy()).astype(int), 0, mask.shape[0] - 1)
        assert np.all(mask[rws, cols] == MASK_NONE)
    assert any((mask > 0).any() for mask in dataset.masks)


def test_labels_are_a_subset_near_truth(dataset):
    assert len(dataset.labels) > 0
    for _, label in dataset.labels.iterrows():
        rows = dataset.truth[dataset.truth["micrograph"] == label["micrograph"]]
        distance = np.hypot(rows["x"] - label["x"], rows["y"] - label["y"]).min()
        assert distance < 0.25 * dataset.particle_diameter_px


def test_dose_nesting_is_exact_with_frames(dataset):
    frames = dose_frames(dataset, 1, 10)
    assert frames.shape == (10, SMALL, SMALL + 32)
    cumulative = np.cumsum(frames.astype(np.float64), axis=0)
    for key, n_frames in (("dose_010", 1), ("dose_020", 2), ("dose_060", 6), ("dose_100", 10)):
        np.testing.assert_array_equal(cumulative[n_frames - 1], dataset.micrographs[key][1].data)
    assert np.all(frames == np.round(frames))  # integer counts
    with pytest.raises(UserInputError):
        dose_frames(dataset, 0, 7)


def test_psnr_and_counts_ordered_by_dose(dataset):
    reference = dataset.micrographs["dose_100"][0].data
    psnr = {key: _psnr(dataset.micrographs[key][0].data, reference, fraction)
            for key, fraction in (("dose_060", 0.6), ("dose_020", 0.2), ("dose_010", 0.1))}
    assert psnr["dose_060"] > psnr["dose_020"] > psnr["dose_010"]
    means = [dataset.micrographs[key][0].data.mean() for key in ("dose_010", "dose_020", "dose_060", "dose_100")]
    np.testing.assert_allclose(np.array(means) / means[-1], [0.1, 0.2, 0.6, 1.0], rtol=0.02)
    # Shot noise: variance of the 10% image about the scaled clean image equals its mean (Poisson + detector).
    residual = dataset.micrographs["dose_010"][0].data - 0.1 * dataset.clean[0].data
    expected = 0.1 * dataset.clean[0].data.mean() + 0.1 * dataset.config.readout_noise_counts**2
    assert residual.var() == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("size", [(96, 96), (97, 130)])
def test_deterministic_for_a_seed_and_different_for_another(size):
    config = SimulationConfig.for_preset("ruvb", n_micrographs=1, size_px=size, seed=11)
    first, second = simulate(config=config), simulate(config=config)
    other = simulate(config=dataclasses.replace(config, seed=12))
    for key in first.micrographs:
        np.testing.assert_array_equal(first.micrographs[key][0].data, second.micrographs[key][0].data)
    np.testing.assert_array_equal(first.truth[["x", "y"]].to_numpy(), second.truth[["x", "y"]].to_numpy())
    assert not np.array_equal(first.micrographs["dose_100"][0].data, other.micrographs["dose_100"][0].data)


def test_simulate_shorthand_arguments_and_errors():
    small = simulate(n_micrographs=1, size=64, seed=1, preset="ruvb")
    assert small.config.size_px == (64, 64) and small.config.preset == "ruvb"
    with pytest.raises(UserInputError):
        simulate(n_micrographs=1, size=64, preset="no-such-particle")
    with pytest.raises(UserInputError):
        simulate(config=SimulationConfig(n_micrographs=1, size_px=(64, 64), dose_fractions=(0.5, 0.1)))


def test_ribosome_256_field_is_fast():
    start = time.perf_counter()
    data = simulate(n_micrographs=1, size=256, seed=0, preset="ribosome")
    assert time.perf_counter() - start < 10.0
    assert 40 < data.particle_diameter_px < 60  # 80S ribosome ~276 Å at 5.3 Å/px
    assert len(data.truth) >= 3


def test_write_dataset_layout(dataset, tmp_path: Path):
    out = tmp_path / "sim"
    write_dataset(dataset, out, frames=10)
    for folder in ("dose_100", "dose_060", "dose_020", "dose_010", "clean", "masks"):
        files = sorted(p.name for p in (out / folder).iterdir())
        assert files == ["mic_0000.mrc", "mic_0001.mrc"], folder
    image = read_micrograph(out / "dose_010" / "mic_0001.mrc")
    np.testing.assert_array_equal(image.data, dataset.micrographs["dose_010"][1].data)
    assert image.pixel_size == pytest.approx(5.3, abs=1e-3)
    with mrcfile.open(out / "frames" / "mic_0000.mrcs") as movie:
        np.testing.assert_array_equal(movie.data.sum(axis=0), dataset.micrographs["dose_100"][0].data)
    truth = starfile.read(out / "truth.star")
    assert len(truth) == len(dataset.truth)
    assert {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAngleRot", "rlnDefocusU"} <= set(truth)
    assert truth["rlnMicrographName"].iloc[0] == "mic_0000.mrc"
    labels = starfile.read(out / "labels.star")
    np.testing.assert_allclose(labels["rlnCoordinateX"], dataset.labels["x"], atol=1e-4)
    decoys = pd.read_csv(out / "decoys.csv")
    assert list(decoys.columns) == ["micrograph", "x", "y", "kind"] and len(decoys) == len(dataset.decoys)
    summary = yaml.safe_load((out / "simulation.yaml").read_text())
    assert sum(summary["n_decoys"].values()) == len(dataset.decoys)
    assert summary["config"]["seed"] == 3
    assert summary["particle_diameter_px"] == pytest.approx(dataset.particle_diameter_px, abs=1e-3)
    assert not list(out.rglob("*.part"))
    with pytest.raises(UserInputError):
        write_dataset(dataset, out)  # not empty, no overwrite
    write_dataset(dataset, out, overwrite=True)


@pytest.fixture(scope="module")
def crowded():
    """Dense ribosome field with decoys of every kind (counts scaled up so a small field holds them)."""
    config = SimulationConfig.for_preset(
        "ribosome", n_micrographs=2, size_px=(384, 384), seed=5, carbon_probability=0.0, gold_probability=0.0,
        contamination_per_micrograph=(0, 0), ice_crystals_per_micrograph=(20, 20),
        fragments_per_particle=(0.5, 0.5), aggregates_per_particle=(0.3, 0.3),
    )
    return simulate(config=config)


def test_decoys_are_listed_and_never_truth_or_labels(crowded):
    kinds = crowded.decoys["kind"].value_counts().to_dict()
    assert set(kinds) == {"fragment", "aggregate", "ice_crystal"}
    # Roughly the asked share of each kind among the placed objects (placement may fall short of the count).
    assert 0.3 < kinds["fragment"] / len(crowded.truth) < 0.8
    assert 0.1 < kinds["aggregate"] / len(crowded.truth) < 0.5
    radius = crowded.particle_diameter_px / 2
    for table in (crowded.truth, crowded.labels):
        for name, rows in table.groupby("micrograph"):
            decoys = crowded.decoys[(crowded.decoys["micrograph"] == name) & (crowded.decoys["kind"] != "ice_crystal")]
            distance = np.hypot(rows["x"].to_numpy()[:, None] - decoys["x"].to_numpy()[None, :],
                                rows["y"].to_numpy()[:, None] - decoys["y"].to_numpy()[None, :])
            # Decoys share the particles' placement: never on top of a particle (at least 0.75 diameters).
            assert distance.min() >= 0.75 * 2 * radius - 1e-6


def test_decoys_have_signal_and_fragments_less_than_particles(crowded):
    """Fragments keep part of the particle's mass, clumps are protein, crystals are dark and masked."""
    from scipy import ndimage

    strength: dict[str, list[float]] = {"particle": [], "fragment": [], "aggregate": [], "ice_crystal": []}
    radius = crowded.particle_diameter_px / 2
    for clean, mask in zip(crowded.clean, crowded.masks, strict=True):
        image = clean.data.astype(np.float64)
        detail = np.sqrt(ndimage.uniform_filter((image - ndimage.gaussian_filter(image, 2 * radius)) ** 2,
                                                int(radius)))
        ny, nx = image.shape

        def at(table, detail=detail, ny=ny, nx=nx):
            inner = table[(table["x"] > radius) & (table["x"] < nx - radius) & (table["y"] > radius)
                          & (table["y"] < ny - radius)]
            return [detail[int(y), int(x)] for x, y in inner[["x", "y"]].to_numpy()]

        strength["particle"] += at(crowded.truth[crowded.truth["micrograph"] == clean.name])
        for kind in ("fragment", "aggregate", "ice_crystal"):
            rows = crowded.decoys[(crowded.decoys["micrograph"] == clean.name) & (crowded.decoys["kind"] == kind)]
            strength[kind] += at(rows)
            if kind == "ice_crystal":
                inside = rows[(rows["x"] >= 0) & (rows["y"] >= 0)]
                assert all(mask[int(y), int(x)] > 0 for x, y in inside[["x", "y"]].to_numpy())
        # Background: free pixels at least a diameter from every particle and decoy centre.
        far = _far_from_objects(crowded, clean.name, mask.shape)
        strength["background"] = [*strength.get("background", []), *detail[far & (mask == MASK_NONE)].tolist()]
    median = {kind: float(np.median(values)) for kind, values in strength.items()}
    assert median["background"] < median["fragment"] < median["particle"]
    assert median["aggregate"] > median["background"] and median["ice_crystal"] > median["particle"]


def test_decoys_can_be_switched_off_and_bad_ranges_are_refused():
    config = SimulationConfig.for_preset("ruvb", n_micrographs=1, size_px=(128, 128), seed=2, **NO_DECOYS)
    assert simulate(config=config).decoys.empty
    for change in ({"fragments_per_particle": (0.5, 0.2)}, {"fragment_kept_fraction": (0.0, 0.5)},
                   {"aggregate_packing": (0.5, 1.5)}, {"ice_crystals_per_micrograph": (3, 1)}):
        with pytest.raises(UserInputError):
            simulate(config=dataclasses.replace(config, **change))


@pytest.mark.parametrize("preset", ["barrel", "dengue-e", "glua3-ntd"])
def test_every_new_preset_simulates_with_its_own_size(preset):
    data = simulate(n_micrographs=1, size=160, seed=0, preset=preset)
    expected_px = {"barrel": 298 / 5.3, "dengue-e": 179 / 5.3, "glua3-ntd": 129 / 5.3}[preset]
    assert data.particle_diameter_px == pytest.approx(expected_px, rel=0.02)
    assert data.structure["pdb_id"] and data.structure["licence"].startswith("CC0")
    assert len(data.truth) >= 1


def test_without_decoys_the_scene_is_the_version_1_simulators_bit_for_bit():
    """Decoys draw from a stream of their own: switched off, the micrographs, clean images, truth and labels are
    those of the simulator before them (hash of the output of commit 177015e for this configuration), so the
    tables measured on version-1 data (benchmark profile ``standard-v1``) stay reproducible."""
    import hashlib

    config = SimulationConfig.for_preset(
        "ruvb", n_micrographs=2, size_px=(160, 200), seed=7, carbon_probability=1.0, **NO_DECOYS)
    data = simulate(config=config)
    digest = hashlib.sha256()
    for key in sorted(data.micrographs):
        for image in data.micrographs[key]:
            digest.update(image.data.tobytes())
    for image in data.clean:
        digest.update(image.data.tobytes())
    digest.update(data.truth[["x", "y"]].to_numpy().tobytes())
    digest.update(data.labels[["x", "y"]].to_numpy().tobytes())
    assert digest.hexdigest() == "cbc5b05a8a099503925039eeada91f19d881b00893386de8c93e5518b6784311"
    assert data.decoys.empty


def test_a_frame_count_that_cannot_hold_the_doses_stops_before_simulating(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import cryojoint.simulation as simulation

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulated before checking --frames")

    monkeypatch.setattr(simulation, "simulate", must_not_run)
    with pytest.raises(UserInputError, match="frames=7 cannot hold the dose fractions"):
        simulation.simulate_to_folder(tmp_path / "sim", n_micrographs=1, size=64, frames=7, progress=False)
    assert not (tmp_path / "sim").exists()


@pytest.mark.parametrize(("frames", "size", "problem"), [(-1, 256, "--frames must be 0 (no movies) or a positive "
                                                          "multiple of 10, got -1"),
                                                         (0, 0, "--size must be 32 to 16384 px, got 0")])
def test_simulate_options_out_of_range_name_the_option(tmp_path: Path, frames: int, size: int, problem: str) -> None:
    import cryojoint.simulation as simulation

    with pytest.raises(UserInputError, match=re.escape(problem)):
        simulation.simulate_to_folder(tmp_path / "sim", n_micrographs=1, size=size, frames=frames, progress=False)
    assert not (tmp_path / "sim").exists()


def test_a_field_too_small_for_any_label_says_so(tmp_path: Path) -> None:
    import cryojoint.simulation as simulation

    with pytest.warns(UserWarning, match="no particle is labelled in 1 micrograph"):
        simulation.simulate_to_folder(tmp_path / "sim", n_micrographs=1, size=64, progress=False)
