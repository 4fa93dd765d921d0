"""The HTML pieces every part of the report uses: escaping, number formatting, notes and tables."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


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
