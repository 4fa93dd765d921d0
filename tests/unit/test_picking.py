"""Non-maximum suppression, automatic cut-off, particle size and count estimates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from cryojoint.picking import (
    MIN_LABELS_FOR_SCORE_COUNT,
    auto_threshold,
    count_from_label_scores,
    estimate_particle_diameter,
    measure_particle_diameter,
    nms_peaks,
)


def _reference_greedy_nms(score_map: np.ndarray, radius: float) -> list[tuple[int, int]]:
    """Brute force: 3x3 local maxima, visited by (-score, row, col), O(n²) suppression."""
    ny, nx = score_map.shape
    candidates = []
    for row in range(ny):
        for col in range(nx):
            window = score_map[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
            if score_map[row, col] == window.max():
                candidates.append((-score_map[row, col], row, col))
    kept: list[tuple[int, int]] = []
    for _, row, col in sorted(candidates):
        if all(math.hypot(row - r, col - c) > radius for r, c in kept):
            kept.append((row, col))
    return kept


# ------------------------------------------------------------------------------------------------ NMS


def test_nms_keeps_higher_of_two_close_peaks_and_both_far_ones() -> None:
    score_map = np.zeros((40, 40))
    score_map[10, 10] = 1.0
    score_map[10, 15] = 0.8  # 5 px away: suppressed by radius 6
    score_map[30, 30] = 0.9
    xy, scores = nms_peaks(score_map, radius_px=6, threshold=0.1)  # the zero background is a plateau
    np.testing.assert_array_equal(xy, [[10, 10], [30, 30]])
    np.testing.assert_array_equal(scores, [1.0, 0.9])
    xy, _ = nms_peaks(score_map, radius_px=4, threshold=0.1)
    np.testing.assert_array_equal(xy, [[10, 10], [30, 30], [15, 10]])  # x = column, y = row


def test_nms_radius_is_inclusive() -> None:
    score_map = np.zeros((20, 20))
    score_map[5, 5] = 2.0
    score_map[5, 12] = 1.0  # exactly 7 px away
    assert len(nms_peaks(score_map, radius_px=7, threshold=0.5)[1]) == 1
    assert len(nms_peaks(score_map, radius_px=6.99, threshold=0.5)[1]) == 2


def test_nms_ties_are_broken_in_raster_order() -> None:
    score_map = np.zeros((30, 30))
    score_map[12, 20] = 1.0
    score_map[14, 8] = 1.0  # same score, within radius 13 of the first; later row -> suppressed
    xy, _ = nms_peaks(score_map, radius_px=13, threshold=0.5)
    np.testing.assert_array_equal(xy, [[20, 12]])
    plateau = np.zeros((9, 9))
    plateau[3:6, 2:7] = 5.0
    xy, scores = nms_peaks(plateau, radius_px=10, threshold=1.0)
    np.testing.assert_array_equal(xy, [[2, 3]])  # top-left pixel of the plateau
    np.testing.assert_array_equal(scores, [5.0])


def test_nms_border_threshold_and_max_peaks() -> None:
    score_map = np.zeros((50, 60))
    score_map[2, 30] = 3.0  # 2 px from the top edge
    score_map[25, 57] = 2.0  # 2 px from the right edge
    score_map[25, 30] = 1.0
    score_map[40, 10] = 0.5
    xy, _ = nms_peaks(score_map, radius_px=3, threshold=0.1, border_px=3)
    np.testing.assert_array_equal(xy, [[30, 25], [10, 40]])
    xy, scores = nms_peaks(score_map, radius_px=3, threshold=1.0)
    np.testing.assert_array_equal(scores, [3.0, 2.0, 1.0])
    assert nms_peaks(score_map, radius_px=3, threshold=3.5)[0].shape == (0, 2)
    xy, scores = nms_peaks(score_map, radius_px=3, max_peaks=2)  # background plateau ranks below
    np.testing.assert_array_equal(scores, [3.0, 2.0])


def test_nms_border_peak_does_not_suppress_interior_peak() -> None:
    score_map = np.zeros((40, 40))
    score_map[1, 20] = 5.0
    score_map[6, 20] = 1.0
    xy, _ = nms_peaks(score_map, radius_px=8, threshold=0.1, border_px=3)
    np.testing.assert_array_equal(xy, [[20, 6]])


@pytest.mark.parametrize("score_map", [np.zeros((0, 0)), np.full((8, 8), np.nan), np.full((5, 7), -np.inf)])
def test_nms_empty_results(score_map: np.ndarray) -> None:
    xy, scores = nms_peaks(score_map, radius_px=3)
    assert xy.shape == (0, 2) and scores.shape == (0,)


def test_nms_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        nms_peaks(np.zeros(10), radius_px=2)
    with pytest.raises(ValueError):
        nms_peaks(np.zeros((4, 4)), radius_px=-1)


@pytest.mark.parametrize("shape", [(31, 40), (32, 33)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("radius", [0, 2.5, 6])
def test_nms_matches_brute_force_greedy(shape: tuple[int, int], dtype: type, radius: float) -> None:
    rng = np.random.default_rng(7)
    score_map = ndimage.gaussian_filter(rng.normal(size=shape), 1.2).astype(dtype)
    score_map[rng.random(shape) < 0.05] = 0.0  # exact ties
    xy, scores = nms_peaks(score_map, radius_px=radius)
    expected = _reference_greedy_nms(score_map, radius)
    np.testing.assert_array_equal(xy[:, ::-1].astype(int), np.array(expected))
    assert np.all(np.diff(scores) <= 0)


def test_nms_subpixel_recovers_fractional_centre() -> None:
    rows, cols = np.mgrid[:40, :40]
    true_x, true_y = 17.3, 21.8
    score_map = np.exp(-((cols - true_x) ** 2 + (rows - true_y) ** 2) / (2 * 2.0**2))
    integer_xy, _ = nms_peaks(score_map, radius_px=5)
    refined_xy, _ = nms_peaks(score_map, radius_px=5, subpixel=True)
    np.testing.assert_array_equal(integer_xy, [[17, 22]])
    assert np.hypot(refined_xy[0, 0] - true_x, refined_xy[0, 1] - true_y) < 0.1


# ------------------------------------------------------------------------------------------ cut-off


@pytest.mark.parametrize("top_fraction", [0.25, 0.3, 0.5])
def test_auto_threshold_is_the_stated_quantile(top_fraction: float) -> None:
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, size=1001)
    assert auto_threshold(values, top_fraction) == pytest.approx(np.quantile(values, 1 - top_fraction))
    pooled = auto_threshold([values[:400], values[400:], np.array([np.nan])], top_fraction)
    assert pooled == pytest.approx(np.quantile(values, 1 - top_fraction))
    assert np.mean(values >= pooled) == pytest.approx(top_fraction, abs=2e-3)


def test_auto_threshold_edge_cases() -> None:
    assert math.isnan(auto_threshold([]))
    with pytest.raises(ValueError):
        auto_threshold(np.ones(3), top_fraction=1.0)


def test_auto_threshold_over_peak_scores_separates_sparse_particles() -> None:
    """Over all pixels of a sparse map the quantile is background; over NMS peaks it is not."""
    rng = np.random.default_rng(3)
    score_map = 0.05 * rng.random((256, 256))
    centres = rng.integers(20, 236, size=(15, 2))
    for row, col in centres:
        score_map[row - 2 : row + 3, col - 2 : col + 3] += 0.9
    pixel_cut = auto_threshold(score_map)
    _, peak_scores = nms_peaks(score_map, radius_px=12)
    peak_cut = auto_threshold(peak_scores)
    assert pixel_cut < 0.05
    assert peak_cut > pixel_cut


# -------------------------------------------------------------------------------------- particle size


@pytest.mark.parametrize("diameter", [12, 24, 40])
@pytest.mark.parametrize(("kind", "contrast"), [("disc", -1.0), ("gauss", -1.0), ("disc", 1.0)])
def test_estimate_particle_diameter_on_synthetic_blobs(diameter: int, kind: str, contrast: float,
                                                       blob_field) -> None:
    rng = np.random.default_rng(diameter)
    images, coords = zip(*[blob_field(rng, (320, 352), diameter, kind, contrast, noise=3.0) for _ in range(2)],
                         strict=True)
    estimate = estimate_particle_diameter(list(images), list(coords))
    assert estimate == pytest.approx(diameter, rel=0.2)


def test_estimate_particle_diameter_ignores_scale_and_offset_of_images(blob_field) -> None:
    rng = np.random.default_rng(5)
    image, xy = blob_field(rng, (256, 256), 20, "disc", -1.0, noise=2.0)
    first = estimate_particle_diameter([image], [xy], max_px=80)
    second = estimate_particle_diameter([250.0 + 40.0 * image], [xy], max_px=80)
    assert first == pytest.approx(second, rel=1e-6)


def test_estimate_particle_diameter_rejects_no_usable_picks() -> None:
    with pytest.raises(ValueError):
        estimate_particle_diameter([np.zeros((64, 64))], [np.array([[500.0, 500.0]])])


@pytest.mark.parametrize("diameter", [16.0, 30.0, 48.0])
def test_particle_diameter_of_projected_spheres_in_noise(diameter: float) -> None:
    """Globular particles project like solid spheres; the default shape model recovers their diameter."""
    rng = np.random.default_rng(int(diameter))
    size, radius = 512, diameter / 2
    image = np.zeros((size, size))
    centres = []
    grid = np.arange(int(diameter) + 8, size - int(diameter) - 8, int(2.2 * diameter))
    for cy in grid:
        for cx in grid:
            x, y = cx + rng.uniform(-2, 2), cy + rng.uniform(-2, 2)
            yy, xx = np.mgrid[:size, :size]
            image += np.sqrt(np.clip(radius**2 - (xx - x) ** 2 - (yy - y) ** 2, 0, None)) / radius
            centres.append((x, y))
    noisy = -image + rng.normal(0, 2.0, image.shape)  # dark particles, noise twice the peak contrast
    estimate = estimate_particle_diameter([noisy], [np.array(centres)])
    assert estimate == pytest.approx(diameter, rel=0.15)


def _ctf_filtered_particles(rng: np.random.Generator, diameter_angstrom: float, pixel_angstrom: float,
                            defocus_angstrom: float, spacing: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Dark particles of one largest extent (the diameter) but varied shape, seen through a phase-contrast CTF at
    300 kV: projected ellipsoids with the long axis the diameter, the short one 35-100 % of it, any in-plane angle.
    As with real proteins, their mean image is concentrated towards the centre, and a fringe lies along the edge.
    """
    size, radius = 512, diameter_angstrom / pixel_angstrom / 2
    step = int(spacing * 2 * radius)
    centres = np.array([(cx + rng.uniform(-2, 2), cy + rng.uniform(-2, 2))
                        for cy in range(step // 2, size - step // 2, step)
                        for cx in range(step // 2, size - step // 2, step)])
    yy, xx = np.mgrid[:size, :size]
    projection = np.zeros((size, size))
    for x, y in centres:
        short, angle = rng.uniform(0.35, 1.0), rng.uniform(0, np.pi)
        u = ((xx - x) * np.cos(angle) + (yy - y) * np.sin(angle)) / radius
        v = (-(xx - x) * np.sin(angle) + (yy - y) * np.cos(angle)) / (radius * short)
        projection += short * np.sqrt(np.clip(1 - u * u - v * v, 0, None))
    k2 = (np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2) / pixel_angstrom**2
    wavelength = 0.0197  # Å at 300 kV
    phase = np.pi * wavelength * defocus_angstrom * k2
    ctf = -(np.sqrt(1 - 0.07**2) * np.sin(phase) + 0.07 * np.cos(phase))
    image = np.fft.ifft2(np.fft.fft2(projection) * ctf).real
    return image / image.std() + rng.normal(0.0, noise, image.shape), centres


@pytest.mark.parametrize(("diameter_angstrom", "pixel_angstrom", "defocus_um"),
                         [(250.0, 5.0, 1.5), (250.0, 5.0, 2.5), (150.0, 5.0, 2.0), (300.0, 4.0, 2.0)])
def test_particle_diameter_under_a_ctf_is_read_at_its_fringe(diameter_angstrom: float, pixel_angstrom: float,
                                                            defocus_um: float) -> None:
    """The mean image of irregular particles under phase contrast is a core narrower than the particle and an
    opposite fringe along its edge. The LoG of the core alone read 0.81-0.86 of the diameter here (and 0.58-0.84
    on ribosome, RuvB and real beta-galactosidase micrographs); the fringe marks the edge."""
    rng = np.random.default_rng(0)
    images, coords = zip(*[_ctf_filtered_particles(rng, diameter_angstrom, pixel_angstrom, defocus_um * 1e4, 1.6,
                                                   3.0) for _ in range(2)], strict=True)
    reading = measure_particle_diameter(list(images), list(coords))
    assert reading.read_at == "fringe"
    assert reading.diameter_px == pytest.approx(diameter_angstrom / pixel_angstrom, rel=0.1)
    assert estimate_particle_diameter(list(images), list(coords)) == reading.diameter_px


def test_a_particle_without_a_ctf_fringe_is_read_at_its_core(blob_field) -> None:
    """Blobs seen without phase contrast have no fringe: the reading says it came from the core."""
    image, xy = blob_field(np.random.default_rng(3), (512, 512), 30.0, "sphere", -1.0, noise=1.0)
    reading = measure_particle_diameter([image], [xy])
    assert reading.read_at == "core" and reading.diameter_px == pytest.approx(30.0, rel=0.2)


def _scored_field(rng: np.random.Generator, n_particles: int, n_background: int,
                  particle_mean: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of one image: particles (higher scores) and background peaks, and the particles' centres."""
    particles = rng.uniform(0, 1000, size=(n_particles, 2))
    background = rng.uniform(0, 1000, size=(n_background, 2))
    xy = np.concatenate([particles, background])
    scores = np.concatenate([rng.normal(particle_mean, 1.0, n_particles), rng.normal(-3.0, 1.0, n_background)])
    return xy, scores, particles


@pytest.mark.parametrize("labels_per_image", [2, 3, 20])
def test_the_labels_scores_count_the_particles_however_few_labels_each_image_has(labels_per_image: int) -> None:
    rng = np.random.default_rng(5)
    candidates, labels, true_count = [], [], 0
    for n_particles in (150, 200, 250, 180, 220, 160, 240, 200):
        xy, scores, particles = _scored_field(rng, n_particles, 600)
        candidates.append((xy, scores))
        labels.append(particles[rng.choice(n_particles, labels_per_image, replace=False)] + rng.normal(0, 1, 2))
        true_count += n_particles
    count = count_from_label_scores(candidates, labels, match_radius_px=3.0)
    assert count == pytest.approx(true_count, rel=0.3 if labels_per_image < 5 else 0.15)


def test_a_label_with_no_candidate_near_it_ranks_below_every_candidate() -> None:
    rng = np.random.default_rng(6)
    xy, scores, particles = _scored_field(rng, 200, 600)
    found = count_from_label_scores([(xy, scores)], [particles[:40]], match_radius_px=3.0)
    # Twenty more labels far from any candidate: the median moves down among the found ones, so more count.
    lost = np.full((20, 2), 5000.0)
    with_lost = count_from_label_scores([(xy, scores)], [np.concatenate([particles[:40], lost])], 3.0)
    assert found is not None and with_lost is not None and with_lost > found
    # More lost than found: nothing to place the median on.
    assert count_from_label_scores([(xy, scores)], [np.concatenate([particles[:10], lost])], 3.0) is None


def test_too_few_labels_give_no_count() -> None:
    rng = np.random.default_rng(7)
    xy, scores, particles = _scored_field(rng, 100, 300)
    few = particles[: MIN_LABELS_FOR_SCORE_COUNT - 1]
    assert count_from_label_scores([(xy, scores)], [few], 3.0) is None
    assert count_from_label_scores([(xy, scores), (xy[:0], scores[:0])], [few, np.zeros((0, 2))], 3.0) is None
    with pytest.raises(ValueError, match="quantile"):
        count_from_label_scores([(xy, scores)], [particles], 3.0, quantile=1.0)
