"""No-learning floors carried by every results table (design.md §3).

- A Laplacian-of-Gaussian blob picker tuned to the particle size: on simulated low-dose data it can reach an
  AP comparable to a briefly trained learned picker, so a learned method must clearly beat it.
- A Gaussian low-pass: on PSNR it scores about as well as learned denoisers, which is why FRC and PSNR
  against the noise-free image are reported too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from cryojoint.contrast import blob_response, choose_polarity
from cryojoint.imaging import robust_centre_spread
from cryojoint.picking import nms_peaks

Polarity = Literal["auto", "dark", "bright", "abs"]
POLARITIES: tuple[str, ...] = ("auto", "dark", "bright", "abs")

#: Default low-pass: amplitude 1/2 at a period of this fraction of the particle diameter, i.e. detail
#: finer than a third of a particle (which no picker needs and which is mostly noise at low dose) is removed.
LOWPASS_HALF_AMPLITUDE_PERIOD_PER_DIAMETER = 1.0 / 3.0
#: Gaussian transfer exp(-2π²σ²f²) equals 1/2 at f = sqrt(ln 2 / 2) / (π σ).
_GAUSSIAN_HALF_AMPLITUDE_FREQ_TIMES_SIGMA = math.sqrt(math.log(2.0) / 2.0) / math.pi
#: Sigmas tried by :func:`best_lowpass_sigma` (log-spaced, pixels).
_LOWPASS_SIGMA_GRID = np.geomspace(0.5, 16.0, 21)


def _robust_z(values: np.ndarray) -> np.ndarray:
    centre, spread = robust_centre_spread(values)
    return (values - centre) / spread


def blob_score_map(
    image: np.ndarray,
    particle_diameter_px: float,
    polarity: Polarity = "auto",
    labelled_xy: np.ndarray | None = None,
) -> np.ndarray:
    """Blob-detector score map at the particle size: scale-normalised LoG, as robust z-scores.

    The response ``-sigma²∇²(G_sigma * image)`` with ``sigma = d/(2√2)`` peaks at the centre of a blob of
    diameter d. It is divided by its robust spread (1.4826·MAD) so that scores are comparable across
    micrographs of different exposure — needed to pool picks for one AP or apply one cut-off.

    Parameters
    ----------
    image
        2D micrograph.
    particle_diameter_px
        Particle diameter in pixels of ``image``.
    polarity
        ``"dark"``: particles darker than background (the usual cryo-EM contrast), ``"bright"``, ``"abs"``:
        either (absolute response), ``"auto"``: decided by :func:`choose_polarity` (from ``labelled_xy``
        when given).
    labelled_xy
        Optional labelled particle centres (N, 2) used by ``"auto"``.

    Returns
    -------
    ndarray
        float64 map of the same shape, larger = more particle-like.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    if particle_diameter_px <= 0:
        raise ValueError(f"particle_diameter_px must be > 0, got {particle_diameter_px}")
    response = _robust_z(blob_response(image, particle_diameter_px))
    if polarity == "auto":
        polarity = choose_polarity(image, particle_diameter_px, labelled_xy)
    if polarity == "abs":
        return np.abs(response)
    return response if polarity == "bright" else -response


def blob_pick(
    image: np.ndarray,
    particle_diameter_px: float,
    threshold: float | None = None,
    border_px: float = 0.0,
    polarity: Polarity = "auto",
    labelled_xy: np.ndarray | None = None,
    nms_radius_px: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick particles with the blob detector: :func:`blob_score_map` then :func:`~cryojoint.picking.nms_peaks`.

    ``nms_radius_px`` defaults to the particle radius (two particles cannot be closer than a diameter, and
    half of it tolerates touching particles). Returns ``(xy, scores)`` as ``nms_peaks`` does.
    """
    score_map = blob_score_map(image, particle_diameter_px, polarity=polarity, labelled_xy=labelled_xy)
    radius = particle_diameter_px / 2.0 if nms_radius_px is None else nms_radius_px
    return nms_peaks(score_map, radius, threshold=threshold, border_px=border_px)


def lowpass_sigma_for_diameter(particle_diameter_px: float) -> float:
    """Gaussian sigma (px) whose amplitude response is 1/2 at a period of a third of the particle diameter."""
    cutoff_cycles_per_px = 1.0 / (LOWPASS_HALF_AMPLITUDE_PERIOD_PER_DIAMETER * particle_diameter_px)
    return _GAUSSIAN_HALF_AMPLITUDE_FREQ_TIMES_SIGMA / cutoff_cycles_per_px


def gaussian_lowpass(
    image: np.ndarray, particle_diameter_px: float | None = None, sigma_px: float | None = None
) -> np.ndarray:
    """The low-pass denoising floor: a Gaussian blur (reflecting borders), float32 out.

    Give ``sigma_px`` directly, or ``particle_diameter_px`` to use :func:`lowpass_sigma_for_diameter` (keeps
    structure down to a third of a particle). For the strongest floor on simulated data use
    :func:`best_lowpass_sigma` against the reference.
    """
    if sigma_px is None:
        if particle_diameter_px is None:
            raise ValueError("give particle_diameter_px or sigma_px")
        sigma_px = lowpass_sigma_for_diameter(particle_diameter_px)
    if sigma_px < 0:
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px}")
    data = np.asarray(image, dtype=np.float64)
    return ndimage.gaussian_filter(data, sigma_px, mode="reflect").astype(np.float32)


def best_lowpass_sigma(
    images: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    sigmas: Sequence[float] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
) -> float:
    """The Gaussian sigma with the highest mean PSNR against the references (an oracle-tuned floor).

    Tuning the floor on the evaluation reference makes it as strong as a Gaussian blur can be, so a learned
    denoiser that beats it has beaten every Gaussian blur, not just a badly chosen one.
    """
    from cryojoint.metrics.denoising import psnr

    grid = _LOWPASS_SIGMA_GRID if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    images, references = list(images), list(references)
    mask_list: list[np.ndarray | None] = [None] * len(images) if masks is None else list(masks)
    scores = [
        float(np.mean([psnr(gaussian_lowpass(im, sigma_px=s), ref, m)
                       for im, ref, m in zip(images, references, mask_list, strict=True)]))
        for s in grid
    ]
    return float(grid[int(np.argmax(scores))])
