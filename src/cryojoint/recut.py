"""Re-cut picks from a ``predict`` output without the network: another cut-off, or N picks per micrograph.

``predict`` keeps every NMS peak with its score (``candidates.star``, and ``candidates/<mic>.csv`` per
micrograph, empty for a micrograph without peaks), so choosing another cut-off is a filter, done in seconds.
:func:`pick_counts` tells how many picks each micrograph keeps at a range of cut-offs, and
:func:`threshold_summary` draws the score histogram, so users choose by looking, not by re-running.
Scores are log-odds (0 = probability 0.5), as everywhere in cryojoint.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryojoint._atomic import atomic_path, check_can_write, check_report_file
from cryojoint.errors import UserInputError, check_number
from cryojoint.inference import CANDIDATE_DIR
from cryojoint.io.coords import (
    WRITERS,
    empty_table,
    per_micrograph_file,
    read_coordinates,
    write_coordinates,
    write_coordinates_per_micrograph,
)
from cryojoint.prediction import (
    CANDIDATES_STAR,
    COMBINED_STAR,
    asks_for_picks,
    box_size_px,
    earlier_setting,
    read_candidates,
    read_run_record,
)

RECORD_NAME = "pick.json"
HISTOGRAM_NAME = "score_histogram.png"

#: Cut-offs shown by ``cryojoint threshold`` when none are given: this many, spread over the candidates' scores.
DEFAULT_CUTOFF_COUNT = 7
#: ... between these quantiles of all candidate scores (the extremes say little).
DEFAULT_CUTOFF_QUANTILES = (0.05, 0.95)


@dataclass
class PredictionFolder:
    """What a ``predict`` run left: every candidate, the micrographs it covered and its own cut-off."""

    folder: Path
    candidates: pd.DataFrame
    micrographs: list[str]  # every micrograph predicted, those without candidates too
    threshold: float | None
    particle_diameter_px: float | None
    #: Micrographs the last run failed on (predict.json): asked for, with no candidates file.
    failed: list[str] = field(default_factory=list)


#: What a predict folder's readers say when a file its run writes last is missing.
UNFINISHED_RUN = "not found: the predict run did not finish (rerun predict to complete it)"


def is_prediction_folder(path: str | Path) -> bool:
    """Whether ``path`` is a ``predict`` output folder. Read as a folder of coordinate files it would give the same
    picks several times (``picks.star``, ``candidates.star``, ``picks.cs``): its readers take the file they mean.
    One whose run stopped before writing ``candidates.star`` is one too, so that its readers say so."""
    path = Path(path)
    return path.is_dir() and (path / CANDIDATE_DIR).is_dir()


def _picked(folder: Path) -> bool:
    """Whether the run that wrote ``folder`` picked, as its output settings say; True when they do not say."""
    outputs = earlier_setting(folder, "outputs")
    return not isinstance(outputs, list) or asks_for_picks(outputs)


def read_prediction_folder(folder: str | Path) -> PredictionFolder:
    """Read ``candidates.star`` / ``candidates/`` and ``predict.json`` of a ``predict`` output folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(folder, "not found (expected a predict output folder)" if not folder.exists()
                             else "is a file; expected a predict output folder")
    if not _picked(folder):
        raise UserInputError(folder, "holds no picks: it was written by cryojoint denoise or predict --outputs "
                             "without picks (run predict with picks to pick)")
    per_micrograph = sorted((folder / CANDIDATE_DIR).glob("*.csv"))
    if not per_micrograph:
        raise UserInputError(folder, f"no {CANDIDATE_DIR}/*.csv: not a cryojoint predict output folder")
    names = [p.stem for p in per_micrograph]
    star = folder / CANDIDATES_STAR
    if not star.is_file():
        raise UserInputError(star, UNFINISHED_RUN)
    try:
        candidates = read_coordinates(star, "star")
    except UserInputError as err:
        if "no particle coordinates" not in err.problem:
            raise
        candidates = empty_table()  # no peak in any micrograph
    candidates = _with_full_precision_scores(candidates, per_micrograph)
    values = read_run_record(folder)
    threshold = diameter = None
    failed: list[str] = []
    if values is not None:
        threshold, diameter = values.get("threshold"), values.get("particle_diameter_px_input")
        failures = values.get("failures")
        failed = [str(name) for name in failures if str(name) not in names] if isinstance(failures, dict) else []
    return PredictionFolder(folder, candidates, names, threshold, diameter, failed)


def _with_full_precision_scores(candidates: pd.DataFrame, per_micrograph: list[Path]) -> pd.DataFrame:
    """``candidates`` with the scores of the per-micrograph CSVs, what predict chose its cut-off on. Folders
    predicted before the STAR was written with the CSVs' digits (io.coords.FLOAT_FORMAT)
    hold 6 decimals there, and bfloat16 logits put distinct scores closer than that (measured: -3.40625 and a
    cut-off of -3.406249762 became equal), so a re-cut at the run's own cut-off kept extra picks."""
    tables = [table for table in map(read_candidates, per_micrograph) if len(table)]
    if not tables or not len(candidates):
        return candidates

    def keys(table: pd.DataFrame) -> list[tuple[str, float, float]]:
        return list(zip(table["micrograph"].astype(str), table["x"].round(3), table["y"].round(3)))

    full = pd.concat(tables, ignore_index=True)
    exact = dict(zip(keys(full), full["score"].to_numpy(float)))
    result = candidates.copy()
    result["score"] = [exact.get(key, score) for key, score in zip(keys(candidates), candidates["score"])]
    return result


def recut(candidates: pd.DataFrame, threshold: float | None = None, count: int | None = None) -> pd.DataFrame:
    """Candidates at or above ``threshold``, or the ``count`` best of each micrograph (exactly one is given)."""
    if (threshold is None) == (count is None):
        raise UserInputError(None, "give either --threshold X or --count N")
    if threshold is not None:
        # Scores at full precision (read_prediction_folder), as predict compared them with its cut-off.
        return candidates[candidates["score"] >= float(threshold)].reset_index(drop=True)
    if count is None or count < 1:
        raise UserInputError(None, "--count must be at least 1")
    ranked = candidates.sort_values("score", ascending=False, kind="stable")
    kept = ranked.groupby("micrograph", sort=False).head(count)
    return candidates.loc[sorted(kept.index)].reset_index(drop=True)


def pick_files(prediction: str | Path, out: str | Path, threshold: float | None = None, count: int | None = None,
               formats: Sequence[str] = ("star",), overwrite: bool = False) -> tuple[pd.DataFrame, list[Path]]:
    """Write ``out/picks.star`` (+ ``out/picks/<format>/`` per micrograph) re-cut from a predict output."""
    unknown = [f for f in formats if f not in WRITERS or f == "cs"]
    if unknown:
        hint = (" (for cryoSPARC: cryojoint convert OUT/picks.star picks.cs --micrographs ...)"
                if "cs" in unknown else "")
        raise UserInputError(None, f"--formats: cannot write '{unknown[0]}' here (star, box, cbox, csv, "
                             f"topaz){hint}")
    check_number(threshold, "--threshold")
    run = read_prediction_folder(prediction)
    picks = recut(run.candidates, threshold, count)
    out = Path(out)
    if out.resolve() == run.folder.resolve():
        raise UserInputError(out, "is the predict folder itself; write the re-cut picks to another folder")
    targets = [out / COMBINED_STAR, out / RECORD_NAME]
    targets += [per_micrograph_file(out / "picks" / fmt, name, fmt) for fmt in formats for name in run.micrographs]
    for target in targets:  # every check before the first write: no half-written output folder
        check_can_write(target, overwrite)
    if overwrite:
        _remove_earlier_picks(out, set(targets))
    written = []
    for fmt in formats:
        written += write_coordinates_per_micrograph(picks, out / "picks" / fmt, fmt, names=run.micrographs,
                                                    box_size=box_size_px(fmt, run.particle_diameter_px),
                                                    overwrite=overwrite)
    written.append(write_coordinates(picks, out / COMBINED_STAR, "star", overwrite=overwrite))
    record = {"source": str(run.folder), "threshold": threshold, "count_per_micrograph": count,
              "n_picks": int(len(picks)), "n_micrographs": len(run.micrographs),
              "predict_threshold": run.threshold, "files": [str(p.relative_to(out)) for p in written]}
    with atomic_path(out / RECORD_NAME, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return picks, [*written, out / RECORD_NAME]


def _remove_earlier_picks(out: Path, targets: set[Path]) -> None:
    """The files an earlier ``pick`` into ``out`` wrote (its ``pick.json`` lists them) that this one will not
    replace: left, they would hold its cut-off's picks (other formats, other micrographs) beside this one's."""
    try:
        earlier = json.loads((out / RECORD_NAME).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return  # no record (or one from before it listed its files): nothing is known to be ours
    for name in earlier if isinstance(earlier, list) else []:
        path = out / str(name)
        if path not in targets and path.is_file() and out.resolve() in path.resolve().parents:
            path.unlink()
            with contextlib.suppress(OSError):  # its format's folder, when nothing else is left in it
                path.parent.rmdir()


def default_cutoffs(scores: np.ndarray, run_threshold: float | None) -> list[float]:
    """A few round cut-offs spread over the scores, and the run's own cut-off among them."""
    finite = scores[np.isfinite(scores)]
    if not len(finite):
        return [] if run_threshold is None else [float(run_threshold)]
    low, high = np.quantile(finite, DEFAULT_CUTOFF_QUANTILES)
    values = {float(f"{v:.2g}") for v in np.linspace(low, high, DEFAULT_CUTOFF_COUNT)}
    if run_threshold is not None:
        values.add(round(float(run_threshold), 3))
    return sorted(values)


def pick_counts(prediction: PredictionFolder, cutoffs: Sequence[float]) -> pd.DataFrame:
    """Picks per micrograph (rows, every micrograph of the run) at each cut-off (columns), with a total row."""
    candidates = prediction.candidates
    table = pd.DataFrame(index=pd.Index(prediction.micrographs, name="micrograph"))
    for cut in cutoffs:
        kept = candidates[candidates["score"] >= cut]["micrograph"].astype(str).value_counts()
        table[f"{cut:g}"] = kept.reindex(table.index, fill_value=0).astype(int)
    table.loc["total"] = table.sum(axis=0)
    return table


def threshold_summary(prediction: str | Path, cutoffs: Sequence[float] | None = None,
                      png: str | Path | None = None) -> tuple[pd.DataFrame, Path, PredictionFolder]:
    """Picks per micrograph at ``cutoffs`` (default: spread over the scores) and the score histogram PNG
    (default: ``PRED_DIR/score_histogram.png``), the run's cut-off marked."""
    from cryojoint.report.figures import FIGURE_DPI, score_histogram_figure

    for cutoff in cutoffs or ():
        check_number(cutoff, "--cutoffs")
    run = read_prediction_folder(prediction)
    scores = run.candidates["score"].to_numpy(float)
    chosen = list(cutoffs) if cutoffs else default_cutoffs(scores, run.threshold)
    if not chosen:
        raise UserInputError(run.folder, "no candidate scores to cut (no peak was found in any micrograph)")
    png_path = Path(png) if png is not None else run.folder / HISTOGRAM_NAME
    check_report_file(png_path, ".png", "--png")
    if not np.isfinite(scores).any():
        raise UserInputError(run.folder, "no candidate scores to draw")
    figure = score_histogram_figure(scores, run.threshold)
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=FIGURE_DPI, facecolor="white")
    return pick_counts(run, chosen), png_path, run
