"""Zero-shot AP of a general model when the particle diameter it is told is wrong.

With no labels the general model knows the particle's size only from the user (or, when training, from the
diameter estimated on the labels, which at 10 % dose can read the particle's core alone: 34-37 px for the 52 px
ribosome on 4 of 6 dataset draws, scripts/blob_floor_over_draws.py). This runs the benchmark's zero-shot cell's
prediction (in memory, scored as the benchmark scores) at several diameters on one profile column::

    PYTHONPATH=src python scripts/zero_shot_diameter_sensitivity.py --column standard/010 \
        --diameters 34.5,40,47.9,52,60 [--model general]

Prints one JSON line per diameter (AP, best F1). Figures: benchmarks/README.md, "Session 20".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "src"))

from benchmarks.suite.datasets import ensure_dataset, load_dose_data  # noqa: E402
from benchmarks.suite.profiles import PROFILES  # noqa: E402
from benchmarks.suite.scoring import score_picks  # noqa: E402

from cryojoint import load_model  # noqa: E402
from cryojoint.prediction import predict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--column", default="standard/010", help="PROFILE/DOSE, as in the benchmark")
    parser.add_argument("--diameters", default="34.5,40,47.9,52,60", help="input pixels")
    parser.add_argument("--model", default="general")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "benchmarks" / ".cache")
    args = parser.parse_args()
    profile_name, dose = args.column.split("/")
    profile = PROFILES[profile_name]
    data = load_dose_data(ensure_dataset(profile.structures[0], profile, args.cache, print), dose, profile)
    model = load_model(args.model)
    images = data.test_images()
    print(json.dumps({"true_diameter_px": data.true_diameter_px,
                      "estimated_diameter_px": data.label_estimates()["particle_diameter_px"]}))
    for diameter in (float(d) for d in args.diameters.split(",")):
        predictions = predict(model, [images[name] for name in data.test_names], particle_diameter_px=diameter)
        candidates = pd.concat([prediction.candidates.assign(micrograph=name)
                                for name, prediction in zip(data.test_names, predictions, strict=True)],
                               ignore_index=True)
        scores = score_picks(data, candidates, None)
        print(json.dumps({"diameter_px": diameter, "ap": scores["average_precision"], "best_f1": scores["best_f1"]}),
              flush=True)


if __name__ == "__main__":
    main()
