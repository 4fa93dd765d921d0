"""Image utilities shared by training data, picking, prediction and the baselines: robust statistics,
normalisation, binning and the coordinate map between input and binned pixels.

Plain numpy, no cryojoint imports: ``data`` and ``picking`` both build on it, so neither needs the other for
these.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

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


def pixel_values_at(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """The image's values at the nearest pixel of each point (x = column, y = row), clipped into the image."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    ny, nx = np.shape(image)
    cols = np.clip(np.rint(xy[:, 0]).astype(int), 0, nx - 1)
    rows = np.clip(np.rint(xy[:, 1]).astype(int), 0, ny - 1)
    return np.asarray(image)[rows, cols]


def normalise(image: np.ndarray, dtype: DTypeLike = np.float32) -> np.ndarray:
    """Zero median, unit robust std (:func:`robust_centre_spread`), computed and returned in ``dtype``.

    The network's input is float32 (never quantised: at 10% dose 8 bits would lose signal); the particle-size
    estimate averages patches in float64.
    """
    image = np.asarray(image, dtype=dtype)
    centre, spread = robust_centre_spread(image)
    return ((image - centre) / spread).astype(dtype, copy=False)


#: Largest denominator of a fractional bin factor (factor = down / up, both integers): the polyphase filter's
#: length grows with it, and 1/8 px of bin is finer than any particle size we can measure.
MAX_FACTOR_DENOMINATOR = 8


def rational_factor(factor: float) -> Fraction:
    """``factor`` as the ratio ``down / up`` of small integers that :func:`bin_image` resamples by."""
    if not np.isfinite(factor) or factor < 1:
        raise ValueError(f"bin factor must be >= 1, got {factor}")
    return Fraction(float(factor)).limit_denominator(MAX_FACTOR_DENOMINATOR)


def snap_factor(factor: float) -> float:
    """The nearest factor :func:`bin_image` applies exactly (integer, or a fraction with denominator <= 8)."""
    return float(rational_factor(max(1.0, float(factor))))


def is_integer_factor(factor: float) -> bool:
    return float(factor).is_integer()


def bin_image(image: np.ndarray, factor: float) -> np.ndarray:
    """The image on a grid ``factor`` times coarser, float32.

    Integer factors average ``factor`` x ``factor`` blocks (the remainder rows/columns are dropped). Fractional
    factors (``down / up``, :func:`rational_factor`) resample with a polyphase anti-aliasing filter
    (``scipy.signal.resample_poly``): unlike interpolation it leaves pixel noise nearly independent (neighbour
    correlation 0.04 for white noise, vs 0 for block means), which the blind-spot denoiser relies on. Both keep
    the mean intensity per pixel.
    """
    if is_integer_factor(factor):
        step = int(factor)
        if step == 1:
            return np.asarray(image, dtype=np.float32)
        ny, nx = (image.shape[0] // step) * step, (image.shape[1] // step) * step
        blocks = image[:ny, :nx].reshape(ny // step, step, nx // step, step)
        return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    from scipy.signal import resample_poly

    ratio = rational_factor(factor)
    out_shape = binned_shape(np.shape(image), factor)
    resampled = np.asarray(image, dtype=np.float32)
    for axis in (0, 1):
        resampled = resample_poly(resampled, ratio.denominator, ratio.numerator, axis=axis, padtype="line")
    return np.ascontiguousarray(resampled[: out_shape[0], : out_shape[1]], dtype=np.float32)


def unbin_image(image: np.ndarray, factor: float, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`bin_image` onto the original grid ``shape`` (rows/columns the bin dropped take the edge's
    values): to compare a network-scale image (denoised at the general model's scale) with full-size references.
    Polyphase up-sampling; for integer factors shifted by (factor - 1) / 2 px, where the block means sat."""
    from scipy.ndimage import shift as shift_image
    from scipy.signal import resample_poly

    ratio = rational_factor(factor)
    values = np.asarray(image, dtype=np.float64)
    for axis in (0, 1):
        values = resample_poly(values, ratio.numerator, ratio.denominator, axis=axis, padtype="line")
    if ratio.denominator == 1 and ratio.numerator > 1:
        values = shift_image(values, (ratio.numerator - 1) / 2, order=3, mode="nearest")
    values = values[: shape[0], : shape[1]]
    pad = [(0, shape[0] - values.shape[0]), (0, shape[1] - values.shape[1])]
    return np.pad(values, pad, mode="edge").astype(np.float32)


def bin_factor_between(shape: tuple[int, ...], binned: tuple[int, ...]) -> float | None:
    """The factor :func:`bin_image` turns ``shape`` into ``binned`` with (snapped as it snaps), or None."""
    if binned[0] <= 0 or binned[0] > shape[0]:
        return None
    factor = snap_factor(shape[0] / binned[0])
    return factor if binned_shape(shape, factor) == tuple(binned[:2]) else None


def binned_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    """(rows, columns) of :func:`bin_image`'s output for an image of ``shape``."""
    return int(shape[0] // factor), int(shape[1] // factor)


#: Pixels of a normalised image (robust sd 1) beyond this many sds are clipped before the background is smoothed:
#: gold beads and contamination (tens of sds) would otherwise spread into their surroundings; particles (0.04-0.7
#: sd per pixel, docs/simulation.md) are untouched.
BACKGROUND_CLIP_SD = 3.0
#: The smoothing runs on an image binned to about this many pixels per sigma (exactness is not needed for a
#: background several particles wide, and a 100 px Gaussian at full size would cost seconds per micrograph).
BACKGROUND_PX_PER_SIGMA = 4.0


def smooth_background(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """The image's variation on scales of several particles (ice thickness, gradients across the hole), float32.

    ``image`` is normalised (median 0, robust sd 1). A Gaussian of ``sigma_px`` over a copy clipped at
    :data:`BACKGROUND_CLIP_SD`, computed on a binned copy and interpolated back to the image's shape.
    """
    from scipy import ndimage

    if sigma_px <= 0:
        raise ValueError(f"sigma_px must be > 0, got {sigma_px}")
    factor = max(1, min(int(sigma_px // BACKGROUND_PX_PER_SIGMA), *(s // 4 for s in np.shape(image))))
    small = bin_image(np.clip(image, -BACKGROUND_CLIP_SD, BACKGROUND_CLIP_SD), factor)
    smooth = ndimage.gaussian_filter(small, sigma_px / factor, mode="reflect")
    if factor == 1:
        return smooth.astype(np.float32, copy=False)
    ny, nx = np.shape(image)
    return ndimage.zoom(smooth, (ny / smooth.shape[0], nx / smooth.shape[1]), order=1, mode="nearest",
                        grid_mode=True).astype(np.float32, copy=False)[:ny, :nx]


#: Correlation of neighbouring pixels in a micrograph's fine-scale part (:func:`fine_scale_neighbour_correlation`)
#: above which it looks low-pass filtered rather than raw. Measured at the general model's scale (session 17,
#: docs/general-model.md): raw micrographs at most 0.28 (simulated: three simulators, 10-100 % dose) and 0.32 (the two
#: real mrcfile exposures binned 3-8x); low-pass filtered ones at least 0.87 (Gaussian sigma 2 px + 8 bits, three
#: simulators) and 0.93 (the filtered 8-bit EMPIAR-10017 copies of real-bgal).
FILTERED_NEIGHBOUR_CORRELATION = 0.6
#: Sigma (px) of the smooth part taken out before neighbours are correlated: ice gradients, carbon edges and
#: contamination correlate neighbouring pixels of a raw micrograph too (up to 0.86 over the whole image, 0.81 in one
#: of `second`'s 60 % dose test micrographs), so the whole-image figure alone takes raw micrographs for filtered ones.
FILTER_TEST_HIGHPASS_SIGMA_PX = 4.0


def fine_scale_neighbour_correlation(image: np.ndarray) -> float:
    """Neighbour correlation of the image's fine-scale part: normalised, clipped at :data:`BACKGROUND_CLIP_SD`
    (gold, contamination), minus its Gaussian blur of :data:`FILTER_TEST_HIGHPASS_SIGMA_PX`. Shot noise is white there
    (near 0); a low-pass filter leaves it smooth (near 1)."""
    from scipy import ndimage

    values = np.clip(normalise(image), -BACKGROUND_CLIP_SD, BACKGROUND_CLIP_SD).astype(np.float64)
    return neighbour_correlation(values - ndimage.gaussian_filter(values, FILTER_TEST_HIGHPASS_SIGMA_PX))


def looks_filtered(image: np.ndarray) -> bool:
    """Neighbouring pixels correlate at fine scales as in a low-pass filtered image, not as in a raw (shot-noise)
    micrograph."""
    return fine_scale_neighbour_correlation(image) > FILTERED_NEIGHBOUR_CORRELATION


def flatten_spectrum_beyond(image: np.ndarray, cutoff_cycles_per_px: float) -> np.ndarray:
    """Give every frequency above ``cutoff_cycles_per_px`` the radially averaged amplitude found at the cut-off,
    keeping phases and everything below it: a low-pass filtered micrograph's high frequencies then look like a raw
    one's white shot noise again (what the general model learned from), while the particle's own band, below
    about one cycle per diameter, keeps its contrast. On a raw micrograph, whose spectrum is already flat there,
    it changes little."""
    values = np.asarray(image, dtype=np.float64)
    mean = float(values.mean())
    spectrum = np.fft.rfft2(values - mean)
    ny, nx = values.shape
    radius = np.hypot(np.fft.fftfreq(ny)[:, None], np.fft.rfftfreq(nx)[None, :])
    step = 1.0 / max(ny, nx)  # one ring per frequency step along the longer side
    rings = np.rint(radius / step).astype(np.int64)
    counts = np.bincount(rings.ravel())
    amplitude = np.sqrt(np.bincount(rings.ravel(), (np.abs(spectrum) ** 2).ravel()) / np.maximum(counts, 1))
    cutoff_ring = min(int(round(cutoff_cycles_per_px / step)), len(amplitude) - 1)
    reference = amplitude[cutoff_ring]
    gain = np.ones_like(amplitude)
    beyond = np.arange(len(amplitude)) > cutoff_ring
    gain[beyond] = reference / np.maximum(amplitude[beyond], reference * 1e-6)
    return (np.fft.irfft2(spectrum * gain[rings], s=values.shape) + mean).astype(np.float32)


def neighbour_correlation(image: np.ndarray) -> float:
    """Mean correlation of horizontally and vertically adjacent pixels (0 for white noise, near 1 when smooth)."""
    values = np.asarray(image, dtype=np.float64)
    values = values - np.median(values)
    power = float(np.mean(values * values)) or 1.0
    return float((np.mean(values[:, 1:] * values[:, :-1]) + np.mean(values[1:] * values[:-1])) / 2 / power)


@dataclass
class Flattening:
    """What :func:`flatten_background` took out: ``restore`` puts it back (e.g. into the denoised image)."""

    background: np.ndarray
    centre: float
    spread: float

    def restore(self, flat: np.ndarray) -> np.ndarray:
        return (flat * np.float32(self.spread) + np.float32(self.centre) + self.background).astype(np.float32)


def flatten_background(normalised: np.ndarray, sigma_px: float) -> tuple[np.ndarray, Flattening]:
    """The normalised image minus its :func:`smooth_background`, normalised again (median 0, robust sd 1).

    Normalising again after the background is gone makes the result independent of the gradient's size: the
    same micrograph on thin ice or across a thickness gradient gives the network the same input, in units of its
    particle-scale texture and noise (not of a spread the gradient inflated).
    """
    background = smooth_background(normalised, sigma_px)
    residual = np.asarray(normalised, dtype=np.float32) - background
    centre, spread = robust_centre_spread(residual)
    residual -= np.float32(centre)
    residual /= np.float32(spread)
    return residual, Flattening(background, centre, spread)


def to_binned_coordinates(xy: np.ndarray, factor: float) -> np.ndarray:
    """Pixel centres of the input -> pixel centres of :func:`bin_image`'s output.

    A block mean's pixel i covers input pixels [i*f, (i+1)*f); a fractional resampling's sample i sits on input
    position i*f (the filter is centred on its samples).
    """
    xy = np.asarray(xy, dtype=float)
    return (xy + 0.5) / factor - 0.5 if is_integer_factor(factor) else xy / factor


def from_binned_coordinates(xy: np.ndarray, factor: float) -> np.ndarray:
    xy = np.asarray(xy, dtype=float)
    return (xy + 0.5) * factor - 0.5 if is_integer_factor(factor) else xy * factor
