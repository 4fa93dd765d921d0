"""``cryojoint relion`` as RELION's External job runs it, in a small RELION-style project folder.

Every file RELION reads back is parsed with ``starfile``: the per-micrograph coordinate STARs, the
``autopick.star`` index, ``micrographs_denoised.star`` and ``RELION_OUTPUT_NODES.star``; the exit markers
follow RELION's conventions (success, failure with one ``error:`` line, abort on ``RELION_JOB_ABORT_NOW``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from typer.testing import CliRunner

from cryojoint import cli, relion
from cryojoint.io.coords import read_coordinates
from cryojoint.io.mrc import read_micrograph
from cryojoint.report.loading import RELION_TRAIN_SUBFOLDER, load_run

JOB = "External/job005/"


def _relion(project: dict[str, Path], tiny_config: Path, *extra: str, out: str = JOB):
    args = ["relion", "--o", out, "--in_mics", str(project["mics_star"]), "--in_coords", str(project["coords"]),
            "--particle_diameter", "22", "--steps", "2", "--config", str(tiny_config), "--device", "cpu",
            "--j", "1", *extra]
    return CliRunner().invoke(cli.app, args)


def _star(path: Path) -> dict[str, pd.DataFrame]:
    blocks = starfile.read(path, always_dict=True)
    assert all(isinstance(b, pd.DataFrame) for b in blocks.values()), path
    return blocks


def test_train_and_predict_write_every_file_relion_reads(relion_project: dict[str, Path], tiny_config: Path) -> None:
    result = _relion(relion_project, tiny_config, "--pipeline_control", JOB)
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "ignored: --pipeline_control External/job005/" in result.output
    job = Path(JOB)
    assert (job / relion.EXIT_SUCCESS).is_file()
    assert not (job / relion.EXIT_FAILURE).exists() and not (job / relion.EXIT_ABORTED).exists()

    nodes = _star(job / relion.OUTPUT_NODES)["output_nodes"]
    assert list(nodes["rlnPipeLineNodeName"]) == [f"{JOB}autopick.star", f"{JOB}micrographs_denoised.star"]
    assert list(nodes["rlnPipeLineNodeTypeLabel"]) == ["MicrographsCoords.star.relion.autopick",
                                                       "MicrographsData.star.relion"]
    assert list(nodes["rlnPipeLineNodeType"]) == [2, 1]

    inputs = _star(relion_project["mics_star"])
    index = _star(job / "autopick.star")["coordinate_files"]
    assert list(index["rlnMicrographName"]) == list(inputs["micrographs"]["rlnMicrographName"])
    n_picks = 0
    for mic, coordinate_file in zip(index["rlnMicrographName"], index["rlnMicrographCoordinates"]):
        name = Path(mic).stem
        assert coordinate_file == f"{JOB}Movies/{name}_autopick.star"  # mirrors MotionCorr/job002/Movies/
        (coords,) = _star(Path(coordinate_file)).values()
        assert list(coords.columns) == ["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]
        assert ((coords[["rlnCoordinateX", "rlnCoordinateY"]] >= 0).all().all()
                and (coords[["rlnCoordinateX", "rlnCoordinateY"]] <= 255).all().all())
        assert np.isfinite(coords["rlnAutopickFigureOfMerit"].to_numpy(float)).all()
        n_picks += len(coords)
    assert n_picks == len(read_coordinates(job / "picks.star")) > 0
    assert len(read_coordinates(job / "autopick.star")) == n_picks  # our own reader follows the index too
    # The job's training folder holds no picks: evaluating it points at the job's own.
    from cryojoint.errors import UserInputError
    from cryojoint.evaluation import evaluate_files

    with pytest.raises(UserInputError, match=f"its predictions are in {job}: --picks {job}"):
        evaluate_files(picks=job / "train", truth=job / "picks.star")

    denoised = _star(job / relion.DENOISED_STAR)
    pd.testing.assert_frame_equal(denoised["optics"], inputs["optics"])
    rows = denoised["micrographs"]
    assert list(rows.columns) == list(inputs["micrographs"].columns)
    assert list(rows["rlnDefocusU"]) == list(inputs["micrographs"]["rlnDefocusU"])
    for name, source in zip(rows["rlnMicrographName"], inputs["micrographs"]["rlnMicrographName"]):
        assert name == f"{JOB}denoised/{Path(source).stem}.mrc"
        image = read_micrograph(name)
        assert image.shape == read_micrograph(source).shape and np.isfinite(image.data).all()

    # The report on the job folder reads the training run the job keeps in train/ as well as its picks.
    contents = load_run(job)
    assert relion.TRAIN_DIR == RELION_TRAIN_SUBFOLDER
    assert contents.model_meta is not None and contents.metrics is not None and contents.config is not None
    assert contents.candidates is not None and len(contents.candidates)


def test_abort_file_stops_training_cleanly_and_the_job_continues_after(
        relion_project: dict[str, Path], tiny_config: Path) -> None:
    job = Path(JOB)
    job.mkdir(parents=True)
    (job / relion.ABORT_NOW).touch()
    result = _relion(relion_project, tiny_config)
    assert result.exit_code == relion.EXIT_CODE_ABORTED, result.output
    assert "training stopped on request after 1 of 2 steps" in result.output
    assert (job / relion.EXIT_ABORTED).is_file() and not (job / relion.EXIT_SUCCESS).exists()
    assert (job / "train" / "checkpoint.pt").is_file() and not (job / "autopick.star").exists()

    (job / relion.ABORT_NOW).unlink()
    result = _relion(relion_project, tiny_config)
    assert result.exit_code == 0, result.output
    assert "continuing from" in result.output and "trained 2 steps" in result.output
    assert (job / relion.EXIT_SUCCESS).is_file() and not (job / relion.EXIT_ABORTED).exists()

    other = Path("External/job006/")
    other.mkdir(parents=True)
    (other / relion.ABORT_NOW).touch()
    result = _relion(relion_project, tiny_config, "--task", "predict", "--model", f"{JOB}train/model.pt",
                     out=str(other))
    assert result.exit_code == relion.EXIT_CODE_ABORTED and (other / relion.EXIT_ABORTED).is_file()
    assert "prediction stopped on request" in result.output


@pytest.mark.parametrize("problem", ["micrographs star without names", "no labels", "predict without model",
                                     "bad task"])
def test_bad_inputs_fail_with_one_error_line_and_only_the_failure_marker(
        problem: str, relion_project: dict[str, Path], tiny_config: Path) -> None:
    args = ["relion", "--o", JOB, "--in_mics", str(relion_project["mics_star"]), "--config", str(tiny_config)]
    if problem == "micrographs star without names":
        args[4] = str(relion_project["coords"])
        expected = f"error: {relion_project['coords']}: no data_micrographs loop with _rlnMicrographName"
    elif problem == "no labels":
        expected = "error: training needs labels: --in_coords"
    elif problem == "predict without model":
        args += ["--task", "predict"]
        expected = f"error: {JOB}train/model.pt: model not found"
    else:
        args += ["--task", "pick"]
        expected = "error: --task must be train, predict or train,predict"
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == relion.EXIT_CODE_FAILURE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert sorted(p.name for p in Path(JOB).iterdir()) == [relion.EXIT_FAILURE]


def test_mirrored_folder_follows_relion_layout() -> None:
    assert relion.mirrored_folder("MotionCorr/job002/Movies/GridA/mic.mrc") == Path("Movies/GridA")
    assert relion.mirrored_folder("Micrographs/mic.mrc") == Path("Micrographs")
    assert relion.mirrored_folder("mic.mrc") == Path()
    assert relion.mirrored_folder("/data/raw/mic.mrc") == Path()


def test_cryojoint_relion_executable_is_the_relion_command(
        relion_project: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    monkeypatch.setattr(sys, "argv", ["cryojoint-relion", "--o", JOB, "--in_mics",
                                      str(relion_project["mics_star"]), "--task", "nothing"])
    with pytest.raises(SystemExit) as stopped:
        cli.relion_main()
    assert stopped.value.code == relion.EXIT_CODE_FAILURE
    assert capsys.readouterr().err.startswith("error: --task must be")
    assert (Path(JOB) / relion.EXIT_FAILURE).is_file()


def test_a_model_without_denoiser_declares_only_the_coordinates(
        relion_project: dict[str, Path], tiny_config: Path) -> None:
    detect_only = tiny_config.with_name("detect_only.yaml")
    detect_only.write_text(tiny_config.read_text().replace("train:\n", "train:\n  mode: detect-only\n"))
    result = _relion(relion_project, detect_only, "--relion_version", "5")
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "denoised micrographs: none (the model has no denoiser)" in result.output
    nodes = _star(Path(JOB) / relion.OUTPUT_NODES)["output_nodes"]
    assert list(nodes["rlnPipeLineNodeName"]) == [f"{JOB}autopick.star"]
    assert list(nodes["rlnPipeLineNodeTypeLabel"]) == ["MicrographCoordsGroup.star.relion.autopick"]
    assert not (Path(JOB) / relion.DENOISED_STAR).exists() and (Path(JOB) / relion.EXIT_SUCCESS).is_file()


def test_train_only_with_the_diameter_in_angstrom_from_the_optics_block(
        relion_project: dict[str, Path], tiny_config: Path) -> None:
    from cryojoint.checkpoint import read_model_file

    pixel_size = float(_star(relion_project["mics_star"])["optics"]["rlnMicrographPixelSize"].iloc[0])
    args = ["relion", "--o", JOB, "--in_mics", str(relion_project["mics_star"]), "--in_coords",
            str(relion_project["coords"]), "--particle_diameter_angstrom", str(22 * pixel_size), "--steps", "2",
            "--config", str(tiny_config.with_name("no_diameter.yaml")), "--task", "train"]
    tiny_config.with_name("no_diameter.yaml").write_text(
        tiny_config.read_text().replace("data:\n  particle_diameter_px: 22.0\n", ""))
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output + str(result.exception)
    meta = read_model_file(Path(JOB) / "train" / "model.pt")["meta"]
    assert meta["particle_diameter_px"] == pytest.approx(22.0)
    assert (Path(JOB) / relion.EXIT_SUCCESS).is_file()
    assert not (Path(JOB) / relion.OUTPUT_NODES).exists() and not (Path(JOB) / "autopick.star").exists()


def test_a_diameter_in_pixels_and_in_angstrom_together_is_one_error_line(
        relion_project: dict[str, Path], tiny_config: Path) -> None:
    """Both given, the Ångström value silently won."""
    args = ["relion", "--o", JOB, "--in_mics", str(relion_project["mics_star"]), "--in_coords",
            str(relion_project["coords"]), "--particle_diameter_angstrom", "300", "--config", str(tiny_config),
            "--task", "train"]  # tiny_config sets data.particle_diameter_px
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == relion.EXIT_CODE_FAILURE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--particle_diameter_angstrom both given: give one" in lines[0], result.stderr
    assert sorted(p.name for p in Path(JOB).iterdir()) == [relion.EXIT_FAILURE]


def test_predict_with_the_shipped_general_model_needs_no_training(
        relion_project: dict[str, Path], tiny_config: Path) -> None:
    """``--task predict --model general``: zero-shot picks and denoised micrographs, every file RELION reads."""
    import json

    result = _relion(relion_project, tiny_config, "--task", "predict", "--model", "general")
    assert result.exit_code == 0, result.output + str(result.exception)
    job = Path(JOB)
    assert (job / relion.EXIT_SUCCESS).is_file() and not (job / relion.TRAIN_DIR).exists()
    record = json.loads((job / "predict.json").read_text())
    assert record["model"] == "general" or record["model"].endswith(".pt")
    nodes = _star(job / relion.OUTPUT_NODES)["output_nodes"]
    assert list(nodes["rlnPipeLineNodeName"]) == [f"{JOB}autopick.star", f"{JOB}micrographs_denoised.star"]
    index = _star(job / "autopick.star")["coordinate_files"]
    assert len(index) == 3
    total = sum(len(next(iter(_star(Path(f)).values()))) for f in index["rlnMicrographCoordinates"])
    assert total > 0


def test_the_general_model_without_a_diameter_is_one_error_line(
        relion_project: dict[str, Path], tiny_config: Path) -> None:
    no_diameter = tiny_config.with_name("no_diameter.yaml")
    no_diameter.write_text(tiny_config.read_text().replace("data:\n  particle_diameter_px: 22.0\n", ""))
    args = ["relion", "--o", JOB, "--in_mics", str(relion_project["mics_star"]), "--task", "predict",
            "--model", "general", "--config", str(no_diameter)]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == relion.EXIT_CODE_FAILURE, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--particle_diameter_angstrom 250" in errors[0], result.output
    assert "--particle-diameter" not in errors[0]  # predict's flag, which a RELION job does not take
    assert (Path(JOB) / relion.EXIT_FAILURE).is_file() and not (Path(JOB) / relion.EXIT_SUCCESS).exists()
