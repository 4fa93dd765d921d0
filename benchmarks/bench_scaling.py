"""Scale-out throughput: prediction with Dask workers, training with torchrun processes.

Measures, on simulated 1024² micrographs and the ``default`` preset, through the real CLI:

* prediction micrographs/minute with ``--workers 1`` (in-process, all cores), with one worker on one
  thread (the cost a one-core cluster worker pays per micrograph), and with ``--workers 2`` (LocalCluster, one
  thread each); the parallel efficiency of 2 workers against 2 one-thread workers' ideal; a projection of the
  wall-clock for 10,000 micrographs on N one-core workers from the measured per-micrograph cost;
* training steps/s and patches/s with 1 process (all cores, and one thread) and 2 torchrun processes.

Writes ``benchmarks/results/scaling-<date>.json`` and ``.md`` and prints the table. Not a test: timings
depend on the machine and on whatever else runs on it, so the load average (``os.getloadavg()``) is recorded
before and after every measurement.

Example::

    python benchmarks/bench_scaling.py
    python benchmarks/bench_scaling.py --micrographs 4 --train-steps 20 --work /tmp/scaling
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from cryojoint.config import default_config
from cryojoint.simulation import simulate, write_dataset

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MICROGRAPHS = 8
MICROGRAPH_SIZE = 1024
DOSE = "dose_020"
SEED = 0
MODEL_TRAINING_STEPS = 20  # the model predicted with: speed does not depend on how well it is trained
TIMED_TRAINING_STEPS = 40
UNTIMED_FIRST_STEPS = 10  # warm-up (allocator, first DDP bucket rebuild) excluded from steps/s
PROJECTION_MICROGRAPHS = 10_000
PROJECTION_WORKERS = (1, 2, 8, 32, 128)
COMMAND_TIMEOUT_S = 3600


def load() -> list[float]:
    """1, 5 and 15 minute load averages (runnable processes; this machine has ``os.cpu_count()`` cores)."""
    return [round(v, 2) for v in os.getloadavg()]


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall-clock seconds of one command (which must succeed)."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed:\n{done.stderr[-3000:]}")
    return seconds, done


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cryojoint.cli", *args]


def torchrun(processes: int, *args: str) -> list[str]:
    """``torchrun --standalone`` (a free rendezvous port, so it can run beside other jobs)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "-m", "cryojoint.cli", *args]


def write_config(path: Path, steps: int, eval_every: int, validation: bool) -> Path:
    """The ``default`` preset in full (a config file replaces the preset's architecture), with this schedule."""
    config = default_config().to_dict()
    config["train"].update(steps=steps, eval_every=eval_every, checkpoint_every=steps)
    if not validation:
        config["data"]["validation_fraction"] = 0.0
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def training_rate(run_dir: Path, batch_size: int, processes: int) -> dict[str, float]:
    """Steps/s between the first and the last logged step (the ``seconds`` column of metrics.csv)."""
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    first, last = rows[0], rows[-1]
    steps = float(last["step"]) - float(first["step"])
    seconds = float(last["seconds"]) - float(first["seconds"])
    steps_per_s = steps / seconds
    return {"steps_per_s": steps_per_s, "patches_per_s": steps_per_s * batch_size * processes,
            "timed_steps": steps, "timed_seconds": seconds}


def measure_training(work: Path, mics: list[str], labels: Path, steps: int) -> list[dict[str, Any]]:
    config = write_config(work / "train_timing.yaml", steps, UNTIMED_FIRST_STEPS, validation=False)
    batch = default_config().data.batch_size
    cases = [("1 process, all cores", 1, {}), ("1 process, 1 thread", 1, {"OMP_NUM_THREADS": "1"}),
             ("2 torchrun processes, 1 thread each", 2, {"OMP_NUM_THREADS": "1"})]
    results = []
    for label, processes, env in cases:
        out = work / f"train_{processes}p_{env.get('OMP_NUM_THREADS', 'all')}"
        before = load()
        wall, _ = run(torchrun(processes, "train", *mics, "--labels", str(labels), "--out", str(out),
                               "--config", str(config), "--overwrite", "--device", "cpu"), env)
        results.append({"case": label, "processes": processes, "wall_s": wall, "load_before": before,
                        "load_after": load(), **training_rate(out, batch, processes)})
        print(f"train  {label:40s} {results[-1]['steps_per_s']:.2f} steps/s "
              f"{results[-1]['patches_per_s']:.1f} patches/s  load {before} -> {results[-1]['load_after']}")
    return results


def measure_prediction(work: Path, model: Path, mics: list[str]) -> list[dict[str, Any]]:
    cases = [("--workers 1 (in process, all cores)", ["--workers", "1"], {}),
             ("--workers 1, 1 thread", ["--workers", "1"], {"OMP_NUM_THREADS": "1"}),
             ("--workers 2 --scheduler local (1 thread each)", ["--workers", "2", "--scheduler", "local"], {})]
    results = []
    for index, (label, options, env) in enumerate(cases):
        out = work / f"predict_{index}"
        before = load()
        wall, _ = run(cli("predict", str(model), *mics, "--out", str(out), "--overwrite", *options), env)
        record = json.loads((out / "predict.json").read_text())
        per_micrograph = float(record["seconds_per_micrograph"])
        results.append({"case": label, "wall_s": wall, "seconds_per_micrograph": per_micrograph,
                        "micrographs_per_minute": 60.0 / per_micrograph,
                        "micrographs_per_minute_incl_startup": 60.0 * len(mics) / wall,
                        "load_before": before, "load_after": load()})
        print(f"predict {label:45s} {results[-1]['micrographs_per_minute']:.2f} mic/min "
              f"({per_micrograph:.1f} s/mic; {wall:.0f} s wall incl. start-up)  load {before} -> "
              f"{results[-1]['load_after']}")
    return results


def projection(one_core_seconds: float, efficiency: float) -> list[dict[str, float]]:
    """Hours for 10,000 micrographs on N one-core workers: measured cost / N, ideal and at the measured efficiency."""
    rows = []
    for workers in PROJECTION_WORKERS:
        ideal = PROJECTION_MICROGRAPHS * one_core_seconds / workers / 3600
        rows.append({"workers": workers, "hours_ideal": ideal,
                     "hours_at_measured_efficiency": ideal / efficiency if workers > 1 else ideal})
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Scaling benchmark {result['date']}", "",
             f"{result['machine']}; {result['micrographs']} simulated {result['size']}² micrographs "
             f"({result['dose']}), preset `default`. Load average at start {result['load_start']}, at end "
             f"{result['load_end']} (1/5/15 min) on {result['cores']} cores: other jobs shared the machine.", "",
             "## Prediction", "", "| case | s/micrograph | micrographs/min | wall incl. start-up (s) | load before |",
             "|---|---|---|---|---|"]
    for r in result["prediction"]:
        lines.append(f"| {r['case']} | {r['seconds_per_micrograph']:.1f} | {r['micrographs_per_minute']:.2f} | "
                     f"{r['wall_s']:.0f} | {r['load_before'][0]} |")
    p = result["prediction_summary"]
    lines += ["", f"Speed-up of `--workers 2` over `--workers 1`: {p['speedup_workers2_vs_workers1']:.2f}x. "
              f"Parallel efficiency of 2 one-thread workers vs 2 x one one-thread worker: "
              f"{p['efficiency_2_workers']:.2f}.", "",
              f"Projection for {PROJECTION_MICROGRAPHS:,} micrographs on N one-core workers "
              f"({p['one_core_seconds_per_micrograph']:.1f} s per micrograph per core):", "",
              "| workers | hours (ideal) | hours (at measured efficiency) |", "|---|---|---|"]
    for r in result["projection"]:
        lines.append(f"| {r['workers']} | {r['hours_ideal']:.1f} | {r['hours_at_measured_efficiency']:.1f} |")
    lines += ["", "## Training", "", "| case | steps/s | patches/s | load before |", "|---|---|---|---|"]
    for r in result["training"]:
        lines.append(f"| {r['case']} | {r['steps_per_s']:.2f} | {r['patches_per_s']:.1f} | {r['load_before'][0]} |")
    t = result["training_summary"]
    lines += ["", f"2 processes vs 1 process on all cores: {t['patches_speedup_vs_all_cores']:.2f}x patches/s; "
              f"efficiency vs 2 x one one-thread process: {t['efficiency_2_processes']:.2f}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micrographs", type=int, default=MICROGRAPHS)
    parser.add_argument("--train-steps", type=int, default=TIMED_TRAINING_STEPS)
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        load_start = load()
        dataset = simulate(n_micrographs=args.micrographs, size=MICROGRAPH_SIZE, seed=SEED)
        write_dataset(dataset, work / "data", overwrite=True)
        mics = sorted(str(p) for p in (work / "data" / DOSE).glob("*.mrc"))
        labels = work / "data" / "labels.star"
        print(f"{len(mics)} micrographs, {len(dataset.labels)} labels; load {load_start}")

        model_config = write_config(work / "model.yaml", MODEL_TRAINING_STEPS, MODEL_TRAINING_STEPS, validation=True)
        run(cli("train", *mics, "--labels", str(labels), "--out", str(work / "model"), "--config",
                str(model_config), "--overwrite"))
        prediction = measure_prediction(work, work / "model" / "model.pt", mics)
        training = measure_training(work, mics, labels, args.train_steps)

    all_cores, one_thread, two_workers = prediction
    one_core = one_thread["seconds_per_micrograph"]
    efficiency = two_workers["micrographs_per_minute"] / (2 * one_thread["micrographs_per_minute"])
    train_all, train_one, train_two = training
    today = datetime.date.today().isoformat()
    result = {
        "date": today, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}", "cores": os.cpu_count(), "micrographs": len(mics),
        "size": MICROGRAPH_SIZE, "dose": DOSE, "load_start": load_start, "load_end": load(),
        "prediction": prediction, "training": training,
        "prediction_summary": {
            "speedup_workers2_vs_workers1": two_workers["micrographs_per_minute"]
            / all_cores["micrographs_per_minute"],
            "efficiency_2_workers": efficiency, "one_core_seconds_per_micrograph": one_core},
        "projection": projection(one_core, efficiency),
        "training_summary": {
            "patches_speedup_vs_all_cores": train_two["patches_per_s"] / train_all["patches_per_s"],
            "efficiency_2_processes": train_two["patches_per_s"] / (2 * train_one["patches_per_s"])},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"scaling-{today}.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (args.out / f"scaling-{today}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
