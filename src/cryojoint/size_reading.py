"""The particle's size read by a pretrained model: the scale at which the labelled picks look most like particles.

The blob reading of :func:`cryojoint.picking.measure_particle_diameter` finds the mean particle's core when no CTF
fringe stands out of the noise of its picks (0.58-0.87 of the diameter, measured), which is the usual case with a few
dozen picks at low dose. Fine-tuning the general model then bins the micrographs too little, and the particle reaches
the network wider than any it learned. The general model learned particles at its own size
(:data:`~cryojoint.config.GENERAL_PARTICLE_PX`): binned so that they measure that, particles score highest. So the
micrographs around the labelled picks are shown to it at the bins that a range of diameters above the core's would
use, and the diameter whose bin makes the picks score highest is read. Sizes the network sees unbinned (up to its
particle size) cannot be told apart this way: their passes are the same.

Measured (general-v2, 10 % dose, 45-91 partial labels on 8 micrographs; benchmarks/README.md, "Session 28"): where the
core was read, ribosome (52 px) 35.5 / 34.5 / 34.4 / 37.0 -> 51.4 / 46.7 / 44.4 / 48.8 px, barrel (56 px) 32.9 / 25.2 /
28.4 -> 43.7 / 50.4 / 43.4 px; fine-tuning on one ribosome draw picked at AP 0.862 +- 0.019 vs 0.847 +- 0.006 with
the core's size (seeds 0-2), on one barrel draw at 0.598 +- 0.005 vs 0.582 +- 0.008 (seeds 0-2; session 29).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import maximum_filter

from cryojoint.checkpoint import LoadedModel
from cryojoint.config import GENERAL_PARTICLE_PX
from cryojoint.contrast import read_particle_contrast
from cryojoint.data import network_factor
from cryojoint.imaging import bin_image, normalise, to_binned_coordinates
from cryojoint.inference import PickingSettings, detector_logits
from cryojoint.io.mrc import Micrograph
from cryojoint.progress import counted_progress

#: Diameters scanned, as multiples of the blob reading: a core reads 0.58-0.87 of the diameter (picking.py), so the
#: diameter is 1.15-1.72 times it; the scan covers that with room either side.
SCAN_RANGE = (1.0, 2.0)
#: Diameters tried across SCAN_RANGE (log-spaced, ~10 % apart); those binned alike are run once.
SCAN_POINTS = 8
#: Labelled micrographs the scan looks at (those with the most picks), each cropped to its picks' surroundings.
SCAN_MICROGRAPHS = 4
#: Margin of a crop around its picks, in the largest diameter scanned: the scores at the picks come from the
#: particle and its neighbourhood (the U-Net's full reach, hundreds of px, would keep whole micrographs).
CROP_MARGIN_DIAMETERS = 2.0
#: Labels needed before their median score is trusted to rank scales.
MIN_SCAN_LABELS = 10
#: A label's score is the highest log-odds within this share of the network's particle diameter of it (the peak of a
#: particle sits near, not exactly on, a hand pick).
LABEL_REACH_DIAMETERS = 0.25

#: The reading is rounded to this (px): far finer than its accuracy, coarse enough that a resumed run on another
#: thread count (whose passes round differently) reads the size its checkpoint began with.
READING_STEP_PX = 0.1


@dataclass(frozen=True)
class ModelSizeReading:
    """The diameter (input px) whose bin the labelled picks score highest at, and what each bin scored."""

    diameter_px: float
    #: (diameter in input px, bin factor, median log-odds of the labelled picks), one per distinct bin scanned.
    scanned: tuple[tuple[float, float, float], ...]


def read_size_with_model(model: LoadedModel, labelled: Sequence[tuple[Micrograph, np.ndarray]],
                         blob_reading_px: float, particle_contrast: str = "auto",
                         largest_px: float | None = None, device: torch.device | str = "cpu",
                         progress: bool = False) -> ModelSizeReading | None:
    """The particle diameter (input px) the pretrained ``model`` finds the labelled picks most particle-like at.

    ``labelled``: micrographs with their picks (input px, x = column). ``blob_reading_px``: the blob reading, whose
    multiples in :data:`SCAN_RANGE` are scanned up to ``largest_px`` (the picks' spacing: particles do not overlap).
    ``particle_contrast``: "dark", "bright" or "auto" (read from the picks as training reads it). ``None`` when the
    scan cannot tell: too few picks, or one bin only (particles the network sees unbinned).
    """
    labelled = [(m, np.asarray(xy, dtype=float).reshape(-1, 2)) for m, xy in labelled]
    labelled = [(m, xy) for m, xy in labelled if len(xy)]
    if sum(len(xy) for _, xy in labelled) < MIN_SCAN_LABELS:
        return None
    labelled = sorted(labelled, key=lambda item: -len(item[1]))[:SCAN_MICROGRAPHS]
    low, high = (ratio * blob_reading_px for ratio in SCAN_RANGE)
    if largest_px is not None:  # inf (too few picks for a spacing) bounds nothing
        high = min(high, largest_px)
    if high <= low:
        return None
    # Each distinct bin once, read as the diameter it brings to the network's particle size (unbinned: the blob
    # reading, which the scan cannot improve on there).
    factors = sorted({network_factor(float(d), GENERAL_PARTICLE_PX) for d in np.geomspace(low, high, SCAN_POINTS)})
    if len(factors) < 2:
        return None
    by_factor = {factor: blob_reading_px if factor == 1 else factor * GENERAL_PARTICLE_PX for factor in factors}
    if particle_contrast == "auto":
        factor = network_factor(blob_reading_px, GENERAL_PARTICLE_PX)
        particle_contrast = read_particle_contrast(
            [normalise(bin_image(m.data, factor)) for m, _ in labelled],
            [to_binned_coordinates(xy, factor) for _, xy in labelled], blob_reading_px / factor)[0].contrast
    crops = [_crop_around(m, xy, CROP_MARGIN_DIAMETERS * high) for m, xy in labelled]
    scanned = []
    with counted_progress(len(by_factor) * len(crops), progress, "read particle size") as advance:
        for factor, diameter in by_factor.items():
            settings = PickingSettings.resolve(model, particle_diameter_px=diameter, downsample=factor,
                                               particle_contrast=particle_contrast)
            scores = []
            for crop, xy in crops:
                logits = detector_logits(model, crop, settings, device)
                scores.append(_scores_at(logits, to_binned_coordinates(xy, settings.downsample)))
                advance()
            scanned.append((diameter, settings.downsample, float(np.median(np.concatenate(scores)))))
    best = int(np.argmax([score for _, _, score in scanned]))
    diameter = round(_refined_diameter(scanned, best) / READING_STEP_PX) * READING_STEP_PX
    return ModelSizeReading(diameter, tuple(scanned))


def _crop_around(micrograph: Micrograph, xy: np.ndarray, margin_px: float) -> tuple[Micrograph, np.ndarray]:
    """The micrograph cut to its picks' bounding box plus ``margin_px``, and the picks in the crop's pixels."""
    ny, nx = micrograph.shape
    x0, y0 = (max(int(math.floor(v - margin_px)), 0) for v in xy.min(axis=0))
    x1 = min(int(math.ceil(xy[:, 0].max() + margin_px)) + 1, nx)
    y1 = min(int(math.ceil(xy[:, 1].max() + margin_px)) + 1, ny)
    crop = Micrograph(micrograph.data[y0:y1, x0:x1], micrograph.pixel_size, micrograph.name)
    return crop, xy - np.array([x0, y0], dtype=float)


def _scores_at(logits: np.ndarray, xy_network: np.ndarray) -> np.ndarray:
    """Each pick's highest log-odds within :data:`LABEL_REACH_DIAMETERS` of the network's particle size."""
    reach = max(int(round(LABEL_REACH_DIAMETERS * GENERAL_PARTICLE_PX)), 1)
    grid = np.arange(-reach, reach + 1)
    disc = grid[:, None] ** 2 + grid[None, :] ** 2 <= reach * reach
    peaks = maximum_filter(logits, footprint=disc, mode="nearest")
    rows = np.clip(np.rint(xy_network[:, 1]).astype(int), 0, logits.shape[0] - 1)
    cols = np.clip(np.rint(xy_network[:, 0]).astype(int), 0, logits.shape[1] - 1)
    return peaks[rows, cols]


def _refined_diameter(scanned: Sequence[tuple[float, float, float]], best: int) -> float:
    """The best bin's diameter, moved by a parabola through its neighbours' scores in log-diameter when both exist
    (at most half-way to either)."""
    diameter = scanned[best][0]
    if not 0 < best < len(scanned) - 1:
        return diameter
    (d0, _, y0), (d1, _, y1), (d2, _, y2) = scanned[best - 1: best + 2]
    x0, x1, x2 = math.log(d0), math.log(d1), math.log(d2)
    # the vertex of the parabola through the three points (unequal spacing)
    denominator = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denominator
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denominator
    if a >= 0:
        return diameter
    vertex = -b / (2 * a)
    return float(math.exp(min(max(vertex, (x0 + x1) / 2), (x1 + x2) / 2)))
