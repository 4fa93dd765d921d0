"""The first thing a new user runs: simulate -> train -> predict -> evaluate -> report, on CPU, in minutes."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cryojoint._atomic import atomic_path
from cryojoint.config import default_config
from cryojoint.errors import UserInputError

#: Demo size: small enough for a few CPU minutes, large enough that the picks mean something.
DEMO_TRAIN_MICROGRAPHS = 6
DEMO_TEST_MICROGRAPHS = 2
DEMO_SIZE_PX = 1024  # training cost does not grow with it (patches); enough particles get labelled
DEMO_STEPS = 600
DEMO_EVAL_EVERY = 100


@dataclass
class DemoResult:
    out_dir: Path
    report: Path
    seconds: float
    summary: dict[str, float]

    def __str__(self) -> str:
        figures = ", ".join(f"{k}={v:.3f}" for k, v in self.summary.items())
        return f"demo finished in {self.seconds / 60:.1f} min: {figures}\nreport: {self.report}"


def run_demo(out: str | Path, steps: int | None = None, dose: str = "dose_020", seed: int = 0,
             overwrite: bool = False, progress: bool = True) -> DemoResult:
    """Run the whole pipeline on simulated data into ``out`` and return where the report is."""
    from cryojoint.config import validate
    from cryojoint.evaluation import evaluate_files
    from cryojoint.prediction import predict_files
    from cryojoint.report import write_report
    from cryojoint.simulation import SimulationConfig, dose_key, simulate, write_dataset
    from cryojoint.training import train

    doses = [dose_key(f) for f in SimulationConfig().dose_fractions]
    if dose not in doses:  # checked before minutes of simulating, not after
        raise UserInputError(None, f"--dose must be one of {', '.join(doses)}")
    config = default_config()
    config.train.steps = DEMO_STEPS if steps is None else steps
    config.train.eval_every = max(min(DEMO_EVAL_EVERY, config.train.steps), 1)
    config.train.checkpoint_every = config.train.eval_every
    config.train.seed = seed
    validate(config, "--steps/--seed")
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserInputError(out_dir, "already exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(out_dir)
    started = time.perf_counter()
    data_dir, run_dir = out_dir / "data", out_dir / "run"
    n_total = DEMO_TRAIN_MICROGRAPHS + DEMO_TEST_MICROGRAPHS
    dataset = simulate(n_micrographs=n_total, size=DEMO_SIZE_PX, seed=seed)
    write_dataset(dataset, data_dir, overwrite=True)

    names = [m.name for m in dataset.micrographs[dose]]
    train_names, test_names = names[:DEMO_TRAIN_MICROGRAPHS], names[DEMO_TRAIN_MICROGRAPHS:]
    labels = dataset.labels[dataset.labels["micrograph"].isin(train_names)]
    train([data_dir / dose / f"{n}.mrc" for n in train_names], labels, run_dir, config, overwrite=True,
          progress=progress, command_line=f"cryojoint demo {out}")

    pred_dir = run_dir / "pred"
    prediction = predict_files(run_dir / "model.pt", [data_dir / dose / f"{n}.mrc" for n in test_names],
                               pred_dir, formats=("star", "box"), overwrite=True, progress=progress)
    truth = dataset.truth[dataset.truth["micrograph"].isin(test_names)]
    truth_path = run_dir / "test_truth.star"
    from cryojoint.io.coords import write_coordinates

    write_coordinates(truth, truth_path)
    # AP over every candidate peak; precision/recall/F1 at the cut-off the run chose, on the folder: it counts the
    # picks picks.star holds (the per-micrograph CSVs keep the scores predict compared).
    results = evaluate_files(picks=pred_dir, truth=truth_path, threshold=prediction.threshold,
                             match_radius=dataset.particle_diameter_px / 2, mask_dir=data_dir / "masks",
                             denoised_dir=pred_dir / "denoised", reference_dir=data_dir / "dose_100",
                             clean_dir=data_dir / "clean", json_path=run_dir / "evaluation.json")
    sources = {"data": str(data_dir.resolve()), "dose": dose, "truth": str(truth_path.resolve()),
               "reference": str((data_dir / "dose_100").resolve()), "clean": str((data_dir / "clean").resolve()),
               "masks": str((data_dir / "masks").resolve()), "test_micrographs": test_names}
    with atomic_path(run_dir / "sources.json") as tmp:
        tmp.write_text(json.dumps(sources, indent=2))
    report = write_report(run_dir, out_dir / "report.html")
    summary = {}
    picking = results.get("picking")
    if picking is not None:
        overall = picking.to_dict()["overall"]
        summary.update({k: float(overall[k]) for k in ("average_precision", "f1", "precision", "recall")
                        if k in overall})
    return DemoResult(out_dir, report, time.perf_counter() - started, summary)
