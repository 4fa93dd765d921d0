"""MRC images through ``mrcfile``: every mode users meet, pixel size kept, atomic writes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from cryojoint._atomic import atomic_path
from cryojoint.errors import UserInputError

#: Extensions stripped to get a micrograph's name (RELION/Topaz match micrographs by this name).
_NAME_SUFFIXES = (".mrcs", ".mrc", ".map", ".st", ".tif", ".tiff", ".star", ".box", ".cbox", ".csv", ".txt", ".tsv",
                  ".pos", ".pts", ".coords")
#: IMOD marks its headers with this number at byte 152 and keeps flags at byte 156; flag bit 0 set means mode-0
#: bytes are signed. Without it IMOD's mode-0 bytes are unsigned (0-255), which mrcfile would read as int8.
_IMOD_STAMP = 1146047817
_IMOD_STAMP_OFFSET_IN_EXTRA2 = 152 - 112
_IMOD_SIGNED_BYTES_FLAG = 1
#: Fragments of mrcfile's errors for a data block shorter than the header promises (mrcfile 1.4-1.5 wording).
_TRUNCATION_MARKERS = ("bytes in data block", "bytes in extended header", "truncated")


def micrograph_name(path: str | Path) -> str:
    """Basename without directory and image/coordinate extension: the key that joins images and labels."""
    name = Path(str(path)).name
    lowered = name.lower()
    for suffix in _NAME_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class Micrograph:
    """A 2D image in float32 with its pixel size (Å/px, ``None`` if the header has none)."""

    data: np.ndarray
    pixel_size: float | None = None
    name: str = ""
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @classmethod
    def from_array(cls, data: Any, index: int) -> Micrograph:
        """A micrograph handed over in memory (a notebook): 2D, finite, named ``image_<index>``."""
        array = np.asarray(data, dtype=np.float32)
        if array.ndim != 2:
            raise UserInputError(f"image {index}", f"has {array.ndim} dimensions; a 2D micrograph is needed")
        if not np.all(np.isfinite(array)):
            raise UserInputError(f"image {index}", "contains NaN/Inf values")
        return cls(array, None, f"image_{index:04d}")

    def check_not_blank(self) -> None:
        """A micrograph of one value (a failed motion correction or export) holds nothing to denoise or pick."""
        if self.data.size and float(self.data.min()) == float(self.data.max()):
            value = float(self.data.flat[0])
            raise UserInputError(self.path or self.name, f"every pixel holds the same value ({value:g}): a blank "
                                 "image, nothing to denoise or pick")


def _open_checked(path: Path) -> tuple[np.ndarray, float | None]:
    if not path.exists():
        raise UserInputError(path, "file not found")
    if path.is_dir():
        raise UserInputError(path, "is a folder, expected an MRC file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=False) as mrc:
                data = np.asarray(mrc.data)
                if _holds_imod_unsigned_bytes(mrc.header):
                    data = data.view(np.uint8)
                pixel_size = _pixel_size_or_none(float(mrc.voxel_size.x))
    except ValueError as err:
        message = str(err)
        if any(marker in message.lower() for marker in _TRUNCATION_MARKERS):
            raise UserInputError(path, "MRC file is truncated (data shorter than its header says)") from None
        raise UserInputError(path, f"not a valid MRC file ({message.rstrip('.')})") from None
    except (OSError, EOFError) as err:
        raise UserInputError(path, f"cannot read MRC file ({err})") from None
    if data is None or data.size == 0:
        raise UserInputError(path, "MRC file holds no image data")
    return data, pixel_size


def _holds_imod_unsigned_bytes(header: np.recarray) -> bool:
    """Mode 0 written by IMOD without its signed-bytes flag: the bytes are 0-255, not -128-127."""
    if int(header.mode) != 0:
        return False
    int32 = np.dtype(np.int32).newbyteorder(header.mode.dtype.byteorder)
    start = _IMOD_STAMP_OFFSET_IN_EXTRA2
    stamp, flags = np.frombuffer(header.extra2.tobytes()[start:start + 2 * int32.itemsize], dtype=int32)
    return int(stamp) == _IMOD_STAMP and not int(flags) & _IMOD_SIGNED_BYTES_FLAG


def _as_float32(data: np.ndarray, path: Path) -> np.ndarray:
    if np.iscomplexobj(data):
        raise UserInputError(path, "complex MRC data is not a micrograph")
    out = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        raise UserInputError(path, f"contains {bad} NaN/Inf value(s)")
    return out


def read_micrograph(path: str | Path) -> Micrograph:
    """Read a 2D micrograph (or a stack holding exactly one frame) as float32."""
    path = Path(path)
    data, pixel_size = _open_checked(path)
    if data.ndim == 3:
        if data.shape[0] != 1:
            raise UserInputError(
                path, f"is a 3D stack of {data.shape[0]} frames; a 2D micrograph is needed "
                "(sum or motion-correct the frames first)"
            )
        data = data[0]
    if data.ndim != 2:
        raise UserInputError(path, f"has {data.ndim} dimensions; a 2D micrograph is needed")
    return Micrograph(_as_float32(data, path), pixel_size, micrograph_name(path), path)


def read_movie(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Read a movie's frames as float32 ``(n_frames, ny, nx)``; a 2D file is one frame."""
    path = Path(path)
    data, pixel_size = _open_checked(path)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise UserInputError(path, f"has {data.ndim} dimensions; a frame stack is 3D")
    return _as_float32(data, path), pixel_size


def write_mrc(
    path: str | Path, data: np.ndarray, pixel_size: float | None = None, overwrite: bool = True
) -> Path:
    """Write float32 MRC atomically (temp file + rename), keeping the pixel size in Å/px."""
    path = Path(path)
    array = np.ascontiguousarray(data, dtype=np.float32)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(array)
            if pixel_size is not None:
                mrc.voxel_size = float(pixel_size)
            if array.ndim == 3:
                mrc.set_image_stack()
    return path


def micrograph_shape(path: str | Path) -> tuple[int, int]:
    """``(ny, nx)`` from the header alone (no data read): cheap enough to ask of thousands of files."""
    return micrograph_geometry(path)[0]


def micrograph_pixel_size(path: str | Path) -> float | None:
    """Å/px from the header alone (``None`` when the header gives none)."""
    return micrograph_geometry(path)[1]


def micrograph_geometry(path: str | Path) -> tuple[tuple[int, int], float | None]:
    """``((ny, nx), Å/px or None)`` from one read of the header, for callers that need both."""
    header = _read_header(path)
    return (int(header.ny), int(header.nx)), _pixel_size_or_none(float(header.cella.x) / max(int(header.mx), 1))


def _pixel_size_or_none(voxel_x: float) -> float | None:
    """A header's Å/px, or ``None`` where it gives none (0, negative or not finite)."""
    return voxel_x if np.isfinite(voxel_x) and voxel_x > 0 else None


def _read_header(path: str | Path) -> np.recarray:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
                return mrc.header.copy()
    except (OSError, ValueError) as err:
        raise UserInputError(path, f"cannot read MRC header ({err})") from None
