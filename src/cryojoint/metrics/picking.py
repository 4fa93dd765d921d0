"""Picking metrics of coordinate tables: per-micrograph and pooled precision, recall, F1, AP, edge recall.

Built on :mod:`cryojoint.metrics.matching`; the tables are in-memory (columns micrograph, x, y, score). Reading
coordinate files and choosing the match radius is :mod:`cryojoint.evaluation`'s part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cryojoint.errors import UserInputError
from cryojoint.imaging import pixel_values_at
from cryojoint.io.coords import check_coordinate_table
from cryojoint.metrics._numbers import format_cell, json_number, ratio
from cryojoint.metrics.matching import PRCurve, _curve_from_hits, _pool_curves, _ranked_hits, match_picks

if TYPE_CHECKING:
    from rich.table import Table

#: Particles closer than this to an image edge count as "edge" particles (the paper notes hand-pickers miss
#: them and claims its method finds them).
DEFAULT_EDGE_PX = 30.0
PICK_COLUMNS = ("micrograph", "x", "y")
#: :attr:`PickingReport.match_radius_source` of a radius the caller chose.
GIVEN = "given"


@dataclass
class PickingResult:
    """Picking numbers for one micrograph, or for all pooled (``micrograph == "all"``)."""

    micrograph: str
    n_picks: int
    n_true: int
    true_positives: int
    precision: float
    recall: float
    f1: float
    average_precision: float
    best_f1: float
    best_f1_threshold: float
    n_true_near_edge: int
    edge_recall: float
    fraction_picks_in_mask: float
    curve: PRCurve = field(repr=False)

    def to_dict(self, include_curve: bool = False) -> dict[str, Any]:
        values = {
            name: json_number(getattr(self, name))
            for name in ("micrograph", "n_picks", "n_true", "true_positives", "precision", "recall", "f1",
                         "average_precision", "best_f1", "best_f1_threshold", "n_true_near_edge",
                         "edge_recall", "fraction_picks_in_mask")
        }
        if include_curve:
            values["curve"] = {
                "thresholds": [json_number(v) for v in self.curve.thresholds.tolist()],
                "precision": [json_number(v) for v in self.curve.precision.tolist()],
                "recall": [json_number(v) for v in self.curve.recall.tolist()],
            }
        return values


@dataclass
class PickingReport:
    """Per-micrograph and pooled picking metrics, with the settings that produced them.

    ``match_radius_source`` says where the radius came from: ``"given"`` (by the caller) or
    ``"truth: particle radius from <file>"`` (see :func:`cryojoint.evaluation.resolve_match_radius`).
    """

    match_radius: float
    threshold: float | None
    overall: PickingResult
    per_micrograph: list[PickingResult]
    edge_px: float = DEFAULT_EDGE_PX
    excluded_masked: bool = False
    ignored_pick_micrographs: list[str] = field(default_factory=list)
    match_radius_source: str = GIVEN
    #: Micrographs of a predict folder whose prediction failed, scored as picking nothing.
    failed_prediction_micrographs: list[str] = field(default_factory=list)

    def to_dict(self, include_curves: bool = False) -> dict[str, Any]:
        """Plain JSON-able dict (NaN/inf become ``None``); curves only when asked (they can be long)."""
        return {
            "match_radius": self.match_radius,
            "match_radius_source": self.match_radius_source,
            "threshold": json_number(self.threshold),
            "edge_px": self.edge_px,
            "excluded_masked": self.excluded_masked,
            "ignored_pick_micrographs": list(self.ignored_pick_micrographs),
            "failed_prediction_micrographs": list(self.failed_prediction_micrographs),
            "overall": self.overall.to_dict(include_curves),
            "per_micrograph": [r.to_dict(include_curves) for r in self.per_micrograph],
        }

    def describe_match_radius(self) -> str:
        """E.g. ``match radius 26 px (truth: particle radius from data/simulation.yaml)`` or ``... (given)``."""
        return f"match radius {self.match_radius:g} px ({self.match_radius_source})"

    def to_dataframe(self) -> pd.DataFrame:
        """One row per micrograph plus a final ``all`` row."""
        rows = [r.to_dict() for r in [*self.per_micrograph, self.overall]]
        return pd.DataFrame(rows)

    def to_rich_table(self) -> Table:
        from rich.table import Table

        cut = "all picks" if self.threshold is None else f"score >= {self.threshold:.4g}"
        results = [*self.per_micrograph, self.overall]
        unknown = [why for column, why in (
            ("edge_recall", "edge recall needs the micrographs' sizes (--masks, or a predict folder's inputs) and "
                            "particles near an edge"),
            ("fraction_picks_in_mask", "picks in mask needs --masks")) if all(
                format_cell(getattr(r, column)) == "-" for r in results)]
        table = Table(title=f"Picking: {self.describe_match_radius()}; {cut}",
                      caption=f"-: {'; '.join(unknown)}" if unknown else None)
        headers = ["micrograph", "picks", "true", "TP", "precision", "recall", "F1", "AP", "best F1",
                   f"edge recall (<{self.edge_px:g} px)", "picks in mask"]
        for header in headers:
            table.add_column(header, justify="left" if header == "micrograph" else "right")
        for result in results:
            table.add_row(
                result.micrograph, str(result.n_picks), str(result.n_true), str(result.true_positives),
                format_cell(result.precision), format_cell(result.recall), format_cell(result.f1),
                format_cell(result.average_precision), format_cell(result.best_f1), format_cell(result.edge_recall),
                format_cell(result.fraction_picks_in_mask),
                end_section=result is self.per_micrograph[-1] if self.per_micrograph else False,
            )
        return table


def _check_table(table: pd.DataFrame, what: str) -> pd.DataFrame:
    """The coordinate table's own checks (columns, finite coordinates), and a score column (NaN: none given)."""
    table = check_coordinate_table(table, what)
    if "score" not in table.columns:
        table["score"] = np.nan
    return table


def _masked_at(mask: np.ndarray, xy: np.ndarray, values: Sequence[float] | None) -> np.ndarray:
    """Whether each point lies on a masked pixel (any nonzero value, or one of ``values``)."""
    if xy.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    at = pixel_values_at(mask, xy)
    return np.isin(at, np.asarray(values)) if values is not None else at != 0


def _near_edge(xy: np.ndarray, shape: tuple[int, int], edge_px: float) -> np.ndarray:
    ny, nx = shape
    distance = np.minimum(np.minimum(xy[:, 0], nx - 1 - xy[:, 0]), np.minimum(xy[:, 1], ny - 1 - xy[:, 1]))
    return distance < edge_px


def picking_metrics(
    picks: pd.DataFrame,
    truth: pd.DataFrame,
    match_radius: float,
    threshold: float | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    exclude_mask_values: bool | Sequence[float] = False,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    edge_px: float = DEFAULT_EDGE_PX,
    micrographs: Sequence[str] | None = None,
) -> PickingReport:
    """Precision, recall, F1, AP and friends for coordinate tables (columns micrograph, x, y, score).

    Parameters
    ----------
    picks, truth
        Tables in the convention of :func:`cryojoint.io.coords.read_coordinates`.
    match_radius
        Largest distance (px) between a pick and the particle it finds; typically the particle radius.
    threshold
        Cut-off for precision/recall/F1 (picks with ``score >= threshold``); ``None`` = all picks. AP and
        best-F1 always sweep all picks; they are NaN when no pick has a score (BOX files, hand picks).
    masks
        Per micrograph, an integer/bool image (nonzero = contamination, carbon, ...). Used for the fraction
        of picks landing in masks and, with ``exclude_mask_values``, to drop masked truth and picks.
    exclude_mask_values
        ``False``: keep everything; ``True``: drop truth and picks on any nonzero mask pixel; a sequence of
        values: drop those on pixels with one of these mask values.
    shapes
        Per micrograph ``(ny, nx)``; needed for edge recall (taken from ``masks`` when absent).
    edge_px
        Truth closer than this to an edge counts as an edge particle.
    micrographs
        Micrographs to evaluate; default: every micrograph named in ``truth``. Picks on other micrographs
        are listed in ``ignored_pick_micrographs``.

    Returns
    -------
    PickingReport
    """
    if not match_radius > 0:
        raise UserInputError("match radius", f"must be > 0, got {match_radius}")
    picks = _check_table(picks, "picks")
    truth = _check_table(truth, "truth")
    names = list(dict.fromkeys(truth["micrograph"])) if micrographs is None else [str(m) for m in micrographs]
    pick_names = set(picks["micrograph"])
    if names and pick_names and not pick_names & set(names):
        raise UserInputError(
            "picks", "no micrograph name in common with the truth (picks: "
            f"{', '.join(sorted(pick_names)[:3])}; truth: {', '.join(names[:3])}); names are matched by "
            "file name without folder or extension"
        )
    if threshold is not None and len(picks) and picks["score"].isna().all():
        raise UserInputError("picks", "have no scores, so a score threshold cannot be applied")
    masks = dict(masks or {})
    shapes = {**{k: tuple(np.shape(v)) for k, v in masks.items()}, **dict(shapes or {})}
    exclude = exclude_mask_values is not False
    exclude_values = None if isinstance(exclude_mask_values, bool) else list(exclude_mask_values)

    # Picks without scores (BOX, hand picks) have no ranking: AP and best F1 do not apply to them.
    ranked = bool(picks["score"].notna().any()) or picks.empty
    picks_by_name = {str(k): v for k, v in picks.groupby("micrograph", sort=False)}
    truth_by_name = {str(k): v for k, v in truth.groupby("micrograph", sort=False)}
    results: list[PickingResult] = []
    ranked_parts: list[tuple[np.ndarray, np.ndarray]] = []
    totals = dict(n_picks=0, n_true=0, tp=0, edge_true=0, edge_tp=0, in_mask=0, has_mask_picks=0)
    for name in names:
        pick_rows = picks_by_name.get(name, picks.iloc[:0])
        true_rows = truth_by_name.get(name, truth.iloc[:0])
        pred_xy = pick_rows[["x", "y"]].to_numpy(np.float64).reshape(-1, 2)
        pred_scores = pick_rows["score"].to_numpy(np.float64)
        true_xy = true_rows[["x", "y"]].to_numpy(np.float64).reshape(-1, 2)
        mask = masks.get(name)

        in_mask = _masked_at(mask, pred_xy, None) if mask is not None else np.zeros(len(pred_xy), bool)
        if exclude and mask is not None:
            keep_pred = ~_masked_at(mask, pred_xy, exclude_values)
            keep_true = ~_masked_at(mask, true_xy, exclude_values)
            pred_xy, pred_scores, in_mask = pred_xy[keep_pred], pred_scores[keep_pred], in_mask[keep_pred]
            true_xy = true_xy[keep_true]

        sorted_scores, hits = _ranked_hits(pred_xy, pred_scores, true_xy, match_radius)
        ranked_parts.append((sorted_scores, hits))
        curve = _curve_from_hits(sorted_scores, hits, true_xy.shape[0])

        selected = np.ones(len(pred_xy), bool) if threshold is None else pred_scores >= threshold
        _, matched_true = match_picks(pred_xy[selected], true_xy, match_radius)
        tp = int(matched_true.size)
        n_picks, n_true = int(selected.sum()), int(true_xy.shape[0])

        edge_true = edge_tp = 0
        if name in shapes:
            near = _near_edge(true_xy, shapes[name], edge_px)
            edge_true = int(near.sum())
            edge_tp = int(near[matched_true].sum())
        mask_picks = int(in_mask[selected].sum())
        best_f1, best_cut = curve.best_f1() if ranked else (float("nan"), float("nan"))
        results.append(PickingResult(
            micrograph=name, n_picks=n_picks, n_true=n_true, true_positives=tp,
            precision=ratio(tp, n_picks), recall=ratio(tp, n_true), f1=ratio(2 * tp, n_picks + n_true),
            average_precision=curve.average_precision() if ranked else float("nan"), best_f1=best_f1,
            best_f1_threshold=best_cut, n_true_near_edge=edge_true,
            edge_recall=ratio(edge_tp, edge_true) if name in shapes else float("nan"),
            fraction_picks_in_mask=ratio(mask_picks, n_picks) if mask is not None else float("nan"),
            curve=curve,
        ))
        totals["n_picks"] += n_picks
        totals["n_true"] += n_true
        totals["tp"] += tp
        totals["edge_true"] += edge_true
        totals["edge_tp"] += edge_tp
        if mask is not None:
            totals["in_mask"] += mask_picks
            totals["has_mask_picks"] += n_picks

    pooled = _pool_curves(ranked_parts, totals["n_true"])
    best_f1, best_cut = pooled.best_f1() if ranked else (float("nan"), float("nan"))
    overall = PickingResult(
        micrograph="all", n_picks=totals["n_picks"], n_true=totals["n_true"], true_positives=totals["tp"],
        precision=ratio(totals["tp"], totals["n_picks"]), recall=ratio(totals["tp"], totals["n_true"]),
        f1=ratio(2 * totals["tp"], totals["n_picks"] + totals["n_true"]),
        average_precision=pooled.average_precision() if ranked else float("nan"), best_f1=best_f1,
        best_f1_threshold=best_cut, n_true_near_edge=totals["edge_true"],
        edge_recall=ratio(totals["edge_tp"], totals["edge_true"]) if shapes else float("nan"),
        fraction_picks_in_mask=ratio(totals["in_mask"], totals["has_mask_picks"]) if masks else float("nan"),
        curve=pooled,
    )
    ignored = sorted(pick_names - set(names))
    return PickingReport(match_radius=float(match_radius), threshold=threshold, overall=overall,
                         per_micrograph=results, edge_px=edge_px, excluded_masked=exclude,
                         ignored_pick_micrographs=ignored)


def picks_matching_truth(picks: pd.DataFrame, truth: pd.DataFrame, radius: float) -> np.ndarray | None:
    """Per row of ``picks``, whether :func:`match_picks` matches it to a true particle of its micrograph.

    Splits a score histogram into particles and background. ``None`` when no pick lies on a micrograph the
    truth names, so nothing could be judged.
    """
    truth_names = set(truth["micrograph"].astype(str))
    matched_rows = np.zeros(len(picks), bool)
    evaluated = np.zeros(len(picks), bool)
    names = picks["micrograph"].astype(str).to_numpy()
    for name in dict.fromkeys(names):
        if name not in truth_names:
            continue
        rows = np.flatnonzero(names == name)
        true_xy = truth.loc[truth["micrograph"].astype(str) == name, ["x", "y"]].to_numpy(float)
        matched, _ = match_picks(picks.iloc[rows][["x", "y"]].to_numpy(float), true_xy, radius)
        matched_rows[rows[matched]] = True
        evaluated[rows] = True
    return matched_rows if evaluated.any() else None
