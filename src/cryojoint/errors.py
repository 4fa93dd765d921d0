"""Errors a user can cause and fix, as opposed to bugs.

The CLI turns a :class:`UserInputError` into one line ``error: <file>: <problem>`` and exit code 2; every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserInputError(Exception):
    """A problem with something the user handed us (a file, an option), named precisely."""

    def __init__(self, source: str | Path | None, problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.problem.replace("\n", " ").strip()
        return f"{self.source}: {text}" if self.source else text


def first_names(names: list[str], shown: int = 3) -> str:
    """``a, b, c, ...``: enough of a list of micrographs for a message line to name them without running on."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


class StopRequested(Exception):
    """A caller's stop hook ended a long run early (RELION's abort file, a notebook): not a mistake, not a bug.

    Whatever the run had finished is on disk (training: its checkpoint; prediction: the micrographs done).
    """


def check_number(value: float | None, option: str, *, at_least: float | None = None,
                 above: float | None = None) -> None:
    """A numeric option the user gave: finite (NaN passes every comparison silently), and within its range."""
    import math

    if value is None:
        return
    bound = "" if at_least is None and above is None else \
        f" >= {at_least:g}" if at_least is not None else f" > {above:g}"
    if (not math.isfinite(value) or (at_least is not None and value < at_least)
            or (above is not None and value <= above)):
        raise UserInputError(None, f"{option} must be a finite number{bound}, got {value:g}")
