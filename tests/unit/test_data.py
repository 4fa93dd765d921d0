"""Data preparation: normalisation, binning, soft labels, density/prior estimates, splits, patch sampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import ConvexHull

from cryojoint.data import (
    LabelledImage,
    PatchSampler,
    estimate_expected_particles,
    label_region_density,
    labelled_region_area,
    positive_fraction,
    soft_label_map,
    split_validation,
    unlabelled_positive_fraction,
)
from cryojoint.imaging import bin_image, from_binned_coordinates, normalise, to_binned_coordinates


@pytest.mark.parametrize("shape", [(64, 64), (65, 97)])
def test_normalise_is_robust_to_dark_outliers(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 5.0, shape).astype(np.float32)
    image[:3, :3] = -1e4  # a gold bead
    out = normalise(image)
    assert out.dtype == np.float32
    body = out[5:, 5:]
    assert abs(float(np.median(body))) < 0.1
    assert 0.8 < float(body.std()) < 1.2


def test_bin_image_averages_blocks_and_drops_remainder() -> None:
    image = np.arange(7 * 9, dtype=np.float32).reshape(7, 9)
    binned = bin_image(image, 2)
    assert binned.shape == (3, 4)
    assert binned[0, 0] == pytest.approx(image[:2, :2].mean())
    np.testing.assert_array_equal(bin_image(image, 1), image)


@given(st.integers(1, 8), st.floats(0, 1000, allow_nan=False), st.floats(0, 1000, allow_nan=False))
def test_binned_coordinates_round_trip(factor: int, x: float, y: float) -> None:
    xy = np.array([[x, y]])
    back = from_binned_coordinates(to_binned_coordinates(xy, factor), factor)
    np.testing.assert_allclose(back, xy, atol=1e-9)


def test_binned_coordinate_lands_in_the_block_that_holds_it() -> None:
    # input pixel 5 lies in block 1 of a 4x binning (pixels 4..7); its centre maps inside [0.5, 1.5)
    assert 0.5 <= to_binned_coordinates(np.array([[5.0, 5.0]]), 4)[0, 0] < 1.5


def test_soft_label_map_has_unit_peaks_and_gaussian_fall_off() -> None:
    target = soft_label_map((50, 60), np.array([[10.0, 20.0], [40.0, 30.0]]), sigma_px=3.0)
    assert target[20, 10] == pytest.approx(1.0)
    assert target[30, 40] == pytest.approx(1.0)
    assert target[20, 13] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert target[0, 59] == 0.0
    assert target.max() <= 1.0


def test_soft_label_map_ignores_picks_outside_but_keeps_partial_bumps() -> None:
    target = soft_label_map((20, 20), np.array([[-2.0, 10.0], [500.0, 500.0]]), sigma_px=2.0)
    assert target[10, 0] > 0.5
    assert target.sum() > 0


def test_labelled_region_area_is_unbiased_for_uniform_picks() -> None:
    """Efron's correction: over many draws of 25 uniform picks in a 300 px square, the mean estimate is the
    square's area (the bare hull is ~20 % short)."""
    rng = np.random.default_rng(4)
    estimates, hulls = [], []
    for _ in range(400):
        xy = rng.uniform(0, 300, size=(25, 2))
        estimates.append(labelled_region_area(xy, particle_diameter_px=20))
        hulls.append(ConvexHull(xy).volume)
    assert np.mean(estimates) == pytest.approx(300 * 300, rel=0.04)
    assert np.mean(hulls) < 0.85 * 300 * 300


def test_labelled_region_area_of_few_picks_is_their_discs() -> None:
    assert labelled_region_area(np.array([[0.0, 0.0], [50.0, 50.0]]), 20) == pytest.approx(2 * np.pi * 100)


def test_expected_particles_scales_label_density_to_the_image() -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 200, size=(40, 2))
    expected = estimate_expected_particles([xy], [(1000, 1000)], particle_diameter_px=10)
    region = labelled_region_area(xy, 10)
    assert expected == pytest.approx(40 / region * 1e6, rel=1e-6)


def test_positive_fraction_is_clipped_to_a_sane_range() -> None:
    assert positive_fraction(100, 1024**2, 4) == pytest.approx(100 * np.pi * 16 / 1024**2)
    assert positive_fraction(1e9, 100, 10) == 0.5


def _images(n: int, size: int = 128) -> list[LabelledImage]:
    rng = np.random.default_rng(2)
    images = []
    for i in range(n):
        xy = rng.uniform(20, size - 20, size=(10, 2))
        image = rng.normal(size=(size, size)).astype(np.float32)
        images.append(LabelledImage(f"m{i}", image, xy, soft_label_map(image.shape, xy, 2.0)))
    return images


def test_split_holds_out_whole_micrographs_when_there_are_enough() -> None:
    train, validation = split_validation(_images(5), 0.2)
    assert len(validation) == 1 and len(train) == 4
    assert {im.name for im in train}.isdisjoint({im.name for im in validation})


def test_split_is_fixed_and_stratified_by_label_count() -> None:
    """The held-out micrographs do not depend on any seed, and span sparse to dense labelling."""
    rng = np.random.default_rng(5)
    images = []
    for i, count in enumerate([3, 40, 8, 25, 12, 5, 30, 18, 1, 60]):
        xy = rng.uniform(20, 108, size=(count, 2))
        images.append(LabelledImage(f"m{i}", np.zeros((128, 128), np.float32), xy))
    train, validation = split_validation(images, 0.2)
    assert sorted(len(im.picks_xy) for im in validation) == [5, 30]  # 3rd and 8th of 10 by count
    shuffled = [images[i] for i in rng.permutation(len(images))]
    _, again = split_validation(shuffled, 0.2)
    assert {im.name for im in again} == {im.name for im in validation}
    assert len(train) == 8


def test_pi_counts_only_the_unlabelled_positives() -> None:
    """A fully labelled patch leaves nothing for the unlabelled pixels; an unlabelled one keeps the density."""
    density, mass = 1e-3, 20.0
    empty = np.zeros((2, 1, 50, 50), np.float32)
    pi_background = unlabelled_positive_fraction(empty, np.zeros(2, bool), density, mass)
    assert pi_background == pytest.approx(density * mass)
    labelled = empty.copy()
    labelled[:, 0, 20:30, 20:30] = 1.0  # 100 px^2 labelled per patch: more than the 20 x (1 + 2.5) expected
    assert unlabelled_positive_fraction(labelled, np.ones(2, bool), density, mass) == pytest.approx(1e-4)
    partly = empty.copy()
    partly[:, 0, 20:24, 20:25] = 1.0  # 20 px^2: the centred particle only; the density's 2.5 remain
    assert unlabelled_positive_fraction(partly, np.ones(2, bool), density, mass) == pytest.approx(
        2 * density * 2500 * mass / (2 * 2500 - 2 * 20))


def test_pi_leaves_out_patches_the_detector_does_not_score() -> None:
    density, mass = 1e-3, 20.0
    scored = np.zeros((2, 1, 50, 50), np.float32)
    scored[0, 0, 20:24, 20:25] = 1.0
    centred = np.array([True, False])
    with_unscored = np.concatenate([scored, np.full_like(scored, np.nan)])
    assert unlabelled_positive_fraction(with_unscored, np.concatenate([centred, [False, False]]), density, mass) \
        == pytest.approx(unlabelled_positive_fraction(scored, centred, density, mass))


def test_label_completeness_scales_the_expected_count() -> None:
    xy = np.random.default_rng(1).uniform(100, 300, size=(30, 2))
    complete = estimate_expected_particles([xy], [(1000, 1000)], particle_diameter_px=10)
    half = estimate_expected_particles([xy], [(1000, 1000)], particle_diameter_px=10, label_completeness=0.5)
    assert half == pytest.approx(2 * complete)


def test_split_of_a_single_micrograph_never_shares_pixels() -> None:
    image = _images(1, size=256)[0]
    train, validation = split_validation([image], 0.25)
    assert len(train) == 1 and len(validation) == 1
    assert train[0].image.shape[1] + validation[0].image.shape[1] == 256
    assert len(train[0].picks_xy) + len(validation[0].picks_xy) == len(image.picks_xy)
    assert (validation[0].picks_xy[:, 0] >= 0).all()


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_patch_sampler_is_deterministic_and_aligned(seed: int) -> None:
    images = _images(2)
    first = PatchSampler(images, 32, 0.5, np.random.default_rng(seed)).sample(4)
    second = PatchSampler(images, 32, 0.5, np.random.default_rng(seed)).sample(4)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[0].shape == (4, 1, 32, 32) and first[0].dtype == np.float32


def test_patches_centred_on_picks_carry_their_label() -> None:
    images = _images(1)
    patches, targets = PatchSampler(images, 32, 1.0, np.random.default_rng(3)).sample(16)
    # every patch is centred on a pick (clipped at borders), so each target holds a bump
    assert (targets.reshape(16, -1).max(axis=1) > 0.5).all()


def test_sampler_reports_which_patches_are_centred_on_picks() -> None:
    images = _images(1)
    _, _, always = PatchSampler(images, 32, 1.0, np.random.default_rng(3)).sample_with_origin(8)
    _, _, never = PatchSampler(images, 32, 0.0, np.random.default_rng(3)).sample_with_origin(8)
    _, _, mixed = PatchSampler(images, 32, 0.5, np.random.default_rng(3)).sample_with_origin(200)
    assert always.all() and not never.any()
    assert 0.35 < mixed.mean() < 0.65


def test_a_few_labels_never_expect_more_particles_than_fit() -> None:
    """With 1-3 picks on a micrograph the region is discs around them: 3 labels of a 52 px particle on 512² asked
    for 156 particles, where 112 discs fit at most (hexagonal packing)."""
    xy = np.array([[100.0, 100.0], [300.0, 300.0], [400.0, 150.0]])
    expected = estimate_expected_particles([xy], [(512, 512)], particle_diameter_px=52, label_completeness=0.6)
    assert expected == pytest.approx(512 * 512 / (np.sqrt(3) / 2 * 52**2))
    # Where labels are dense enough to show a region, nothing changes.
    grid = np.stack(np.meshgrid(np.arange(5) * 60.0, np.arange(5) * 60.0), -1).reshape(-1, 2) + 100
    assert estimate_expected_particles([grid], [(1000, 1000)], particle_diameter_px=20) < 1000 * 1000 / (
        np.sqrt(3) / 2 * 20**2)


def test_micrographs_with_too_few_picks_to_show_a_region_do_not_set_the_density() -> None:
    """2 picks per micrograph made 853 particles expected where 187 were: the discs around them are no region."""
    rng = np.random.default_rng(2)
    region = rng.uniform(100, 400, size=(30, 2))
    sparse = [np.array([[600.0, 600.0], [700.0, 650.0]]), np.array([[50.0, 900.0]])]
    alone = label_region_density([region], [(1000, 1000)], particle_diameter_px=20)
    mixed = label_region_density([region, *sparse], [(1000, 1000)] * 3, particle_diameter_px=20)
    assert alone == pytest.approx(30 / labelled_region_area(region, 20))
    assert mixed == pytest.approx(alone)
    assert label_region_density(sparse, [(1000, 1000)] * 2, particle_diameter_px=20) is None
