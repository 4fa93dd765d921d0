"""The general model's parts: fractional bins, the diameter a user gives, shipped weights by name, picking settings,
fine-tuning's starting weights and the pretraining corpus."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

from cryojoint.checkpoint import SHIPPED_MODELS, LoadedModel, build_network, load_model, resolve_model_path
from cryojoint.config import GENERAL_PARTICLE_PX, SHIPPED_MODEL_NAMES, CryojointConfig, default_config
from cryojoint.data import network_factor, parse_particle_diameter, particle_diameter_in_pixels, resolve_downsample
from cryojoint.errors import UserInputError
from cryojoint.imaging import (
    bin_image,
    binned_shape,
    from_binned_coordinates,
    rational_factor,
    snap_factor,
    to_binned_coordinates,
)
from cryojoint.inference import PickingSettings
from cryojoint.io.mrc import Micrograph, write_mrc

# --- fractional bins ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1.25, 1.5, 1.625, 2.5, 7 / 3])
def test_fractional_bin_keeps_the_mean_and_the_shape_rule(factor: float) -> None:
    rng = np.random.default_rng(0)
    image = (5.0 + rng.standard_normal((301, 257))).astype(np.float32)
    binned = bin_image(image, factor)
    assert binned.shape == binned_shape(image.shape, factor) == (int(301 // factor), int(257 // factor))
    assert binned.dtype == np.float32
    assert abs(float(binned.mean()) - float(image.mean())) < 0.05


@pytest.mark.parametrize("factor", [1.5, 1.625, 2.5])
def test_fractional_bin_leaves_pixel_noise_nearly_independent(factor: float) -> None:
    """The blind-spot denoiser predicts a pixel from its neighbours: correlated noise would leak into it."""
    noise = np.random.default_rng(1).standard_normal((1024, 1024)).astype(np.float32)
    binned = bin_image(noise, factor)[16:-16, 16:-16]
    binned = (binned - binned.mean()) / binned.std()
    for shifted in (binned[:, 1:] * binned[:, :-1], binned[1:, :] * binned[:-1, :]):
        assert abs(float(shifted.mean())) < 0.08


@pytest.mark.parametrize("factor", [1.0, 2.0, 1.5, 1.625])
def test_a_bright_pixel_lands_where_the_coordinate_map_says(factor: float) -> None:
    image = np.zeros((200, 220), dtype=np.float32)
    image[101, 150] = 1.0
    image = gaussian_filter(image, 3.0)
    binned = bin_image(image, factor)
    y, x = np.unravel_index(int(np.argmax(binned)), binned.shape)
    expected = to_binned_coordinates(np.array([[150.0, 101.0]]), factor)[0]
    assert abs(x - expected[0]) <= 0.75 and abs(y - expected[1]) <= 0.75


@settings(max_examples=60, deadline=None)
@given(st.floats(1.0, 8.0), st.lists(st.floats(0, 4000), min_size=2, max_size=2))
def test_coordinate_maps_invert_each_other(factor: float, xy: list[float]) -> None:
    factor = snap_factor(factor)
    point = np.array([xy], dtype=float)
    np.testing.assert_allclose(from_binned_coordinates(to_binned_coordinates(point, factor), factor), point,
                               atol=1e-6)


def test_factors_snap_to_small_ratios() -> None:
    assert snap_factor(1.44) in (1.375, 1.428571428571428, 1.4285714285714286, 1.5)
    assert rational_factor(snap_factor(1.44)).denominator <= 8
    assert snap_factor(0.5) == 1.0
    with pytest.raises(ValueError):
        rational_factor(0.5)


# --- the diameter a user gives -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value", "unit"), [("250A", 250, "angstrom"), ("250 Å", 250, "angstrom"),
                                                    ("48px", 48, "px"), ("48", 48, "none"), ("1e2a", 100, "angstrom")])
def test_particle_diameter_parses(text: str, value: float, unit: str) -> None:
    assert parse_particle_diameter(text) == (value, unit)


@pytest.mark.parametrize("text", ["", "A", "-5px", "0", "big", "nanA"])
def test_particle_diameter_that_is_no_size_is_a_user_error(text: str) -> None:
    with pytest.raises(UserInputError, match="--particle-diameter"):
        parse_particle_diameter(text)


def test_angstrom_need_the_headers_pixel_size(tmp_path: Path) -> None:
    image = np.zeros((128, 128), dtype=np.float32)
    with_size = write_mrc(tmp_path / "a.mrc", image, pixel_size=2.5)
    other_size = write_mrc(tmp_path / "b.mrc", image, pixel_size=5.0)
    no_size = write_mrc(tmp_path / "c.mrc", image)
    assert particle_diameter_in_pixels("250A", [with_size]) == pytest.approx(100.0, rel=1e-5)
    assert particle_diameter_in_pixels("48px", [no_size]) == 48.0
    with pytest.raises(UserInputError, match="no pixel size"):
        particle_diameter_in_pixels("250A", [with_size, no_size])
    with pytest.raises(UserInputError, match="different pixel sizes"):
        particle_diameter_in_pixels("250A", [with_size, other_size])


def test_a_diameter_without_unit_is_pixels_only_where_no_header_says_otherwise(tmp_path: Path) -> None:
    image = np.zeros((128, 96), dtype=np.float32)
    with_size = write_mrc(tmp_path / "sized.mrc", image, pixel_size=5.0)
    no_size = write_mrc(tmp_path / "plain.mrc", image)
    assert particle_diameter_in_pixels("48", [no_size]) == 48.0
    with pytest.raises(UserInputError, match=r"no unit .*sized.mrc: 5 Å/px\): give 250A \(Ångström, 50 px there\) or "
                                             r"250px"):
        particle_diameter_in_pixels("250", [with_size])
    # A number that, read as Ångström, would be too small to see: only pixels are offered.
    with pytest.raises(UserInputError, match=r"give 12px \(as Ångström it would be 2.4 px there, too small to see\)$"):
        particle_diameter_in_pixels("12", [with_size])
    with pytest.raises(UserInputError, match=r"give a larger size: as pixels or as Ångström \(0.6 px there\)"):
        particle_diameter_in_pixels("3", [with_size])


@pytest.mark.parametrize(("text", "problem"), [("0.001px", "smaller than the 4 px"), ("10A", "smaller than the 4 px"),
                                               ("1e9A", "larger than this micrograph"), ("97px", "larger than")])
def test_a_diameter_no_micrograph_could_hold_is_a_user_error(tmp_path: Path, text: str, problem: str) -> None:
    sized = write_mrc(tmp_path / "sized.mrc", np.zeros((128, 96), dtype=np.float32), pixel_size=5.0)
    with pytest.raises(UserInputError, match=problem):
        particle_diameter_in_pixels(text, [sized])
    assert particle_diameter_in_pixels("96px", [sized]) == 96.0


def test_a_pixel_size_mismatch_names_a_micrograph_of_each_size(tmp_path: Path) -> None:
    image = np.zeros((64, 64), dtype=np.float32)
    paths = [write_mrc(tmp_path / "fine.mrc", image, pixel_size=2.0), write_mrc(tmp_path / "coarse.mrc", image,
                                                                                 pixel_size=5.3),
             write_mrc(tmp_path / "fine2.mrc", image, pixel_size=2.0)]
    with pytest.raises(UserInputError, match=r"\(2 at 2 Å/px \(e.g. fine.mrc\), 1 at 5.3 Å/px \(e.g. coarse.mrc\)\): "
                                             r".*run each pixel size into its own --out folder"):
        particle_diameter_in_pixels("100A", paths)


@pytest.mark.parametrize(("diameter", "factor"), [(20.0, 1.0), (36.0, 1.0), (54.0, 1.5), (72.0, 2.0), (104.0, None)])
def test_network_factor_brings_the_particle_to_the_general_size_without_upsampling(diameter: float,
                                                                                   factor: float | None) -> None:
    got = network_factor(diameter, GENERAL_PARTICLE_PX)
    if factor is not None:
        assert got == factor
    assert got >= 1.0 and rational_factor(got).denominator <= 8
    assert diameter / got == pytest.approx(min(diameter, GENERAL_PARTICLE_PX), rel=0.07)


# --- shipped models and picking settings -------------------------------------------------------------------


def test_every_shipped_model_is_in_the_package_and_loads_as_data() -> None:
    assert set(SHIPPED_MODELS) == set(SHIPPED_MODEL_NAMES)
    for name in SHIPPED_MODELS:
        path = resolve_model_path(name)
        assert path.is_file() and path.stat().st_size <= 20 * 2**20
        payload = torch.load(path, map_location="cpu", weights_only=True)
        assert payload["meta"]["general"] and payload["meta"]["general_particle_px"] == GENERAL_PARTICLE_PX
        assert "pretraining" in payload["meta"]


def test_the_current_general_model_learned_to_denoise_real_micrographs_too() -> None:
    """Issue 16: the denoiser of what ships as ``general`` saw every real micrograph we can reach (the detection
    loss scored none of them); the first version, without them, still loads by its own name."""
    corpus = load_model("general").meta["pretraining"]["corpus"]
    real = corpus["real_micrographs"]
    assert {entry["file"] for entry in real} == {"epu2.9_example.mrc", "fei-extended.mrc"}
    assert all(len(entry["sha256"]) == 64 and entry["bin_factor"] >= 2 for entry in real)
    assert corpus["micrographs"] == 60 + len(real)
    assert SHIPPED_MODELS["general"] != SHIPPED_MODELS["general-v1"]
    assert not load_model("general-v1").meta["pretraining"]["corpus"].get("real_micrographs")


def test_a_local_file_named_like_a_shipped_model_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("general").write_text("not a model")
    assert resolve_model_path("general") == Path("general")
    with pytest.raises(UserInputError, match="not a cryojoint model"):
        load_model("general")


def _general() -> LoadedModel:
    return load_model("general")


def test_the_general_model_needs_the_particle_size_to_pick() -> None:
    model = _general()
    assert model.is_general
    with pytest.raises(UserInputError, match="--particle-diameter"):
        PickingSettings.resolve(model)
    settings_ = PickingSettings.resolve(model, particle_diameter_px=72.0)
    assert settings_.downsample == 2.0 and settings_.particle_diameter_px == pytest.approx(36.0)
    assert settings_.nms_radius_px == pytest.approx(18.0)
    denoise_only = PickingSettings.resolve(model, pick=False)
    assert denoise_only.downsample == 1.0 and not denoise_only.pick


def test_a_trained_model_refuses_a_particle_size() -> None:
    model = _general()
    trained = dataclasses.replace(model, meta={**model.meta, "general": False})
    with pytest.raises(UserInputError, match="general model"):
        PickingSettings.resolve(trained, particle_diameter_px=72.0)


# --- fine-tuning's start -----------------------------------------------------------------------------------


def test_init_general_starts_from_its_weights_with_the_datas_noise_level() -> None:
    from cryojoint.training import _load_initial_weights

    config = default_config()
    config.train = dataclasses.replace(config.train, init="general")
    network = build_network(config)
    prepared = type("Prepared", (), {"noise_std": 0.7})()
    _load_initial_weights(network, config, prepared)  # type: ignore[arg-type]
    general = load_model("general").network.state_dict()
    own = network.state_dict()
    differing = [k for k in own if not torch.equal(own[k], general[k])]
    assert differing == ["denoiser.noise_std_raw"]


@pytest.mark.parametrize(("preset", "mode", "message"), [("paper", "joint", "architecture differs"),
                                                        ("default", "detect-only", "detect-only network")])
def test_init_general_refuses_a_network_it_cannot_start(preset: str, mode: str, message: str) -> None:
    from cryojoint.training import _load_initial_weights

    config = default_config(preset)
    config.train = dataclasses.replace(config.train, init="general", mode=mode)
    with pytest.raises(UserInputError, match=message):
        _load_initial_weights(build_network(config), config, type("P", (), {"noise_std": 1.0})())  # type: ignore


def test_unset_init_fine_tunes_where_the_architecture_allows() -> None:
    from cryojoint.training import starting_weights

    assert default_config().train.init is None
    assert starting_weights(default_config()) == "general"
    assert starting_weights(default_config("paper")) == "scratch"  # no pretrained weights of its shape
    deeper = default_config()
    deeper.model = dataclasses.replace(deeper.model, unet_depth=deeper.model.unet_depth - 1)
    assert starting_weights(deeper) == "scratch"
    for mode, expected in (("denoise-only", "general"), ("sequential", "general"), ("detect-only", "scratch")):
        config = default_config()
        config.train = dataclasses.replace(config.train, mode=mode)
        assert starting_weights(config) == expected  # detect-only's detector reads one channel, the general's two
    for given_init in ("scratch", "general"):
        config = default_config("paper")
        config.train = dataclasses.replace(config.train, init=given_init)
        assert starting_weights(config) == given_init  # what the user says stands (general then fails loudly)


def test_init_must_name_a_shipped_model() -> None:
    with pytest.raises(UserInputError, match="train.init"):
        CryojointConfig.from_dict({"train": {"init": "nonsense"}})


def test_binning_targets_the_general_size_when_asked(blob_field: Callable[..., Any]) -> None:
    from cryojoint.config import DataConfig

    rng = np.random.default_rng(3)
    image, xy = blob_field(rng, (512, 512), 54.0, "disc", -1.0, noise=2.0)
    micrographs = [Micrograph(image.astype(np.float32), None, "m0")]
    labels = pd.DataFrame({"micrograph": "m0", "x": xy[:, 0], "y": xy[:, 1]})
    data = DataConfig(particle_diameter_px=54.0, network_particle_px=GENERAL_PARTICLE_PX)
    notes: list[str] = []
    factor, diameter = resolve_downsample(micrographs, labels, data, None, notes)
    assert factor == 1.5 and diameter == pytest.approx(36.0)
    assert "36 px the pretrained model works at" in notes[0]


def test_filtered_input_is_flagged_for_the_general_model(tmp_path: Path) -> None:
    import warnings

    from cryojoint.imaging import FILTERED_NEIGHBOUR_CORRELATION, fine_scale_neighbour_correlation
    from cryojoint.prediction import predict_files

    rng = np.random.default_rng(0)
    raw = rng.poisson(30.0, (128, 128)).astype(np.float32)
    filtered = gaussian_filter(rng.standard_normal((128, 128)), 2.0).astype(np.float32)
    assert fine_scale_neighbour_correlation(raw) < 0.1 < FILTERED_NEIGHBOUR_CORRELATION
    assert fine_scale_neighbour_correlation(filtered) > FILTERED_NEIGHBOUR_CORRELATION
    write_mrc(tmp_path / "raw.mrc", raw)
    write_mrc(tmp_path / "filtered.mrc", filtered)
    with pytest.warns(UserWarning, match="looks low-pass filtered"):
        predict_files("general", [tmp_path / "filtered.mrc"], tmp_path / "f", outputs=["denoised"], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        predict_files("general", [tmp_path / "raw.mrc"], tmp_path / "r", outputs=["denoised"], progress=False)


def test_a_corrupt_first_micrograph_does_not_stop_the_general_model_on_the_others(tmp_path: Path) -> None:
    """The filtered-input check reads the first input before prediction starts; a file it cannot read is reported
    by the prediction like any bad file, and the rest are denoised."""
    from cryojoint.prediction import predict_files

    (tmp_path / "broken.mrc").write_bytes(b"\x00" * 100)
    write_mrc(tmp_path / "raw.mrc", np.random.default_rng(0).poisson(30.0, (128, 128)).astype(np.float32))
    summary = predict_files("general", [tmp_path / "broken.mrc", tmp_path / "raw.mrc"], tmp_path / "out",
                            outputs=["denoised"], progress=False)
    assert set(summary.failures) == {"broken"} and "broken.mrc" in summary.failures["broken"]
    assert (tmp_path / "out" / "denoised" / "raw.mrc").is_file()
    # ... and the check itself goes on to the first readable file
    write_mrc(tmp_path / "filtered.mrc", gaussian_filter(np.random.default_rng(1).standard_normal((128, 128)),
                                                         2.0).astype(np.float32))
    with pytest.warns(UserWarning, match="filtered.mrc: .* looks low-pass filtered"):
        predict_files("general", [tmp_path / "broken.mrc", tmp_path / "filtered.mrc"], tmp_path / "out2",
                      outputs=["denoised"], progress=False)


def test_a_raw_micrograph_with_gradients_and_an_edge_is_not_taken_for_a_filtered_one() -> None:
    """Ice gradients and a carbon edge correlate a raw micrograph's neighbouring pixels over the whole image (the
    session-16 gate flattened one of `second`'s 60 % dose micrographs); its fine-scale part is still white."""
    from cryojoint.imaging import looks_filtered, neighbour_correlation

    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:256, 0:256]
    expected = 40.0 + 0.2 * x + 30.0 * (y > 170)  # gradient across the hole, a thicker region past an edge
    raw = rng.poisson(expected).astype(np.float32)
    assert neighbour_correlation(raw) > 0.8  # what the whole-image test read as filtered
    assert not looks_filtered(raw)
    assert looks_filtered(gaussian_filter(raw, 2.0))


def _radial_amplitude(image: np.ndarray) -> np.ndarray:
    spectrum = np.abs(np.fft.rfft2(image - image.mean())) ** 2
    ny, nx = image.shape
    rings = np.rint(np.hypot(np.fft.fftfreq(ny)[:, None], np.fft.rfftfreq(nx)[None, :]) * max(ny, nx)).astype(int)
    return np.sqrt(np.bincount(rings.ravel(), spectrum.ravel()) / np.maximum(np.bincount(rings.ravel()), 1))


def test_spectrum_flattening_restores_white_high_frequencies_and_keeps_the_band_below() -> None:
    from cryojoint.imaging import flatten_spectrum_beyond

    rng = np.random.default_rng(1)
    noise = rng.standard_normal((192, 256))
    filtered = (5.0 + gaussian_filter(noise, 2.0)).astype(np.float32)
    flattened = flatten_spectrum_beyond(filtered, 1 / 36)
    assert flattened.shape == filtered.shape and flattened.mean() == pytest.approx(filtered.mean(), abs=1e-4)
    before, after = _radial_amplitude(filtered), _radial_amplitude(flattened)
    cutoff = round(256 / 36)
    np.testing.assert_allclose(after[1:cutoff + 1], before[1:cutoff + 1], rtol=1e-4)  # the particle's band kept
    beyond = after[cutoff + 1:128]  # up to Nyquist along the longer side: the ring average is flat at the cut-off's
    np.testing.assert_allclose(beyond, before[cutoff], rtol=1e-3)
    assert before[100] < 0.05 * before[cutoff]  # the filter had taken that out (float32 rounding is left)
    white = rng.standard_normal((192, 256)).astype(np.float32)  # a raw micrograph's shot noise: almost unchanged
    assert np.corrcoef(white.ravel(), flatten_spectrum_beyond(white, 1 / 36).ravel())[0, 1] > 0.95


def test_the_general_model_flattens_a_filtered_micrographs_spectrum_before_picking() -> None:
    from cryojoint.inference import predict_micrograph

    model = _general()
    rng = np.random.default_rng(2)
    raw = Micrograph(rng.poisson(30.0, (160, 160)).astype(np.float32), None, "raw")
    filtered = Micrograph(gaussian_filter(raw.data, 2.0), None, "filtered")
    picking = PickingSettings.resolve(model, particle_diameter_px=30.0)
    assert picking.flatten_filtered_spectrum
    assert not PickingSettings.resolve(model, particle_diameter_px=30.0, pick=False).flatten_filtered_spectrum
    plain = dataclasses.replace(picking, flatten_filtered_spectrum=False)
    for micrograph, changed in ((raw, False), (filtered, True)):
        flattened, kept = predict_micrograph(model, micrograph, picking), predict_micrograph(model, micrograph, plain)
        assert (not np.array_equal(flattened.denoised, kept.denoised)) == changed
