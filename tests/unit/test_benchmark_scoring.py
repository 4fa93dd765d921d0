"""The benchmark's denoising scores and its rescaled dataset, on tiny fabricated images (nothing is trained)."""

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

from benchmarks import run as bench  # noqa: E402

from cryojoint.io.mrc import read_micrograph, write_mrc  # noqa: E402

SIZE = 64


def _nested_doses(tmp_path: Path, fraction: float, seed: int = 0) -> bench.DoseData:
    """Clean image, a low dose and the full dose that contains it (as the simulator nests doses)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    clean = 50.0 + 20.0 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    low = rng.poisson(clean * fraction).astype(np.float64)
    full = low + rng.poisson(clean * (1.0 - fraction))
    for folder, image in [("clean", clean), (f"dose_{round(fraction * 100):03d}", low), ("dose_100", full),
                          ("masks", np.zeros_like(clean))]:
        write_mrc(tmp_path / folder / "m0.mrc", image, 5.0)
    empty = pd.DataFrame({"micrograph": [], "x": [], "y": []})
    return bench.DoseData(structure="fake", dose=f"{round(fraction * 100):03d}", data_dir=tmp_path,
                          train_names=[], test_names=["m0"], train_labels=empty,
                          train_labels_path=tmp_path / "labels.star", test_truth=empty, true_diameter_px=10.0,
                          pixel_size=5.0)


def test_psnr_vs_the_rest_of_the_exposure_does_not_reward_keeping_the_inputs_noise(tmp_path: Path) -> None:
    data = _nested_doses(tmp_path, 0.6)
    raw = bench.score_denoised(data, data.test_images())
    clean = bench.score_denoised(data, data.clean())
    # Against the full dose (which holds the input's own noise) the raw input beats the noise-free image ...
    assert raw["psnr_full_dose"] > clean["psnr_full_dose"]
    # ... against the rest of the exposure (independent noise) the noise-free image wins, as it should.
    assert clean[bench.INDEPENDENT_PSNR_KEY] > raw[bench.INDEPENDENT_PSNR_KEY] + 1.0


def test_cached_cells_get_a_new_metric_from_their_saved_micrographs(tmp_path: Path) -> None:
    data = _nested_doses(tmp_path / "data", 0.1)
    work = tmp_path / "work"
    write_mrc(work / "pred" / "denoised" / "m0.mrc", data.clean()["m0"], 5.0)
    cell = {"status": "ok", "denoising": {"psnr_full_dose": 1.0}}
    assert bench.refresh_denoising_scores(cell, data, work)
    assert cell["denoising"][bench.INDEPENDENT_PSNR_KEY] == bench.score_denoised(
        data, data.clean())[bench.INDEPENDENT_PSNR_KEY]
    assert not bench.refresh_denoising_scores(cell, data, work)  # already has it: nothing to do
    assert not bench.refresh_denoising_scores({"status": "ok", "denoising": None}, data, work)


def test_denoising_is_scored_at_the_profiles_scale_whatever_the_networks_binning(tmp_path: Path) -> None:
    """A binned network's denoised image and a full-size one are scored at one scale (the ``unbinned`` profile)."""
    from cryojoint.imaging import bin_image

    data = dataclasses.replace(_nested_doses(tmp_path, 0.1), denoising_bin=2)
    full_size = {"m0": data.clean()["m0"]}
    binned = {"m0": bin_image(data.clean()["m0"], 2)}
    assert bench.score_denoised(data, full_size) == bench.score_denoised(data, binned)
    at_full = bench.score_denoised(dataclasses.replace(data, denoising_bin=1, _cache={}), full_size)
    assert at_full != bench.score_denoised(data, full_size)
    with pytest.raises(ValueError, match="binned by a factor"):
        bench.score_denoised(dataclasses.replace(data, denoising_bin=1, _cache={}), binned)


def test_intensity_map_rewrites_images_but_not_masks(tmp_path: Path) -> None:
    image = np.arange(SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    mask = (image > 100).astype(np.float32)
    write_mrc(tmp_path / "dose_010" / "m0.mrc", image, 3.5)
    write_mrc(tmp_path / "masks" / "m0.mrc", mask, 3.5)
    bench._map_intensities(tmp_path, 0.004, -3.0)
    mapped = read_micrograph(tmp_path / "dose_010" / "m0.mrc")
    np.testing.assert_allclose(mapped.data, image * 0.004 - 3.0, rtol=1e-6, atol=1e-6)
    assert mapped.pixel_size == 3.5
    np.testing.assert_array_equal(read_micrograph(tmp_path / "masks" / "m0.mrc").data, mask)


def test_the_second_dataset_differs_from_standard_in_structure_scale_and_units() -> None:
    second, standard = bench.PROFILES["second"], bench.PROFILES["standard"]
    assert set(second.structures).isdisjoint(standard.structures)
    assert second.intensity_map is not None and standard.intensity_map is None
    assert second.simulation_changes.get("pixel_size_angstrom") not in (None, 5.3)
    assert bench._dataset_key("ruvb", second) != bench._dataset_key("ruvb", dataclasses.replace(
        second, intensity_map=None))


def test_a_real_data_profile_has_no_denoising_rows_or_tables() -> None:
    real = bench.PROFILES["real-bgal"]
    assert not real.has_denoising_truth and bench.PROFILES["standard"].has_denoising_truth
    rows = {spec.row_id for spec in bench.method_specs(real)}
    assert rows.isdisjoint(bench.DENOISING_METHODS)
    assert {"floor-blob", "topaz-picker", "cryojoint-joint-default"} <= rows
    lines, tables = bench.build_tables(real, bench.method_specs(real), real.doses, {})
    assert not any(title.startswith("Denoising") for title in tables)
    assert any(line.startswith("| method | real |") for line in lines)


def test_real_dose_data_reads_its_own_folder_and_has_no_masks(tmp_path: Path) -> None:
    empty = pd.DataFrame({"micrograph": [], "x": [], "y": []})
    data = bench.DoseData(structure="bgal", dose=bench.REAL_DOSE, data_dir=tmp_path, train_names=["a"],
                          test_names=["b"], train_labels=empty, train_labels_path=tmp_path / "labels.star",
                          test_truth=empty, true_diameter_px=27.0, pixel_size=7.08,
                          image_dir=tmp_path / "micrographs", has_denoising_truth=False)
    assert data.test_mrcs == [tmp_path / "micrographs" / "b.mrc"]
    assert data.masks() is None


def test_the_data_key_follows_every_simulation_setting_and_the_simulator_version(monkeypatch) -> None:
    """Changed simulator defaults or code give a new data folder, never the stale cached one."""
    import benchmarks.suite.datasets as datasets

    standard = bench.PROFILES["standard"]
    before = bench._dataset_key("ribosome", standard)
    assert before == bench._dataset_key("ribosome", standard)
    changed = dataclasses.replace(standard, simulation_changes={"aggregates_per_particle": (0.0, 0.0)})
    assert bench._dataset_key("ribosome", changed) != before
    monkeypatch.setattr(datasets, "SIMULATOR_VERSION", datasets.SIMULATOR_VERSION + 1)
    assert bench._dataset_key("ribosome", standard) != before


def test_a_fractionally_binned_denoised_image_is_scored_at_full_size() -> None:
    """A model fine-tuned from the general model denoises at a fractional bin (1024 / 1.44 -> 711 px): it is
    resampled back to the full grid, where a band-limited image comes back as it was (same place, same contrast);
    a shape no bin makes is refused rather than misread."""
    from benchmarks.suite.scoring import _to_scale
    from scipy.ndimage import gaussian_filter

    from cryojoint.imaging import bin_image, snap_factor

    full = (1024, 1000)
    assert _to_scale(np.zeros((512, 500), np.float32), full, 2, "m").shape == (512, 500)
    assert _to_scale(np.zeros(full, np.float32), full, 2, "m").shape == (512, 500)
    smooth = gaussian_filter(np.random.default_rng(0).standard_normal(full), 4.0).astype(np.float32)
    factor = snap_factor(52 / 36)
    back = _to_scale(bin_image(smooth, factor), full, 1, "m")
    assert back.shape == full
    inner = (slice(16, -16), slice(16, -16))
    assert np.corrcoef(back[inner].ravel(), smooth[inner].ravel())[0, 1] > 0.99
    assert np.std(back[inner]) == pytest.approx(np.std(smooth[inner]), rel=0.05)
    with pytest.raises(ValueError, match="not the"):
        _to_scale(np.zeros((700, 768), np.float32), full, 1, "m")
