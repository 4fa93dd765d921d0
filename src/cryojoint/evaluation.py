"""The file and API layer of evaluation: score picks and denoised images given as files, folders or tables.

The numbers themselves are pure functions in :mod:`cryojoint.metrics` (matching, PR/AP/F1 in
``metrics.matching`` and ``metrics.picking``; PSNR, FRC and the low-pass reference in ``metrics.denoising``).
This module reads coordinate files and MRC folders, resolves the match radius from the truth
(:func:`resolve_match_radius`), and writes the JSON that ``cryojoint evaluate --json`` and the report use.

Every metric name is re-exported here, so ``from cryojoint.evaluation import match_picks, psnr, ...`` keeps
working for callers, the benchmark and notebooks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryojoint.errors import UserInputError, check_number
from cryojoint.metrics._numbers import json_number
from cryojoint.metrics.denoising import (
    DEFAULT_FRC_BAND,
    DEFAULT_LOWPASS_PERIOD_PX,
    DENOISING_METRICS,
    DenoisingReport,
    denoising_metrics,
    frc,
    frc_score,
    lowpass_reference,
    psnr,
)
from cryojoint.metrics.matching import (
    PRCurve,
    average_precision,
    match_picks,
    precision_recall_curve,
    step_average_precision,
)
from cryojoint.metrics.picking import (
    DEFAULT_EDGE_PX,
    GIVEN,
    PICK_COLUMNS,
    PickingReport,
    PickingResult,
    picking_metrics,
)

#: Written by ``cryojoint simulate`` next to ``truth.star``; its ``particle_diameter_px`` is the true particle
#: size, the only default match radius that is the same yardstick for every method scored against that truth.
TRUTH_METADATA_FILENAME = "simulation.yaml"

__all__ = [
    # metrics, re-exported from cryojoint.metrics
    "DEFAULT_EDGE_PX", "DEFAULT_FRC_BAND", "DEFAULT_LOWPASS_PERIOD_PX", "DENOISING_METRICS", "GIVEN",
    "PICK_COLUMNS", "DenoisingReport", "PRCurve", "PickingReport", "PickingResult", "average_precision",
    "denoising_metrics", "frc", "frc_score", "lowpass_reference", "match_picks", "picking_metrics", "psnr",
    "precision_recall_curve", "step_average_precision",
    # files and API
    "TRUTH_METADATA_FILENAME", "evaluate", "evaluate_denoised_dirs", "evaluate_files", "evaluate_pick_files",
    "resolve_match_radius", "truth_particle_diameter",
]


# ============================================================================================ files and API


def _read_mrc_dir(folder: str | Path, what: str) -> dict[str, Any]:
    """Micrographs of a folder keyed by micrograph name (``*.mrc``, case-insensitive)."""
    from cryojoint.io.mrc import micrograph_name, read_micrograph

    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(folder, f"is a file; expected a folder of {what} MRCs" if folder.exists()
                             else f"{what} folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".mrc")
    if not files:
        raise UserInputError(folder, f"{what} folder holds no .mrc files")
    images: dict[str, Any] = {}
    for path in files:
        name = micrograph_name(path)
        if name in images:
            raise UserInputError(path, f"two files in the {what} folder share the micrograph name '{name}'")
        images[name] = read_micrograph(path)
    return images


def evaluate_pick_files(
    picks_path: str | Path | Sequence[str | Path],
    truth_path: str | Path | Sequence[str | Path],
    match_radius: float,
    threshold: float | None = None,
    mask_dir: str | Path | None = None,
    exclude_mask_values: bool | Sequence[float] = False,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    edge_px: float = DEFAULT_EDGE_PX,
) -> PickingReport:
    """:func:`picking_metrics` on coordinate files (any format ``read_coordinates`` knows).

    ``mask_dir`` holds one mask MRC per micrograph, named like the micrograph; its shapes also give the
    image shapes for edge recall.
    """
    from cryojoint.io.coords import read_coordinates

    picks = read_coordinates(picks_path)
    truth = read_coordinates(truth_path)
    masks = None
    if mask_dir is not None:
        masks = {name: m.data for name, m in _read_mrc_dir(mask_dir, "mask").items()}
    return picking_metrics(picks, truth, match_radius, threshold=threshold, masks=masks,
                           exclude_mask_values=exclude_mask_values, shapes=shapes, edge_px=edge_px)


def evaluate_denoised_dirs(
    denoised_dir: str | Path,
    reference_dir: str | Path,
    clean_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    lowpass_angstrom: float | None = None,
) -> DenoisingReport:
    """:func:`denoising_metrics` on folders of MRCs matched by micrograph name.

    Every denoised file needs a counterpart in ``reference_dir`` (and ``clean_dir``, ``mask_dir`` when
    given); a missing one is a :class:`UserInputError` naming the file. The pixel size comes from the
    reference headers.
    """
    denoised = _read_mrc_dir(denoised_dir, "denoised")
    references = _read_mrc_dir(reference_dir, "reference")
    clean = _read_mrc_dir(clean_dir, "clean") if clean_dir is not None else None
    masks = _read_mrc_dir(mask_dir, "mask") if mask_dir is not None else None
    for other, folder, what in ((references, reference_dir, "reference"), (clean, clean_dir, "clean"),
                                (masks, mask_dir, "mask")):
        if other is None:
            continue
        for name, micrograph in denoised.items():
            if name not in other:
                raise UserInputError(micrograph.path, f"no {what} image named '{name}.mrc' in {folder}")
    pixel_sizes = {m.pixel_size for n, m in references.items() if n in denoised and m.pixel_size}
    pixel_size = min(pixel_sizes) if pixel_sizes else None
    if lowpass_angstrom is not None and len(pixel_sizes) > 1:
        raise UserInputError(reference_dir, f"reference images have different pixel sizes {sorted(pixel_sizes)}")
    if lowpass_angstrom is not None and pixel_size is None:
        raise UserInputError(reference_dir, "reference images have no pixel size in their headers; "
                             "cannot convert the low-pass cut-off from Å")
    return denoising_metrics(
        {n: m.data for n, m in denoised.items()},
        {n: references[n].data for n in denoised},
        clean={n: clean[n].data for n in denoised} if clean is not None else None,
        masks={n: masks[n].data for n in denoised} if masks is not None else None,
        pixel_size=pixel_size,
        lowpass_angstrom=lowpass_angstrom,
    )


def _as_table(value: pd.DataFrame | str | Path | Sequence[str | Path]) -> pd.DataFrame:
    if isinstance(value, pd.DataFrame):
        return value
    from cryojoint.io.coords import read_coordinates

    return read_coordinates(value)


def _prediction_as_candidates(picks: Any, threshold: float | None,
                              ) -> tuple[Any, float | None, list[str] | None, list[str]]:
    """A prediction (a notebook's ``predict()`` result or a predict output folder) is scored as what it means:
    every candidate ranked (AP), P/R/F1 at the run's own cut-off unless told one, on the micrographs it covered
    (returned third; ``None`` for other picks, which pass unchanged). A folder's micrographs whose prediction failed
    are covered too, as picking nothing (returned fourth): left out, they would flatter recall."""
    from cryojoint.prediction import CANDIDATES_STAR, Predictions
    from cryojoint.recut import is_prediction_folder, read_prediction_folder

    if isinstance(picks, Predictions):
        tables = [m.candidates for m in picks.micrographs]
        if not tables:
            raise UserInputError("picks", "the prediction holds no micrographs")
        return (pd.concat(tables, ignore_index=True), picks.threshold if threshold is None else threshold,
                [m.name for m in picks.micrographs], [])
    if isinstance(picks, (str, Path)) and is_prediction_folder(picks):
        run = read_prediction_folder(picks)
        return (run.candidates, run.threshold if threshold is None else threshold, run.micrographs + run.failed,
                run.failed)
    if isinstance(picks, (str, Path)) and Path(picks).name == CANDIDATES_STAR and is_prediction_folder(
            Path(picks).parent):
        # The file as asked (no cut-off unless given), with the scores predict compared at full precision: the
        # 6 decimals of a STAR predicted before it was written at full precision put candidates under a cut-off.
        return read_prediction_folder(Path(picks).parent).candidates, threshold, None, []
    return picks, threshold, None, []


def _check_not_a_training_run(folder: Path) -> None:
    """A training run's folder holds no picks (read as coordinate files, its metrics.csv lacked x and y): say where
    its predictions are, or how to make them."""
    from cryojoint.checkpoint import MODEL_NAME
    from cryojoint.prediction import COMBINED_STAR
    from cryojoint.recut import is_prediction_folder

    if not (folder / MODEL_NAME).is_file() or (folder / COMBINED_STAR).exists():
        return
    predicted = next((f for f in (folder / "pred", folder.parent) if is_prediction_folder(f)), None)  # demo; RELION
    remedy = (f"its predictions are in {predicted}: --picks {predicted}" if predicted is not None
              else f"predict with it first (cryojoint predict {folder / MODEL_NAME} MICROGRAPHS --out PRED) and "
              "evaluate --picks PRED")
    raise UserInputError(folder, f"is a training run ({MODEL_NAME}), which holds no picks; {remedy}")


def _shapes_of_predicted_inputs(picks: Any) -> dict[str, tuple[int, int]] | None:
    """Image sizes, from the headers of the input micrographs a predict folder's run record names (those still
    there); ``None`` for other picks, or a record from before it named them."""
    from cryojoint.io.mrc import micrograph_shape
    from cryojoint.prediction import read_run_record
    from cryojoint.recut import is_prediction_folder

    if not (isinstance(picks, (str, Path)) and is_prediction_folder(picks)):
        return None
    files = (read_run_record(picks) or {}).get("micrograph_files")
    if not isinstance(files, dict):
        return None
    shapes = {}
    for name, path in files.items():
        try:
            shapes[str(name)] = micrograph_shape(path)
        except (UserInputError, OSError):  # moved or damaged since: its edge recall is left out
            continue
    return shapes or None


def _covered_micrographs(predicted: list[str] | None, truth: pd.DataFrame) -> list[str] | None:
    """The truth's micrographs a prediction covered: a truth file usually lists more (the training micrographs
    too), and scoring those as missed would put every recall and AP far below what the picker did. ``None``
    (every truth micrograph) for plain picks, which cannot say which micrographs were looked at."""
    if predicted is None:
        return None
    covered = set(predicted)
    names = [name for name in dict.fromkeys(truth["micrograph"].astype(str)) if name in covered]
    return names or None  # none in common: picking_metrics says so


def _as_picks(value: pd.DataFrame | str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """Picks to score: a file that exists but holds none (a cut-off that kept nothing) scores as no picks."""
    try:
        return _as_table(value)
    except UserInputError as err:
        if "no particle coordinates found" not in err.problem:
            raise
        from cryojoint.io.coords import empty_table

        return empty_table()


def _as_images(value: Mapping[str, np.ndarray] | str | Path, what: str) -> dict[str, np.ndarray]:
    if isinstance(value, Mapping):
        return {str(k): np.asarray(v) for k, v in value.items()}
    return {name: m.data for name, m in _read_mrc_dir(value, what).items()}


def evaluate(
    picks: pd.DataFrame | str | Path | None = None,
    truth: pd.DataFrame | str | Path | None = None,
    denoised: Mapping[str, np.ndarray] | str | Path | None = None,
    reference: Mapping[str, np.ndarray] | str | Path | None = None,
    clean: Mapping[str, np.ndarray] | str | Path | None = None,
    masks: Mapping[str, np.ndarray] | str | Path | None = None,
    match_radius: float | None = None,
    threshold: float | None = None,
    exclude_mask_values: bool | Sequence[float] = False,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    pixel_size: float | None = None,
    lowpass_angstrom: float | None = None,
) -> dict[str, PickingReport | DenoisingReport]:
    """Evaluate picks and/or denoised images; in-memory objects or paths, from a notebook or the CLI.

    Parameters
    ----------
    picks, truth
        Coordinate tables (micrograph, x, y, score) or coordinate file paths. Both or neither. ``picks`` may also
        be a prediction, what :func:`cryojoint.predict` returns or a ``predict`` output folder: every candidate is
        scored (AP), and precision, recall and F1 at its cut-off unless ``threshold`` is given, on the truth's
        micrographs it predicted (plain picks: on every micrograph of the truth).
    denoised, reference, clean, masks
        Dicts ``name -> 2D array`` or folders of MRCs named by micrograph.
    match_radius
        Largest pick-to-particle distance (px), typically the true particle radius. ``None``: the particle
        radius of the *truth* (:func:`resolve_match_radius`; needs ``truth`` as a path), never a size estimated
        by the method scored, so every method is measured with the same yardstick.
    threshold, exclude_mask_values, shapes
        See :func:`picking_metrics`.
    pixel_size, lowpass_angstrom
        See :func:`denoising_metrics`.

    Returns
    -------
    dict
        ``{"picking": PickingReport}`` and/or ``{"denoising": DenoisingReport}``.

    Examples
    --------
    >>> reports = evaluate(picks=picks_table, truth=truth_table, match_radius=12)  # doctest: +SKIP
    >>> reports["picking"].overall.average_precision  # doctest: +SKIP
    """
    reports: dict[str, PickingReport | DenoisingReport] = {}
    if (picks is None) != (truth is None):
        raise UserInputError("evaluate", "picks and truth go together: give both or neither")
    if picks is not None and truth is not None:
        if shapes is None and masks is None:  # edge recall needs the image sizes: a predict folder knows its inputs
            shapes = _shapes_of_predicted_inputs(picks)
        picks, threshold, predicted, failed = _prediction_as_candidates(picks, threshold)
        picks_table, truth_table = _as_picks(picks), _as_table(truth)  # missing files first
        radius_px, radius_source = resolve_match_radius(match_radius, truth)
        picking = picking_metrics(
            picks_table, truth_table, radius_px, threshold=threshold,
            masks=_as_images(masks, "mask") if masks is not None else None,
            exclude_mask_values=exclude_mask_values, shapes=shapes,
            micrographs=_covered_micrographs(predicted, truth_table),
        )
        picking.match_radius_source = radius_source
        truth_names = set(truth_table["micrograph"].astype(str))
        picking.failed_prediction_micrographs = [name for name in failed if name in truth_names]
        reports["picking"] = picking
    if (denoised is None) != (reference is None):
        raise UserInputError("evaluate", "denoised images need reference images (and vice versa)")
    if denoised is not None and reference is not None:
        paths_only = all(v is None or isinstance(v, (str, Path)) for v in (denoised, reference, clean, masks))
        if paths_only and pixel_size is None:  # folders: pixel size from the MRC headers
            reports["denoising"] = evaluate_denoised_dirs(denoised, reference, clean_dir=clean, mask_dir=masks,
                                                          lowpass_angstrom=lowpass_angstrom)
        else:
            reports["denoising"] = denoising_metrics(
                _as_images(denoised, "denoised"), _as_images(reference, "reference"),
                clean=_as_images(clean, "clean") if clean is not None else None,
                masks=_as_images(masks, "mask") if masks is not None else None,
                pixel_size=pixel_size, lowpass_angstrom=lowpass_angstrom,
            )
    if not reports:
        raise UserInputError("evaluate", "nothing to evaluate: give picks and truth, or denoised and reference")
    return reports


def _truth_paths(truth: object) -> list[Path]:
    if isinstance(truth, (str, Path)):
        return [Path(truth)]
    if isinstance(truth, Sequence) and all(isinstance(t, (str, Path)) for t in truth):
        return [Path(t) for t in truth]
    return []  # a table: no file to look beside


def truth_particle_diameter(truth: pd.DataFrame | str | Path | Sequence[str | Path]) -> tuple[float, Path] | None:
    """The true particle diameter (px) recorded with a truth file, and the file that records it.

    Coordinate formats carry no particle size, so it is read from ``simulation.yaml`` (written by
    ``cryojoint simulate``, key ``particle_diameter_px``) in the folder holding the truth file; for a folder of
    truth files, in that folder or the one holding it. ``None`` when there is no such file (e.g. real data) or
    the truth is an in-memory table.
    """
    import yaml

    folders: list[Path] = []
    for path in _truth_paths(truth):
        for folder in ([path, path.parent] if path.is_dir() else [path.parent]):
            if folder not in folders:
                folders.append(folder)
    for folder in folders:
        record = folder / TRUTH_METADATA_FILENAME
        if not record.is_file():
            continue
        try:
            values = yaml.safe_load(record.read_text())
        except (OSError, yaml.YAMLError):
            continue
        diameter = values.get("particle_diameter_px") if isinstance(values, dict) else None
        if isinstance(diameter, (int, float)) and not isinstance(diameter, bool) and math.isfinite(diameter) \
                and diameter > 0:
            return float(diameter), record
    return None


def resolve_match_radius(
    match_radius: float | None, truth: pd.DataFrame | str | Path | Sequence[str | Path]
) -> tuple[float, str]:
    """The match radius (px) to score picks against ``truth`` with, and where it came from.

    A given ``match_radius`` is used as is (source ``"given"``). Otherwise the radius is half the *true*
    particle diameter recorded with the truth (:func:`truth_particle_diameter`; source
    ``"truth: particle radius from <file>"``). It is deliberately never taken from the picks' own run
    (``predict.json``) or from the truth's spacing: a model that over-estimates the particle size would get a
    more lenient radius and an inflated AP, and picks from different tools would be scored with different
    yardsticks. With no size known for the truth a match radius must be given (:class:`UserInputError`).
    """
    if match_radius is not None:
        return float(match_radius), GIVEN
    found = truth_particle_diameter(truth)
    if found is not None:
        diameter, record = found
        return diameter / 2, f"truth: particle radius from {record}"
    paths = _truth_paths(truth)
    if not paths:
        raise UserInputError("evaluate", "picking against an in-memory truth table needs a match radius "
                             "(match_radius, px, typically the true particle radius)")
    raise UserInputError(paths[0], f"no particle size known for this truth (no {TRUTH_METADATA_FILENAME} with "
                         "particle_diameter_px beside it): give the match radius (--match-radius) in px, "
                         "typically the true particle radius")


def evaluate_files(
    picks: str | Path | None = None,
    truth: str | Path | None = None,
    match_radius: float | None = None,
    threshold: float | None = None,
    mask_dir: str | Path | None = None,
    denoised_dir: str | Path | None = None,
    reference_dir: str | Path | None = None,
    clean_dir: str | Path | None = None,
    lowpass_angstrom: float | None = None,
    json_path: str | Path | None = None,
    exclude_mask_values: bool | Sequence[float] = False,
) -> dict[str, PickingReport | DenoisingReport]:
    """What ``cryojoint evaluate`` does: score files and folders, optionally write everything as JSON.

    The match radius defaults to the *true* particle radius recorded with the truth (``simulation.yaml``
    beside it, see :func:`resolve_match_radius`), the same for every method scored against that truth; without
    one, ``match_radius`` is required. The JSON holds ``match_radius_px`` and ``match_radius_source``.
    """
    check_number(match_radius, "--match-radius", above=0)
    check_number(threshold, "--threshold")
    check_number(lowpass_angstrom, "--lowpass-angstrom", above=0)
    if json_path is not None:
        from cryojoint._atomic import check_report_file

        check_report_file(json_path, ".json", "--json")
    if isinstance(picks, (str, Path)):
        _check_not_a_training_run(Path(picks))
    reports = evaluate(picks=picks, truth=truth, denoised=denoised_dir, reference=reference_dir, clean=clean_dir,
                       masks=mask_dir,
                       match_radius=match_radius, threshold=threshold, exclude_mask_values=exclude_mask_values,
                       lowpass_angstrom=lowpass_angstrom)
    if json_path is not None:
        from cryojoint._atomic import atomic_path

        payload = {}
        for key, report in reports.items():
            payload[key] = report.to_dict(include_curves=True) if isinstance(report, PickingReport) \
                else report.to_dict()
        picking = reports.get("picking")
        if isinstance(picking, PickingReport):
            payload["match_radius_px"] = picking.match_radius
            payload["match_radius_source"] = picking.match_radius_source
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(payload, indent=2, default=json_number))
    return reports
