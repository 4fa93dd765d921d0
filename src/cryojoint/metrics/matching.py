"""Matching picks to true particles, and the precision-recall curve, AP and F1 that follow from it.

Predictions and true particles are matched one-to-one within a radius, maximising the number of matches
(Hungarian assignment). The precision-recall curve is *exact* for that definition at every cut-off: the
number of true positives among the top-k picks is the size of a maximum matching between them and the
truth, maintained incrementally with augmenting paths as picks are added in score order (adding one pick
raises a maximum matching by at most one, and only through an augmenting path that starts at it). This
avoids the COCO-style greedy matching, which can lose matches when a high-scoring pick takes the truth
another pick needed. Across micrographs, matching happens within each micrograph and picks are pooled
with their scores for one curve.

Everything here works on arrays of positions and scores; tables and files are the callers' business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from cryojoint.metrics._numbers import ratio


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


@dataclass(frozen=True)
class PickOutcome:
    """Picks and true particles of one micrograph classified by :func:`match_picks`.

    What the report's overlay colours: true and false positives, and the particles no pick found.
    """

    true_positive: np.ndarray
    """Per pick: whether it is matched to a true particle."""
    found: np.ndarray
    """Per true particle: whether a pick is matched to it."""

    @property
    def precision(self) -> float:
        return ratio(int(self.true_positive.sum()), self.true_positive.size)

    @property
    def recall(self) -> float:
        return ratio(int(self.found.sum()), self.found.size)


def classify_picks(pred_xy: np.ndarray, true_xy: np.ndarray, radius: float) -> PickOutcome:
    """Which picks are true positives and which true particles were found, under :func:`match_picks`."""
    pred_xy, true_xy = _as_xy(pred_xy), _as_xy(true_xy)
    matched_pick, matched_true = match_picks(pred_xy, true_xy, radius)
    true_positive = np.zeros(pred_xy.shape[0], bool)
    true_positive[matched_pick] = True
    found = np.zeros(true_xy.shape[0], bool)
    found[matched_true] = True
    return PickOutcome(true_positive, found)
