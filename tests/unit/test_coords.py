"""Coordinate files: the files RELION, EMAN2, Topaz and IMOD write, round trips, and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryojoint.errors import UserInputError
from cryojoint.imaging import from_binned_coordinates
from cryojoint.io.coords import (
    FILE_NAME_COLUMN,
    READERS,
    SHAPE_X_COLUMN,
    SHAPE_Y_COLUMN,
    WRITERS,
    check_inside,
    check_names_match,
    convert_coordinates,
    detect_format,
    make_table,
    read_coordinates,
    scale_coordinates,
    star_safe_name,
    write_coordinates,
    write_coordinates_per_micrograph,
)
from cryojoint.io.inputs import read_star_tables

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])
#: STAR and CSV keep twelve significant digits (io.coords.FLOAT_FORMAT); coordinates here stay below 2e4 px.
STAR_TOLERANCE_PX = 1e-6
CSV_TOLERANCE_PX = 1e-5
#: Topaz stores integer pixel coordinates.
TOPAZ_TOLERANCE_PX = 0.5
#: BOX corners are written with two decimals.
BOX_TOLERANCE_PX = 0.005 + 1e-9
#: STAR and CSV scores keep twelve significant digits, Topaz scores six.
STAR_SCORE_ATOL = 5e-7 + 1e-12
TOPAZ_SCORE_RTOL = 1e-5
CSV_SCORE_RTOL = 1e-9
MAX_COORDINATE_PX = 20000.0

# ------------------------------------------------------------------ files as the programs write them

RELION_30_PARTICLES = """
data_

loop_ 
_rlnCoordinateX #1 
_rlnCoordinateY #2 
_rlnClassNumber #3 
_rlnAutopickFigureOfMerit #4 
_rlnAnglePsi #5 
_rlnImageName #6 
_rlnMicrographName #7 
_rlnVoltage #8 
_rlnDefocusU #9 
_rlnDefocusV #10 
 1219.000000   376.000000            1     1.589930   -999.00000 000001@Extract/job007/Movies/20170629_00021_frameImage.mrcs MotionCorr/job002/Movies/20170629_00021_frameImage.mrc   300.000000 10863.857422 10480.244141 
 1483.500000  1876.250000            1     0.912470   -999.00000 000002@Extract/job007/Movies/20170629_00021_frameImage.mrcs MotionCorr/job002/Movies/20170629_00021_frameImage.mrc   300.000000 10863.857422 10480.244141 
  512.000000   988.000000            1     2.001210   -999.00000 000001@Extract/job007/Movies/20170629_00022_frameImage.mrcs MotionCorr/job002/Movies/20170629_00022_frameImage.mrc   300.000000 12011.734375 11650.158203 
"""  # noqa: W291, W293, E501 (RELION pads lines with spaces; its data lines are long)

RELION_31_PARTICLES = """
# version 30001

data_optics

loop_ 
_rlnOpticsGroupName #1 
_rlnOpticsGroup #2 
_rlnMicrographOriginalPixelSize #3 
_rlnVoltage #4 
_rlnSphericalAberration #5 
_rlnAmplitudeContrast #6 
_rlnImagePixelSize #7 
_rlnImageSize #8 
_rlnImageDimensionality #9 
opticsGroup1            1     0.885000   200.000000     1.400000     0.100000     3.540000           64            2 
 

# version 30001

data_particles

loop_ 
_rlnCoordinateX #1 
_rlnCoordinateY #2 
_rlnAutopickFigureOfMerit #3 
_rlnClassNumber #4 
_rlnAnglePsi #5 
_rlnImageName #6 
_rlnMicrographName #7 
_rlnOpticsGroup #8 
_rlnDefocusU #9 
_rlnDefocusV #10 
  1614.217657  3483.546932     1.194432            0    12.500000 000001@Extract/job012/Movies/20170629_00021_frameImage.mrcs MotionCorr/job002/Movies/20170629_00021_frameImage.mrc            1 10863.857422 10480.244141 
   210.000000   333.000000     0.350000            0   -45.000000 000001@Extract/job012/Movies/20170629_00024_frameImage.mrcs MotionCorr/job002/Movies/20170629_00024_frameImage.mrc            1  9863.857422  9480.244141 
 
"""  # noqa: W291, W293, E501

RELION_5_MICROGRAPH_PICKS = """
# version 50001

data_optics

loop_ 
_rlnOpticsGroupName #1 
_rlnOpticsGroup #2 
_rlnMicrographOriginalPixelSize #3 
_rlnVoltage #4 
_rlnSphericalAberration #5 
_rlnAmplitudeContrast #6 
_rlnMicrographPixelSize #7 
opticsGroup1            1     0.830000   300.000000     2.700000     0.100000     3.320000 
 

# version 50001

data_particles

loop_ 
_rlnCoordinateX #1 
_rlnCoordinateY #2 
_rlnMicrographName #3 
_rlnOpticsGroup #4 
   101.000000   202.000000 MotionCorr/job002/Movies/grid2_0007.mrc            1 
   303.000000   404.000000 MotionCorr/job002/Movies/grid2_0008.mrc            1 
"""  # noqa: W291, W293, E501

RELION_AUTOPICK_PER_MICROGRAPH = """
# version 30001

data_

loop_ 
_rlnCoordinateX #1 
_rlnCoordinateY #2 
_rlnClassNumber #3 
_rlnAutopickFigureOfMerit #4 
_rlnAnglePsi #5 
  1476.000000   396.000000            0     0.964720   -999.00000 
   844.000000  1116.000000            0     0.872130   -999.00000 
"""  # noqa: W291, W293, E501

RELION_NO_PICKS_PER_MICROGRAPH = """
# version 30001

data_

loop_ 
_rlnCoordinateX #1 
_rlnCoordinateY #2 
_rlnClassNumber #3 
_rlnAutopickFigureOfMerit #4 
_rlnAnglePsi #5 
"""  # noqa: W291, W293, E501

RELION_COORDINATE_INDEX = """
# version 30001

data_coordinate_files

loop_ 
_rlnMicrographName #1 
_rlnMicrographCoordinates #2 
MotionCorr/job002/Movies/mic_001.mrc AutoPick/job006/Movies/mic_001_autopick.star 
MotionCorr/job002/Movies/mic_002.mrc AutoPick/job006/Movies/mic_002_autopick.star 
MotionCorr/job002/Movies/mic_003.mrc AutoPick/job006/Movies/mic_003_autopick.star 
"""  # noqa: W291, W293, E501

EMAN2_BOX = "1183\t447\t128\t128\n57\t1902\t128\t128\n"
EMAN1_BOX_FIVE_COLUMNS = "1183   447   128   128   -3\n  57  1902   128   128   -3\n"

TOPAZ_PICKS = (
    "image_name\tx_coord\ty_coord\tscore\n"
    "14sep05c_00024sq_00003hl_00002es_c\t3439\t1191\t7.451\n"
    "14sep05c_00024sq_00003hl_00002es_c\t1311\t3093\t-0.2214\n"
    "14sep05c_00024sq_00004hl_00002es_c\t702\t588\t-5.99\n"
)

#: IMOD ``model2point`` output: plain, with ``-contour`` and with ``-object`` (object and contour numbers first).
IMOD_POINTS = {
    3: "     1247.00      511.00        0.00\n      121.00     1966.00        0.00\n",
    4: "     1     1247.00      511.00        0.00\n     2      121.00     1966.00        0.00\n",
    5: "     1     1     1247.00      511.00        0.00\n     1     2      121.00     1966.00        0.00\n",
}


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def by_micrograph(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("micrograph", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------- RELION readers


def test_relion_30_particles(tmp_path: Path) -> None:
    table = read_coordinates(write_text(tmp_path / "particles.star", RELION_30_PARTICLES))
    assert list(table["micrograph"]) == ["20170629_00021_frameImage"] * 2 + ["20170629_00022_frameImage"]
    np.testing.assert_allclose(table["x"], [1219.0, 1483.5, 512.0])
    np.testing.assert_allclose(table["y"], [376.0, 1876.25, 988.0])
    np.testing.assert_allclose(table["score"], [1.58993, 0.91247, 2.00121])
    np.testing.assert_allclose(table["defocus_u"], [10863.857422, 10863.857422, 12011.734375])
    assert table["micrograph_file"][0] == "MotionCorr/job002/Movies/20170629_00021_frameImage.mrc"  # as RELION names it


@pytest.mark.parametrize("text, names, xs", [
    (RELION_31_PARTICLES, ["20170629_00021_frameImage", "20170629_00024_frameImage"], [1614.217657, 210.0]),
    (RELION_5_MICROGRAPH_PICKS, ["grid2_0007", "grid2_0008"], [101.0, 303.0]),
], ids=["relion31-particles", "relion5-optics-micrograph-pixel-size"])
def test_relion_31_plus_optics_and_particles_blocks(tmp_path: Path, text: str, names: list[str],
                                                    xs: list[float]) -> None:
    table = read_coordinates(write_text(tmp_path / "particles.star", text))
    assert list(table["micrograph"]) == names
    np.testing.assert_allclose(table["x"], xs)


def test_relion_31_scores_and_angles_survive_a_star_round_trip(tmp_path: Path) -> None:
    table = read_coordinates(write_text(tmp_path / "particles.star", RELION_31_PARTICLES))
    np.testing.assert_allclose(table["score"], [1.194432, 0.35])
    copy = read_coordinates(write_coordinates(table, tmp_path / "copy.star"))
    pd.testing.assert_frame_equal(copy[["micrograph", "x", "y", "score", "angle_psi", "class_number"]],
                                  table[["micrograph", "x", "y", "score", "angle_psi", "class_number"]],
                                  check_dtype=False)
    assert "rlnMicrographName" in (tmp_path / "copy.star").read_text()


@pytest.mark.parametrize("folder", ["data_2024", "Data_2024", "_raw", "loop_runs", "#scratch", "a#b", "with space"])
def test_micrograph_paths_that_begin_like_star_syntax_read_back(tmp_path: Path, folder: str) -> None:
    """A folder named like a STAR keyword or label at the start of a row, or holding a comment's "#", would end the
    loop on reading."""
    table = make_table(["mic_1", "mic_2"], [10.5, 20.0], [30.0, 40.25], [0.5, -1.0])
    table[FILE_NAME_COLUMN] = [f"{folder}/mic_1.mrc", f"{folder}/mic_2.mrc"]
    read = read_coordinates(write_coordinates(table, tmp_path / "picks.star"))
    assert list(read["micrograph"]) == ["mic_1", "mic_2"]
    assert list(read["x"]) == [10.5, 20.0] and list(read["score"]) == [0.5, -1.0]
    assert all(Path(name) == Path(f"{folder}/{mic}.mrc")
               for name, mic in zip(read[FILE_NAME_COLUMN], ["mic_1", "mic_2"]))  # "./" names the same file
    assert star_safe_name("MotionCorr/job002/mic.mrc") == "MotionCorr/job002/mic.mrc"  # RELION's names untouched


@pytest.mark.parametrize("file_name", ["mic_017_autopick.star", "mic_017_manualpick.star", "mic_017.star"])
def test_relion_per_micrograph_file_is_named_by_its_file(tmp_path: Path, file_name: str) -> None:
    table = read_coordinates(write_text(tmp_path / file_name, RELION_AUTOPICK_PER_MICROGRAPH))
    assert list(table["micrograph"]) == ["mic_017", "mic_017"]
    np.testing.assert_allclose(table[["x", "y"]], [[1476.0, 396.0], [844.0, 1116.0]])
    np.testing.assert_allclose(table["score"], [0.96472, 0.87213])


def write_relion_project(project: Path) -> Path:
    """An AutoPick job as RELION 4/5 lays it out: paths in the index are relative to the project folder."""
    write_text(project / "AutoPick/job006/Movies/mic_001_autopick.star", RELION_AUTOPICK_PER_MICROGRAPH)
    write_text(project / "AutoPick/job006/Movies/mic_002_autopick.star",
               RELION_AUTOPICK_PER_MICROGRAPH.replace("1476.000000", "1500.000000"))
    write_text(project / "AutoPick/job006/Movies/mic_003_autopick.star", RELION_NO_PICKS_PER_MICROGRAPH)
    return write_text(project / "AutoPick/job006/autopick.star", RELION_COORDINATE_INDEX)


def test_relion_coordinate_index_with_project_relative_paths(tmp_path: Path, monkeypatch) -> None:
    index = write_relion_project(tmp_path / "project")
    monkeypatch.chdir(tmp_path)  # run from outside the project: paths must resolve from the index file

    table = read_coordinates(index)

    assert list(table["micrograph"]) == ["mic_001", "mic_001", "mic_002", "mic_002"]
    np.testing.assert_allclose(table["x"], [1476.0, 844.0, 1500.0, 844.0])
    # One particles STAR from the index names each micrograph as the index does (RELION matches the whole name).
    merged = read_star_tables(write_coordinates(table, tmp_path / "particles.star"))["particles"]
    assert merged["rlnMicrographName"].iloc[0] == "MotionCorr/job002/Movies/mic_001.mrc"


def test_relion_coordinate_index_run_from_the_project(tmp_path: Path, monkeypatch) -> None:
    write_relion_project(tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    table = read_coordinates("AutoPick/job006/autopick.star")
    assert sorted(set(table["micrograph"])) == ["mic_001", "mic_002"]


def test_coordinate_index_next_to_its_files(tmp_path: Path) -> None:
    write_text(tmp_path / "picks/a_autopick.star", RELION_AUTOPICK_PER_MICROGRAPH)
    index = write_text(tmp_path / "picks/index.star", "data_coordinate_files\n\nloop_\n_rlnMicrographName #1\n"
                       "_rlnMicrographCoordinates #2\nMovies/a.mrc a_autopick.star\n")
    assert list(read_coordinates(index)["micrograph"]) == ["a", "a"]


def test_coordinate_index_pointing_at_a_missing_file_names_both(tmp_path: Path) -> None:
    index = write_relion_project(tmp_path / "project")
    (tmp_path / "project/AutoPick/job006/Movies/mic_002_autopick.star").unlink()
    with pytest.raises(UserInputError) as err:
        read_coordinates(index)
    assert err.value.source == str(index)
    assert "AutoPick/job006/Movies/mic_002_autopick.star" in err.value.problem and "not found" in err.value.problem


# ------------------------------------------------------------------------------ EMAN, Topaz, IMOD, CSV


@pytest.mark.parametrize("text", [EMAN2_BOX, EMAN1_BOX_FIVE_COLUMNS], ids=["eman2", "eman1-five-columns"])
def test_eman_box_corner_becomes_centre(tmp_path: Path, text: str) -> None:
    table = read_coordinates(write_text(tmp_path / "grid_pick.box", text))
    assert list(table["micrograph"]) == ["grid_pick", "grid_pick"]  # only RELION STAR names carry job suffixes
    np.testing.assert_allclose(table[["x", "y"]], [[1183 + 64, 447 + 64], [57 + 64, 1902 + 64]])
    assert table["score"].isna().all()


#: A 2D CBOX as crYOLO 1.9 writes it (``cryolo_predict``): corners, box size, estimated size, confidence.
CRYOLO_CBOX = """
data_global

_cbox_format_version 1.0

data_cryolo

loop_
_CoordinateX #1
_CoordinateY #2
_CoordinateZ #3
_Width #4
_Height #5
_Depth #6
_EstWidth #7
_EstHeight #8
_Confidence #9
_NumBoxes #10
_Angle #11
1183.0 447.0 <NA> 128 128 <NA> 101 97 0.83 <NA> <NA>
57.5 1902.0 <NA> 128 128 <NA> 99 104 0.31 <NA> <NA>

data_cryolo_include

loop_
_slice_index #1
"""
#: CBOX of crYOLO before 1.7: tab-separated x y w h confidence (and estimated sizes), no header.
CRYOLO_LEGACY_CBOX = "1183\t447\t128\t128\t0.83\t101\t97\n57.5\t1902\t128\t128\t0.31\t99\t104\n"


@pytest.mark.parametrize("text", [CRYOLO_CBOX, CRYOLO_LEGACY_CBOX], ids=["cbox-1.0", "cbox-legacy"])
def test_cryolo_cbox_corner_becomes_centre_and_confidence_the_score(tmp_path: Path, text: str) -> None:
    table = read_coordinates(write_text(tmp_path / "grid_01.cbox", text))
    assert list(table["micrograph"]) == ["grid_01", "grid_01"]
    np.testing.assert_allclose(table[["x", "y"]], [[1183 + 64, 447 + 64], [57.5 + 64, 1902 + 64]])
    np.testing.assert_allclose(table["score"], [0.83, 0.31])


def test_cbox_is_read_the_way_napari_boxmanager_and_cryolo_read_it(tmp_path: Path) -> None:
    """pyStarDB is the STAR library napari-boxmanager and crYOLO read CBOX and STAR with; the columns and blocks
    below are the ones their readers index (box_manager.io.cbox / .star, cryolo.CoordsIO.read_cbox_boxfile)."""
    from pyStarDB import sp_pystardb as star

    table = make_table("mic_1", [100.0, 250.5], [40.0, 300.0], [2.5, -1.0])
    cbox = star.StarFile(write_coordinates(table, tmp_path / "mic_1.cbox", box_size=64))
    boxes = cbox["cryolo"]
    for column in ("_CoordinateX", "_CoordinateY", "_CoordinateZ", "_Width", "_Height", "_Depth", "_Confidence"):
        assert column in boxes.columns, column
    np.testing.assert_allclose(boxes["_CoordinateX"] + boxes["_Width"] / 2, table["x"])
    np.testing.assert_allclose(boxes["_CoordinateY"] + boxes["_Height"] / 2, table["y"])
    np.testing.assert_allclose(boxes["_Confidence"], table["score"])
    assert boxes["_CoordinateZ"].isna().all()  # 2D: the viewers draw one micrograph's boxes
    assert cbox["cryolo_include"]["_slice_index"].tolist() == []
    assert str(cbox["global"]["_cbox_format_version"].iloc[0]) == "1.0"

    both = make_table(["mic_1", "mic_2"], [10.0, 20.0], [30.0, 40.0], [0.5, 1.5])
    particles = star.StarFile(write_coordinates(both, tmp_path / "picks.star"))
    assert "particles" in particles  # the block napari-boxmanager's STAR reader takes, split by micrograph
    np.testing.assert_allclose(particles["particles"]["_rlnAutopickFigureOfMerit"], both["score"])
    assert particles["particles"]["_rlnMicrographName"].tolist() == ["mic_1.mrc", "mic_2.mrc"]


@pytest.mark.parametrize("suffix", [".txt", ".tsv"])
def test_topaz_picks(tmp_path: Path, suffix: str) -> None:
    table = read_coordinates(write_text(tmp_path / f"predicted{suffix}", TOPAZ_PICKS))
    assert list(table["micrograph"]) == ["14sep05c_00024sq_00003hl_00002es_c"] * 2 + [
        "14sep05c_00024sq_00004hl_00002es_c"]
    np.testing.assert_allclose(table[["x", "y", "score"]], [[3439, 1191, 7.451], [1311, 3093, -0.2214],
                                                            [702, 588, -5.99]])


def test_topaz_names_that_look_like_numbers_stay_names(tmp_path: Path) -> None:
    path = write_text(tmp_path / "p.txt", "image_name\tx_coord\ty_coord\n0007\t10\t20\nNA\t30\t40\n")
    assert list(read_coordinates(path)["micrograph"]) == ["0007", "NA"]


@pytest.mark.parametrize("n_columns", [3, 4, 5])
@pytest.mark.parametrize("suffix", [".txt", ".pos", ".pts", ".coords"])
def test_imod_model2point_text(tmp_path: Path, n_columns: int, suffix: str) -> None:
    path = write_text(tmp_path / f"tomo_12{suffix}", IMOD_POINTS[n_columns])
    assert detect_format(path) == "imod"
    table = read_coordinates(path)
    assert list(table["micrograph"]) == ["tomo_12", "tomo_12"]
    np.testing.assert_allclose(table[["x", "y"]], [[1247.0, 511.0], [121.0, 1966.0]])


@pytest.mark.parametrize("text", [
    "micrograph,x,y,score\nmic_1.mrc,10.5,20.25,0.9\n0002,30,40,\n",
    "image_name, x_coord, y_coord, confidence\nmic_1, 10.5, 20.25, 0.9\n0002, 30, 40, NA\n",
    "rlnMicrographName\trlnCoordinateX\trlnCoordinateY\trlnAutopickFigureOfMerit\nmic_1.mrc\t10.5\t20.25\t0.9\n"
    "0002.mrc\t30\t40\tnan\n",
], ids=["ours", "aliases-with-spaces", "tab-separated-relion-names"])
def test_csv_with_the_column_names_other_tools_use(tmp_path: Path, text: str) -> None:
    table = read_coordinates(write_text(tmp_path / "picks.csv", text))
    assert list(table["micrograph"]) == ["mic_1", "0002"]
    np.testing.assert_allclose(table[["x", "y"]], [[10.5, 20.25], [30, 40]])
    assert table["score"][0] == pytest.approx(0.9) and np.isnan(table["score"][1])


def test_csv_without_micrograph_column_is_named_by_its_file(tmp_path: Path) -> None:
    table = read_coordinates(write_text(tmp_path / "mic_9.csv", "x,y\n1,2\n3,4\n"))
    assert list(table["micrograph"]) == ["mic_9", "mic_9"]


def test_detect_format_by_suffix_and_content(tmp_path: Path) -> None:
    assert [detect_format(f"a{s}") for s in (".star", ".box", ".csv", ".tsv", ".STAR")] == [
        "star", "box", "csv", "topaz", "star"]
    assert detect_format(tmp_path / "not_written_yet.txt") == "topaz"
    assert detect_format(write_text(tmp_path / "t.txt", TOPAZ_PICKS)) == "topaz"
    assert detect_format(write_text(tmp_path / "i.txt", IMOD_POINTS[3])) == "imod"


def test_folder_and_list_of_per_micrograph_files(tmp_path: Path) -> None:
    write_text(tmp_path / "boxes/mic_a.box", EMAN2_BOX)
    write_text(tmp_path / "boxes/mic_b.box", "10\t20\t32\t32\n")
    write_text(tmp_path / "boxes/mic_c.box", "")  # a micrograph without picks
    from_folder = read_coordinates(tmp_path / "boxes")
    from_list = read_coordinates(sorted((tmp_path / "boxes").iterdir()))
    pd.testing.assert_frame_equal(from_folder, from_list)
    assert list(from_folder["micrograph"]) == ["mic_a", "mic_a", "mic_b"]


def test_a_folder_with_two_files_picking_one_micrograph_is_refused_but_named_files_merge(tmp_path: Path) -> None:
    """Labels beside truth (or one set in two formats) in a folder read whole would merge silently."""
    write_text(tmp_path / "set/labels.csv", "micrograph,x,y\nmic_a,10,20\nmic_b,30,40\n")
    write_text(tmp_path / "set/truth.csv", "micrograph,x,y\nmic_a,11,21\nmic_a,50,60\n")
    with pytest.raises(UserInputError, match=r"set: holds two coordinate files with picks of micrograph mic_a "
                                             r"\(labels\.csv, truth\.csv\)"):
        read_coordinates(tmp_path / "set")
    merged = read_coordinates([tmp_path / "set/labels.csv", tmp_path / "set/truth.csv"])
    assert len(merged) == 4


# ----------------------------------------------------------------------------------------- round trips

micrograph_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,11}", fullmatch=True)
coordinates = st.floats(0.0, MAX_COORDINATE_PX, allow_nan=False)


@st.composite
def coordinate_tables(draw: st.DrawFn, max_micrographs: int = 4) -> pd.DataFrame:
    names = draw(st.lists(micrograph_names, min_size=1, max_size=max_micrographs, unique=True))
    rows = draw(st.lists(st.tuples(st.sampled_from(names), coordinates, coordinates), min_size=1, max_size=15))
    scores = draw(st.none() | st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=len(rows),
                                       max_size=len(rows)))
    return make_table([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], scores)


def assert_same_picks(read: pd.DataFrame, written: pd.DataFrame, tolerance_px: float,
                      score_tolerance: tuple[float, float] | None) -> None:
    """Same names in the same order per micrograph; coordinates and scores (``(rtol, atol)``) within tolerance."""
    read, written = by_micrograph(read), by_micrograph(written)
    assert list(read["micrograph"]) == list(written["micrograph"])
    np.testing.assert_allclose(read["x"], written["x"], rtol=0, atol=tolerance_px)
    np.testing.assert_allclose(read["y"], written["y"], rtol=0, atol=tolerance_px)
    if score_tolerance is None or written["score"].isna().all():
        assert read["score"].isna().all()
    else:
        rtol, atol = score_tolerance
        np.testing.assert_allclose(read["score"], written["score"], rtol=rtol, atol=atol)


FILE_FORMATS = {  # format: (file name, coordinate tolerance, score (rtol, atol))
    "star": ("picks.star", STAR_TOLERANCE_PX, (0.0, STAR_SCORE_ATOL)),
    "csv": ("picks.csv", CSV_TOLERANCE_PX, (CSV_SCORE_RTOL, 1e-12)),
    "topaz": ("picks.txt", TOPAZ_TOLERANCE_PX, (TOPAZ_SCORE_RTOL, 1e-12)),
}


#: CBOX corners are written with six decimals (as STAR) and the centre is the corner plus half the box.
CBOX_TOLERANCE_PX = 2 * STAR_TOLERANCE_PX
#: Per-micrograph formats: coordinate tolerance and score (rtol, atol), None where the format holds no score.
PER_MICROGRAPH_TOLERANCES = {"box": (BOX_TOLERANCE_PX, None), "cbox": (CBOX_TOLERANCE_PX, (0.0, STAR_SCORE_ATOL))}


def test_every_writable_format_has_a_round_trip_test() -> None:
    assert set(WRITERS) == {*FILE_FORMATS, *PER_MICROGRAPH_TOLERANCES, "cs"} and set(WRITERS) <= set(READERS)


@pytest.mark.parametrize("fmt", sorted(FILE_FORMATS))
@PROPERTY_SETTINGS
@given(table=coordinate_tables())
def test_single_file_round_trip(tmp_path_factory: pytest.TempPathFactory, fmt: str, table: pd.DataFrame) -> None:
    file_name, tolerance_px, score_tolerance = FILE_FORMATS[fmt]
    path = write_coordinates(table, tmp_path_factory.mktemp(fmt) / file_name)
    assert detect_format(path) == fmt
    assert_same_picks(read_coordinates(path), table, tolerance_px, score_tolerance)


#: cryoSPARC keeps centres as float32 fractions of the micrograph's size and scores as float32.
CS_TOLERANCE_PX, CS_SCORE_RTOL = 2e-7 * MAX_COORDINATE_PX, 1e-6


@PROPERTY_SETTINGS
@given(table=coordinate_tables())
def test_cryosparc_round_trip(tmp_path_factory: pytest.TempPathFactory, table: pd.DataFrame) -> None:
    table = table.assign(score=table["score"].fillna(0.0))  # a .cs file always has a score field
    table[SHAPE_Y_COLUMN] = table[SHAPE_X_COLUMN] = int(MAX_COORDINATE_PX) + 1
    path = write_coordinates(table, tmp_path_factory.mktemp("cs") / "picks.cs")
    assert detect_format(path) == "cs"
    assert_same_picks(read_coordinates(path), table, CS_TOLERANCE_PX, (CS_SCORE_RTOL, 1e-9))


box_sizes = st.integers(2, 1024) | st.floats(1.0, 1000.0).map(lambda size: round(size, 2))


@pytest.mark.parametrize("fmt", sorted(PER_MICROGRAPH_TOLERANCES))
@PROPERTY_SETTINGS
@given(table=coordinate_tables(max_micrographs=1), box_size=box_sizes)
def test_boxed_format_round_trip(tmp_path_factory: pytest.TempPathFactory, fmt: str, table: pd.DataFrame,
                                 box_size: float) -> None:
    name = table["micrograph"][0]
    path = write_coordinates(table, tmp_path_factory.mktemp(fmt) / f"{name}.{fmt}", box_size=box_size)
    assert detect_format(path) == fmt
    assert_same_picks(read_coordinates(path), table, *PER_MICROGRAPH_TOLERANCES[fmt])


@pytest.mark.parametrize("fmt", ["star", "box", "cbox", "csv", "topaz"])
@PROPERTY_SETTINGS
@given(table=coordinate_tables(), extra_names=st.lists(micrograph_names, max_size=2))
def test_one_file_per_micrograph_round_trip(tmp_path_factory: pytest.TempPathFactory, fmt: str,
                                            table: pd.DataFrame, extra_names: list[str]) -> None:
    folder = tmp_path_factory.mktemp(f"per_micrograph_{fmt}") / "picks"
    written = write_coordinates_per_micrograph(table, folder, fmt, names=extra_names, box_size=48)
    assert len(written) == len({*extra_names, *table["micrograph"]})
    tolerance_px, score_tolerance = PER_MICROGRAPH_TOLERANCES.get(fmt) or FILE_FORMATS[fmt][1:]
    assert_same_picks(read_coordinates(folder), table, tolerance_px, score_tolerance)


def test_table_without_score_column_can_be_written(tmp_path: Path) -> None:
    table = pd.DataFrame({"micrograph": ["m"], "x": [1.0], "y": [2.0]})
    for file_name in ("a.star", "a.csv", "a.txt"):
        assert read_coordinates(write_coordinates(table, tmp_path / file_name))["score"].isna().all()


# ---------------------------------------------------------------------------------------------- errors


def assert_user_error(path: Path, *fragments: str, fmt: str | None = None) -> None:
    with pytest.raises(UserInputError) as err:
        read_coordinates(path, fmt)
    assert err.value.source == str(path), err.value.one_line()
    for fragment in fragments:
        assert fragment in err.value.problem, err.value.problem


@pytest.mark.parametrize("file_name", ["empty.star", "empty.box", "empty.csv", "empty.txt", "empty.tsv",
                                       "empty.pos"])
def test_empty_coordinate_file(tmp_path: Path, file_name: str) -> None:
    assert_user_error(write_text(tmp_path / file_name, ""), "empty")


@pytest.mark.parametrize("file_name, text", [
    ("header_only.star", RELION_NO_PICKS_PER_MICROGRAPH),
    ("header_only.csv", "micrograph,x,y\n"),
    ("header_only.txt", "image_name\tx_coord\ty_coord\n"),
    ("comments_only.box", "# nothing picked\n\n"),
])
def test_file_without_coordinates(tmp_path: Path, file_name: str, text: str) -> None:
    assert_user_error(write_text(tmp_path / file_name, text), "no particle coordinates")


@pytest.mark.parametrize("file_name, text, fragments", [
    ("words.star", "this is not a star file\n", ("no data loop",)),
    ("no_coords.star", "data_\n\nloop_\n_rlnMicrographName #1\nmic.mrc\n", ("rlnCoordinateX",)),
    ("letters.star", "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n10 abc\n",
     ("rlnCoordinateY", "row 1", "'abc'")),
    ("short.box", "10\t20\t64\n", ("line 1", "at least 4")),
    ("letters.box", "# e2boxer\n10\t20\t64\tsixty-four\n", ("line 2", "'sixty-four' is not a number")),
    ("no_xy.csv", "micrograph,u,v\nm,1,2\n", ("no column for x and y",)),
    ("text_in_x.csv", "micrograph,x,y\nm,1,2\nm,left,3\n", ("column x, row 2", "'left'")),
    ("missing_y.csv", "micrograph,x,y\nm,1,\n", ("NaN or not numbers",)),
    ("ragged.csv", "micrograph,x,y\nm,1,2\nm,3\nm,5,6\n", ("NaN or not numbers", "the first the 2nd pick",
                                                         "y=nan")),
    ("headerless.tsv", "mic\t10\t20\n", ("missing Topaz header",)),
    ("short.pos", "1 2\n", ("at least 3",)),
    ("no_cryolo.cbox", "data_global\n\n_cbox_format_version 1.0\n", ("no 'data_cryolo' block",)),
    ("no_width.cbox", "data_cryolo\n\nloop_\n_CoordinateX #1\n_CoordinateY #2\n1 2\n", ("Width, Height",)),
    ("tomogram.cbox", CRYOLO_CBOX.replace("<NA> 128 128 <NA>", "12 128 128 128"), ("3D",)),
    ("short.cbox", "10\t20\t64\t64\n", ("line 1", "at least 5")),
])
def test_malformed_coordinate_file(tmp_path: Path, file_name: str, text: str, fragments: tuple[str, ...]) -> None:
    assert_user_error(write_text(tmp_path / file_name, text), *fragments)


@pytest.mark.parametrize("suffix", [".star", ".box", ".csv", ".txt", ".tsv", ".pos"])
def test_binary_file_is_not_a_coordinate_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"image{suffix}"
    path.write_bytes(np.random.default_rng(3).bytes(300))
    assert_user_error(path)


def test_unknown_suffix_lists_known_formats(tmp_path: Path) -> None:
    assert_user_error(write_text(tmp_path / "picks.xyz", "1 2\n"), "unknown coordinate format '.xyz'", ".star")


def test_unknown_format_name(tmp_path: Path) -> None:
    assert_user_error(write_text(tmp_path / "picks.star", RELION_30_PARTICLES), "unknown coordinate format 'pdb'",
                      fmt="pdb")


def test_missing_file_and_empty_folder(tmp_path: Path) -> None:
    assert_user_error(tmp_path / "absent.star", "not found")
    (tmp_path / "empty_folder").mkdir()
    assert_user_error(tmp_path / "empty_folder", "no coordinate files")


def test_folder_of_files_without_picks(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_text(tmp_path / "boxes" / f"{name}.box", "")
    assert_user_error(tmp_path / "boxes", "no particle coordinates found in 2 files")


@pytest.mark.parametrize("suffix", [".box", ".cbox"])
@pytest.mark.parametrize("box_size", [None, 0, -4])
def test_boxed_formats_need_a_box_size(tmp_path: Path, box_size: float | None, suffix: str) -> None:
    with pytest.raises(UserInputError) as err:
        write_coordinates(make_table("m", [1.0], [2.0]), tmp_path / f"m{suffix}", box_size=box_size)
    assert "--box-size" in err.value.problem
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".box", ".cbox"])
def test_boxed_formats_hold_one_micrograph(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(UserInputError) as err:
        write_coordinates(make_table(["a", "b"], [1.0, 2.0], [3.0, 4.0]), tmp_path / f"ab{suffix}", box_size=32)
    assert "holds one micrograph" in err.value.problem
    assert list(tmp_path.iterdir()) == []


def test_existing_output_without_overwrite_is_kept(tmp_path: Path) -> None:
    path = write_text(tmp_path / "picks.star", RELION_30_PARTICLES)
    with pytest.raises(UserInputError) as err:
        write_coordinates(make_table("m", [1.0], [2.0]), path, overwrite=False)
    assert err.value.source == str(path) and "--overwrite" in err.value.problem
    assert path.read_text() == RELION_30_PARTICLES


# -------------------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("file_name", ["picks.star", "picks.txt", "m.box"])
def test_writer_raising_midway_leaves_no_file(tmp_path: Path, file_name: str) -> None:
    """A column that cannot become numbers makes the writer fail after the temp file exists."""
    table = make_table("m", [1.0, 2.0], [3.0, 4.0])
    table["x"] = ["1.0", "not a number"]
    with pytest.raises(ValueError):
        write_coordinates(table, tmp_path / file_name, box_size=16)
    assert list(tmp_path.iterdir()) == []


def test_writer_raising_midway_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_text(tmp_path / "picks.star", RELION_30_PARTICLES)
    table = make_table("m", [1.0], [3.0])
    table["y"] = ["bad"]
    with pytest.raises(ValueError):
        write_coordinates(table, path, overwrite=True)
    assert path.read_text() == RELION_30_PARTICLES
    assert [p.name for p in tmp_path.iterdir()] == ["picks.star"]


def test_per_micrograph_output_checks_every_file_before_writing(tmp_path: Path) -> None:
    folder = tmp_path / "picks"
    existing = write_text(folder / "m3_autopick.star", "kept")
    table = make_table(["m1", "m2", "m3"], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(UserInputError) as err:
        write_coordinates_per_micrograph(table, folder, "star", overwrite=False)
    assert err.value.source == str(existing)
    assert sorted(p.name for p in folder.iterdir()) == ["m3_autopick.star"] and existing.read_text() == "kept"


def test_convert_api_star_to_box_folder_and_back(tmp_path: Path) -> None:
    source = write_text(tmp_path / "particles.star", RELION_30_PARTICLES)
    written = convert_coordinates(source, tmp_path / "boxes", out_fmt="box", box_size=100)
    assert sorted(p.name for p in written) == ["20170629_00021_frameImage.box", "20170629_00022_frameImage.box"]
    back = convert_coordinates(tmp_path / "boxes", tmp_path / "back.star")
    assert_same_picks(read_coordinates(back[0]), read_coordinates(source), BOX_TOLERANCE_PX, score_tolerance=None)


@given(st.lists(st.tuples(st.floats(0, 4095), st.floats(0, 4095)), min_size=1, max_size=20),
       st.sampled_from([2.0, 3.0, 4.0, 0.5, 1.7]))
def test_scaling_picks_is_undone_by_the_inverse_scale_and_matches_block_binning(xy: list[tuple[float, float]],
                                                                             factor: float) -> None:
    table = pd.DataFrame({"micrograph": "m", "x": [p[0] for p in xy], "y": [p[1] for p in xy]})
    scaled = scale_coordinates(table, factor)
    back = scale_coordinates(scaled, 1.0 / factor)
    np.testing.assert_allclose(back[["x", "y"]].to_numpy(), table[["x", "y"]].to_numpy(), atol=1e-6)
    if factor.is_integer():  # picks on a block-binned copy land where bin_image's pixel centres map back to
        np.testing.assert_allclose(scaled[["x", "y"]].to_numpy(),
                                   from_binned_coordinates(table[["x", "y"]].to_numpy(), factor), atol=1e-6)
    assert table["x"].tolist() == [p[0] for p in xy]  # the input table is left as it was


def test_convert_scales_picks_made_on_binned_copies(tmp_path: Path) -> None:
    source = write_text(tmp_path / "particles.star", RELION_30_PARTICLES)
    written = convert_coordinates(source, tmp_path / "full.star", scale=4.0)
    before, after = read_coordinates(source), read_coordinates(written[0])
    np.testing.assert_allclose(after["x"].to_numpy(), (before["x"].to_numpy() + 0.5) * 4 - 0.5)
    np.testing.assert_allclose(after["y"].to_numpy(), (before["y"].to_numpy() + 0.5) * 4 - 0.5)
    with pytest.raises(UserInputError, match="--scale"):
        convert_coordinates(source, tmp_path / "bad.star", scale=0.0)
    assert not (tmp_path / "bad.star").exists()


def test_convert_star_to_star_keeps_relion_folders_optics_groups_and_block(tmp_path: Path) -> None:
    """RELION matches picks to micrographs by the whole name and 3.1+ needs each pick's optics group: a STAR
    written back (rescaled, say) must keep both, and the optics block at the coordinates' pixel size."""
    import starfile

    source = write_text(tmp_path / "picks.star", RELION_5_MICROGRAPH_PICKS)
    written = convert_coordinates(source, tmp_path / "full.star", scale=4.0)[0]
    blocks = starfile.read(written, always_dict=True)
    assert list(blocks) == ["optics", "particles"]
    assert blocks["particles"]["rlnMicrographName"].tolist() == [
        "MotionCorr/job002/Movies/grid2_0007.mrc", "MotionCorr/job002/Movies/grid2_0008.mrc"]
    assert blocks["particles"]["rlnOpticsGroup"].tolist() == [1, 1]
    assert "1.000000" not in written.read_text()  # an integer column, as RELION reads it
    assert blocks["optics"]["rlnMicrographPixelSize"].iloc[0] == pytest.approx(3.32 / 4)
    assert blocks["optics"]["rlnMicrographOriginalPixelSize"].iloc[0] == pytest.approx(0.83)  # the movies': kept
    # The names still key the micrographs by their stem, as every other reader's do.
    assert read_coordinates(written)["micrograph"].tolist() == ["grid2_0007", "grid2_0008"]


def test_convert_writes_no_optics_block_when_some_picks_have_no_group(tmp_path: Path) -> None:
    import starfile

    with_groups = write_text(tmp_path / "a.star", RELION_5_MICROGRAPH_PICKS)
    without = write_text(tmp_path / "b.star", RELION_30_PARTICLES)
    with pytest.warns(UserWarning, match="without RELION optics groups: the optics block and rlnOpticsGroup are left"):
        written = convert_coordinates([with_groups, without], tmp_path / "both.star")[0]
    blocks = starfile.read(written, always_dict=True)
    assert list(blocks) == ["particles"] and "rlnOpticsGroup" not in blocks["particles"].columns


@pytest.mark.parametrize("csv_first", [True, False])
def test_convert_a_csv_beside_a_star_names_its_micrographs(tmp_path: Path, csv_first: bool) -> None:
    """Rows from a format that names no micrograph file (CSV) beside a STAR's: ``<name>.mrc``, not a missing value."""
    import starfile

    picks = write_text(tmp_path / "a.csv", "micrograph,x,y,score\nmic_0030,10,20,1\n")
    star = write_text(tmp_path / "b.star", RELION_5_MICROGRAPH_PICKS)
    inputs = [picks, star] if csv_first else [star, picks]
    with pytest.warns(UserWarning, match="without RELION optics groups"):
        written = convert_coordinates(inputs, tmp_path / "both.star")[0]
    names = starfile.read(written, always_dict=True)["particles"]["rlnMicrographName"].tolist()
    assert sorted(names) == ["MotionCorr/job002/Movies/grid2_0007.mrc", "MotionCorr/job002/Movies/grid2_0008.mrc",
                             "mic_0030.mrc"]


def test_convert_with_micrographs_names_them_in_the_star(tmp_path: Path) -> None:
    """Picks rescaled onto other micrographs: --micrographs says which, and the STAR names those."""
    from cryojoint.io.mrc import write_mrc

    source = write_text(tmp_path / "picks.star", RELION_5_MICROGRAPH_PICKS)
    mics = [write_mrc(tmp_path / "full" / f"{n}.mrc", np.zeros((2048, 2048), np.float32), 0.83)
            for n in ("grid2_0007", "grid2_0008")]
    written = convert_coordinates(source, tmp_path / "full.star", scale=4.0, micrographs=mics)[0]
    assert read_star_tables(written)["particles"]["rlnMicrographName"].tolist() == [str(m) for m in mics]


def test_scaled_cryosparc_picks_forget_the_micrographs_they_no_longer_fit() -> None:
    table = make_table("m", [10.0], [20.0]).assign(micrograph_path="J1/m.mrc", micrograph_shape_y=100,
                                                   micrograph_shape_x=100)
    assert {"micrograph_path", SHAPE_Y_COLUMN, SHAPE_X_COLUMN}.isdisjoint(scale_coordinates(table, 4.0).columns)
    assert "micrograph_path" in scale_coordinates(table, 1.0).columns


def test_convert_to_a_format_without_optics_ignores_them(tmp_path: Path) -> None:
    first = write_text(tmp_path / "a.star", RELION_5_MICROGRAPH_PICKS)
    second = write_text(tmp_path / "b.star", RELION_5_MICROGRAPH_PICKS.replace("3.320000", "1.660000"))
    written = convert_coordinates([first, second], tmp_path / "both.csv")[0]
    assert len(read_coordinates(written)) == 4


def test_convert_refuses_two_files_whose_optics_group_differs(tmp_path: Path) -> None:
    first = write_text(tmp_path / "a.star", RELION_5_MICROGRAPH_PICKS)
    second = write_text(tmp_path / "b.star", RELION_5_MICROGRAPH_PICKS.replace("3.320000", "1.660000"))
    with pytest.raises(UserInputError, match=r"b\.star: its optics group 1 differs from a\.star's"):
        convert_coordinates([first, second], tmp_path / "both.star")
    assert not (tmp_path / "both.star").exists()
    same = convert_coordinates([first, write_text(tmp_path / "c.star", RELION_5_MICROGRAPH_PICKS)],
                               tmp_path / "same.star")[0]
    assert same.read_text().count("opticsGroup1") == 1


# ------------------------------------------------------------------------------------- label checks


def test_check_inside_names_the_micrograph() -> None:
    table = make_table(["a", "a", "b"], [5.0, 99.0, 10.0], [5.0, 5.0, 48.5])
    check_inside(table, {"a": (50, 100), "b": (50, 100)}, "labels.star")
    with pytest.raises(UserInputError) as err:
        check_inside(table, {"a": (50, 50), "b": (50, 100)}, "labels.star")
    assert err.value.source == "labels.star" and "'a'" in err.value.problem and "x=99.0" in err.value.problem


def test_check_names_match_by_basename() -> None:
    table = make_table(["mic_1", "mic_2"], [1.0, 2.0], [1.0, 2.0])
    check_names_match(table, ["mic_1", "mic_2", "mic_3"], "labels.star")
    with pytest.raises(UserInputError) as err:
        check_names_match(table, ["mic_1"], "labels.star")
    assert "mic_2" in err.value.problem


def test_written_coordinate_files_are_readable_by_others(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = write_coordinates(make_table("m", [1.0], [2.0]), tmp_path / "m.star")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=40,
                unique=True),
       st.integers(1, 3))
def test_dropping_duplicate_picks_keeps_one_of_each(picks: list[tuple[int, int, int]], copies: int) -> None:
    """Picks on a 2 px grid (never within a pixel of each other) listed ``copies`` times, a little jittered: one each
    remains, the first listed, in order."""
    from cryojoint.io.coords import drop_duplicate_picks

    table = pd.DataFrame([(f"m{m}", 2.0 * x, 2.0 * y) for m, x, y in picks], columns=["micrograph", "x", "y"])
    repeated = pd.concat([table.assign(x=table["x"] + 0.3 * k) for k in range(copies)], ignore_index=True)
    kept, dropped = drop_duplicate_picks(repeated)
    assert dropped == len(table) * (copies - 1)
    pd.testing.assert_frame_equal(kept, table)


def test_labels_picked_on_binned_copies_are_noticed_in_the_corner() -> None:
    from cryojoint.io.coords import labels_in_a_corner
    from cryojoint.simulation import simulate

    data = simulate(n_micrographs=4, size=256, seed=3, preset="ruvb")
    shapes = {m.name: m.shape for m in data.micrographs["dose_100"]}
    labels = data.labels if len(data.labels) >= 20 else data.truth
    assert labels_in_a_corner(labels, shapes) is None  # partial labels of one region each, as a user gives them
    binned = data.truth.assign(x=data.truth["x"] / 4, y=data.truth["y"] / 4)  # picked on 4x-binned copies
    assert labels_in_a_corner(binned, shapes) == 4.0
    assert labels_in_a_corner(binned.head(10), shapes) is None  # too few to tell
    one_micrograph = binned[binned["micrograph"] == binned["micrograph"].iloc[0]]
    assert labels_in_a_corner(one_micrograph, shapes) is None
