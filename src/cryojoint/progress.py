"""One progress bar for counted work (micrographs simulated or predicted), silent when disabled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def counted_progress(total: int, enabled: bool, label: str) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` callable backed by a rich progress bar (a no-op when ``enabled`` is false)."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("", total=total)
        yield lambda: bar.advance(task)
