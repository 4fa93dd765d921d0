"""Simulated presets beside real micrographs at the same pixel scale, and the particle contrast of each.

::

    python benchmarks/real_mrcfile.py --skip-topaz   # or only its fetch step: the two raw mrcfile micrographs
    python -m benchmarks.real_bgal --cache benchmarks/.cache                # the real β-galactosidase set
    python scripts/compare_real_and_simulated.py

Writes ``docs/figures/presets_vs_real.png`` (a 256² crop of each: real micrographs on top, every simulated
preset at full and at 10 % dose below) and ``docs/figures/particle_contrast.md`` / ``.json``.

**Particle contrast** of a set of picks on an image binned to the picking scale and normalised to median 0,
robust sd 1 (:func:`cryojoint.imaging.normalise`): per pick, the mean over the particle's core (radius ≤
0.35 d) minus the mean over a ring around it (0.6–0.8 d), signed so that the particle's own polarity is
positive. Reported: its mean over picks (in units of the image's robust sd, so independent of gain and units)
and the share of picks above 1 sd. Both real sets are biased towards visible particles: the fei picks were
chosen by eye, and the β-gal images were filtered by their publishers (less noise: higher contrast). The
simulated rows use the partial labels (a random half inside one region), so they include touching particles and
particles on thicker ice like a real set. Different proteins have different contrast; the table shows whether
the simulated ones lie in the real ones' range, not that they match one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from cryojoint.imaging import bin_image, normalise, to_binned_coordinates  # noqa: E402
from cryojoint.io.coords import read_coordinates  # noqa: E402
from cryojoint.io.mrc import read_micrograph  # noqa: E402
from cryojoint.simulation import SimulationConfig, list_presets, simulate  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MRCFILE_MICROGRAPHS = REPO_ROOT / "benchmarks" / ".cache" / "real-mrcfile" / "micrographs"
FEI_PICKS = REPO_ROOT / "benchmarks" / "data" / "fei-extended-hand-picks.star"
#: Binning of each raw micrograph to ~5 Å/px (as benchmarks/real_mrcfile.py) and the particle diameter there (px):
#: fei measured on the hand picks' mean image (~90 Å); epu has no picks (its particles are ~8 px by eye).
RAW = {"fei-extended.mrc": (6, 18.0), "epu2.9_example.mrc": (8, 8.0)}
BGAL_GLOB = "real-bgal-*"
#: Simulation seed never used by the benchmark (as scripts/measure_blob_floor.py).
SEED = 101
CROP = 256
CORE_FRACTION, RING_FROM, RING_TO = 0.35, 0.6, 0.8
OUT = REPO_ROOT / "docs" / "figures"
#: Display range of every panel: median ± this many robust sds.
DISPLAY_SD = 2.5


def particle_contrast(image: np.ndarray, xy: np.ndarray, diameter_px: float, polarity: float) -> dict[str, float]:
    """Core-minus-ring contrast per pick, in robust sds of the normalised image (see the module docstring)."""
    normalised = normalise(image, dtype=np.float64)
    half = int(np.ceil(RING_TO * diameter_px)) + 1
    grid = np.arange(-half, half + 1)
    radius = np.hypot(grid[:, None], grid[None, :])
    core = radius <= CORE_FRACTION * diameter_px
    ring = (radius >= RING_FROM * diameter_px) & (radius <= RING_TO * diameter_px)
    padded = np.pad(normalised, half, mode="constant", constant_values=np.nan)
    values = []
    for x, y in np.rint(xy).astype(int):
        if not (0 <= x < image.shape[1] and 0 <= y < image.shape[0]):
            continue
        patch = padded[y : y + 2 * half + 1, x : x + 2 * half + 1]
        if np.isnan(patch).any():  # too close to the edge for a full ring
            continue
        values.append(polarity * (patch[core].mean() - patch[ring].mean()))
    values_array = np.asarray(values)
    return {"picks": len(values_array), "mean_contrast_sd": float(values_array.mean()),
            "share_above_1sd": float((values_array > 1.0).mean())}


def pooled(contrasts: list[dict[str, float]]) -> dict[str, float]:
    """Per-micrograph contrasts pooled over all their picks."""
    weights = [c["picks"] for c in contrasts]
    return {"picks": sum(weights),
            "mean_contrast_sd": float(np.average([c["mean_contrast_sd"] for c in contrasts], weights=weights)),
            "share_above_1sd": float(np.average([c["share_above_1sd"] for c in contrasts], weights=weights))}


def real_rows() -> tuple[list[dict], dict[str, np.ndarray]]:
    rows, crops = [], {}
    fei_picks = read_coordinates(FEI_PICKS)
    for name, (factor, diameter) in RAW.items():
        path = MRCFILE_MICROGRAPHS / name
        if not path.exists():
            print(f"missing {path}: run benchmarks/real_mrcfile.py first", file=sys.stderr)
            continue
        micrograph = read_micrograph(path)
        binned = bin_image(micrograph.data, factor)
        pixel = micrograph.pixel_size * factor
        crops[f"real {Path(name).stem}, raw, binned {factor}× ({pixel:.1f} Å/px)"] = binned[-CROP:, :CROP]
        if name == "fei-extended.mrc":
            xy = to_binned_coordinates(fei_picks[["x", "y"]].to_numpy(float), factor)
            rows.append({"data": f"real {Path(name).stem} (raw, {len(xy)} hand picks)", "pixel_A": pixel,
                         "diameter_px": diameter, **particle_contrast(binned, xy, diameter, -1.0)})
    bgal = sorted((REPO_ROOT / "benchmarks" / ".cache" / "data").glob(BGAL_GLOB))
    if bgal:
        folder = bgal[-1]
        meta = json.loads((folder / "benchmark_dataset.json").read_text())
        truth = pd.read_csv(folder / "truth.csv")
        contrasts = []
        for path in sorted((folder / "micrographs").glob("*.mrc")):
            xy = truth.loc[truth["micrograph"] == path.stem, ["x", "y"]].to_numpy(float)
            contrasts.append(particle_contrast(read_micrograph(path).data, xy, meta["particle_diameter_px"], -1.0))
        first = read_micrograph(sorted((folder / "micrographs").glob("*.mrc"))[0])
        title = f"real β-gal, filtered 8-bit ({first.pixel_size:.1f} Å/px)"
        crops[title] = first.data[384 : 384 + CROP, 384 : 384 + CROP]
        summary = pooled(contrasts)
        rows.append({"data": f"real β-gal (filtered, {summary['picks']} reference picks)",
                     "pixel_A": first.pixel_size, "diameter_px": meta["particle_diameter_px"], **summary})
    return rows, crops


def clear_crop(mask: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the CROP² window (on a CROP/2 grid) with the fewest masked pixels (ice, carbon, gold)."""
    corners = [(top, left) for top in range(0, mask.shape[0] - CROP + 1, CROP // 2)
               for left in range(0, mask.shape[1] - CROP + 1, CROP // 2)]
    return min(corners, key=lambda c: int(np.count_nonzero(mask[c[0] : c[0] + CROP, c[1] : c[1] + CROP])))


def simulated_rows() -> tuple[list[dict], dict[str, np.ndarray]]:
    rows, crops = [], {}
    for preset in list_presets():
        data = simulate(config=SimulationConfig.for_preset(preset, n_micrographs=2, seed=SEED))
        for key in ("dose_100", "dose_010"):
            contrasts = []
            for micrograph in data.micrographs[key]:
                xy = data.labels.loc[data.labels["micrograph"] == micrograph.name, ["x", "y"]].to_numpy(float)
                contrasts.append(particle_contrast(micrograph.data, xy, data.particle_diameter_px, -1.0))
            summary = pooled(contrasts)
            rows.append({"data": f"simulated {preset}, {key.replace('dose_', '')} % dose ({summary['picks']} labels)",
                         "pixel_A": data.config.pixel_size_angstrom, "diameter_px": data.particle_diameter_px,
                         **summary})
            top, left = clear_crop(data.masks[0])
            crops[f"{preset} {key.replace('dose_', '')} % ({data.config.pixel_size_angstrom:.1f} Å/px)"] = \
                data.micrographs[key][0].data[top : top + CROP, left : left + CROP]
    return rows, crops


def figure(crops: dict[str, np.ndarray], path: Path) -> None:
    columns = 5
    rows = int(np.ceil(len(crops) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows))
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, (title, image) in zip(axes.ravel(), crops.items(), strict=False):
        normalised = normalise(image)  # median 0, robust sd 1: every panel on the same display scale
        axis.imshow(normalised, cmap="gray", vmin=-DISPLAY_SD, vmax=DISPLAY_SD)
        axis.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> int:
    real, real_crops = real_rows()
    simulated, simulated_crops = simulated_rows()
    OUT.mkdir(parents=True, exist_ok=True)
    # Real crops first, then each preset's 100 % / 10 % pair (a row of the figure holds five).
    figure({**real_crops, **simulated_crops}, OUT / "presets_vs_real.png")
    table = ["| data | Å/px | particle (px) | picks | core − ring contrast (robust sd) | picks above 1 sd |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in real + simulated:
        table.append(f"| {row['data']} | {row['pixel_A']:.2f} | {row['diameter_px']:.0f} | {row['picks']} | "
                     f"{row['mean_contrast_sd']:.2f} | {row['share_above_1sd']:.0%} |")
    (OUT / "particle_contrast.md").write_text("\n".join(table) + "\n")
    (OUT / "particle_contrast.json").write_text(json.dumps(real + simulated, indent=1))
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
