"""No-learning floors: blob picker and Gaussian low-pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import blob_field_image
from cryojoint.baselines import (
    best_lowpass_sigma,
    blob_pick,
    blob_score_map,
    choose_polarity,
    gaussian_lowpass,
    lowpass_sigma_for_diameter,
)
from cryojoint.evaluation import match_picks, psnr


def _disc_image(
    rng: np.random.Generator, shape: tuple[int, int], diameter: float, contrast: float, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping discs of one diameter (contrast sign = polarity) in white noise."""
    return blob_field_image(rng, shape, diameter, "disc", contrast, noise, coverage=0.15, spacing=1.3)


def _f1(pred_xy: np.ndarray, true_xy: np.ndarray, radius: float) -> float:
    matched, _ = match_picks(pred_xy, true_xy, radius)
    return 2 * matched.size / (len(pred_xy) + len(true_xy))


@pytest.mark.parametrize("contrast", [-1.0, 1.0])
def test_blob_picker_finds_blobs_far_above_chance(contrast: float) -> None:
    rng = np.random.default_rng(11)
    diameter = 16
    image, true_xy = _disc_image(rng, (300, 320), diameter, contrast, noise=1.5)
    pred_xy, scores = blob_pick(image, diameter)
    top = pred_xy[: len(true_xy)]  # cut-off at the true count
    f1 = _f1(top, true_xy, diameter / 2)
    random_xy = rng.uniform([0, 0], [320, 300], size=top.shape)
    chance = _f1(random_xy, true_xy, diameter / 2)
    assert f1 > 0.85
    assert f1 > 4 * chance
    assert np.all(np.diff(scores) <= 0)


def test_blob_picker_threshold_and_border() -> None:
    rng = np.random.default_rng(2)
    image, _ = _disc_image(rng, (200, 200), 14, -1.0, noise=1.0)
    all_xy, all_scores = blob_pick(image, 14)
    cut = float(np.median(all_scores))
    xy, scores = blob_pick(image, 14, threshold=cut, border_px=20)
    assert np.all(scores >= cut)
    assert np.all((xy >= 20) & (xy <= 199 - 20))
    assert 0 < len(xy) < len(all_xy)


@pytest.mark.parametrize("contrast", [-1.0, 1.0])
def test_polarity_is_read_from_the_data(contrast: float) -> None:
    rng = np.random.default_rng(4)
    image, xy = _disc_image(rng, (256, 256), 16, contrast, noise=1.0)
    expected = "dark" if contrast < 0 else "bright"
    assert choose_polarity(image, 16) == expected
    assert choose_polarity(image, 16, labelled_xy=xy[:10]) == expected


def test_blob_score_map_is_invariant_to_affine_intensity_changes() -> None:
    rng = np.random.default_rng(8)
    image, _ = _disc_image(rng, (128, 136), 12, -1.0, noise=1.0)
    reference = blob_score_map(image, 12)
    np.testing.assert_allclose(blob_score_map(3.0 * image + 100.0, 12), reference, atol=1e-9)
    # Inverting the contrast flips the detected polarity, so the map does not change.
    np.testing.assert_allclose(blob_score_map(-image, 12), reference, atol=1e-9)
    np.testing.assert_allclose(blob_score_map(image, 12, polarity="abs"), np.abs(reference), atol=1e-9)
    np.testing.assert_allclose(blob_score_map(image, 12, polarity="bright"), -reference, atol=1e-9)


def test_blob_score_map_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        blob_score_map(np.zeros((8, 8)), 4, polarity="dim")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        blob_score_map(np.zeros((8, 8)), 0)


@pytest.mark.parametrize("shape", [(64, 64), (63, 70)])
def test_gaussian_lowpass_reduces_white_noise_as_expected(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(4 * shape[0], 4 * shape[1]))
    sigma = 2.0
    smoothed = gaussian_lowpass(noise, sigma_px=sigma)
    assert smoothed.dtype == np.float32 and smoothed.shape == noise.shape
    # White noise through a unit-sum Gaussian of std s keeps variance 1 / (4 π s²).
    assert np.var(smoothed) == pytest.approx(1.0 / (4 * math.pi * sigma**2), rel=0.1)
    np.testing.assert_array_equal(gaussian_lowpass(noise, sigma_px=0.0), noise.astype(np.float32))


def test_lowpass_from_diameter_has_half_amplitude_at_a_third_of_a_particle() -> None:
    diameter = 30.0
    sigma = lowpass_sigma_for_diameter(diameter)
    period = diameter / 3
    assert math.exp(-2 * math.pi**2 * sigma**2 / period**2) == pytest.approx(0.5)
    image = np.cos(2 * math.pi * np.arange(400) / period)[None, :].repeat(8, axis=0)
    filtered = gaussian_lowpass(image, particle_diameter_px=diameter)
    assert np.abs(filtered[:, 100:300]).max() == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError):
        gaussian_lowpass(image)


def test_best_lowpass_sigma_beats_no_filtering() -> None:
    rng = np.random.default_rng(6)
    clean, _ = _disc_image(rng, (160, 160), 20, -1.0, noise=0.0)
    noisy = clean + rng.normal(0, 1.0, clean.shape)
    sigma = best_lowpass_sigma([noisy], [clean])
    assert 0.5 < sigma < 16
    assert psnr(gaussian_lowpass(noisy, sigma_px=sigma), clean) > psnr(noisy, clean) + 3.0
