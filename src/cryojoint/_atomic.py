"""Atomic file writing: outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from cryojoint.errors import UserInputError

#: Permissions asked for new files; the process umask trims them, as for any ``open(path, "w")``.
_NEW_FILE_MODE = 0o666


def check_can_write(path: str | Path, overwrite: bool) -> None:
    """Fail early, before any work, when ``path`` exists (without overwrite) or its folder is unwritable.

    Creates nothing: a command that fails on its inputs afterwards leaves no empty output folder behind.
    """
    path = Path(path)
    if path.is_dir():
        raise UserInputError(path, "is a folder; expected an output file name")
    if path.exists() and not overwrite:
        raise UserInputError(path, "already exists (pass --overwrite to replace it)")
    folder = path.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor or "."))
    if not existing.is_dir():
        raise UserInputError(folder, f"cannot create output folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(folder, "output folder is not writable" if existing == folder
                             else f"cannot create output folder ({existing} is not writable)")


def check_report_file(path: str | Path, suffix: str, option: str) -> None:
    """A report file (``--png``, ``--json``) replaces what its name holds: only a name with its own suffix, so a
    mistyped option cannot turn a STAR or MRC file (a predict folder's ``candidates.star``) into a figure."""
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise UserInputError(path, f"{option} writes a {suffix} file: give a name ending in {suffix}")
    if path.is_dir():
        raise UserInputError(path, "is a folder; expected an output file name")


def make_output_folder(folder: str | Path) -> None:
    """Create an output folder and its parents; a file in the way or a refusal is the user's one-line error."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
        problem = f"{blocking} is a file" if blocking is not None and not blocking.is_dir() else err.strerror
        raise UserInputError(folder, f"cannot create output folder ({problem})") from None


def _new_temp_file(path: Path) -> Path:
    """Create an empty hidden file next to ``path`` with the permissions a plain ``open`` would give.

    ``tempfile.mkstemp`` creates files readable only by their owner, and the rename would carry that onto the
    output; users sharing a project folder need the usual umask-derived permissions.
    """
    while True:
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE)
        except FileExistsError:
            continue
        except OSError as err:
            raise UserInputError(path.parent, f"cannot write in output folder ({err.strerror})") from None
        os.close(fd)
        return tmp


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    check_can_write(path, overwrite)
    make_output_folder(path.parent)
    tmp = _new_temp_file(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
