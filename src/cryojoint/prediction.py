"""Prediction runs: many micrographs in-process or on Dask, one cut-off over the whole run, picks in every format.

Each micrograph is predicted by :mod:`cryojoint.inference` (in this process, or on Dask workers through
:mod:`cryojoint.parallel`), which writes, per micrograph, the denoised image, the soft segmentation map and
the candidate peaks with their scores; the cut-off is applied once all candidates are known (the automatic
cut-off is chosen over the whole run), then picks are written in every requested format.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryojoint._atomic import atomic_path, make_output_folder
from cryojoint.checkpoint import (
    LoadedModel,
    finest_learned_pixel_size,
    is_shipped_model,
    load_model,
    model_file_sha256,
)
from cryojoint.config import EXPECTED_COUNT_RULE, QUANTILE_RULE
from cryojoint.contrast import AS_RECORDED
from cryojoint.data import check_unique_names
from cryojoint.errors import StopRequested, UserInputError, first_names
from cryojoint.imaging import (
    FILTERED_NEIGHBOUR_CORRELATION,
    bin_image,
    binned_shape,
    fine_scale_neighbour_correlation,
)
from cryojoint.inference import (
    CANDIDATE_DIR,
    DENOISED_DIR,
    MicrographPrediction,
    PickingSettings,
    asks_for_picks,
    bin_phase_offsets,
    done_marker,
    output_paths,
    predict_micrograph,
    resolve_contrast,
    write_micrograph_outputs,
)
from cryojoint.io.coords import (
    FILE_NAME_COLUMN,
    SUFFIX_OF_FORMAT,
    WRITERS,
    attach_micrographs,
    empty_table,
    read_coordinates,
    write_coordinates,
    write_coordinates_per_micrograph,
)
from cryojoint.io.inputs import PIXEL_SIZE_WARN_RATIO
from cryojoint.io.mrc import Micrograph, micrograph_name, micrograph_pixel_size, micrograph_shape, read_micrograph
from cryojoint.progress import counted_progress
from cryojoint.runtime import autocast_dtype, dtype_name, retain_freed_memory, select_device

OUTPUT_KINDS: tuple[str, ...] = ("picks", "denoised", "heatmap")
COMBINED_STAR = "picks.star"
#: cryoSPARC particles of the whole run (``--formats cs``), beside picks.star.
COMBINED_CS = "picks.cs"
#: Every NMS peak of the run with its score, before the cut-off: what average precision is computed from.
CANDIDATES_STAR = "candidates.star"
#: Box size written into coordinate files that carry one, in particle diameters: EMAN .box boxes are extraction
#: boxes (~1.5-2x the diameter); crYOLO .cbox boxes enclose the particle (crYOLO's own box size), so the circles
#: napari-boxmanager draws from them outline the particles.
BOX_SIZE_DIAMETERS: dict[str, float] = {"box": 2.0, "cbox": 1.0}


def box_size_px(fmt: str, particle_diameter_px: float | None) -> float | None:
    """The box size a coordinate format is written with, from the particle diameter (None: none needed/known)."""
    if fmt not in BOX_SIZE_DIAMETERS or particle_diameter_px is None:
        return None
    return float(round(BOX_SIZE_DIAMETERS[fmt] * particle_diameter_px))


# ---------------------------------------------------------------------------------------- in memory


@dataclass
class Predictions:
    micrographs: list[MicrographPrediction]
    threshold: float | None
    threshold_was_automatic: bool
    picks: pd.DataFrame  # candidates at or above the threshold, all micrographs

    def __iter__(self):  # noqa: ANN204 - iterate like a list of micrographs
        return iter(self.micrographs)


def choose_threshold(candidate_scores: Sequence[np.ndarray], settings: PickingSettings,
                     areas_px2: Sequence[float] | None = None) -> tuple[float, bool]:
    """The fixed cut-off if given, else the automatic one over all candidates of the run.

    ``expected-count`` keeps as many picks as the particles the run should hold: the particle density estimated
    from the labels (or given at training) times the micrographs' area in network pixels (``areas_px2``; without
    it, expected particles per micrograph times their number). It ties the cut-off to what is in the images
    rather than to how many background peaks NMS happens to find.
    ``quantile`` is the appendix's advice, the score at the top ``top_fraction`` of all candidate scores.
    ``probability-sum`` (no count known: the general model told no labels) keeps the quantile rule's picks, or as
    many as the candidates' probabilities sum to where that is more: a quarter of the peaks is too few in a
    crowded field (real beta-galactosidase: particles are 40 % of the peaks), where the model is also confident
    enough to say so, while at low dose its probabilities run low and the quantile stands
    (:func:`~cryojoint.picking.count_from_probabilities`).
    """
    from cryojoint.picking import auto_threshold, count_from_probabilities

    if settings.threshold is not None:
        return float(settings.threshold), False
    values = [np.asarray(s, dtype=float) for s in candidate_scores if len(s)]
    if not values:
        return 0.0, True  # log-odds 0 = probability 0.5
    ranked = np.sort(np.concatenate(values))[::-1]
    rule = settings.automatic_rule
    if rule == EXPECTED_COUNT_RULE:
        if settings.expected_density_per_px2 and areas_px2 is not None:
            keep = int(round(settings.expected_density_per_px2 * float(np.sum(areas_px2))))
        else:
            keep = int(round(settings.expected_per_micrograph * len(candidate_scores)))
        return _score_keeping(ranked, keep), True
    cut = float(auto_threshold(values, settings.top_fraction))
    if rule == QUANTILE_RULE:
        return cut, True
    return min(cut, _score_keeping(ranked, int(round(count_from_probabilities(ranked))))), True


def _score_keeping(ranked: np.ndarray, keep: int) -> float:
    """The cut-off that keeps the ``keep`` best of scores ranked best first (at least one, at most all)."""
    return float(ranked[min(max(keep, 1), len(ranked)) - 1])


def predict(
    model: LoadedModel | str | Path,
    images: Sequence[np.ndarray | Micrograph | str | Path] | np.ndarray | Micrograph,
    threshold: float | str | None = None,
    nms_radius_px: float | None = None,
    border_px: float | None = None,
    downsample: float | None = None,
    device: str | torch.device = "cpu",
    particle_diameter_px: float | None = None,
    particle_contrast: str | None = None,
) -> Predictions:
    """Denoise and pick micrographs in memory (notebook API). Coordinates are in the input images' pixels.

    ``model`` is a model file, a loaded model or a shipped model's name (``"general"``, which needs
    ``particle_diameter_px`` in the input's pixels). ``particle_contrast`` ("dark", "bright"): how particles look in
    the images; default: as in the model's training micrographs, for the general model read from the images.
    """
    if not isinstance(device, torch.device):
        device = select_device(str(device))  # "auto", "cuda" without a GPU: as the CLI says them
    loaded = load_model(model, device) if isinstance(model, (str, Path)) else model
    settings = PickingSettings.resolve(loaded, threshold, nms_radius_px, border_px, downsample,
                                       particle_diameter_px=particle_diameter_px, particle_contrast=particle_contrast)
    items = [images] if isinstance(images, (np.ndarray, Micrograph, str, Path)) else list(images)
    names = [item.name if isinstance(item, Micrograph) else micrograph_name(item) if isinstance(item, (str, Path))
             else f"image_{i:04d}" for i, item in enumerate(items)]
    check_unique_names(names)  # picks are joined to micrographs by name: two with one name would merge
    settings, note = resolve_contrast(loaded, settings, [_as_micrograph(item, i) if isinstance(item, np.ndarray)
                                                         else item for i, item in enumerate(items)], device)
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    results, areas = [], []
    for index, item in enumerate(items):  # one micrograph in memory at a time, each file read once
        micrograph = _as_micrograph(item, index)
        results.append(predict_micrograph(loaded, micrograph, settings, device))
        areas.append(float(np.prod(binned_shape(micrograph.shape, settings.downsample))))
    cut, automatic = choose_threshold([r.candidates["score"].to_numpy() for r in results], settings, areas)
    picks = _apply_threshold([r.candidates for r in results], cut)
    return Predictions(results, cut, automatic, picks)


def _as_micrograph(item: np.ndarray | Micrograph | str | Path, index: int) -> Micrograph:
    if isinstance(item, Micrograph):
        return item
    if isinstance(item, (str, Path)):
        return read_micrograph(item)
    return Micrograph.from_array(item, index)


def _apply_threshold(candidate_tables: Sequence[pd.DataFrame], threshold: float) -> pd.DataFrame:
    tables = [t[t["score"] >= threshold] for t in candidate_tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else empty_table()


# ------------------------------------------------------------------------------------------- on disk


@dataclass
class PredictSummary:
    out_dir: Path
    n_micrographs: int
    n_done: int
    n_skipped: int
    failures: dict[str, str]
    threshold: float | None
    threshold_was_automatic: bool
    n_picks: int
    seconds_per_micrograph: float
    written: list[Path] = field(default_factory=list)
    picks: pd.DataFrame | None = None  # the picks after the cut-off, all micrographs (what picks.star holds)


def predict_files(
    model_path: str | Path,
    micrographs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    threshold: float | str | None = None,
    nms_radius_px: float | None = None,
    border_px: float | None = None,
    downsample: float | None = None,
    formats: Sequence[str] = ("star",),
    outputs: Sequence[str] = OUTPUT_KINDS,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
    workers: int = 1,
    scheduler: str | None = None,
    command_line: str | None = None,
    tile_size_px: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    detector_window_stride_fraction: float | None = None,
    precision: str | None = None,
    particle_diameter_px: float | None = None,
    denoise_at_input_size: bool = False,
    particle_contrast: str | None = None,
) -> PredictSummary:
    """Predict a set of micrograph files into ``out_dir`` (see the module docstring for the layout).

    A micrograph whose candidates file exists is skipped unless ``overwrite``; a bad file is reported and the
    run goes on; picks are written for all micrographs that succeeded. ``should_stop`` is asked before each
    micrograph (sequential runs; with Dask workers, once before the start): when true, the run raises
    :class:`~cryojoint.errors.StopRequested`, leaving the micrographs done so far for a rerun to skip.
    ``model_path`` may name a shipped model (``"general"``: give ``particle_diameter_px``, input pixels). Without
    ``"picks"`` and ``"heatmap"`` in ``outputs`` the detector does not run and no pick files are written; then
    ``denoise_at_input_size`` writes the denoised images at the input's size even when the network bins.
    ``particle_contrast``: see :func:`predict`; the general model reads it from the micrographs once per output
    folder (a rerun into it keeps the reading).
    """
    out_dir = Path(out_dir)
    unknown_formats = [f for f in formats if f not in WRITERS]
    if unknown_formats:
        raise UserInputError(None, f"unknown format '{unknown_formats[0]}' (known: {', '.join(WRITERS)})")
    unknown_outputs = [o for o in outputs if o not in OUTPUT_KINDS]
    if unknown_outputs:
        raise UserInputError(None, f"unknown output '{unknown_outputs[0]}' (known: {', '.join(OUTPUT_KINDS)})")
    if not outputs:
        raise UserInputError(None, f"no outputs asked for (any of {', '.join(OUTPUT_KINDS)})")
    if not micrographs:
        raise UserInputError(None, "no micrographs given")
    if workers < 1:
        raise UserInputError(None, f"--workers must be at least 1, got {workers}")
    missing = next((Path(p) for p in micrographs if not Path(p).is_file()), None)
    if missing is not None:  # before the model loads and the first micrographs run, not after them
        raise UserInputError(missing, "file not found" if not missing.exists() else "not a file")
    names = [micrograph_name(p) for p in micrographs]
    check_unique_names(names, micrographs)
    resolved_device = select_device(device)
    retain_freed_memory()
    model = load_model(model_path, resolved_device)
    pick = asks_for_picks(outputs)
    settings = PickingSettings.resolve(model, threshold, nms_radius_px, border_px, downsample, tile_size_px,
                                       detector_window_stride_fraction, precision, particle_diameter_px, pick,
                                       denoise_at_input_size, particle_contrast)
    # Checked before any work; recorded in predict.json.
    network_dtype = autocast_dtype(resolved_device, settings.precision or model.config.predict.precision)
    folder_was_there = out_dir.exists()
    make_output_folder(out_dir)

    todo = [Path(p) for p, n in zip(micrographs, names)
            if overwrite or not done_marker(out_dir, n, outputs).exists()]
    earlier_contrast = None if overwrite else earlier_setting(out_dir, "particle_contrast")
    if settings.particle_contrast == "auto" and earlier_contrast in ("dark", "bright"):
        settings = dataclasses.replace(settings, particle_contrast=earlier_contrast)  # as the micrographs done
    settings, note = resolve_contrast(model, settings, [Path(p) for p in micrographs], resolved_device, progress)
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    output_settings = _output_settings(model_path, model, settings, outputs, network_dtype)
    if not overwrite and holds_earlier_outputs(out_dir):
        # Skipped micrographs would mix with this run's, and recut/candidates read every micrograph of the folder.
        _check_same_outputs_as_before(out_dir, output_settings)
    if pick:
        _check_no_other_micrographs(out_dir, names)
    if overwrite:  # unmark the earlier run's micrographs first: stopped part-way, this run resumes its own alone
        for name in names:
            output_paths(out_dir, name)["candidates"].unlink(missing_ok=True)
            done_marker(out_dir, name, outputs).unlink(missing_ok=True)
    settings_were_there = (out_dir / OUTPUT_SETTINGS).exists()
    with atomic_path(out_dir / OUTPUT_SETTINGS) as tmp:  # before the first micrograph: an interrupted run has it
        tmp.write_text(json.dumps(output_settings, indent=2))
    if model.is_general:
        _warn_if_filtered(todo, settings)
    _warn_if_other_pixel_size(todo, model, downsample is not None)
    if pick and model.meta.get("count_pending") and settings.threshold is None \
            and settings.automatic_rule == EXPECTED_COUNT_RULE:
        warnings.warn(f"{model_path}: its training stopped before it counted the particles from the labels' scores, "
                      "so the automatic cut-off keeps the labels' density estimate "
                      f"({float(model.meta.get('expected_particles', 0)):.0f} per micrograph): `cryojoint train ... "
                      "--resume` finishes it, or pass --threshold", UserWarning, stacklevel=2)
    _warn_if_finer_than_learned(todo, model, settings, size_given=particle_diameter_px is not None)
    n_skipped = len(micrographs) - len(todo)
    input_files = {n: str(Path(p).resolve()) for p, n in zip(micrographs, names)}  # for predict.json
    started = time.perf_counter()
    if should_stop is not None and should_stop():
        raise StopRequested("prediction stopped on request before it started")
    if scheduler is not None or workers > 1:
        from cryojoint.parallel import predict_distributed

        failures = predict_distributed(model_path, todo, out_dir, settings, outputs, workers, scheduler, progress)
    else:
        failures = _predict_sequential(model, todo, out_dir, settings, outputs, resolved_device, progress,
                                       should_stop)
    elapsed = time.perf_counter() - started
    n_done = len(todo) - len(failures)
    if n_done == 0 and n_skipped == 0 and not settings_were_there:
        # Every micrograph failed and the folder held nothing before: leave no outputs that look like a run's.
        _remove_this_runs_folder(out_dir, remove_folder=not folder_was_there)
        return PredictSummary(out_dir, len(micrographs), 0, 0, failures, None, False, 0, 0.0, [], None)
    if not pick:
        summary = PredictSummary(out_dir, len(micrographs), n_done, n_skipped, failures, None, False, 0,
                                 elapsed / max(n_done, 1), [], None)
        _write_run_record(out_dir, model, settings, summary, model_path, command_line, resolved_device, network_dtype,
                          output_settings, input_files)
        return summary

    candidate_tables, areas = [], []
    for path, name in zip(micrographs, names):
        candidate_path = output_paths(out_dir, name)["candidates"]
        if name in failures or not candidate_path.exists():
            continue
        table = read_candidates(candidate_path)
        table[FILE_NAME_COLUMN] = str(path)  # as given: RELION matches picks to micrographs by the whole name
        candidate_tables.append(table)
        areas.append(float(np.prod(binned_shape(micrograph_shape(path), settings.downsample))))
    cut, automatic = choose_threshold([t["score"].to_numpy() for t in candidate_tables], settings, areas)
    picks = _apply_threshold(candidate_tables, cut)
    all_candidates = pd.concat(candidate_tables, ignore_index=True) if candidate_tables else empty_table()
    written = [write_coordinates(all_candidates, out_dir / CANDIDATES_STAR, "star")]
    done = {n: Path(p) for p, n in zip(micrographs, names) if n not in failures}
    written += _write_picks(picks, out_dir, formats, done, settings.particle_diameter_px * settings.downsample)
    summary = PredictSummary(out_dir, len(micrographs), n_done, n_skipped, failures, cut, automatic, len(picks),
                             elapsed / max(n_done, 1), written, picks)
    _write_run_record(out_dir, model, settings, summary, model_path, command_line, resolved_device, network_dtype,
                      output_settings, input_files)
    return summary


def _remove_this_runs_folder(out_dir: Path, remove_folder: bool) -> None:
    """Remove the output settings a run wrote before its first micrograph, the empty subfolders it made and, when it
    made it, the output folder once empty: a run with no micrograph done has nothing to hand over."""
    (out_dir / OUTPUT_SETTINGS).unlink(missing_ok=True)
    for sub in {path.parent for path in output_paths(out_dir, "any").values()}:
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    if remove_folder and not any(out_dir.iterdir()):
        out_dir.rmdir()


#: Smallest binned side the filtered-input check reads a micrograph at (a few pixels give no correlation).
MIN_CORRELATION_SIDE_PX = 16
#: How much finer than the general model's finest learned pixel size a micrograph is denoised before a warning:
#: a bin of 2 or more would bring it to what the model knows.
FINER_THAN_LEARNED_FACTOR = 2.0


def _warn_if_other_pixel_size(paths: Sequence[Path], model: LoadedModel, downsample_given: bool) -> None:
    """A trained model sees particles at the size it learned only on micrographs of its training pixel size (or
    binned to it with --downsample): say so, once, when headers differ and no --downsample was given, with how many
    (one --downsample for the whole run would mis-bin the micrographs that match)."""
    trained = model.meta.get("input_pixel_size_angstrom")
    if model.is_general or downsample_given or not trained:
        return
    others: list[tuple[Path, float]] = []
    for path in paths:
        try:
            size = micrograph_pixel_size(path)
        except UserInputError:
            continue
        if size and abs(size / float(trained) - 1.0) > PIXEL_SIZE_WARN_RATIO:
            others.append((path, size))
    if not others:
        return
    path, size = others[0]
    factor = float(trained) * float(model.meta.get("downsample", 1.0)) / size
    remedy = f"give --downsample {factor:.3g}" if factor >= 1.0 else \
        "train on micrographs of this pixel size (a model cannot bin up)"
    if len(others) < len(paths):
        remedy = f"run {'it' if len(others) == 1 else 'those'} apart from the others and {remedy}"
    which = f"{path}" if len(others) == 1 else f"{len(others)} of {len(paths)} micrographs (the first {path})"
    warnings.warn(f"{which}: {size:.3g} Å/px, but the model was trained on micrographs at {float(trained):.3g} "
                  f"Å/px: its particles will not measure what the model learned; {remedy}", UserWarning,
                  stacklevel=3)


def _warn_if_finer_than_learned(paths: Sequence[Path], model: LoadedModel, settings: PickingSettings,
                                size_given: bool) -> None:
    """The general model told no particle size denoises at the input's pixel size: say so when that is at least
    :data:`FINER_THAN_LEARNED_FACTOR` times finer than any it learned from (e.g. 0.85 Å/px raw K3 data against its
    ~3 Å/px), where it runs several times longer and denoises less (session-31 review: 390 s and blotchy vs 94 s)."""
    if not model.is_general or size_given:
        return
    finest = finest_learned_pixel_size(model.meta.get("pretraining") or {})
    for path in paths:
        try:
            size = micrograph_pixel_size(path)
        except UserInputError:
            continue
        if size:
            break
    else:
        return
    if finest is None:
        return
    factor = finest / (size * settings.downsample)
    if factor < FINER_THAN_LEARNED_FACTOR:
        return
    bin_to_learned = round(factor * settings.downsample)
    warnings.warn(f"{path}: {size * settings.downsample:.3g} Å/px as denoised, {factor:.1f}x finer than the finest "
                  f"the general model learned from ({finest:.2g} Å/px): without --particle-diameter it denoises at "
                  "this size, slowly and less well; give --particle-diameter (e.g. 150A) to denoise at the model's "
                  f"scale and write at the input's size, or --downsample {bin_to_learned} to write "
                  "binned images", UserWarning, stacklevel=3)


def _warn_if_filtered(paths: Sequence[Path], settings: PickingSettings) -> None:
    """The general model learned from raw (unfiltered) micrographs, whose pixel noise is independent: say so when
    the first readable input looks low-pass filtered, and what is done about it (docs/general-model.md).

    Files that cannot be read, or too small to bin, are passed over here: the prediction reports each of them and
    goes on with the rest.
    """
    for path in paths:
        try:
            image = read_micrograph(path).data
        except UserInputError:
            continue
        if min(image.shape) / settings.downsample >= MIN_CORRELATION_SIDE_PX:
            break
    else:
        return
    correlation = fine_scale_neighbour_correlation(bin_image(image, settings.downsample))
    if correlation > FILTERED_NEIGHBOUR_CORRELATION:
        remedy = ("its spectrum is flattened beyond the particle's band before picking (so are the denoised images "
                  "written); `cryojoint denoise` keeps it" if settings.flatten_filtered_spectrum else
                  "its denoiser cannot tell noise from signal there")
        warnings.warn(f"{path}: neighbouring pixels correlate at {correlation:.2f} at fine scales: the micrograph "
                      f"looks low-pass filtered, the general model learned from raw micrographs: {remedy} "
                      "(fine-tuning on some labels with cryojoint train does better)", UserWarning, stacklevel=3)


def read_candidates(path: Path) -> pd.DataFrame:
    """One micrograph's candidates file (``candidates/<name>.csv``, full-precision scores); empty when it has none."""
    try:
        return read_coordinates(path, "csv")
    except UserInputError:  # an empty candidates file: no peaks at all
        return empty_table()


def _predict_sequential(model: LoadedModel, paths: Sequence[Path], out_dir: Path, settings: PickingSettings,
                        outputs: Sequence[str], device: torch.device, progress: bool,
                        should_stop: Callable[[], bool] | None = None) -> dict[str, str]:
    failures: dict[str, str] = {}
    with counted_progress(len(paths), progress, "predict" if settings.pick else "denoise") as advance:
        for done, path in enumerate(paths):
            if should_stop is not None and should_stop():
                raise StopRequested(f"prediction stopped on request after {done} of {len(paths)} micrographs")
            try:
                prediction = predict_micrograph(model, read_micrograph(path), settings, device)
                write_micrograph_outputs(prediction, out_dir, outputs)
            except UserInputError as err:
                failures[micrograph_name(path)] = err.one_line()
            advance()
    return failures


def _write_picks(picks: pd.DataFrame, out_dir: Path, formats: Sequence[str], micrographs: dict[str, Path],
                 particle_diameter_px: float) -> list[Path]:
    """The combined RELION STAR after the cut-off (always), one cryoSPARC ``picks.cs`` beside it for ``cs``,
    and one file per micrograph for every other format."""
    written = [write_coordinates(picks, out_dir / COMBINED_STAR, "star")]
    for fmt in formats:
        if fmt == "cs":
            located = attach_micrographs(picks, list(micrographs.values()), out_dir / COMBINED_STAR)
            written.append(write_coordinates(located, out_dir / COMBINED_CS, "cs"))
            continue
        folder = out_dir / "picks" / fmt
        written += write_coordinates_per_micrograph(picks, folder, fmt, names=list(micrographs),
                                                    box_size=box_size_px(fmt, particle_diameter_px))
    return written


#: What shaped the per-micrograph files of an output folder, written before its first micrograph.
OUTPUT_SETTINGS = "output_settings.json"


def _output_settings(model_path: str | Path, model: LoadedModel, settings: PickingSettings, outputs: Sequence[str],
                     network_dtype: torch.dtype | None) -> dict[str, Any]:
    """What shapes a micrograph's output files: a rerun into a folder of earlier outputs goes on (skipping the
    micrographs done) only when these are the same (the cut-off is not among them: it is applied over all
    candidates at the end; nor the tile size, which batches the same windows)."""
    return {
        "picked": settings.pick,
        "outputs": sorted(outputs),
        "model_sha256": model_file_sha256(model_path),
        "downsample": settings.downsample,
        "particle_diameter_px_input": settings.particle_diameter_px * settings.downsample,
        "nms_radius_px_input": settings.nms_radius_px * settings.downsample,
        "border_px_input": settings.border_px * settings.downsample,
        "denoised_at_input_size": settings.denoise_at_input_size or settings.downsample == 1,
        "flatten_filtered_spectrum": settings.flatten_filtered_spectrum,
        # The windows' overlap moves scores (picks vs time); bfloat16 vs float32 moves them within rounding, which
        # a user asking for the exact float32 pass does not want mixed with a bfloat16 run's files.
        "detector_window_stride_fraction": (settings.detector_window_stride_fraction
                                            or model.config.predict.detector_window_stride_fraction),
        "network_dtype": dtype_name(network_dtype),
        "particle_contrast": settings.particle_contrast,
    }


#: How each output setting reads in the refusal, by value (in the order _output_settings lists them).
_SETTING_WORDS: dict[str, Callable[[Any], str]] = {
    "picked": lambda v: "picked" if v else "denoised only",
    "outputs": lambda v: "outputs " + ",".join(map(str, v)),
    "model_sha256": lambda v: f"model {str(v)[:12]}",
    "downsample": lambda v: f"binned {float(v):g}x",
    "particle_diameter_px_input": lambda v: f"particle diameter {float(v):.4g} px",
    "nms_radius_px_input": lambda v: f"NMS radius {float(v):.4g} px",
    "border_px_input": lambda v: f"border {float(v):.4g} px",
    "denoised_at_input_size": lambda v: "denoised at the input's size" if v else "denoised binned",
    "flatten_filtered_spectrum": lambda v: f"spectrum flattening {'on' if v else 'off'}",
    "detector_window_stride_fraction": lambda v: f"detector windows every {float(v):g} of a window",
    "network_dtype": lambda v: f"network in {v}",
    "particle_contrast": lambda v: f"{v} particles",
}


#: What a setting was in folders written before it was recorded (None: unknown, not compared).
_BEFORE_RECORDED: dict[str, Any] = {"particle_contrast": AS_RECORDED}


def earlier_setting(out_dir: Path, key: str) -> Any:
    """One setting of the earlier run whose outputs ``out_dir`` holds (``None``: none, or no record), or what it was
    in records from before the setting was recorded (:data:`_BEFORE_RECORDED`)."""
    if not holds_earlier_outputs(out_dir):
        return None
    try:
        before = json.loads((out_dir / OUTPUT_SETTINGS).read_text())
    except (OSError, ValueError):
        return None
    return before.get(key, _BEFORE_RECORDED.get(key)) if isinstance(before, dict) else None


def holds_earlier_outputs(out_dir: str | Path) -> bool:
    """Whether a prediction folder holds micrographs done by an earlier run (their candidates files, or the denoised
    images that mark a denoise run's micrographs done)."""
    out_dir = Path(out_dir)
    return any((out_dir / CANDIDATE_DIR).glob("*.csv")) or any((out_dir / DENOISED_DIR).glob("*.mrc"))


def _check_same_outputs_as_before(out_dir: Path, now: dict[str, Any]) -> None:
    """Refuse to skip the micrographs of an earlier run made with other settings: the folder would mix the two."""
    try:
        before = json.loads((out_dir / OUTPUT_SETTINGS).read_text())
    except (OSError, ValueError):
        return  # a folder from before this record existed, or an unreadable record: nothing to compare with
    if not isinstance(before, dict):
        return
    for key, value in now.items():
        earlier = before.get(key, _BEFORE_RECORDED.get(key))
        if earlier is None or _same_setting(earlier, value):
            continue
        words = _SETTING_WORDS[key]
        try:
            there = words(earlier)
        except (TypeError, ValueError):
            there = repr(earlier)
        raise UserInputError(out_dir, f"holds the outputs of another run ({there} there, {words(value)} now), which "
                             "this one would skip and mix with its own: rerun with --overwrite to replace them, or "
                             "write to another folder")


def _check_no_other_micrographs(out_dir: Path, names: Sequence[str]) -> None:
    """Refuse a picking run into a folder holding micrographs it was not given: its picks.star and cut-off would
    cover this run's micrographs alone while the folder (and recut) holds the others too."""
    given = set(names)
    others = sorted(p.stem for p in (out_dir / CANDIDATE_DIR).glob("*.csv") if p.stem not in given)
    if others:
        raise UserInputError(out_dir, f"holds the picks of {len(others)} micrograph(s) this run was not given "
                             f"({first_names(others)}); picks.star and the cut-off cover the micrographs a run is "
                             "given: give them all (those done are skipped, so rerun with all of them as more arrive) "
                             "or write to another folder")


def _same_setting(earlier: Any, value: Any) -> bool:
    if isinstance(value, float) and not isinstance(earlier, bool) and isinstance(earlier, (int, float)):
        return bool(np.isclose(float(earlier), value, rtol=1e-6))
    return earlier == value


#: The run record a predict / denoise folder holds (written by :func:`_write_run_record`).
RUN_RECORD = "predict.json"


def read_run_record(folder: str | Path) -> dict[str, Any] | None:
    """A predict folder's run record, ``None`` when it has none; one that is not a JSON object is an error."""
    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(path, f"not valid JSON ({err.msg})") from None
    if not isinstance(values, dict):
        raise UserInputError(path, "not a JSON object")
    return values


def _write_run_record(out_dir: Path, model: LoadedModel, settings: PickingSettings, summary: PredictSummary,
                      model_path: str | Path, command_line: str | None, device: torch.device,
                      network_dtype: torch.dtype | None, output_settings: dict[str, Any],
                      micrograph_files: dict[str, str]) -> None:
    """``predict.json``: how the run was made, and where its inputs lie (absolute paths: `cryojoint report` shows
    the input micrographs and reads a trained model's record from them, wherever it is run from)."""
    from cryojoint import __version__

    record: dict[str, Any] = {
        "cryojoint_version": __version__,
        "command_line": command_line,
        "model": str(model_path),
        "threshold": summary.threshold,
        "threshold_was_automatic": summary.threshold_was_automatic,
        "auto_threshold_rule": settings.threshold_rule,
        "auto_threshold_rule_used": settings.automatic_rule,
        "auto_threshold_top_fraction": settings.top_fraction,
        "expected_particles_per_micrograph": settings.expected_per_micrograph,
        "window_stride_fraction": model.config.predict.window_stride_fraction,
        "device": str(device),
        "precision": settings.precision or model.config.predict.precision,
        "general_model": model.is_general,
        **output_settings,
        "denoising_bin_phases": len(bin_phase_offsets(settings.downsample)) if settings.averages_bin_phases else 1,
        "n_micrographs": summary.n_micrographs,
        "n_picks": summary.n_picks,
        "failures": summary.failures,
        "seconds_per_micrograph": summary.seconds_per_micrograph,
        "model_config": model.config.to_dict(),
        "micrograph_files": micrograph_files,
    }
    if not is_shipped_model(model_path):
        record["model_file"] = str(Path(model_path).resolve())
    with atomic_path(out_dir / RUN_RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=2))


__all__ = ["Predictions", "PredictSummary", "asks_for_picks", "holds_earlier_outputs", "predict", "predict_files",
           "SUFFIX_OF_FORMAT"]
