"""Inference variants A/B: the same trained models, the same test micrographs, different ``predict`` settings.

A change to how inference runs (windows, their stride, where the detector runs) changes picks and denoised
images without retraining. This re-predicts the test micrographs of a benchmark profile with models the
benchmark already trained (``benchmarks/.cache/<profile>/work/.../run/model.pt``) under each variant, scores
them with the benchmark's own functions (true-radius matching, FRC/PSNR vs the clean and full-dose images) and
times each micrograph. One process, one variant after another on the same box: the seconds compare.

::

    python benchmarks/ab_inference.py --profile standard --dose 010 --rows cryojoint-joint-default \\
        --variant base= --variant stride23=window_stride_fraction=0.6667

A variant is ``name=key=value,key=value`` over ``PredictConfig`` fields (empty: the model's own settings).
Writes ``benchmarks/results/<date>-ab-inference-<profile>-<dose>.md`` and ``.json`` (rewritten after each
model, so a stopped run keeps what it measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from benchmarks.suite.cells import split_replicate_id  # noqa: E402
from benchmarks.suite.datasets import ensure_dataset, load_dose_data  # noqa: E402
from benchmarks.suite.profiles import PROFILES, REAL_DOSE  # noqa: E402
from benchmarks.suite.scoring import INDEPENDENT_PSNR_KEY, score_denoised, score_picks  # noqa: E402

from cryojoint.checkpoint import load_model  # noqa: E402
from cryojoint.config import CryojointConfig, PredictConfig  # noqa: E402
from cryojoint.inference import PickingSettings, predict_micrograph  # noqa: E402
from cryojoint.io.mrc import read_micrograph  # noqa: E402

CACHE = REPO_ROOT / "benchmarks" / ".cache"
RESULTS = REPO_ROOT / "benchmarks" / "results"
#: Scores in the table, and their column titles.
COLUMNS: dict[str, str] = {"average_precision": "AP", "best_f1": "best F1", "frc_clean": "FRC vs clean",
                           "psnr_full_dose": "PSNR vs full", INDEPENDENT_PSNR_KEY: "PSNR vs rest",
                           "seconds_per_micrograph": "s / mic"}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name=key=value,key=value`` -> (name, PredictConfig overrides), values typed like the config's."""
    name, _, settings = text.partition("=")
    fields = {f.name for f in dataclasses.fields(PredictConfig)}
    overrides: dict[str, Any] = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"error: variant {name}: unknown predict setting '{key}' (known: {', '.join(fields)})")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def model_paths(profile: str, structure: str, dose: str, rows: list[str]) -> list[tuple[str, Path]]:
    """(cell name, model.pt) of every trained cell of the rows: ``<row>``, ``<row>-seed1``, ..."""
    work = CACHE / profile / "work" / structure / dose
    found = []
    for row in rows:
        for cell in sorted(work.glob(f"{row}*")):
            if split_replicate_id(cell.name)[0] != row:
                continue
            if (cell / "run" / "model.pt").is_file():
                found.append((cell.name, cell / "run" / "model.pt"))
    return found


def run_variant(model_path: Path, overrides: dict[str, Any], data: Any) -> dict[str, Any]:
    model = load_model(model_path)
    if overrides:  # through the config's own typing and checks
        settings = model.config.to_dict()
        settings["predict"] = {**settings["predict"], **overrides}
        model = dataclasses.replace(model, config=CryojointConfig.from_dict(settings))
    settings = PickingSettings.resolve(model)
    candidates, denoised, seconds = [], {}, []
    for path in data.test_mrcs:
        micrograph = read_micrograph(path)
        start = time.perf_counter()
        with torch.inference_mode():
            prediction = predict_micrograph(model, micrograph, settings)
        seconds.append(time.perf_counter() - start)
        candidates.append(prediction.candidates)
        if prediction.denoised is not None:
            denoised[micrograph.name] = prediction.denoised
    picks = pd.concat(candidates, ignore_index=True)
    scores: dict[str, Any] = {k: v for k, v in score_picks(data, picks, None).items() if k != "curve"}
    if denoised and data.has_denoising_truth:
        scores.update(score_denoised(data, denoised))
    scores["seconds_per_micrograph"] = float(np.mean(seconds))
    return scores


def write_tables(path: Path, meta: dict[str, Any], results: dict[str, dict[str, dict[str, Any]]]) -> None:
    path.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=1))
    variants = list(meta["variants"])
    lines = [f"# Inference variants A/B ({meta['profile']}, dose {meta['dose']})", "",
             f"Run {meta['started']} at git {meta['git']}; variants: "
             + "; ".join(f"`{n}` = {meta['variants'][n] or 'the model’s own settings'}" for n in variants), ""]
    for variant in variants:
        lines += [f"## {variant}", "", "| model | " + " | ".join(COLUMNS.values()) + " |",
                  "|---|" + "---|" * len(COLUMNS)]
        per_model = {m: r[variant] for m, r in results.items() if variant in r}
        rows: dict[str, list[dict[str, Any]]] = {}
        for model, scores in per_model.items():
            lines.append(f"| {model} | " + " | ".join(_cell(scores.get(k)) for k in COLUMNS) + " |")
            rows.setdefault(split_replicate_id(model)[0], []).append(scores)
        for row, seeds in rows.items():  # mean ± sd over a row's training seeds
            if len(seeds) < 2:
                continue
            values = [[s.get(k) for s in seeds] for k in COLUMNS]
            lines.append(f"| **{row}: mean ± sd ({len(seeds)} seeds)** | " + " | ".join(
                f"{_cell(float(np.mean(v)))} ± {_cell(float(np.std(v, ddof=1)))}"
                if all(x is not None for x in v) else "—" for v in values) + " |")
        lines.append("")
    path.with_suffix(".md").write_text("\n".join(lines))


def _cell(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="standard", choices=sorted(PROFILES))
    parser.add_argument("--dose", default="010")
    parser.add_argument("--structure", default=None, help="default: the profile's first")
    parser.add_argument("--rows", default="cryojoint-joint-default", help="comma-separated benchmark rows")
    parser.add_argument("--variant", action="append", default=[], help="name=key=value,... (repeat)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="only rewrite the markdown of this JSON")
    args = parser.parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        write_tables(args.render.with_suffix(""), {k: v for k, v in saved.items() if k != "results"},
                     saved["results"])
        return 0
    torch.set_num_threads(args.threads)
    profile = PROFILES[args.profile]
    structure = args.structure or profile.structures[0]
    dose = REAL_DOSE if profile.dataset == "real-bgal" else args.dose
    data = load_dose_data(ensure_dataset(structure, profile, CACHE, log=print), dose, profile)
    if not args.variant:
        raise SystemExit("error: give at least one --variant name=key=value,...")
    variants = dict(parse_variant(v) for v in args.variant)
    models = model_paths(args.profile, structure, dose, args.rows.split(","))
    if not models:
        raise SystemExit(f"error: no trained models of {args.rows} under {CACHE / args.profile / 'work'}")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=REPO_ROOT).stdout.strip()
    meta = {"profile": args.profile, "dose": args.dose, "structure": structure, "data": str(data.data_dir),
            "started": dt.datetime.now().isoformat(timespec="seconds"), "git": git, "threads": args.threads,
            "variants": {n: v for n, v in variants.items()}}
    out = args.out or RESULTS / f"{dt.date.today().isoformat()}-ab-inference-{args.profile}-{args.dose}"
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for cell, path in models:
        results[cell] = {}
        for name, overrides in variants.items():
            results[cell][name] = run_variant(path, overrides, data)
            scores = results[cell][name]
            print(f"{cell} {name}: AP {scores['average_precision']:.3f}, FRC {scores.get('frc_clean') or 0:.3f},"
                  f" {scores['seconds_per_micrograph']:.1f} s/mic", flush=True)
            write_tables(out, meta, results)
    print(f"tables: {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
