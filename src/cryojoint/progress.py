"""One progress bar for counted work (micrographs simulated or predicted), silent when disabled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

#: Widest a line may grow when output goes to a file or pipe (a batch job's log has no width; rich assumes 80 and
#: wraps every note and table there).
LOG_FILE_WIDTH = 400


def output_console() -> Console:
    """rich's console for stdout: the terminal's (or notebook's) width there, wide enough not to wrap in a log file."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal or console.is_jupyter else Console(width=LOG_FILE_WIDTH)


@contextmanager
def counted_progress(total: int, enabled: bool, label: str) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` callable backed by a rich progress bar (a no-op when ``enabled`` is false)."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=output_console()) as bar:
        task = bar.add_task("", total=total)
        yield lambda: bar.advance(task)
