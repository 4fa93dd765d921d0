"""Reading a run folder for the report: every input optional, a damaged one a row of the inputs table.

:func:`load_run` gathers what ``cryojoint train``, ``predict``, ``evaluate --json``, the demo and the benchmark
left in a run folder into a :class:`RunContents`; the small accessors below answer what the run knows (its
match radius, binning, cut-off, micrographs) from whichever record holds it. Nothing here draws or lays out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cryojoint.errors import UserInputError

#: The demo keeps its run in this subfolder; ``cryojoint report DEMO_DIR`` looks there too.
DEMO_RUN_SUBFOLDER = "run"
PRED_SUBFOLDER = "pred"
#: Where a RELION External job (``cryojoint relion``) keeps its training run: its predictions sit in the job folder.
RELION_TRAIN_SUBFOLDER = "train"
TRAINING_FILES = ("config.yaml", "metrics.csv", "model.pt")


# ============================================================================================ reading the run


@dataclass
class InputStatus:
    """One row of the "what this page is built from" table."""

    what: str
    path: Path
    status: str  # "found", "missing", or "unreadable: ..."
    hint: str = ""


@dataclass
class RunContents:
    """Everything the report found in a run folder; ``None`` for what is missing or unreadable."""

    run_dir: Path
    pred_dir: Path
    config_text: str | None = None
    config: dict[str, Any] | None = None
    metrics: pd.DataFrame | None = None
    model_meta: dict[str, Any] | None = None
    predict_record: dict[str, Any] | None = None
    candidates: pd.DataFrame | None = None
    picks: pd.DataFrame | None = None
    evaluation: dict[str, Any] | None = None
    sources: dict[str, Any] | None = None
    benchmark: dict[str, Any] | None = None
    truth: pd.DataFrame | None = None
    denoised_files: dict[str, Path] = field(default_factory=dict)
    #: The input micrographs predict.json names (absolute paths, those still there), by micrograph name.
    input_files: dict[str, Path] = field(default_factory=dict)
    #: A ``cryojoint predict`` / ``denoise`` output folder alone: no training run, no evaluation, demo or benchmark
    #: records. Its page leaves out what such a folder never holds instead of listing it as missing.
    prediction_only: bool = False
    #: A folder written by ``cryojoint denoise`` (or ``predict`` without picks): no picks, scores or cut-off to show.
    denoise_only: bool = False
    inputs: list[InputStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return any(row.status == "found" for row in self.inputs)


def _read_json_object(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _read_config(path: Path) -> tuple[str, dict[str, Any]]:
    import yaml

    text = path.read_text()
    values = yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError("not a YAML mapping")
    return text, values


def _read_metrics(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    if "step" not in table.columns:
        raise ValueError("no 'step' column")
    table = table.apply(pd.to_numeric, errors="coerce")
    return table.dropna(subset=["step"]).sort_values("step").reset_index(drop=True)


def _read_model_meta(path: Path) -> dict[str, Any]:
    from cryojoint.checkpoint import read_model_file

    meta = read_model_file(path).get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError("model metadata is not a mapping")
    return meta


#: How read_coordinates describes a file that is valid but holds no rows (a micrograph without any peak).
_NO_COORDINATES_PHRASES = ("no particle coordinates", "file is empty")


def _read_coordinates_or_empty(path: Path, fmt: str | None = None) -> pd.DataFrame:
    """A coordinate file as a table; a valid file without rows is an empty table, not an error."""
    from cryojoint.io.coords import empty_table, read_coordinates

    try:
        return read_coordinates(path, fmt)
    except UserInputError as err:
        if any(phrase in err.problem for phrase in _NO_COORDINATES_PHRASES):
            return empty_table()
        raise


def _read_candidate_folder(folder: Path) -> pd.DataFrame:
    from cryojoint.io.coords import empty_table

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not files:
        raise ValueError("no candidate .csv files")
    tables = [t for t in (_read_coordinates_or_empty(path, "csv") for path in files) if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else empty_table()


def _resolve_source(value: Any, run_dir: Path) -> Path | None:
    """A path named in sources.json; relative paths are relative to the run folder."""
    if not value or not isinstance(value, str):
        return None
    path = Path(value)
    return path if path.is_absolute() else run_dir / path


def _try_read(contents: RunContents, what: str, path: Path, reader: Callable[[Path], Any], hint: str = "") -> Any:
    """Read one input; a missing or damaged file becomes a row of the inputs table, never an exception.

    A report is looked at to find out what went wrong, so a damaged file must not hide the rest of the page.
    """
    if not path.exists():
        contents.inputs.append(InputStatus(what, path, "missing", hint))
        return None
    try:
        value = reader(path)
    except Exception as err:  # noqa: BLE001 - any damage to one file is reported on the page, not raised
        detail = err.problem if isinstance(err, UserInputError) else f"{err.__class__.__name__}: {err}"
        contents.inputs.append(InputStatus(what, path, f"unreadable: {detail}", hint))
        return None
    contents.inputs.append(InputStatus(what, path, "found", hint))
    return value


def _has_run_files(folder: Path) -> bool:
    names = ("config.yaml", "metrics.csv", "model.pt", "evaluation.json", "sources.json", "benchmark.json",
             PRED_SUBFOLDER, "predict.json", "candidates")
    return any((folder / name).exists() for name in names)


def load_run(run_dir: str | Path) -> RunContents:
    """Read every report input of a run folder that exists; note the rest.

    Parameters
    ----------
    run_dir
        A run folder (``cryojoint train --out``), a demo folder (its ``run/`` subfolder is used) or a
        prediction folder (``cryojoint predict --out``).

    Raises
    ------
    UserInputError
        The folder does not exist or holds nothing a report can be made from.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserInputError(run_dir, "run folder not found")
    if not run_dir.is_dir():
        raise UserInputError(run_dir, "is a file; expected a run folder (from cryojoint train, predict or demo)")
    if not _has_run_files(run_dir) and _has_run_files(run_dir / DEMO_RUN_SUBFOLDER):
        run_dir = run_dir / DEMO_RUN_SUBFOLDER
    is_prediction_folder = (run_dir / "predict.json").exists() or (run_dir / "candidates").is_dir()
    pred_dir = run_dir if is_prediction_folder and not (run_dir / PRED_SUBFOLDER).exists() else run_dir / PRED_SUBFOLDER
    contents = RunContents(run_dir=run_dir, pred_dir=pred_dir)
    train_dir = run_dir
    if (not any((run_dir / name).exists() for name in TRAINING_FILES)
            and any((run_dir / RELION_TRAIN_SUBFOLDER / name).exists() for name in TRAINING_FILES)):
        train_dir = run_dir / RELION_TRAIN_SUBFOLDER  # a RELION job folder: the run that made its model

    config = _try_read(contents, "config", train_dir / "config.yaml", _read_config, "written by cryojoint train")
    if config is not None:
        contents.config_text, contents.config = config
    contents.metrics = _try_read(contents, "training metrics", train_dir / "metrics.csv", _read_metrics,
                                 "written by cryojoint train")
    contents.model_meta = _try_read(contents, "model", train_dir / "model.pt", _read_model_meta,
                                    "written by cryojoint train")
    predict_hint = "written by cryojoint predict"
    contents.predict_record = _try_read(contents, "prediction record", pred_dir / "predict.json",
                                        _read_json_object, predict_hint)
    contents.denoise_only = (contents.predict_record or {}).get("picked") is False
    if not contents.denoise_only:
        contents.candidates = _try_read(contents, "candidate peaks", pred_dir / "candidates", _read_candidate_folder,
                                        predict_hint)
        contents.picks = _try_read(contents, "picks", pred_dir / "picks.star", _read_coordinates_or_empty,
                                   predict_hint)
    denoised_dir = pred_dir / "denoised"
    files = _try_read(contents, "denoised micrographs", denoised_dir, _list_mrc_files, predict_hint)
    contents.denoised_files = files or {}
    contents.evaluation = _try_read(contents, "evaluation", run_dir / "evaluation.json", _read_json_object,
                                    "written by cryojoint evaluate --json")
    contents.sources = _try_read(contents, "sources (inputs, truth, references)", run_dir / "sources.json",
                                 _read_json_object, "written by cryojoint demo and the benchmark")
    truth_path = _resolve_source((contents.sources or {}).get("truth"), run_dir)
    if truth_path is not None:
        from cryojoint.io.coords import read_coordinates

        contents.truth = _try_read(contents, "truth (true particle positions)", truth_path, read_coordinates,
                                   "named by sources.json")
    contents.benchmark = _try_read(contents, "benchmark", run_dir / "benchmark.json", _read_json_object,
                                   "written by the benchmark driver")
    record = contents.predict_record or {}
    # A user's own evaluation.json (the page suggests one) adds scores; it does not make training files due.
    contents.prediction_only = record != {} and all(
        value is None for value in (contents.config, contents.metrics, contents.model_meta, contents.sources,
                                    contents.benchmark))
    files = record.get("micrograph_files")
    if isinstance(files, dict):
        contents.input_files = {str(name): Path(path) for name, path in files.items()
                                if isinstance(path, str) and Path(path).is_file()}
    model_file = record.get("model_file")
    if contents.model_meta is None and isinstance(model_file, str):
        contents.model_meta = _try_read(contents, "model (the one predict ran)", Path(model_file), _read_model_meta,
                                        "named by predict.json")
    if not contents.usable:
        problems = [f"{row.path.name}: {row.status}" for row in contents.inputs if row.status != "missing"]
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise UserInputError(run_dir, "holds nothing to report on: none of config.yaml, metrics.csv, model.pt, "
                             f"pred/, evaluation.json, sources.json, benchmark.json could be read{detail}")
    return contents


def _list_mrc_files(folder: Path) -> dict[str, Path]:
    from cryojoint.io.mrc import micrograph_name

    files = {micrograph_name(p): p for p in sorted(folder.iterdir()) if p.suffix.lower() == ".mrc"}
    if not files:
        raise ValueError("no .mrc files")
    return files


# ========================================================================================= what the run knows


def _number(value: Any) -> float | None:
    """A finite float, or ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _picking(contents: RunContents) -> dict[str, Any] | None:
    picking = (contents.evaluation or {}).get("picking")
    return picking if isinstance(picking, dict) else None


def _denoising(contents: RunContents) -> dict[str, Any] | None:
    denoising = (contents.evaluation or {}).get("denoising")
    return denoising if isinstance(denoising, dict) else None


def _match_radius(contents: RunContents) -> float | None:
    """The radius the evaluation used; else the particle radius of the prediction or the model."""
    evaluation = contents.evaluation or {}
    for value in (evaluation.get("match_radius_px"), (_picking(contents) or {}).get("match_radius")):
        if _number(value):
            return float(value)
    diameter = _particle_diameter_input_px(contents)
    return None if diameter is None else diameter / 2


def _downsample(contents: RunContents) -> float:
    """The network's bin factor (fractional since the general model: 1.43 for a 52 px particle at 36 px)."""
    for record in (contents.predict_record, contents.model_meta):
        value = _number((record or {}).get("downsample"))
        if value and value >= 1:
            return float(value)
    return 1.0


def _particle_diameter_input_px(contents: RunContents) -> float | None:
    value = _number((contents.predict_record or {}).get("particle_diameter_px_input"))
    if value:
        return value
    value = _number((contents.model_meta or {}).get("particle_diameter_px"))
    return None if value is None else value * _downsample(contents)


def _threshold(contents: RunContents) -> float | None:
    return _number((contents.predict_record or {}).get("threshold"))


def _micrograph_names(contents: RunContents) -> list[str]:
    """Micrographs to show: the test set named by sources.json, else whatever was predicted."""
    listed = (contents.sources or {}).get("test_micrographs")
    if isinstance(listed, list) and listed:
        return [str(name) for name in listed]
    names = list(contents.denoised_files)
    for table in (contents.candidates, contents.picks):
        if table is not None:
            names += [n for n in dict.fromkeys(table["micrograph"].astype(str)) if n not in names]
    return names


def _picks_of(contents: RunContents, name: str) -> pd.DataFrame | None:
    """Picks after the cut-off on one micrograph (picks.star, else candidates at or above the cut-off)."""
    if contents.picks is not None:
        return contents.picks[contents.picks["micrograph"].astype(str) == name]
    threshold = _threshold(contents)
    if contents.candidates is not None and threshold is not None:
        rows = contents.candidates[contents.candidates["micrograph"].astype(str) == name]
        return rows[rows["score"] >= threshold]
    return None
