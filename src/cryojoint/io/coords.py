"""Particle coordinate files: one in-memory table, readers and writers chosen through a lookup table.

The table is a :class:`pandas.DataFrame` with columns

``micrograph``
    micrograph name: basename without directory or extension, the key RELION and Topaz users match by;
``x``, ``y``
    particle centre in pixels of the micrograph as given (x = column, y = row, origin at the first pixel);
``score``
    figure of merit, ``NaN`` when the file has none.

Other columns (angles, defocus, ...) pass through. EMAN BOX and crYOLO CBOX corner <-> centre conversion
happens only here, at the file boundary.

Why one module of ~650 lines: every format's reader and writer sits beside the lookup table that
:func:`read_coordinates` and :func:`write_coordinates` dispatch through, so the table convention (centres,
micrograph names, the BOX conversion) is enforced in one place for all seven formats.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from cryojoint._atomic import atomic_path, check_can_write
from cryojoint.errors import UserInputError, check_number
from cryojoint.io.inputs import expand_paths, read_star_tables
from cryojoint.io.mrc import micrograph_name

COLUMNS: tuple[str, ...] = ("micrograph", "x", "y", "score")

#: RELION column names of the table's columns.
STAR_COLUMNS: dict[str, str] = {
    "x": "rlnCoordinateX",
    "y": "rlnCoordinateY",
    "micrograph": "rlnMicrographName",
    "score": "rlnAutopickFigureOfMerit",
}
#: Extra columns RELION knows, kept under our own names when present.
STAR_EXTRA_COLUMNS: dict[str, str] = {
    "rlnAngleRot": "angle_rot",
    "rlnAngleTilt": "angle_tilt",
    "rlnAnglePsi": "angle_psi",
    "rlnDefocusU": "defocus_u",
    "rlnDefocusV": "defocus_v",
    "rlnClassNumber": "class_number",
    "rlnOpticsGroup": "optics_group",
}
#: Extra columns that RELION reads as integers (a missing value drops the column when writing).
STAR_INTEGER_COLUMNS: frozenset[str] = frozenset({"rlnClassNumber", "rlnOpticsGroup"})
#: The optics block of RELION 3.1+ STAR files, and its column of the micrographs' pixel size (Å/px).
STAR_OPTICS_BLOCK = "optics"
STAR_MICROGRAPH_PIXEL_SIZE = "rlnMicrographPixelSize"
#: Names that CSV files from other tools use for our columns.
CSV_ALIASES: dict[str, tuple[str, ...]] = {
    "micrograph": ("micrograph", "image_name", "micrograph_name", "rlnmicrographname", "name", "image"),
    "x": ("x", "x_coord", "rlncoordinatex", "coordinate_x", "xcoord"),
    "y": ("y", "y_coord", "rlncoordinatey", "coordinate_y", "ycoord"),
    "score": ("score", "rlnautopickfigureofmerit", "confidence", "probability", "fom"),
}
TOPAZ_HEADER: tuple[str, ...] = ("image_name", "x_coord", "y_coord")
#: What RELION appends to a micrograph's name in its per-micrograph coordinate STAR files.
RELION_COORDINATE_FILE_SUFFIXES: tuple[str, ...] = ("_autopick", "_manualpick", "_pick", "_coords")
#: The one cryojoint writes (``<mic>_autopick.star``): RELION's import of coordinates takes the text after the
#: micrograph's name as the files' suffix, and an empty one does not work there.
RELION_COORDINATE_SUFFIX = RELION_COORDINATE_FILE_SUFFIXES[0]
#: The largest binning factor ``convert --scale`` takes either way: binned previews are a few to tens of times smaller.
MAX_SCALE = 1000.0
#: Files up to this size are checked for holding only whitespace; larger ones go through their format's reader.
_BLANK_FILE_MAX_BYTES = 4096
#: How text files spell a missing number (lower case).
MISSING_VALUE_SPELLINGS: frozenset[str] = frozenset({"", "nan", "na", "n/a", "null", "none", "<na>"})
#: Twelve significant digits keep coordinates of micrographs up to 10^6 px to 10^-6 px (as RELION's 6 decimals) and
#: scores as predict compared them. One format for CSV and STAR, so a score reads back the same from either (predict
#: cuts on the per-micrograph CSVs' values; starfile's default of 6 decimals put candidates just under that cut-off).
FLOAT_FORMAT = "%.12g"
#: The column that, when present, holds the micrograph file name to write into STAR files.
FILE_NAME_COLUMN = "micrograph_file"
#: Columns that, when present, carry what a cryoSPARC ``.cs`` file needs beyond the centres: the micrograph's
#: path as cryoSPARC or the user knows it, its size in pixels (rows, columns) and cryoSPARC's exposure UID.
PATH_COLUMN, SHAPE_Y_COLUMN, SHAPE_X_COLUMN, UID_COLUMN = (
    "micrograph_path", "micrograph_shape_y", "micrograph_shape_x", "micrograph_uid")
#: cryoSPARC prefixes the files it imports or writes with a numeric UID and ``_`` (``012345..._mic_001.mrc``);
#: names are matched without it (pyem's --strip-uid). cryoSPARC's UIDs are 64-bit numbers written with about
#: 20 digits; shorter digit runs (dates, Unix times) are kept: they are real names.
_CRYOSPARC_UID_PREFIX = re.compile(r"^\d{15,}_(?=.)")
#: crYOLO's CBOX layout (version 1.0), the file napari-boxmanager and crYOLO read with their confidence slider:
#: a STAR file with a ``global`` block, a ``cryolo`` loop of boxes (lower-left corner, width, height, the
#: confidence) and a ``cryolo_include`` loop of 3D slice indices (empty for a 2D micrograph).
CBOX_VERSION = "1.0"
CBOX_COLUMNS: tuple[str, ...] = ("CoordinateX", "CoordinateY", "CoordinateZ", "Width", "Height", "Depth",
                                 "EstWidth", "EstHeight", "Confidence", "NumBoxes", "Angle")
#: Columns of crYOLO's CBOX files written before version 1.0 (tab-separated, no header).
CBOX_LEGACY_COLUMNS = 5


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({"micrograph": pd.Series(dtype=str), "x": pd.Series(dtype=float),
                         "y": pd.Series(dtype=float), "score": pd.Series(dtype=float)})


def make_table(
    micrograph: str | Sequence[str], x: Iterable[float], y: Iterable[float], score: Iterable[float] | None = None
) -> pd.DataFrame:
    """Build a coordinate table from arrays (the form every reader returns)."""
    xs = np.asarray(list(x), dtype=float)
    ys = np.asarray(list(y), dtype=float)
    names = [micrograph] * len(xs) if isinstance(micrograph, str) else list(micrograph)
    scores = np.full(len(xs), np.nan) if score is None else np.asarray(list(score), dtype=float)
    return pd.DataFrame({"micrograph": pd.Series(names, dtype=str), "x": xs, "y": ys, "score": scores})


# ----------------------------------------------------------------------------------------------- readers


def _read_star(path: Path, box_size: float | None) -> pd.DataFrame:
    tables = list(read_star_tables(path).values())
    index = next((t for t in tables if "rlnMicrographCoordinates" in t.columns), None)
    if index is not None:  # RELION 4/5 coordinate index: one row per micrograph, pointing at its own file
        parts = []
        bases = _listed_file_bases(path)
        for mic_name, coord_file in zip(index["rlnMicrographName"], index["rlnMicrographCoordinates"]):
            coord_path = _resolve_listed_file(str(coord_file), path, bases)
            part = _read_star(coord_path, box_size)
            part["micrograph"] = micrograph_name(mic_name)
            part[FILE_NAME_COLUMN] = str(mic_name)  # the index's whole name, as the coordinates' own STARs would
            parts.append(part)
        return pd.concat(parts, ignore_index=True) if parts else empty_table()
    coords = next((t for t in tables if {"rlnCoordinateX", "rlnCoordinateY"} <= set(t.columns)), None)
    if coords is None:
        if not tables:
            raise UserInputError(path, "no data loop found (empty or malformed STAR file)")
        raise UserInputError(path, "no rlnCoordinateX/rlnCoordinateY columns in any data block")
    if "rlnMicrographName" in coords.columns:
        names = [micrograph_name(n) for n in coords["rlnMicrographName"].astype(str)]
    else:  # one file per micrograph (RELION autopick style): the file's own name says which
        names = [_name_from_coordinate_file(path)] * len(coords)
    table = make_table(
        names,
        _numeric(coords["rlnCoordinateX"], path, "rlnCoordinateX"),
        _numeric(coords["rlnCoordinateY"], path, "rlnCoordinateY"),
        _numeric(coords["rlnAutopickFigureOfMerit"], path, "rlnAutopickFigureOfMerit")
        if "rlnAutopickFigureOfMerit" in coords.columns else None,
    )
    if "rlnMicrographName" in coords.columns:
        # As written (with RELION's job folders): RELION matches picks to micrographs by this whole name.
        table[FILE_NAME_COLUMN] = coords["rlnMicrographName"].astype(str).to_numpy()
    for star_name, our_name in STAR_EXTRA_COLUMNS.items():
        if star_name in coords.columns:
            table[our_name] = pd.to_numeric(coords[star_name], errors="coerce").to_numpy()
    return table


def _read_box(path: Path, box_size: float | None) -> pd.DataFrame:
    values = _read_numeric_rows(path, min_columns=4)
    corner_x, corner_y, width, height = values[:, 0], values[:, 1], values[:, 2], values[:, 3]
    return make_table(_name_from_coordinate_file(path), corner_x + width / 2, corner_y + height / 2)


def _read_csv(path: Path, box_size: float | None) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, sep=None, engine="python", dtype=str, skipinitialspace=True,
                            keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserInputError(path, "file is empty; expected a CSV header and coordinates") from None
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as err:
        raise UserInputError(path, f"malformed CSV ({err})") from None
    lowered = {c.lower().strip(): c for c in frame.columns}
    found: dict[str, str] = {}
    for ours, aliases in CSV_ALIASES.items():
        match = next((lowered[a] for a in aliases if a in lowered), None)
        if match is not None:
            found[ours] = match
    missing = [c for c in ("x", "y") if c not in found]
    if missing:
        raise UserInputError(path, f"no column for {' and '.join(missing)} (columns: {', '.join(frame.columns)})")
    names = (frame[found["micrograph"]].astype(str).map(micrograph_name)
             if "micrograph" in found else [_name_from_coordinate_file(path)] * len(frame))
    return make_table(
        list(names),
        _numeric(frame[found["x"]], path, found["x"]),
        _numeric(frame[found["y"]], path, found["y"]),
        _numeric(frame[found["score"]], path, found["score"]) if "score" in found else None,
    )


def _read_cbox(path: Path, box_size: float | None) -> pd.DataFrame:
    """crYOLO CBOX: box corners and sizes (centre = corner + size / 2) and ``_Confidence`` as the score."""
    if not path.read_bytes().lstrip().startswith((b"data_", b"#")):  # crYOLO < 1.7: x y w h confidence
        values = _read_numeric_rows(path, min_columns=CBOX_LEGACY_COLUMNS)
        return make_table(_name_from_coordinate_file(path), values[:, 0] + values[:, 2] / 2,
                          values[:, 1] + values[:, 3] / 2, values[:, 4])
    tables = read_star_tables(path)
    boxes = tables.get("cryolo")
    if boxes is None:
        raise UserInputError(path, "no 'data_cryolo' block: not a crYOLO CBOX file")
    missing = [c for c in ("CoordinateX", "CoordinateY", "Width", "Height") if c not in boxes.columns]
    if missing:
        raise UserInputError(path, f"no {', '.join(missing)} column(s) in its data_cryolo block")
    if "CoordinateZ" in boxes.columns and boxes["CoordinateZ"].notna().any():
        raise UserInputError(path, "holds 3D (tomogram) boxes; cryojoint picks on 2D micrographs")
    corner_x = _numeric(boxes["CoordinateX"], path, "CoordinateX")
    corner_y = _numeric(boxes["CoordinateY"], path, "CoordinateY")
    width, height = _numeric(boxes["Width"], path, "Width"), _numeric(boxes["Height"], path, "Height")
    score = _numeric(boxes["Confidence"], path, "Confidence") if "Confidence" in boxes.columns else None
    return make_table(_name_from_coordinate_file(path), corner_x + width / 2, corner_y + height / 2, score)


def _read_topaz(path: Path, box_size: float | None) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserInputError(path, "file is empty; expected a Topaz header 'image_name x_coord y_coord'") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserInputError(path, f"malformed Topaz coordinate file ({err})") from None
    if not set(TOPAZ_HEADER) <= set(frame.columns):
        raise UserInputError(path, "missing Topaz header 'image_name\\tx_coord\\ty_coord'")
    return make_table(
        list(frame["image_name"].astype(str).map(micrograph_name)),
        _numeric(frame["x_coord"], path, "x_coord"),
        _numeric(frame["y_coord"], path, "y_coord"),
        _numeric(frame["score"], path, "score") if "score" in frame.columns else None,
    )


def _read_imod(path: Path, box_size: float | None) -> pd.DataFrame:
    """IMOD ``model2point`` text: ``x y z``, ``contour x y z`` (-contour) or ``object contour x y z`` (-object)."""
    values = _read_numeric_rows(path, min_columns=3)
    xyz = values[:, -3:]
    return make_table(_name_from_coordinate_file(path), xyz[:, 0], xyz[:, 1])


def _read_cs(path: Path, box_size: float | None) -> pd.DataFrame:
    """cryoSPARC particles (``location/*``: centres as fractions of the micrograph's width and height)."""
    dataset = _load_cs(path)
    fields = set(dataset.fields())
    needed = ["location/micrograph_path", "location/micrograph_shape", "location/center_x_frac",
              "location/center_y_frac"]
    missing = [f for f in needed if f not in fields]
    if missing:
        raise UserInputError(path, f"no {', '.join(missing)} field(s): not a cryoSPARC particle file with "
                             "locations (export the particles of a picking or extraction job)")
    paths = [str(p) for p in dataset["location/micrograph_path"]]
    shape = np.asarray(dataset["location/micrograph_shape"], dtype=float).reshape(len(paths), 2)
    x = np.asarray(dataset["location/center_x_frac"], dtype=float) * shape[:, 1]
    y = np.asarray(dataset["location/center_y_frac"], dtype=float) * shape[:, 0]
    score = np.asarray(dataset["pick_stats/ncc_score"], dtype=float) if "pick_stats/ncc_score" in fields else None
    files = [strip_cryosparc_uid(Path(p).name) for p in paths]
    table = make_table([micrograph_name(f) for f in files], x, y, score)
    table[FILE_NAME_COLUMN] = files
    table[PATH_COLUMN] = paths
    table[SHAPE_Y_COLUMN], table[SHAPE_X_COLUMN] = shape[:, 0].astype(int), shape[:, 1].astype(int)
    if "location/micrograph_uid" in fields:
        table[UID_COLUMN] = np.asarray(dataset["location/micrograph_uid"], dtype=np.uint64)
    return table


def _load_cs(path: Path):  # noqa: ANN202 - a cryosparc.dataset.Dataset (imported lazily)
    from cryosparc.dataset import Dataset

    try:
        return Dataset.load(path)
    except Exception as err:  # DatasetLoadError, or numpy's errors on a truncated array
        raise UserInputError(path, f"not a readable cryoSPARC .cs file ({err.__class__.__name__})") from None


def strip_cryosparc_uid(file_name: str) -> str:
    """``01234567890123456789_mic_001.mrc`` -> ``mic_001.mrc``; other names unchanged."""
    return _CRYOSPARC_UID_PREFIX.sub("", file_name)


Reader = Callable[[Path, "float | None"], pd.DataFrame]
READERS: dict[str, Reader] = {
    "star": _read_star,
    "box": _read_box,
    "csv": _read_csv,
    "topaz": _read_topaz,
    "imod": _read_imod,
    "cs": _read_cs,
    "cbox": _read_cbox,
}

# ----------------------------------------------------------------------------------------------- writers


#: What a STAR row must not begin with: a block, loop or save-frame keyword, a column label, a quote or a text
#: field would be read as such (lower case; STAR keywords are case-insensitive). A "#" anywhere starts a comment
#: unless the value is quoted.
_STAR_RESERVED_STARTS: tuple[str, ...] = ("data_", "loop_", "save_", "global_", "stop_", "_", "'", '"', ";")


def star_safe_name(name: str) -> str:
    """A micrograph path a STAR row can start with: ``./`` before one that begins like STAR syntax (a folder
    ``data_2024/``, ``_raw/``), which names the same file and the same micrograph."""
    return f"./{name}" if name.lower().startswith(_STAR_RESERVED_STARTS) else name


def _write_star(table: pd.DataFrame, path: Path, box_size: float | None,
                optics: pd.DataFrame | None = None) -> None:
    """``optics`` (RELION 3.1+'s optics block) is written only when every pick names its optics group."""
    file_names = _micrograph_file_names(table).map(star_safe_name)
    frame = pd.DataFrame({
        STAR_COLUMNS["micrograph"]: file_names.to_numpy(),
        STAR_COLUMNS["x"]: table["x"].to_numpy(float),
        STAR_COLUMNS["y"]: table["y"].to_numpy(float),
    })
    if table["score"].notna().any():
        frame[STAR_COLUMNS["score"]] = table["score"].fillna(0.0).to_numpy(float)
    for star_name, our_name in STAR_EXTRA_COLUMNS.items():
        if our_name not in table.columns:
            continue
        values = table[our_name]
        if star_name in STAR_INTEGER_COLUMNS:
            if values.isna().any():  # "1.000000" or "nan" where RELION reads an integer: leave the column out
                continue
            values = values.astype(int)
        frame[star_name] = values.to_numpy()
    blocks = {"particles": frame}
    if optics is not None and "rlnOpticsGroup" in frame.columns:
        blocks = {STAR_OPTICS_BLOCK: optics, **blocks}
    starfile.write(blocks, path, float_format=FLOAT_FORMAT, quote_all_strings=bool(file_names.str.contains("#").any()))


def _write_box(table: pd.DataFrame, path: Path, box_size: float | None) -> None:
    if box_size is None or box_size <= 0:
        raise UserInputError(path, "EMAN .box files need a box size (pass --box-size N, in pixels)")
    half = box_size / 2
    lines = [f"{x - half:.2f}\t{y - half:.2f}\t{box_size:g}\t{box_size:g}"
             for x, y in zip(table["x"].to_numpy(float), table["y"].to_numpy(float))]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def _write_cbox(table: pd.DataFrame, path: Path, box_size: float | None) -> None:
    """crYOLO CBOX 1.0; ``_Confidence`` holds our score (log-odds, the scale of ``--threshold``), so a slider
    on it in napari-boxmanager is the same cut-off ``cryojoint pick --threshold`` applies."""
    if box_size is None or box_size <= 0:
        raise UserInputError(path, "crYOLO .cbox files need a box size (pass --box-size N, in pixels)")
    half, count = box_size / 2, len(table)
    boxes = pd.DataFrame({column: np.full(count, np.nan) for column in CBOX_COLUMNS})
    boxes["CoordinateX"] = table["x"].to_numpy(float) - half
    boxes["CoordinateY"] = table["y"].to_numpy(float) - half
    boxes["Width"] = boxes["Height"] = float(box_size)
    boxes["Confidence"] = table["score"].to_numpy(float)
    starfile.write({"global": {"cbox_format_version": CBOX_VERSION}, "cryolo": boxes,
                    "cryolo_include": pd.DataFrame({"slice_index": pd.Series(dtype=int)})}, path)


def _write_csv(table: pd.DataFrame, path: Path, box_size: float | None) -> None:
    table.loc[:, list(COLUMNS)].to_csv(path, index=False, float_format=FLOAT_FORMAT)


def _write_topaz(table: pd.DataFrame, path: Path, box_size: float | None) -> None:
    frame = pd.DataFrame({
        "image_name": table["micrograph"].astype(str).to_numpy(),
        "x_coord": np.rint(table["x"].to_numpy(float)).astype(int),
        "y_coord": np.rint(table["y"].to_numpy(float)).astype(int),
    })
    if table["score"].notna().any():
        frame["score"] = table["score"].fillna(0.0).to_numpy(float)
    frame.to_csv(path, sep="\t", index=False, float_format="%.6g")


def _write_cs(table: pd.DataFrame, path: Path, box_size: float | None) -> None:
    """cryoSPARC particles with ``location/*`` and ``pick_stats/*``, readable by ``cryosparc-tools``.

    ``pick_stats/ncc_score`` holds our score (log-odds) for Inspect Picks' threshold; ``pick_stats/power`` is
    0 (we measure none). ``location/micrograph_uid`` is the UID read from a ``.cs`` file when there was one,
    else a stable 64-bit hash of the micrograph's name (cryoSPARC's exposure UIDs are unknown here).
    """
    from cryosparc.dataset import Dataset

    check_cs_columns(table, path)
    dataset = Dataset.allocate(len(table), [
        ("location/micrograph_uid", "<u8"), ("location/micrograph_path", "O"),
        ("location/micrograph_shape", "<u4", (2,)), ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"), ("pick_stats/ncc_score", "<f4"), ("pick_stats/power", "<f4"),
    ])
    if len(table):
        shape = table[[SHAPE_Y_COLUMN, SHAPE_X_COLUMN]].to_numpy(float)
        names = table["micrograph"].astype(str)
        known = table[UID_COLUMN] if UID_COLUMN in table.columns else pd.Series([None] * len(table))
        dataset["location/micrograph_uid"] = np.array(
            [int(u) if pd.notna(u) else name_uid(n) for u, n in zip(known, names)], dtype=np.uint64)
        dataset["location/micrograph_path"] = _micrograph_paths(table).to_numpy(object)
        dataset["location/micrograph_shape"] = shape.astype(np.uint32)
        dataset["location/center_x_frac"] = table["x"].to_numpy(float) / shape[:, 1]
        dataset["location/center_y_frac"] = table["y"].to_numpy(float) / shape[:, 0]
        dataset["pick_stats/ncc_score"] = table["score"].fillna(0.0).to_numpy(float)
    with path.open("wb") as handle:
        dataset.save(handle)


def check_cs_columns(table: pd.DataFrame, path: str | Path | None) -> None:
    """A ``.cs`` file stores centres as fractions of the micrograph's size: every row needs that size."""
    if {SHAPE_Y_COLUMN, SHAPE_X_COLUMN} <= set(table.columns) and table[[SHAPE_Y_COLUMN, SHAPE_X_COLUMN]].notna(
    ).all().all():
        return
    raise UserInputError(path, "a cryoSPARC .cs file needs each micrograph's size in pixels: pass the "
                         "micrographs (--micrographs)")


def name_uid(name: str) -> int:
    """A stable 64-bit identifier for a micrograph name (the same name, the same UID, in every run)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _micrograph_file_names(table: pd.DataFrame) -> pd.Series:
    """Each row's micrograph file as its source named it, else ``<name>.mrc`` (rows read from a format that names
    none, such as a CSV converted beside a STAR)."""
    default = table["micrograph"].astype(str) + ".mrc"
    if FILE_NAME_COLUMN not in table.columns:
        return default
    return table[FILE_NAME_COLUMN].where(table[FILE_NAME_COLUMN].notna(), default).astype(str)


def _micrograph_paths(table: pd.DataFrame) -> pd.Series:
    names = _micrograph_file_names(table)
    if PATH_COLUMN in table.columns:
        return table[PATH_COLUMN].where(table[PATH_COLUMN].notna(), names).astype(str)
    return names


def attach_micrographs(table: pd.DataFrame, paths: Sequence[str | Path], source: str | Path | None) -> pd.DataFrame:
    """Add each row's micrograph path and size (from the MRC header) by name: what a ``.cs`` file needs."""
    from cryojoint.io.mrc import micrograph_shape

    by_name = {micrograph_name(p): Path(p) for p in paths}
    check_names_match(table, by_name, source)
    names = table["micrograph"].astype(str)
    shapes = {name: micrograph_shape(by_name[name]) for name in names.unique()}
    table = table.copy()
    table[PATH_COLUMN] = names.map(lambda n: str(by_name[n])).to_numpy(object)
    table[SHAPE_Y_COLUMN] = names.map(lambda n: shapes[n][0]).to_numpy(int)
    table[SHAPE_X_COLUMN] = names.map(lambda n: shapes[n][1]).to_numpy(int)
    return table


Writer = Callable[[pd.DataFrame, Path, "float | None"], None]
WRITERS: dict[str, Writer] = {
    "star": _write_star,
    "box": _write_box,
    "csv": _write_csv,
    "topaz": _write_topaz,
    "cs": _write_cs,
    "cbox": _write_cbox,
}
#: File suffix for each format, and the format for each suffix (``.txt`` is sniffed: Topaz or IMOD).
SUFFIX_OF_FORMAT: dict[str, str] = {"star": ".star", "box": ".box", "csv": ".csv", "topaz": ".txt", "imod": ".txt",
                                    "cs": ".cs", "cbox": ".cbox"}
#: Formats whose files hold the picks of a single micrograph, named by the file.
PER_MICROGRAPH_FORMATS: frozenset[str] = frozenset({"box", "imod", "cbox"})
#: Formats whose writers need a box size.
BOXED_FORMATS: frozenset[str] = frozenset({"box", "cbox"})
FORMAT_OF_SUFFIX: dict[str, str] = {
    ".star": "star", ".box": "box", ".csv": "csv", ".tsv": "topaz", ".pos": "imod", ".pts": "imod", ".coords": "imod",
    ".cs": "cs", ".cbox": "cbox",
}

# ------------------------------------------------------------------------------------------- public API


def detect_format(path: str | Path) -> str:
    """Format from the suffix; ``.txt`` is Topaz when it starts with its header, IMOD point text otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in FORMAT_OF_SUFFIX:
        return FORMAT_OF_SUFFIX[suffix]
    if suffix == ".txt":
        if path.is_file():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                with path.open() as handle:
                    first = handle.readline().split()
                if first and first[0] == TOPAZ_HEADER[0]:
                    return "topaz"
                return "imod"
        return "topaz"
    known = ", ".join(sorted({*FORMAT_OF_SUFFIX, ".txt"}))
    raise UserInputError(path, f"unknown coordinate format '{suffix or '(no suffix)'}' (known: {known})")


def _check_format(fmt: str | None, path: Path, table: dict[str, object]) -> str:
    fmt = detect_format(path) if fmt is None else fmt.lower()
    if fmt not in table:
        raise UserInputError(path, f"unknown coordinate format '{fmt}' (known: {', '.join(table)})")
    return fmt


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def read_coordinates(
    paths: str | Path | Sequence[str | Path], fmt: str | None = None, box_size: float | None = None
) -> pd.DataFrame:
    """Read one or many coordinate files (or a folder of them) into one table.

    Parameters
    ----------
    paths
        A file, a folder (every coordinate file inside), or a list of files. One-file-per-micrograph formats
        (BOX, IMOD, per-micrograph STAR) take the micrograph name from the file name.
    fmt
        ``star``, ``box``, ``csv``, ``topaz`` or ``imod``; ``None`` detects it from the suffix.
    box_size
        Unused when reading (BOX files carry their own box size); kept for symmetry with writing.
    """
    files = _expand(paths)
    parts: list[pd.DataFrame] = []
    read_from: list[Path] = []
    for path in files:
        if not path.is_file():
            raise UserInputError(path, "coordinate file not found")
        file_format = _check_format(fmt, path, READERS)
        if _is_blank(path):  # one file per micrograph: a micrograph without picks
            continue
        table = READERS[file_format](path, box_size)
        finite = np.isfinite(table[["x", "y"]].to_numpy(float)).all(axis=1)
        if not finite.all():
            first = int(np.flatnonzero(~finite)[0])
            raise UserInputError(path, f"contains coordinates that are NaN or not numbers ({int((~finite).sum())} "
                                 f"row(s), the first the {_ordinal(first + 1)} pick: x={table['x'].iloc[first]}, "
                                 f"y={table['y'].iloc[first]})")
        parts.append(table)
        read_from.append(path)
    if _names_a_folder(paths):
        _check_no_micrograph_in_two_files(Path(paths), read_from, parts)
    parts = [part for part in parts if len(part)]
    if not parts:
        if len(files) == 1:
            empty = _is_blank(files[0])
            raise UserInputError(files[0], "file is empty; no particle coordinates found" if empty
                                 else "no particle coordinates found")
        source = paths if isinstance(paths, (str, Path)) else None
        raise UserInputError(source, f"no particle coordinates found in {len(files)} files")
    return pd.concat(parts, ignore_index=True)


def _names_a_folder(paths: str | Path | Sequence[str | Path]) -> bool:
    return isinstance(paths, (str, Path)) and Path(paths).is_dir()


def _check_no_micrograph_in_two_files(folder: Path, files: Sequence[Path], tables: Sequence[pd.DataFrame]) -> None:
    """A folder is read whole: two of its files with picks of one micrograph (labels beside truth, one set in two
    formats) would be merged silently. Files named one by one are merged as asked."""
    seen: dict[str, Path] = {}
    for path, table in zip(files, tables):
        for name in table["micrograph"].astype(str).unique():
            if name in seen:
                raise UserInputError(folder, f"holds two coordinate files with picks of micrograph {name} "
                                     f"({seen[name].name}, {path.name}); a folder is read whole: give the file "
                                     "you mean")
            seen[name] = path


def write_coordinates(
    table: pd.DataFrame,
    path: str | Path,
    fmt: str | None = None,
    box_size: float | None = None,
    overwrite: bool = True,
    star_optics: pd.DataFrame | None = None,
) -> Path:
    """Write ``table`` to one file, atomically (temp file + rename). BOX needs ``box_size`` in pixels;
    ``star_optics`` is the optics block a STAR file carries (:func:`read_star_optics`)."""
    path = Path(path)
    file_format = _check_writable_format(table, path, fmt, box_size)
    if "score" not in table.columns:  # tables built by hand may lack scores; every writer expects the column
        table = table.assign(score=np.nan)
    with atomic_path(path, overwrite=overwrite) as tmp:
        if file_format == "star":
            _write_star(table, tmp, box_size, optics=star_optics)
        else:
            WRITERS[file_format](table, tmp, box_size)
    return path


def per_micrograph_file(folder: str | Path, name: str, fmt: str) -> Path:
    """Where :func:`write_coordinates_per_micrograph` puts micrograph ``name``'s file of format ``fmt``."""
    return Path(folder) / f"{name}{RELION_COORDINATE_SUFFIX if fmt == 'star' else ''}{SUFFIX_OF_FORMAT[fmt]}"


def write_coordinates_per_micrograph(
    table: pd.DataFrame,
    folder: str | Path,
    fmt: str,
    names: Iterable[str] | None = None,
    box_size: float | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """One file per micrograph, ``<folder>/<name><suffix>`` (STAR: ``<name>_autopick.star``, as RELION names them);
    ``names`` adds empty files for pick-less ones."""
    folder = Path(folder)
    all_names = list(dict.fromkeys([*(names or []), *table["micrograph"].astype(str)]))
    targets = {name: per_micrograph_file(folder, name, fmt) for name in all_names}
    for target in targets.values():  # every check before the first write: no half-converted folder
        _check_writable_format(table.iloc[:0], target, fmt, box_size)
        check_can_write(target, overwrite)
    written = []
    for name, target in targets.items():
        rows = table[table["micrograph"].astype(str) == name]
        written.append(write_coordinates(rows, target, fmt, box_size, overwrite))
    return written


def check_inside(table: pd.DataFrame, shapes: dict[str, tuple[int, int]], source: str | Path | None,
                 remedy: str = "", tolerance_px: float = 0.0) -> None:
    """Every coordinate lies inside its micrograph (shape ``(ny, nx)``; pixel centres 0 .. n - 1, give or take
    ``tolerance_px``), or a one-line error names one that doesn't."""
    for name, rows in table.groupby("micrograph", sort=False):
        ny, nx = shapes[str(name)]
        outside = ((rows["x"] < -tolerance_px) | (rows["x"] > nx - 1 + tolerance_px)
                   | (rows["y"] < -tolerance_px) | (rows["y"] > ny - 1 + tolerance_px))
        if outside.any():
            bad = rows[outside].iloc[0]
            raise UserInputError(
                source, f"{int(outside.sum())} coordinate(s) of micrograph '{name}' lie outside its {nx}x{ny} "
                f"pixels (e.g. x={bad['x']:.1f}, y={bad['y']:.1f}); are they in another pixel size?{remedy}"
            )


#: Fewest labels, on at least as many micrographs, from which picks all in one corner are taken as a scale mistake.
CORNER_CHECK_MIN_LABELS, CORNER_CHECK_MIN_MICROGRAPHS = 20, 3


def labels_in_a_corner(table: pd.DataFrame, shapes: dict[str, tuple[int, int]]) -> float | None:
    """The bin factor (2 or more) by which every label sits inside the top-left ``1/factor`` of its micrograph, when
    there are enough labels to say so; ``None`` otherwise.

    Picks made on binned copies (a 4x-binned preview, cryoSPARC's or RELION's downscaled micrographs) and given with
    the full-size micrographs lie inside them, so no coordinate check stops them, and they all crowd the top-left
    corner. Partial labels in one region per micrograph fall there on every one of 3 micrographs by chance about
    once in 10^4 (a region a third of the field wide lies within the top-left quarter with probability ~0.04).
    """
    names = set(table["micrograph"].astype(str))
    if len(table) < CORNER_CHECK_MIN_LABELS or len(names) < CORNER_CHECK_MIN_MICROGRAPHS:
        return None
    sizes = np.array([shapes[str(name)] for name in table["micrograph"]], dtype=float)  # (ny, nx) per label
    reach = max(float((table["x"].to_numpy(float) / sizes[:, 1]).max()),
                float((table["y"].to_numpy(float) / sizes[:, 0]).max()))
    factor = int(1.0 / reach) if reach > 0 else 0
    return float(factor) if factor >= 2 else None


def check_coordinate_table(table: Any, what: str) -> pd.DataFrame:
    """A table of picks handed over in memory: columns micrograph, x, y (px), finite numbers; a clean copy."""
    if not isinstance(table, pd.DataFrame):
        raise UserInputError(what, f"expected a pandas DataFrame or a coordinate file, got {type(table).__name__}")
    missing = [c for c in ("micrograph", "x", "y") if c not in table.columns]
    if missing:
        present = ", ".join(map(str, table.columns))
        raise UserInputError(what, f"table lacks column(s) {', '.join(missing)} (it has {present}; "
                             "read_coordinates turns STAR/BOX/CSV/Topaz files into such a table)")
    table = table.copy()
    for column in ("x", "y"):
        values = pd.to_numeric(table[column], errors="coerce")
        if not np.all(np.isfinite(values.to_numpy(float))):
            raise UserInputError(what, f"column {column} holds values that are not finite numbers")
        table[column] = values.astype(float)
    table["micrograph"] = table["micrograph"].astype(str)
    return table


def check_names_match(table: pd.DataFrame, micrograph_names: Iterable[str], source: str | Path | None) -> None:
    """Every micrograph named in the labels is among the given micrographs (matched by basename)."""
    known = set(micrograph_names)
    unknown = sorted(set(table["micrograph"].astype(str)) - known)
    if unknown:
        sample = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise UserInputError(
            source, f"{len(unknown)} micrograph name(s) in the labels match no given micrograph: {sample} "
            f"(names are matched by file name without folder or extension"
            + ("; a STAR file without _rlnMicrographName names its picks after its own file name)"
               if source is not None and Path(source).suffix.lower() == ".star" else ")")
        )


def drop_unknown_micrographs(table: pd.DataFrame, micrograph_names: Iterable[str]) -> tuple[pd.DataFrame, int, int]:
    """The rows of ``table`` whose micrograph is among ``micrograph_names``, and how many rows and micrographs
    were dropped: labels for a whole project used on a subset of its micrographs."""
    known = table["micrograph"].astype(str).isin(set(micrograph_names))
    dropped = table[~known]
    return table[known].reset_index(drop=True), len(dropped), int(dropped["micrograph"].nunique())


#: Picks of one micrograph closer than this (px) are one pick listed twice (a file concatenated with itself, a
#: project's picks merged twice): no two particle centres lie within a pixel.
DUPLICATE_PICK_PX = 1.0


def drop_duplicate_picks(table: pd.DataFrame, within_px: float = DUPLICATE_PICK_PX) -> tuple[pd.DataFrame, int]:
    """The picks of ``table`` less those within ``within_px`` of an earlier pick of the same micrograph, and how
    many were dropped (duplicated labels would count particles twice in the density and the targets)."""
    from scipy.spatial import cKDTree

    drop = np.zeros(len(table), dtype=bool)
    xy = table[["x", "y"]].to_numpy(float)
    for rows in table.groupby(table["micrograph"].astype(str), sort=False).indices.values():
        if len(rows) < 2:
            continue
        for _, later in cKDTree(xy[rows]).query_pairs(within_px):
            drop[rows[later]] = True  # query_pairs gives (i, j) with i < j: the later one goes
    return table[~drop].reset_index(drop=True), int(drop.sum())


# ------------------------------------------------------------------------------------------------ helpers


def _expand(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Coordinate files named by globs, folders, ``@list`` files or plain paths (:mod:`cryojoint.io.inputs`)."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise UserInputError(None, "no coordinate files given")
    return expand_paths(items, {*FORMAT_OF_SUFFIX, ".txt"}, "coordinate")


def _check_writable_format(table: pd.DataFrame, path: Path, fmt: str | None, box_size: float | None) -> str:
    """The format to write ``path`` in, after the checks that need no disk access."""
    file_format = _check_format(fmt, path, WRITERS)
    if file_format in BOXED_FORMATS and (box_size is None or box_size <= 0):
        tool = "EMAN" if file_format == "box" else "crYOLO"
        raise UserInputError(path, f"{tool} .{file_format} files need a box size (pass --box-size N, in pixels)")
    if file_format == "cs":
        check_cs_columns(table, path)
    if file_format in PER_MICROGRAPH_FORMATS and table["micrograph"].nunique() > 1:
        raise UserInputError(path, f"a {file_format} file holds one micrograph, the table has "
                             f"{table['micrograph'].nunique()} (write one file per micrograph into a folder)")
    return file_format


def _is_blank(path: Path) -> bool:
    """Empty or only whitespace (what an editor or a script leaves for a micrograph without picks)."""
    size = path.stat().st_size
    return size == 0 or (size <= _BLANK_FILE_MAX_BYTES and not path.read_bytes().strip())


def _listed_file_bases(index_path: Path) -> list[Path]:
    """Folders a relative path inside ``index_path`` may be relative to, most likely first.

    RELION writes paths relative to its project folder (``AutoPick/job006/Movies/mic_autopick.star`` inside
    ``AutoPick/job006/autopick.star``), so the project is an ancestor of the index file; hand-made index files
    often use paths relative to their own folder or to the current folder.
    """
    folder = index_path.resolve().parent
    return [folder, *folder.parents, Path.cwd()]


def _resolve_listed_file(listed: str, index_path: Path, bases: list[Path]) -> Path:
    """The existing file a coordinate index lists; the base that worked moves first for the next lookups."""
    listed_path = Path(listed)
    if listed_path.is_absolute():
        if listed_path.is_file():
            return listed_path
    else:
        for position, base in enumerate(bases):
            candidate = base / listed_path
            if candidate.is_file():
                bases.insert(0, bases.pop(position))
                return candidate
    raise UserInputError(index_path, f"lists coordinate file '{listed}', which was not found (looked in the "
                         "index file's folder, its parent folders and the current folder)")


def _name_from_coordinate_file(path: Path) -> str:
    """``mic_001_autopick.star`` / ``mic_001.box`` -> ``mic_001``.

    RELION appends a job suffix to its per-micrograph STAR files; EMAN, IMOD and our own writers name the file
    exactly after the micrograph, so there a name like ``grid_pick`` is kept whole.
    """
    name = micrograph_name(path)
    if path.suffix.lower() != ".star":
        return name
    for relion_suffix in RELION_COORDINATE_FILE_SUFFIXES:
        if name.endswith(relion_suffix):
            return name[: -len(relion_suffix)]
    return name


def _read_numeric_rows(path: Path, min_columns: int) -> np.ndarray:
    """Whitespace-separated numbers, one row per line (``#`` comments and blank lines skipped), cut to the
    narrowest row; errors name the file's own line number."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserInputError(path, "not a text coordinate file") from None
    numbered = [(line_no, line.split()) for line_no, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:  # a micrograph without picks; read_coordinates decides whether that is an error
        return np.empty((0, min_columns))
    short = next(((line_no, r) for line_no, r in numbered if len(r) < min_columns), None)
    if short is not None:
        raise UserInputError(path, f"line {short[0]}: expected at least {min_columns} numbers, found {len(short[1])}")
    width = min(len(r) for _, r in numbered)
    values = np.empty((len(numbered), width))
    for row, (line_no, fields) in enumerate(numbered):
        try:
            values[row] = [float(field) for field in fields[:width]]
        except ValueError:
            bad = next(f for f in fields[:width] if not _is_number(f))
            raise UserInputError(path, f"line {line_no}: '{bad}' is not a number") from None
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numeric(column: pd.Series, path: Path, name: str) -> np.ndarray:
    """Numbers of a column; cells spelled as missing become NaN, any other text is an error naming its row."""
    if not pd.api.types.is_numeric_dtype(column):  # CSV and Topaz are read as text
        missing = column.astype(str).str.strip().str.lower().isin(MISSING_VALUE_SPELLINGS)
        column = column.mask(missing)
    values = pd.to_numeric(column, errors="coerce").to_numpy(float)
    not_numbers = np.isnan(values) & column.notna().to_numpy()
    if not_numbers.any():
        row = int(np.flatnonzero(not_numbers)[0])
        raise UserInputError(path, f"column {name}, row {row + 1}: '{column.iloc[row]}' is not a number")
    return values


def scale_coordinates(table: pd.DataFrame, factor: float) -> pd.DataFrame:
    """Picks made on micrographs ``1 / factor`` times the size of the ones they are for (``factor`` 4: picked on
    4x-binned copies, used with the full-size micrographs; 0.25 the other way). Pixel edges scale, not centres: the
    centre of a binned pixel lies at the middle of the block it covers (as a block mean, whole factors in
    :func:`cryojoint.imaging.bin_image`, places it; its fractional resampling centres samples on i * factor)."""
    if factor == 1.0:
        return table
    # The micrographs a .cs named (path, size, UID) are the ones the picks no longer fit: --micrographs gives theirs.
    scaled = table.drop(columns=[PATH_COLUMN, SHAPE_Y_COLUMN, SHAPE_X_COLUMN, UID_COLUMN], errors="ignore")
    for column in ("x", "y"):
        scaled[column] = (scaled[column].astype(float) + 0.5) * factor - 0.5
    return scaled


def read_star_optics(paths: str | Path | Sequence[str | Path], fmt: str | None = None) -> pd.DataFrame | None:
    """The optics block of the STAR inputs (RELION 3.1+), one row per optics group; ``None`` when none has one.

    Two files that give one optics group different values (in a column both have) cannot share one STAR file."""
    groups: dict[object, tuple[Path, pd.Series]] = {}
    for path in _expand(paths):
        if not path.is_file() or _is_blank(path) or _check_format(fmt, path, READERS) != "star":
            continue
        optics = read_star_tables(path).get(STAR_OPTICS_BLOCK)
        if optics is None or "rlnOpticsGroup" not in optics.columns:
            continue
        for _, row in optics.iterrows():
            group = row["rlnOpticsGroup"]
            if group not in groups:
                groups[group] = (path, row)
                continue
            first_path, first = groups[group]
            shared = [c for c in row.index if c in first.index]
            if any(str(row[c]) != str(first[c]) for c in shared):
                raise UserInputError(path, f"its optics group {group} differs from {first_path.name}'s; convert the "
                                     "files apart")
    if not groups:
        return None
    return pd.DataFrame([row for _, row in groups.values()]).sort_values("rlnOpticsGroup", kind="stable") \
        .reset_index(drop=True)


def scale_optics(optics: pd.DataFrame | None, factor: float) -> pd.DataFrame | None:
    """Coordinates ``factor`` times finer are on micrographs of a ``factor`` times smaller pixel size."""
    if optics is None or factor == 1.0 or STAR_MICROGRAPH_PIXEL_SIZE not in optics.columns:
        return optics
    return optics.assign(**{STAR_MICROGRAPH_PIXEL_SIZE: optics[STAR_MICROGRAPH_PIXEL_SIZE].astype(float) / factor})


def convert_coordinates(
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    in_fmt: str | None = None,
    out_fmt: str | None = None,
    box_size: float | None = None,
    overwrite: bool = False,
    micrographs: Sequence[str | Path] | None = None,
    scale: float = 1.0,
) -> list[Path]:
    """Convert coordinate files; ``output`` is a file, or a folder for one file per micrograph.

    A folder is used when ``output`` has no suffix or is an existing folder; then ``out_fmt`` is required.
    ``micrographs`` (paths) give each micrograph's path and size, which cryoSPARC ``.cs`` files need.
    ``scale`` brings picks made on micrographs of another size to these (:func:`scale_coordinates`).
    A STAR file written from STAR inputs keeps their micrograph names (with folders), optics groups and optics
    block (RELION 3.1+), its micrograph pixel size divided by ``scale``; per-micrograph files carry no optics.
    """
    check_number(box_size, "--box-size", above=0)
    check_number(scale, "--scale", above=0)
    if not 1.0 / MAX_SCALE <= scale <= MAX_SCALE:
        raise UserInputError(None, f"--scale must be between {1.0 / MAX_SCALE:g} and {MAX_SCALE:g} (the binning "
                             f"between the picks' micrographs and these), got {scale:g}")
    table = scale_coordinates(read_coordinates(inputs, in_fmt), scale)
    if micrographs:
        given = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        source = given[0] if len(given) == 1 else None
        table = attach_micrographs(table, micrographs, source)
        table[FILE_NAME_COLUMN] = table[PATH_COLUMN]  # a STAR names the micrographs as given (RELION: the whole name)
        # Picks at another pixel size than these micrographs would be written as fractions beyond 1.
        check_inside(table, {str(n): (int(y), int(x)) for n, y, x in table.groupby("micrograph")[
            [SHAPE_Y_COLUMN, SHAPE_X_COLUMN]].first().itertuples()}, source, remedy=" (see --scale)")
    output = Path(output)
    if output.is_dir() or not output.suffix:
        if out_fmt is None:
            raise UserInputError(output, "is a folder: say which format to write with --to "
                                 "(star, box, cbox, csv, topaz)")
        if out_fmt not in WRITERS:
            raise UserInputError(output, f"cannot write format '{out_fmt}' (known: {', '.join(WRITERS)})")
        return write_coordinates_per_micrograph(table, output, out_fmt, box_size=box_size, overwrite=overwrite)
    writes_star = _check_format(out_fmt, output, WRITERS) == "star"
    optics = scale_optics(read_star_optics(inputs, in_fmt), scale) if writes_star else None
    group = STAR_EXTRA_COLUMNS["rlnOpticsGroup"]
    if optics is not None and (group not in table.columns or table[group].isna().any()):
        warnings.warn(f"{output}: some picks come from files without RELION optics groups: the optics block and "
                      "rlnOpticsGroup are left out (convert the STAR files apart to keep them)", UserWarning,
                      stacklevel=2)
    return [write_coordinates(table, output, out_fmt, box_size, overwrite, star_optics=optics)]
