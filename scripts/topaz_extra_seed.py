"""One more training seed of Topaz's picker on a benchmark column, with the budget and count an earlier run gave it.

Topaz's picker costs ~1.5-2 h a seed on the 2-core box (``standard`` 10 %: 3,200-4,700 minibatches), so its seeds
were run one session at a time. ``run.py`` always recomputes seed 0 of a row it is asked for, which would double
that cost; this script runs only the seed asked for, through the benchmark's own cell (``topaz_picker_cell``: same
data, labels, radius, extraction and scoring), and hands Topaz the same prior count and minibatch budget as the
earlier run's cell for ``--budget-from-seed`` recorded (read from its committed JSON), so the seeds are alike::

    PYTHONPATH=src:. python scripts/topaz_extra_seed.py run standard 010 2 \
        --earlier benchmarks/results/2026-12-02-standard.json --budget-from-seed 1 --out runs/topaz-s2
    PYTHONPATH=src:. python scripts/topaz_extra_seed.py table standard 010 \
        --earlier benchmarks/results/2026-12-02-standard.json --new runs/topaz-s2/cell.json \
        --out benchmarks/results/<date>-topaz-standard-010-seeds.md

The table sets Topaz's seeds (earlier and new) beside the rows of cryojoint named with ``--ours`` (seed values read
from committed JSON files), each as mean ± sd.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "src"))

from benchmarks.suite.cells import (  # noqa: E402
    TOPAZ_SECONDS_PER_MINIBATCH_PLAN,
    code_version,
    replicate_id,
    split_replicate_id,
    topaz_picker_cell,
)
from benchmarks.suite.datasets import ensure_dataset, load_dose_data  # noqa: E402
from benchmarks.suite.profiles import PROFILES  # noqa: E402

ROW = "topaz-picker"
METRICS = ("average_precision", "best_f1", "f1_at_own")


def _cell_name(structure: str, dose: str, row: str, seed: int) -> str:
    return f"{structure}/{dose}/{replicate_id(row, seed)}"


def _earlier_cells(path: Path, structure: str, dose: str, row: str) -> dict[int, dict[str, Any]]:
    """Seed -> cell record of ``row`` in a committed benchmark JSON."""
    cells = json.loads(path.read_text())["cells"]
    prefix = f"{structure}/{dose}/"
    found = {}
    for name, record in cells.items():
        if not name.startswith(prefix):
            continue
        cell_row, seed = split_replicate_id(name[len(prefix):])
        if cell_row == row:
            found[seed] = record
    return {seed: record for seed, record in found.items() if record.get("status", "ok") == "ok"}


def run(profile_name: str, dose: str, seed: int, earlier: Path, budget_seed: int, out: Path,
        minibatches: int | None = None) -> None:
    profile = PROFILES[profile_name]
    structure = profile.structures[0]
    previous = _earlier_cells(earlier, structure, dose, ROW)
    copied_seed = budget_seed if minibatches is None else None
    if minibatches is None:
        if budget_seed not in previous:
            raise SystemExit(f"{earlier}: no finished {ROW} cell for seed {budget_seed} at {structure}/{dose}; "
                             "give --minibatches")
        settings = previous[budget_seed]["settings"]
        minibatches = settings["epochs"] * settings["minibatches_per_epoch"]
        expected = settings["expected_particles"]
    else:  # no Topaz cell to copy: the prior count cryojoint's default cell used, as the benchmark hands Topaz
        joint = _earlier_cells(earlier, structure, dose, "cryojoint-joint-default")
        if 0 not in joint:
            raise SystemExit(f"{earlier}: no finished cryojoint-joint-default cell at {structure}/{dose}")
        expected = joint[0]["settings"]["estimated_expected_particles"]
    # topaz_picker_cell reads the prior count and the budget from the joint model's record; this stands in for it
    # (its epochs come back exactly: budget = seconds / plan rate).
    joint_record = {"settings": {"estimated_expected_particles": expected},
                    "cost": {"train_seconds": minibatches * TOPAZ_SECONDS_PER_MINIBATCH_PLAN}}
    data = load_dose_data(ensure_dataset(structure, profile, REPO_ROOT / "benchmarks" / ".cache", print), dose,
                          profile)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record = topaz_picker_cell(data, profile, out / "work", joint_record, print, seed=seed)
    record["cell_seconds"] = time.perf_counter() - started
    record["code"] = code_version()
    record["dataset"] = data.data_dir.name
    record["budget_from"] = {"file": str(earlier),
                             "seed": copied_seed,
                             "minibatches": minibatches, "expected_particles": expected}
    cell = out / "cell.json"
    cell.with_suffix(".tmp").write_text(json.dumps(record, indent=1, default=str))
    cell.with_suffix(".tmp").replace(cell)
    print(f"{_cell_name(structure, dose, ROW, seed)}: AP {record['picking']['average_precision']:.3f} "
          f"in {record['cell_seconds']:.0f} s -> {cell}")


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)} seeds)"


def table(profile_name: str, dose: str, earlier: Path, new: list[Path], ours: list[str], out_md: Path,
          notes: list[str]) -> None:
    structure = PROFILES[profile_name].structures[0]
    topaz = {seed: record for seed, record in _earlier_cells(earlier, structure, dose, ROW).items()}
    for path in new:
        record = json.loads(path.read_text())
        topaz[int(record["settings"]["seed"])] = record
    rows = [("Topaz resnet8 (from scratch)", topaz, f"{earlier.name} + {', '.join(p.name for p in new)}")]
    for item in ours:
        label, row, source = item.split("=", 2)
        rows.append((label, _earlier_cells(Path(source), structure, dose, row), Path(source).name))
    column = f"{int(dose)} % dose" if dose.isdigit() else dose
    lines = [f"# Topaz's picker over training seeds — `{profile_name}` {column}", "",
             "`scripts/topaz_extra_seed.py`: Topaz's seeds run through the benchmark's own cell on the same data "
             "(dataset `" + str(next(iter(topaz.values()))["dataset"]) + "`), with the prior count and minibatch "
             "budget of an earlier seed. Test micrographs, truth, match radius as the benchmark scores.", "",
             "| method | seeds | AP per seed | AP | best F1 | F1 at own cut-off | source |",
             "|---|---|---|---|---|---|---|"]
    summary: dict[str, Any] = {}
    for label, cells, source in rows:
        seeds = sorted(cells)
        per_seed = " / ".join(f"{cells[s]['picking']['average_precision']:.3f}" for s in seeds)
        stats = {m: [cells[s]["picking"][m] for s in seeds] for m in METRICS}
        lines.append(f"| {label} | {', '.join(map(str, seeds))} | {per_seed} | "
                     + " | ".join(_mean_sd(stats[m]) for m in METRICS) + f" | {source} |")
        summary[label] = {"seeds": seeds, **stats,
                          "minibatches": {s: cells[s].get("settings", {}).get("epochs", 0)
                                          * cells[s].get("settings", {}).get("minibatches_per_epoch", 0)
                                          for s in seeds}}
    lines += ["", *(f"- {note}" for note in notes), ""] if notes else [""]
    out_md.write_text("\n".join(lines))
    out_md.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="train and score one Topaz seed")
    one.add_argument("profile", choices=sorted(PROFILES))
    one.add_argument("dose", help="dose key, e.g. 010")
    one.add_argument("seed", type=int)
    one.add_argument("--earlier", type=Path, required=True, help="committed benchmark JSON with earlier Topaz seeds")
    one.add_argument("--budget-from-seed", type=int, default=0, help="the earlier seed whose count and budget to use")
    one.add_argument("--out", type=Path, required=True)
    one.add_argument("--minibatches", type=int, default=None,
                     help="Topaz's budget when the earlier run has no Topaz cell (prior count: its default cell's)")
    summary = sub.add_parser("table", help="Topaz's seeds beside ours, mean ± sd")
    summary.add_argument("profile", choices=sorted(PROFILES))
    summary.add_argument("dose")
    summary.add_argument("--earlier", type=Path, required=True)
    summary.add_argument("--new", type=Path, nargs="+", required=True, help="cell.json files written by `run`")
    summary.add_argument("--ours", nargs="*", default=[], metavar="LABEL=ROW_ID=JSON",
                         help="a cryojoint row's seeds from a committed benchmark JSON")
    summary.add_argument("--out", type=Path, required=True, help="markdown table (a .json beside it)")
    summary.add_argument("--note", action="append", default=[], help="a line under the table (repeatable)")
    args = parser.parse_args()
    if args.command == "run":
        run(args.profile, args.dose, args.seed, args.earlier, args.budget_from_seed, args.out, args.minibatches)
    else:
        table(args.profile, args.dose, args.earlier, args.new, args.ours, args.out, args.note)


if __name__ == "__main__":
    main()
