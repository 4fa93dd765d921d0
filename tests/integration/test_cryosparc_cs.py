"""cryoSPARC particle ``.cs`` files, read and written with ``cryosparc-tools``: round trips, files as cryoSPARC
writes them (UID-prefixed paths, non-square micrographs), and the three commands that use them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryosparc.dataset import Dataset

from cryojoint.io.coords import (
    SHAPE_X_COLUMN,
    SHAPE_Y_COLUMN,
    make_table,
    read_coordinates,
    write_coordinates,
)
from cryojoint.io.mrc import write_mrc

EXIT_USER_ERROR = 2
#: Centres are stored as float32 fractions of the micrograph's size: ~1e-7 relative, well under 1e-3 px here.
PX_TOLERANCE = 1e-3


def _cryosparc_file(path: Path) -> Path:
    """Particles as a cryoSPARC picker exports them: UID-prefixed micrograph paths, 300 rows x 500 columns."""
    dataset = Dataset.allocate(3, [
        ("location/micrograph_uid", "<u8"), ("location/exp_group_id", "<u4"), ("location/micrograph_path", "O"),
        ("location/micrograph_shape", "<u4", (2,)), ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"), ("pick_stats/ncc_score", "<f4"), ("pick_stats/power", "<f4"),
    ])
    dataset["location/micrograph_uid"] = np.array([11, 11, 22], dtype=np.uint64)
    dataset["location/micrograph_path"] = np.array(["J2/imported/01234567890123456789_mic_a.mrc"] * 2
                                                   + ["J2/imported/98765432109876543210_mic_b.mrc"], dtype=object)
    dataset["location/micrograph_shape"] = np.array([[300, 500]] * 3, dtype=np.uint32)
    dataset["location/center_x_frac"] = np.array([0.1, 0.5, 0.9])
    dataset["location/center_y_frac"] = np.array([0.2, 0.5, 0.8])
    dataset["pick_stats/ncc_score"] = np.array([0.3, 0.6, 0.9])
    dataset.save(path)
    return path


def test_reads_cryosparc_particles_in_pixels_with_names_matched_without_uid(tmp_path: Path) -> None:
    table = read_coordinates(_cryosparc_file(tmp_path / "particles.cs"))
    assert list(table["micrograph"]) == ["mic_a", "mic_a", "mic_b"]
    np.testing.assert_allclose(table["x"], [50.0, 250.0, 450.0], atol=PX_TOLERANCE)  # x is a fraction of width
    np.testing.assert_allclose(table["y"], [60.0, 150.0, 240.0], atol=PX_TOLERANCE)  # y of height
    np.testing.assert_allclose(table["score"], [0.3, 0.6, 0.9], rtol=1e-6)


def test_write_then_read_round_trips_and_cryosparc_tools_sees_every_field(tmp_path: Path) -> None:
    table = make_table(["m1", "m1", "m2"], [10.25, 399.5, 0.0], [20.75, 5.0, 299.0], [3.5, -1.25, 40.0])
    table[SHAPE_Y_COLUMN], table[SHAPE_X_COLUMN] = [300, 300, 320], [400, 400, 480]
    path = write_coordinates(table, tmp_path / "picks.cs")

    dataset = Dataset.load(path)
    for field in ("location/micrograph_uid", "location/micrograph_path", "location/micrograph_shape",
                  "location/center_x_frac", "location/center_y_frac", "pick_stats/ncc_score", "pick_stats/power"):
        assert field in dataset.fields()
    assert dataset["location/micrograph_shape"].tolist() == [[300, 400], [300, 400], [320, 480]]
    np.testing.assert_allclose(dataset["location/center_x_frac"], [10.25 / 400, 399.5 / 400, 0.0], rtol=1e-6)
    assert list(dataset["location/micrograph_path"]) == ["m1.mrc", "m1.mrc", "m2.mrc"]
    uids = dataset["location/micrograph_uid"]
    assert uids[0] == uids[1] != uids[2]

    back = read_coordinates(path)
    assert list(back["micrograph"]) == ["m1", "m1", "m2"]
    np.testing.assert_allclose(back[["x", "y"]], table[["x", "y"]], atol=PX_TOLERANCE)
    np.testing.assert_allclose(back["score"], table["score"], rtol=1e-6)
    again = write_coordinates(back, tmp_path / "again.cs")  # a .cs read keeps its UIDs and paths
    assert Dataset.load(again)["location/micrograph_uid"].tolist() == uids.tolist()


def test_convert_needs_the_micrographs_to_write_cs_and_round_trips_through_star(
        tmp_path: Path, cryojoint_main) -> None:
    mics = tmp_path / "mics"
    for name, shape in (("m1", (64, 96)), ("m2", (80, 64))):
        write_mrc(mics / f"{name}.mrc", np.zeros(shape, np.float32), 1.0)
    star = tmp_path / "picks.star"
    write_coordinates(make_table(["m1", "m2"], [90.0, 10.0], [3.0, 70.0], [1.0, 2.0]), star)

    code, _, err = cryojoint_main(["convert", star, tmp_path / "picks.cs"])
    assert code == EXIT_USER_ERROR and err.strip() == (
        f"error: {tmp_path / 'picks.cs'}: a cryoSPARC .cs file needs each micrograph's size in pixels: pass the "
        "micrographs (--micrographs)")
    assert not (tmp_path / "picks.cs").exists()

    code, _, err = cryojoint_main(["convert", star, tmp_path / "picks.cs", "--micrographs", mics])
    assert code == 0, err
    dataset = Dataset.load(tmp_path / "picks.cs")
    assert dataset["location/micrograph_shape"].tolist() == [[64, 96], [80, 64]]
    assert list(dataset["location/micrograph_path"]) == [str(mics / "m1.mrc"), str(mics / "m2.mrc")]

    code, _, err = cryojoint_main(["convert", tmp_path / "picks.cs", tmp_path / "back.star"])
    assert code == 0, err
    back = read_coordinates(tmp_path / "back.star")
    np.testing.assert_allclose(back[["x", "y", "score"]], read_coordinates(star)[["x", "y", "score"]], atol=1e-3)


@pytest.mark.parametrize("content", ["garbage", "no locations"])
def test_unreadable_or_location_less_cs_is_a_one_line_error(
        content: str, tmp_path: Path, cryojoint_main) -> None:
    path = tmp_path / "bad.cs"
    if content == "garbage":
        path.write_bytes(b"\x93NUMPY not really" * 10)
        fragment = "not a readable cryoSPARC .cs file"
    else:
        dataset = Dataset.allocate(1, [("blob/path", "O")])
        dataset["blob/path"] = np.array(["x.mrc"], dtype=object)
        dataset.save(path)
        fragment = "no location/micrograph_path"
    code, _, err = cryojoint_main(["convert", path, tmp_path / "out.star"])
    assert code == EXIT_USER_ERROR and err.startswith(f"error: {path}: ") and fragment in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out.star").exists()


def test_train_on_cs_labels_and_predict_writes_picks_cs_beside_picks_star(
        relion_project: dict[str, Path], tiny_config: Path, tmp_path: Path,
        cryojoint_main) -> None:
    movies = relion_project["root"] / relion_project["movies"]
    labels = tmp_path / "labels.cs"
    code, _, err = cryojoint_main(["convert", relion_project["coords"], labels, "--micrographs", movies])
    assert code == 0, err
    run_dir, pred = tmp_path / "run", tmp_path / "pred"
    code, _, err = cryojoint_main(["train", movies, "--labels", labels, "--out", run_dir, "--steps", "2", "--config",
                        tiny_config, "--device", "cpu"])
    assert code == 0, err
    code, _, err = cryojoint_main(["predict", run_dir / "model.pt", movies, "--out", pred, "--formats", "star,cs",
                        "--outputs", "picks", "--device", "cpu"])
    assert code == 0, err
    star, cs = read_coordinates(pred / "picks.star"), read_coordinates(pred / "picks.cs")
    assert len(cs) == len(star) > 0
    pd.testing.assert_series_equal(cs["micrograph"], star["micrograph"])
    np.testing.assert_allclose(cs[["x", "y"]], star[["x", "y"]], atol=PX_TOLERANCE)
    np.testing.assert_allclose(cs["score"], star["score"], rtol=1e-5, atol=1e-5)
    assert Dataset.load(pred / "picks.cs")["location/micrograph_shape"].tolist()[0] == [256, 256]
