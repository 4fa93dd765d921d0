"""Whether particles are darker or brighter than the ice, read from the data.

Raw cryo-EM micrographs show protein darker than the ice at the scale of a particle (phase contrast under defocus),
and the shipped general model learned particles so. Some micrographs come the other way round: a pipeline that
inverts contrast, a simulator's sign convention, negative stain. The network is then given the negated image, so
it always sees dark particles. Measured on the `standard` profile at 10 % dose, its micrographs inverted (session
25): the general model zero-shot picked them at AP 0.25 against 0.77 as recorded (0.77 again with the inversion read
and undone); fine-tuned from it for 600 steps without undoing it, 0.880 ± 0.016 against 0.891 ± 0.016 undone (seeds
0-2, paired +0.011 ± 0.002; benchmarks/README.md, "Session 25").

Both readings use the scale-normalised Laplacian-of-Gaussian response at the particle's size (positive on bright
blobs of that diameter), in pixels of the images given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from cryojoint.imaging import pixel_values_at, robust_centre_spread
from cryojoint.picking import DIAMETER_PER_LOG_SIGMA

ParticleContrast = Literal["dark", "bright"]
#: How models from before contrast was recorded, and the general model, read micrographs: as recorded.
AS_RECORDED: ParticleContrast = "dark"
#: The labelled picks decide when their mean response stands this many standard errors from zero. Measured (robust
#: z-scores at the true diameter, 10 % dose; 2 picks per micrograph in brackets): ribosome -1.48 ± 0.08 over 85 picks
#: (-1.61 ± 0.19 over 16), RuvB -0.72 ± 0.11 (-0.83 ± 0.23 over 12), ASPIRE -2.55 ± 0.08, real beta-galactosidase
#: -1.62 ± 0.03 over 409 (-1.54 ± 0.11 over 20): 3.6-54 standard errors, always dark.
PICKS_DECIDE_AT_STANDARD_ERRORS = 3.0
#: ... at whichever of these fractions of the diameter they stand out most: under phase contrast the particle's dark
#: core is a cleaner blob than its whole outline (at 0.7 of the diameter: ribosome -2.10 ± 0.08, ASPIRE -4.12 ± 0.11,
#: real beta-galactosidase -2.53 ± 0.04; a 256² RuvB field at 60 % dose, 37 picks: -0.11 ± 0.32 at the diameter,
#: -0.77 ± 0.16 at 0.7 of it).
PICK_SCALES = (0.5, 0.7, 1.0)
#: Without labels: how far out each side of the response distribution reaches, to these quantiles. Particles, clumps,
#: contamination and carbon edges are all dark objects in a raw micrograph, so they stretch the dark tail.
TAIL_QUANTILES = (0.001, 0.999)
#: ... and the mean over micrographs of log(upper reach / lower reach) must pass this to read bright. Measured on
#: micrographs as recorded (dark), per micrograph at the network's scale: simulated `standard` -1.53 to -0.24,
#: `second` -1.18 to -0.02, ASPIRE -1.14 to -0.68, the raw mrcfile exposures -0.62 and -0.11, but the filtered
#: real beta-galactosidase set -0.33 to +0.12 (mean -0.07): where particles are the only objects the tails say
#: little, so it takes a clear margin to overturn dark, the convention of raw cryo-EM.
TAIL_RATIO_READS_BRIGHT = 0.3
#: Micrographs read for the vote without labels (spread evenly over those given).
MAX_VOTE_MICROGRAPHS = 8
#: Labelled micrographs read for the picks' response (spread evenly; each costs a filtering of the whole image): 16
#: of 2 picks each decide on the ribosome at 10 % dose by 8 standard errors.
MAX_PICK_MICROGRAPHS = 16


def blob_response(image: np.ndarray, particle_diameter_px: float) -> np.ndarray:
    """Scale-normalised ``-sigma² ∇²(G * image)`` at ``sigma = d / (2√2)``: positive on bright blobs of diameter d."""
    sigma = particle_diameter_px / DIAMETER_PER_LOG_SIGMA
    data = np.asarray(image, dtype=np.float64)
    return -(sigma**2) * ndimage.gaussian_laplace(data, sigma, mode="reflect")


def tail_ratio(response: np.ndarray) -> float:
    """log(how far the upper tail reaches from the median / how far the lower one does): > 0 when bright blobs
    stand out more than dark ones."""
    centre = float(np.median(response))
    low, high = np.quantile(response, TAIL_QUANTILES)
    return math.log(max(high - centre, 1e-12) / max(centre - low, 1e-12))


def heavier_tail(response: np.ndarray) -> ParticleContrast:
    """``"bright"`` when the response's upper tail reaches further from its median than the lower, else ``"dark"``."""
    return "bright" if tail_ratio(response) >= 0 else "dark"


@dataclass(frozen=True)
class ContrastReading:
    """How particles look against the ice, and what it was read from (for a note to the user)."""

    contrast: ParticleContrast
    evidence: str


def _picks_strengths(images: Sequence[np.ndarray], variants: dict[str, Sequence[np.ndarray] | None],
                     particle_diameter_px: float) -> dict[str, tuple[float, float, float, int] | None]:
    """For each variant of the picks (per image, ``None``: skipped): (|mean| / standard error, mean, standard error,
    picks) of the blob response at them (robust z-scores per image, pooled) at the scale of :data:`PICK_SCALES` where
    it stands out most; ``None`` with fewer than 2 picks. Each image is filtered once for all variants."""
    live = {key: coords for key, coords in variants.items() if coords is not None}
    values: dict[tuple[str, float], list[np.ndarray]] = {(key, scale): [] for key in live for scale in PICK_SCALES}
    for index, image in enumerate(images):
        per_variant = {key: np.asarray(coords[index], dtype=np.float64).reshape(-1, 2) for key, coords in live.items()}
        if not any(len(xy) for xy in per_variant.values()):
            continue
        for scale in PICK_SCALES:
            response = blob_response(image, scale * particle_diameter_px)
            centre, spread = robust_centre_spread(response)
            for key, xy in per_variant.items():
                values[(key, scale)].append((pixel_values_at(response, xy) - centre) / spread)
    strengths: dict[str, tuple[float, float, float, int] | None] = {key: None for key in variants}
    for key in live:
        best: tuple[float, float, float, int] | None = None
        for scale in PICK_SCALES:
            parts = values[(key, scale)]
            pooled = np.concatenate(parts) if parts else np.zeros(0)
            if len(pooled) < 2:
                best = None
                break
            mean = float(pooled.mean())
            standard_error = max(float(pooled.std(ddof=1)) / math.sqrt(len(pooled)), 1e-12)
            if best is None or abs(mean) / standard_error > best[0]:
                best = (abs(mean) / standard_error, mean, standard_error, len(pooled))
        strengths[key] = best
    return strengths


#: How coordinates get mirrored between tools and image files (an origin at the bottom, a transposed image), as
#: ``(ny, nx) -> xy -> xy``.
MIRRORS: dict[str, Callable[[tuple[int, int], np.ndarray], np.ndarray]] = {
    "flipped top to bottom (y -> height - 1 - y)":
        lambda shape, xy: np.column_stack([xy[:, 0], shape[0] - 1 - xy[:, 1]]),
    "flipped left to right (x -> width - 1 - x)":
        lambda shape, xy: np.column_stack([shape[1] - 1 - xy[:, 0], xy[:, 1]]),
    "with x and y swapped": lambda shape, xy: xy[:, ::-1],
}
#: A mirroring is named when the picks stand out this many standard errors under it (twice what reads the
#: contrast) and twice as many as as given. Measured (the benchmark's partial labels): as given 8.8 (`second` 10 %),
#: 27 (`standard` 10 %), 70 (real beta-galactosidase); mirrored any of the three ways 0.5-1.9, 0.6-1.0, 2.6-3.3.
MIRROR_NAMED_AT_STANDARD_ERRORS = 2 * PICKS_DECIDE_AT_STANDARD_ERRORS
#: Fewest picks a mirroring is named from: a standard error from a handful of picks is itself noise, and the best of
#: three mirrorings at three scales passed the bar by chance on 2 picks of a simulated micrograph.
MIRROR_NAMED_MIN_PICKS = 10


def mirrored(how: str, shapes: Sequence[tuple[int, int]], coords: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    """``coords`` (per image of ``shapes``) mirrored as :data:`MIRRORS` ``how`` says; ``None`` where they would
    leave an image."""
    moved = []
    for shape, xy in zip(shapes, coords, strict=True):
        xy = MIRRORS[how](shape, np.asarray(xy, dtype=np.float64).reshape(-1, 2))
        if len(xy) and (xy.min() < 0 or (xy[:, 0] > shape[1] - 1).any() or (xy[:, 1] > shape[0] - 1).any()):
            return None
        moved.append(xy)
    return moved


def read_labels_contrast(images: Sequence[np.ndarray], coords: Sequence[np.ndarray],
                         particle_diameter_px: float) -> tuple[ContrastReading | None, str | None]:
    """The particles' contrast as the labelled picks show it, and the mirroring (a key of :data:`MIRRORS`) under which
    the picks sit on particles clearly better than as given, if one does — a coordinate convention lost between two
    tools; the contrast is then read at the mirrored picks.

    The reading is the sign of the mean blob response at the picks (robust z-scores per image, pooled over all picks)
    at the scale of :data:`PICK_SCALES` where it stands out most; ``None`` when fewer than two picks are given or it
    is within :data:`PICKS_DECIDE_AT_STANDARD_ERRORS` standard errors of zero."""
    shapes = [np.shape(image) for image in images]
    variants: dict[str, Sequence[np.ndarray] | None] = {"given": coords}
    variants.update({how: mirrored(how, shapes, coords) for how in MIRRORS})
    strengths = _picks_strengths(images, variants, particle_diameter_px)
    given = strengths["given"]
    chosen, mirror = given, None
    for how in MIRRORS:
        found = strengths[how]
        if (found is not None and found[3] >= MIRROR_NAMED_MIN_PICKS and found[0] > MIRROR_NAMED_AT_STANDARD_ERRORS
                and found[0] > 2.0 * (0.0 if given is None else given[0])
                and (mirror is None or found[0] > chosen[0])):  # type: ignore[index]
            chosen, mirror = found, how
    if chosen is None or chosen[0] <= PICKS_DECIDE_AT_STANDARD_ERRORS:
        return None, mirror
    _, mean, standard_error, picks = chosen
    where = "" if mirror is None else f" {mirror}"
    return ContrastReading("bright" if mean > 0 else "dark",
                           f"the {picks} labelled picks'{where} mean blob response {mean:+.2f} ± "
                           f"{standard_error:.2f} robust sd"), mirror


def contrast_from_tails(images: Sequence[np.ndarray], particle_diameter_px: float) -> ContrastReading:
    """Bright when the images' mean :func:`tail_ratio` passes :data:`TAIL_RATIO_READS_BRIGHT`, else dark."""
    ratios = [tail_ratio(blob_response(image, particle_diameter_px)) for image in images]
    if not ratios:
        raise ValueError("no images to read the particles' contrast from")
    mean = float(np.mean(ratios))
    contrast: ParticleContrast = "bright" if mean > TAIL_RATIO_READS_BRIGHT else "dark"
    return ContrastReading(contrast, f"bright blobs of the particle's size reach {math.exp(mean):.2f}x as far as dark "
                                     f"ones, mean of {len(ratios)} micrograph(s)")


def read_particle_contrast(images: Sequence[np.ndarray], coords: Sequence[np.ndarray] | None,
                           particle_diameter_px: float) -> tuple[ContrastReading, str | None]:
    """From the labelled picks when they decide (:func:`read_labels_contrast`, with the mirroring it found), else from
    the images' tails."""
    reading, mirror = read_labels_contrast(images, coords, particle_diameter_px) if coords else (None, None)
    return (reading or contrast_from_tails(images, particle_diameter_px)), mirror


def vote_sample(items: Sequence, count: int = MAX_VOTE_MICROGRAPHS) -> list:
    """At most ``count`` of ``items``, spread evenly over them (the first and last included)."""
    if len(items) <= count:
        return list(items)
    return [items[int(round(i))] for i in np.linspace(0, len(items) - 1, count)]


def choose_polarity(image: np.ndarray, particle_diameter_px: float,
                    labelled_xy: np.ndarray | None = None) -> ParticleContrast:
    """One image's particle contrast, as the blob-detector baseline decides it.

    With labelled picks: the sign of the mean blob response at those picks (robust with a dozen picks).
    Without: the side of the blob-response distribution with the heavier tail — particles are sparse blobs
    of one sign, so they stretch one tail of the response far beyond the noise.
    """
    response = blob_response(image, particle_diameter_px)
    if labelled_xy is not None and np.asarray(labelled_xy).size:
        return "bright" if float(np.mean(pixel_values_at(response, labelled_xy))) >= 0 else "dark"
    return heavier_tail(response)
