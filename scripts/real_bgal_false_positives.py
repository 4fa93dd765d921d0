"""What caps AP on real-bgal? The confident picks the reference does not hold, sorted by where they lie.

real-bgal's truth is what CryoSegNet's annotators picked (disc centres from their masks; `benchmarks/README.md`):
unpicked particles count as false positives, and no reference particle lies within 32 px of an edge. Given one
prediction folder of the benchmark (its ``candidates/``), this takes as many top-scoring candidates as there are
reference particles, sorts the unmatched ones by distance to the nearest reference centre and by the edge band,
scores AP with and without candidates in that band, and draws the most confident unmatched picks far from any
reference particle beside matched ones::

    PYTHONPATH=src python scripts/real_bgal_false_positives.py PRED_DIR \
        --out benchmarks/results/2026-12-03-s22-real-bgal-false-positives --figure docs/figures/real-bgal-fp.png

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "src"))

from benchmarks.suite.datasets import DoseData, ensure_dataset, load_dose_data  # noqa: E402
from benchmarks.suite.profiles import PROFILES  # noqa: E402
from benchmarks.suite.scoring import score_picks  # noqa: E402

from cryojoint.io.mrc import read_micrograph  # noqa: E402
from cryojoint.metrics.picking import picks_matching_truth  # noqa: E402

#: No reference particle lies this close to an edge (binned px; benchmarks/README.md, real-bgal caveats).
EDGE_BAND_PX = 32
#: Distance bands (in particle diameters) the unmatched picks are counted in.
DISTANCE_EDGES_DIAMETERS = (0.5, 0.75, 1.0, 1.5)


def top_candidates(pred_dir: Path, data: DoseData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every candidate (best first), and the top ones, as many as reference particles, with whether each matches a
    reference particle (the benchmark's maximum one-to-one matching within the true radius) and its distance to the
    nearest reference centre."""
    ranked = pd.concat([pd.read_csv(pred_dir / "candidates" / f"{name}.csv").assign(micrograph=name)
                        for name in data.test_names], ignore_index=True)
    ranked = ranked.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    top = ranked.head(len(data.test_truth)).copy()
    top["matched"] = picks_matching_truth(top, data.test_truth, data.true_diameter_px / 2.0)
    nearest = np.zeros(len(top))
    for name, rows in top.groupby("micrograph").groups.items():
        truth = data.test_truth.loc[data.test_truth["micrograph"] == name, ["x", "y"]].to_numpy()
        nearest[top.index.get_indexer(rows)] = cKDTree(truth).query(top.loc[rows, ["x", "y"]].to_numpy())[0]
    top["nearest_reference_px"] = nearest
    return ranked, top


def in_edge_band(table: pd.DataFrame, shape: tuple[int, int]) -> pd.Series:
    return ((table["x"] < EDGE_BAND_PX) | (table["y"] < EDGE_BAND_PX) | (table["x"] > shape[1] - 1 - EDGE_BAND_PX)
            | (table["y"] > shape[0] - 1 - EDGE_BAND_PX))


def draw(figure: Path, data: DoseData, far: pd.DataFrame, hits: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = {n: read_micrograph(p).data for n, p in zip(data.test_names, data.test_mrcs)}
    half, radius = int(data.true_diameter_px), data.true_diameter_px / 2.0
    picks = list(far.iterrows()) + list(hits.iterrows())
    fig, axes = plt.subplots(3, 8, figsize=(16, 6.3))
    for ax, (_, pick) in zip(axes.ravel(), picks):
        image = images[pick["micrograph"]]
        x, y = int(round(pick["x"])), int(round(pick["y"]))
        crop = image[max(0, y - half):y + half + 1, max(0, x - half):x + half + 1]
        ax.imshow(crop, cmap="gray")
        title = "reference" if pick["matched"] else f"not in reference ({pick['nearest_reference_px']:.0f} px)"
        ax.set_title(f"{title}\nscore {pick['score']:.1f}", fontsize=8)
        ax.add_patch(plt.Circle((min(x, half), min(y, half)), radius, fill=False, lw=0.8,
                                color="cyan" if pick["matched"] else "yellow"))
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=72)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred_dir", type=Path)
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "benchmarks" / ".cache")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    profile = PROFILES["real-bgal"]
    data = load_dose_data(ensure_dataset(profile.structures[0], profile, args.cache, print), "real", profile)
    ranked, top = top_candidates(args.pred_dir, data)
    shape = read_micrograph(data.test_mrcs[0]).data.shape
    edge = in_edge_band(ranked, shape)
    unmatched = top[~top["matched"]]
    diameter = data.true_diameter_px
    bands = [0.0, *DISTANCE_EDGES_DIAMETERS, np.inf]
    counts = {}
    for low, high in zip(bands[:-1], bands[1:]):
        inside = unmatched[(unmatched["nearest_reference_px"] >= low * diameter)
                           & (unmatched["nearest_reference_px"] < high * diameter)]
        counts[f"{low:g}-{high:g} diameters"] = {"all": int(len(inside)),
                                                 "in_edge_band": int(in_edge_band(inside, shape).sum())}
    columns = ["micrograph", "x", "y", "score"]
    as_scored = score_picks(data, ranked[columns], None)
    inner = score_picks(data, ranked.loc[~edge, columns], None)
    record = {
        "pred_dir": str(args.pred_dir), "n_reference": int(len(data.test_truth)), "n_top": int(len(top)),
        "n_top_unmatched": int(len(unmatched)),
        "n_top_unmatched_in_edge_band": int(in_edge_band(unmatched, shape).sum()),
        "unmatched_by_distance": counts, "edge_band_px": EDGE_BAND_PX,
        "ap": as_scored["average_precision"], "best_f1": as_scored["best_f1"],
        "ap_without_edge_band": inner["average_precision"], "best_f1_without_edge_band": inner["best_f1"],
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# real-bgal: the confident picks the reference does not hold", "",
             f"`scripts/real_bgal_false_positives.py {args.pred_dir}`: the top {len(top)} candidates (as many as "
             f"reference particles); {len(unmatched)} match none ({record['n_top_unmatched_in_edge_band']} of them "
             f"within {EDGE_BAND_PX} px of an edge, where the reference holds no particle).", "",
             "| nearest reference centre | unmatched top picks | of them in the edge band |", "|---|---:|---:|"]
    lines += [f"| {band} | {c['all']} | {c['in_edge_band']} |" for band, c in counts.items()]
    lines += ["", f"AP {record['ap']:.3f} (best F1 {record['best_f1']:.3f}) as the benchmark scores; without the "
              f"candidates in the {EDGE_BAND_PX} px edge band {record['ap_without_edge_band']:.3f} "
              f"(best F1 {record['best_f1_without_edge_band']:.3f})."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.figure:
        far = unmatched[(unmatched["nearest_reference_px"] >= diameter) & ~in_edge_band(unmatched, shape)].head(16)
        hits = top[top["matched"]].iloc[:: max(1, len(top) // 8)].head(8)
        draw(args.figure, data, far, hits)


if __name__ == "__main__":
    main()
