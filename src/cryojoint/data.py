"""From micrographs and sparse labels to training batches: soft labels, density and prior estimates, patches.

Everything here is numpy and deterministic given a ``numpy.random.Generator``; the training loop turns the
arrays into tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import ConvexHull, QhullError

from cryojoint.config import FILTERED_SPECTRUM_CUTOFF_CYCLES_PER_DIAMETER, DataConfig, LossConfig
from cryojoint.contrast import (
    AS_RECORDED,
    MAX_PICK_MICROGRAPHS,
    read_particle_contrast,
    vote_sample,
)
from cryojoint.errors import UserInputError, first_names
from cryojoint.imaging import (
    MAD_TO_STD,
    Flattening,
    bin_image,
    flatten_background,
    flatten_spectrum_beyond,
    looks_filtered,
    normalise,
    snap_factor,
    to_binned_coordinates,
)
from cryojoint.io.coords import (
    DUPLICATE_PICK_PX,
    check_inside,
    check_names_match,
    drop_duplicate_picks,
    labels_in_a_corner,
)
from cryojoint.io.mrc import Micrograph, read_micrograph
from cryojoint.picking import (
    DiameterReading,
    ParticleSizeAtSearchLimit,
    measure_particle_diameter,
    median_neighbour_distance,
)

#: Smallest labelled region (px^2 at network scale) we trust for a density estimate; below it, use the image.
MIN_REGION_AREA_PX2 = 64.0**2
#: Fewest picks on a micrograph that outline the region they were picked in (a convex hull with points inside).
MIN_PICKS_FOR_REGION = 4


# ---------------------------------------------------------------------------------------------- labels


def soft_label_map(shape: tuple[int, int], xy: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian bump of peak 1 around each pick (the max where bumps overlap), in float32.

    Computed only within 3 sigma of each pick, so it costs O(picks), not O(picks x pixels).
    """
    target = np.zeros(shape, dtype=np.float32)
    reach = int(np.ceil(3 * sigma_px))
    for x, y in np.asarray(xy, dtype=float).reshape(-1, 2):
        x0, x1 = max(int(np.floor(x)) - reach, 0), min(int(np.ceil(x)) + reach + 1, shape[1])
        y0, y1 = max(int(np.floor(y)) - reach, 0), min(int(np.ceil(y)) + reach + 1, shape[0])
        if x0 >= x1 or y0 >= y1:
            continue
        gy, gx = np.mgrid[y0:y1, x0:x1]
        bump = np.exp(-((gx - x) ** 2 + (gy - y) ** 2) / (2 * sigma_px**2)).astype(np.float32)
        np.maximum(target[y0:y1, x0:x1], bump, out=target[y0:y1, x0:x1])
    return target


def labelled_region_area(xy: np.ndarray, particle_diameter_px: float) -> float:
    """Area (px^2) of the region a user picked in, estimated from the picks alone.

    The convex hull of n points drawn uniformly from a region is smaller than the region; by Efron's identity
    its expected area is the region's times ``1 - E[V] / (n + 1)`` (V: points on the hull), so the hull area
    divided by ``1 - V / (n + 1)`` estimates the region. Measured on simulated label regions (ribosome and
    RuvB fields, 40-80 % of the particles labelled): label density x image area / true count = 0.61-0.78,
    i.e. the labelled share itself, where the hull grown by a particle radius gave 0.84-1.07 (the grown hull
    undershoots the region by about that share, a coincidence of this simulator's region size and count).
    Fewer than four picks, or collinear ones: discs of one particle radius around them.
    """
    points = np.asarray(xy, dtype=float).reshape(-1, 2)
    radius = particle_diameter_px / 2
    if len(points) < MIN_PICKS_FOR_REGION:
        return float(len(points) * np.pi * radius**2)
    try:
        hull = ConvexHull(points)
    except QhullError:  # collinear picks
        span = np.ptp(points, axis=0)
        return float((span.max() + 2 * radius) * 2 * radius)
    n, on_hull = len(points), len(hull.vertices)
    return float(hull.volume * (n + 1) / (n + 1 - on_hull))  # hull.volume is the area in 2D


#: Area per disc of unit diameter in the densest packing of discs (hexagonal): sqrt(3) / 2.
CLOSE_PACKED_AREA_PER_DISC = math.sqrt(3.0) / 2.0


def close_packed_density(particle_diameter_px: float) -> float:
    """The most particles per px^2 that fit: discs of the diameter in hexagonal packing."""
    return 1.0 / (CLOSE_PACKED_AREA_PER_DISC * particle_diameter_px**2)


def estimate_expected_particles(
    coords_per_image: Sequence[np.ndarray], shapes: Sequence[tuple[int, int]], particle_diameter_px: float,
    label_completeness: float = 1.0,
) -> float:
    """Particles per micrograph implied by the density of picks where the user picked.

    Users pick only some particles even inside their region: the density of picks there is divided by
    ``label_completeness``, the share of the region's particles they picked (1: a lower bound). Pass
    ``--expected-particles`` when you know better. Topaz asks the same question with ``-n``.
    """
    density = label_region_density(coords_per_image, shapes, particle_diameter_px, label_completeness)
    close_packed = close_packed_density(particle_diameter_px)
    # No more particles than discs of the diameter fit (hexagonal packing); with too few picks per micrograph to
    # tell where they were picked, that bound is all the labels say.
    density = close_packed if density is None else min(density, close_packed)
    mean_area = float(np.mean([s[0] * s[1] for s in shapes]))
    return density * mean_area


def label_region_density(coords_per_image: Sequence[np.ndarray], shapes: Sequence[tuple[int, int]],
                         particle_diameter_px: float, label_completeness: float = 1.0) -> float | None:
    """Particles per px^2 where the user picked (see :func:`estimate_expected_particles`).

    Only micrographs with at least :data:`MIN_PICKS_FOR_REGION` picks show where their picks were made; the
    others train as well but are left out here: the discs around 1-3 picks are no region, and counting them made
    16 labels (2 per micrograph) ask for 853 particles per micrograph where 187 were (ribosome, 10 % dose).
    None when no micrograph has that many picks.
    """
    if not 0.0 < label_completeness <= 1.0:
        raise ValueError(f"label_completeness must be in (0, 1], got {label_completeness}")
    if not any(len(xy) for xy in coords_per_image):
        raise UserInputError(None, "no labelled particles to estimate the particle density from")
    densities, weights = [], []
    for xy, shape in zip(coords_per_image, shapes):
        if len(xy) < MIN_PICKS_FOR_REGION:
            continue
        area = max(labelled_region_area(xy, particle_diameter_px), MIN_REGION_AREA_PX2)
        area = min(area, float(shape[0] * shape[1]))
        densities.append(len(xy) / area)
        weights.append(len(xy))
    if not densities:
        return None
    return float(np.average(densities, weights=weights)) / label_completeness


#: Bounds of the PU prior pi (a share of pixels): the GE term needs 0 < pi < 1, and no micrograph is half particle.
PI_BOUNDS: tuple[float, float] = (1e-4, 0.5)


def positive_fraction(expected_particles: float, image_area_px2: float, positive_radius_px: float) -> float:
    """The share of all pixels that belong to a particle's positive disc (before any is labelled)."""
    return float(np.clip(expected_particles * np.pi * positive_radius_px**2 / image_area_px2, *PI_BOUNDS))


def unlabelled_positive_fraction(targets: np.ndarray, centred_on_label: np.ndarray, density_per_px2: float,
                                 pixels_per_positive: float) -> float:
    """Prior pi of the PU loss for one batch: the expected share of positives among its *unlabelled* pixels.

    The labelled particles are positives the loss already knows; pi is what remains, spread over what is not
    labelled: ``(expected positive mass - labelled mass) / unlabelled mass``, where a pixel with soft target w
    counts w as labelled and 1 - w as unlabelled. A patch centred on a labelled particle holds that particle on
    top of the average density, and in a labelled region most of its neighbours are labelled too: there pi falls
    to the unlabelled share of the region, ``(1 - completeness) x density``, as it should.

    Parameters
    ----------
    targets
        Soft labels of the batch, ``(batch, 1, H, W)``.
    centred_on_label
        ``(batch,)`` bool: which patches were drawn centred on a labelled particle.
    density_per_px2
        Expected particles per px^2 (all particles, labelled or not).
    pixels_per_positive
        Mass (px^2) of one particle's soft label.
    """
    scored = ~np.isnan(targets.reshape(len(targets), -1)).any(axis=1)  # denoiser-only patches: not scored
    targets, centred_on_label = targets[scored], centred_on_label[scored]
    per_patch_area = float(np.prod(targets.shape[-2:]))
    labelled_mass = targets.reshape(len(targets), -1).sum(axis=1, dtype=np.float64)
    expected_mass = pixels_per_positive * (density_per_px2 * per_patch_area + centred_on_label.astype(float))
    remaining = np.maximum(expected_mass - labelled_mass, 0.0).sum()
    unlabelled_mass = max(float(per_patch_area * len(targets) - labelled_mass.sum()), 1.0)
    return float(np.clip(remaining / unlabelled_mass, *PI_BOUNDS))


# ------------------------------------------------------------------------------------------ datasets


@dataclass
class LabelledImage:
    """One micrograph at network scale: normalised pixels, its picks and their soft label map."""

    name: str
    image: np.ndarray  # float32 (ny, nx), normalised
    picks_xy: np.ndarray  # (n, 2) x, y at network scale
    target: np.ndarray | None = None  # soft labels, float32 (ny, nx); NaN where the detector is not scored
    pixel_size: float | None = None  # Å/px at network scale


@dataclass
class PreparedData:
    """What training needs, derived once from the user's files."""

    train: list[LabelledImage]
    validation: list[LabelledImage]
    particle_diameter_px: float
    expected_particles: float
    pi: float
    label_sigma_px: float
    pixels_per_positive: float  # area (px^2) of one particle's soft label: 2 pi sigma^2
    noise_std: float  # per-pixel noise of the normalised images (from neighbour differences)
    mean_area_px2: float  # mean micrograph area at network scale: expected_particles is per this area
    downsample: float
    diameter_was_estimated: bool = False
    expected_was_estimated: bool = False
    notes: list[str] = field(default_factory=list)
    particle_contrast: str = AS_RECORDED  # "bright": the images were negated for the network

    @property
    def density_per_px2(self) -> float:
        """Expected particles (labelled or not) per px^2 at network scale."""
        return self.expected_particles / self.mean_area_px2


def load_micrographs(paths: Sequence[str | Path]) -> list[Micrograph]:
    if not paths:
        raise UserInputError(None, "no micrographs given")
    micrographs = [read_micrograph(p) for p in paths]
    check_unique_names([m.name for m in micrographs], paths)
    return micrographs


def check_unique_names(names: Sequence[str], paths: Sequence[str | Path] | None = None) -> None:
    """Micrographs are joined to their labels and outputs by name: two with one name is a user error (``paths``, in
    the order of ``names``, let it say which files)."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        same = [] if paths is None else [p for n, p in zip(names, paths, strict=True) if n == duplicates[0]]
        if same and len({Path(p).resolve() for p in same}) == 1:  # one file twice (a glob and a folder, a list...)
            raise UserInputError(Path(same[0]), f"given {len(same)} times; give each micrograph once")
        files = f": {first_names([str(p) for p in same], 2)}" if same else ""
        raise UserInputError(None, f"several micrographs share the name '{duplicates[0]}'{files} (names must be "
                             "unique: outputs and labels are matched by file name)")


def flatten_if_filtered(image: np.ndarray, particle_diameter_px: float) -> tuple[np.ndarray, bool]:
    """``image`` with its spectrum flattened beyond the particle's band when it looks low-pass filtered
    (config.FILTERED_SPECTRUM_CUTOFF_CYCLES_PER_DIAMETER; docs/general-model.md "Filtered micrographs"), and whether
    it was. Raw micrographs pass unchanged."""
    if not looks_filtered(image):
        return image, False
    return flatten_spectrum_beyond(image, FILTERED_SPECTRUM_CUTOFF_CYCLES_PER_DIAMETER / particle_diameter_px), True


def prepare_data(
    micrographs: Sequence[Micrograph],
    labels: pd.DataFrame,
    data_config: DataConfig,
    loss_config: LossConfig,
    labels_source: str | Path | None = None,
    denoiser_only: Collection[str] = (),
    read_size: SizeReader | None = None,
) -> PreparedData:
    """Bin, normalise, check labels against images, derive particle size / count / pi, split validation.

    ``denoiser_only`` names micrographs for the denoiser: nothing is known of their particles (not even how many
    there are, as on a real micrograph in the pretraining corpus), so the detection loss does not score them (their
    target is NaN) and they are never held out for validation. Label-free terms (denoising, flip consistency) still
    use them. A micrograph given with no labels otherwise counts as holding the expected particles, none of them
    labelled (the PU prior covers it).
    ``read_size``: see :func:`resolve_downsample`.
    """
    unknown = sorted(set(denoiser_only) - {m.name for m in micrographs})
    if unknown:
        raise ValueError(f"denoiser_only names micrographs not given: {', '.join(unknown)}")
    denoiser_only_labelled = sorted(set(labels["micrograph"].astype(str)) & set(denoiser_only))
    if denoiser_only_labelled:
        raise UserInputError(labels_source, f"micrograph '{denoiser_only_labelled[0]}' has labels but is given for "
                             "the denoiser only")
    for micrograph in micrographs:
        micrograph.check_not_blank()
    check_names_match(labels, [m.name for m in micrographs], labels_source)
    shapes = {m.name: m.shape for m in micrographs}
    check_inside(labels, shapes, labels_source, tolerance_px=EDGE_TOLERANCE_PX,
                 remedy=" (picked on micrographs of another size? `cryojoint convert LABELS NEW --scale F` rescales "
                        "them, F = these micrographs' size / that size)")
    notes: list[str] = []
    labels, moved = _onto_the_image(labels, shapes)
    if moved:
        notes.append(f"{moved} label(s) lay up to {EDGE_TOLERANCE_PX:g} px beyond the last pixel (1-based or "
                     "pixel-edge coordinates?): moved onto the image's edge")
    corner = labels_in_a_corner(labels, shapes)
    if corner is not None:
        notes.append(f"all {len(labels)} labels lie in the top-left 1/{corner:g} of their micrographs' width and "
                     "height: if they were picked on binned copies, scale them up first (coordinates must be in the "
                     "given micrographs' pixels: `cryojoint convert LABELS NEW --scale N`, N the binning they were "
                     "picked at)")
    labels, n_duplicates = drop_duplicate_picks(labels)
    if n_duplicates:
        notes.append(f"{n_duplicates} label(s) repeat another pick of their micrograph (within "
                     f"{DUPLICATE_PICK_PX:g} px) and were dropped")
    factor, diameter = resolve_downsample(micrographs, labels, data_config, labels_source, notes, read_size)
    diameter_estimated = data_config.particle_diameter_px is None
    if diameter_estimated:
        notes.append(f"particle diameter estimated from the labels: {diameter:.1f} px (network scale)")
    images: list[LabelledImage] = []
    flattened = 0
    for mic in micrographs:
        rows = labels[labels["micrograph"].astype(str) == mic.name]
        xy = to_binned_coordinates(rows[["x", "y"]].to_numpy(float), factor)
        pixel_size = None if mic.pixel_size is None else mic.pixel_size * factor
        binned = bin_image(mic.data, factor)
        if data_config.flatten_filtered_spectrum:
            binned, was_filtered = flatten_if_filtered(binned, diameter)
            flattened += was_filtered
        images.append(LabelledImage(mic.name, normalise(binned), xy, None, pixel_size))
    if flattened:
        notes.append(f"{flattened} of {len(micrographs)} micrograph(s) look low-pass filtered: their spectrum is "
                     "flattened beyond the particle's band (the pretrained model learned from raw micrographs), "
                     "here and whenever this model predicts")
    labelled = [im for im in images if len(im.picks_xy)]
    expected = data_config.expected_particles
    expected_estimated = expected is None
    if expected is None:
        completeness = data_config.label_completeness
        coords, shapes = [im.picks_xy for im in labelled], [im.image.shape for im in labelled]
        expected = estimate_expected_particles(coords, shapes, diameter, completeness)
        if label_region_density(coords, shapes, diameter, completeness) is None:
            notes.append(f"fewer than {MIN_PICKS_FOR_REGION} labels on every micrograph: where they were picked "
                         "cannot be told from them; training's prior assumes at most "
                         f"{expected:.0f} particles per micrograph (discs of the diameter packed tight)")
        else:
            notes.append(f"expected particles per micrograph for training's prior, from the label density: "
                         f"{expected:.0f} (assuming {completeness:.0%} of the particles in the labelled regions are "
                         "labelled)")
    contrast = resolve_particle_contrast(images, data_config.particle_contrast, diameter, denoiser_only, notes)
    for im in images:
        if contrast == "bright":
            np.negative(im.image, out=im.image)
        im.image, _ = flatten_ice(im.image, data_config, diameter)
    label_sigma = max(loss_config.label_sigma_fraction * diameter / 2, 1.0)
    for im in images:
        im.target = (np.full(im.image.shape, np.nan, np.float32) if im.name in denoiser_only
                     else soft_label_map(im.image.shape, im.picks_xy, label_sigma))
    # expected_particles is per micrograph of this area; micrographs the detector never scores do not count
    mean_area = float(np.mean([im.image.size for im in images if im.name not in denoiser_only] or
                              [im.image.size for im in images]))
    # One particle's share of positive pixels is the mass of its soft label, 2 pi sigma^2.
    pixels_per_positive = 2 * np.pi * label_sigma**2
    pi = positive_fraction(expected, mean_area, float(np.sqrt(pixels_per_positive / np.pi)))

    train, validation = split_validation(images, data_config.validation_fraction)
    return PreparedData(train, validation, diameter, expected, pi, label_sigma, float(pixels_per_positive),
                        estimate_noise_std([im.image for im in images]), mean_area, factor, diameter_estimated,
                        expected_estimated, notes, contrast)


def resolve_particle_contrast(images: Sequence[LabelledImage], asked: str, particle_diameter_px: float,
                              denoiser_only: Collection[str], notes: list[str]) -> str:
    """``asked`` unless it is "auto": then read from the labelled picks (else the images' darkest and brightest
    blobs, :mod:`cryojoint.contrast`); a note says when particles read bright, as the network will be given the
    negated images."""
    if asked != "auto":
        if asked == "bright":
            notes.append("particles are brighter than the ice (as given): the network is given the negated images")
        return asked
    scored = [im for im in images if im.name not in denoiser_only]
    labelled = vote_sample([im for im in scored if len(im.picks_xy)], MAX_PICK_MICROGRAPHS)
    # Without labelled picks, the tails of as many micrographs as a vote takes.
    reading, mirror = read_particle_contrast([im.image for im in labelled or vote_sample(scored or images)],
                                             [im.picks_xy for im in labelled] or None, particle_diameter_px)
    if mirror is not None:
        notes.append(f"the labels do not sit on particles as given, but do {mirror}: {CHECK_CONVENTION}")
    if reading.contrast == "bright":
        notes.append(f"particles read as brighter than the ice ({reading.evidence}): the network is given the "
                     "negated images, and the model keeps this for the micrographs it predicts "
                     "(--particle-contrast dark if they are not)")
    return reading.contrast


#: Pixel size (Å) the particle size is measured near when the headers give a finer one (the bin factor is the
#: rounded ratio): at <= 2 Å/px the CTF's fringes are the strongest blobs (picking.estimate_particle_diameter), at
#: the picking scale (the paper's 5.3 Å/px) the particle is. Ribosome, 10 % dose: at 2.65 Å/px 70 px (true 104),
#: binned to 5.3 Å/px 2 x 52.1; at 5.3 Å/px 47.9 (52), binned to 10.6 Å/px 2 x 36.8 (the CTF fringe is lost).
ESTIMATE_PIXEL_SIZE_ANGSTROM = 5.0
#: Smallest image side (px) a binned copy may have for measuring the particle size.
SMALLEST_ESTIMATE_SIDE_PX = 256
#: Readings of the particle size at successively coarser bins before the bin factor is settled.
MAX_SIZE_READINGS = 3


def automatic_downsample(particle_diameter_px: float, max_network_particle_px: float) -> int:
    """Smallest integer bin factor that brings a particle of ``particle_diameter_px`` (input pixels) to at most
    ``max_network_particle_px``."""
    return max(1, math.ceil(particle_diameter_px / max_network_particle_px - 1e-9))


def network_factor(particle_diameter_px: float, target_px: float) -> float:
    """Bin factor (:func:`~cryojoint.imaging.snap_factor`) that brings a particle of ``particle_diameter_px``
    (input px) to ``target_px``; never below 1: up-sampling would correlate the pixel noise the blind-spot denoiser
    needs independent, so smaller particles stay at their own size."""
    if not math.isfinite(particle_diameter_px) or particle_diameter_px <= 0:
        raise UserInputError(None, f"the particle diameter must be a positive size, got {particle_diameter_px}")
    return snap_factor(max(1.0, particle_diameter_px / target_px))


#: How far (px) beyond the first or last pixel centre a label may lie and still be taken, moved onto the edge: tools
#: that write 1-based or pixel-edge coordinates put a particle on the last pixel at x = n.
EDGE_TOLERANCE_PX = 1.0
#: Units a particle diameter may be given in (``250A``, ``250Å``, ``48px``; a bare ``48`` only without header sizes).
_ANGSTROM_SUFFIXES = ("angstrom", "a", "å")
#: The unit :func:`parse_particle_diameter` reports for a number given without one.
NO_UNIT = "none"
#: Smallest particle diameter (input px) accepted: below it a "particle" is a pixel or two of noise, and a value this
#: small is almost always a unit mistake (Å read as nm, a radius in some other scale).
SMALLEST_PARTICLE_DIAMETER_PX = 4.0


def _onto_the_image(labels: pd.DataFrame, shapes: dict[str, tuple[int, int]]) -> tuple[pd.DataFrame, int]:
    """Labels clipped to their micrograph's pixel centres (0 .. n - 1), and how many moved."""
    size = np.array([shapes[str(name)] for name in labels["micrograph"]], dtype=float).reshape(-1, 2)  # (ny, nx)
    xy = labels[["x", "y"]].to_numpy(float)
    clipped = np.clip(xy, 0.0, size[:, ::-1] - 1)
    moved = int(np.count_nonzero((clipped != xy).any(axis=1)))
    if moved:
        labels = labels.assign(x=clipped[:, 0], y=clipped[:, 1])
    return labels, moved


def parse_particle_diameter(text: str) -> tuple[float, str]:
    """``"250A"`` -> (250.0, "angstrom"); ``"48px"`` -> (48.0, "px"); ``"48"`` -> (48.0, NO_UNIT); else a user error."""
    cleaned = str(text).strip().lower().replace(" ", "")
    unit = NO_UNIT
    for suffix in (*_ANGSTROM_SUFFIXES, "px"):
        if cleaned.endswith(suffix):
            unit = "px" if suffix == "px" else "angstrom"
            cleaned = cleaned[: -len(suffix)]
            break
    try:
        value = float(cleaned)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserInputError(None, f"--particle-diameter '{text}' is not a size: give e.g. 250A (Ångström, with the "
                             "pixel size from the MRC header) or 48px (input pixels)")
    return value, unit


def _readable(read: Callable[[str | Path], Any], paths: Sequence[str | Path]) -> dict[Path, Any]:
    """``read`` of each micrograph whose header reads (the others are left out)."""
    found = {}
    for path in paths:
        try:
            found[Path(path)] = read(path)
        except UserInputError:
            continue
    return found


def particle_diameter_in_pixels(text: str, paths: Sequence[str | Path]) -> float:
    """A diameter given as :func:`parse_particle_diameter` reads it, in input pixels of ``paths``' micrographs.

    Ångström need the pixel size in their MRC headers, the same in all of them. A bare number is taken as pixels only
    when no header gives a pixel size: otherwise it could be either (RELION asks Å, Topaz and crYOLO pixels), and a
    wrong guess trains or picks at a size off by the pixel size without a word.
    """
    from cryojoint.io.mrc import micrograph_geometry

    value, unit = parse_particle_diameter(text)
    # Ångström need every header; otherwise a bad file is reported where it is read in full, per file.
    geometry = {Path(p): micrograph_geometry(p) for p in paths} if unit == "angstrom" else \
        _readable(micrograph_geometry, paths)
    if unit == "angstrom":
        missing = [p for p, (_, size) in geometry.items() if not size]
        if missing:
            raise UserInputError(missing[0], f"no pixel size in its MRC header: give --particle-diameter in pixels "
                                 f"({text} / Å per pixel, e.g. {value / 5:.0f}px at 5 Å/px)")
    sizes = {p: size for p, (_, size) in geometry.items() if size}
    distinct = sorted({round(float(s), 4) for s in sizes.values()})
    if unit == NO_UNIT and distinct:
        example, in_px = next(iter(sizes)), value / distinct[0]
        if max(value, in_px) < SMALLEST_PARTICLE_DIAMETER_PX:
            choices = (f"a larger size: as pixels or as Ångström ({in_px:.3g} px there) it is smaller than the "
                       f"{SMALLEST_PARTICLE_DIAMETER_PX:g} px a particle needs to be seen")
        elif in_px < SMALLEST_PARTICLE_DIAMETER_PX:
            choices = f"{value:g}px (as Ångström it would be {in_px:.3g} px there, too small to see)"
        else:
            choices = f"{value:g}A (Ångström, {in_px:.0f} px there) or {value:g}px"
        raise UserInputError(None, f"--particle-diameter {text} has no unit and the MRC headers give a pixel size "
                             f"({example.name}: {distinct[0]:g} Å/px): give {choices}")
    if unit == "angstrom" and len(distinct) > 1:
        by_size: dict[float, list[Path]] = {}
        for path, size in sizes.items():
            by_size.setdefault(round(float(size), 4), []).append(path)
        listed = ", ".join(f"{len(by_size[s])} at {s:g} Å/px (e.g. {by_size[s][0].name})" for s in distinct[:3])
        raise UserInputError(None, f"the micrographs have different pixel sizes ({listed}"
                             f"{', ...' if len(distinct) > 3 else ''}): a particle measures differently on each and "
                             "one run bins all alike: run each pixel size into its own --out folder (if the headers "
                             "are wrong and all are alike, give --particle-diameter in pixels)")
    diameter_px = value / distinct[0] if unit == "angstrom" else value
    if diameter_px < SMALLEST_PARTICLE_DIAMETER_PX:
        raise UserInputError(None, f"--particle-diameter {text} is {diameter_px:.2g} px in the micrographs: smaller "
                             f"than the {SMALLEST_PARTICLE_DIAMETER_PX:g} px a particle needs to be seen (another "
                             "unit?)")
    if geometry:
        smallest_path, (smallest, _) = min(geometry.items(), key=lambda item: min(item[1][0]))
        if diameter_px > min(smallest):
            raise UserInputError(smallest_path, f"--particle-diameter {text} is {diameter_px:.0f} px: larger than "
                                 f"this micrograph ({smallest[1]}x{smallest[0]} px; another unit?)")
    return diameter_px


#: How a user gives the particle size, from the command line or a RELION job.
GIVE_SIZE = "train --particle-diameter 250A or 48px; a RELION job: --particle_diameter_angstrom 250"


#: What to do about labels that sit on particles only when mirrored.
CHECK_CONVENTION = ("check the coordinate convention (origin, axes) of the tool that wrote them, or of the image "
                    "file they were picked on")


#: Reads the particle diameter with a pretrained model (:func:`cryojoint.size_reading.read_size_with_model`):
#: (labelled micrographs with their picks, the blob reading, the largest diameter the picks' spacing allows; input
#: px) -> the diameter in input px, or None when it cannot tell.
SizeReader = Callable[[Sequence[tuple[Micrograph, np.ndarray]], float, float], float | None]


def resolve_downsample(micrographs: Sequence[Micrograph], labels: pd.DataFrame, data_config: DataConfig,
                       labels_source: str | Path | None, notes: list[str],
                       read_size: SizeReader | None = None) -> tuple[float, float]:
    """The bin factor training uses and the particle diameter at that scale (px), given or measured on the labels.

    A factor in the config stands, and a diameter not given is measured at it. Automatic (``None``): from the given
    diameter, else from one measured on the labelled micrographs at their own scale, or binned to
    ~:data:`ESTIMATE_PIXEL_SIZE_ANGSTROM` when the headers give a finer pixel size, or binned further while the
    particle is wider than the size search reaches; then measured again at the factor chosen. When that measure read
    the mean particle's core, ``read_size`` (fine-tuning a pretrained model) reads the size the model sees the picks
    best at instead.
    """
    labelled = [(m, labels[labels["micrograph"].astype(str) == m.name]) for m in micrographs]
    labelled = [(m, rows[["x", "y"]].to_numpy(float)) for m, rows in labelled if len(rows)]
    if not labelled and data_config.particle_diameter_px is None:
        raise UserInputError(labels_source, "no label matches any given micrograph")

    readings: list[DiameterReading] = []  # the last one is the reading used

    def measured_at(factor: float) -> float:
        readings.append(measure_particle_diameter([bin_image(m.data, factor) for m, _ in labelled],
                                                  [to_binned_coordinates(xy, factor) for _, xy in labelled]))
        return readings[-1].diameter_px

    def note_a_core_reading() -> None:
        if readings and readings[-1].read_at == "core":
            picks = sum(len(xy) for _, xy in labelled)
            notes.append(f"the particle size was read at the core of the mean particle of {picks} picks (no CTF "
                         "fringe along its edge stood out of their noise): under phase contrast a core reads short of "
                         f"the edge (0.58-0.87 of the diameter, measured); if you know the size, give it ({GIVE_SIZE})")

    def user_error(err: ValueError) -> UserInputError:
        return UserInputError(labels_source, f"{err} ({GIVE_SIZE})")

    limit = data_config.max_network_particle_px
    given = data_config.particle_diameter_px
    given_factor = None if data_config.downsample is None else snap_factor(data_config.downsample)
    target = data_config.network_particle_px

    def automatic(diameter_px: float) -> float:
        return automatic_downsample(diameter_px, limit) if target is None else network_factor(diameter_px, target)

    def binning_note(factor: float, diameter_px: float, how: str) -> str:
        why = (f"wider than {limit:.0f} px" if target is None else
               f"brought to the {target:.0f} px the pretrained model works at")
        return f"binned {factor:g}x inside the network: the particle {how} {diameter_px:.0f} px, {why} " \
               "(--downsample 1 keeps the full size)"

    if given is not None:
        factor = given_factor or automatic(given)
        if given_factor is None and factor > 1:
            notes.append(binning_note(factor, given, "is"))
        return factor, given / factor
    if given_factor is not None:
        try:
            measured = measured_at(given_factor)
        except ValueError as err:
            raise user_error(err) from None
        note_a_core_reading()
        return given_factor, measured
    sizes = [m.pixel_size for m, _ in labelled if m.pixel_size]
    scale = max(1, round(ESTIMATE_PIXEL_SIZE_ANGSTROM / min(sizes))) if sizes else 1
    smallest_side = min(min(m.shape) for m, _ in labelled)
    while True:
        try:
            measured = measured_at(scale)
            break
        except ParticleSizeAtSearchLimit as err:
            if err.by_spacing or smallest_side // (2 * scale) < SMALLEST_ESTIMATE_SIDE_PX:
                raise user_error(err) from None
            scale *= 2
        except ValueError as err:
            raise user_error(err) from None
    factor = automatic(measured * scale)
    # A particle read wider than the limit is measured again where the network works: the LoG and the CTF fringe
    # read a binned particle better (ribosome at 2.65 Å/px, 73 labels at 10 % dose: 70 px at full size, 2 x 52.1
    # binned 2x, 3 x 34.0 binned 3x; true 104). A bin the new reading calls too fine grows; a reading that fails
    # keeps the one before. A reading within the limit stands: binned only to the general model's 36 px, the
    # demo's ribosome (52 px, 20 % dose) read 49.5 px at full size and 27 x 1.375 = 37 px binned.
    for _ in range(MAX_SIZE_READINGS):
        if factor <= scale or measured <= limit:
            break
        try:
            measured, scale = measured_at(factor), factor
        except ValueError:
            break
        factor = max(factor, automatic(measured * scale))
    diameter_px = measured * scale
    model_px = (read_size(labelled, diameter_px, median_neighbour_distance([xy for _, xy in labelled]))
                if read_size is not None and readings[-1].read_at == "core" else None)
    read_by_model = model_px is not None and model_px > diameter_px
    if read_by_model:
        notes.append(f"the particle size was read at the core of the mean particle ({diameter_px:.0f} px), which "
                     "reads short of the edge under phase contrast; the pretrained model scores the labelled picks "
                     f"highest with the particle at {model_px:.0f} px, and training uses that (if you know the "
                     f"size, give it: {GIVE_SIZE})")
        diameter_px, factor = model_px, automatic(model_px)
    if factor > 1:
        notes.append(binning_note(factor, diameter_px, "measures"))
    if not read_by_model:
        note_a_core_reading()
    return factor, diameter_px / factor


def flatten_ice(image: np.ndarray, data_config: DataConfig,
                particle_diameter_px: float) -> tuple[np.ndarray, Flattening | None]:
    """The network's input from a normalised image: its ice flattened as ``data_config`` asks, or the image itself
    (and no :class:`~cryojoint.imaging.Flattening`) when that is off. Training and prediction both call this, so
    the network reads the same kind of input in both."""
    if data_config.background_sigma_diameters is None:
        return image, None
    return flatten_background(image, data_config.background_sigma_diameters * particle_diameter_px)


def estimate_noise_std(images: Sequence[np.ndarray]) -> float:
    """Per-pixel noise from horizontal neighbour differences (robust): shot noise is independent per pixel,
    particle and ice signal are smooth at the pixel scale, so differences are almost pure noise."""
    spreads = []
    for image in images:
        diff = np.diff(image, axis=1)
        diff -= np.median(diff)  # in place: prediction calls this on whole micrographs (64 MB a copy at 4096²)
        np.abs(diff, out=diff)
        spreads.append(float(np.median(diff, overwrite_input=True)) * MAD_TO_STD / np.sqrt(2))
    return max(float(np.median(spreads)), 1e-3)


def split_validation(images: list[LabelledImage], fraction: float) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Hold out whole labelled micrographs when there are enough, else the far side of each label region.

    The split does not depend on the training seed: seeds then differ only in how training went, never in which
    micrographs it saw. It is stratified by label count: labelled micrographs ordered by their number of picks
    (then name), and the held-out ones spread evenly along that order, so validation holds sparsely and densely
    labelled micrographs alike.

    With too few labelled micrographs, the picks are split along x at the quantile ``1 - fraction`` and the
    validation part is cropped out of the training image, so no held-out pixel is ever trained on.
    """
    if fraction <= 0:
        return images, []
    labelled = sorted((i for i, im in enumerate(images) if len(im.picks_xy)),
                      key=lambda i: (len(images[i].picks_xy), images[i].name))
    n_val = int(round(fraction * len(labelled)))
    if len(labelled) >= 3 and n_val >= 1:
        chosen = {labelled[int((k + 0.5) * len(labelled) / n_val)] for k in range(n_val)}
        return [im for i, im in enumerate(images) if i not in chosen], [images[i] for i in sorted(chosen)]
    # Too few labelled micrographs: split each labelled image into a train part and a held-out strip.
    train, validation = [], []
    for im in images:
        if len(im.picks_xy) < 4:
            train.append(im)
            continue
        cut = float(np.quantile(im.picks_xy[:, 0], 1 - fraction))
        cut_col = int(np.clip(round(cut), 64, im.image.shape[1] - 64))
        left = im.picks_xy[:, 0] < cut_col
        assert im.target is not None
        train.append(LabelledImage(im.name, im.image[:, :cut_col], im.picks_xy[left], im.target[:, :cut_col],
                                   im.pixel_size))
        right_xy = im.picks_xy[~left] - np.array([cut_col, 0.0])
        validation.append(LabelledImage(f"{im.name}[validation]", im.image[:, cut_col:], right_xy,
                                        im.target[:, cut_col:], im.pixel_size))
    return train, validation


# ------------------------------------------------------------------------------------------- sampling


class PatchSampler:
    """Random training patches: a share centred on labelled particles, the rest anywhere; flips and 90° turns.

    Deterministic given its generator, whose state is saved with checkpoints so a resumed run draws the same
    batches.
    """

    def __init__(self, images: Sequence[LabelledImage], patch_size: int, labelled_centre_fraction: float,
                 rng: np.random.Generator) -> None:
        usable = [im for im in images if min(im.image.shape) >= patch_size]
        if not usable:
            largest = max(images, key=lambda im: min(im.image.shape), default=None)
            shown = "" if largest is None else \
                f" (the largest, {largest.name}, is {largest.image.shape[1]}x{largest.image.shape[0]} px as trained on)"
            raise UserInputError(None, f"every micrograph is smaller than the {patch_size} px training patch{shown}")
        self.images = usable
        self.patch_size = patch_size
        self.labelled_centre_fraction = labelled_centre_fraction
        self.rng = rng
        self._picks = [(i, xy) for i, im in enumerate(usable) for xy in im.picks_xy]
        weights = np.array([im.image.size for im in usable], dtype=float)
        self._image_weights = weights / weights.sum()

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(images, targets)``, each float32 ``(batch, 1, patch, patch)``."""
        images, targets, _ = self.sample_with_origin(batch_size)
        return images, targets

    def sample_with_origin(self, batch_size: int, labelled_centre_fraction: float | None = None
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images, targets, on_particle)``: the last says which patches were centred on a labelled pick.

        Those patches over-represent particles; the training loop keeps them out of the denoising loss so the
        denoiser still learns from an unbiased sample of the micrographs. ``labelled_centre_fraction`` overrides
        the sampler's own share (0: every patch uniform, as for a denoiser trained alone).
        """
        centre_fraction = self.labelled_centre_fraction if labelled_centre_fraction is None \
            else labelled_centre_fraction
        size = self.patch_size
        images = np.empty((batch_size, 1, size, size), dtype=np.float32)
        targets = np.empty_like(images)
        centred = np.zeros(batch_size, dtype=bool)
        for b in range(batch_size):
            on_particle = bool(self._picks) and self.rng.random() < centre_fraction
            centred[b] = on_particle
            if on_particle:
                index, (x, y) = self._picks[int(self.rng.integers(len(self._picks)))]
                im = self.images[index]
                top = int(np.clip(round(y) - size // 2, 0, im.image.shape[0] - size))
                left = int(np.clip(round(x) - size // 2, 0, im.image.shape[1] - size))
            else:
                im = self.images[int(self.rng.choice(len(self.images), p=self._image_weights))]
                top = int(self.rng.integers(0, im.image.shape[0] - size + 1))
                left = int(self.rng.integers(0, im.image.shape[1] - size + 1))
            patch = im.image[top:top + size, left:left + size]
            target = (im.target[top:top + size, left:left + size] if im.target is not None
                      else np.zeros((size, size), np.float32))
            turns, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            images[b, 0] = augment(patch, turns, flip)
            targets[b, 0] = augment(target, turns, flip)
        return images, targets, centred


def augment(patch: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    out = np.rot90(patch, turns)
    return np.ascontiguousarray(out[:, ::-1] if flip else out)
