"""The outputs of a run, from its cells alone: markdown and JSON tables, the report's benchmark.json and HTML.

Rows are methods, columns (structure and) dose, as in the paper's Table 1; a trained row shows the mean over
its training seeds that finished and "Spread over training seeds" their mean ± sd. Nothing here computes or
scores a cell.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from benchmarks.suite.cells import DENOISING_METHODS, PICKING_METHODS, MethodSpec, _cell_key
from benchmarks.suite.profiles import TRAIN_SEED, Profile
from benchmarks.suite.scoring import INDEPENDENT_PSNR_KEY, LOWPASS_REFERENCE_ANGSTROM, _finite

#: Characters of a failure reason shown in a table cell (the JSON keeps all of it).
MAX_REASON_CHARS = 70


def _dose_label(structure: str, dose: str, profile: Profile) -> str:
    percent = f"{int(dose)}%" if dose.isdigit() else dose
    return percent if len(profile.structures) == 1 else f"{structure} {percent}"


def _cell_text(cell: dict[str, Any] | None, section: str, key: str, digits: int = 3) -> str:
    if cell is None:
        return "pending"
    if cell.get("status") == "failed":
        reason = str(cell.get("reason", "")).replace("|", "/").replace("\n", " ")
        return f"failed: {reason[:MAX_REASON_CHARS]}"
    part = cell.get(section)
    if not part or part.get(key) is None:
        return "n/a"
    value = part[key]
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _cell_number(cell: dict[str, Any] | None, section: str, key: str) -> float | None:
    if not cell or cell.get("status") != "ok" or not cell.get(section):
        return None
    return _finite(cell[section].get(key))


TABLES: tuple[tuple[str, str, str, str, int], ...] = (
    # (title, section, key, which methods: picking|denoising, digits)
    ("Picking: average precision (AP)", "picking", "average_precision", "picking", 3),
    ("Picking: best F1 over cut-offs", "picking", "best_f1", "picking", 3),
    ("Picking: F1 at the tool's own cut-off (cryojoint automatic; Topaz −6 logit)", "picking", "f1_at_own",
     "picking", 3),
    ("Picking: precision at the best-F1 cut-off", "picking", "precision_at_best", "picking", 3),
    ("Picking: recall at the best-F1 cut-off", "picking", "recall_at_best", "picking", 3),
    ("Picking: fraction of picks inside carbon/contamination/gold masks (at best-F1 cut-off)", "picking",
     "picks_in_mask_at_best", "picking", 3),
    ("Picking: recall of particles < 30 px from an edge (at best-F1 cut-off)", "picking", "edge_recall_at_best",
     "picking", 3),
    ("Denoising: PSNR vs full dose (dB)", "denoising", "psnr_full_dose", "denoising", 2),
    (f"Denoising: PSNR vs low-passed full dose ({LOWPASS_REFERENCE_ANGSTROM:g} Å) (dB)", "denoising",
     "psnr_lowpass_full_dose", "denoising", 2),
    ("Denoising: PSNR vs the rest of the exposure (full dose minus this dose: noise independent of the input) "
     "(dB)", "denoising", INDEPENDENT_PSNR_KEY, "denoising", 2),
    ("Denoising: PSNR vs clean, outside masks (dB)", "denoising", "psnr_clean_outside_masks", "denoising", 2),
    ("Denoising: FRC vs clean (mean over 0.015-0.25 cycles/px)", "denoising", "frc_clean", "denoising", 3),
)


def _applies(spec: MethodSpec, kind: str) -> bool:
    if spec.row_id.startswith("cryojoint-"):
        return not ((kind == "picking" and ("denoise-only" in spec.row_id or spec.row_id in DENOISING_METHODS))
                    or (kind == "denoising" and ("detect-only" in spec.row_id or "zero-shot" in spec.row_id)))
    return spec.row_id in (PICKING_METHODS if kind == "picking" else DENOISING_METHODS)


def table_seeds(specs: Sequence[MethodSpec]) -> tuple[int, ...]:
    """The training seeds in the tables (over the trained rows): the full set a trained row's mean is over."""
    return tuple(sorted({spec.seed for spec in specs if spec.trains})) or (TRAIN_SEED,)


def seed_groups(specs: Sequence[MethodSpec]) -> dict[str, list[MethodSpec]]:
    """Each row id with its specs in seed order: the main spec (seed ``TRAIN_SEED``) and its replicates."""
    groups: dict[str, list[MethodSpec]] = {}
    for spec in sorted(specs, key=lambda s: s.seed):
        groups.setdefault(spec.row_id, []).append(spec)
    return groups


def seed_summary(group: Sequence[MethodSpec], cells: Mapping[str, dict[str, Any]], structure: str, dose: str,
                 section: str, key: str) -> dict[str, Any]:
    """One row's figure in one (structure, dose) column over the training seeds that finished.

    ``per_seed`` maps each finished seed (as a string, as in the JSON) to its value; ``mean``, sample ``sd``
    (ddof 1; ``None`` below two seeds) and ``n`` summarise them (``mean`` is ``None`` when none finished).
    """
    per_seed: dict[str, float] = {}
    for spec in group:
        value = _cell_number(cells.get(_cell_key(structure, dose, spec.method_id)), section, key)
        if value is not None:
            per_seed[str(spec.seed)] = value
    values = list(per_seed.values())
    return {"per_seed": per_seed, "n": len(values), "mean": float(np.mean(values)) if values else None,
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def _mean_text(group: Sequence[MethodSpec], cells: Mapping[str, dict[str, Any]], structure: str, dose: str,
               section: str, key: str, digits: int, n_seeds: int) -> str:
    """A trained row's main-table cell: the mean over the seeds that finished, ``(n=k)`` when k < n_seeds; with
    no number yet, why not (the first cell present in seed order: failed, n/a), else "pending"."""
    summary = seed_summary(group, cells, structure, dose, section, key)
    if summary["n"]:
        text = f"{summary['mean']:.{digits}f}"
        return text if summary["n"] >= n_seeds else f"{text} (n={summary['n']})"
    present = [cell for spec in group if (cell := cells.get(_cell_key(structure, dose, spec.method_id)))]
    return _cell_text(present[0], section, key, digits) if present else "pending"


def _seeds_text(seeds: Sequence[int]) -> str:
    return ", ".join(str(seed) for seed in seeds)


def build_tables(profile: Profile, specs: Sequence[MethodSpec], doses: Sequence[str],
                 cells: Mapping[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Markdown lines and report tables (rows = methods, columns = doses, as in the paper's Table 1).

    A trained row (cryojoint modes, Topaz's picker) shows the mean over its training seeds that finished in that
    column, marked ``(n=k)`` when only k of the tables' seeds did; the report table holds the mean and its
    ``by_seed`` the per-seed values, mean, sd and n of each column. Other rows show their single value.
    """
    columns = [(s, d, _dose_label(s, d, profile)) for s in profile.structures for d in doses]
    header = "| method | " + " | ".join(c[2] for c in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    seeds = table_seeds(specs)
    groups = seed_groups(specs)
    if len(seeds) > 1:
        lines = [f"Trained rows (cryojoint, Topaz's picker): **mean over training seeds {_seeds_text(seeds)}**; "
                 "`(n=k)` marks a cell where only k of them have finished (pending or failed). Rows that do not "
                 "train (floors, raw input, pretrained Topaz-Denoise): one value. Per-seed values in the JSON, "
                 "mean ± sd under \"Spread over training seeds\".", ""]
        caption = (f"trained rows: mean over the training seeds that finished (of {_seeds_text(seeds)}; "
                   "n per cell in the markdown and JSON)")
    else:
        lines = [f"Trained rows: one training seed ({seeds[0]}); `--seeds 0,1,2` trains each again and the tables "
                 "then show the mean over seeds.", ""]
        caption = f"trained rows: training seed {seeds[0]}"
    report_tables: dict[str, Any] = {}
    for title, section, key, kind, digits in TABLES:
        if kind == "denoising" and not profile.has_denoising_truth:
            continue
        rows = [spec for spec in specs if _applies(spec, kind) and not spec.is_replicate]
        lines += [f"### {title}", "", header, rule]
        report_rows: dict[str, list[float | None]] = {}
        by_seed: dict[str, list[dict[str, Any]]] = {}
        for spec in rows:
            if spec.trains:
                group = groups[spec.row_id]
                summaries = [seed_summary(group, cells, s, d, section, key) for s, d, _ in columns]
                texts = [_mean_text(group, cells, s, d, section, key, digits, len(seeds)) for s, d, _ in columns]
                report_rows[spec.label] = [summary["mean"] for summary in summaries]
                by_seed[spec.label] = summaries
            else:
                texts = [_cell_text(cells.get(_cell_key(s, d, spec.method_id)), section, key, digits)
                         for s, d, _ in columns]
                report_rows[spec.label] = [_cell_number(cells.get(_cell_key(s, d, spec.method_id)), section, key)
                                           for s, d, _ in columns]
            lines.append(f"| {spec.label} | " + " | ".join(texts) + " |")
        lines.append("")
        report_tables[title] = {"columns": [c[2] for c in columns], "rows": report_rows,
                                "caption": f"{title}; {caption}", "by_seed": by_seed}
    return lines, report_tables


#: (title, section, key, digits) of the figures whose spread over training seeds is tabulated.
SPREAD_FIGURES: tuple[tuple[str, str, str, int], ...] = (
    ("AP", "picking", "average_precision", 3),
    ("best F1", "picking", "best_f1", 3),
    ("PSNR vs full dose (dB)", "denoising", "psnr_full_dose", 2),
    ("PSNR vs the rest of the exposure (dB)", "denoising", INDEPENDENT_PSNR_KEY, 2),
    ("FRC vs clean", "denoising", "frc_clean", 3),
)


def spread_lines(profile: Profile, specs: Sequence[MethodSpec], doses: Sequence[str],
                 cells: Mapping[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Mean ± sample standard deviation over the training seeds that finished, per row with replicates."""
    replicated = {row: group for row, group in seed_groups([s for s in specs if s.trains]).items()
                  if any(g.is_replicate for g in group)}
    if not replicated:
        return [], {}
    columns = [(s, d, _dose_label(s, d, profile)) for s in profile.structures for d in doses]
    lines = [f"Trained rows with training seeds {_seeds_text(table_seeds(specs))}, same data and budget (the main "
             "tables show the mean). Cells: mean ± sample sd (n seeds finished); a single value when only one "
             "finished.", ""]
    tables: dict[str, Any] = {}
    for title, section, key, digits in SPREAD_FIGURES:
        rows = {row: group for row, group in replicated.items()
                if _applies(group[0], "picking" if section == "picking" else "denoising")}
        if not rows:
            continue
        lines += [f"### {title} over seeds", "", "| method | " + " | ".join(c[2] for c in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        table_rows: dict[str, list[float | None]] = {}
        for group in rows.values():
            texts, means = [], []
            for s, d, _ in columns:
                summary = seed_summary(group, cells, s, d, section, key)
                means.append(summary["mean"])
                if not summary["n"]:
                    texts.append("pending")
                elif summary["n"] == 1:
                    texts.append(f"{summary['mean']:.{digits}f} (1)")
                else:
                    texts.append(f"{summary['mean']:.{digits}f} ± {summary['sd']:.{digits}f} ({summary['n']})")
            label = next(g.label for g in group if not g.is_replicate)
            lines.append(f"| {label} | " + " | ".join(texts) + " |")
            table_rows[label] = means
        lines.append("")
        tables[f"{title}, mean over seeds"] = {"columns": [c[2] for c in columns], "rows": table_rows,
                                               "caption": f"{title}: mean over training seeds"}
    return lines, tables


def _fmt(value: Any, digits: int = 1) -> str:
    number = _finite(value)
    return "-" if number is None else f"{number:.{digits}f}"


def cost_lines(profile: Profile, specs: Sequence[MethodSpec], doses: Sequence[str],
               cells: Mapping[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Training and inference cost per method and dose: wall-clock, steps, peak RSS."""
    lines = ["| method | dose | train s | steps (best) | early stop | train peak RSS MB | infer s/mic "
             "(steady / incl. start-up) | infer peak RSS MB | training curve |",
             "|---|---|---:|---|---|---:|---|---:|---|"]
    report_rows: dict[str, dict[str, Any]] = {}
    for s in profile.structures:
        for d in doses:
            for spec in specs:
                cell = cells.get(_cell_key(s, d, spec.method_id))
                if not cell or cell.get("status") != "ok":
                    continue
                cost = cell.get("cost") or {}
                if not cost:
                    continue
                curve = cell.get("curve") or []
                if spec.row_id == "topaz-picker":
                    auprcs = ", ".join(_fmt(r.get("test_auprc"), 3) for r in curve)
                    curve_text = f"Topaz-printed pixel AUPRC on 1 test mic/epoch: {auprcs}"
                elif curve:
                    curve_text = "val AP: " + ", ".join(f"{int(r['step'])}:{_fmt(r.get('validation_ap'), 2)}"
                                                        for r in curve if r.get("step") is not None)
                else:
                    curve_text = ""
                steps = cost.get("steps_done")
                steps_text = "-" if steps is None else f"{steps} ({cost.get('best_step') or '-'})"
                label = _dose_label(s, d, profile)
                lines.append(
                    f"| {spec.label} | {label} | {_fmt(cost.get('train_seconds'), 0)} | {steps_text} | "
                    f"{cost.get('stopped_early', '-')} | {_fmt(cost.get('train_peak_rss_mb'), 0)} | "
                    f"{_fmt(cost.get('infer_seconds_per_micrograph'), 2)} / "
                    f"{_fmt(cost.get('infer_seconds_per_micrograph_with_startup'), 2)} | "
                    f"{_fmt(cost.get('infer_peak_rss_mb'), 0)} | {curve_text} |")
                report_rows[f"{spec.label} @ {label}"] = {
                    "train s": _finite(cost.get("train_seconds")), "steps": steps,
                    "train peak RSS MB": _finite(cost.get("train_peak_rss_mb")),
                    "infer s/micrograph": _finite(cost.get("infer_seconds_per_micrograph")),
                    "infer peak RSS MB": _finite(cost.get("infer_peak_rss_mb"))}
    table = {"columns": ["train s", "steps", "train peak RSS MB", "infer s/micrograph", "infer peak RSS MB"],
             "rows": report_rows, "caption": "Time and memory (2-core CPU box; other jobs may share it)"}
    return lines, table


def code_lines(specs: Sequence[MethodSpec], cells: Mapping[str, dict[str, Any]]) -> list[str]:
    """Which code version computed which cells (cells computed before versions were recorded say so)."""
    by_version: dict[str, list[str]] = {}
    for key, cell in cells.items():
        by_version.setdefault(cell.get("code") or "not recorded (before 2026-11-27)", []).append(key)
    if not by_version:
        return []
    lines = ["| code (git describe) | cells |", "|---|---|"]
    for version, keys in sorted(by_version.items()):
        lines.append(f"| {version} | {len(keys)}: {', '.join(sorted(k.split('/', 1)[1] for k in keys))} |")
    return [*lines, ""]


NOTES = (
    "Match radius = the TRUE particle radius for every method. AP and best F1 sweep each method's full "
    "ranking (Topaz extracted with -t -20, cryojoint's candidates = every NMS peak, the blob picker every "
    "LoG peak), so best F1 is the fairest picking comparison; F1 at the tool's own cut-off shows what a user "
    "gets by default.",
    "Particle diameter and expected count are ESTIMATED from the partial labels (cryojoint's estimators) for "
    "cryojoint, Topaz and the blob picker alike; Topaz gets the expected count read from our joint model's "
    "meta at the same dose, and the particle radius from the same label-based estimate.",
    "Topaz: resnet8, --no-pretrained (trained from scratch on the same partial labels) unless the profile "
    "says otherwise; class prior passed with --pi corrected for Topaz 0.3.20's 3D pixel count "
    "(benchmarks/peers/README.md); its budget is at least our joint model's wall-clock at the same dose; "
    "the last epoch is scored; one test micrograph is passed as --test-images only to log its AUPRC curve.",
    "Topaz-Denoise: the shipped pretrained unet (unet_L2_v0.2.2), no training on our data.",
    "Gaussian low-pass floor: sigma chosen for the best PSNR vs full dose ON THE TEST SET (an oracle-tuned "
    "floor: as strong as any Gaussian blur can be).",
    f"PSNR vs low-passed full dose uses a Gaussian low-pass with half amplitude at {LOWPASS_REFERENCE_ANGSTROM:g} Å. "
    "PSNR after a least-squares affine fit to the reference (cryojoint.evaluation.psnr). FRC vs clean cannot "
    "be raised by any linear radial filter.",
)


def write_outputs(profile: Profile, specs: Sequence[MethodSpec], doses: Sequence[str],
                  cells: Mapping[str, dict[str, Any]], out_dir: Path, stem: str, run_facts: dict[str, Any],
                  write_html: bool = True, total: int | None = None) -> dict[str, Path]:
    """Rewrite ``<stem>.md``, ``<stem>.json`` and ``<stem>/benchmark.json`` (+ report.html) from the cells."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table_lines, report_tables = build_tables(profile, specs, doses, cells)
    time_lines, time_table = cost_lines(profile, specs, doses, cells)
    seed_lines, seed_tables = spread_lines(profile, specs, doses, cells)
    done = sum(1 for c in cells.values() if c.get("status") == "ok")
    failed = {k: c.get("reason") for k, c in cells.items() if c.get("status") == "failed"}
    total = total if total is not None else len(profile.structures) * len(doses) * len(specs)
    settings_rows = []
    for key, facts in sorted(run_facts.get("doses", {}).items()):
        settings_rows.append(f"| {key} | {_fmt(facts.get('true_diameter_px'))} | "
                             f"{_fmt(facts.get('estimated_diameter_px'))} | "
                             f"{_fmt(facts.get('estimated_expected_particles'), 0)} | "
                             f"{_fmt(facts.get('true_particles_per_micrograph'), 0)} | {facts.get('polarity', '-')} | "
                             f"{facts.get('n_labels', '-')} |")
    md = [
        f"# cryojoint vs Topaz — profile `{profile.name}` ({run_facts['date']})", "",
        f"{profile.description}.", "",
        f"Cells finished: {done} of {total}" + (f"; failed: {len(failed)}" if failed else "")
        + (" (partial results: the run is still going or was stopped)" if done + len(failed) < total else ""),
        "", "Command: `" + run_facts["command"] + "`", "",
        "## Picking and denoising (rows = methods, columns = dose fraction; test micrographs only)", "",
        *table_lines,
        *(["## Spread over training seeds", "", *seed_lines] if seed_lines else []),
        "## Time and memory", "",
        "Wall-clock seconds and peak RSS of each step in its own process (cryojoint: `benchmarks/_measure.py`; "
        "Topaz: GNU time of the Topaz process). Steady-state inference excludes model loading and start-up.", "",
        *time_lines, "",
        "## Code that computed each cell", "", *code_lines(specs, cells),
        "## Label-derived settings (what every tool was given)", "",
        "| structure/dose | true diameter px | estimated diameter px | estimated particles/mic | true particles/mic "
        "(test) | polarity | labels |", "|---|---:|---:|---:|---:|---|---:|", *settings_rows, "",
        "## Notes", "", *[f"- {n}" for n in NOTES], "",
        "## Machine and settings", "", "```json",
        json.dumps({"machine": run_facts["machine"], "profile": _profile_dict(profile),
                    "doses": list(doses)}, indent=1, default=str), "```", "",
    ]
    if failed:
        md += ["## Failures", "", *[f"- `{k}`: {v}" for k, v in failed.items()], ""]
    md_path = out_dir / f"{stem}.md"
    md_path.write_text("\n".join(md))
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps({"profile": _profile_dict(profile), "doses": list(doses),
                                     "run": run_facts, "cells": dict(cells),
                                     "tables": {**report_tables, **seed_tables},
                                     "time_memory": time_table}, indent=1, default=str))
    report_dir = out_dir / stem
    report_dir.mkdir(parents=True, exist_ok=True)
    curves: dict[str, Any] = {}
    several_seeds = len(table_seeds(specs)) > 1  # then a trained row's curve is its seed-0 run, not the mean
    for s in profile.structures:
        for d in doses:
            for spec in specs:
                cell = cells.get(_cell_key(s, d, spec.method_id))
                picking = (cell or {}).get("picking") if (cell or {}).get("status") == "ok" else None
                if picking and picking.get("curve") and not spec.is_replicate:
                    name = f"{spec.label}, seed {spec.seed}" if several_seeds and spec.trains else spec.label
                    curves.setdefault(_dose_label(s, d, profile), {})[name] = {
                        **picking["curve"], "average_precision": picking.get("average_precision")}
    benchmark = {"title": f"cryojoint vs Topaz — {profile.name} ({run_facts['date']})",
                 "tables": {**report_tables, "Time and memory": time_table}, "pr_curves": curves,
                 "notes": [*NOTES, *(f"failed {k}: {v}" for k, v in failed.items())]}
    (report_dir / "benchmark.json").write_text(json.dumps(benchmark, indent=1, default=str))
    paths = {"markdown": md_path, "json": json_path, "benchmark_json": report_dir / "benchmark.json"}
    if write_html:
        try:
            from cryojoint.report import write_report

            paths["html"] = write_report(report_dir)
        except Exception as err:  # noqa: BLE001 - the tables matter more than the page
            (report_dir / "report_error.txt").write_text(f"{type(err).__name__}: {err}\n")
    return paths


def _profile_dict(profile: Profile) -> dict[str, Any]:
    values = dataclasses.asdict(profile)
    values["methods"] = [m.method_id for m in profile.methods]
    return values
