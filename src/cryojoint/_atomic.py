"""Atomic file writing: outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryojoint.errors import UserInputError


def check_can_write(path: Path, overwrite: bool) -> None:
    """Fail early, before any work, when ``path`` exists (without overwrite) or its folder is unwritable."""
    if path.exists() and not overwrite:
        raise UserInputError(path, "already exists (pass --overwrite to replace it)")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(folder, f"cannot create output folder ({err.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise UserInputError(folder, "output folder is not writable")


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    check_can_write(path, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
