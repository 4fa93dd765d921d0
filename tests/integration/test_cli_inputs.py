"""``train`` and ``predict`` take micrographs as @list files and RELION micrograph STAR files; labels for
micrographs not given are skipped with --ignore-unknown-labels; bad inputs end in one ``error:`` line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import starfile

from cryojoint.io.coords import read_coordinates

EXIT_USER_ERROR = 2


def _labels_with_a_stranger(project: dict[str, Path], tmp_path: Path) -> Path:
    """The project's manual picks as one STAR, plus a pick on a micrograph nobody passes."""
    table = read_coordinates(project["coords"])
    stranger = pd.DataFrame({"rlnMicrographName": ["Other/ghost.mrc"], "rlnCoordinateX": [10.0],
                             "rlnCoordinateY": [12.0]})
    rows = pd.DataFrame({"rlnMicrographName": table["micrograph"] + ".mrc", "rlnCoordinateX": table["x"],
                         "rlnCoordinateY": table["y"]})
    path = tmp_path / "labels.star"
    starfile.write({"particles": pd.concat([rows, stranger], ignore_index=True)}, path)
    return path


def test_train_from_a_micrographs_star_and_predict_from_a_list(
        relion_project: dict[str, Path], tiny_config: Path, tmp_path: Path,
        cryojoint_main) -> None:
    labels = _labels_with_a_stranger(relion_project, tmp_path)
    run_dir = tmp_path / "run"
    common = [relion_project["mics_star"], "--labels", labels, "--out", run_dir, "--steps", "2",
              "--config", tiny_config, "--device", "cpu"]

    code, _, err = cryojoint_main(["train", *common])
    assert code == EXIT_USER_ERROR and err.startswith(f"error: {labels}: 1 micrograph name(s)") and "ghost" in err
    assert not run_dir.exists()

    code, out, err = cryojoint_main(["train", *common, "--ignore-unknown-labels"])
    assert code == 0, err
    assert "skipped 1 label(s) on 1 micrograph(s) that were not given" in out
    assert (run_dir / "model.pt").is_file()

    listing = tmp_path / "mics.txt"
    movies = relion_project["root"] / relion_project["movies"]
    listing.write_text("# two of three\n" + "\n".join(str(p) for p in sorted(movies.glob("*.mrc"))[:2]) + "\n")
    pred = tmp_path / "pred"
    code, out, err = cryojoint_main(["predict", run_dir / "model.pt", f"@{listing}", "--out", pred, "--device", "cpu",
                          "--outputs", "picks"])
    assert code == 0, err
    assert sorted(p.stem for p in (pred / "candidates").glob("*.csv")) == ["mic_0000", "mic_0001"]
    # picks.star names each micrograph as it was given (the list's paths), not by its bare file name.
    picked = starfile.read(pred / "picks.star")
    assert len(picked) and set(picked["rlnMicrographName"]) <= {str(p) for p in sorted(movies.glob("*.mrc"))[:2]}

    # From the micrographs STAR: the names RELION gave them (project-relative, with the job's folders), so RELION
    # matches the picks to its micrographs.
    pred_star = tmp_path / "pred_star"
    code, out, err = cryojoint_main(["predict", run_dir / "model.pt", relion_project["mics_star"], "--out", pred_star,
                                     "--device", "cpu", "--outputs", "picks", "--threshold", "-1000"])
    assert code == 0, err
    # Denoising only: no cut-off to report, and no traceback over it.
    code, out, err = cryojoint_main(["predict", run_dir / "model.pt", relion_project["mics_star"], "--out",
                                     tmp_path / "denoised_only", "--device", "cpu", "--outputs", "denoised"])
    assert code == 0 and "no picks asked for" in out, err
    assert not (tmp_path / "denoised_only" / "picks.star").exists()
    listed = set(starfile.read(relion_project["mics_star"], always_dict=True)["micrographs"]["rlnMicrographName"])
    assert all("/" in name for name in listed)
    assert set(starfile.read(pred_star / "picks.star")["rlnMicrographName"]) == listed

    # Mistakes that used to end in a misleading line.
    first = sorted(movies.glob("*.mrc"))[0]
    code, _, err = cryojoint_main(["predict", run_dir / "model.pt", first, str(first), "--out", tmp_path / "twice"])
    assert code == EXIT_USER_ERROR and err.strip() == f"error: {first}: given 2 times; give each micrograph once"
    code, _, err = cryojoint_main(["evaluate", "--picks", run_dir, "--truth", labels])
    assert code == EXIT_USER_ERROR and err.startswith(f"error: {run_dir}: is a training run (model.pt), which holds "
                                                      "no picks; predict with it first"), err
    code, _, err = cryojoint_main(["convert", pred / "picks.star", tmp_path / "huge.star", "--scale", "1e300"])
    assert code == EXIT_USER_ERROR and "--scale must be between 0.001 and 1000" in err
    strangers_only = tmp_path / "strangers.star"
    starfile.write({"particles": pd.DataFrame({"rlnMicrographName": ["Other/ghost.mrc"], "rlnCoordinateX": [1.0],
                                               "rlnCoordinateY": [2.0]})}, strangers_only)
    code, _, err = cryojoint_main(["train", relion_project["mics_star"], "--labels", strangers_only, "--out",
                                   tmp_path / "none", "--steps", "2", "--config", tiny_config, "--device", "cpu",
                                   "--ignore-unknown-labels"])
    assert code == EXIT_USER_ERROR and "no label names a micrograph given (skipped 1 label(s)" in err, err


@pytest.mark.parametrize("problem", ["missing list", "listed file missing", "star without micrographs"])
def test_bad_micrograph_inputs_are_one_line_errors_and_write_nothing(
        problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cryojoint_main) -> None:
    monkeypatch.chdir(tmp_path)
    if problem == "missing list":
        source, argument, fragment = tmp_path / "absent.txt", f"@{tmp_path / 'absent.txt'}", "list file not found"
    elif problem == "listed file missing":
        source = tmp_path / "list.txt"
        source.write_text("\n# header\nMovies/m1.mrc\n")
        argument, fragment = f"@{source}", "line 3: micrograph file 'Movies/m1.mrc' not found"
    else:
        source = tmp_path / "picks.star"
        starfile.write({"particles": pd.DataFrame({"rlnCoordinateX": [1.0], "rlnCoordinateY": [1.0]})}, source)
        argument, fragment = source, "no data_micrographs loop with _rlnMicrographName"
    labels = tmp_path / "labels.csv"
    labels.write_text("micrograph,x,y\nm1,1,1\n")
    for command in (["train", argument, "--labels", labels, "--out", tmp_path / "run"],
                    ["predict", tmp_path / "model.pt", argument, "--out", tmp_path / "pred"]):
        code, _, err = cryojoint_main(command)
        assert code == EXIT_USER_ERROR
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {source}: ") and fragment in lines[0], err
    assert not (tmp_path / "run").exists() and not (tmp_path / "pred").exists()
