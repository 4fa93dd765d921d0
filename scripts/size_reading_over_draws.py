"""The particle diameter as training reads it from partial labels, with and without the general model's scan.

Per dataset draw (as the `standard` benchmark: 8 training micrographs with their partial labels, 4 test ones), the blob
reading of the labels (:func:`cryojoint.picking.measure_particle_diameter`) and, where it read the mean particle's
core, the general model's reading (:func:`cryojoint.size_reading.read_size_with_model`), as ``cryojoint train`` does
when it fine-tunes the general model::

    PYTHONPATH=src python scripts/size_reading_over_draws.py read --preset ribosome --seeds 0,1,2,3,4,5

``finetune`` trains the default (fine-tuning the general model, 600 steps) on one draw twice per seed, told the blob
reading and reading the size itself, and scores the test micrographs (AP at the true radius)::

    PYTHONPATH=src python scripts/size_reading_over_draws.py finetune --preset ribosome --draw 4 --seeds 0,1,2

Both write ``benchmarks/results/<date>-size-reading-<what>.{md,json}`` (rows appended as they finish).
Figures: benchmarks/README.md, "Session 28".
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "src"))

from benchmarks.suite.profiles import PROFILES  # noqa: E402

from cryojoint import load_model  # noqa: E402
from cryojoint.config import default_config  # noqa: E402
from cryojoint.imaging import normalise  # noqa: E402
from cryojoint.metrics.picking import picking_metrics  # noqa: E402
from cryojoint.picking import measure_particle_diameter, median_neighbour_distance  # noqa: E402
from cryojoint.prediction import predict  # noqa: E402
from cryojoint.simulation import SimulationConfig, simulate  # noqa: E402
from cryojoint.size_reading import read_size_with_model  # noqa: E402
from cryojoint.training import train  # noqa: E402

#: The `standard` profile's split (benchmarks/suite/profiles.py): the first micrographs train, the rest test.
N_TRAIN, N_TEST, SIZE_PX = PROFILES["standard"].n_train, PROFILES["standard"].n_test, PROFILES["standard"].size_px


def draw(preset: str, seed: int, pixel_size: float | None, dose: str):
    changes = {} if pixel_size is None else {"pixel_size_angstrom": pixel_size}
    config = SimulationConfig.for_preset(preset, seed=seed, n_micrographs=N_TRAIN + N_TEST,
                                         size_px=(SIZE_PX, SIZE_PX), **changes)
    data = simulate(config=config)
    micrographs = data.micrographs[f"dose_{dose}"]
    return data, micrographs[:N_TRAIN], micrographs[N_TRAIN:]


def labelled_pairs(data, micrographs) -> list:
    pairs = [(m, data.labels.loc[data.labels["micrograph"] == m.name, ["x", "y"]].to_numpy(float))
             for m in micrographs]
    return [(m, xy) for m, xy in pairs if len(xy)]


def read(args: argparse.Namespace) -> Iterator[dict]:
    model = load_model("general")
    for seed in args.seeds:
        data, train_m, _ = draw(args.preset, seed, args.pixel_size, args.dose)
        pairs = labelled_pairs(data, train_m)
        try:
            blob = measure_particle_diameter([normalise(m.data) for m, _ in pairs], [xy for _, xy in pairs])
        except ValueError:  # training asks the user for the size here
            blob = None
        start = time.perf_counter()
        model_reading = read_size_with_model(model, pairs, blob.diameter_px, largest_px=median_neighbour_distance(
            [xy for _, xy in pairs])) if blob is not None and blob.read_at == "core" else None
        row = {"preset": args.preset, "dose": args.dose, "draw": seed, "labels": int(sum(len(xy) for _, xy in pairs)),
               "true_diameter_px": round(data.particle_diameter_px, 2),
               "blob_px": None if blob is None else round(blob.diameter_px, 2),
               "blob_read_at": "no reading" if blob is None else blob.read_at,
               "model_px": None if model_reading is None else round(model_reading.diameter_px, 2),
               "scan_seconds": round(time.perf_counter() - start, 1),
               "scanned": None if model_reading is None else [[round(d, 2), round(f, 4), round(s, 3)]
                                                              for d, f, s in model_reading.scanned]}
        print(json.dumps(row), flush=True)
        yield row


def finetune(args: argparse.Namespace) -> Iterator[dict]:
    data, train_m, test_m = draw(args.preset, args.draw, args.pixel_size, args.dose)
    pairs = labelled_pairs(data, train_m)
    blob = measure_particle_diameter([normalise(m.data) for m, _ in pairs], [xy for _, xy in pairs])
    labels = data.labels[data.labels["micrograph"].isin([m.name for m in train_m])]
    truth = data.truth[data.truth["micrograph"].isin([m.name for m in test_m])]
    for seed in args.seeds:
        for arm, diameter in (("reads the size", None), ("told the blob reading", blob.diameter_px)):
            config = default_config()
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed),
                                         data=dataclasses.replace(config.data, particle_diameter_px=diameter))
            out = args.work / f"{args.preset}-d{args.draw}-{'auto' if diameter is None else 'blob'}-s{seed}"
            start = time.perf_counter()
            train(train_m, labels, out, config, overwrite=True, progress=False)
            seconds = time.perf_counter() - start
            trained = load_model(out / "model.pt")
            predictions = predict(trained, test_m)
            candidates = pd.concat([p.candidates.assign(micrograph=m.name) for p, m in zip(predictions, test_m,
                                                                                           strict=True)])
            report = picking_metrics(candidates, truth, data.particle_diameter_px / 2,
                                     micrographs=[m.name for m in test_m]).overall
            row = {"preset": args.preset, "dose": args.dose, "draw": args.draw, "arm": arm, "seed": seed,
                   "true_diameter_px": round(data.particle_diameter_px, 2), "blob_px": round(blob.diameter_px, 2),
                   "trained_diameter_px": round(float(trained.particle_diameter_px * trained.downsample), 2),
                   "ap": round(float(report.average_precision), 4), "train_seconds": round(seconds, 1)}
            print(json.dumps(row), flush=True)
            yield row


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def write(rows: list[dict], what: str, out: Path, command: str) -> None:
    stem = out / f"{datetime.date.today().isoformat()}-size-reading-{what}"
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    lines = [f"# Particle size read by training: {what}", "", f"`{command}`", ""]
    if what.startswith("read"):
        lines += ["| preset | dose | draw | labels | true (px) | blob reading (px) | read at | general model (px) | "
                  "scan (s) |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
        lines += [f"| {r['preset']} | {r['dose']} | {r['draw']} | {r['labels']} | {r['true_diameter_px']:.1f} | "
                  f"{'–' if r['blob_px'] is None else format(r['blob_px'], '.1f')} | {r['blob_read_at']} | "
                  f"{'–' if r['model_px'] is None else format(r['model_px'], '.1f')} | {r['scan_seconds']} |"
                  for r in rows]
    else:
        lines += ["| arm | diameter trained at (px) | AP per seed | mean ± sd | train s |", "|---|---|---|---|---|"]
        for arm in dict.fromkeys(r["arm"] for r in rows):
            mine = [r for r in rows if r["arm"] == arm]
            lines.append(f"| {arm} | {', '.join(format(r['trained_diameter_px'], '.1f') for r in mine)} | "
                         f"{' / '.join(format(r['ap'], '.3f') for r in mine)} | {spread([r['ap'] for r in mine])} | "
                         f"{' / '.join(format(r['train_seconds'], '.0f') for r in mine)} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("read", "finetune"):
        p = sub.add_parser(name)
        p.add_argument("--preset", default="ribosome")
        p.add_argument("--pixel-size", type=float, default=None, help="Å/px (default: the preset's)")
        p.add_argument("--dose", default="010")
        p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
        p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
        p.add_argument("--tag", default="", help="suffix of the table's name")
    sub.choices["finetune"].add_argument("--draw", type=int, required=True)
    sub.choices["finetune"].add_argument("--work", type=Path, default=Path("/tmp/size-reading-finetune"))
    args = parser.parse_args()
    rows: list[dict] = []
    for row in read(args) if args.what == "read" else finetune(args):
        rows.append(row)
        write(rows, args.what + (f"-{args.tag}" if args.tag else ""), args.out, "python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
