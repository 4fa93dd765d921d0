"""How many picks the automatic cut-off keeps: the label density vs the labelled picks' scores, on benchmark data.

::

    # one training run: K labels kept per training micrograph (0 = all the benchmark's partial labels)
    python scripts/cutoff_count_check.py run benchmarks/.cache/data/ribosome-1024px-12mic-seed0-a89a90a1 010 2 0 \
        600 runs/cutoff/std-k2-s0
    # the table over finished runs (markdown + JSON beside it)
    python scripts/cutoff_count_check.py table benchmarks/results/<date>-cutoff-count.md runs/cutoff/*

``run`` trains the default (fine-tuning the shipped model, ``--steps`` as given) on the dataset's training
micrographs with the labels kept, predicts its training and test micrographs, and keeps both folders. ``table``
scores, on the test micrographs (truth, true radius, as the benchmark scores), F1 at the count each rule gives:
*density* keeps ``expected_particles_prior`` per micrograph (the label density of training's prior, the cut-off
before session 24), *scores* the count the model file holds (measured after training from where the labelled
picks rank among the candidates on the training micrographs), beside the best F1 any cut-off reaches and AP.
The datasets are the benchmark's cached ones (``benchmarks/run.py`` builds them; real-bgal:
``python -m benchmarks.real_bgal``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.suite.datasets import load_dose_data  # noqa: E402
from benchmarks.suite.profiles import PROFILES  # noqa: E402
from benchmarks.suite.scoring import score_picks  # noqa: E402

from cryojoint.checkpoint import read_model_file  # noqa: E402
from cryojoint.config import default_config  # noqa: E402
from cryojoint.io.coords import read_coordinates, write_coordinates  # noqa: E402
from cryojoint.prediction import predict_files  # noqa: E402
from cryojoint.training import train  # noqa: E402

#: Labels kept per micrograph are drawn from this seed plus the training seed (never the benchmark's streams).
LABEL_DRAW_SEED = 1000


def _dose_data(data_dir: Path, dose: str):  # noqa: ANN202 - benchmarks' DoseData
    profile = PROFILES["real-bgal"] if data_dir.name.startswith("real-bgal") else None
    return load_dose_data(data_dir, dose, profile)


def run(data_dir: Path, dose: str, labels_per_micrograph: int, seed: int, steps: int, out: Path) -> None:
    data = _dose_data(data_dir, dose)
    image_dir = data.image_dir or data_dir / f"dose_{dose}"
    labels = data.train_labels
    if labels_per_micrograph > 0:
        rng = np.random.default_rng(LABEL_DRAW_SEED + seed)
        kept = [group.iloc[np.sort(rng.choice(len(group), min(labels_per_micrograph, len(group)), replace=False))]
                for _, group in labels.groupby("micrograph")]
        labels = pd.concat(kept, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    write_coordinates(labels[["micrograph", "x", "y"]], out / "labels.star", overwrite=True)
    config = default_config()
    config.train.seed, config.train.steps = seed, steps
    mrcs = {which: [str(image_dir / f"{name}.mrc") for name in names]
            for which, names in (("train", data.train_names), ("test", data.test_names))}
    result = train(mrcs["train"], out / "labels.star", out / "run", config, overwrite=True, progress=False)
    for which, paths in mrcs.items():
        summary = predict_files(result.model_path, paths, out / f"pred_{which}", formats=("star",), overwrite=True,
                                progress=False, outputs=("picks",))
        if summary.failures:
            raise RuntimeError(f"prediction failed: {summary.failures}")
    meta = read_model_file(result.model_path)["meta"]
    record = {"dataset": data_dir.name, "dose": dose, "labels_per_micrograph": labels_per_micrograph, "seed": seed,
              "steps": steps, "n_labels": len(labels), "train_seconds": result.seconds,
              "expected_particles": meta.get("expected_particles"),
              "expected_particles_prior": meta.get("expected_particles_prior"),
              "expected_particles_from": meta.get("expected_particles_from")}
    (out / "run.json").write_text(json.dumps(record, indent=1))


def _candidates(path: Path) -> pd.DataFrame:
    table = read_coordinates(path)
    table["micrograph"] = table["micrograph"].astype(str).str.replace(".mrc", "", regex=False)
    return table


def score_run(out: Path) -> dict:
    record = json.loads((out / "run.json").read_text())
    data = _dose_data(REPO_ROOT / "benchmarks" / ".cache" / "data" / record["dataset"], record["dose"])
    candidates = _candidates(out / "pred_test" / "candidates.star")
    ranked = np.sort(candidates["score"].to_numpy())[::-1]
    n_test = len(data.test_names)

    def f1_keeping(per_micrograph: float) -> float:
        keep = min(max(int(round(per_micrograph * n_test)), 1), len(ranked))
        return score_picks(data, candidates, float(ranked[keep - 1]))["f1_at_own"]

    sweep = score_picks(data, candidates, None)
    return {**record, "true_per_micrograph": len(data.test_truth) / n_test,
            "average_precision": sweep["average_precision"], "best_f1": sweep["best_f1"],
            "f1_density": f1_keeping(record["expected_particles_prior"]),
            "f1_scores": f1_keeping(record["expected_particles"])}


def table(md_path: Path, outs: list[Path]) -> None:
    rows = [score_run(out) for out in outs if (out / "run.json").is_file()]
    frame = pd.DataFrame(rows)
    lines = ["| data | labels / micrograph | steps | seed | true / mic | density count | F1 | scores count | F1 | "
             "best F1 | AP |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        kept = "all" if row["labels_per_micrograph"] == 0 else row["labels_per_micrograph"]
        lines.append(f"| {row['dataset']} | {kept} | {row['steps']} | {row['seed']} | "
                     f"{row['true_per_micrograph']:.0f} | {row['expected_particles_prior']:.0f} | "
                     f"{row['f1_density']:.3f} | {row['expected_particles']:.0f} | {row['f1_scores']:.3f} | "
                     f"{row['best_f1']:.3f} | {row['average_precision']:.3f} |")
    lines += ["", "Mean ± sd over seeds (F1 at the density count / at the scores count / best):", ""]
    for (dataset, kept, steps), group in frame.groupby(["dataset", "labels_per_micrograph", "steps"]):
        parts = [f"{group[c].mean():.3f} ± {group[c].std(ddof=1) if len(group) > 1 else 0:.3f}"
                 for c in ("f1_density", "f1_scores", "best_f1")]
        lines.append(f"- {dataset}, {'all' if kept == 0 else kept} labels / micrograph, {steps} steps, "
                     f"{len(group)} seed(s): {' / '.join(parts)}")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines) + "\n")
    md_path.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"] and len(argv) == 7:
        run(Path(argv[1]), argv[2], int(argv[3]), int(argv[4]), int(argv[5]), Path(argv[6]))
        return 0
    if argv[:1] == ["table"] and len(argv) >= 3:
        table(Path(argv[1]), [Path(a) for a in argv[2:]])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
