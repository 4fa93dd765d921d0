"""From a score map to particle coordinates: non-maximum suppression, cut-offs, particle size.

Coordinates follow the package convention: ``xy[:, 0]`` is x (column), ``xy[:, 1]`` is y (row), in pixels
of the map, origin at the first pixel. Everything here is plain numpy/scipy and works on maps of any size;
a 4096² map is handled in a few seconds because suppression only visits local maxima.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cryojoint.imaging import normalise

#: Local maxima are searched in this neighbourhood (pixels, square) before greedy suppression.
LOCAL_MAX_WINDOW_PX = 3
#: Sub-pixel offsets from the quadratic fit are clipped to this (a peak cannot move into the next pixel).
SUBPIXEL_MAX_OFFSET_PX = 0.5
#: The appendix recommends a cut-off near the top 25-30% of the predicted values.
DEFAULT_TOP_FRACTION = 0.25

#: A flat disc of diameter d has its strongest scale-normalised LoG response at sigma = d / (2*sqrt(2)).
DIAMETER_PER_LOG_SIGMA = 2.0 * math.sqrt(2.0)
#: A globular particle projects like a solid sphere (thickness sqrt(R^2 - r^2)); its strongest response is at
#: sigma = d / 3.32 (found numerically, independent of R). Used for particles: a disc model underestimates a
#: protein's diameter by ~15%.
DIAMETER_PER_LOG_SIGMA_SPHERE = 3.32
#: Smallest / largest diameters tried by :func:`estimate_particle_diameter` unless told otherwise.
DEFAULT_MIN_DIAMETER_PX = 4.0
DEFAULT_MAX_DIAMETER_PX = 160.0
#: Number of scales tried between the two (log-spaced; refined by a parabola in log-scale).
DIAMETER_SCALES = 64
#: The averaged patch extends this many LoG sigmas beyond the centre so the kernel is not truncated.
LOG_SUPPORT_SIGMAS = 4.0


def _finite_scores(score_map: np.ndarray) -> np.ndarray:
    """Floating copy with NaN ranked as -inf, below every real score (-inf pixels are never peaks)."""
    # Keep float32 maps in float32: a 4096² map is 64 MB per copy, and NMS makes a few.
    scores = np.array(score_map, dtype=np.result_type(np.asarray(score_map).dtype, np.float32), copy=True)
    scores[np.isnan(scores)] = -np.inf
    return scores


def _local_maxima(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns (raster order) of pixels equal to the maximum of their 3x3 neighbourhood."""
    neighbourhood_max = ndimage.maximum_filter(scores, size=LOCAL_MAX_WINDOW_PX, mode="nearest")
    is_peak = (scores == neighbourhood_max) & (scores > -np.inf)
    rows, cols = np.nonzero(is_peak)
    return rows, cols


def _disc_offsets(radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    reach = int(math.floor(radius_px))
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    inside = dy * dy + dx * dx <= radius_px * radius_px
    return dy[inside], dx[inside]


def _subpixel_offsets(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertex of the parabola through each peak and its two neighbours, per axis (0 at the border)."""
    ny, nx = scores.shape

    def along(axis_len: int, centre: np.ndarray, minus: np.ndarray, plus: np.ndarray, pos: np.ndarray) -> np.ndarray:
        curvature = minus - 2.0 * centre + plus
        with np.errstate(invalid="ignore", divide="ignore"):
            offset = 0.5 * (minus - plus) / curvature
        usable = (pos > 0) & (pos < axis_len - 1) & np.isfinite(offset) & (curvature < 0)
        offset = np.where(usable, offset, 0.0)
        return np.clip(offset, -SUBPIXEL_MAX_OFFSET_PX, SUBPIXEL_MAX_OFFSET_PX)

    centre = scores[rows, cols]
    rows_m, rows_p = np.clip(rows - 1, 0, ny - 1), np.clip(rows + 1, 0, ny - 1)
    cols_m, cols_p = np.clip(cols - 1, 0, nx - 1), np.clip(cols + 1, 0, nx - 1)
    dy = along(ny, centre, scores[rows_m, cols], scores[rows_p, cols], rows)
    dx = along(nx, centre, scores[rows, cols_m], scores[rows, cols_p], cols)
    return dy, dx


def nms_peaks(
    score_map: np.ndarray,
    radius_px: float,
    threshold: float | None = None,
    border_px: float = 0.0,
    max_peaks: int | None = None,
    subpixel: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-maximum suppression on a 2D score map.

    Candidates are the pixels equal to the maximum of their 3x3 neighbourhood (``maximum_filter``), so
    shoulders of a suppressed peak are never reported as particles. Candidates are visited by descending
    score; each one not yet suppressed is kept and suppresses every candidate within ``radius_px``
    (Euclidean, inclusive). Ties are broken by raster order: the candidate with the smaller row, then the
    smaller column, is visited first — so a flat plateau yields its top-left pixel and the result never
    depends on memory layout or platform.

    Parameters
    ----------
    score_map
        2D array; larger = more particle-like. NaN and -inf are never peaks.
    radius_px
        Suppression radius in pixels (typically the particle radius). 0 keeps every local maximum.
    threshold
        Keep peaks with ``score >= threshold``; ``None`` keeps all. Applied before suppression, so a
        sub-threshold peak never suppresses anything.
    border_px
        Candidates closer than this to an image edge (distance from the pixel centre to the first/last
        row/column) are dropped *before* suppression, so an edge artefact cannot suppress an interior
        particle.
    max_peaks
        Stop after this many peaks (the highest-scoring ones).
    subpixel
        Refine each kept peak by a per-axis quadratic fit through its 3x3 neighbourhood (offset clipped to
        half a pixel). Suppression itself uses the integer positions.

    Returns
    -------
    xy : ndarray, shape (N, 2), float64
        Peak positions, x = column, y = row, by descending score.
    scores : ndarray, shape (N,), float64
        Score-map values at the (integer) peak pixels.
    """
    score_map = np.asarray(score_map)
    if score_map.ndim != 2:
        raise ValueError(f"score_map must be 2D, got shape {score_map.shape}")
    if radius_px < 0 or not math.isfinite(radius_px):
        raise ValueError(f"radius_px must be a finite number >= 0, got {radius_px}")
    empty = (np.zeros((0, 2), dtype=np.float64), np.zeros(0, dtype=np.float64))
    if score_map.size == 0 or (max_peaks is not None and max_peaks <= 0):
        return empty
    scores = _finite_scores(score_map)
    rows, cols = _local_maxima(scores)
    peak_scores = scores[rows, cols]

    keep = np.ones(rows.shape, dtype=bool)
    if threshold is not None:
        keep &= peak_scores >= threshold
    if border_px > 0:
        ny, nx = scores.shape
        edge_distance = np.minimum(np.minimum(rows, ny - 1 - rows), np.minimum(cols, nx - 1 - cols))
        keep &= edge_distance >= border_px
    rows, cols, peak_scores = rows[keep], cols[keep], peak_scores[keep]
    if rows.size == 0:
        return empty

    # Stable sort on -score keeps raster order among ties (the documented tie-break).
    order = np.argsort(-peak_scores, kind="stable")
    rows, cols, peak_scores = rows[order], cols[order], peak_scores[order]

    kept = _greedy_suppress(rows, cols, scores.shape, radius_px, max_peaks)
    rows, cols, peak_scores = rows[kept], cols[kept], peak_scores[kept]
    y = rows.astype(np.float64)
    x = cols.astype(np.float64)
    if subpixel:
        dy, dx = _subpixel_offsets(scores, rows, cols)
        y, x = y + dy, x + dx
    return np.stack([x, y], axis=1), peak_scores.astype(np.float64)


def _greedy_suppress(
    rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], radius_px: float, max_peaks: int | None
) -> np.ndarray:
    """Indices (into the score-sorted candidates) kept by greedy suppression.

    A boolean image records suppressed pixels; each kept peak stamps a disc of ``radius_px``. Candidates are
    integer pixels, so pixel-level stamping is exact Euclidean suppression.
    """
    ny, nx = shape
    suppressed = np.zeros(shape, dtype=bool)
    disc_dy, disc_dx = _disc_offsets(radius_px)
    reach = int(math.floor(radius_px))
    limit = rows.size if max_peaks is None else max_peaks
    kept: list[int] = []
    for index, (row, col) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        if suppressed[row, col]:
            continue
        kept.append(index)
        if len(kept) >= limit:
            break
        if reach == 0:
            suppressed[row, col] = True
            continue
        disc_rows = disc_dy + row
        disc_cols = disc_dx + col
        if row < reach or col < reach or row + reach >= ny or col + reach >= nx:
            inside = (disc_rows >= 0) & (disc_rows < ny) & (disc_cols >= 0) & (disc_cols < nx)
            disc_rows, disc_cols = disc_rows[inside], disc_cols[inside]
        suppressed[disc_rows, disc_cols] = True
    return np.asarray(kept, dtype=np.intp)


def auto_threshold(
    scores: np.ndarray | Sequence[np.ndarray], top_fraction: float = DEFAULT_TOP_FRACTION
) -> float:
    """Score cut-off that keeps the top ``top_fraction`` of the given values (their (1 - f) quantile).

    The appendix recommends plotting the predicted values and cutting "around the top 25–30% of all
    values". Which values matters. Over *all pixels* of a soft segmentation map the result is useless:
    particles cover a few percent of a micrograph, so the 75% quantile of the pixels lies in the
    background (≈ the sigmoid floor) and every background wiggle would be picked. Over the *NMS peak
    scores* (one value per candidate particle, e.g. ``nms_peaks(map, r)[1]`` without a threshold) the
    distribution is a mixture of particle peaks and background peaks, and its upper quarter is where
    particles live — that is the recommended input. Pool the peak scores of all micrographs so that one
    cut-off applies to the whole data set.

    Parameters
    ----------
    scores
        One array or a sequence of arrays (pooled); NaN values are ignored.
    top_fraction
        Share of values at or above the returned cut-off, in (0, 1).

    Returns
    -------
    float
        ``numpy.quantile(values, 1 - top_fraction)`` (linear interpolation); NaN if there are no values.
    """
    if not 0.0 < top_fraction < 1.0:
        raise ValueError(f"top_fraction must be in (0, 1), got {top_fraction}")
    if isinstance(scores, np.ndarray):
        values = scores.ravel()
    else:
        parts = [np.asarray(s, dtype=np.float64).ravel() for s in scores]
        values = np.concatenate(parts) if parts else np.zeros(0)
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan")
    return float(np.quantile(values, 1.0 - top_fraction))


def count_from_probabilities(scores: np.ndarray | Sequence[float]) -> float:
    """How many of the candidates are particles if their scores (log-odds) were calibrated: the sum of their
    probabilities. The general model's are not (told the true diameter, every NMS peak; the sum over the true count):
    low at low dose (0.11-0.45 on six sets of five structures at 10 %), 0.2-1.2 at full dose, 0.71 on real
    beta-galactosidase, and 1.6-1.9 on ASPIRE, whose decoys it takes for particles. Not a count to trust alone
    (``benchmarks/results/2026-12-04-s27-zero-shot-cutoff.md``)."""
    from scipy.special import expit  # the logistic, without overflow at large |x|

    values = np.asarray(scores, dtype=np.float64).ravel()
    return float(np.sum(expit(values[~np.isnan(values)])))


#: The labelled picks' score that :func:`count_from_label_scores` counts candidates above: their median, so that
#: one odd label (a click beside its particle, a particle on carbon) moves it little.
LABEL_SCORE_QUANTILE = 0.5
#: Fewest labelled picks whose scores are trusted to place that median.
MIN_LABELS_FOR_SCORE_COUNT = 5


def count_from_label_scores(candidates: Sequence[tuple[np.ndarray, np.ndarray]], labels_xy: Sequence[np.ndarray],
                            match_radius_px: float, quantile: float = LABEL_SCORE_QUANTILE) -> float | None:
    """How many particles the candidates of some images hold, judged by where their labelled particles rank.

    If the labelled picks are a fair sample of the particles, the share of them scoring at least ``s`` is the
    share of all particles that do, and the candidates scoring at least ``s`` are mostly those particles: their
    number divided by that share counts the particles, wherever the user picked and however few picks each
    image has. ``s`` is the labels' ``quantile`` score; a label with no candidate within ``match_radius_px``
    ranks below every candidate. Candidates above ``s`` that are not particles are counted too, so a poor
    picker overcounts. ``candidates`` and ``labels_xy`` are per image (``(xy, scores)`` and label ``xy``, the
    same pixels). None when fewer than :data:`MIN_LABELS_FOR_SCORE_COUNT` labels are given or too few of them
    were found to place ``s``.
    """
    from scipy.spatial import cKDTree

    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    label_scores: list[np.ndarray] = []
    for (xy, scores), labels in zip(candidates, labels_xy, strict=True):
        labels = np.asarray(labels, dtype=float).reshape(-1, 2)
        found = np.full(len(labels), -np.inf)
        if len(labels) and len(xy):
            distance, nearest = cKDTree(np.asarray(xy, dtype=float)).query(labels)
            within = distance <= match_radius_px
            found[within] = np.asarray(scores, dtype=float)[nearest[within]]
        label_scores.append(found)
    ranked = np.concatenate(label_scores) if label_scores else np.zeros(0)
    if len(ranked) < MIN_LABELS_FOR_SCORE_COUNT:
        return None
    level = float(np.quantile(ranked, quantile, method="lower"))
    if not np.isfinite(level):
        return None
    share_at_or_above = float(np.mean(ranked >= level))
    above = sum(int(np.count_nonzero(np.asarray(scores, dtype=float) >= level)) for _, scores in candidates)
    return above / share_at_or_above


def mean_particle_image(
    images: Sequence[np.ndarray], coords: Sequence[np.ndarray], half_width_px: int
) -> tuple[np.ndarray, int]:
    """Average of robust-normalised patches centred at the labelled picks (the mean particle image).

    Patches reaching outside the image are padded with the image's median (background), which adds no
    structure. Returns the ``(2h+1)²`` mean patch and the number of picks averaged.
    """
    size = 2 * half_width_px + 1
    total = np.zeros((size, size), dtype=np.float64)
    count = 0
    for image, xy in zip(images, coords, strict=True):
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if xy.shape[0] == 0:
            continue
        normalised = normalise(image, dtype=np.float64)
        padded = np.pad(normalised, half_width_px, mode="constant", constant_values=0.0)
        ny, nx = normalised.shape
        cols = np.rint(xy[:, 0]).astype(int)
        rows = np.rint(xy[:, 1]).astype(int)
        inside = (cols >= 0) & (cols < nx) & (rows >= 0) & (rows < ny)
        for row, col in zip(rows[inside].tolist(), cols[inside].tolist(), strict=True):
            total += padded[row : row + size, col : col + size]
            count += 1
    if count == 0:
        raise ValueError("no labelled pick lies inside its image; cannot average particles")
    return total / count, count


def _log_kernel(sigma: float, half_width_px: int) -> np.ndarray:
    """Scale-normalised Laplacian-of-Gaussian ``-sigma² ∇²G`` (positive centre), made zero-mean.

    With this sign a *bright* blob gives a positive response; zero mean makes the response blind to the
    background level of the patch.
    """
    grid = np.arange(-half_width_px, half_width_px + 1, dtype=np.float64)
    r2 = grid[:, None] ** 2 + grid[None, :] ** 2
    s2 = sigma * sigma
    gaussian = np.exp(-r2 / (2.0 * s2)) / (2.0 * np.pi * s2)
    kernel = -(r2 - 2.0 * s2) / s2 * gaussian  # = -sigma² ∇²G
    return kernel - kernel.mean()


class ParticleSizeAtSearchLimit(ValueError):
    """The mean particle's blob response still rises at the largest diameter searched.

    ``by_spacing``: that limit was the spacing of the picks (more picks could help), not the search range or the
    image (binning the micrographs brings the particle into range).
    """

    def __init__(self, message: str, by_spacing: bool) -> None:
        super().__init__(message)
        self.by_spacing = by_spacing


@dataclass(frozen=True)
class DiameterReading:
    """A particle diameter measured on labelled picks, and where on the mean particle it was read."""

    diameter_px: float
    #: "fringe": at the CTF fringe along the mean particle's edge; "core": its blob alone (no fringe stood out of
    #: the noise), which reads short of the edge under phase contrast (0.58-0.87 of the diameter, measured).
    read_at: str


def estimate_particle_diameter(
    images: Sequence[np.ndarray],
    coords: Sequence[np.ndarray],
    min_px: float = DEFAULT_MIN_DIAMETER_PX,
    max_px: float | None = None,
    shape_model: str = "sphere",
) -> float:
    """Particle diameter (pixels) from the labelled picks: :func:`measure_particle_diameter`'s reading."""
    return measure_particle_diameter(images, coords, min_px, max_px, shape_model).diameter_px


def measure_particle_diameter(
    images: Sequence[np.ndarray],
    coords: Sequence[np.ndarray],
    min_px: float = DEFAULT_MIN_DIAMETER_PX,
    max_px: float | None = None,
    shape_model: str = "sphere",
) -> DiameterReading:
    """Particle diameter (pixels) from the labelled picks, by scale-space blob response of the mean particle.

    Patches centred at every labelled pick are normalised and averaged (noise falls as 1/√N, so a few dozen
    picks suffice at low dose). The scale-normalised LoG response of this mean particle at its centre is
    evaluated over log-spaced scales; its extremum (refined by a parabola in log-scale) is at
    ``sigma = d / (2√2)`` for a disc of diameter d, so ``d = 2√2·sigma``. For a Gaussian blob of std s this
    gives ``2√2·s`` (the blob-detection convention). The polarity (dark or bright particles) is taken from
    the mean patch's centre contrast against its surroundings, so either imaging convention works.

    The LoG reads the mean particle's *core*. Under phase contrast a particle's own contrast ends inside its edge
    and an opposite fringe runs along the edge (:func:`_halo_radius`); when the mean particle has such a fringe,
    clearly above noise, the diameter is read at it instead (never below the LoG's). Measured at 10 % dose:
    ribosome 37 -> 48 px (true 52), RuvB 28 -> 34 (34), real beta-galactosidase 16 -> 23 (27); no change on
    discs, blobs and spheres without a CTF. Checked on 12 other simulated sets (2 structures, 4.5 and 6.5 Å/px,
    defocus 0.5-1, 1-3, 3-5 µm, ~100-180 picks at 10 % dose): where the fringe was found (7 of 12) 0.91-1.04 of
    the true diameter against 0.71-0.87 from the core; near focus or with fewer picks it is not found and the
    core's estimate stands. With a few dozen picks at 10 % dose it is rarely found.

    Works on micrographs binned to the usual picking pixel size (~4-6 Å/px, as in the paper), where the
    particle is a blob. At fine pixel sizes (<= 2 Å/px) and high defocus the CTF removes the particle's low
    frequencies and leaves fringes, and the strongest blob response is a fringe (measured: 4-20 px for a
    40-60 px particle): bin first, or give the diameter.

    Parameters
    ----------
    images
        Micrographs (2D arrays), one per entry of ``coords``.
    coords
        Per image, the labelled particle centres, shape (N, 2), x = column, y = row.
    min_px, max_px
        Range of diameters searched. ``max_px=None``: the smallest of 160 px, half the smallest image side,
        and (with 5+ picks) the median distance from a pick to its nearest labelled neighbour — particles do
        not overlap, so centres of labelled ones are at least a diameter apart. Without that bound a mean of
        few, very noisy patches can prefer the largest scale.
    shape_model
        ``"sphere"`` (default; globular proteins) or ``"disc"``: the profile the LoG scale is converted with.

    Returns
    -------
    DiameterReading
        Estimated diameter in pixels, clipped to ``[min_px, max_px]``, and whether it was read at the fringe.
    """
    images = list(images)
    coords = list(coords)
    if len(images) != len(coords):
        raise ValueError(f"{len(images)} images but {len(coords)} coordinate arrays")
    if not images:
        raise ValueError("no images given")
    smallest_side = min(min(np.shape(image)) for image in images)
    by_spacing = False
    if max_px is None:
        spacing = median_neighbour_distance(coords)
        max_px = min(DEFAULT_MAX_DIAMETER_PX, smallest_side / 2.0, spacing)
        by_spacing = spacing <= max_px
    if not 0 < min_px < max_px:
        raise ValueError(f"need 0 < min_px < max_px, got {min_px}, {max_px}")
    per_sigma = {"sphere": DIAMETER_PER_LOG_SIGMA_SPHERE, "disc": DIAMETER_PER_LOG_SIGMA}[shape_model]
    sigmas = np.geomspace(min_px, max_px, DIAMETER_SCALES) / per_sigma
    half_width = int(math.ceil(LOG_SUPPORT_SIGMAS * sigmas[-1]))
    mean_patch, _ = mean_particle_image(images, coords, half_width)

    # Polarity: centre region (smallest diameter searched) against the whole patch.
    grid = np.arange(-half_width, half_width + 1)
    radius = np.sqrt(grid[:, None] ** 2 + grid[None, :] ** 2)
    centre_region = radius <= max(min_px / 2.0, 1.0)
    polarity = 1.0 if mean_patch[centre_region].mean() >= mean_patch.mean() else -1.0

    kernels = [_log_kernel(sg, half_width) for sg in sigmas]
    responses = np.array([polarity * float(np.sum(k * mean_patch)) for k in kernels])
    # Significance gate: the same responses for means of as many patches at random places show how large
    # noise alone makes them at each scale (small scales are the noisiest). Only scales where the particle
    # stands clearly above that count; with too few or too noisy picks, no scale does.
    random_patches = _random_position_patches(images, [len(np.reshape(c, (-1, 2))) for c in coords], half_width)
    noise = np.array([[polarity * float(np.sum(k * patch)) for k in kernels] for patch in random_patches])
    significant = responses > SIGNIFICANCE_SIGMAS * noise.std(axis=0) + noise.mean(axis=0)
    if not significant.any():
        raise ValueError(f"the {sum(len(np.reshape(c, (-1, 2))) for c in coords)} labelled picks are too few or "
                         "too noisy to measure the particle size; give it explicitly")
    responses = np.where(significant, responses, -np.inf)
    best = int(np.argmax(responses))
    if best == len(sigmas) - 1:
        if by_spacing:
            raise ParticleSizeAtSearchLimit(
                f"the particle size reaches the largest size searched ({max_px:.0f} px, bounded by the spacing of "
                "the picks): too few picks to measure it; give it explicitly", by_spacing=True)
        raise ParticleSizeAtSearchLimit(
            f"the particle size reaches the largest size searched ({max_px:.0f} px): bin the micrographs "
            "(--downsample) or give it explicitly", by_spacing=False)
    log_sigma = np.log(sigmas)
    if 0 < best < len(sigmas) - 1 and significant[best - 1] and significant[best + 1]:
        y0, y1, y2 = responses[best - 1 : best + 2]
        curvature = y0 - 2.0 * y1 + y2
        step = log_sigma[1] - log_sigma[0]
        offset = 0.5 * (y0 - y2) / curvature if curvature < 0 else 0.0
        best_log_sigma = log_sigma[best] + float(np.clip(offset, -0.5, 0.5)) * step
    else:
        best_log_sigma = log_sigma[best]
    diameter = per_sigma * math.exp(best_log_sigma)
    halo_radius = _halo_radius(mean_patch, random_patches, polarity, diameter / 2.0, max_px / 2.0)
    read_at = "core"
    if halo_radius is not None and 2.0 * halo_radius > diameter:
        diameter, read_at = 2.0 * halo_radius, "fringe"
    return DiameterReading(float(np.clip(diameter, min_px, max_px)), read_at)


def radial_profile(patch: np.ndarray) -> np.ndarray:
    """Mean of a square ``(2h+1)²`` patch over rings one pixel wide around its centre, radii 0..h."""
    half_width = patch.shape[0] // 2
    grid = np.arange(-half_width, half_width + 1)
    ring = np.rint(np.sqrt(grid[:, None] ** 2 + grid[None, :] ** 2)).astype(int)
    inside = ring <= half_width
    sums = np.bincount(ring[inside], weights=patch[inside], minlength=half_width + 1)
    counts = np.bincount(ring[inside], minlength=half_width + 1)
    return sums / np.maximum(counts, 1)


def _halo_radius(mean_patch: np.ndarray, random_patches: Sequence[np.ndarray], polarity: float,
                 core_radius: float, largest_radius: float) -> float | None:
    """Radius of the opposite-contrast ring around the mean particle (its edge under a CTF), if there is one.

    Phase contrast band-passes the image: a particle's own contrast falls to zero inside its edge and an
    opposite-contrast fringe lies along the edge, so the blob the LoG sees is the particle's core (measured on
    mean particles at 10 % dose: ribosome LoG 37 px vs 52 true, RuvB 28 vs 34, real beta-galactosidase 16 vs
    27), while the deepest point of the fringe lies at 0.89-0.95 of the true radius. Returns that radius (px,
    refined by a parabola) when the fringe is deeper than :data:`SIGNIFICANCE_SIGMAS` times the ring noise of
    means of as many patches at random places, else ``None`` (no CTF fringe: in-focus, phase plate, blobs).
    """
    profile = polarity * radial_profile(mean_patch)
    noise = np.array([polarity * radial_profile(patch) for patch in random_patches])
    profile = profile - noise.mean(axis=0)
    last = min(int(math.floor(largest_radius)) + 1, len(profile) - 2)
    first = int(math.ceil(core_radius))
    # The fringe starts where the particle's own contrast has fallen to the background.
    below = [r for r in range(first, last + 1) if profile[r] <= 0.0]
    if not below:
        return None
    start = below[0]
    radius = start + int(np.argmin(profile[start:last + 1]))
    # A fringe is a dip: beyond it the profile climbs back towards the background. A plain edge into a
    # background darker than the image mean (a dense field without CTF fringes) stays low and is no fringe.
    outer = slice(int(round(HALO_OUTER_FROM * radius)), int(round(HALO_OUTER_TO * radius)) + 1)
    if outer.start >= len(profile):
        return None
    recovery = float(profile[outer].mean() - profile[radius])
    noise_recovery = noise[:, outer].mean(axis=1) - noise[:, radius]  # the same climb where there is no particle
    if recovery - float(noise_recovery.mean()) <= SIGNIFICANCE_SIGMAS * float(noise_recovery.std()):
        return None
    # ... and deep on the particle's own scale: a fringe is a sizeable part of the contrast (measured: 40-80 % of
    # the core's mean contrast), a faint ripple of the background is not.
    core_contrast = float(profile[: max(int(core_radius / 2.0), 1) + 1].mean())
    if recovery < HALO_MIN_SHARE_OF_CORE * core_contrast:
        return None
    if 0 < radius < len(profile) - 1:
        y0, y1, y2 = profile[radius - 1 : radius + 2]
        curvature = y0 - 2.0 * y1 + y2
        if curvature > 0:
            return radius + float(np.clip(0.5 * (y0 - y2) / curvature, -0.5, 0.5))
    return float(radius)


#: Responses must exceed the random-position mean by this many of its standard deviations.
SIGNIFICANCE_SIGMAS = 3.0
#: The ring beyond a candidate fringe at radius r that it must climb back towards: radii HALO_OUTER_FROM*r to
#: HALO_OUTER_TO*r (on mean particles the fringe has recovered most of its depth by 1.4-1.6 r), by more than
#: SIGNIFICANCE_SIGMAS times what the same climb measures on means of patches at random places.
HALO_OUTER_FROM, HALO_OUTER_TO = 1.4, 1.6
#: The climb must also be at least this share of the mean contrast of the particle's core.
HALO_MIN_SHARE_OF_CORE = 0.2
#: Sets of random positions drawn to measure the noise of the mean-patch response.
NOISE_DRAWS = 12


def _random_position_patches(images: Sequence[np.ndarray], counts: Sequence[int], half_width: int,
                             ) -> list[np.ndarray]:
    """Means of patches at random positions, as many per image as picks (:data:`NOISE_DRAWS` of them): what
    noise and background alone make of a mean particle image. Seeded from the image sizes (deterministic).
    """
    rng = np.random.default_rng(sum(int(np.size(im)) for im in images) + sum(counts))
    patches = []
    for _ in range(NOISE_DRAWS):
        random_coords = [
            np.column_stack([rng.uniform(0, np.shape(im)[1] - 1, n), rng.uniform(0, np.shape(im)[0] - 1, n)])
            for im, n in zip(images, counts, strict=True)
        ]
        patches.append(mean_particle_image(images, random_coords, half_width)[0])
    return patches


#: Picks needed before their spacing is trusted as an upper bound on the particle size.
MIN_PICKS_FOR_SPACING_BOUND = 5


def median_neighbour_distance(coords: Sequence[np.ndarray]) -> float:
    """Median nearest-labelled-neighbour distance within each image (inf with too few picks)."""
    from scipy.spatial import cKDTree

    distances = []
    for xy in coords:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if len(xy) >= 2:
            d, _ = cKDTree(xy).query(xy, k=2)
            distances.append(d[:, 1])
    if not distances or sum(len(d) for d in distances) < MIN_PICKS_FOR_SPACING_BOUND:
        return math.inf
    return float(np.median(np.concatenate(distances)))
