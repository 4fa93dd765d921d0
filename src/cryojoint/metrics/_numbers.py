"""Small number helpers the metric reports share: JSON-safe values, table cells, guarded ratios."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_number(value: Any) -> Any:
    """A plain int/float for JSON; NaN and inf become ``None``."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def format_cell(value: float) -> str:
    """Three decimals, or "-" for a missing or non-finite value (rich tables)."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when there is nothing to divide by (no picks, no truth)."""
    return numerator / denominator if denominator > 0 else float("nan")
