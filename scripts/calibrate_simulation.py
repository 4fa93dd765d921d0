"""Measure the simulator against real micrographs and write the figures/numbers in docs/simulation.md.

Real data: the two micrographs shipped in the ``mrcfile`` 1.5.4 source archive (not committed)::

    pip download --no-deps --no-binary mrcfile mrcfile==1.5.4 -d /tmp/mrcfile
    tar xzf /tmp/mrcfile/mrcfile-1.5.4.tar.gz -C /tmp/mrcfile mrcfile-1.5.4/tests/test_data
    python scripts/calibrate_simulation.py /tmp/mrcfile/mrcfile-1.5.4/tests/test_data

Prints seconds per micrograph, particle SNR per dose, PSNR of each dose against the full dose, and
normalised radial power spectra (real vs simulated) with their band ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import matplotlib
import mrcfile
import numpy as np

from cryojoint.simulation import SimulationConfig, dose_key, simulate

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGET_PIXEL_ANGSTROM = 5.3
#: Spatial-frequency bands (1/Å) for the band-to-noise-floor ratios.
BANDS = {"low 1/400-1/100": (1 / 400, 1 / 100), "particle 1/100-1/30": (1 / 100, 1 / 30),
         "mid 1/30-1/15": (1 / 30, 1 / 15)}
NOISE_FLOOR_BAND = (0.42, 0.5)  # cycles/px near Nyquist
REAL_FILES = {"epu2.9_example.mrc": "EPU 2.9 example (Astex)", "fei-extended.mrc": "FEI extended (Diamond)"}


def bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    ny, nx = (s // factor * factor for s in image.shape)
    return image[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))


def radial_psd(image: np.ndarray, tile: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Welch-averaged radial power spectrum over tiles (mean removed, Hann window); frequency in cycles/px."""
    window = np.outer(np.hanning(tile), np.hanning(tile))
    spectra = []
    for y in range(0, image.shape[0] - tile + 1, tile // 2):
        for x in range(0, image.shape[1] - tile + 1, tile // 2):
            patch = image[y : y + tile, x : x + tile]
            spectra.append(np.abs(np.fft.fft2((patch - patch.mean()) * window)) ** 2)
    power = np.fft.fftshift(np.mean(spectra, axis=0))
    yy, xx = np.indices(power.shape) - tile // 2
    radius = np.hypot(yy, xx).astype(int)
    profile = np.bincount(radius.ravel(), power.ravel()) / np.bincount(radius.ravel())
    freqs = np.arange(len(profile)) / tile
    keep = freqs <= 0.5
    return freqs[keep], profile[keep]


def normalised(freqs: np.ndarray, profile: np.ndarray) -> np.ndarray:
    floor = profile[(freqs >= NOISE_FLOOR_BAND[0]) & (freqs <= NOISE_FLOOR_BAND[1])].mean()
    return profile / floor


def band_ratios(freqs: np.ndarray, norm: np.ndarray, pixel: float) -> dict[str, float]:
    angstrom_freqs = freqs / pixel
    return {
        name: float(norm[(angstrom_freqs >= lo) & (angstrom_freqs < hi)].mean()) for name, (lo, hi) in BANDS.items()
    }


def psnr_affine(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR after a least-squares affine fit of image to reference, peak = reference max - min."""
    design = np.stack([image.ravel(), np.ones(image.size)], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, reference.ravel().astype(np.float64), rcond=None)
    mse = np.mean((design @ coef - reference.ravel()) ** 2)
    peak = float(reference.max() - reference.min())
    return float(10 * np.log10(peak**2 / mse))


def particle_snr(dataset, background, fraction: float) -> float:
    """Mean over micrographs of var(particle signal in the particle discs) / noise variance at a dose."""
    config = dataset.config
    values = []
    radius = dataset.particle_diameter_px / 2
    for clean, bg in zip(dataset.clean, background.clean, strict=True):
        name = clean.name
        rows = dataset.truth[dataset.truth["micrograph"] == name]
        if rows.empty:
            continue
        signal = fraction * (clean.data.astype(np.float64) - bg.data)
        yy, xx = np.indices(signal.shape)
        disc = np.zeros(signal.shape, bool)
        for x, y in rows[["x", "y"]].to_numpy():
            y0, y1 = int(max(0, y - radius)), int(min(signal.shape[0], y + radius + 1))
            x0, x1 = int(max(0, x - radius)), int(min(signal.shape[1], x + radius + 1))
            disc[y0:y1, x0:x1] |= np.hypot(yy[y0:y1, x0:x1] - y, xx[y0:y1, x0:x1] - x) <= radius
        noise_var = fraction * clean.data.mean() + fraction * config.readout_noise_counts**2
        values.append(signal[disc].var() / noise_var)
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real_data", type=Path)
    parser.add_argument("--figures", type=Path, default=Path(__file__).resolve().parents[1] / "docs/figures")
    parser.add_argument("--micrographs", type=int, default=4)
    parser.add_argument("--preset", default="ribosome")
    args = parser.parse_args()
    args.figures.mkdir(parents=True, exist_ok=True)
    results: dict = {}

    config = SimulationConfig.for_preset(args.preset, n_micrographs=args.micrographs)
    start = time.perf_counter()
    dataset = simulate(config=config)
    seconds = (time.perf_counter() - start) / args.micrographs
    background = simulate(config=dataclasses.replace(config, protein_contrast_scale=0.0))
    results["seconds_per_micrograph"] = round(seconds, 2)
    results["particles_per_micrograph"] = round(len(dataset.truth) / args.micrographs, 1)
    results["particle_diameter_px"] = round(dataset.particle_diameter_px, 1)
    results["particle_snr"] = {dose_key(f): round(particle_snr(dataset, background, f), 4)
                               for f in sorted(config.dose_fractions, reverse=True)}
    reference = dataset.micrographs["dose_100"]
    results["psnr_vs_dose_100_db"] = {
        key: round(float(np.mean([psnr_affine(m.data, r.data) for m, r in zip(images, reference, strict=True)])), 2)
        for key, images in dataset.micrographs.items() if key != "dose_100"
    }
    results["psnr_vs_clean_db"] = {
        key: round(float(np.mean([psnr_affine(m.data, c.data) for m, c in zip(images, dataset.clean, strict=True)])), 2)
        for key, images in dataset.micrographs.items()
    }

    spectra = {}
    for filename, label in REAL_FILES.items():
        with mrcfile.open(args.real_data / filename, permissive=True) as handle:
            raw = np.asarray(handle.data, dtype=np.float64)
            raw_pixel = float(handle.voxel_size.x)
        raw = raw[0] if raw.ndim == 3 else raw
        factor = int(round(TARGET_PIXEL_ANGSTROM / raw_pixel))
        image = bin_image(raw, factor)
        freqs, profile = radial_psd(image)
        spectra[f"real: {label}, bin {factor} -> {raw_pixel * factor:.2f} Å/px"] = (freqs, normalised(freqs, profile),
                                                                                    raw_pixel * factor)
    sim_norms = []
    for key in ("dose_100", "dose_010"):
        norms = []
        for image in dataset.micrographs[key]:
            freqs, profile = radial_psd(image.data)
            norms.append(normalised(freqs, profile))
        spectra[f"simulated {args.preset} {key} (mean of {args.micrographs})"] = (freqs, np.mean(norms, axis=0),
                                                                                config.pixel_size_angstrom)
        if key == "dose_100":
            sim_norms = norms
    results["band_to_noise_floor"] = {label: {k: round(v, 3) for k, v in band_ratios(f, n, p).items()}
                                      for label, (f, n, p) in spectra.items()}
    results["band_to_noise_floor_sim_dose_100_range"] = {
        k: [round(min(band_ratios(freqs, n, config.pixel_size_angstrom)[k] for n in sim_norms), 3),
            round(max(band_ratios(freqs, n, config.pixel_size_angstrom)[k] for n in sim_norms), 3)] for k in BANDS}

    fig, axis = plt.subplots(figsize=(8, 5))
    for label, (freqs, norm, pixel) in spectra.items():
        axis.semilogy(freqs[1:] / pixel, norm[1:], label=label, lw=1.2)
    axis.set_xlabel("spatial frequency (1/Å)")
    axis.set_ylabel("radial power / noise floor (0.42-0.5 cycles/px)")
    axis.set_title("Normalised power spectra: real micrographs vs simulation")
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.figures / "simulation_power_spectra.png", dpi=110)
    plt.close(fig)

    keys = ["clean", *dataset.micrographs]
    fig, axes = plt.subplots(2, len(keys), figsize=(4 * len(keys), 8.4))
    # Show the two scenes with the most kinds of support/contamination, so the figure shows the hard cases.
    variety = [len(np.unique(mask)) + mask.mean() for mask in dataset.masks]
    shown = sorted(np.argsort(variety)[::-1][:2])
    for row, index in enumerate(shown):
        for col, key in enumerate(keys):
            image = (dataset.clean if key == "clean" else dataset.micrographs[key])[index].data
            lo, hi = np.percentile(image, [0.5, 99.5])
            axes[row, col].imshow(image, cmap="gray", vmin=lo, vmax=hi)
            axes[row, col].set_title(f"{image.shape[1]}² {key}", fontsize=9)
            axes[row, col].axis("off")
        mask = dataset.masks[index]
        if mask.any():
            axes[row, 0].contour(mask > 0, levels=[0.5], colors="orange", linewidths=0.8)
        truth = dataset.truth[dataset.truth["micrograph"] == dataset.clean[index].name]
        labels = dataset.labels[dataset.labels["micrograph"] == dataset.clean[index].name]
        axes[row, 1].scatter(truth["x"], truth["y"], s=6, c="cyan", marker="+", linewidths=0.5)
        axes[row, 1].scatter(labels["x"], labels["y"], s=30, facecolors="none", edgecolors="red", linewidths=0.7)
    fig.suptitle("Simulated ribosome micrographs (row: micrograph; + truth, o labels; orange: masks)")
    fig.tight_layout()
    fig.savefig(args.figures / "simulation_examples.png", dpi=70)
    plt.close(fig)
    print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
