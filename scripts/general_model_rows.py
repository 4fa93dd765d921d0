"""The benchmark's untrained general-model rows (zero-shot picking, denoising) for any pretrained model file.

The benchmark's `cryojoint-general-zero-shot` and `cryojoint-general-denoise` cells run the *shipped* weights. To
say how much of a zero-shot figure is the pretraining run itself (its seed) rather than its corpus, the same two
measurements are needed for candidate files (`cryojoint pretrain --seed N` outputs). This runs exactly what those
cells run (`predict_files` on the profile's test micrographs; zero-shot told the true diameter, scored at the
automatic cut-off; denoising at the input's pixel size, and told the diameter, FRC vs clean) for each model given::

    PYTHONPATH=src python scripts/general_model_rows.py general runs/pretrain-seed1/general.pt \
        --columns standard/010,standard/020,standard/060,second/010,second/060,aspire/010,aspire/020,real-bgal/real

Writes ``OUT.json`` and ``OUT.md`` (``--out``, default ``benchmarks/results/<date>-general-model-rows``); re-running
skips (model, column) pairs already in ``OUT.json`` for a model file with the same hash.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "src"))

from benchmarks.suite.cells import _candidates, _read_mrc_folder  # noqa: E402
from benchmarks.suite.datasets import ensure_dataset, load_dose_data  # noqa: E402
from benchmarks.suite.profiles import PROFILES  # noqa: E402
from benchmarks.suite.scoring import score_denoised, score_picks  # noqa: E402

from cryojoint.checkpoint import resolve_model_path  # noqa: E402
from cryojoint.prediction import predict_files  # noqa: E402


def model_sha256(model: str) -> str:
    return hashlib.sha256(resolve_model_path(model).read_bytes()).hexdigest()


def measure(model: str, profile_name: str, column: str, cache: Path) -> dict[str, Any]:
    """Zero-shot AP / best F1 / F1 at the automatic cut-off, and denoising FRC vs clean, on one column."""
    profile = PROFILES[profile_name]
    data = load_dose_data(ensure_dataset(profile.structures[0], profile, cache, print), column, profile)
    paths = [Path(p) for p in data.test_mrcs]
    with tempfile.TemporaryDirectory() as work:
        picks_dir, denoised_dir = Path(work) / "picks", Path(work) / "denoised"
        summary = predict_files(model, paths, picks_dir, outputs=["picks"], particle_diameter_px=data.true_diameter_px)
        threshold = json.loads((picks_dir / "predict.json").read_text()).get("threshold")
        picking = score_picks(data, _candidates(picks_dir, data, model), threshold)
        frc: dict[str, float | None] = {"frc_clean": None, "frc_clean_sized": None}
        if profile.has_denoising_truth:  # real micrographs have no clean image to score a denoiser against
            for key, sized in (("frc_clean", False), ("frc_clean_sized", True)):
                folder = denoised_dir / key
                predict_files(model, paths, folder, outputs=["denoised"],
                              particle_diameter_px=data.true_diameter_px if sized else None,
                              denoise_at_input_size=sized)
                frc[key] = score_denoised(data, _read_mrc_folder(folder / "denoised", data.test_names))["frc_clean"]
    return {"ap": picking["average_precision"], "best_f1": picking["best_f1"], "f1_at_own": picking.get("f1_at_own"),
            **frc, "seconds_per_micrograph": summary.seconds_per_micrograph}


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown(results: dict[str, Any], columns: list[str]) -> str:
    lines = ["# Untrained general-model rows per pretrained file", "",
             "`scripts/general_model_rows.py`: zero-shot AP (true diameter, no labels) / denoising FRC vs clean at "
             "the input's size / the same told the diameter (`denoise --particle-diameter`; – on real data: no "
             "clean image, or not measured) on each profile's test micrographs, as the benchmark's "
             "`cryojoint-general-zero-shot`, `cryojoint-general-denoise` and `cryojoint-general-denoise-sized` "
             "cells.", "",
             "| model (sha256) | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for model, entry in results.items():
        cells = []
        for column in columns:
            row = entry["columns"].get(column)
            cells.append("–" if row is None else f"{_figure(row['ap'])} / {_figure(row['frc_clean'])} / "
                                                 f"{_figure(row.get('frc_clean_sized'))}")
        lines.append(f"| {model} ({entry['sha256'][:12]}) | " + " | ".join(cells) + " |")
    if len(results) > 1:
        cells = []
        for column in columns:
            aps = [e["columns"][column]["ap"] for e in results.values()
                   if column in e["columns"] and e["columns"][column]["ap"] is not None]
            cells.append(f"{statistics.mean(aps):.3f} ± {statistics.stdev(aps):.3f}" if len(aps) > 1 else "–")
        lines.append("| AP mean ± sd over the files | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="'general', 'general-v1' or paths to pretrained .pt files")
    parser.add_argument("--columns", default="standard/010,real-bgal/real")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "benchmarks" / ".cache")
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "benchmarks" / "results" / f"{datetime.date.today()}-general-model-rows")
    args = parser.parse_args()
    columns = args.columns.split(",")
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    results: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    for model in args.models:
        sha = model_sha256(model)
        entry = results.get(model)
        if entry is None or entry["sha256"] != sha:
            entry = results[model] = {"sha256": sha, "columns": {}}
        for column in columns:
            if column in entry["columns"]:
                continue
            profile_name, dose = column.split("/")
            entry["columns"][column] = measure(model, profile_name, dose, args.cache)
            print(model, column, json.dumps(entry["columns"][column]), flush=True)
            json_path.write_text(json.dumps(results, indent=1) + "\n")
    md_path.write_text(markdown(results, columns))
    print(md_path)


if __name__ == "__main__":
    main()
