"""Micrographs with inverted contrast (particles brighter than the ice): what they cost, read and undone or not.

::

    python -m benchmarks.real_bgal --cache benchmarks/.cache          # the real set (and run.py for the simulated)
    python scripts/inverted_contrast_check.py --seeds 0,1,2 --out /tmp/inverted

Uses the benchmark's cached datasets (``benchmarks/.cache/data``: `standard` = ribosome 10 %, `second` = RuvB 10 %,
ASPIRE 10 %, real beta-galactosidase), each test micrograph negated (``max + min - data``, header kept).

- **zero-shot**: the general model told the true diameter on the test micrographs as recorded, inverted read as
  recorded (``--particle-contrast dark``: what every version before this check did) and inverted with the contrast
  read from them (the default, ``auto``). AP against the truth on those micrographs.
- **fine-tuned** (`standard` only, ``--seeds``): the default ``train`` (600 steps from the general model) on the
  inverted training micrographs and labels, the contrast read as recorded (``dark``) vs read from the labels
  (``auto``), then ``predict`` on the inverted test micrographs. (Training with ``auto`` on inverted micrographs is
  bit-identical to training on them as recorded: tests/integration/test_particle_contrast.py.)

Writes ``inverted-contrast.md`` / ``.json`` into ``--out`` and, with ``--table``, into benchmarks/results. Resumable:
a run folder with its picks is not redone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from cryojoint.evaluation import evaluate_files  # noqa: E402

CACHE = REPO_ROOT / "benchmarks" / ".cache" / "data"
#: name -> (dataset folder glob, micrograph subfolder, truth file, training labels)
DATASETS = {
    "standard": ("ribosome-1024px-12mic-seed0-*", "dose_010", "truth_exact.csv", "train_labels.star"),
    "second": ("ruvb-1024px-9mic-seed0-*", "dose_010", "truth_exact.csv", "train_labels.star"),
    "aspire": ("aspire-blobs-1024px-12mic-seed0-*", "dose_010", "truth_exact.csv", "train_labels.star"),
    "real-bgal": ("real-bgal-*", "micrographs", "truth.csv", "labels.star"),
}
CLI = [sys.executable, "-m", "cryojoint.cli"]


def _dataset(name: str) -> Path:
    found = sorted(CACHE.glob(DATASETS[name][0]))
    if not found:
        raise SystemExit(f"{name}: no cached dataset {CACHE / DATASETS[name][0]} (run the benchmark once)")
    return found[0]


def _inverted(folder: Path, sub: str, names: list[str], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        target = out / f"{name}.mrc"
        if not target.exists():
            with mrcfile.open(folder / sub / f"{name}.mrc", permissive=True) as mrc:
                data, voxel = np.asarray(mrc.data, dtype=np.float32), mrc.voxel_size
            with mrcfile.new(target.with_suffix(".tmp.mrc"), overwrite=True) as new:
                new.set_data((data.max() + data.min()) - data)
                new.voxel_size = voxel
            target.with_suffix(".tmp.mrc").rename(target)
        paths.append(target)
    return paths


def _run(args: list[object], log: Path) -> None:
    with log.open("a") as handle:
        subprocess.run([*CLI, *map(str, args)], check=True, stdout=handle, stderr=subprocess.STDOUT)


def _ap(pred: Path, truth: Path, radius: float) -> float:
    return float(evaluate_files(picks=pred, truth=truth, match_radius=radius)["picking"].overall.average_precision)


def zero_shot(out: Path) -> list[dict]:
    rows = []
    for name in DATASETS:
        folder = _dataset(name)
        meta = json.loads((folder / "benchmark_dataset.json").read_text())
        diameter, sub, truth = meta["particle_diameter_px"], DATASETS[name][1], folder / DATASETS[name][2]
        test = meta["test_names"]
        recorded = [folder / sub / f"{n}.mrc" for n in test]
        inverted = _inverted(folder, sub, test, out / "inverted" / name)
        row = {"dataset": name, "diameter_px": diameter, "test_micrographs": len(test)}
        for key, paths, contrast in (("as_recorded", recorded, None), ("inverted_read_dark", inverted, "dark"),
                                     ("inverted_auto", inverted, None)):
            pred = out / "zero-shot" / name / key
            if not (pred / "candidates.star").exists():
                extra = [] if contrast is None else ["--particle-contrast", contrast]
                _run(["predict", "general", *paths, "--particle-diameter", f"{diameter}px", "--out", pred,
                      "--outputs", "picks", "--overwrite", *extra], out / "log.txt")
            row[key] = _ap(pred, truth, diameter / 2)
        rows.append(row)
        print(row, flush=True)
    return rows


def fine_tuned(out: Path, seeds: list[int]) -> list[dict]:
    folder = _dataset("standard")
    meta = json.loads((folder / "benchmark_dataset.json").read_text())
    sub, truth, labels = DATASETS["standard"][1], folder / DATASETS["standard"][2], folder / DATASETS["standard"][3]
    train_mics = _inverted(folder, sub, meta["train_names"], out / "inverted" / "standard-train")
    test_mics = _inverted(folder, sub, meta["test_names"], out / "inverted" / "standard")
    rows = []
    for seed in seeds:
        for contrast in ("dark", "auto"):
            run = out / "fine-tuned" / f"{contrast}-seed{seed}"
            if not (run / "pred" / "candidates.star").exists():
                _run(["train", *train_mics, "--labels", labels, "--out", run, "--seed", seed, "--overwrite",
                      "--particle-contrast", contrast], out / "log.txt")
                _run(["predict", run / "model.pt", *test_mics, "--out", run / "pred", "--outputs", "picks",
                      "--overwrite"], out / "log.txt")
            rows.append({"seed": seed, "contrast": contrast,
                         "ap": _ap(run / "pred", truth, meta["particle_diameter_px"] / 2)})
            print(rows[-1], flush=True)
    return rows


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f} (n=1)" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def write_tables(out: Path, zero: list[dict], tuned: list[dict], table: Path | None) -> None:
    lines = ["# Inverted contrast: particles brighter than the ice", "",
             "Command: `python scripts/inverted_contrast_check.py` (see its docstring). AP on the benchmark's test "
             "micrographs, 10 % dose for the simulated sets.", "",
             "## Zero-shot (the general model, told the true diameter)", "",
             "| data | as recorded | inverted, read as recorded (before) | inverted, contrast read (default) |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r['dataset']} | {r['as_recorded']:.3f} | {r['inverted_read_dark']:.3f} | {r['inverted_auto']:.3f} |"
              for r in zero]
    if tuned:
        seeds = sorted({r["seed"] for r in tuned})
        lines += ["", f"## Fine-tuned from the general model, `standard` 10 % inverted, 600 steps, seeds "
                      f"{', '.join(map(str, seeds))}", "",
                  "| contrast | AP per seed | mean ± sd |", "|---|---|---:|"]
        for contrast, words in (("dark", "read as recorded (before)"), ("auto", "read from the labels (default)")):
            values = [r["ap"] for r in tuned if r["contrast"] == contrast]
            lines.append(f"| {words} | {' / '.join(f'{v:.3f}' for v in values)} | {_spread(values)} |")
    text = "\n".join(lines) + "\n"
    payload = json.dumps({"zero_shot": zero, "fine_tuned": tuned}, indent=2)
    targets = [out / "inverted-contrast"] + ([table.with_suffix("")] if table else [])
    for target in targets:
        target.with_suffix(".md").write_text(text)
        target.with_suffix(".json").write_text(payload)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="", help="training seeds for the fine-tuned rows (none: zero-shot only)")
    parser.add_argument("--table", type=Path, help="also write the table here (a .md path; .json beside it)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    zero = zero_shot(args.out)
    tuned = fine_tuned(args.out, [int(s) for s in args.seeds.split(",") if s.strip()])
    write_tables(args.out, zero, tuned, args.table)


if __name__ == "__main__":
    main()
