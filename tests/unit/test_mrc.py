"""MRC reading and writing: every mode users meet, pixel size kept, clear errors, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cryojoint._atomic import atomic_path, check_can_write
from cryojoint.errors import UserInputError
from cryojoint.io.mrc import Micrograph, micrograph_name, read_micrograph, read_movie, write_mrc

#: dtypes whose MRC modes users meet: 0 (int8), 1 (int16), 6 (uint16), 12 (float16), 2 (float32).
MRC_DTYPES = (np.int8, np.int16, np.uint16, np.float16, np.float32)
MODE_OF_DTYPE = {np.int8: 0, np.int16: 1, np.uint16: 6, np.float16: 12, np.float32: 2}
#: float32 keeps about 7 significant digits of a pixel size stored in the header.
PIXEL_SIZE_RTOL = 1e-6
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])


def random_image(dtype: type, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Values spanning the dtype's range (integers) or a wide finite range (floats)."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    scale = 1e3 if dtype == np.float16 else 1e6
    return (rng.standard_normal(shape) * scale).astype(dtype)


def assert_names_file(err: pytest.ExceptionInfo[UserInputError], path: Path, *fragments: str) -> None:
    assert err.value.source == str(path)
    line = err.value.one_line()
    assert line.startswith(f"{path}: ") and "\n" not in line
    for fragment in fragments:
        assert fragment in err.value.problem


# ------------------------------------------------------------------------------------------- round trips


@PROPERTY_SETTINGS
@given(
    dtype=st.sampled_from(MRC_DTYPES),
    ny=st.integers(1, 48),
    nx=st.integers(1, 48),
    pixel_size=st.none() | st.floats(0.2, 25.0, allow_nan=False),
    as_single_frame_stack=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
@example(dtype=np.int8, ny=7, nx=9, pixel_size=1.06, as_single_frame_stack=False, seed=0)
@example(dtype=np.int16, ny=8, nx=10, pixel_size=5.28, as_single_frame_stack=True, seed=1)
@example(dtype=np.uint16, ny=33, nx=32, pixel_size=None, as_single_frame_stack=False, seed=2)
@example(dtype=np.float16, ny=16, nx=15, pixel_size=0.885, as_single_frame_stack=True, seed=3)
@example(dtype=np.float32, ny=31, nx=64, pixel_size=1.0, as_single_frame_stack=False, seed=4)
def test_read_micrograph_round_trips_every_mode(
    tmp_path_factory: pytest.TempPathFactory, raw_mrc, dtype: type, ny: int, nx: int, pixel_size: float | None,
    as_single_frame_stack: bool, seed: int,
) -> None:
    data = random_image(dtype, (ny, nx), seed)
    path = tmp_path_factory.mktemp("modes") / "mic_001.mrc"
    stored = data[None] if as_single_frame_stack else data
    raw_mrc(path, stored, pixel_size, image_stack=as_single_frame_stack)
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == MODE_OF_DTYPE[dtype]

    micrograph = read_micrograph(path)

    assert micrograph.data.dtype == np.float32 and micrograph.shape == (ny, nx)
    np.testing.assert_array_equal(micrograph.data, data.astype(np.float32))
    if pixel_size is None:
        assert micrograph.pixel_size is None
    else:
        assert micrograph.pixel_size == pytest.approx(pixel_size, rel=PIXEL_SIZE_RTOL)
    assert micrograph.name == "mic_001" and micrograph.path == path


@PROPERTY_SETTINGS
@given(
    ny=st.integers(1, 40),
    nx=st.integers(1, 40),
    input_dtype=st.sampled_from((np.float64, np.float32, np.int16, np.uint8)),
    pixel_size=st.none() | st.floats(0.2, 25.0, allow_nan=False),
    seed=st.integers(0, 2**32 - 1),
)
def test_write_mrc_writes_float32_and_keeps_pixel_size(
    tmp_path_factory: pytest.TempPathFactory, ny: int, nx: int, input_dtype: type, pixel_size: float | None,
    seed: int,
) -> None:
    data = random_image(input_dtype, (ny, nx), seed) if input_dtype != np.float64 else \
        np.random.default_rng(seed).standard_normal((ny, nx))
    path = tmp_path_factory.mktemp("write") / "out.mrc"

    write_mrc(path, data, pixel_size)

    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == MODE_OF_DTYPE[np.float32]
        header_pixel_size = float(mrc.voxel_size.x)
    micrograph = read_micrograph(path)
    np.testing.assert_array_equal(micrograph.data, data.astype(np.float32))
    if pixel_size is None:
        assert header_pixel_size == 0 and micrograph.pixel_size is None
    else:
        assert header_pixel_size == pytest.approx(pixel_size, rel=PIXEL_SIZE_RTOL)
        assert micrograph.pixel_size == pytest.approx(pixel_size, rel=PIXEL_SIZE_RTOL)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.mrc"]  # no temp file left


#: IMOD's header stamp (bytes 152-155) and flags (156-159; bit 0 set = mode-0 bytes are signed).
IMOD_STAMP = 1146047817
IMOD_STAMP_OFFSET = 152


@pytest.mark.parametrize("imod_flags, expected_dtype", [(0, np.uint8), (1, np.int8)],
                         ids=["imod-unsigned-bytes", "imod-signed-bytes"])
def test_imod_mode_0_bytes_follow_its_signed_flag(tmp_path: Path, raw_mrc, imod_flags: int,
                                                  expected_dtype: type) -> None:
    values = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)  # 0-252: above 127 the sign matters
    stored = values.view(expected_dtype)
    path = raw_mrc(tmp_path / "imod.mrc", values.view(np.int8), pixel_size=2.0)
    with path.open("r+b") as handle:  # what IMOD's own writer puts in the header
        handle.seek(IMOD_STAMP_OFFSET)
        handle.write(np.array([IMOD_STAMP, imod_flags], dtype="<i4").tobytes())
    np.testing.assert_array_equal(read_micrograph(path).data, stored.astype(np.float32))


def test_pixel_size_survives_read_then_write(tmp_path: Path, raw_mrc) -> None:
    source = raw_mrc(tmp_path / "raw.mrc", random_image(np.int16, (12, 17), 5), pixel_size=1.326)
    micrograph = read_micrograph(source)
    copy = write_mrc(tmp_path / "copy.mrc", micrograph.data, micrograph.pixel_size)
    again = read_micrograph(copy)
    assert again.pixel_size == micrograph.pixel_size
    np.testing.assert_array_equal(again.data, micrograph.data)


def test_micrograph_shape_is_rows_then_columns() -> None:
    assert Micrograph(np.zeros((3, 5), np.float32)).shape == (3, 5)


# ----------------------------------------------------------------------------------------------- movies


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.float16, np.float32])
@pytest.mark.parametrize("n_frames, ny, nx", [(3, 9, 8), (4, 10, 11)])
def test_read_movie_returns_frames(tmp_path: Path, raw_mrc, dtype: type, n_frames: int, ny: int, nx: int) -> None:
    frames = random_image(dtype, (n_frames, ny, nx), seed=n_frames)
    path = raw_mrc(tmp_path / "movie.mrcs", frames, pixel_size=0.83, image_stack=True)

    data, pixel_size = read_movie(path)

    assert data.dtype == np.float32 and data.shape == (n_frames, ny, nx)
    np.testing.assert_array_equal(data, frames.astype(np.float32))
    assert pixel_size == pytest.approx(0.83, rel=PIXEL_SIZE_RTOL)


def test_read_movie_of_a_2d_file_is_one_frame(tmp_path: Path, raw_mrc) -> None:
    image = random_image(np.float32, (6, 7), seed=1)
    data, pixel_size = read_movie(raw_mrc(tmp_path / "sum.mrc", image))
    assert data.shape == (1, 6, 7) and pixel_size is None
    np.testing.assert_array_equal(data[0], image)


def test_write_mrc_of_a_stack_reads_back_as_movie(tmp_path: Path) -> None:
    frames = random_image(np.float32, (5, 8, 9), seed=2)
    path = write_mrc(tmp_path / "frames.mrcs", frames, pixel_size=2.1)
    data, pixel_size = read_movie(path)
    np.testing.assert_array_equal(data, frames)
    assert pixel_size == pytest.approx(2.1, rel=PIXEL_SIZE_RTOL)


# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("path, name", [
    ("/data/MotionCorr/job002/Movies/mic_001.mrc", "mic_001"),
    ("stack_0001.mrcs", "stack_0001"),
    ("UPPER.MRC", "UPPER"),
    ("FoilHole_1_Data_2.3_fractions.mrc", "FoilHole_1_Data_2.3_fractions"),
    ("no_extension", "no_extension"),
    ("picks/mic_007.star", "mic_007"),
    ("mic_007.box", "mic_007"),
])
def test_micrograph_name_drops_folder_and_extension(path: str, name: str) -> None:
    assert micrograph_name(path) == name


# ---------------------------------------------------------------------------------------------- errors


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.mrc"
    with pytest.raises(UserInputError) as err:
        read_micrograph(path)
    assert_names_file(err, path, "not found")


def test_folder_is_not_an_mrc(tmp_path: Path) -> None:
    with pytest.raises(UserInputError) as err:
        read_micrograph(tmp_path)
    assert_names_file(err, tmp_path, "folder")


@pytest.mark.parametrize("n_bytes", [0, 100, 5000])
def test_random_bytes_are_not_an_mrc(tmp_path: Path, n_bytes: int) -> None:
    path = tmp_path / "noise.mrc"
    path.write_bytes(np.random.default_rng(n_bytes).bytes(n_bytes))
    with pytest.raises(UserInputError) as err:
        read_micrograph(path)
    assert_names_file(err, path, "not a valid MRC file")


@pytest.mark.parametrize("bytes_kept_of_data", [0, 1, 4 * 20 * 20 - 1])
def test_truncated_mrc_says_truncated(tmp_path: Path, raw_mrc, bytes_kept_of_data: int) -> None:
    whole = raw_mrc(tmp_path / "whole.mrc", random_image(np.float32, (20, 20), seed=0)).read_bytes()
    header_bytes = len(whole) - 4 * 20 * 20
    path = tmp_path / "cut.mrc"
    path.write_bytes(whole[: header_bytes + bytes_kept_of_data])
    with pytest.raises(UserInputError) as err:
        read_micrograph(path)
    assert_names_file(err, path, "truncated")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("reader", [read_micrograph, read_movie])
def test_non_finite_values_are_refused(tmp_path: Path, raw_mrc, bad_value: float, reader) -> None:
    data = random_image(np.float32, (9, 10), seed=0)
    data[4, 5] = bad_value
    data[0, 0] = bad_value
    path = raw_mrc(tmp_path / "bad.mrc", data)
    with pytest.raises(UserInputError) as err:
        reader(path)
    assert_names_file(err, path, "2 NaN/Inf")


@pytest.mark.parametrize("image_stack", [True, False], ids=["image-stack", "volume"])
def test_3d_file_where_2d_is_needed(tmp_path: Path, raw_mrc, image_stack: bool) -> None:
    path = raw_mrc(tmp_path / "movie.mrc", random_image(np.int16, (3, 8, 8), seed=0), image_stack=image_stack)
    with pytest.raises(UserInputError) as err:
        read_micrograph(path)
    assert_names_file(err, path, "3 frames", "2D micrograph is needed")


def test_complex_data_is_not_a_micrograph(tmp_path: Path, raw_mrc) -> None:
    path = raw_mrc(tmp_path / "fft.mrc", np.ones((4, 4), np.complex64))
    with pytest.raises(UserInputError) as err:
        read_micrograph(path)
    assert_names_file(err, path, "complex")


def test_error_message_is_one_line() -> None:
    err = UserInputError("a.mrc", "first line\nsecond line\n")
    assert err.one_line() == "a.mrc: first line second line" == str(err)
    assert UserInputError(None, "no file here").one_line() == "no file here"


# ------------------------------------------------------------------------------------------ atomic writes


def test_write_mrc_refuses_existing_file_without_overwrite(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "keep.mrc", np.ones((4, 4)))
    before = path.read_bytes()
    with pytest.raises(UserInputError) as err:
        write_mrc(path, np.zeros((4, 4)), overwrite=False)
    assert_names_file(err, path, "already exists", "--overwrite")
    assert path.read_bytes() == before
    write_mrc(path, np.zeros((4, 4)), overwrite=True)
    np.testing.assert_array_equal(read_micrograph(path).data, np.zeros((4, 4)))


def test_write_mrc_failing_midway_leaves_nothing(tmp_path: Path) -> None:
    unwritable_shape = (2, 2, 2, 2, 2)  # mrcfile accepts up to 4 dimensions; it fails inside the write
    with pytest.raises(ValueError):
        write_mrc(tmp_path / "five_d.mrc", np.zeros(unwritable_shape))
    assert list(tmp_path.iterdir()) == []


def test_write_mrc_failing_midway_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "old.mrc", np.ones((3, 3)), pixel_size=1.5)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_mrc(path, np.zeros((2, 2, 2, 2, 2)), overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["old.mrc"]


def test_atomic_path_writer_raising_midway_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.bin"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the output")
            raise RuntimeError("disk full")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_path_success_renames_into_place(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("whole")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_outputs_get_the_usual_permissions(tmp_path: Path) -> None:
    """Files must follow the umask like any other program's output, not the owner-only temp-file mode."""
    umask = os.umask(0o022)
    try:
        path = write_mrc(tmp_path / "shared.mrc", np.ones((2, 2)))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_output_path_that_is_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "looks_like_a_file.mrc"
    folder.mkdir()
    with pytest.raises(UserInputError) as err:
        write_mrc(folder, np.ones((2, 2)))
    assert_names_file(err, folder, "is a folder")


def test_output_under_a_regular_file_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserInputError) as err:
        write_mrc(blocker / "out.mrc", np.ones((2, 2)))
    assert err.value.source == str(blocker) and "cannot create output folder" in err.value.problem


def test_checking_an_output_creates_nothing_and_writing_creates_folders(tmp_path: Path) -> None:
    """Commands check outputs before reading inputs; a failed input must not leave empty folders behind."""
    target = tmp_path / "run" / "nested" / "out.mrc"
    check_can_write(target, overwrite=False)
    assert list(tmp_path.iterdir()) == []
    write_mrc(target, np.ones((2, 3)))
    assert read_micrograph(target).shape == (2, 3)


def test_a_blank_micrograph_is_named_before_the_network_sees_it(tmp_path: Path) -> None:
    """One value everywhere (a failed motion correction or export): predict reported 137 picks on it."""
    import pandas as pd

    from cryojoint.config import CryojointConfig
    from cryojoint.data import prepare_data
    from cryojoint.errors import UserInputError

    blank = Micrograph(np.full((64, 64), 3.0, np.float32), name="mic_blank", path=tmp_path / "mic_blank.mrc")
    with pytest.raises(UserInputError, match=r"mic_blank.mrc: every pixel holds the same value \(3\)"):
        blank.check_not_blank()
    Micrograph(np.arange(16, dtype=np.float32).reshape(4, 4)).check_not_blank()  # anything else passes
    labels = pd.DataFrame({"micrograph": ["mic_blank"], "x": [10.0], "y": [10.0]})
    config = CryojointConfig()
    with pytest.raises(UserInputError, match="a blank image"):
        prepare_data([blank], labels, config.data, config.loss)
