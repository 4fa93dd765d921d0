"""Weight-space interpolation of a fine-tuned model back toward the general model it started from (WiSE-FT).

The issue "A pretrained general model" asks 600 fine-tuning steps to beat the from-scratch model by 0.05 AP. On
`second` (small particles) the test AP of fine-tuning peaks near step 100 and falls after (session 26); the
detector drifts from what the corpus taught it toward what the few partial labels say. Averaging the fine-tuned
weights with the starting ones (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models") is a known remedy
that costs no training. This takes fine-tuned benchmark cells (``run/model.pt`` of a ``cryojoint_cell`` work
folder, e.g. from ``scripts/finetune_schedule_sweep.py``), writes for each mixing weight ``alpha`` a model whose
weights are ``(1 - alpha) * fine-tuned + alpha * general`` (the noise level stays the one measured on the user's
micrographs, as fine-tuning starts it; counters stay the fine-tuned ones), predicts the cell's test micrographs
with the benchmark's predict step and scores them with its scoring::

    PYTHONPATH=src python scripts/weight_interpolation_check.py OUT \
        --cell second:/work/s32/ft600/work/second-base-600-seed0 [--cell ...] --alphas 0,0.25,0.5

One JSON per (cell, alpha) in OUT, and ``summary.json`` with mean ± sd per profile and alpha.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.suite.cells import _candidates, _run_measured  # noqa: E402
from benchmarks.suite.datasets import ensure_dataset, load_dose_data  # noqa: E402
from benchmarks.suite.profiles import PROFILES  # noqa: E402
from benchmarks.suite.scoring import score_picks  # noqa: E402

from cryojoint.checkpoint import MODEL_KIND, SHIPPED_MODELS, read_model_file  # noqa: E402
from cryojoint.training import MODEL_NAME  # noqa: E402

#: The column each profile is scored at (the lowest dose; real data has one), as finetune_schedule_sweep.
COLUMNS = {"standard": "010", "real-bgal": "real", "aspire": "010", "second": "010"}
#: Weights measured on these micrographs, not learned from the corpus: never mixed.
KEPT_FROM_FINE_TUNED = ("noise_std_raw",)


def interpolated_state(fine_tuned: dict[str, torch.Tensor], general: dict[str, torch.Tensor],
                       alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * fine_tuned + alpha * general`` for every floating tensor both hold, else the fine-tuned one."""
    mixed = {}
    for key, value in fine_tuned.items():
        start = general.get(key)
        if (start is None or not value.is_floating_point() or start.shape != value.shape
                or key.split(".")[-1] in KEPT_FROM_FINE_TUNED):
            mixed[key] = value.clone()
        else:
            mixed[key] = (1.0 - alpha) * value + alpha * start.to(value.dtype)
    return mixed


def write_interpolated_model(fine_tuned_path: Path, alpha: float, out: Path) -> Path:
    payload = read_model_file(fine_tuned_path)
    start_name = payload["meta"].get("init_weights")
    if not start_name:
        raise SystemExit(f"{fine_tuned_path}: trained from scratch (no init_weights in its meta): nothing to mix with")
    # the meta names the shipped file ("general-v2.pt"), read by the name it ships under
    by_file = {file: name for name, file in SHIPPED_MODELS.items()}
    general = read_model_file(by_file.get(start_name, start_name))
    mixed = {**payload, "kind": MODEL_KIND,
             "state_dict": interpolated_state(payload["state_dict"], general["state_dict"], alpha),
             "meta": {**payload["meta"], "interpolated_toward": start_name, "interpolation_alpha": alpha}}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(mixed, out / MODEL_NAME)
    return out / MODEL_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cell", action="append", required=True, help="PROFILE:WORK_DIR of a fine-tuned cell")
    parser.add_argument("--alphas", default="0,0.25,0.5")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "benchmarks" / ".cache")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    alphas = [float(a) for a in args.alphas.split(",")]
    data_by_profile = {}
    results: dict[str, dict[str, list[float]]] = {}
    for cell in args.cell:
        profile_name, work = cell.split(":", 1)
        work_dir = Path(work)
        if profile_name not in data_by_profile:
            profile = PROFILES[profile_name]
            data_by_profile[profile_name] = load_dose_data(
                ensure_dataset(profile.structures[0], profile, args.cache, print), COLUMNS[profile_name], profile)
        data = data_by_profile[profile_name]
        for alpha in alphas:
            tag = f"{profile_name}-{work_dir.name}-a{alpha:g}"
            result_path = args.out / f"{tag}.json"
            if not result_path.exists():
                cell_work = args.out / "work" / tag
                model = write_interpolated_model(work_dir / "run" / MODEL_NAME, alpha, cell_work / "run")
                predicted = _run_measured("predict", {"model_path": str(model),
                                                      "test_mrcs": [str(p) for p in data.test_mrcs],
                                                      "pred_dir": str(cell_work / "pred")}, cell_work, print)
                picking = score_picks(data, _candidates(cell_work / "pred", data, "the detector"),
                                      predicted.get("threshold"))
                result_path.write_text(json.dumps({"profile": profile_name, "cell": str(work_dir), "alpha": alpha,
                                                   "ap": picking["average_precision"], "best_f1": picking["best_f1"],
                                                   "f1_at_cutoff": picking.get("f1_at_own")}, indent=1))
            record = json.loads(result_path.read_text())
            print(f"{tag}: AP {record['ap']:.3f}, best F1 {record['best_f1']:.3f}", flush=True)
    # Over every cell measured into OUT so far (earlier invocations too), per profile and alpha.
    for path in sorted(args.out.glob("*.json")):
        if path.name == "summary.json":
            continue
        record = json.loads(path.read_text())
        profile_name = record.get("profile") or path.name.split("-")[0]
        results.setdefault(f"{profile_name} alpha={record['alpha']:g}", {"ap": []})["ap"].append(record["ap"])
    summary = {key: {"ap": value["ap"], "mean": statistics.mean(value["ap"]),
                     "sd": statistics.stdev(value["ap"]) if len(value["ap"]) > 1 else 0.0}
               for key, value in sorted(results.items())}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    for key, value in summary.items():
        print(f"{key}: AP {value['mean']:.3f} ± {value['sd']:.3f} over {len(value['ap'])}")


if __name__ == "__main__":
    main()
