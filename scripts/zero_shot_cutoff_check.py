"""F1 at the general model's zero-shot cut-off: the quantile rule alone vs the probability-sum rule (the default).

With no labels the general model expects no particle count, so its automatic cut-off cannot keep "as many as
expected". The quantile rule keeps the top 25 % of the candidate peaks; the probability-sum rule keeps as many as
the candidates' probabilities sum to where that is more (``prediction.choose_threshold``). This predicts with the
shipped general model, told the true diameter, on benchmark columns and on freshly simulated sets of the presets
(seed 777: no benchmark draw, no pretraining seed), and scores every candidate against the truth at the true
radius: AP, best F1 over cut-offs, and F1 at each rule's cut-off::

    PYTHONPATH=src python scripts/zero_shot_cutoff_check.py [--columns standard:010,real-bgal:real,...]
        [--presets barrel:010,100,...] [--out benchmarks/results/<date>-zero-shot-cutoff]

Figures: benchmarks/README.md, "Session 27".
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "src"))

from cryojoint import load_model  # noqa: E402
from cryojoint.metrics.picking import picking_metrics  # noqa: E402
from cryojoint.picking import count_from_probabilities  # noqa: E402
from cryojoint.prediction import choose_threshold, predict  # noqa: E402

COLUMNS = "standard:010,standard:020,standard-v1:010,second:010,second:060,aspire:010,aspire:020,real-bgal:real"
PRESETS = "barrel:010,100,dengue-e:010,100,glua3-ntd:010,100,ribosome:060,100,ruvb:100"
#: Simulated sets of the presets: a seed no benchmark draw nor the pretraining corpus uses, 3 micrographs of 1024².
PRESET_SEED, PRESET_MICROGRAPHS, PRESET_SIZE_PX = 777, 3, 1024


def benchmark_column(column: str) -> tuple[list, pd.DataFrame, float]:
    from benchmarks.suite.datasets import ensure_dataset, load_dose_data
    from benchmarks.suite.profiles import PROFILES

    profile_name, dose = column.split(":")
    profile = PROFILES[profile_name]
    data = load_dose_data(ensure_dataset(profile.structures[0], profile, REPO_ROOT / "benchmarks" / ".cache", print),
                          dose, profile)
    return list(data.test_mrcs), data.test_truth, data.true_diameter_px


def preset_sets(item: str) -> list[tuple[str, list, pd.DataFrame, float]]:
    from cryojoint.simulation import SimulationConfig, simulate

    preset, doses = item.split(":")
    config = SimulationConfig.for_preset(preset, seed=PRESET_SEED, n_micrographs=PRESET_MICROGRAPHS,
                                         size_px=(PRESET_SIZE_PX, PRESET_SIZE_PX))
    data = simulate(config=config)
    return [(f"{preset} (seed {PRESET_SEED}):{dose}", data.micrographs[f"dose_{dose}"], data.truth,
             data.particle_diameter_px) for dose in doses.split(",")]


def score(name: str, model, micrographs: list, truth: pd.DataFrame, diameter_px: float) -> dict:
    predictions = predict(model, micrographs, particle_diameter_px=diameter_px)
    names = [p.name for p in predictions]
    candidates = pd.concat([p.candidates.assign(micrograph=p.name) for p in predictions], ignore_index=True)
    truth = truth[truth["micrograph"].isin(names)]
    radius = diameter_px / 2.0
    per_micrograph = [p.candidates["score"].to_numpy(float) for p in predictions]
    settings = _settings_of(model, diameter_px)
    rules = {"quantile": dataclasses.replace(settings, threshold_rule="quantile"), "probability-sum": settings}
    sweep = picking_metrics(candidates, truth, radius, threshold=None, micrographs=names).overall
    row = {"set": name, "micrographs": len(names), "true": int(len(truth)), "candidates": int(len(candidates)),
           "probability_sum": count_from_probabilities(candidates["score"].to_numpy(float)),
           "ap": float(sweep.average_precision), "best_f1": float(sweep.best_f1)}
    for rule, rule_settings in rules.items():
        assert rule_settings.automatic_rule == rule
        cut, _ = choose_threshold(per_micrograph, rule_settings)
        at = picking_metrics(candidates, truth, radius, threshold=cut, micrographs=names).overall
        row[f"{rule}_picks"], row[f"{rule}_f1"] = int(at.n_picks), float(at.f1)
    # what predict itself kept (the default rule) is the probability-sum row
    assert row["probability-sum_picks"] == int((candidates["score"] >= predictions.threshold).sum())
    print(json.dumps(row), flush=True)
    return row


def _settings_of(model, diameter_px: float):
    from cryojoint.inference import PickingSettings

    return PickingSettings.resolve(model, particle_diameter_px=diameter_px)


def write_tables(rows: list[dict], out: Path) -> None:
    lines = ["# The general model's zero-shot cut-off: quantile rule vs probability-sum (the default)", "",
             "`scripts/zero_shot_cutoff_check.py`: `predict general`, told the true diameter; every candidate scored "
             "against the truth at the true radius. F1 at each rule's cut-off (picks kept), best F1 over cut-offs, "
             "AP; the candidates' probabilities summed beside the true count.", "",
             "| set | micrographs | true | candidates | probabilities summed | quantile: picks / F1 | "
             "probability-sum: picks / F1 | best F1 | AP |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['micrographs']} | {r['true']} | {r['candidates']} | "
                     f"{r['probability_sum']:.0f} | {r['quantile_picks']} / {r['quantile_f1']:.3f} | "
                     f"{r['probability-sum_picks']} / {r['probability-sum_f1']:.3f} | {r['best_f1']:.3f} | "
                     f"{r['ap']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(out.with_suffix(".md"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", default=COLUMNS, help="benchmark profile:dose columns ('' for none)")
    parser.add_argument("--presets", default=PRESETS, help="preset:dose,dose,... items, comma-joined ('' for none)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" /
                        f"{datetime.date.today().isoformat()}-zero-shot-cutoff")
    args = parser.parse_args()
    model = load_model("general")
    rows = []
    for column in filter(None, args.columns.split(",")):
        rows.append(score(column, model, *benchmark_column(column)))
        write_tables(rows, args.out)
    items, current = [], ""
    for part in filter(None, args.presets.split(",")):  # "barrel:010,100,ruvb:100" -> barrel:010,100 / ruvb:100
        if ":" in part:
            if current:
                items.append(current)
            current = part
        else:
            current += f",{part}"
    if current:
        items.append(current)
    for item in items:
        for name, micrographs, truth, diameter in preset_sets(item):
            rows.append(score(name, model, micrographs, truth, diameter))
            write_tables(rows, args.out)


if __name__ == "__main__":
    main()
