"""How well picks and denoised images match the truth: matching, PR/AP/F1, PSNR, FRC.

Picking
    Predictions and true particles are matched one-to-one within a radius, maximising the number of matches
    (Hungarian assignment). The precision-recall curve is *exact* for that definition at every cut-off: the
    number of true positives among the top-k picks is the size of a maximum matching between them and the
    truth, maintained incrementally with augmenting paths as picks are added in score order (adding one pick
    raises a maximum matching by at most one, and only through an augmenting path that starts at it). This
    avoids the COCO-style greedy matching, which can lose matches when a high-scoring pick takes the truth
    another pick needed. Across micrographs, matching happens within each micrograph and picks are pooled
    with their scores for one curve.

Denoising
    See :func:`denoising_metrics` for what each number means and why PSNR against the full-dose image alone
    proves little.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from cryojoint.errors import UserInputError

if TYPE_CHECKING:
    from rich.table import Table

#: Particles closer than this to an image edge count as "edge" particles (the paper notes hand-pickers miss
#: them and claims its method finds them).
DEFAULT_EDGE_PX = 30.0
#: Fourier ring correlation is averaged over this band (cycles/pixel): above the lowest rings (ice gradient,
#: carbon) and below the rings where shot noise dominates everything at low dose.
DEFAULT_FRC_BAND = (0.015, 0.25)
#: Without a cut-off in Å, the low-passed reference keeps detail down to this period (pixels); 4 px =
#: 0.25 cycles/px, the top of the FRC band.
DEFAULT_LOWPASS_PERIOD_PX = 4.0
#: Gaussian transfer exp(-f²/(2 s²)) is 1/2 at f = s·sqrt(2 ln 2).
_HALF_AMPLITUDE_PER_GAUSSIAN_STD = math.sqrt(2.0 * math.log(2.0))

PICK_COLUMNS = ("micrograph", "x", "y")
#: Written by ``cryojoint simulate`` next to ``truth.star``; its ``particle_diameter_px`` is the true particle
#: size, the only default match radius that is the same yardstick for every method scored against that truth.
TRUTH_METADATA_FILENAME = "simulation.yaml"
#: :attr:`PickingReport.match_radius_source` of a radius the caller chose.
GIVEN = "given"


# ============================================================================================ matching


def _as_xy(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    xy = np.asarray(points, dtype=np.float64)
    if xy.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coordinates must have shape (N, 2), got {xy.shape}")
    return xy


def _pairs_within(pred_xy: np.ndarray, true_xy: np.ndarray, radius: float) -> tuple[np.ndarray, ...]:
    """(pred index, true index, distance) of every pair at distance <= radius (zero distances included)."""
    if pred_xy.shape[0] == 0 or true_xy.shape[0] == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, np.zeros(0)
    pairs = cKDTree(pred_xy).sparse_distance_matrix(cKDTree(true_xy), radius, output_type="ndarray")
    pred_index = pairs["i"].astype(np.intp)
    true_index = pairs["j"].astype(np.intp)
    distance = pairs["v"].astype(np.float64)
    return pred_index, true_index, distance


def match_picks(
    pred_xy: np.ndarray, true_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predictions to true particles within ``radius`` (inclusive).

    Maximises the number of matched pairs and, among maximum matchings, minimises the summed distance
    (Hungarian assignment on each connected cluster of nearby points, with a prohibitive cost for pairs
    beyond the radius). Clusters keep it fast for thousands of points.

    Parameters
    ----------
    pred_xy, true_xy
        Positions, shape (N, 2) and (M, 2), in the same pixel units.
    radius
        Largest centre distance of a match, in pixels.

    Returns
    -------
    pred_index, true_index : ndarray of int
        Matched pairs ``(pred_xy[pred_index[k]], true_xy[true_index[k]])``, sorted by ``pred_index``.
    """
    pred_xy, true_xy = _as_xy(pred_xy), _as_xy(true_xy)
    n_pred, n_true = pred_xy.shape[0], true_xy.shape[0]
    pi, ti, dist = _pairs_within(pred_xy, true_xy, radius)
    if pi.size == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty
    graph = coo_matrix((np.ones(pi.size), (pi, n_pred + ti)), shape=(n_pred + n_true,) * 2)
    _, component = connected_components(graph, directed=False)
    pair_component = component[pi]
    matched_pred: list[np.ndarray] = []
    matched_true: list[np.ndarray] = []
    order = np.argsort(pair_component, kind="stable")
    boundaries = np.flatnonzero(np.diff(pair_component[order])) + 1
    for group in np.split(order, boundaries):
        preds, pred_local = np.unique(pi[group], return_inverse=True)
        trues, true_local = np.unique(ti[group], return_inverse=True)
        if preds.size == 1 or trues.size == 1:  # a star: the closest pair is the whole answer
            best = group[int(np.argmin(dist[group]))]
            matched_pred.append(np.array([pi[best]]))
            matched_true.append(np.array([ti[best]]))
            continue
        # Any pair beyond the radius costs more than every within-radius distance together, so the
        # assignment first maximises the number of real matches, then minimises their total distance.
        prohibitive = radius * (min(preds.size, trues.size) + 1) + 1.0
        cost = np.full((preds.size, trues.size), prohibitive)
        cost[pred_local, true_local] = dist[group]
        rows, cols = linear_sum_assignment(cost)
        real = cost[rows, cols] < prohibitive
        matched_pred.append(preds[rows[real]])
        matched_true.append(trues[cols[real]])
    pred_index = np.concatenate(matched_pred).astype(np.intp)
    true_index = np.concatenate(matched_true).astype(np.intp)
    order = np.argsort(pred_index, kind="stable")
    return pred_index[order], true_index[order]


def _rank_scores(scores: np.ndarray | None, n: int) -> np.ndarray:
    """Scores as float64 with NaN (no score) ranked lowest; ``None`` = all equal."""
    if scores is None:
        return np.full(n, -np.inf)
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.shape[0] != n:
        raise ValueError(f"{values.shape[0]} scores for {n} predictions")
    return np.where(np.isnan(values), -np.inf, values)


def _ranked_hits(
    pred_xy: np.ndarray, scores: np.ndarray | None, true_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scores sorted descending and, per rank k, whether the maximum matching grows by adding pick k.

    ``cumsum(hits)[k]`` is the number of true positives among the top-(k+1) picks under maximum
    one-to-one matching. Ties are visited in input order; at every distinct cut-off (the end of a tie
    group) the count is independent of that order, since a maximum matching's size depends only on the set.
    """
    pred_xy, true_xy = _as_xy(pred_xy), _as_xy(true_xy)
    n_pred = pred_xy.shape[0]
    ranked = _rank_scores(scores, n_pred)
    order = np.argsort(-ranked, kind="stable")
    hits = np.zeros(n_pred, dtype=np.int64)
    pi, ti, dist = _pairs_within(pred_xy[order], true_xy, radius)
    if pi.size:
        neighbours: list[list[int]] = [[] for _ in range(n_pred)]
        by_distance = np.lexsort((dist, pi))  # nearest truth first: short augmenting paths are found first
        for p, t in zip(pi[by_distance].tolist(), ti[by_distance].tolist(), strict=True):
            neighbours[p].append(t)
        true_owner = [-1] * true_xy.shape[0]
        for rank in range(n_pred):
            if neighbours[rank] and _augment(rank, neighbours, true_owner):
                hits[rank] = 1
    return ranked[order], hits


def _augment(root: int, neighbours: list[list[int]], true_owner: list[int]) -> bool:
    """Find an augmenting path from the unmatched pick ``root`` (iterative DFS, Kuhn); apply it if found."""
    stack = [root]
    next_edge = {root: 0}
    via: list[int] = []  # via[k]: truth linking stack[k] to stack[k + 1]
    visited: set[int] = set()
    while stack:
        pick = stack[-1]
        edges = neighbours[pick]
        position = next_edge[pick]
        if position == len(edges):
            stack.pop()
            if via:
                via.pop()
            continue
        next_edge[pick] = position + 1
        truth = edges[position]
        if truth in visited:
            continue
        visited.add(truth)
        via.append(truth)
        owner = true_owner[truth]
        if owner == -1:
            for p, t in zip(stack, via, strict=True):
                true_owner[t] = p
            return True
        stack.append(owner)
        next_edge[owner] = 0
    return False


@dataclass
class PRCurve:
    """Precision and recall at every distinct score cut-off, by decreasing cut-off.

    ``thresholds[k]`` keeps every pick with ``score >= thresholds[k]``; picks without a score rank lowest
    and appear as a final cut-off of ``-inf``.
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    n_picks: np.ndarray
    true_positives: np.ndarray
    n_true: int

    @property
    def f1(self) -> np.ndarray:
        denominator = self.n_picks + self.n_true
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, 2.0 * self.true_positives / denominator, np.nan)

    def average_precision(self) -> float:
        """Area under the step-wise PR curve: sum over cut-offs of (R_k - R_{k-1}) * P_k (sklearn's AP)."""
        if self.n_true == 0:
            return float("nan")
        if self.recall.size == 0:
            return 0.0
        return step_average_precision(self.precision, self.recall)

    def best_f1(self) -> tuple[float, float]:
        """Highest F1 over cut-offs and that cut-off (the highest one among ties)."""
        f1 = self.f1
        if f1.size == 0 or np.all(np.isnan(f1)):
            return (0.0 if self.n_true else float("nan")), float("nan")
        best = int(np.nanargmax(f1))
        return float(f1[best]), float(self.thresholds[best])


def step_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under a step-wise PR curve given by decreasing cut-off: ``sum_k (R_k - R_{k-1}) P_k``, ``R_0 = 0``.

    The one definition of AP: :meth:`PRCurve.average_precision` and the report's stored curves both use it.
    """
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(recall_steps * precision))


def _curve_from_hits(sorted_scores: np.ndarray, hits: np.ndarray, n_true: int) -> PRCurve:
    n = sorted_scores.size
    if n == 0:
        empty = np.zeros(0)
        return PRCurve(empty, empty, empty, empty.astype(np.int64), empty.astype(np.int64), n_true)
    group_end = np.flatnonzero(np.concatenate([sorted_scores[1:] != sorted_scores[:-1], [True]]))
    true_positives = np.cumsum(hits)[group_end]
    n_picks = group_end + 1
    precision = true_positives / n_picks
    recall = true_positives / n_true if n_true else np.full(group_end.size, np.nan)
    return PRCurve(sorted_scores[group_end].copy(), precision, recall, n_picks.astype(np.int64),
                   true_positives.astype(np.int64), n_true)


def _pool_curves(parts: Sequence[tuple[np.ndarray, np.ndarray]], n_true: int) -> PRCurve:
    """One curve for many micrographs: concatenate per-micrograph ranked hits and re-sort by score."""
    if not parts:
        return _curve_from_hits(np.zeros(0), np.zeros(0, dtype=np.int64), n_true)
    scores = np.concatenate([s for s, _ in parts])
    hits = np.concatenate([h for _, h in parts])
    # Within a micrograph, hits are only meaningful in its own order; a stable sort keeps that order.
    order = np.argsort(-scores, kind="stable")
    return _curve_from_hits(scores[order], hits[order], n_true)


def precision_recall_curve(
    pred_xy: np.ndarray, scores: np.ndarray | None, true_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall as the score cut-off sweeps, with exact maximum one-to-one matching per cut-off.

    Parameters
    ----------
    pred_xy
        Predicted centres (N, 2).
    scores
        Their scores (N,), larger = more confident; NaN ranks lowest; ``None`` = all equal.
    true_xy
        True centres (M, 2).
    radius
        Match radius in pixels.

    Returns
    -------
    precision, recall, thresholds : ndarray
        One entry per distinct score, by *decreasing* threshold; entry k counts picks with
        ``score >= thresholds[k]``. (Unlike sklearn, no artificial (recall 0, precision 1) point is added.)
    """
    true_xy = _as_xy(true_xy)
    curve = _curve_from_hits(*_ranked_hits(pred_xy, scores, true_xy, radius), true_xy.shape[0])
    return curve.precision, curve.recall, curve.thresholds


def average_precision(
    pred_xy: np.ndarray, scores: np.ndarray | None, true_xy: np.ndarray, radius: float
) -> float:
    """Area under the step-wise PR curve, ``sum_k (R_k - R_{k-1}) P_k`` (as sklearn's average_precision).

    Missed particles count: recall is relative to all true particles, so a picker that never finds some of
    them cannot reach 1. NaN if there are no true particles.
    """
    true_xy = _as_xy(true_xy)
    return _curve_from_hits(*_ranked_hits(pred_xy, scores, true_xy, radius), true_xy.shape[0]).average_precision()


# ============================================================================================ picking report


def _json_number(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


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
            name: _json_number(getattr(self, name))
            for name in ("micrograph", "n_picks", "n_true", "true_positives", "precision", "recall", "f1",
                         "average_precision", "best_f1", "best_f1_threshold", "n_true_near_edge",
                         "edge_recall", "fraction_picks_in_mask")
        }
        if include_curve:
            values["curve"] = {
                "thresholds": [_json_number(v) for v in self.curve.thresholds.tolist()],
                "precision": [_json_number(v) for v in self.curve.precision.tolist()],
                "recall": [_json_number(v) for v in self.curve.recall.tolist()],
            }
        return values


@dataclass
class PickingReport:
    """Per-micrograph and pooled picking metrics, with the settings that produced them.

    ``match_radius_source`` says where the radius came from: ``"given"`` (by the caller) or
    ``"truth: particle radius from <file>"`` (see :func:`resolve_match_radius`).
    """

    match_radius: float
    threshold: float | None
    overall: PickingResult
    per_micrograph: list[PickingResult]
    edge_px: float = DEFAULT_EDGE_PX
    excluded_masked: bool = False
    ignored_pick_micrographs: list[str] = field(default_factory=list)
    match_radius_source: str = GIVEN

    def to_dict(self, include_curves: bool = False) -> dict[str, Any]:
        """Plain JSON-able dict (NaN/inf become ``None``); curves only when asked (they can be long)."""
        return {
            "match_radius": self.match_radius,
            "match_radius_source": self.match_radius_source,
            "threshold": _json_number(self.threshold),
            "edge_px": self.edge_px,
            "excluded_masked": self.excluded_masked,
            "ignored_pick_micrographs": list(self.ignored_pick_micrographs),
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
        table = Table(title=f"Picking: {self.describe_match_radius()}; {cut}")
        headers = ["micrograph", "picks", "true", "TP", "precision", "recall", "F1", "AP", "best F1",
                   f"edge recall (<{self.edge_px:g} px)", "picks in mask"]
        for header in headers:
            table.add_column(header, justify="left" if header == "micrograph" else "right")
        for result in [*self.per_micrograph, self.overall]:
            table.add_row(
                result.micrograph, str(result.n_picks), str(result.n_true), str(result.true_positives),
                _fmt(result.precision), _fmt(result.recall), _fmt(result.f1), _fmt(result.average_precision),
                _fmt(result.best_f1), _fmt(result.edge_recall), _fmt(result.fraction_picks_in_mask),
                end_section=result is self.per_micrograph[-1] if self.per_micrograph else False,
            )
        return table


def _fmt(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def _check_table(table: pd.DataFrame, what: str) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in PICK_COLUMNS if c not in table.columns]
    if missing:
        raise UserInputError(what, f"table lacks column(s) {', '.join(missing)}")
    table = table.copy()
    table["micrograph"] = table["micrograph"].astype(str)
    if "score" not in table.columns:
        table["score"] = np.nan
    return table


def _masked_at(mask: np.ndarray, xy: np.ndarray, values: Sequence[float] | None) -> np.ndarray:
    """Whether each point lies on a masked pixel (any nonzero value, or one of ``values``)."""
    if xy.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    ny, nx = mask.shape
    cols = np.clip(np.rint(xy[:, 0]).astype(int), 0, nx - 1)
    rows = np.clip(np.rint(xy[:, 1]).astype(int), 0, ny - 1)
    at = mask[rows, cols]
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
        best-F1 always sweep all picks.
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
        best_f1, best_cut = curve.best_f1()
        results.append(PickingResult(
            micrograph=name, n_picks=n_picks, n_true=n_true, true_positives=tp,
            precision=_ratio(tp, n_picks), recall=_ratio(tp, n_true), f1=_ratio(2 * tp, n_picks + n_true),
            average_precision=curve.average_precision(), best_f1=best_f1, best_f1_threshold=best_cut,
            n_true_near_edge=edge_true,
            edge_recall=_ratio(edge_tp, edge_true) if name in shapes else float("nan"),
            fraction_picks_in_mask=_ratio(mask_picks, n_picks) if mask is not None else float("nan"),
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
    best_f1, best_cut = pooled.best_f1()
    overall = PickingResult(
        micrograph="all", n_picks=totals["n_picks"], n_true=totals["n_true"], true_positives=totals["tp"],
        precision=_ratio(totals["tp"], totals["n_picks"]), recall=_ratio(totals["tp"], totals["n_true"]),
        f1=_ratio(2 * totals["tp"], totals["n_picks"] + totals["n_true"]),
        average_precision=pooled.average_precision(), best_f1=best_f1, best_f1_threshold=best_cut,
        n_true_near_edge=totals["edge_true"],
        edge_recall=_ratio(totals["edge_tp"], totals["edge_true"]) if shapes else float("nan"),
        fraction_picks_in_mask=_ratio(totals["in_mask"], totals["has_mask_picks"]) if masks else float("nan"),
        curve=pooled,
    )
    ignored = sorted(pick_names - set(names))
    return PickingReport(match_radius=float(match_radius), threshold=threshold, overall=overall,
                         per_micrograph=results, edge_px=edge_px, excluded_masked=exclude,
                         ignored_pick_micrographs=ignored)


# ============================================================================================ denoising


def psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio (dB) after the best affine fit of ``image`` onto ``reference``.

    The one normalisation used for every method compared: over the pixels in ``mask`` (True = used; all
    pixels if ``None``), fit ``a·image + b`` to ``reference`` by least squares, then
    ``PSNR = 10 log10(peak² / MSE)`` with ``peak = max - min`` of the reference over those pixels. The fit
    makes the score blind to the arbitrary scale and offset of each method's output (electrons, z-scores,
    8-bit), so only the structure counts. For ``image = reference + noise`` of variance v the fitted MSE is
    ``v·var(ref)/(v + var(ref))`` (the fit shrinks noise like a Wiener gain). Identical images give ``inf``.
    """
    image = np.asarray(image, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if image.shape != reference.shape:
        raise ValueError(f"image shape {image.shape} differs from reference shape {reference.shape}")
    if mask is not None:
        selected = np.asarray(mask, dtype=bool)
        if selected.shape != image.shape:
            raise ValueError(f"mask shape {selected.shape} differs from image shape {image.shape}")
        x, y = image[selected], reference[selected]
    else:
        x, y = image.ravel(), reference.ravel()
    if x.size == 0:
        return float("nan")
    x_centred = x - x.mean()
    y_centred = y - y.mean()
    x_power = float(np.dot(x_centred, x_centred))
    gain = float(np.dot(x_centred, y_centred)) / x_power if x_power > 0 else 0.0
    residual = y_centred - gain * x_centred
    mse = float(np.dot(residual, residual)) / x.size
    peak = float(y.max() - y.min())
    if mse <= np.finfo(np.float64).tiny * max(peak * peak, 1.0) or mse == 0.0:
        return float("inf")
    if peak == 0:
        return float("-inf")
    return float(10.0 * np.log10(peak * peak / mse))


def _ring_index(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Ring number of every rfft2 coefficient and the ring centres in cycles/pixel (ring width 1/min side)."""
    ny, nx = shape
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    width = 1.0 / min(ny, nx)
    index = np.rint(radius / width).astype(np.int64)
    n_rings = int(round(0.5 / width)) + 1
    return index, np.arange(n_rings) * width


def frc(image: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation between two images of the same shape.

    ``FRC(ring) = Re Σ F1·conj(F2) / sqrt(Σ|F1|² Σ|F2|²)`` over the Fourier coefficients whose frequency
    rounds to the ring (ring width 1/min(ny, nx) cycles/px; both half-planes counted through the real FFT,
    so each ring's ratio is exact). Means are removed first. Rings up to Nyquist (0.5 cycles/px) are
    returned; rings with no power give NaN.

    Returns
    -------
    freqs, curve : ndarray
        Ring centre frequency (cycles/pixel) and correlation in [-1, 1].
    """
    a = np.asarray(image, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two 2D images of one shape, got {a.shape} and {b.shape}")
    fa = np.fft.rfft2(a - a.mean())
    fb = np.fft.rfft2(b - b.mean())
    index, freqs = _ring_index(a.shape)
    # rfft2 stores the x>0 half once; the x=0 and Nyquist columns are their own mirror. Weight them so each
    # ring sums the full plane (the ratio would be nearly unchanged without, but this is exact).
    weight = np.full(fa.shape, 2.0)
    weight[:, 0] = 1.0
    if a.shape[1] % 2 == 0:
        weight[:, -1] = 1.0
    inside = index < freqs.size
    n = freqs.size
    cross = np.bincount(index[inside], (weight * np.real(fa * np.conj(fb)))[inside], minlength=n)
    power_a = np.bincount(index[inside], (weight * np.abs(fa) ** 2)[inside], minlength=n)
    power_b = np.bincount(index[inside], (weight * np.abs(fb) ** 2)[inside], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = cross / np.sqrt(power_a * power_b)
    return freqs, curve


def frc_score(
    image: np.ndarray, reference: np.ndarray, band: tuple[float, float] = DEFAULT_FRC_BAND
) -> float:
    """Mean FRC over rings whose centre lies in ``band`` (cycles/pixel, inclusive).

    Any radial linear filter (a low-pass included) multiplies both sums of a ring by the same factor, so it
    cannot raise this score; only real denoising can.
    """
    freqs, curve = frc(image, reference)
    in_band = (freqs >= band[0]) & (freqs <= band[1]) & np.isfinite(curve)
    if not in_band.any():
        return float("nan")
    return float(np.mean(curve[in_band]))


def lowpass_reference(
    reference: np.ndarray, pixel_size_angstrom: float, cutoff_angstrom: float
) -> np.ndarray:
    """Gaussian low-pass with amplitude 1/2 at a period of ``cutoff_angstrom`` (reflecting borders).

    The paper reports PSNR against a "low-pass filtered" full-dose image without naming the filter; a
    Gaussian has no ringing and one parameter, so the cut-off is the whole definition.
    """
    if pixel_size_angstrom <= 0 or cutoff_angstrom <= 0:
        raise ValueError("pixel size and cut-off must be > 0")
    cutoff_cycles_per_px = pixel_size_angstrom / cutoff_angstrom
    frequency_std = cutoff_cycles_per_px / _HALF_AMPLITUDE_PER_GAUSSIAN_STD
    sigma_px = 1.0 / (2.0 * math.pi * frequency_std)
    return ndimage.gaussian_filter(np.asarray(reference, dtype=np.float64), sigma_px, mode="reflect")


DENOISING_METRICS: dict[str, str] = {
    "psnr_full_dose": "PSNR vs full dose (dB)",
    "psnr_lowpass_full_dose": "PSNR vs low-passed full dose (dB)",
    "psnr_clean_outside_masks": "PSNR vs clean, outside masks (dB)",
    "frc_clean": "FRC vs clean",
}


@dataclass
class DenoisingReport:
    """Per-micrograph denoising metrics (keys of :data:`DENOISING_METRICS`) and their means."""

    per_micrograph: list[dict[str, Any]]
    mean: dict[str, float]
    lowpass_period_px: float
    frc_band: tuple[float, float] = DEFAULT_FRC_BAND

    def to_dict(self) -> dict[str, Any]:
        return {
            "lowpass_period_px": self.lowpass_period_px,
            "frc_band": list(self.frc_band),
            "mean": {k: _json_number(v) for k, v in self.mean.items()},
            "per_micrograph": [{k: _json_number(v) for k, v in row.items()} for row in self.per_micrograph],
        }

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame([*self.per_micrograph, {"micrograph": "mean", **self.mean}])

    def to_rich_table(self) -> Table:
        from rich.table import Table

        table = Table(title=f"Denoising (low-pass period {self.lowpass_period_px:.3g} px, FRC band "
                            f"{self.frc_band[0]:g}-{self.frc_band[1]:g} cycles/px)")
        metrics = [m for m in DENOISING_METRICS if m in self.mean]
        table.add_column("micrograph")
        for metric in metrics:
            table.add_column(DENOISING_METRICS[metric], justify="right")
        for row in self.per_micrograph:
            table.add_row(str(row["micrograph"]), *[_fmt(row.get(m, float("nan"))) for m in metrics])
        table.add_section()
        table.add_row("mean", *[_fmt(self.mean[m]) for m in metrics])
        return table


def denoising_metrics(
    denoised: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    clean: Mapping[str, np.ndarray] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    pixel_size: float | None = None,
    lowpass_angstrom: float | None = None,
    frc_band: tuple[float, float] = DEFAULT_FRC_BAND,
) -> DenoisingReport:
    """Score denoised micrographs against the full-dose reference and, when known, the noise-free image.

    - ``psnr_full_dose``: what the paper reports. Weak on its own: the full-dose image carries its own shot
      noise, which caps the achievable PSNR, and its max–min range (the PSNR peak) is set by high-contrast
      features — contamination, carbon edges, ice gradients — that any smoother reproduces. On simulated
      data decent denoisers land within ~0.1 dB of each other, and a plain Gaussian low-pass scores as well
      as a learned denoiser.
    - ``psnr_lowpass_full_dose``: the same against the low-passed full-dose image (paper Table 1), which
      removes most of the reference's noise but rewards blurring to the same cut-off.
    - ``psnr_clean_outside_masks`` (needs ``clean``): against the noise-free image over pixels outside the
      contamination/carbon masks — no reference noise, no dominant artefacts: the honest PSNR.
    - ``frc_clean`` (needs ``clean``): mean Fourier ring correlation with the noise-free image over
      ``frc_band``. A ring's FRC is unchanged by any radial linear filter, so a low-pass cannot raise it;
      only recovering signal the noise hid can.

    Parameters
    ----------
    denoised, references, clean, masks
        Images keyed by micrograph name. Every denoised name needs a reference (and a clean image when
        ``clean`` is given); masks are optional per name (nonzero = excluded).
    pixel_size
        Å/pixel; needed only when ``lowpass_angstrom`` is given.
    lowpass_angstrom
        Low-pass cut-off period in Å for the second metric; ``None``: a period of 4 pixels.
    frc_band
        Band (cycles/pixel) averaged by the FRC score.
    """
    if lowpass_angstrom is not None:
        if pixel_size is None or pixel_size <= 0:
            raise UserInputError("lowpass", "a low-pass cut-off in Å needs the pixel size (none in the MRC header)")
        period_px = lowpass_angstrom / pixel_size
    else:
        period_px = DEFAULT_LOWPASS_PERIOD_PX
    if not denoised:
        raise UserInputError("denoised", "no denoised images given")
    rows: list[dict[str, Any]] = []
    for name, image in denoised.items():
        if name not in references:
            raise UserInputError(name, "denoised image has no full-dose reference of the same name")
        image = np.asarray(image, dtype=np.float64)
        reference = np.asarray(references[name], dtype=np.float64)
        _check_same_shape(name, image, reference, "reference")
        row: dict[str, Any] = {"micrograph": name}
        row["psnr_full_dose"] = psnr(image, reference)
        row["psnr_lowpass_full_dose"] = psnr(image, lowpass_reference(reference, 1.0, period_px))
        if clean is not None:
            if name not in clean:
                raise UserInputError(name, "denoised image has no clean (noise-free) image of the same name")
            clean_image = np.asarray(clean[name], dtype=np.float64)
            _check_same_shape(name, image, clean_image, "clean image")
            outside = None
            if masks is not None and name in masks:
                mask = np.asarray(masks[name])
                _check_same_shape(name, image, mask, "mask")
                outside = mask == 0
            row["psnr_clean_outside_masks"] = psnr(image, clean_image, outside)
            row["frc_clean"] = frc_score(image, clean_image, frc_band)
        rows.append(row)
    metrics = [m for m in DENOISING_METRICS if m in rows[0]]
    mean = {m: float(np.mean([r[m] for r in rows])) for m in metrics}
    return DenoisingReport(per_micrograph=rows, mean=mean, lowpass_period_px=float(period_px), frc_band=frc_band)


def _check_same_shape(name: str, image: np.ndarray, other: np.ndarray, what: str) -> None:
    if image.shape != other.shape:
        raise UserInputError(name, f"denoised image is {image.shape[1]}x{image.shape[0]} px but its {what} is "
                             f"{other.shape[1]}x{other.shape[0]} px")


# ============================================================================================ files and API


def _read_mrc_dir(folder: str | Path, what: str) -> dict[str, Any]:
    """Micrographs of a folder keyed by micrograph name (``*.mrc``, case-insensitive)."""
    from cryojoint.io.mrc import micrograph_name, read_micrograph

    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(folder, f"{what} folder not found")
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
        Coordinate tables (micrograph, x, y, score) or coordinate file paths. Both or neither.
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
        picks_table, truth_table = _as_table(picks), _as_table(truth)  # missing files first
        radius_px, radius_source = resolve_match_radius(match_radius, truth)
        picking = picking_metrics(
            picks_table, truth_table, radius_px, threshold=threshold,
            masks=_as_images(masks, "mask") if masks is not None else None,
            exclude_mask_values=exclude_mask_values, shapes=shapes,
        )
        picking.match_radius_source = radius_source
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
            tmp.write_text(json.dumps(payload, indent=2, default=_json_number))
    return reports
