"""Parsing what Topaz prints and writes: the training table, per-item timings in a log, extract's picks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

TOPAZ_COORD_COLUMNS = ("image_name", "x_coord", "y_coord")


def _event_seconds(
    lines: Sequence[tuple[float, str]], pattern: str, start_pattern: str | None = None
) -> list[tuple[str, float]]:
    """Durations between successive output lines matching ``pattern`` (group 1 names the item).

    The first item is timed from the last line matching ``start_pattern`` before it (or, without one, from
    the line just before it), so process start-up is left out and per-item costs are comparable.
    """
    regex = re.compile(pattern)
    start_regex = re.compile(start_pattern) if start_pattern else None
    events: list[tuple[str, float]] = []
    previous_time: float | None = None
    start_time: float | None = None
    for index, (arrival, text) in enumerate(lines):
        match = regex.search(text)
        if match is None:
            if previous_time is None and start_regex is not None and start_regex.search(text):
                start_time = arrival
            continue
        if previous_time is None:
            if start_time is not None:
                previous_time = start_time
            else:
                previous_time = lines[index - 1][0] if index > 0 else 0.0
        events.append((match.group(1), arrival - previous_time))
        previous_time = arrival
    return events


def topaz_picks_to_table(picks: pd.DataFrame) -> pd.DataFrame:
    """Topaz's extract output (image_name, x_coord, y_coord, score) as our picks table, best first."""
    table = pd.DataFrame(
        {
            "micrograph": picks["image_name"].astype(str).to_numpy(),
            "x": picks["x_coord"].to_numpy(dtype=float),
            "y": picks["y_coord"].to_numpy(dtype=float),
            "score": picks["score"].to_numpy(dtype=float),
        }
    )
    return table.sort_values(["micrograph", "score"], ascending=[True, False], kind="stable").reset_index(
        drop=True
    )


def read_topaz_picks(path: Path) -> pd.DataFrame:
    """Read ``topaz extract -o`` output into our picks table."""
    raw = pd.read_csv(path, sep="\t", dtype={"image_name": str})
    return topaz_picks_to_table(raw)


def parse_training_curve(lines: Iterable[tuple[float, str]]) -> pd.DataFrame:
    """The per-minibatch / per-epoch table ``topaz train`` prints, with each row's arrival time (s).

    Columns: epoch, iter, split ("train"/"test"), Topaz's metrics (loss, ge_penalty, precision,
    adjusted_precision, tpr, fpr, auprc; "-" → NaN) and ``seconds`` since the command started.
    """
    header: list[str] | None = None
    rows: list[list[str]] = []
    times: list[float] = []
    for arrival, text in lines:
        fields = text.rstrip("\n").split("\t")
        if fields[:3] == ["epoch", "iter", "split"]:
            header = fields
            continue
        if header is not None and len(fields) == len(header) and fields[2] in ("train", "test"):
            rows.append(fields)
            times.append(arrival)
    if header is None:
        return pd.DataFrame(columns=["epoch", "iter", "split", "seconds"])
    curve = pd.DataFrame(rows, columns=header)
    for column in header:
        if column != "split":
            curve[column] = pd.to_numeric(curve[column], errors="coerce")
    curve["seconds"] = times
    return curve


def seconds_per_minibatch(curve: pd.DataFrame) -> float:
    """Median gap between successive training minibatches of one epoch (excludes test passes and start-up)."""
    train = curve[curve["split"] == "train"]
    gaps = [np.diff(group["seconds"].to_numpy()) for _, group in train.groupby("epoch")]
    flat = np.concatenate([g for g in gaps if g.size]) if any(g.size for g in gaps) else np.array([])
    return float(np.median(flat)) if flat.size else float("nan")
