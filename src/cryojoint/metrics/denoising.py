"""Denoising metrics over arrays: PSNR after an affine fit, Fourier ring correlation, the low-passed reference.

See :func:`denoising_metrics` for what each number means and why PSNR against the full-dose image alone
proves little. Reading folders of MRCs is :mod:`cryojoint.evaluation`'s part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import ndimage

from cryojoint.errors import UserInputError
from cryojoint.imaging import bin_factor_between, unbin_image
from cryojoint.metrics._numbers import format_cell, json_number

if TYPE_CHECKING:
    from rich.table import Table

#: Fourier ring correlation is averaged over this band (cycles/pixel): above the lowest rings (ice gradient,
#: carbon) and below the rings where shot noise dominates everything at low dose.
DEFAULT_FRC_BAND = (0.015, 0.25)
#: Without a cut-off in Å, the low-passed reference keeps detail down to this period (pixels); 4 px =
#: 0.25 cycles/px, the top of the FRC band.
DEFAULT_LOWPASS_PERIOD_PX = 4.0
#: Gaussian transfer exp(-f²/(2 s²)) is 1/2 at f = s·sqrt(2 ln 2).
_HALF_AMPLITUDE_PER_GAUSSIAN_STD = math.sqrt(2.0 * math.log(2.0))


def psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio (dB) after the best affine fit of ``image`` onto ``reference``.

    The one normalisation used for every method compared: over the pixels in ``mask`` (True = used; all
    pixels if ``None``), fit ``a·image + b`` to ``reference`` by least squares, then
    ``PSNR = 10 log10(peak² / MSE)`` with ``peak = max - min`` of the reference over those pixels. The fit
    makes the score blind to the arbitrary scale and offset of each method's output (electrons, z-scores,
    8-bit), so only the structure counts. For ``image = reference + noise`` of variance v the fitted MSE is
    ``v·var(ref)/(v + var(ref))`` (the fit shrinks noise like a Wiener gain). Identical images give ``inf``.
    """
    image = np.asarray(image, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if image.shape != reference.shape:
        raise ValueError(f"image shape {image.shape} differs from reference shape {reference.shape}")
    if mask is not None:
        selected = np.asarray(mask, dtype=bool)
        if selected.shape != image.shape:
            raise ValueError(f"mask shape {selected.shape} differs from image shape {image.shape}")
        x, y = image[selected], reference[selected]
    else:
        x, y = image.ravel(), reference.ravel()
    if x.size == 0:
        return float("nan")
    x_centred = x - x.mean()
    y_centred = y - y.mean()
    x_power = float(np.dot(x_centred, x_centred))
    gain = float(np.dot(x_centred, y_centred)) / x_power if x_power > 0 else 0.0
    residual = y_centred - gain * x_centred
    mse = float(np.dot(residual, residual)) / x.size
    peak = float(y.max() - y.min())
    if mse <= np.finfo(np.float64).tiny * max(peak * peak, 1.0) or mse == 0.0:
        return float("inf")
    if peak == 0:
        return float("-inf")
    return float(10.0 * np.log10(peak * peak / mse))


def _ring_index(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Ring number of every rfft2 coefficient and the ring centres in cycles/pixel (ring width 1/min side)."""
    ny, nx = shape
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    width = 1.0 / min(ny, nx)
    index = np.rint(radius / width).astype(np.int64)
    n_rings = int(round(0.5 / width)) + 1
    return index, np.arange(n_rings) * width


def frc(image: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation between two images of the same shape.

    ``FRC(ring) = Re Σ F1·conj(F2) / sqrt(Σ|F1|² Σ|F2|²)`` over the Fourier coefficients whose frequency
    rounds to the ring (ring width 1/min(ny, nx) cycles/px; both half-planes counted through the real FFT,
    so each ring's ratio is exact). Means are removed first. Rings up to Nyquist (0.5 cycles/px) are
    returned; rings with no power give NaN.

    Returns
    -------
    freqs, curve : ndarray
        Ring centre frequency (cycles/pixel) and correlation in [-1, 1].
    """
    a = np.asarray(image, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two 2D images of one shape, got {a.shape} and {b.shape}")
    fa = np.fft.rfft2(a - a.mean())
    fb = np.fft.rfft2(b - b.mean())
    index, freqs = _ring_index(a.shape)
    # rfft2 stores the x>0 half once; the x=0 and Nyquist columns are their own mirror. Weight them so each
    # ring sums the full plane (the ratio would be nearly unchanged without, but this is exact).
    weight = np.full(fa.shape, 2.0)
    weight[:, 0] = 1.0
    if a.shape[1] % 2 == 0:
        weight[:, -1] = 1.0
    inside = index < freqs.size
    n = freqs.size
    cross = np.bincount(index[inside], (weight * np.real(fa * np.conj(fb)))[inside], minlength=n)
    power_a = np.bincount(index[inside], (weight * np.abs(fa) ** 2)[inside], minlength=n)
    power_b = np.bincount(index[inside], (weight * np.abs(fb) ** 2)[inside], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = cross / np.sqrt(power_a * power_b)
    return freqs, curve


def frc_score(
    image: np.ndarray, reference: np.ndarray, band: tuple[float, float] = DEFAULT_FRC_BAND
) -> float:
    """Mean FRC over rings whose centre lies in ``band`` (cycles/pixel, inclusive).

    Any radial linear filter (a low-pass included) multiplies both sums of a ring by the same factor, so it
    cannot raise this score; only real denoising can.
    """
    freqs, curve = frc(image, reference)
    in_band = (freqs >= band[0]) & (freqs <= band[1]) & np.isfinite(curve)
    if not in_band.any():
        return float("nan")
    return float(np.mean(curve[in_band]))


def lowpass_reference(
    reference: np.ndarray, pixel_size_angstrom: float, cutoff_angstrom: float
) -> np.ndarray:
    """Gaussian low-pass with amplitude 1/2 at a period of ``cutoff_angstrom`` (reflecting borders).

    The paper reports PSNR against a "low-pass filtered" full-dose image without naming the filter; a
    Gaussian has no ringing and one parameter, so the cut-off is the whole definition.
    """
    if pixel_size_angstrom <= 0 or cutoff_angstrom <= 0:
        raise ValueError("pixel size and cut-off must be > 0")
    cutoff_cycles_per_px = pixel_size_angstrom / cutoff_angstrom
    frequency_std = cutoff_cycles_per_px / _HALF_AMPLITUDE_PER_GAUSSIAN_STD
    sigma_px = 1.0 / (2.0 * math.pi * frequency_std)
    return ndimage.gaussian_filter(np.asarray(reference, dtype=np.float64), sigma_px, mode="reflect")


DENOISING_METRICS: dict[str, str] = {
    "psnr_full_dose": "PSNR vs full dose (dB)",
    "psnr_lowpass_full_dose": "PSNR vs low-passed full dose (dB)",
    "psnr_clean_outside_masks": "PSNR vs clean, outside masks (dB)",
    "frc_clean": "FRC vs clean",
}


@dataclass
class DenoisingReport:
    """Per-micrograph denoising metrics (keys of :data:`DENOISING_METRICS`) and their means."""

    per_micrograph: list[dict[str, Any]]
    mean: dict[str, float]
    lowpass_period_px: float
    frc_band: tuple[float, float] = DEFAULT_FRC_BAND

    def to_dict(self) -> dict[str, Any]:
        return {
            "lowpass_period_px": self.lowpass_period_px,
            "frc_band": list(self.frc_band),
            "mean": {k: json_number(v) for k, v in self.mean.items()},
            "per_micrograph": [{k: json_number(v) for k, v in row.items()} for row in self.per_micrograph],
        }

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame([*self.per_micrograph, {"micrograph": "mean", **self.mean}])

    def to_rich_table(self) -> Table:
        from rich.table import Table

        table = Table(title=f"Denoising (low-pass period {self.lowpass_period_px:.3g} px, FRC band "
                            f"{self.frc_band[0]:g}-{self.frc_band[1]:g} cycles/px)")
        metrics = [m for m in DENOISING_METRICS if m in self.mean]
        table.add_column("micrograph")
        for metric in metrics:
            table.add_column(DENOISING_METRICS[metric], justify="right")
        for row in self.per_micrograph:
            table.add_row(str(row["micrograph"]), *[format_cell(row.get(m, float("nan"))) for m in metrics])
        table.add_section()
        table.add_row("mean", *[format_cell(self.mean[m]) for m in metrics])
        return table


def denoising_metrics(
    denoised: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    clean: Mapping[str, np.ndarray] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    pixel_size: float | None = None,
    lowpass_angstrom: float | None = None,
    frc_band: tuple[float, float] = DEFAULT_FRC_BAND,
) -> DenoisingReport:
    """Score denoised micrographs against the full-dose reference and, when known, the noise-free image.

    - ``psnr_full_dose``: what the paper reports. Weak on its own: the full-dose image carries its own shot
      noise, which caps the achievable PSNR, and its max–min range (the PSNR peak) is set by high-contrast
      features — contamination, carbon edges, ice gradients — that any smoother reproduces. On simulated
      data decent denoisers land within ~0.1 dB of each other, and a plain Gaussian low-pass scores as well
      as a learned denoiser.
    - ``psnr_lowpass_full_dose``: the same against the low-passed full-dose image (paper Table 1), which
      removes most of the reference's noise but rewards blurring to the same cut-off.
    - ``psnr_clean_outside_masks`` (needs ``clean``): against the noise-free image over pixels outside the
      contamination/carbon masks — no reference noise, no dominant artefacts: the honest PSNR.
    - ``frc_clean`` (needs ``clean``): mean Fourier ring correlation with the noise-free image over
      ``frc_band``. A ring's FRC is unchanged by any radial linear filter, so a low-pass cannot raise it;
      only recovering signal the noise hid can.

    Parameters
    ----------
    denoised, references, clean, masks
        Images keyed by micrograph name. Every denoised name needs a reference (and a clean image when
        ``clean`` is given); masks are optional per name (nonzero = excluded).
    pixel_size
        Å/pixel; needed only when ``lowpass_angstrom`` is given.
    lowpass_angstrom
        Low-pass cut-off period in Å for the second metric; ``None``: a period of 4 pixels.
    frc_band
        Band (cycles/pixel) averaged by the FRC score.
    """
    if lowpass_angstrom is not None:
        if pixel_size is None or pixel_size <= 0:
            raise UserInputError("lowpass", "a low-pass cut-off in Å needs the pixel size (none in the MRC header)")
        period_px = lowpass_angstrom / pixel_size
    else:
        period_px = DEFAULT_LOWPASS_PERIOD_PX
    if not denoised:
        raise UserInputError("denoised", "no denoised images given")
    rows: list[dict[str, Any]] = []
    for name, image in denoised.items():
        if name not in references:
            raise UserInputError(name, "denoised image has no full-dose reference of the same name")
        image = np.asarray(image, dtype=np.float64)
        reference = np.asarray(references[name], dtype=np.float64)
        factor = bin_factor_between(reference.shape, image.shape)
        if factor is not None and factor > 1:  # denoised at the network's scale (binned): back onto the reference grid
            image = unbin_image(image, factor, reference.shape).astype(np.float64)
        _check_same_shape(name, image, reference, "reference")
        row: dict[str, Any] = {"micrograph": name}
        row["psnr_full_dose"] = psnr(image, reference)
        row["psnr_lowpass_full_dose"] = psnr(image, lowpass_reference(reference, 1.0, period_px))
        if clean is not None:
            if name not in clean:
                raise UserInputError(name, "denoised image has no clean (noise-free) image of the same name")
            clean_image = np.asarray(clean[name], dtype=np.float64)
            _check_same_shape(name, image, clean_image, "clean image")
            outside = None
            if masks is not None and name in masks:
                mask = np.asarray(masks[name])
                _check_same_shape(name, image, mask, "mask")
                outside = mask == 0
            row["psnr_clean_outside_masks"] = psnr(image, clean_image, outside)
            row["frc_clean"] = frc_score(image, clean_image, frc_band)
        rows.append(row)
    metrics = [m for m in DENOISING_METRICS if m in rows[0]]
    mean = {m: float(np.mean([r[m] for r in rows])) for m in metrics}
    return DenoisingReport(per_micrograph=rows, mean=mean, lowpass_period_px=float(period_px), frc_band=frc_band)


def _check_same_shape(name: str, image: np.ndarray, other: np.ndarray, what: str) -> None:
    if image.shape != other.shape:
        raise UserInputError(name, f"denoised image is {image.shape[1]}x{image.shape[0]} px but its {what} is "
                             f"{other.shape[1]}x{other.shape[0]} px")
