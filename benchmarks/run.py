"""One command, cryojoint vs Topaz and the no-learning floors: same simulated data, same run, same machine.

::

    python benchmarks/run.py --profile quick                 # CI-sized (Topaz skipped if its venv is absent)
    python benchmarks/run.py --profile standard              # many hours on 2 CPU cores: three doses, seeds 0,1,2
    python benchmarks/run.py --profile full --doses 010      # 1024², both structures, every mode and preset
    python benchmarks/run.py --profile standard --seeds 0    # one training seed only (the quicker, noisier run)
    python benchmarks/run.py --profile quick --seeds 1,2 --only topaz-picker  # seeds 0,1,2 of one row

Every trained row (cryojoint modes, Topaz's picker) is trained with each of the profile's seeds (``standard`` and
``full``: 0, 1, 2; ``tiny`` and ``quick``: 0) or the ``--seeds`` given (seed 0 always among them); the main
tables show the mean over the seeds that finished, the "Spread over training seeds" section mean ± sd.

Every (structure, dose, method) cell is independent and cached under ``benchmarks/.cache/<profile>/cells``:
a failure becomes "failed: reason" in the tables and the run goes on; a rerun skips finished cells (unless
``--force``). The tables are rewritten after every cell, so a long run has partial results at any time:
``benchmarks/results/<date>-<profile>.md`` and ``.json``, plus ``<date>-<profile>/benchmark.json`` and its
``report.html`` (via :func:`cryojoint.report.write_report`). See ``benchmarks/README.md`` for what each number
means and how each peer is run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make ``benchmarks.suite`` and ``benchmarks.peers`` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.suite.cells import (  # noqa: E402
    DENOISING_METHODS,
    PICKING_METHODS,
    CellFailed,
    MethodSpec,
    _cell_key,
    code_version,
    cryojoint_cell,
    method_specs,
    seed_replicates,
    shipped_model_sha256,
    split_replicate_id,
    starting_model,
)
from benchmarks.suite.datasets import DoseData, _dataset_key, _map_intensities, ensure_dataset, load_dose_data  # noqa: E402
from benchmarks.suite.profiles import (  # noqa: E402
    DOSE_KEYS,
    PROFILES,
    REAL_DOSE,
    TRAIN_SEED,
    CryojointMethod,
    Profile,
    resolve_seeds,
)
from benchmarks.suite.render import build_tables, cost_lines, spread_lines, write_outputs  # noqa: E402
from benchmarks.suite.scoring import (  # noqa: E402
    INDEPENDENT_PSNR_KEY,
    refresh_denoising_scores,
    score_denoised,
    score_picks,
)

DEFAULT_CACHE = REPO_ROOT / "benchmarks" / ".cache"
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results"


def _run_order(profile: Profile, specs: Sequence[MethodSpec],
               doses: Sequence[str]) -> list[tuple[str, str, MethodSpec]]:
    """Cheap floors first; then per dose our joint model followed by Topaz; then, dose by dose from the lowest
    (where the paper's claims are strongest), the other modes of the default preset; the paper preset; seed
    replicates last (seed by seed, so a stopped run has whole replicates of the lowest dose first)."""
    within_tier = {"cryojoint-joint-default": 0, "topaz-picker": 1, "topaz-denoise": 2}

    def phase(tier: int) -> int:
        return 0 if tier <= 1 else (1 if tier <= 3 else 2)

    cells = [(s, d, spec) for s in profile.structures for d in doses for spec in specs]
    return sorted(cells, key=lambda c: (3 if c[2].is_replicate else phase(c[2].tier), c[2].seed,
                                        profile.structures.index(c[0]), doses.index(c[1]), c[2].tier,
                                        within_tier.get(c[2].row_id, 3)))


def machine_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
    try:
        from cryojoint import __version__

        facts["cryojoint"] = __version__
    except ImportError:
        pass
    try:
        from benchmarks.peers.topaz import installed_versions

        facts["topaz_env"] = installed_versions()
    except Exception:  # noqa: BLE001 - facts are best effort
        pass
    return facts


def run_benchmark(
    profile_name: str = "quick",
    out_dir: Path = DEFAULT_RESULTS,
    cache_dir: Path = DEFAULT_CACHE,
    skip_topaz: bool = False,
    doses: Sequence[str] | None = None,
    force: bool = False,
    write_html: bool = True,
    log: Callable[[str], None] | None = None,
    seeds: Sequence[int] | None = None,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a benchmark profile and write its tables; returns the output paths and the cells.

    Parameters
    ----------
    profile_name
        A key of :data:`PROFILES`.
    out_dir, cache_dir
        Where the tables go, and where datasets, model runs and finished cells are kept between runs.
    skip_topaz
        Leave Topaz out (``quick`` and ``tiny`` also leave it out when its venv is absent; never installed).
    doses
        Dose keys ("010", "020", "060") whose cells are computed; default: the profile's. The tables also show
        the profile's other doses when the cache holds cells for them.
    force
        Recompute finished cells.
    seeds
        Training seeds of every trained row (cryojoint modes, Topaz's picker) at the doses computed, in place of
        the profile's ``seeds`` (``None`` or empty: the profile's). Seed ``TRAIN_SEED`` is always among them
        (added when absent) and is computed first; the others run after every seed-0 cell. So ``[0]`` is a
        single-seed run and ``[1, 2]`` is seeds 0, 1, 2. Replicates already cached are shown whatever is asked.
        Trained rows show the mean over their finished seeds; a "Spread over training seeds" section gives
        mean ± sample sd.
    only
        Row ids (as in the cache's file names, e.g. ``cryojoint-joint-default``, ``topaz-picker``) whose cells
        are computed, replicates included; other rows are shown from the cache but not run.
    """
    log = log or (lambda text: print(text, flush=True))
    profile = PROFILES[profile_name]
    doses = tuple(doses or profile.doses)
    unknown = [d for d in doses if d not in profile.doses]
    if unknown:
        raise SystemExit(f"unknown dose {unknown[0]!r} for profile {profile.name}; choose from "
                         f"{', '.join(profile.doses)}")
    run_seeds = resolve_seeds(profile, seeds)
    from benchmarks.peers.topaz import topaz_env_installed

    if not skip_topaz and profile.name in ("quick", "tiny") and not topaz_env_installed():
        log("Topaz venv absent: skipping Topaz (the quick profiles never install it)")
        skip_topaz = True
    work_root = Path(cache_dir) / profile.name
    cells_dir = work_root / "cells"
    specs = [s for s in method_specs(profile) if not (skip_topaz and s.needs_topaz)]
    # Replicates already in the cache stay in the tables when a later run does not ask for their seeds.
    cached_seeds = {split_replicate_id(path.stem)[1] for path in cells_dir.glob("*/*/*.json")}
    specs += seed_replicates(specs, sorted({*run_seeds, *cached_seeds}))
    if only is not None:
        known = sorted({s.row_id for s in specs})
        unknown_rows = [row for row in only if row not in known]
        if unknown_rows:
            raise SystemExit(f"unknown row {unknown_rows[0]!r} in --only; choose from {', '.join(known)}")
    today = dt.date.today().isoformat()
    stem = f"{today}-{profile.name}"
    run_facts: dict[str, Any] = {"date": today, "started": dt.datetime.now().isoformat(timespec="seconds"),
                                 "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) or "run_benchmark()",
                                 "machine": machine_facts(), "skip_topaz": skip_topaz, "seeds": list(run_seeds),
                                 "doses": {}}
    data_dirs = {s: ensure_dataset(s, profile, Path(cache_dir), log) for s in profile.structures}
    cells: dict[str, dict[str, Any]] = {}
    stale: list[str] = []
    stale_model: list[str] = []
    for structure in profile.structures:
        for dose in profile.doses:  # every dose: the tables show cached cells of doses not computed now
            for spec in specs:
                path = cells_dir / structure / dose / f"{spec.method_id}.json"
                if path.exists() and not force:
                    cell = json.loads(path.read_text())
                    model = starting_model(cell)
                    # A cell computed on other data (the simulator changed) is recomputed, never shown ...
                    if cell.get("dataset", data_dirs[structure].name) != data_dirs[structure].name:
                        stale.append(f"{structure}/{dose}/{spec.method_id}")
                    # ... and so is one made from another version of a shipped model than this checkout's
                    elif model is not None and cell.get("starting_model_sha256") != shipped_model_sha256(model):
                        stale_model.append(f"{structure}/{dose}/{spec.method_id}")
                    elif cell.get("status") == "ok":
                        cells[_cell_key(structure, dose, spec.method_id)] = cell
    if stale:
        log(f"{len(stale)} cached cells were computed on other data and are recomputed (e.g. {stale[0]})")
    if stale_model:
        log(f"{len(stale_model)} cached cells started from another version of a shipped model and are recomputed "
            f"(e.g. {stale_model[0]})")
    dose_data = {(s, d): load_dose_data(data_dirs[s], d, profile) for s in profile.structures for d in doses}
    for (s, d), data in dose_data.items():
        facts: dict[str, Any] = {"true_diameter_px": data.true_diameter_px, "n_labels": len(data.train_labels),
                                 "true_particles_per_micrograph": len(data.test_truth) / len(data.test_names)}
        try:
            estimates = data.label_estimates()
            facts.update({"estimated_diameter_px": estimates["particle_diameter_px"],
                          "estimated_expected_particles": estimates["expected_particles"],
                          "polarity": estimates["polarity"]})
        except Exception as err:  # noqa: BLE001 - the cells that need it will fail with the reason
            facts["estimate_error"] = f"{type(err).__name__}: {err}"
        run_facts["doses"][f"{s}/{d}"] = facts

    for (s, d), data in dose_data.items():  # cached cells scored before a metric was added get it now
        for spec in specs:
            key = _cell_key(s, d, spec.method_id)
            if key in cells and refresh_denoising_scores(cells[key], data, work_root / "work" / s / d / spec.method_id):
                (cells_dir / s / d / f"{spec.method_id}.json").write_text(json.dumps(cells[key], indent=1, default=str))
                log(f"{key}: denoising scored again from its saved micrographs (new metric)")

    plan = [(s, d, spec) for s, d, spec in _run_order(profile, specs, doses)
            if (only is None or spec.row_id in only) and (not spec.is_replicate or spec.seed in run_seeds)]
    planned = {_cell_key(s, d, spec.method_id) for s, d, spec in plan}
    table_doses = tuple(d for d in profile.doses
                        if d in doses or any(key.split("/")[1] == d for key in cells))
    present = {key.rsplit("/", 1)[1] for key in (*planned, *cells)}  # method ids planned or cached
    shown_specs = [spec for spec in specs if not spec.is_replicate or spec.method_id in present]
    total = len({*planned, *cells, *(_cell_key(s, d, spec.method_id) for s in profile.structures
                                     for d in table_doses for spec in shown_specs if not spec.is_replicate)})

    def flush() -> dict[str, Path]:
        run_facts["machine"]["load_average_now"] = list(os.getloadavg())
        return write_outputs(profile, shown_specs, table_doses, cells, Path(out_dir), stem, run_facts, write_html,
                             total)

    paths = flush()
    for structure, dose, spec in plan:
        key = _cell_key(structure, dose, spec.method_id)
        if key in cells:
            continue
        work = work_root / "work" / structure / dose / spec.method_id
        joint = cells.get(_cell_key(structure, dose, "cryojoint-joint-default"))
        log(f"[{dt.datetime.now():%H:%M:%S}] {key} ...")
        started = time.perf_counter()
        code = code_version()  # before the cell: its subprocesses import the checkout as it is now
        try:
            record = spec.run(dose_data[(structure, dose)], profile, work, joint, log)
            record["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - one failing cell must not stop the benchmark
            record = {"status": "failed", "reason": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc()}
        record["cell_seconds"] = time.perf_counter() - started
        record["code"] = code
        record["dataset"] = data_dirs[structure].name
        model = starting_model(record)
        if model is not None:  # the weights' own hash: "general" names another file from version to version
            record["starting_model_sha256"] = shipped_model_sha256(model)
        cells[key] = record
        path = cells_dir / structure / dose / f"{spec.method_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, default=str))
        summary = record.get("reason") if record["status"] == "failed" else ", ".join(
            f"{k}={v:.3f}" for k, v in [("AP", (record.get("picking") or {}).get("average_precision")),
                                        ("bestF1", (record.get("picking") or {}).get("best_f1")),
                                        ("PSNRclean", (record.get("denoising") or {}).get("psnr_clean_outside_masks")),
                                        ("FRC", (record.get("denoising") or {}).get("frc_clean"))]
            if isinstance(v, (int, float)))
        log(f"[{dt.datetime.now():%H:%M:%S}] {key}: {record['status']} in {record['cell_seconds']:.0f} s  {summary}")
        paths = flush()
    run_facts["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    paths = flush()
    log(f"tables: {paths['markdown']}")
    return {"paths": paths, "cells": cells, "profile": profile, "specs": shown_specs, "doses": table_doses}


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python benchmarks/run.py --profile quick --skip-topaz")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None, help="default: quick")
    parser.add_argument("--quick", action="store_true", help="the CI-size run: same as --profile quick")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="folder for the tables")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="datasets, runs and finished cells")
    parser.add_argument("--skip-topaz", action="store_true", help="leave Topaz out")
    parser.add_argument("--doses", default=None, help="comma-separated dose keys, e.g. 010,020,060")
    parser.add_argument("--force", action="store_true", help="recompute finished cells")
    parser.add_argument("--no-html", action="store_true", help="do not render report.html")
    parser.add_argument("--seeds", default="", help="training seeds of every trained row, in place of the "
                        "profile's (standard, full: 0,1,2; tiny, quick: 0); seed 0 is always added, so '0' = one "
                        "seed and '1,2' = seeds 0,1,2. Tables show the mean over seeds and a mean ± sd section")
    parser.add_argument("--only", default=None, help="comma-separated row ids to compute, e.g. "
                        "cryojoint-joint-default,topaz-picker (others are shown from the cache)")
    args = parser.parse_args(argv)
    doses = [d.strip() for d in args.doses.split(",")] if args.doses else None
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give whole numbers separated by commas, e.g. 1,2")
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    if args.quick and args.profile not in (None, "quick"):
        parser.error(f"--quick and --profile {args.profile} name different profiles; give one")
    args.profile = args.profile or "quick"
    # `kill` (SIGTERM) then unwinds like Ctrl-C: subprocess.run kills the training child on the way out.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    run_benchmark(args.profile, args.out, args.cache, args.skip_topaz, doses, args.force, not args.no_html,
                  seeds=seeds or None, only=only)



#: The driver's own names, and those of :mod:`benchmarks.suite` that tests and scripts import from here.
__all__ = [
    "CellFailed", "CryojointMethod", "DEFAULT_CACHE", "DEFAULT_RESULTS", "DENOISING_METHODS", "DOSE_KEYS",
    "DoseData", "INDEPENDENT_PSNR_KEY", "MethodSpec", "PICKING_METHODS", "PROFILES", "Profile", "REAL_DOSE",
    "TRAIN_SEED", "_dataset_key", "_map_intensities", "_run_order", "build_tables", "code_version", "cost_lines",
    "cryojoint_cell", "ensure_dataset", "load_dose_data", "machine_facts", "main", "method_specs",
    "refresh_denoising_scores", "resolve_seeds", "run_benchmark", "score_denoised", "score_picks",
    "seed_replicates", "spread_lines", "write_outputs"]

if __name__ == "__main__":
    main()
