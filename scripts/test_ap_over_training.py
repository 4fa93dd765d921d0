"""Test AP of one default training run at each of its validation passes (the averaged weights validation scores).

Does more fine-tuning help, and can the held-out partial labels tell when it stops helping? For one benchmark column
and training seed this trains the default (``train`` as the benchmark's ``cryojoint-joint-default`` row does),
keeps a copy of the weights each validation pass scores (``training._validate`` is wrapped: the weights it sees are
the averaged ones that ``model.pt`` would hold at that step), then scores each copy on the test micrographs as the
benchmark scores (truth, true radius)::

    PYTHONPATH=src python scripts/test_ap_over_training.py run second 010 0 runs/steps/second-s0 [data.KEY=VALUE ...]
    PYTHONPATH=src python scripts/test_ap_over_training.py table benchmarks/results/<date>-test-ap-over-training.md \
        runs/steps/*/passes.jsonl

Figures: benchmarks/README.md, "Session 26".
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "src"))

from benchmarks.suite.datasets import ensure_dataset, load_dose_data  # noqa: E402
from benchmarks.suite.profiles import PROFILES  # noqa: E402
from benchmarks.suite.scoring import score_picks  # noqa: E402

import cryojoint.training as training  # noqa: E402
from cryojoint.checkpoint import load_model  # noqa: E402
from cryojoint.config import default_config  # noqa: E402
from cryojoint.prediction import predict  # noqa: E402

#: The passes whose mean validation AP train's choice follows (train.validation_smoothing).
SMOOTHING = default_config().train.validation_smoothing


def run(profile_name: str, dose: str, seed: int, out: Path, overrides: list[str]) -> None:
    passes: list[tuple[dict, float | None]] = []
    validate = training._validate

    def keeping_the_weights(network, prepared, config, device, window_px=None):  # noqa: ANN001, ANN202
        measured = validate(network, prepared, config, device, window_px)
        passes.append((copy.deepcopy(network.state_dict()), measured.get("validation_ap")))
        return measured

    training._validate = keeping_the_weights
    profile = PROFILES[profile_name]
    data = load_dose_data(ensure_dataset(profile.structures[0], profile, REPO_ROOT / "benchmarks" / ".cache", print),
                          dose, profile)
    config = default_config()
    config.train.seed = seed
    for item in overrides:
        key, value = item.split("=")
        section, name = key.split(".")
        setattr(getattr(config, section), name, float(value))
    result = training.train(data.train_mrcs, data.train_labels_path, out, config, progress=False, overwrite=True)
    model = load_model(out / "model.pt")
    steps = [int(s) for s in result.history["step"]]
    with (out / "passes.jsonl").open("w") as handle:
        for step, (weights, validation_ap) in zip(steps, passes, strict=True):
            model.network.load_state_dict(weights)
            predictions = predict(model, data.test_mrcs)
            candidates = pd.concat([p.candidates.assign(micrograph=name)
                                    for p, name in zip(predictions, data.test_names, strict=True)], ignore_index=True)
            scores = score_picks(data, candidates, None)
            row = {"profile": profile_name, "dose": dose, "seed": seed, "overrides": overrides, "step": step,
                   "validation_ap": validation_ap, "test_ap": scores["average_precision"],
                   "test_best_f1": scores["best_f1"]}
            handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def table(out_md: Path, files: list[Path]) -> None:
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["profile"], row["dose"], " ".join(row["overrides"]), row["seed"])
        runs.setdefault(key, []).append(row)
    steps = sorted({row["step"] for row in rows})
    lines = ["# Test AP over one default training run (the weights each validation pass scores)", "",
             "`scripts/test_ap_over_training.py`: the default `train` (600 steps from `general`) on a benchmark "
             "column; at every validation pass (100 steps) the averaged weights are scored on the test micrographs "
             "(truth, true radius). Validation AP: the held-out partial labels (what `train.model_choice "
             "best-validation` follows).", "",
             "| column | overrides | seed | " + " | ".join(f"step {s}: test AP (val AP)" for s in steps) + " |",
             "|---|---|---:|" + "---:|" * len(steps)]
    for (profile, dose, overrides, seed), items in sorted(runs.items()):
        by_step = {r["step"]: r for r in items}
        cells = [f"{by_step[s]['test_ap']:.3f} ({by_step[s]['validation_ap']:.3f})" if s in by_step else "–"
                 for s in steps]
        lines.append(f"| {profile} {dose} | {overrides or '–'} | {seed} | " + " | ".join(cells) + " |")
    lines += ["", "What `best-validation` would hand over (the pass whose mean validation AP over the last "
              f"{SMOOTHING} passes is highest, as `train` chooses) against the last pass (the default, `last`):", "",
              "| column | overrides | seed | chosen step | test AP chosen | test AP last | best pass |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for (profile, dose, overrides, seed), items in sorted(runs.items()):
        items = sorted(items, key=lambda r: r["step"])
        smoothed = [statistics.mean(r["validation_ap"] for r in items[max(0, i + 1 - SMOOTHING):i + 1])
                    for i in range(len(items))]
        chosen = items[max(range(len(items)), key=lambda i: (smoothed[i], -i))]
        lines.append(f"| {profile} {dose} | {overrides or '–'} | {seed} | {chosen['step']} | {chosen['test_ap']:.3f} | "
                     f"{items[-1]['test_ap']:.3f} | {max(r['test_ap'] for r in items):.3f} |")
    out_md.write_text("\n".join(lines) + "\n")
    out_md.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(out_md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run", help="train one benchmark column and score each validation pass's weights")
    one.add_argument("profile", choices=sorted(PROFILES))
    one.add_argument("dose", help="dose key of the column, e.g. 010 (real data: real)")
    one.add_argument("seed", type=int, help="training seed")
    one.add_argument("out", type=Path, help="run folder (model, metrics.csv, passes.jsonl)")
    one.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE",
                     help="numeric config overrides, e.g. train.detector_learning_rate=1e-4")
    summary = commands.add_parser("table", help="markdown + JSON table of runs' passes.jsonl")
    summary.add_argument("out_md", type=Path)
    summary.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "run":
        run(args.profile, args.dose, args.seed, args.out, args.overrides)
    else:
        table(args.out_md, args.files)


if __name__ == "__main__":
    main()
