"""How much structure real and simulated backgrounds carry at the particle scale, and how far particles stand out of it.

::

    python benchmarks/real_mrcfile.py --skip-topaz   # or only its fetch step: the two raw mrcfile micrographs
    python scripts/background_texture.py

Writes ``docs/figures/background_texture.md`` / ``.json`` and ``docs/figures/background_texture.png``.

A blob detector compares the mean over a disc with the mean over a ring around it. On white noise that
difference has a known spread, σ·√(1/n_core + 1/n_ring) for pixel spread σ; background that is structured at
the disc's scale (ice thickness, small contaminants, carbon) spreads it further. Per image, binned to ~5 Å/px
and normalised (median 0, robust sd 1), and per scale d (px):

- **texture excess**: the robust sd of the core − ring response (core radius ≤ 0.35 d, ring 0.6–0.8 d, as
  ``scripts/compare_real_and_simulated.py``) at every position, over what white noise of the image's own pixel
  spread would give. 1 is white; above 1 is structure at that scale. The robust sd (1.4826 × MAD) lets the few
  particles and objects among the positions count little, so the figure speaks of the background.
- **detection SNR** at the particle's own scale: the mean response at the picks minus the median response,
  over the robust sd of the response. What a blob detector sees; it folds in contrast, size and texture.

Images: ``fei-extended`` (raw, 3838×3710 uint16, 0.854 Å/px, binned 6×; its pixel variance over mean (~100) and
mean (~3,500) put it at ~47 e⁻/Å², like the simulator's 100 % dose of 50 e⁻/Å²) with its 27 hand picks;
``epu2.9_example`` (raw, binned 8×; no picks, no known dose); every simulated preset at 100 % and 10 % dose
(seed 101, never used by the benchmark) with its partial labels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
from scipy import ndimage, signal

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "src"))

from cryojoint.imaging import bin_image, normalise, robust_centre_spread, to_binned_coordinates  # noqa: E402
from cryojoint.io.coords import read_coordinates  # noqa: E402
from cryojoint.io.mrc import read_micrograph  # noqa: E402
from cryojoint.simulation import SimulationConfig, list_presets, simulate  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MRCFILE_MICROGRAPHS = REPO_ROOT / "benchmarks" / ".cache" / "real-mrcfile" / "micrographs"
FEI_PICKS = REPO_ROOT / "benchmarks" / "data" / "fei-extended-hand-picks.star"
#: Binning of each raw micrograph to ~5 Å/px and its particle diameter there (px), as compare_real_and_simulated.py.
RAW = {"fei-extended.mrc": (6, 18.0), "epu2.9_example.mrc": (8, None)}
SEED = 101
#: Scales (px at ~5 Å/px) the texture is read at: the presets' particles span 22-56 px, fei's 18.
SCALES_PX = (10.0, 18.0, 24.0, 34.0, 52.0)
CORE_FRACTION, RING_FROM, RING_TO = 0.35, 0.6, 0.8
OUT = REPO_ROOT / "docs" / "figures"


def core_ring_kernel(diameter_px: float) -> tuple[np.ndarray, float]:
    """Kernel whose correlation is mean(core) − mean(ring), and that difference's sd on unit white noise."""
    half = int(np.ceil(RING_TO * diameter_px)) + 1
    grid = np.arange(-half, half + 1)
    radius = np.hypot(grid[:, None], grid[None, :])
    core = radius <= CORE_FRACTION * diameter_px
    ring = (radius >= RING_FROM * diameter_px) & (radius <= RING_TO * diameter_px)
    kernel = core / core.sum() - ring / ring.sum()
    return kernel, float(np.sqrt(1.0 / core.sum() + 1.0 / ring.sum()))


def measure(image: np.ndarray, diameter_px: float, picks_xy: np.ndarray | None,
            background_mask: np.ndarray | None = None) -> dict[str, float]:
    """Texture excess (and detection SNR when there are picks) of a normalised image at one scale.

    Dark particles: the response is signed so that a dark disc on a brighter ring is positive.
    """
    kernel, white_sd = core_ring_kernel(diameter_px)
    response = -signal.fftconvolve(image, kernel[::-1, ::-1], mode="same")  # correlation; zero outside
    margin = kernel.shape[0] // 2 + 1
    valid = np.zeros(image.shape, dtype=bool)
    valid[margin:-margin, margin:-margin] = True
    if background_mask is not None:
        valid &= background_mask
    centre, spread = robust_centre_spread(response[valid])
    _, pixel_spread = robust_centre_spread(image)
    result = {"scale_px": diameter_px, "texture_excess": spread / (pixel_spread * white_sd)}
    if picks_xy is not None and len(picks_xy):
        xy = np.rint(picks_xy).astype(int)
        inside = (xy[:, 0] >= margin) & (xy[:, 0] < image.shape[1] - margin) & \
                 (xy[:, 1] >= margin) & (xy[:, 1] < image.shape[0] - margin)
        at_picks = response[xy[inside, 1], xy[inside, 0]]
        result["detection_snr"] = float((at_picks.mean() - centre) / spread)
        result["picks"] = int(inside.sum())
    return result


def away_from(shape: tuple[int, int], xy: np.ndarray, radius_px: float) -> np.ndarray:
    """True farther than ``radius_px`` from every point of ``xy``."""
    seeds = np.ones(shape, dtype=bool)
    ij = np.rint(xy[:, ::-1]).astype(int)
    keep = (ij[:, 0] >= 0) & (ij[:, 0] < shape[0]) & (ij[:, 1] >= 0) & (ij[:, 1] < shape[1])
    seeds[ij[keep, 0], ij[keep, 1]] = False
    return ndimage.distance_transform_edt(seeds) > radius_px


def rows_for(name: str, images: list[np.ndarray], diameter_px: float | None, picks: list[np.ndarray | None],
             truth: list[np.ndarray] | None, pixel_a: float) -> list[dict]:
    """One row per scale (texture excess at every position, and away from the true particles when known); the
    particle's own scale is among them, with its detection SNR, when there are picks."""
    with_picks = diameter_px is not None and picks[0] is not None
    rows = []
    for scale in sorted({*SCALES_PX, *([diameter_px] if with_picks else [])}):
        own = with_picks and abs(scale - diameter_px) < 1e-6
        per_image = [measure(image, scale, pick if own else None) for image, pick in zip(images, picks, strict=True)]
        row = {"data": name, "pixel_A": pixel_a, "particle_px": diameter_px, "scale_px": scale,
               "texture_excess": float(np.mean([m["texture_excess"] for m in per_image]))}
        if truth is not None:
            background = [measure(image, scale, None, away_from(image.shape, true_xy, float(diameter_px)))
                          for image, true_xy in zip(images, truth, strict=True)]
            row["texture_excess_background_only"] = float(np.mean([m["texture_excess"] for m in background]))
        if own:
            weights = [m.get("picks", 0) for m in per_image]
            row["picks"] = int(sum(weights))
            row["detection_snr"] = float(np.average([m["detection_snr"] for m in per_image], weights=weights))
        rows.append(row)
    return rows


def real_rows() -> list[dict]:
    rows = []
    fei_picks = read_coordinates(FEI_PICKS)
    for name, (factor, diameter) in RAW.items():
        path = MRCFILE_MICROGRAPHS / name
        if not path.exists():
            raise SystemExit(f"{path}: missing; run benchmarks/real_mrcfile.py (its fetch step) first")
        micrograph = read_micrograph(path)
        binned = normalise(bin_image(micrograph.data, factor), dtype=np.float64)
        picks = None
        if name == "fei-extended.mrc":
            picks = to_binned_coordinates(fei_picks[["x", "y"]].to_numpy(float), factor)
        label = f"real {Path(name).stem} (raw, binned {factor}×)"
        rows += rows_for(label, [binned], diameter, [picks], None, micrograph.pixel_size * factor)
    return rows


def simulated_rows() -> list[dict]:
    rows = []
    for preset in list_presets():
        data = simulate(config=SimulationConfig.for_preset(preset, n_micrographs=2, seed=SEED))
        for key in ("dose_100", "dose_010"):
            images, picks, truth = [], [], []
            for micrograph in data.micrographs[key]:
                images.append(normalise(micrograph.data, dtype=np.float64))
                picks.append(data.labels.loc[data.labels["micrograph"] == micrograph.name, ["x", "y"]].to_numpy(float))
                truth.append(data.truth.loc[data.truth["micrograph"] == micrograph.name, ["x", "y"]].to_numpy(float))
            label = f"simulated {preset}, {key.replace('dose_', '')} % dose"
            rows += rows_for(label, images, float(data.particle_diameter_px), picks, truth,
                             data.config.pixel_size_angstrom)
    return rows


def tables(rows: list[dict]) -> str:
    names = list(dict.fromkeys(r["data"] for r in rows))
    scales = " | ".join(f"{s:.0f} px" for s in SCALES_PX)
    header = f"| data | {scales} | particle (px) | detection SNR at it (picks) |"
    lines = ["Texture excess (core − ring response's robust sd over white noise's; 1 = white), at every position",
             "(in brackets: away from the true particles, simulated only):", "", header,
             "|---|" + "---:|" * (len(SCALES_PX) + 2)]
    for name in names:
        own = [r for r in rows if r["data"] == name]
        cells = []
        for scale in SCALES_PX:
            r = next(r for r in own if r["scale_px"] == scale)
            cell = f"{r['texture_excess']:.2f}"
            if "texture_excess_background_only" in r:
                cell += f" ({r['texture_excess_background_only']:.2f})"
            cells.append(cell)
        at = [r for r in own if "detection_snr" in r]
        particle = f"{own[0]['particle_px']:.0f}" if own[0]["particle_px"] else "–"
        snr = f"{at[0]['detection_snr']:.2f} ({at[0]['picks']})" if at else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {particle} | {snr} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: Path) -> None:
    fig, axis = plt.subplots(figsize=(10, 4.5))
    for name in dict.fromkeys(r["data"] for r in rows):
        own = sorted((r for r in rows if r["data"] == name and r["scale_px"] in SCALES_PX), key=lambda r: r["scale_px"])
        style = dict(color="black", linewidth=2.2) if name.startswith("real") else dict(alpha=0.7)
        line = ":" if "epu" in name else "--" if "010 %" in name else "-"
        axis.plot([r["scale_px"] for r in own], [r["texture_excess"] for r in own], line, label=name, **style)
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_xlabel("scale: disc diameter (px at ~5 Å/px)")
    axis.set_ylabel("texture excess (1 = white)")
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axis.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    rows = real_rows() + simulated_rows()
    OUT.mkdir(parents=True, exist_ok=True)
    text = tables(rows)
    (OUT / "background_texture.md").write_text(text)
    (OUT / "background_texture.json").write_text(json.dumps(rows, indent=1))
    figure(rows, OUT / "background_texture.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
