"""The report's figures: matplotlib on the Agg canvas, embedded as base64 PNG in ``<figure>`` elements.

No pyplot and no global backend change, so drawing a report never disturbs a user's session; PNGs are
re-encoded greyscale or palette to keep a page of micrographs small. The numbers drawn come from the run
folder (:mod:`cryojoint.report.loading`) and from :mod:`cryojoint.metrics`; nothing is scored here.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cryojoint.report.loading import (
    RunContents,
    _downsample,
    _number,
    _particle_diameter_input_px,
    _picks_of,
)
from cryojoint.report.markup import _esc, _fmt, _missing, _note

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Longest side of a displayed micrograph with its picks (px); larger images are block-averaged down.
MAX_DISPLAY_PX = 768
#: Longest side of one panel of the input | denoised | reference row (three panels fill a page width).
PANEL_DISPLAY_PX = 384
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


# ============================================================================================ drawing helpers


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


# ================================================================================================ the figures


def _triptych(name: str, dose: str, low_dose: np.ndarray | None, denoised: np.ndarray | None,
              reference: np.ndarray | None, with_reference: bool = True) -> str:
    """Input, denoised and (simulated or benchmark data, ``with_reference``) the full-dose reference side by side."""
    panels = [(f"low-dose input ({dose})" if dose else "low-dose input" if with_reference else "input", low_dose,
               "input not found\n(needs sources.json)"),
              ("denoised", denoised, "no denoised image\n(pred/denoised/)"),
              ("full-dose reference", reference, "no full-dose reference\n(needs sources.json)")]
    panels = panels if with_reference else panels[:2]
    side_in = PANEL_DISPLAY_PX / FIGURE_DPI
    figure = _new_figure(len(panels) * side_in + 0.4, side_in + 0.45)
    axes = figure.subplots(1, len(panels))
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
    shown_as = "low-dose input, denoised and full-dose reference" if with_reference else "input and denoised"
    return _figure_html(figure, f"{name}: {shown_as}", _esc("; ".join(described)))


def _overlay(contents: RunContents, name: str, low_dose: np.ndarray | None, denoised: np.ndarray | None,
             truth: pd.DataFrame | None, radius: float | None) -> str:
    """Picks on the denoised image; with the truth, true/false positives and misses in their own colours."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    from cryojoint.metrics.matching import classify_picks

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
        outcome = classify_picks(picks[["x", "y"]].to_numpy(float).reshape(-1, 2),
                                 true_rows[["x", "y"]].to_numpy(float).reshape(-1, 2), radius)
        is_tp = outcome.true_positive
        groups = {"true_positive": pick_xy[is_tp], "false_positive": pick_xy[~is_tp],
                  "missed": to_display(true_rows)[~outcome.found]}
        title += (f" — precision {_fmt(outcome.precision)}, recall {_fmt(outcome.recall)} "
                  f"(match radius {_fmt(radius, 1)} px)")
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
    from cryojoint.metrics.matching import step_average_precision

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


def _training_figure(metrics: pd.DataFrame, columns: Sequence[str], labels: Mapping[str, str],
                     best_step: float | None) -> Figure:
    """One small panel per logged column of metrics.csv against step; the kept step dotted."""
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
    return figure
