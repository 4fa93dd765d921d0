"""Image utilities shared by training data, picking, prediction and the baselines: robust statistics,
normalisation, binning and the coordinate map between input and binned pixels.

Plain numpy, no cryojoint imports: ``data`` and ``picking`` both build on it, so neither needs the other for
these.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

#: MAD -> standard deviation for Gaussian data.
MAD_TO_STD = 1.4826


def robust_centre_spread(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based standard deviation (plain std, or 1, when the MAD is 0).

    Median and MAD ignore the few very dark pixels of gold beads and contamination that would dominate a
    plain mean/std.
    """
    values = np.asarray(values)
    centre = float(np.median(values))
    spread = float(np.median(np.abs(values - centre))) * MAD_TO_STD
    if not np.isfinite(spread) or spread <= 0:
        spread = float(np.std(values)) or 1.0
    return centre, spread


def normalise(image: np.ndarray, dtype: DTypeLike = np.float32) -> np.ndarray:
    """Zero median, unit robust std (:func:`robust_centre_spread`), computed and returned in ``dtype``.

    The network's input is float32 (never quantised: at 10% dose 8 bits would lose signal); the particle-size
    estimate averages patches in float64.
    """
    image = np.asarray(image, dtype=dtype)
    centre, spread = robust_centre_spread(image)
    return ((image - centre) / spread).astype(dtype, copy=False)


def bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks (the remainder rows/columns are dropped)."""
    if factor == 1:
        return np.asarray(image, dtype=np.float32)
    ny, nx = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def to_binned_coordinates(xy: np.ndarray, factor: int) -> np.ndarray:
    """Pixel centres of the input -> pixel centres of the binned image (pixel i covers [i*f, (i+1)*f))."""
    return (np.asarray(xy, dtype=float) + 0.5) / factor - 0.5


def from_binned_coordinates(xy: np.ndarray, factor: int) -> np.ndarray:
    return (np.asarray(xy, dtype=float) + 0.5) * factor - 0.5
