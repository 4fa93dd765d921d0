"""How hard is the simulator for a blob detector, beside real micrographs? The numbers in docs/simulation.md.

A picker that only finds dark blobs of the particle's size (the LoG floor of the benchmark) separates particles
from everything else only as well as the data lets it: on real micrographs aggregates, broken particles, ice and
the background's own texture give it false hits. This script measures that floor at the TRUE particle diameter
(no estimation error) on

* the real EMPIAR-10017 β-galactosidase micrographs the benchmark prepares (``benchmarks/.cache/data/
  real-bgal-*``, made by ``python benchmarks/run.py --profile real-bgal`` or ``benchmarks/real_bgal.py``), whose
  filtered 8-bit images are at full exposure; their 20 px filter-artefact border holds no truth, so picks within
  32 px of an edge are left out there (and only there);
* every simulator preset at every dose, on seeds the benchmark never uses, with and without decoys.

::

    python scripts/measure_blob_floor.py --real-bgal benchmarks/.cache/data/real-bgal-3ab08d58 \\
        --out docs/figures

Writes ``blob_floor.md`` / ``blob_floor.json`` (AP and best F1 per row) and ``simulation_decoys.png`` (a real
crop beside simulated crops, decoys marked) into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from cryojoint.baselines import blob_pick
from cryojoint.io.mrc import read_micrograph
from cryojoint.metrics.picking import picking_metrics
from cryojoint.simulation import NO_DECOYS, SimulationConfig, list_presets, simulate

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: Seeds of the measurement datasets: the benchmark simulates with seed 0, so these never overlap it.
MEASURE_SEED = 101
#: The real set's filtered border (no truth within 32 binned px of an edge).
REAL_BORDER_PX = 32.0


def floor(images: dict[str, np.ndarray], truth: pd.DataFrame, diameter_px: float, border_px: float = 0.0) -> dict:
    """LoG picks (dark blobs of the true size) scored against the truth at the true radius."""
    tables = []
    for name, image in images.items():
        xy, scores = blob_pick(image, diameter_px, polarity="dark", border_px=border_px)
        tables.append(pd.DataFrame({"micrograph": name, "x": xy[:, 0], "y": xy[:, 1], "score": scores}))
    report = picking_metrics(pd.concat(tables, ignore_index=True), truth, diameter_px / 2.0, threshold=None).overall
    return {"ap": float(report.average_precision), "best_f1": float(report.best_f1), "n_true": int(report.n_true)}


def real_rows(folder: Path) -> tuple[dict, dict[str, np.ndarray], pd.DataFrame]:
    """The real set at the diameter its truth discs were drawn with (``benchmark_dataset.json``)."""
    truth = pd.read_csv(folder / "truth.csv")
    diameter = float(json.loads((folder / "benchmark_dataset.json").read_text())["particle_diameter_px"])
    images = {p.stem: read_micrograph(p).data for p in sorted((folder / "micrographs").glob("*.mrc"))}
    rows = floor(images, truth, diameter, REAL_BORDER_PX)
    rows["diameter_px"] = diameter
    return rows, images, truth


def simulated_rows(preset: str, n_micrographs: int, changes: dict) -> tuple[dict, object]:
    config = SimulationConfig.for_preset(preset, n_micrographs=n_micrographs, seed=MEASURE_SEED, **changes)
    started = time.perf_counter()
    data = simulate(config=config)
    seconds = (time.perf_counter() - started) / n_micrographs
    rows = {key: floor({m.name: m.data for m in images}, data.truth, data.particle_diameter_px)
            for key, images in {"clean": data.clean, **data.micrographs}.items()}
    per_particle = data.decoys["kind"].value_counts().reindex(["fragment", "aggregate", "ice_crystal"]).fillna(0)
    rows["decoys_per_particle"] = {k: float(v) / max(len(data.truth), 1) for k, v in per_particle.items()}
    rows["diameter_px"] = data.particle_diameter_px
    rows["seconds_per_micrograph"] = seconds
    return rows, data


def figure(real_images: dict[str, np.ndarray], real_truth: pd.DataFrame, data, out: Path) -> None:
    crop = 256
    name = sorted(real_images)[0]
    real = real_images[name][400 : 400 + crop, 400 : 400 + crop]
    sim_name = data.clean[0].name
    panels = [("real β-gal (filtered, full exposure)", real, real_truth[real_truth["micrograph"] == name], (400, 400))]
    for key in ("dose_100", "dose_010"):
        panels.append((f"simulated ribosome {key}", data.micrographs[key][0].data[:crop, :crop], None, (0, 0)))
    panels.append(("simulated clean (+ particle, x fragment, o clump, * ice)", data.clean[0].data[:crop, :crop],
                   data.truth[data.truth["micrograph"] == sim_name], (0, 0)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6))
    for axis, (title, image, marks, (top, left)) in zip(axes, panels, strict=True):
        axis.imshow(image, cmap="gray")
        axis.set_title(title, fontsize=9)
        axis.set_axis_off()
        if marks is not None:
            inside = marks[(marks["x"] - left).between(0, crop - 1) & (marks["y"] - top).between(0, crop - 1)]
            axis.plot(inside["x"] - left, inside["y"] - top, "c+", ms=8)
    decoys = data.decoys[data.decoys["micrograph"] == sim_name]
    for kind, style in (("fragment", "rx"), ("aggregate", "yo"), ("ice_crystal", "m*")):
        rows = decoys[(decoys["kind"] == kind) & decoys["x"].between(0, crop - 1) & decoys["y"].between(0, crop - 1)]
        axes[-1].plot(rows["x"], rows["y"], style, ms=8, mfc="none")
    fig.tight_layout()
    fig.savefig(out / "simulation_decoys.png", dpi=80)
    plt.close(fig)


def markdown(results: dict) -> str:
    doses = ["dose_100", "dose_060", "dose_020", "dose_010"]
    lines = ["| data | particle (px) | decoys per particle (fragment / clump / ice) | LoG AP clean | " + " | ".join(
        f"LoG AP {d[-3:].lstrip('0')} %" for d in doses) + " | LoG best F1 100 % / 10 % |",
             "|---|---|---|---:|" + "---:|" * len(doses) + "---|"]
    real = results.get("real-bgal")
    if real:
        lines.append(f"| real β-gal (20 mics, filtered 8-bit, full exposure) | {real['diameter_px']:.0f} | not known | "
                     f"– | {real['ap']:.3f} | – | – | – | {real['best_f1']:.3f} / – |")
    for label, rows in results.items():
        if label == "real-bgal":
            continue
        per = rows["decoys_per_particle"]
        lines.append(f"| {label} | {rows['diameter_px']:.0f} | {per['fragment']:.2f} / {per['aggregate']:.2f} / "
                     f"{per['ice_crystal']:.2f} | {rows['clean']['ap']:.3f} | "
                     + " | ".join(f"{rows[d]['ap']:.3f}" for d in doses)
                     + f" | {rows['dose_100']['best_f1']:.3f} / {rows['dose_010']['best_f1']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-bgal", type=Path, help="the benchmark's prepared real-bgal folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/figures")
    parser.add_argument("--micrographs", type=int, default=4, help="simulated micrographs per preset (1024²)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    real_images, real_truth = {}, pd.DataFrame()
    if args.real_bgal is not None:
        results["real-bgal"], real_images, real_truth = real_rows(args.real_bgal)
        print(f"real-bgal: {results['real-bgal']}", flush=True)
    shown = None
    for preset in list_presets():
        for label, changes in ((preset, {}), (f"{preset}, no decoys", NO_DECOYS)):
            if changes and preset != "ribosome":
                continue
            rows, data = simulated_rows(preset, args.micrographs, changes)
            results[label] = rows
            print(f"{label}: " + ", ".join(f"{k} AP {v['ap']:.3f}" for k, v in rows.items()
                                           if isinstance(v, dict) and "ap" in v), flush=True)
            if preset == "ribosome" and not changes:
                shown = data
    (args.out / "blob_floor.json").write_text(json.dumps(
        {"seed": MEASURE_SEED, "micrographs_per_preset": args.micrographs, "defaults": dataclasses.asdict(
            SimulationConfig()), "results": results}, indent=1, default=list))
    (args.out / "blob_floor.md").write_text(markdown(results))
    if shown is not None and real_images:
        figure(real_images, real_truth, shown, args.out)
    print(markdown(results))


if __name__ == "__main__":
    main()
