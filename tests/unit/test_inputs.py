"""Micrograph and coordinate inputs at scale: globs, folders, @list files and RELION micrograph STAR files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryojoint.errors import UserInputError
from cryojoint.io.coords import read_coordinates
from cryojoint.io.inputs import expand_micrographs, expand_paths, read_micrographs_star


def _touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(b"x")
    return paths


def test_quoted_glob_expands_sorted_and_a_folder_gives_its_micrographs(tmp_path: Path) -> None:
    mics = _touch(tmp_path / "mics", "b.mrc", "a.mrc", "notes.txt")
    assert expand_micrographs([str(tmp_path / "mics" / "*.mrc")]).paths == [mics[1], mics[0]]
    assert expand_micrographs([tmp_path / "mics"]).paths == [mics[1], mics[0]]


def test_a_file_whose_name_looks_like_a_glob_is_taken_as_written(tmp_path: Path) -> None:
    (odd,) = _touch(tmp_path, "mic[1].mrc")
    _touch(tmp_path, "mic1.mrc")
    assert expand_micrographs([odd]).paths == [odd]


def test_list_file_paths_are_relative_to_the_list_with_comments_and_blank_lines_skipped(tmp_path: Path) -> None:
    a, b = _touch(tmp_path / "data", "a.mrc", "b.mrc")
    (elsewhere,) = _touch(tmp_path / "other", "c.mrc")
    listing = tmp_path / "data" / "list.txt"
    listing.write_text(f"# training set\na.mrc\n\n  b.mrc   # second\n{elsewhere}\n")
    assert expand_micrographs([f"@{listing}"]).paths == [a, b, elsewhere]


def test_missing_list_file_and_missing_listed_file_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="list file not found") as err:
        expand_micrographs([f"@{tmp_path / 'nope.txt'}"])
    assert err.value.source == str(tmp_path / "nope.txt")
    listing = tmp_path / "list.txt"
    listing.write_text("a.mrc\n")
    with pytest.raises(UserInputError, match="line 1: micrograph file 'a.mrc' not found"):
        expand_micrographs([f"@{listing}"])
    listing.write_text("# nothing\n\n")
    with pytest.raises(UserInputError, match="names no micrograph files"):
        expand_micrographs([f"@{listing}"])


def test_glob_matching_nothing_and_folder_without_micrographs_are_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="pattern matches no micrograph file"):
        expand_micrographs([str(tmp_path / "*.mrc")])
    with pytest.raises(UserInputError, match="folder holds no micrograph files"):
        expand_micrographs([tmp_path])


def _micrographs_star(path: Path, names: list[str], pixel_size: float = 1.1) -> Path:
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [pixel_size]})
    micrographs = pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": [1] * len(names)})
    starfile.write({"optics": optics, "micrographs": micrographs}, path)
    return path


def test_relion_micrographs_star_paths_are_relative_to_the_project_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path / "MotionCorr" / "job002" / "Movies", "m1.mrc", "m2.mrc")
    star_dir = tmp_path / "CtfFind" / "job003"
    star_dir.mkdir(parents=True)
    star = _micrographs_star(star_dir / "micrographs_ctf.star",
                             ["MotionCorr/job002/Movies/m1.mrc", "MotionCorr/job002/Movies/m2.mrc"])
    monkeypatch.chdir(tmp_path)
    inputs = expand_micrographs([star.relative_to(tmp_path)])
    assert inputs.paths == [Path("MotionCorr/job002/Movies/m1.mrc"), Path("MotionCorr/job002/Movies/m2.mrc")]
    assert inputs.stars[0].optics is not None and inputs.stars[0].pixel_size() == pytest.approx(1.1)


def test_micrographs_star_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    coords = tmp_path / "coords.star"
    starfile.write({"particles": pd.DataFrame({"rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0]})}, coords)
    with pytest.raises(UserInputError, match="no data_micrographs loop with _rlnMicrographName") as err:
        read_micrographs_star(coords)
    assert err.value.source == str(coords)
    missing = _micrographs_star(tmp_path / "mics.star", ["Movies/absent.mrc"])
    with pytest.raises(UserInputError, match="row 1: micrograph 'Movies/absent.mrc' not found"):
        expand_micrographs([missing])


def test_list_of_star_files_and_plain_paths_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _touch(tmp_path / "Movies", "m1.mrc")
    (plain,) = _touch(tmp_path / "extra", "x.mrc")
    star = _micrographs_star(tmp_path / "mics.star", ["Movies/m1.mrc"])
    listing = tmp_path / "all.txt"
    listing.write_text(f"{star.name}\nextra/x.mrc\n")
    assert expand_micrographs([f"@{listing}"]).paths == [Path("Movies/m1.mrc"), plain]


def test_coordinate_inputs_take_lists_and_globs_too(tmp_path: Path) -> None:
    for name, x in (("m1", 10.0), ("m2", 20.0)):
        starfile.write({"": pd.DataFrame({"rlnCoordinateX": [x], "rlnCoordinateY": [5.0]})},
                       tmp_path / f"{name}_autopick.star")
    listing = tmp_path / "coords.txt"
    listing.write_text("m2_autopick.star\n")
    assert list(read_coordinates(f"@{listing}")["micrograph"]) == ["m2"]
    table = read_coordinates(str(tmp_path / "*_autopick.star"))
    assert list(table["micrograph"]) == ["m1", "m2"] and np.allclose(table["x"], [10.0, 20.0])
    assert expand_paths([tmp_path], {".star"}, "coordinate") == sorted(tmp_path.glob("*.star"))


def test_a_micrographs_star_whose_pixel_size_the_headers_contradict_is_named(tmp_path: Path) -> None:
    import warnings

    import numpy as np

    from cryojoint.io.mrc import write_mrc

    write_mrc(tmp_path / "m1.mrc", np.zeros((32, 32), np.float32), pixel_size=1.0)
    star = _micrographs_star(tmp_path / "other.star", [str(tmp_path / "m1.mrc")], pixel_size=7.08)
    with pytest.warns(UserWarning, match=r"other\.star: its optics give 7\.08 Å/px but the header of .*m1\.mrc "
                                         r"says 1 Å/px"):
        expand_micrographs([star])
    agreeing = _micrographs_star(tmp_path / "same.star", [str(tmp_path / "m1.mrc")], pixel_size=1.02)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert expand_micrographs([agreeing]).paths == [tmp_path / "m1.mrc"]
