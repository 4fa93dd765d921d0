"""Input lists at scale: shell globs, folders, ``@list.txt`` files and RELION micrograph STAR files.

Users hand thousands of micrographs to a picker; a shell cannot pass them all (``ARG_MAX``), and pipelines
describe them in files. Every command that takes micrographs expands its arguments through
:func:`expand_micrographs`, and coordinate inputs through :func:`expand_paths`, so both accept the same forms:

``mics/*.mrc`` (quoted, so the shell leaves it alone)
    a glob, expanded here in sorted order (``**`` recurses); a path that exists as written is never a glob;
``mics/``
    a folder: every file inside with one of the expected suffixes, sorted by name;
``@list.txt``
    one path per line, relative to the list file's folder or absolute; blank lines and ``#`` comments skipped;
``micrographs_ctf.star`` (micrographs only)
    a RELION micrograph STAR file: the ``_rlnMicrographName`` column of its ``data_micrographs`` block (or of its
    only loop, RELION 3.0), paths relative to the current folder (the RELION project folder), as RELION writes
    them (the optics block is kept; the pixel size of the MRC headers is what the commands use).
"""

from __future__ import annotations

import glob
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import starfile

from cryojoint.errors import UserInputError

#: Suffixes of micrograph files a folder argument contributes.
MICROGRAPH_SUFFIXES: frozenset[str] = frozenset({".mrc", ".mrcs"})
#: Characters that make an argument a glob pattern (when no file of that exact name exists).
_GLOB_CHARACTERS = frozenset("*?[")
LIST_PREFIX = "@"
#: Columns of coordinate files (particles STAR, coordinate index): their micrograph names are not a list.
_COORDINATE_COLUMNS = frozenset({"rlnCoordinateX", "rlnMicrographCoordinates"})


@dataclass
class MicrographsStar:
    """A RELION micrograph STAR file as read: its optics block (``None`` for RELION 3.0) and micrograph rows.

    ``paths`` are the files the rows name, resolved against the project folder; ``micrographs`` keeps every
    column (CTF values, optics group, ...) so a job can write a new micrographs STAR with the same metadata.
    """

    source: Path
    optics: pd.DataFrame | None
    micrographs: pd.DataFrame
    paths: list[Path]

    def pixel_size(self) -> float | None:
        """The micrographs' pixel size in Å/px from the optics block, ``None`` when absent or not unique."""
        if self.optics is None:
            return None
        for column in ("rlnMicrographPixelSize", "rlnImagePixelSize"):
            if column in self.optics.columns:
                values = pd.to_numeric(self.optics[column], errors="coerce").dropna().unique()
                if len(values) == 1 and values[0] > 0:
                    return float(values[0])
        return None


@dataclass
class MicrographInputs:
    """Micrograph files from the command line, in order, and the micrograph STAR files that named some of them
    (with their optics blocks: pixel size, voltage, ... for callers that write STAR files back)."""

    paths: list[Path]
    stars: list[MicrographsStar] = field(default_factory=list)


def expand_paths(items: Iterable[str | Path], folder_suffixes: Iterable[str], what: str) -> list[Path]:
    """Expand globs, folders and ``@list`` files into file paths, in the order given.

    Plain paths are passed through unchecked (the reader that opens them names a missing one); files named in
    a list must exist, since a list names them and the user cannot see which line broke.
    """
    suffixes = {s.lower() for s in folder_suffixes}
    files: list[Path] = []
    for item in items:
        text = str(item)
        if text.startswith(LIST_PREFIX) and not Path(text).exists():
            files.extend(_read_list_file(Path(text[len(LIST_PREFIX):]), suffixes, what))
        elif Path(text).is_dir():
            inside = sorted(p for p in Path(text).iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not inside:
                raise UserInputError(text, f"folder holds no {what} files ({', '.join(sorted(suffixes))})")
            files.extend(inside)
        elif _GLOB_CHARACTERS & set(text) and not Path(text).exists():
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                raise UserInputError(text, f"pattern matches no {what} file")
            files.extend(matches)
        else:
            files.append(Path(text))
    return files


def _read_list_file(path: Path, suffixes: set[str], what: str) -> list[Path]:
    """The files a list names: one per line, relative to the list's folder, ``#`` comments and blanks skipped."""
    if not path.is_file():
        raise UserInputError(path, "list file not found" if not path.exists() else "list file is a folder")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserInputError(path, f"cannot read list file ({err})") from None
    listed: list[Path] = []
    for line_no, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        target = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        if target.is_dir():
            listed.extend(expand_paths([target], suffixes, what))
        elif not target.is_file():
            raise UserInputError(path, f"line {line_no}: {what} file '{entry}' not found (looked for {target})")
        else:
            listed.append(target)
    if not listed:
        raise UserInputError(path, f"list file names no {what} files")
    return listed


#: pandas' message for a row with more values than the loop has columns.
_RAGGED_ROW = re.compile(r"Expected (?P<declared>\d+) fields in line (?P<row>\d+), saw (?P<found>\d+)")


def read_star_tables(path: Path) -> dict[str, pd.DataFrame]:
    """The loops of a STAR file by block name (``starfile``), or a one-line error naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile raises many types on malformed text
        ragged = _RAGGED_ROW.search(str(err))
        if ragged:  # pandas counts lines from the loop's first row, not the file's
            declared, row, found = (int(ragged[k]) for k in ("declared", "row", "found"))
            raise UserInputError(path, f"not a readable STAR file: row {row} of a data loop has {found} values where "
                                 f"its columns want {declared}") from None
        raise UserInputError(path, f"not a readable STAR file ({err.__class__.__name__}: {err})") from None
    return {name: block for name, block in blocks.items() if isinstance(block, pd.DataFrame)}


def read_micrographs_star(path: str | Path, project: str | Path | None = None) -> MicrographsStar:
    """Read a RELION micrograph STAR file; listed paths are relative to ``project`` (default: current folder).

    Every listed micrograph must exist: a pipeline's STAR file pointing at missing files is a broken project,
    better reported before hours of work than at the first missing micrograph.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(path, "micrographs STAR file not found")
    tables = read_star_tables(path)
    micrographs = tables.get("micrographs")
    if micrographs is None:  # RELION 3.0 and hand-made files: the loop naming micrographs, not coordinates
        micrographs = next((t for t in tables.values() if "rlnMicrographName" in t.columns
                            and not _COORDINATE_COLUMNS & set(t.columns)), None)
    if micrographs is None or "rlnMicrographName" not in micrographs.columns:
        raise UserInputError(path, "no data_micrographs loop with _rlnMicrographName (not a micrographs STAR "
                             "file; coordinate files go to --labels)")
    if micrographs.empty:
        raise UserInputError(path, "lists no micrographs")
    base = Path(project) if project is not None else Path.cwd()
    paths = []
    for row, name in enumerate(micrographs["rlnMicrographName"].astype(str), 1):
        listed = Path(name)
        resolved = listed if listed.is_absolute() else base / listed
        if not resolved.is_file():
            raise UserInputError(path, f"row {row}: micrograph '{name}' not found (paths in RELION STAR files are "
                                 f"relative to the project folder; looked for {resolved})")
        paths.append(resolved if listed.is_absolute() or project is not None else listed)
    return MicrographsStar(path, tables.get("optics"), micrographs.reset_index(drop=True), paths)


def expand_micrographs(items: Sequence[str | Path]) -> MicrographInputs:
    """Micrograph files named by the arguments (globs, folders, ``@list`` files, micrograph STAR files)."""
    if not items:
        raise UserInputError(None, "no micrographs given")
    inputs = MicrographInputs([])
    for path in expand_paths(items, MICROGRAPH_SUFFIXES, "micrograph"):
        if path.suffix.lower() != ".star":
            inputs.paths.append(path)
            continue
        star = read_micrographs_star(path)
        _warn_if_headers_disagree(star)
        inputs.stars.append(star)
        inputs.paths.extend(star.paths)
    return inputs


#: Relative difference of two pixel sizes of one set of micrographs worth a warning (a STAR file's optics vs the
#: headers here; a trained model's micrographs vs predict's in :mod:`cryojoint.prediction`).
PIXEL_SIZE_WARN_RATIO = 0.05


def _warn_if_headers_disagree(star: MicrographsStar) -> None:
    """Binning and Ångström diameters read the MRC headers: say so when the STAR file's optics give another pixel
    size (one header read: the first micrograph it names; unreadable files are reported where they are read)."""
    from cryojoint.io.mrc import micrograph_pixel_size

    given = star.pixel_size()
    if given is None or not star.paths:
        return
    try:
        header = micrograph_pixel_size(star.paths[0])
    except (UserInputError, OSError):
        return
    if header is None or abs(header / given - 1.0) > PIXEL_SIZE_WARN_RATIO:
        says = "gives no pixel size" if header is None else f"says {header:.4g} Å/px"
        warnings.warn(f"{star.source}: its optics give {given:.4g} Å/px but the header of {star.paths[0]} {says}; "
                      "cryojoint reads the headers (an Ångström --particle-diameter and binning follow them): fix "
                      "the headers, or give the diameter in px", UserWarning, stacklevel=3)
