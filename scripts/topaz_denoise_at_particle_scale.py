"""Would Topaz-Denoise gain from what `cryojoint denoise --particle-diameter` does? A fairness check.

Told the diameter, `cryojoint denoise` bins the micrographs to the general model's particle scale (36 px), denoises,
returns each pass to the input's grid and averages over the binning grid's phases. If that gain came from binning
and averaging alone, Topaz-Denoise would earn it too. This gives Topaz-Denoise's pretrained unet the same treatment
(bin by the same factor; one phase, then the mean over the phases `cryojoint.inference.bin_phase_offsets` gives;
unbinned with `cryojoint.imaging.unbin_image`) on one profile's test micrographs and scores FRC vs clean as the
benchmark does::

    PYTHONPATH=src python scripts/topaz_denoise_at_particle_scale.py --profile aspire --doses 010,020 \
        --out benchmarks/results/2026-12-03-s21-topaz-denoise-at-particle-scale

Needs the benchmark's Topaz venv (`benchmarks/peers/topaz`, created on first use). Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "src"))

from benchmarks.peers.topaz import ensure_topaz_env  # noqa: E402
from benchmarks.peers.topaz.steps import topaz_denoise  # noqa: E402
from benchmarks.suite.datasets import DoseData, ensure_dataset, load_dose_data  # noqa: E402
from benchmarks.suite.profiles import PROFILES  # noqa: E402
from benchmarks.suite.scoring import score_denoised  # noqa: E402

from cryojoint.config import GENERAL_PARTICLE_PX  # noqa: E402
from cryojoint.data import network_factor  # noqa: E402
from cryojoint.imaging import bin_image  # noqa: E402
from cryojoint.inference import BinPhaseMean, bin_phase_offsets  # noqa: E402
from cryojoint.io.mrc import read_micrograph, write_mrc  # noqa: E402


def binned_topaz_denoise(data: DoseData, factor: float, offsets: list[tuple[int, int]],
                         launcher: Path) -> tuple[dict[str, np.ndarray], float]:
    """Topaz-Denoise on each phase's binned crop, back on the input's grid, averaged as `cryojoint denoise` does."""
    images = data.test_images()
    phases = {n: BinPhaseMean(image.shape, factor) for n, image in images.items()}
    started = time.perf_counter()
    for row, column in offsets:  # one Topaz process per phase, over every micrograph
        with tempfile.TemporaryDirectory() as work:
            inputs = []
            (Path(work) / "in").mkdir()
            for name, image in images.items():
                inputs.append(write_mrc(Path(work) / "in" / f"{name}.mrc",
                                        bin_image(image[row:, column:], factor), pixel_size=data.pixel_size * factor))
            result = topaz_denoise(inputs, Path(work) / "out", launcher=launcher)
            for name in images:
                phases[name].add(read_micrograph(result.paths[name]).data, row, column)
    seconds = (time.perf_counter() - started) / len(images)
    return {n: phase.mean() for n, phase in phases.items()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="aspire")
    parser.add_argument("--doses", default="010,020")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "benchmarks" / ".cache")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    launcher = ensure_topaz_env()
    rows = []
    for dose in args.doses.split(","):
        data = load_dose_data(ensure_dataset(profile.structures[0], profile, args.cache, print), dose, profile)
        factor = network_factor(data.true_diameter_px, GENERAL_PARTICLE_PX)
        for offsets in ([(0, 0)], bin_phase_offsets(factor)):
            denoised, seconds = binned_topaz_denoise(data, factor, offsets, launcher)
            rows.append({"dose": dose, "bin": factor, "phases": len(offsets),
                         "frc_clean": score_denoised(data, denoised)["frc_clean"], "seconds_per_micrograph": seconds})
            print(json.dumps(rows[-1]), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps({"profile": args.profile, "rows": rows}, indent=1) + "\n")
    lines = [f"# Topaz-Denoise at the general model's particle scale ({args.profile})", "",
             "`scripts/topaz_denoise_at_particle_scale.py`: Topaz-Denoise's pretrained unet on the test micrographs "
             "binned to a 36 px particle, back on the input's grid; FRC vs clean (0.015-0.25 cycles/px at the "
             "input's size), time per micrograph (all its passes).", "",
             "| dose | bin | phases | FRC vs clean | s / micrograph |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['dose']} | {r['bin']:g} | {r['phases']} | {r['frc_clean']:.3f} | "
              f"{r['seconds_per_micrograph']:.1f} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
