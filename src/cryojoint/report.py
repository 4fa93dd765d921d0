"""One self-contained HTML page that shows a structural biologist what a run did.

The page is built from whatever the run folder holds; every input is optional and the page says which are
missing:

``config.yaml``, ``metrics.csv``, ``model.pt``
    written by ``cryojoint train`` (the model's ``meta`` says the mode, the particle diameter and whether it
    was estimated, the best step);
``pred/``
    written by ``cryojoint predict``: ``denoised/<name>.mrc``, ``candidates/<name>.csv`` (every NMS peak with
    its score), ``picks.star`` (after the cut-off) and ``predict.json`` (the cut-off and how it was chosen);
``evaluation.json``
    written by :func:`cryojoint.evaluation.evaluate_files` with ``json_path``;
``sources.json``
    written by the demo and the benchmark: where the inputs, the truth and the references are::

        {"data": DIR, "dose": "dose_020", "truth": STAR, "reference": DIR, "clean": DIR, "masks": DIR,
         "test_micrographs": [NAME, ...]}

    The low-dose inputs are ``<data>/<dose>/<name>.mrc``, the full-dose references ``<reference>/<name>.mrc``;
    relative paths are taken relative to the run folder;
``benchmark.json``
    written by the benchmark driver, in this structure (every key optional)::

        {"title": "...",
         "tables": {TITLE: {"columns": [COLUMN, ...], "rows": {METHOD: [VALUE, ...]}, "caption": "..."}},
         "pr_curves": {DOSE: {METHOD: {"precision": [...], "recall": [...], "average_precision": AP}}},
         "notes": ["...", ...]}

    Each row holds one value per column (numbers are shown with 3 decimals, ``null`` as "-"); a row may also
    be a mapping ``{COLUMN: VALUE}``. A curve lists precision and recall at decreasing cut-offs; its AP is
    computed as the step-wise area when not given.

Figures are drawn with matplotlib on the Agg canvas (no pyplot, no global backend change) and embedded as
base64 PNG, so the page has no external resources and can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cryojoint._atomic import atomic_path
from cryojoint.errors import UserInputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

REPORT_NAME = "report.html"
#: The demo keeps its run in this subfolder; ``cryojoint report DEMO_DIR`` looks there too.
DEMO_RUN_SUBFOLDER = "run"
PRED_SUBFOLDER = "pred"
#: Longest side of a displayed micrograph with its picks (px); larger images are block-averaged down.
MAX_DISPLAY_PX = 768
#: Longest side of one panel of the input | denoised | reference row (three panels fill a page width).
PANEL_DISPLAY_PX = 384
MAX_MICROGRAPHS_SHOWN = 4
#: Every panel is stretched linearly between these percentiles of its own pixels (robust to gold and ice).
CONTRAST_PERCENTILES = (1.0, 99.0)
FIGURE_DPI = 100
#: Colours kept when a figure with colour is stored as a palette PNG.
PALETTE_COLOURS = 256
HISTOGRAM_BINS = 60
#: The score histogram switches to a log count axis when its fullest bin holds this many times the emptiest.
LOG_HISTOGRAM_RANGE = 30
#: Columns of metrics.csv, in display order, with their labels.
TRAINING_LOSS_LABELS: dict[str, str] = {
    "loss": "total loss",
    "loss_denoise": "denoising loss (Gaussian NLL)",
    "loss_detect": "detection loss (PU)",
    "loss_consistency": "consistency loss",
}
VALIDATION_LABELS: dict[str, str] = {
    "validation_denoise_loss": "validation denoising loss",
    "validation_ap": "validation AP",
}
LEARNING_RATE_LABEL = "learning rate"
#: Colour-blind-safe colours (Okabe & Ito) that stand out on grey micrographs; misses are also dashed.
PICK_STYLES: dict[str, dict[str, Any]] = {
    "true_positive": {"color": "#56B4E9", "linestyle": "-", "label": "true positive"},
    "false_positive": {"color": "#E69F00", "linestyle": "-", "label": "false positive"},
    "missed": {"color": "#FF5CCB", "linestyle": "--", "label": "missed particle"},
    "pick": {"color": "#56B4E9", "linestyle": "-", "label": "pick"},
}
CIRCLE_LINE_WIDTH = 1.3
#: Circle radius in particle radii: circles outline the particle, as RELION and cryoSPARC draw them.
CIRCLE_RADIUS_PARTICLE_RADII = 1.0
#: Circle radius (input px) when neither the particle size nor a match radius is known.
FALLBACK_CIRCLE_RADIUS_PX = 10.0
CURVE_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
#: Light iso-F1 contours drawn behind PR curves, to read F1 off the plot.
ISO_F1_LEVELS = (0.2, 0.4, 0.6, 0.8)
SMALL_MULTIPLE_COLUMNS = 3


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

    config = _try_read(contents, "config", run_dir / "config.yaml", _read_config, "written by cryojoint train")
    if config is not None:
        contents.config_text, contents.config = config
    contents.metrics = _try_read(contents, "training metrics", run_dir / "metrics.csv", _read_metrics,
                                 "written by cryojoint train")
    contents.model_meta = _try_read(contents, "model", run_dir / "model.pt", _read_model_meta,
                                    "written by cryojoint train")
    predict_hint = "written by cryojoint predict"
    contents.predict_record = _try_read(contents, "prediction record", pred_dir / "predict.json",
                                        _read_json_object, predict_hint)
    contents.candidates = _try_read(contents, "candidate peaks", pred_dir / "candidates", _read_candidate_folder,
                                    predict_hint)
    contents.picks = _try_read(contents, "picks", pred_dir / "picks.star", _read_coordinates_or_empty, predict_hint)
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


# ============================================================================================ small helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _fmt(value: Any, digits: int = 3) -> str:
    """Numbers with ``digits`` decimals (integers as integers), missing values as '-'."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if _is_number(value):
        number = float(value)
        if not math.isfinite(number):
            return "-" if math.isnan(number) else ("∞" if number > 0 else "-∞")
        if number != 0 and abs(number) < 10 ** (-digits):
            return f"{number:.2e}"
        return f"{number:.{digits}f}"
    return str(value)


def _number(value: Any) -> float | None:
    """A finite float, or ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _missing(text: str) -> str:
    return f'<p class="missing"><strong>Missing:</strong> {text}</p>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _table_html(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "",
                highlight_last: bool = False) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = []
    for index, row in enumerate(rows):
        cells = []
        for position, value in enumerate(row):
            numeric = _is_number(value) or value is None
            css = ' class="num"' if numeric and position > 0 else ""
            cells.append(f"<td{css}>{_esc(_fmt(value))}</td>")
        css = ' class="total"' if highlight_last and index == len(rows) - 1 else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    caption_html = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return (f'<div class="table-wrap"><table>{caption_html}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


# ============================================================================================ figures


def _new_figure(width_in: float, height_in: float) -> Figure:
    """A figure on the Agg canvas: no pyplot state, no GUI, no change of the user's backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    return figure


def _figure_html(figure: Figure, alt: str, caption: str = "") -> str:
    """The figure as an ``<img>`` with base64 PNG data (and an optional caption)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, facecolor="white", metadata={"Software": None})
    data = base64.b64encode(_compact_png(buffer.getvalue())).decode("ascii")
    caption_html = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img alt="{_esc(alt)}" src="data:image/png;base64,{data}">{caption_html}</figure>'


def _compact_png(png: bytes) -> bytes:
    """Re-encode a rendered figure with one byte per pixel: greyscale if it is all grey, else 256 colours.

    Matplotlib writes RGBA; a noisy micrograph in RGBA costs about four times its greyscale size, which would
    push a page of four micrographs well past 5 MB. Palette quantisation (median cut, deterministic) only
    merges near-identical shades of the antialiased edges; the few saturated pick colours keep their own
    entries. Pillow is a dependency of matplotlib.
    """
    from PIL import Image

    rgb = Image.open(io.BytesIO(png)).convert("RGB")
    channels = np.asarray(rgb)
    is_grey = bool(np.array_equal(channels[..., 0], channels[..., 1])
                   and np.array_equal(channels[..., 1], channels[..., 2]))
    compact = rgb.convert("L") if is_grey else rgb.quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    compact.save(out, format="png", optimize=True)
    return out.getvalue()


def _display_image(image: np.ndarray, max_side: int) -> tuple[np.ndarray, int]:
    """Block-average ``image`` so its longest side is at most ``max_side``; return it and the bin factor."""
    from cryojoint.imaging import bin_image

    factor = max(1, int(math.ceil(max(image.shape) / max_side)))
    return bin_image(np.asarray(image, dtype=np.float32), factor), factor


def _contrast_limits(image: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(image, CONTRAST_PERCENTILES)
    if not high > low:
        low, high = float(image.min()), float(image.max()) + 1e-6
    return float(low), float(high)


def _show_image(ax: Axes, image: np.ndarray, title: str) -> None:
    low, high = _contrast_limits(image)
    ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def _show_placeholder(ax: Axes, title: str, text: str) -> None:
    ax.set_facecolor("#f1f3f5")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="#555", wrap=True,
            transform=ax.transAxes)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor("#ccc")


def _grid(n_panels: int, columns: int = SMALL_MULTIPLE_COLUMNS, panel_in: tuple[float, float] = (3.8, 2.6)
          ) -> tuple[Figure, list[Axes]]:
    n_columns = min(columns, n_panels)
    n_rows = int(math.ceil(n_panels / n_columns))
    figure = _new_figure(panel_in[0] * n_columns, panel_in[1] * n_rows)
    axes = list(np.atleast_1d(figure.subplots(n_rows, n_columns, squeeze=False)).ravel())
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return figure, axes[:n_panels]


def _iso_f1(ax: Axes) -> None:
    recall = np.linspace(0.01, 1.0, 200)
    for level in ISO_F1_LEVELS:
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = level * recall / (2 * recall - level)
        visible = (precision > 0) & (precision <= 1.05)
        ax.plot(recall[visible], precision[visible], color="#dddddd", linewidth=0.8, zorder=0)
        anchor = np.flatnonzero(visible)
        if anchor.size:
            ax.annotate(f"F1={level:g}", (recall[anchor[-1]], precision[anchor[-1]]), fontsize=7,
                        color="#aaaaaa", xytext=(-30, 3), textcoords="offset points")


def _style_pr_axes(ax: Axes, title: str) -> None:
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.25)


def _curve_arrays(curve: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Precision and recall of a stored curve with missing points dropped; ``None`` if unusable."""
    if not isinstance(curve, Mapping):
        return None
    try:
        precision = np.array([np.nan if v is None else v for v in curve.get("precision", [])], dtype=float)
        recall = np.array([np.nan if v is None else v for v in curve.get("recall", [])], dtype=float)
    except (TypeError, ValueError):
        return None
    if precision.size == 0 or precision.shape != recall.shape:
        return None
    finite = np.isfinite(precision) & np.isfinite(recall)
    return (precision[finite], recall[finite]) if finite.any() else None


def _plot_pr(ax: Axes, precision: np.ndarray, recall: np.ndarray, **style: Any) -> None:
    """A step-wise PR curve drawn as AP integrates it: precision P_k holds on (R_{k-1}, R_k], from recall 0."""
    ax.plot(np.concatenate([[0.0], recall]), np.concatenate([precision[:1], precision]), drawstyle="steps-pre",
            **style)


# ============================================================================================ what the run knows


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


def _downsample(contents: RunContents) -> int:
    for record in (contents.predict_record, contents.model_meta):
        value = _number((record or {}).get("downsample"))
        if value and value >= 1:
            return int(value)
    return 1


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


def _read_image(path: Path | None, what: str, contents: RunContents) -> np.ndarray | None:
    from cryojoint.io.mrc import read_micrograph

    if path is None or not path.exists():
        return None
    try:
        return read_micrograph(path).data
    except UserInputError as err:
        contents.notes.append(f"{_esc(what)} could not be read: {_esc(err.one_line())}")
        return None


# ============================================================================================ sections


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
    else:
        parts.append(_missing("headline AP/F1/PSNR: no evaluation.json (run <code>cryojoint evaluate --json</code> "
                              "with the truth and references)."))

    rows: list[tuple[str, str]] = []
    mode = meta.get("mode") or (config.get("train") or {}).get("mode")
    if mode:
        rows.append(("mode", str(mode)))
    diameter = _particle_diameter_input_px(contents)
    if diameter is not None:
        if "particle_diameter_estimated" in meta:
            how = "estimated from the labels" if meta["particle_diameter_estimated"] else "given by the user"
        else:
            how = "unknown whether estimated or given (model.pt not read)"
        rows.append(("particle diameter", f"{_fmt(diameter, 1)} px in input pixels ({how})"))
    downsample = _downsample(contents)
    if downsample > 1:
        rows.append(("binning inside the network", f"{downsample}× (coordinates are in input pixels)"))
    if "expected_particles" in meta:
        how = "estimated" if meta.get("expected_particles_estimated") else "given"
        rows.append(("expected particles per micrograph", f"{_fmt(meta['expected_particles'], 1)} ({how})"))
    if meta.get("best_step") is not None:
        rows.append(("best step (model kept)", _fmt(meta["best_step"])))
    if contents.metrics is not None and len(contents.metrics):
        rows.append(("steps trained", _fmt(int(contents.metrics["step"].max()))))
    threshold = _threshold(contents)
    if threshold is not None:
        expected = _number(record.get("expected_particles_per_micrograph"))
        rule = record.get("auto_threshold_rule_used") or (
            "expected-count" if record.get("auto_threshold_rule") == "expected-count" and expected else "quantile")
        if record.get("threshold_was_automatic") and rule == "expected-count" and expected:
            how = (f"automatic: keeps as many picks as the expected particle density predicts "
                   f"({_fmt(expected, 1)} per micrograph of the training micrographs' size)")
        elif record.get("threshold_was_automatic"):
            fraction = _number(record.get("auto_threshold_top_fraction"))
            share = f"the top {fraction:.0%}" if fraction is not None else "the top share"
            how = f"automatic: keeps {share} of all candidate peak scores of the run"
        else:
            how = "fixed (given with --threshold or in the config)"
        rows.append(("score cut-off", f"{_fmt(threshold)} — {how}"))
    if _number(record.get("nms_radius_px_input")):
        rows.append(("NMS radius", f"{_fmt(record['nms_radius_px_input'], 1)} px"))
    n_picks = record.get("n_picks")
    if n_picks is None and contents.picks is not None:
        n_picks = len(contents.picks)
    if n_picks is not None:
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
    if not contents.model_meta:
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
    if not contents.sources:
        parts.append(_missing("sources.json: the low-dose inputs, full-dose references and the truth are "
                              "unknown, so only the denoised images and the picks are shown."))
    elif truth is None:
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
        input_path = data_dir / dose / f"{name}.mrc" if data_dir is not None and dose else None
        reference_path = reference_dir / f"{name}.mrc" if reference_dir is not None else None
        low_dose = _read_image(input_path, f"input {name}", contents)
        denoised = _read_image(contents.denoised_files.get(name), f"denoised {name}", contents)
        reference = _read_image(reference_path, f"reference {name}", contents)
        parts.append(f'<h3 id="mic-{_esc(name)}">{_esc(name)}</h3>')
        parts.append(_triptych(name, dose, low_dose, denoised, reference))
        parts.append(_overlay(contents, name, low_dose, denoised, truth, radius))
    return "".join(parts)


def _triptych(name: str, dose: str, low_dose: np.ndarray | None, denoised: np.ndarray | None,
              reference: np.ndarray | None) -> str:
    panels = [(f"low-dose input ({dose})" if dose else "low-dose input", low_dose,
               "input not found\n(needs sources.json)"),
              ("denoised", denoised, "no denoised image\n(pred/denoised/)"),
              ("full-dose reference", reference, "no full-dose reference\n(needs sources.json)")]
    side_in = PANEL_DISPLAY_PX / FIGURE_DPI
    figure = _new_figure(3 * side_in + 0.4, side_in + 0.45)
    axes = figure.subplots(1, 3)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.04)
    described: list[str] = []
    for ax, (title, image, absent) in zip(axes, panels):
        if image is None:
            _show_placeholder(ax, title, absent)
            continue
        shown, factor = _display_image(image, PANEL_DISPLAY_PX)
        _show_image(ax, shown, title)
        binned = f", shown binned {factor}×" if factor > 1 else ""
        described.append(f"{title}: {image.shape[1]}×{image.shape[0]} px{binned}")
    return _figure_html(figure, f"{name}: low-dose input, denoised and full-dose reference",
                        _esc("; ".join(described)))


def _overlay(contents: RunContents, name: str, low_dose: np.ndarray | None, denoised: np.ndarray | None,
             truth: pd.DataFrame | None, radius: float | None) -> str:
    """Picks on the denoised image; with the truth, true/false positives and misses in their own colours."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    from cryojoint.evaluation import match_picks

    picks = _picks_of(contents, name)
    if picks is None:
        return _missing(f"picks for {_esc(name)}: no pred/picks.star and no candidates with a cut-off.")
    background, what = (denoised, "denoised") if denoised is not None else (low_dose, "low-dose input")
    if background is None:
        return _missing(f"an image to draw the picks of {_esc(name)} on (no denoised image, no input).")
    # Picks are in input pixels; the denoised image may be binned by the network's downsampling.
    input_width = low_dose.shape[1] if low_dose is not None else None
    if what == "denoised":
        to_image = input_width / background.shape[1] if input_width else float(_downsample(contents))
    else:
        to_image = 1.0
    shown, factor = _display_image(background, MAX_DISPLAY_PX)
    scale = to_image * factor

    def to_display(table: pd.DataFrame) -> np.ndarray:
        xy = table[["x", "y"]].to_numpy(float).reshape(-1, 2)
        return (xy + 0.5) / scale - 0.5

    diameter = _particle_diameter_input_px(contents)
    particle_radius = diameter / 2 if diameter else radius
    circle_radius = CIRCLE_RADIUS_PARTICLE_RADII * (particle_radius or FALLBACK_CIRCLE_RADIUS_PX) / scale
    pick_xy = to_display(picks)
    groups: dict[str, np.ndarray] = {}
    title = f"{name}: {len(picks)} picks on the {what} image"
    true_rows = None if truth is None else truth[truth["micrograph"].astype(str) == name]
    if true_rows is not None and radius is not None:
        matched_pick, matched_true = match_picks(picks[["x", "y"]].to_numpy(float).reshape(-1, 2),
                                                 true_rows[["x", "y"]].to_numpy(float).reshape(-1, 2), radius)
        is_tp = np.zeros(len(picks), bool)
        is_tp[matched_pick] = True
        found = np.zeros(len(true_rows), bool)
        found[matched_true] = True
        groups = {"true_positive": pick_xy[is_tp], "false_positive": pick_xy[~is_tp],
                  "missed": to_display(true_rows)[~found]}
        precision = is_tp.sum() / len(picks) if len(picks) else float("nan")
        recall = found.sum() / len(true_rows) if len(true_rows) else float("nan")
        title += f" — precision {_fmt(precision)}, recall {_fmt(recall)} (match radius {_fmt(radius, 1)} px)"
    else:
        groups = {"pick": pick_xy}

    width_in = shown.shape[1] / FIGURE_DPI
    height_in = shown.shape[0] / FIGURE_DPI
    legend_in = 0.45
    figure = _new_figure(width_in + 0.2, height_in + legend_in + 0.35)
    total_h = height_in + legend_in + 0.35
    ax = figure.add_axes((0.1 / (width_in + 0.2), legend_in / total_h, width_in / (width_in + 0.2),
                          height_in / total_h))
    low, high = _contrast_limits(shown)
    ax.imshow(shown, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    ax.set_axis_off()
    handles = []
    for key, xy in groups.items():
        style = PICK_STYLES[key]
        for x, y in xy:
            ax.add_patch(Circle((x, y), circle_radius, fill=False, edgecolor=style["color"],
                                linestyle=style["linestyle"], linewidth=CIRCLE_LINE_WIDTH))
        handles.append(Line2D([], [], marker="o", markersize=10, markerfacecolor="none", linestyle="none",
                              markeredgecolor=style["color"], markeredgewidth=1.5,
                              label=f"{style['label']} ({len(xy)})"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    ax.set_xlim(-0.5, shown.shape[1] - 0.5)
    ax.set_ylim(shown.shape[0] - 0.5, -0.5)
    caption = _esc(title)
    if "missed" not in groups:
        caption += " (truth unknown, so picks are not classified)"
    return _figure_html(figure, f"{name}: picks overlaid on the {what} image", caption)


def score_histogram_figure(scores: np.ndarray, threshold: float | None,
                           near_truth: np.ndarray | None = None) -> Figure:
    """Histogram of candidate peak scores with the cut-off marked (and, when known, which peaks are particles).

    Shared by the report and ``cryojoint threshold``: one picture of where the cut-off falls, however drawn.
    """
    scores = np.asarray(scores, dtype=float)
    finite = np.isfinite(scores)
    edges = np.histogram_bin_edges(scores[finite], bins=HISTOGRAM_BINS)
    figure = _new_figure(9.0, 3.6)
    ax = figure.add_subplot()
    if near_truth is not None:
        ax.hist([scores[finite & near_truth], scores[finite & ~near_truth]], bins=edges, stacked=True,
                color=[PICK_STYLES["true_positive"]["color"], "#9aa0a6"],
                label=["matches a true particle", "matches none (background or duplicate)"])
    else:
        ax.hist(scores[finite], bins=edges, color="#6c8ebf", label="candidate peaks")
    counts, _ = np.histogram(scores[finite], bins=edges)
    log_scale = counts.max() > LOG_HISTOGRAM_RANGE * max(counts[counts > 0].min(), 1)
    if log_scale:
        from matplotlib.ticker import FormatStrFormatter, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("peak score (log-odds of a particle; 0 = probability 0.5)")
    ax.set_ylabel("number of peaks" + (" (log scale)" if log_scale else ""))
    if threshold is not None:
        kept = int((scores[finite] >= threshold).sum())
        ax.axvline(threshold, color="#D55E00", linewidth=2,
                   label=f"cut-off {_fmt(threshold)}: keeps {kept} of {int(finite.sum())}")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.grid(alpha=0.25)
    figure.tight_layout()
    return figure


def _score_section(contents: RunContents) -> str:
    candidates = contents.candidates
    if candidates is None or not len(candidates):
        return _missing("pred/candidates/: the scores of all candidate peaks (run <code>cryojoint predict</code>).")
    from cryojoint.evaluation import match_picks

    scores = candidates["score"].to_numpy(float)
    finite = np.isfinite(scores)
    if not finite.any():
        return _missing("scores: the candidate files hold no scores.")
    threshold = _threshold(contents)
    truth = contents.truth
    radius = _match_radius(contents)
    near_truth = None
    if truth is not None and radius is not None:
        truth_names = set(truth["micrograph"].astype(str))
        near_truth = np.zeros(len(candidates), bool)
        evaluated = np.zeros(len(candidates), bool)
        names = candidates["micrograph"].astype(str).to_numpy()
        for name in dict.fromkeys(names):
            if name not in truth_names:
                continue
            rows = np.flatnonzero(names == name)
            true_xy = truth.loc[truth["micrograph"].astype(str) == name, ["x", "y"]].to_numpy(float)
            matched, _ = match_picks(candidates.iloc[rows][["x", "y"]].to_numpy(float), true_xy, radius)
            near_truth[rows[matched]] = True
            evaluated[rows] = True
        if not evaluated.any():
            near_truth = None
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
    from cryojoint.evaluation import picking_metrics

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


def _evaluation_pr_figure(picking: dict[str, Any] | None,
                          candidate_curve: tuple[np.ndarray, np.ndarray, float] | None, radius: float | None) -> str:
    figure = _new_figure(6.4, 5.2)
    ax = figure.add_subplot()
    _iso_f1(ax)
    caption = ("Each point is one score cut-off; picks match true particles one-to-one within the match radius. "
               "Grey lines: iso-F1.")
    if candidate_curve is not None:
        precision, recall, ap = candidate_curve
        if precision.size:
            _plot_pr(ax, precision, recall, color=CURVE_COLOURS[2], linewidth=1.5, linestyle="--",
                     label=f"all candidate peaks (AP {_fmt(ap)})")
        caption += (" Dashed: every candidate peak, before the cut-off (what a lower cut-off would reach).")
    if picking is not None:
        overall = picking["overall"]
        drew_thin = False
        for result in picking.get("per_micrograph") or []:
            arrays = _curve_arrays(result.get("curve", {})) if isinstance(result, dict) else None
            if arrays is not None:
                _plot_pr(ax, arrays[0], arrays[1], color="#9aa0a6", linewidth=0.8,
                         label=None if drew_thin else "single micrographs")
                drew_thin = True
        arrays = _curve_arrays(overall.get("curve", {}))
        if arrays is not None:
            _plot_pr(ax, arrays[0], arrays[1], color=CURVE_COLOURS[0], linewidth=2,
                     label=f"evaluated picks, all micrographs (AP {_fmt(overall.get('average_precision'))})")
        else:
            caption += " The evaluation holds no curve (evaluate with json_path to store one)."
        precision, recall = _number(overall.get("precision")), _number(overall.get("recall"))
        if precision is not None and recall is not None:
            ax.plot([recall], [precision], "o", color="#D55E00", markersize=8,
                    label=f"at the cut-off (F1 {_fmt(overall.get('f1'))})")
    ax.legend(fontsize=8, loc="best")
    _style_pr_axes(ax, "Precision-recall" + (f" (match radius {_fmt(radius, 1)} px)" if radius else ""))
    figure.tight_layout()
    return _figure_html(figure, "precision-recall curve of this run", caption)


def _benchmark_pr_figure(curves: dict[str, Any], contents: RunContents) -> str:
    from cryojoint.evaluation import step_average_precision

    doses = [d for d, methods in curves.items() if isinstance(methods, dict) and methods]
    if not doses:
        return _note("benchmark.json: pr_curves holds no usable curves.")
    figure, axes = _grid(len(doses), panel_in=(4.2, 3.8))
    skipped: list[str] = []
    for ax, dose in zip(axes, doses):
        _iso_f1(ax)
        for index, (method, curve) in enumerate(curves[dose].items()):
            arrays = _curve_arrays(curve)
            if arrays is None:
                skipped.append(f"{dose}/{method}")
                continue
            precision, recall = arrays
            ap = _number(curve.get("average_precision")) if isinstance(curve, Mapping) else None
            ap = step_average_precision(precision, recall) if ap is None else ap
            _plot_pr(ax, precision, recall, color=CURVE_COLOURS[index % len(CURVE_COLOURS)], linewidth=1.6,
                     label=f"{method} (AP {ap:.3f})")
        ax.legend(fontsize=7, loc="lower left")
        _style_pr_axes(ax, str(dose))
    figure.tight_layout()
    html_parts = [_figure_html(figure, "benchmark precision-recall curves per dose and method",
                               "One panel per dose fraction, one line per method (AP in the legend).")]
    if skipped:
        html_parts.append(_note(f"Curves without usable precision/recall skipped: {_esc(', '.join(skipped))}."))
    return "".join(html_parts)


def _training_section(contents: RunContents) -> str:
    metrics = contents.metrics
    if metrics is None or not len(metrics):
        return _missing("metrics.csv: no training curves (written by <code>cryojoint train</code>).")
    labels = {**TRAINING_LOSS_LABELS, **VALIDATION_LABELS, "lr": LEARNING_RATE_LABEL}
    columns = [c for c in labels if c in metrics.columns and metrics[c].notna().any()]
    if not columns:
        return _missing("metrics.csv has a step column but no loss or validation columns.")
    best_step = _number((contents.model_meta or {}).get("best_step"))
    figure, axes = _grid(len(columns))
    steps = metrics["step"].to_numpy(float)
    for ax, column in zip(axes, columns):
        values = metrics[column].to_numpy(float)
        present = np.isfinite(values)
        colour = CURVE_COLOURS[1] if column in VALIDATION_LABELS else CURVE_COLOURS[0]
        ax.plot(steps[present], values[present], color=colour, marker="o" if present.sum() < 30 else None,
                markersize=3, linewidth=1.5)
        if best_step is not None:
            ax.axvline(best_step, color="#555", linestyle=":", linewidth=1)
        ax.set_title(labels[column], fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25)
        if column == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    figure.tight_layout()
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
    from cryojoint.evaluation import DENOISING_METRICS

    parts: list[str] = []
    picking = _picking(contents)
    if picking and isinstance(picking.get("overall"), dict):
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
    else:
        parts.append(_missing("picking table: evaluation.json has no picking results."))
    denoising = _denoising(contents)
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
    else:
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


#: Section id, heading, and the function that renders it (in page order).
SECTIONS: tuple[tuple[str, str, Callable[[RunContents], str]], ...] = (
    ("summary", "Summary", _summary_section),
    ("micrographs", "Micrographs: input, denoised, reference and picks", _micrographs_section),
    ("scores", "Score distribution and cut-off", _score_section),
    ("pr-curves", "Precision-recall curves", _pr_section),
    ("training", "Training", _training_section),
    ("tables", "Tables", _tables_section),
)


# ============================================================================================ the page


CSS = """
:root { --ink: #1d2430; --muted: #5b6472; --line: #dde2e8; --accent: #0b5cad; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #fff; line-height: 1.5; font-size: 15px; }
header { background: #13293d; color: #fff; padding: 20px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header .sub { color: #c7d3e0; font-size: 13px; word-break: break-all; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--line); padding: 8px 32px;
      z-index: 1; font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 18px; white-space: nowrap; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 32px 48px; }
section { border-bottom: 1px solid var(--line); padding: 12px 0 24px; }
h2 { font-size: 19px; margin: 16px 0 10px; }
h3 { font-size: 16px; margin: 20px 0 8px; }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 16px; }
.card { background: var(--bg); border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px;
        min-width: 130px; }
.card-value { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card-label { font-weight: 600; }
.card-detail { color: var(--muted); font-size: 12px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13.5px; }
caption { caption-side: top; text-align: left; color: var(--muted); padding-bottom: 4px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: var(--bg); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; border-top: 2px solid #b8c0ca; }
table.kv th { font-weight: 600; color: var(--muted); white-space: nowrap; }
td.status-ok { color: #16713a; }
td.status-bad { color: #a23b00; }
.missing { background: #fff7e0; border-left: 4px solid #e0a800; padding: 6px 12px; margin: 8px 0; }
.note { color: var(--muted); font-size: 13.5px; }
.warning { background: #fdecea; border-left: 4px solid #c62828; padding: 6px 12px; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 10px; overflow-x: auto; }
details summary { cursor: pointer; color: var(--accent); }
"""


def render_report(contents: RunContents) -> str:
    """The whole HTML page for a loaded run (see :func:`write_report`)."""
    from cryojoint import __version__

    bodies: list[str] = []
    for section_id, heading, render in SECTIONS:
        try:
            body = render(contents)
        except Exception as err:  # noqa: BLE001 - one broken section must not cost the user the whole page
            body = (f'<p class="warning">This section could not be drawn ({_esc(err.__class__.__name__)}: '
                    f"{_esc(err)}). Please report this as a cryojoint bug.</p>")
        bodies.append(f'<section id="{section_id}"><h2>{_esc(heading)}</h2>{body}</section>')
    notes = "".join(f'<p class="warning">{note}</p>' for note in dict.fromkeys(contents.notes))
    nav = "".join(f'<a href="#{section_id}">{_esc(heading.split(":")[0])}</a>' for section_id, heading, _ in SECTIONS)
    title = f"cryojoint report — {contents.run_dir.name or contents.run_dir}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><div class=\"sub\">run folder {_esc(contents.run_dir.resolve())} · "
        f"cryojoint {_esc(__version__)}</div></header><nav>{nav}</nav><main>{notes}{''.join(bodies)}</main>"
        "</body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write one self-contained HTML page describing a run.

    Parameters
    ----------
    run_dir
        Run folder (see the module docstring for what it may hold; everything is optional). A demo folder
        or a ``cryojoint predict`` output folder works too.
    out
        HTML file to write; default ``RUN/report.html``. Written atomically.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    UserInputError
        ``run_dir`` does not exist or holds nothing a report can be made from.

    Examples
    --------
    >>> write_report("runs/demo")  # doctest: +SKIP
    PosixPath('runs/demo/report.html')
    """
    run_dir = Path(run_dir)
    contents = load_run(run_dir)
    out_path = Path(out) if out is not None else run_dir / REPORT_NAME
    page = render_report(contents)
    with atomic_path(out_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out_path


__all__ = ["REPORT_NAME", "RunContents", "load_run", "render_report", "write_report"]
