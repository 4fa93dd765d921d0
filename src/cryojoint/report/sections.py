"""The bodies of the report's sections: what each shows, and what it says is missing.

Each ``_…_section(contents)`` returns HTML for one section of the page (:data:`cryojoint.report.page.SECTIONS`
lists them in order). Numbers come from the evaluation the run stored (``evaluation.json``) or from
:mod:`cryojoint.metrics` called on the run's files; figures from :mod:`cryojoint.report.figures`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cryojoint.config import EXPECTED_COUNT_RULE, PROBABILITY_SUM_RULE, QUANTILE_RULE
from cryojoint.errors import UserInputError
from cryojoint.report.figures import (
    CONTRAST_PERCENTILES,
    LEARNING_RATE_LABEL,
    MAX_DISPLAY_PX,
    PANEL_DISPLAY_PX,
    TRAINING_LOSS_LABELS,
    VALIDATION_LABELS,
    _benchmark_pr_figure,
    _evaluation_pr_figure,
    _figure_html,
    _overlay,
    _training_figure,
    _triptych,
    score_histogram_figure,
)
from cryojoint.report.loading import (
    RunContents,
    _denoising,
    _downsample,
    _match_radius,
    _micrograph_names,
    _number,
    _particle_diameter_input_px,
    _picking,
    _resolve_source,
    _threshold,
)
from cryojoint.report.markup import _esc, _fmt, _missing, _note, _relative, _table_html

MAX_MICROGRAPHS_SHOWN = 4


def _read_image(path: Path | None, what: str, contents: RunContents) -> np.ndarray | None:
    from cryojoint.io.mrc import read_micrograph

    if path is None or not path.exists():
        return None
    try:
        return read_micrograph(path).data
    except UserInputError as err:
        contents.notes.append(f"{_esc(what)} could not be read: {_esc(err.one_line())}")
        return None


def _summary_section(contents: RunContents) -> str:
    meta = contents.model_meta or {}
    record = contents.predict_record or {}
    config = contents.config or {}
    picking = _picking(contents)
    denoising = _denoising(contents)
    parts: list[str] = []

    cards: list[tuple[str, str, str]] = []
    if picking and isinstance(picking.get("overall"), dict):
        overall = picking["overall"]
        cards += [("AP", _fmt(overall.get("average_precision")), "of the evaluated picks"),
                  ("F1", _fmt(overall.get("f1")), "at the cut-off"),
                  ("precision", _fmt(overall.get("precision")), "at the cut-off"),
                  ("recall", _fmt(overall.get("recall")), "at the cut-off")]
    candidate_curve = _candidate_curve(contents)
    if candidate_curve is not None:
        cards.insert(1 if cards else 0, ("AP, all peaks", _fmt(candidate_curve[2]), "before the cut-off"))
    if denoising and isinstance(denoising.get("mean"), dict):
        mean = denoising["mean"]
        if "psnr_full_dose" in mean:
            cards.append(("PSNR", _fmt(mean["psnr_full_dose"], 2), "dB vs full dose"))
        if "psnr_clean_outside_masks" in mean:
            cards.append(("PSNR clean", _fmt(mean["psnr_clean_outside_masks"], 2), "dB vs noise-free, outside masks"))
        if "frc_clean" in mean:
            cards.append(("FRC", _fmt(mean["frc_clean"]), "vs noise-free image"))
    if cards:
        parts.append('<div class="cards">' + "".join(
            f'<div class="card"><div class="card-value">{_esc(value)}</div><div class="card-label">'
            f'{_esc(label)}</div><div class="card-detail">{_esc(detail)}</div></div>'
            for label, value, detail in cards) + "</div>")
    elif contents.denoise_only:
        folder = _esc(_relative(contents.pred_dir, Path.cwd()))
        run_folder = _esc(_relative(contents.run_dir, Path.cwd()))  # where this page reads evaluation.json
        parts.append(_note("Denoising only: no picks. With full-dose or noise-free copies of the micrographs, "
                           f"<code>cryojoint evaluate --denoised {folder}/denoised --reference FULL_DOSE_DIR --json "
                           f"{run_folder}/evaluation.json</code> (or <code>--clean NOISE_FREE_DIR</code>) adds PSNR "
                           "and FRC to this page."))
    elif contents.prediction_only:  # a user's predictions: there is rarely a truth, nothing is missing
        folder = _esc(_relative(contents.pred_dir, Path.cwd()))
        parts.append(_note("Not scored against a truth. With known particle positions, <code>cryojoint evaluate "
                           f"--picks {folder} --truth TRUTH.star --match-radius R --json "
                           f"{folder}/evaluation.json</code> (R: the particle radius in pixels) adds AP, F1 and "
                           "precision-recall curves to this page."))
    else:
        parts.append(_missing("headline AP/F1/PSNR: no evaluation.json (run <code>cryojoint evaluate --json</code> "
                              "with the truth and references)."))

    rows: list[tuple[str, str]] = []
    if record.get("general_model"):
        rows.append(("model", "the shipped general model (no training on these micrographs)"))
    elif record.get("model_file"):
        rows.append(("model", str(record["model_file"])))
    mode = meta.get("mode") or (config.get("train") or {}).get("mode")
    if mode:
        rows.append(("mode", str(mode)))
    diameter = _particle_diameter_input_px(contents)
    # Denoising uses the particle's size only to bin (the general model told it, or a network that bins).
    if diameter is not None and (not contents.denoise_only or _downsample(contents) > 1):
        if "particle_diameter_estimated" in meta:
            how = "estimated from the labels" if meta["particle_diameter_estimated"] else "given by the user"
        elif (contents.predict_record or {}).get("general_model"):
            how = "given with --particle-diameter: the general model bins to it"
        else:
            how = "the trained model's; its model.pt, not read here, says whether estimated or given"
        rows.append(("particle diameter", f"{_fmt(diameter, 1)} px in input pixels ({how})"))
    if meta.get("particle_contrast") == "bright":
        rows.append(("particle contrast", "brighter than the ice: the micrographs are inverted for the network"))
    downsample = _downsample(contents)
    if downsample > 1:
        rows.append(("binning inside the network", f"{downsample:g}× (coordinates are in input pixels)"))
    if "expected_particles" in meta and not contents.denoise_only:
        how = ("measured from the labelled picks' scores" if meta.get("expected_particles_from") == "label scores"
               else "estimated" if meta.get("expected_particles_estimated") else "given")
        rows.append(("expected particles per micrograph", f"{_fmt(meta['expected_particles'], 1)} ({how})"))
    if meta.get("best_step") is not None:
        rows.append(("best step (model kept)", _fmt(meta["best_step"])))
    if contents.metrics is not None and len(contents.metrics):
        rows.append(("steps trained", _fmt(int(contents.metrics["step"].max()))))
    threshold = _threshold(contents)
    if threshold is not None:
        expected = _number(record.get("expected_particles_per_micrograph"))
        counted = record.get("auto_threshold_rule") == EXPECTED_COUNT_RULE and expected
        rule = record.get("auto_threshold_rule_used") or (EXPECTED_COUNT_RULE if counted else QUANTILE_RULE)
        if record.get("threshold_was_automatic") and rule == EXPECTED_COUNT_RULE and expected:
            how = (f"automatic: keeps as many picks as the expected particle density predicts "
                   f"({_fmt(expected, 1)} per micrograph of the training micrographs' size)")
        elif record.get("threshold_was_automatic"):
            fraction = _number(record.get("auto_threshold_top_fraction"))
            share = f"the top {fraction:.0%}" if fraction is not None else "the top share"
            how = f"automatic: keeps {share} of all candidate peak scores of the run"
            if rule == PROBABILITY_SUM_RULE:
                how += ", or as many as their probabilities sum to where that is more"
        else:
            how = "fixed (given with --threshold or in the config)"
        rows.append(("score cut-off", f"{_fmt(threshold)} — {how}"))
    if _number(record.get("nms_radius_px_input")) and not contents.denoise_only:
        rows.append(("NMS radius", f"{_fmt(record['nms_radius_px_input'], 1)} px"))
    n_picks = record.get("n_picks")
    if n_picks is None and contents.picks is not None:
        n_picks = len(contents.picks)
    if n_picks is not None and not contents.denoise_only:
        n_micrographs = record.get("n_micrographs")
        on = f" on {n_micrographs} micrograph(s)" if n_micrographs is not None else ""
        rows.append(("picks", f"{_fmt(n_picks)}{on}"))
    if contents.candidates is not None:
        rows.append(("candidate peaks (before the cut-off)", _fmt(len(contents.candidates))))
    if _number(record.get("seconds_per_micrograph")):
        rows.append(("prediction time", f"{_fmt(record['seconds_per_micrograph'], 1)} s per micrograph"))
    failures = record.get("failures")
    if isinstance(failures, dict) and failures:
        listed = "; ".join(f"{k}: {v}" for k, v in list(failures.items())[:5])
        rows.append(("failed micrographs", f"{len(failures)} ({listed})"))
    radius = _match_radius(contents)
    if picking and radius is not None:
        rows.append(("match radius for evaluation", f"{_fmt(radius, 1)} px"))
    if meta.get("command_line"):
        rows.append(("training command", str(meta["command_line"])))
    if record.get("command_line"):
        rows.append(("prediction command", str(record["command_line"])))
    if rows:
        parts.append('<table class="kv"><tbody>' + "".join(
            f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows) + "</tbody></table>")
    if not contents.model_meta and not record.get("general_model"):
        parts.append(_missing("model.pt: mode, particle size and how it was chosen are unknown."))
    if not contents.predict_record:
        parts.append(_missing("pred/predict.json: the cut-off and how it was chosen are unknown "
                              "(run <code>cryojoint predict</code>)."))

    parts.append("<h3>What this page is built from</h3>")
    input_rows = "".join(
        f'<tr><td>{_esc(row.what)}</td><td><code>{_esc(_relative(row.path, contents.run_dir))}</code></td>'
        f'<td class="status-{"ok" if row.status == "found" else "bad"}">{_esc(row.status)}</td>'
        f"<td>{_esc(row.hint)}</td></tr>" for row in contents.inputs)
    parts.append('<div class="table-wrap"><table class="inputs"><thead><tr><th>input</th><th>file</th>'
                 f"<th>status</th><th>made by</th></tr></thead><tbody>{input_rows}</tbody></table></div>")
    if contents.config_text:
        parts.append("<details><summary>Configuration (config.yaml)</summary>"
                     f"<pre>{_esc(contents.config_text)}</pre></details>")
    return "".join(parts)


def _micrographs_section(contents: RunContents) -> str:
    names = _micrograph_names(contents)
    if not names:
        return _missing("no micrographs to show: no pred/denoised/, no candidates and no sources.json.")
    sources = contents.sources or {}
    data_dir = _resolve_source(sources.get("data"), contents.run_dir)
    dose = str(sources.get("dose") or "")
    reference_dir = _resolve_source(sources.get("reference"), contents.run_dir)
    truth = contents.truth
    radius = _match_radius(contents)
    parts: list[str] = []
    if not contents.sources and not contents.input_files:
        parts.append(_missing("sources.json: the low-dose inputs, full-dose references and the truth are "
                              "unknown, so only the denoised images and the picks are shown."))
    elif contents.sources and truth is None:
        parts.append(_missing("truth: sources.json names no readable truth file, so picks are not split into "
                              "true and false positives."))
    shown = names[:MAX_MICROGRAPHS_SHOWN]
    if len(names) > len(shown):
        parts.append(_note(f"Showing {len(shown)} of {len(names)} micrographs."))
    lo, hi = CONTRAST_PERCENTILES
    parts.append(_note(
        f"Each panel is stretched linearly between percentiles {lo:g} and {hi:g} of its own intensities (the doses "
        "differ in scale, so one rule is applied to every panel rather than one range); images larger than "
        f"{PANEL_DISPLAY_PX} px (row) or {MAX_DISPLAY_PX} px (picks) are block-averaged for display, which "
        "makes the noisy input look a little cleaner than it is."))
    for name in shown:
        input_path = (data_dir / dose / f"{name}.mrc" if data_dir is not None and dose
                      else contents.input_files.get(name))
        reference_path = reference_dir / f"{name}.mrc" if reference_dir is not None else None
        low_dose = _read_image(input_path, f"input {name}", contents)
        denoised = _read_image(contents.denoised_files.get(name), f"denoised {name}", contents)
        reference = _read_image(reference_path, f"reference {name}", contents)
        parts.append(f'<h3 id="mic-{_esc(name)}">{_esc(name)}</h3>')
        parts.append(_triptych(name, dose, low_dose, denoised, reference, with_reference=bool(contents.sources)))
        if not contents.denoise_only:
            parts.append(_overlay(contents, name, low_dose, denoised, truth, radius))
    return "".join(parts)


def _score_section(contents: RunContents) -> str:
    if contents.denoise_only:
        return ""
    candidates = contents.candidates
    if candidates is None or not len(candidates):
        return _missing("pred/candidates/: the scores of all candidate peaks (run <code>cryojoint predict</code>).")
    from cryojoint.metrics.picking import picks_matching_truth

    scores = candidates["score"].to_numpy(float)
    finite = np.isfinite(scores)
    if not finite.any():
        return _missing("scores: the candidate files hold no scores.")
    threshold = _threshold(contents)
    truth = contents.truth
    radius = _match_radius(contents)
    near_truth = None
    if truth is not None and radius is not None:
        near_truth = picks_matching_truth(candidates, truth, radius)
    figure = score_histogram_figure(scores, threshold, near_truth)
    parts = [_figure_html(figure, "histogram of candidate peak scores with the cut-off",
                          "Scores of every NMS peak of every micrograph; picks are the peaks at or right of the "
                          "cut-off." + (" Peaks are split by whether they match a true particle within the match "
                                        "radius." if near_truth is not None else ""))]
    if threshold is None:
        parts.append(_missing("the cut-off (pred/predict.json)."))
    if near_truth is None:
        parts.append(_note("Truth unknown: peaks are not split into particles and background."))
    return "".join(parts)


def _candidate_curve(contents: RunContents) -> tuple[np.ndarray, np.ndarray, float] | None:
    """PR curve over *all* candidate peaks (before the cut-off) against the truth, with its AP.

    An evaluation of ``picks.star`` only sweeps the picks above the cut-off, so its curve stops at the
    cut-off's recall; the candidates show what a lower cut-off would give.
    """
    from cryojoint.metrics.picking import picking_metrics

    truth, candidates, radius = contents.truth, contents.candidates, _match_radius(contents)
    if truth is None or candidates is None or not len(candidates) or radius is None:
        return None
    names = set(truth["micrograph"].astype(str))
    candidates = candidates[candidates["micrograph"].astype(str).isin(names)]
    if not len(candidates):
        return None
    overall = picking_metrics(candidates, truth, radius, micrographs=sorted(names)).overall
    return overall.curve.precision, overall.curve.recall, overall.average_precision


def _pr_section(contents: RunContents) -> str:
    parts: list[str] = []
    picking = _picking(contents)
    if not (picking and isinstance(picking.get("overall"), dict)):
        picking = None
        if contents.prediction_only or contents.denoise_only:
            return ""  # nothing scored (the summary says how to score)
        parts.append(_missing("evaluation.json with picking results: no PR curve of the evaluated picks."))
    candidate_curve = _candidate_curve(contents)
    if picking is not None or candidate_curve is not None:
        parts.append(_evaluation_pr_figure(picking, candidate_curve, _match_radius(contents)))
    curves = (contents.benchmark or {}).get("pr_curves")
    if isinstance(curves, dict) and curves:
        parts.append("<h3>Benchmark</h3>")
        parts.append(_benchmark_pr_figure(curves, contents))
    elif contents.benchmark is not None:
        parts.append(_note("benchmark.json has no PR curves."))
    return "".join(parts)


def _training_section(contents: RunContents) -> str:
    metrics = contents.metrics
    if (metrics is None or not len(metrics)) and contents.prediction_only:
        return ""  # predictions only: the training run's folder has its curves
    if metrics is None or not len(metrics):
        return _missing("metrics.csv: no training curves (written by <code>cryojoint train</code>).")
    labels = {**TRAINING_LOSS_LABELS, **VALIDATION_LABELS, "lr": LEARNING_RATE_LABEL}
    columns = [c for c in labels if c in metrics.columns and metrics[c].notna().any()]
    if not columns:
        return _missing("metrics.csv has a step column but no loss or validation columns.")
    best_step = _number((contents.model_meta or {}).get("best_step"))
    figure = _training_figure(metrics, columns, labels, best_step)
    missing = [labels[c] for c in (*TRAINING_LOSS_LABELS, *VALIDATION_LABELS) if c not in columns]
    caption = ("Training losses are running averages over recent steps; validation metrics are measured on "
               "held-out labels at each evaluation.")
    if best_step is not None:
        caption += f" Dotted line: step {best_step:g}, the model kept (best validation)."
    parts = [_figure_html(figure, "training loss curves and validation metrics against step", caption)]
    if missing:
        parts.append(_note(f"Not logged in this run (normal for some modes): {_esc(', '.join(missing))}."))
    return "".join(parts)


def _tables_section(contents: RunContents) -> str:
    from cryojoint.metrics.denoising import DENOISING_METRICS

    parts: list[str] = []
    picking, denoising = _picking(contents), _denoising(contents)
    scored = bool(picking and isinstance(picking.get("overall"), dict))
    if contents.prediction_only and not scored and not denoising:
        return ""  # nothing scored (the summary says how to score)
    if scored:
        edge = _number(picking.get("edge_px"))
        columns = ["micrograph", "picks", "true", "TP", "precision", "recall", "F1", "AP", "best F1",
                   "cut-off of best F1", f"edge recall (<{edge:g} px)" if edge else "edge recall", "picks in masks"]
        keys = ["micrograph", "n_picks", "n_true", "true_positives", "precision", "recall", "f1",
                "average_precision", "best_f1", "best_f1_threshold", "edge_recall", "fraction_picks_in_mask"]
        results = [r for r in (picking.get("per_micrograph") or []) if isinstance(r, dict)]
        rows = [[r.get(k) for k in keys] for r in [*results, picking["overall"]]]
        threshold = _number(picking.get("threshold"))
        cut = "all picks in the file" if threshold is None else f"picks with score ≥ {threshold:.3g}"
        radius = _number(picking.get("match_radius"))
        parts.append("<h3>Picking</h3>")
        parts.append(_table_html(columns, rows, f"match radius {_fmt(radius, 1)} px; {cut}", highlight_last=True))
    elif not contents.prediction_only:
        parts.append(_missing("picking table: evaluation.json has no picking results."))
    if denoising and isinstance(denoising.get("mean"), dict):
        metrics = [m for m in DENOISING_METRICS if m in denoising["mean"]]
        rows = [[r.get("micrograph"), *[r.get(m) for m in metrics]]
                for r in (denoising.get("per_micrograph") or []) if isinstance(r, dict)]
        rows.append(["mean", *[denoising["mean"].get(m) for m in metrics]])
        band = denoising.get("frc_band") or []
        band_text = f"; FRC averaged over {band[0]:g}–{band[1]:g} cycles/px" if len(band) == 2 else ""
        period = _number(denoising.get("lowpass_period_px"))
        parts.append("<h3>Denoising</h3>")
        parts.append(_table_html(["micrograph", *[DENOISING_METRICS[m] for m in metrics]], rows,
                                 f"low-pass period {_fmt(period, 2)} px{band_text}", highlight_last=True))
        parts.append(_note("PSNR against the full-dose image is capped by that image's own noise and dominated by "
                           "high-contrast features; judge denoisers by PSNR against the noise-free image outside "
                           "masks and by FRC when those are available."))
    elif not contents.prediction_only:  # a user's predictions are scored on picking alone
        parts.append(_missing("denoising table: evaluation.json has no denoising results."))
    if contents.benchmark is not None:
        parts.append(_benchmark_tables(contents.benchmark))
    return "".join(parts)


def _benchmark_tables(benchmark: dict[str, Any]) -> str:
    parts: list[str] = []
    title = benchmark.get("title")
    parts.append(f"<h3>{_esc(title) if title else 'Benchmark'}</h3>")
    tables = benchmark.get("tables")
    if not isinstance(tables, dict) or not tables:
        parts.append(_note("benchmark.json has no tables."))
    else:
        for name, table in tables.items():
            parts.append(_one_benchmark_table(str(name), table))
    notes = benchmark.get("notes")
    if isinstance(notes, list) and notes:
        parts.append("<ul class=\"notes\">" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    return "".join(parts)


def _one_benchmark_table(name: str, table: Any) -> str:
    if not isinstance(table, dict) or not isinstance(table.get("columns"), list):
        return _note(f"Benchmark table '{_esc(name)}' skipped: it needs a list of columns.")
    columns = [str(c) for c in table["columns"]]
    rows_in = table.get("rows")
    rows: list[list[Any]] = []
    if isinstance(rows_in, dict):
        for method, values in rows_in.items():
            if isinstance(values, dict):
                values = [values.get(c) for c in columns]
            if not isinstance(values, list):
                return _note(f"Benchmark table '{_esc(name)}' skipped: row '{_esc(method)}' is not a list.")
            padded = [*values[:len(columns)], *[None] * (len(columns) - len(values))]
            rows.append([str(method), *padded])
    else:
        return _note(f"Benchmark table '{_esc(name)}' skipped: rows must map a method to its values.")
    caption = str(table.get("caption") or name)
    label = str(table.get("row_label") or "method")
    return _table_html([label, *columns], rows, caption)
