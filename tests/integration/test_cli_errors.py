"""The CLI's error policy: a user mistake is one line ``error: <file>: <problem>`` on stderr, exit code 2,
no traceback and no partial output. ``cryojoint.cli.main`` does the catching, so every case goes through it:
in this process (fast) and, for a representative subset, as a real subprocess (the truest test)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from cryojoint.io.coords import read_coordinates

EXIT_USER_ERROR = 2
SUBPROCESS_TIMEOUT_S = 120

RELION_PICKS = """
data_

loop_ 
_rlnCoordinateX #1 
_rlnCoordinateY #2 
_rlnMicrographName #3 
_rlnAutopickFigureOfMerit #4 
   120.000000    80.500000 MotionCorr/job002/Movies/mic_001.mrc     1.250000 
    40.000000    60.000000 MotionCorr/job002/Movies/mic_001.mrc     0.500000 
    64.000000    32.000000 MotionCorr/job002/Movies/mic_002.mrc     0.750000 
"""  # noqa: W291, W293, E501 (RELION pads lines with spaces; its data lines are long)
TOPAZ_PICKS = "image_name\tx_coord\ty_coord\tscore\nmic_001\t120\t80\t-1.5\nmic_002\t64\t32\t2.25\n"


def run_subprocess(args: Sequence[object], cwd: Path) -> tuple[int, str, str]:
    """Run ``python -m cryojoint.cli ARGS`` as its own process, warnings and all."""
    done = subprocess.run([sys.executable, "-m", "cryojoint.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False)
    return done.returncode, done.stdout, done.stderr


#: tests/conftest.py's ``cli_in_process``: ARGS -> (exit code, stdout, stderr).
CliRunner = Callable[[Sequence[object]], tuple[int, str, str]]

@pytest.fixture(params=["in-process", "subprocess"])
def run_cli(request: pytest.FixtureRequest, cli_in_process: CliRunner, tmp_path: Path):
    if request.param == "subprocess":
        return lambda args: run_subprocess(args, tmp_path)
    return cli_in_process


@pytest.fixture
def run_fast(cli_in_process: CliRunner):
    return cli_in_process


def assert_one_line_error(result: tuple[int, str, str], source: Path | str, *fragments: str) -> str:
    code, _, stderr = result
    assert code == EXIT_USER_ERROR, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {source}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def relion_picks(tmp_path: Path) -> Path:
    path = tmp_path / "picks.star"
    path.write_text(RELION_PICKS)
    return path


# ------------------------------------------------------------------------------------ convert: success


def test_convert_star_to_box_folder_and_back(tmp_path: Path, relion_picks: Path, run_cli) -> None:
    code, out, err = run_cli(["convert", relion_picks, tmp_path / "boxes", "--to", "box", "--box-size", "64"])
    assert code == 0 and err == "" and "wrote 2 file(s)" in out
    assert sorted(p.name for p in (tmp_path / "boxes").iterdir()) == ["mic_001.box", "mic_002.box"]
    code, out, err = run_cli(["convert", tmp_path / "boxes", tmp_path / "back.star"])
    assert code == 0 and err == ""
    original, back = read_coordinates(relion_picks), read_coordinates(tmp_path / "back.star")
    assert list(back["micrograph"]) == list(original["micrograph"])
    np.testing.assert_allclose(back[["x", "y"]], original[["x", "y"]], atol=0.005)


def test_convert_topaz_to_star_keeps_scores(tmp_path: Path, run_fast) -> None:
    source = tmp_path / "predicted.txt"
    source.write_text(TOPAZ_PICKS)
    code, _, err = run_fast(["convert", source, tmp_path / "picks.star"])
    assert code == 0 and err == ""
    table = read_coordinates(tmp_path / "picks.star")
    np.testing.assert_allclose(table[["x", "y", "score"]], [[120, 80, -1.5], [64, 32, 2.25]])


# ------------------------------------------------------------------------------------ convert: mistakes


def test_missing_input_file(tmp_path: Path, run_cli) -> None:
    missing = tmp_path / "nothere.star"
    assert_one_line_error(run_cli(["convert", missing, tmp_path / "out.csv"]), missing, "not found")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("text", ["", "\n\n"], ids=["zero-bytes", "blank-lines"])
@pytest.mark.parametrize("suffix", [".star", ".box", ".csv", ".txt"])
def test_empty_coordinate_file(tmp_path: Path, run_fast, suffix: str, text: str) -> None:
    source = tmp_path / f"empty{suffix}"
    source.write_text(text)
    assert_one_line_error(run_fast(["convert", source, tmp_path / "out.csv"]), source, "no particle coordinates")
    assert files_under(tmp_path) == [source]


@pytest.mark.parametrize("file_name, text, fragment", [
    ("garbage.star", "this is not a STAR file\n", "no data loop"),
    ("letters.star", "data_\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n12 twelve\n", "'twelve' is not a number"),
    ("ragged.star", "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n10 20\n30 40 50 60\n",
     "row 2 of a data loop has 4 values where its columns want 2"),
    ("short.box", "10 20 64\n", "expected at least 4 numbers"),
    ("columns.csv", "name,u,v\nm,1,2\n", "no column for x and y"),
    ("noheader.tsv", "mic_001\t10\t20\n", "missing Topaz header"),
])
def test_malformed_coordinate_file(tmp_path: Path, run_fast, file_name: str, text: str, fragment: str) -> None:
    source = tmp_path / file_name
    source.write_text(text)
    assert_one_line_error(run_fast(["convert", source, tmp_path / "out.csv"]), source, fragment)
    assert files_under(tmp_path) == [source]


def test_unknown_input_suffix(tmp_path: Path, run_cli) -> None:
    source = tmp_path / "picks.xyz"
    source.write_text("1 2 3\n")
    assert_one_line_error(run_cli(["convert", source, tmp_path / "out.star"]), source,
                          "unknown coordinate format '.xyz'")


def test_unknown_output_suffix(tmp_path: Path, relion_picks: Path, run_fast) -> None:
    output = tmp_path / "out.pdb"
    assert_one_line_error(run_fast(["convert", relion_picks, output]), output, "unknown coordinate format '.pdb'")
    assert not output.exists()


@pytest.mark.parametrize("option, fmt", [("--from", "pdb"), ("--to", "pdb")])
def test_unknown_format_option(tmp_path: Path, relion_picks: Path, run_fast, option: str, fmt: str) -> None:
    output = tmp_path / "out.star"
    line = assert_one_line_error(run_fast(["convert", relion_picks, output, option, fmt]),
                                 relion_picks if option == "--from" else output)
    assert "unknown coordinate format 'pdb'" in line and not output.exists()


def test_output_folder_under_a_regular_file(tmp_path: Path, relion_picks: Path, run_cli) -> None:
    """A folder below a regular file can never be created, whoever runs the test (even root)."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    assert_one_line_error(run_cli(["convert", relion_picks, blocker / "sub" / "out.star"]), blocker / "sub",
                          "cannot create output folder")
    assert files_under(tmp_path) == sorted([blocker, relion_picks])


def test_output_folder_without_write_permission(tmp_path: Path, relion_picks: Path, run_fast) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): permissions do not stop writes; "
                        "test_output_folder_under_a_regular_file covers unwritable output instead")
        assert_one_line_error(run_fast(["convert", relion_picks, locked / "out.star"]), locked, "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_existing_output_without_overwrite(tmp_path: Path, relion_picks: Path, run_cli) -> None:
    output = tmp_path / "out.csv"
    output.write_text("precious\n")
    assert_one_line_error(run_cli(["convert", relion_picks, output]), output, "already exists", "--overwrite")
    assert output.read_text() == "precious\n"
    code, _, _ = run_cli(["convert", relion_picks, output, "--overwrite"])
    assert code == 0 and len(read_coordinates(output)) == 3


def test_existing_file_in_output_folder_without_overwrite(tmp_path: Path, relion_picks: Path, run_fast) -> None:
    folder = tmp_path / "boxes"
    folder.mkdir()
    (folder / "mic_002.box").write_text("kept\n")
    assert_one_line_error(run_fast(["convert", relion_picks, folder, "--to", "box", "--box-size", "32"]),
                          folder / "mic_002.box", "already exists")
    assert [p.name for p in folder.iterdir()] == ["mic_002.box"]  # mic_001.box was not written either


def test_box_output_without_box_size(tmp_path: Path, relion_picks: Path, run_cli) -> None:
    single = relion_picks.with_name("one.star")
    single.write_text(RELION_PICKS.replace("mic_002", "mic_001"))
    output = tmp_path / "mic_001.box"
    assert_one_line_error(run_cli(["convert", single, output]), output, "--box-size")
    assert not output.exists()


def test_box_folder_output_without_box_size(tmp_path: Path, relion_picks: Path, run_fast) -> None:
    folder = tmp_path / "boxes"
    assert_one_line_error(run_fast(["convert", relion_picks, folder, "--to", "box"]), folder / "mic_001.box",
                          "--box-size")
    assert not folder.exists()


def test_many_micrographs_into_one_box_file(tmp_path: Path, relion_picks: Path, run_fast) -> None:
    output = tmp_path / "all.box"
    assert_one_line_error(run_fast(["convert", relion_picks, output, "--box-size", "64"]), output,
                          "holds one micrograph")
    assert not output.exists()


def test_folder_output_needs_a_format(tmp_path: Path, relion_picks: Path, run_fast) -> None:
    assert_one_line_error(run_fast(["convert", relion_picks, tmp_path / "outdir"]), tmp_path / "outdir", "--to")
    assert not (tmp_path / "outdir").exists()


# ---------------------------------------------------------------------------- commands that read MRCs


def bad_micrograph(kind: str, folder: Path, raw_mrc) -> tuple[Path, str]:
    """A broken micrograph named ``mic_001.mrc`` and the words its error must contain."""
    path = folder / "mic_001.mrc"
    image = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    if kind == "missing":
        return path, "not found"
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(1).bytes(4096))
        return path, "not a valid MRC file"
    if kind == "truncated":
        whole = raw_mrc(path, image).read_bytes()
        path.write_bytes(whole[: len(whole) - 1000])
        return path, "truncated"
    if kind in ("nan", "inf"):
        image[10, 20] = np.nan if kind == "nan" else np.inf
        raw_mrc(path, image)
        return path, "1 NaN/Inf value(s)"
    if kind == "stack":
        raw_mrc(path, np.stack([image] * 3), image_stack=True)
        return path, "3D stack of 3 frames"
    raise ValueError(kind)


MRC_MISTAKES = ["missing", "random-bytes", "truncated", "nan", "inf", "stack"]


@pytest.mark.parametrize("kind", MRC_MISTAKES)
def test_train_refuses_bad_micrograph(tmp_path: Path, relion_picks: Path, run_fast, raw_mrc, kind: str) -> None:
    micrograph, fragment = bad_micrograph(kind, tmp_path, raw_mrc)
    run_dir = tmp_path / "run"
    result = run_fast(["train", micrograph, "--labels", relion_picks, "--out", run_dir, "--steps", "1"])
    assert_one_line_error(result, micrograph, fragment)
    assert not run_dir.exists() or files_under(run_dir) == []


def test_train_refuses_bad_micrograph_in_a_subprocess(tmp_path: Path, relion_picks: Path, raw_mrc) -> None:
    micrograph, fragment = bad_micrograph("stack", tmp_path, raw_mrc)
    result = run_subprocess(["train", micrograph, "--labels", relion_picks, "--out", tmp_path / "run"], tmp_path)
    assert_one_line_error(result, micrograph, fragment)


def test_train_with_missing_labels(tmp_path: Path, run_fast, raw_mrc) -> None:
    micrograph = raw_mrc(tmp_path / "mic_001.mrc", np.zeros((64, 64), np.float32))
    labels = tmp_path / "labels.star"
    assert_one_line_error(run_fast(["train", micrograph, "--labels", labels, "--out", tmp_path / "run"]), labels,
                          "not found")


def test_predict_with_missing_model(tmp_path: Path, run_fast, raw_mrc) -> None:
    micrograph = raw_mrc(tmp_path / "mic_001.mrc", np.zeros((64, 64), np.float32))
    model = tmp_path / "model.pt"
    assert_one_line_error(run_fast(["predict", model, micrograph, "--out", tmp_path / "pred"]), model, "not found")
    assert not (tmp_path / "pred").exists()


def test_predict_given_a_run_folder_names_the_model_file_in_it(tmp_path: Path, run_fast, raw_mrc) -> None:
    micrograph = raw_mrc(tmp_path / "mic_001.mrc", np.zeros((64, 64), np.float32))
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"")
    assert_one_line_error(run_fast(["predict", run, micrograph, "--out", tmp_path / "pred"]), run,
                          "is a folder, not a model file: give", str(run / "model.pt"))
    assert not (tmp_path / "pred").exists()


def test_evaluate_given_a_mask_file_for_the_mask_folder(tmp_path: Path, relion_picks: Path, run_fast, raw_mrc) -> None:
    mask = raw_mrc(tmp_path / "mic_001.mrc", np.zeros((64, 64), np.float32))
    assert_one_line_error(run_fast(["evaluate", "--picks", relion_picks, "--truth", relion_picks, "--match-radius",
                                    "5", "--masks", mask]), mask, "is a file; expected a folder of mask MRCs")


def test_convert_to_cs_checks_the_picks_lie_on_the_micrographs_given(tmp_path: Path, relion_picks: Path, run_fast,
                                                                     raw_mrc) -> None:
    """cryoSPARC stores fractions of the micrograph: picks at another pixel size would land beyond 1."""
    for name in ("mic_001", "mic_002"):
        raw_mrc(tmp_path / f"{name}.mrc", np.zeros((64, 64), np.float32))
    assert_one_line_error(run_fast(["convert", relion_picks, tmp_path / "out.cs", "--micrographs",
                                    str(tmp_path / "mic_*.mrc")]), relion_picks, "lie outside its 64x64 pixels")
    assert not (tmp_path / "out.cs").exists()
    code, _, err = run_fast(["convert", relion_picks, tmp_path / "out.star", "--scale", "-2"])
    assert code == EXIT_USER_ERROR and err.count("\n") == 1 and err.startswith("error: --scale"), err
    assert not (tmp_path / "out.star").exists()


@pytest.mark.parametrize("kind", ["random-bytes", "truncated", "nan", "stack"])
def test_denoise_of_only_bad_micrographs_leaves_no_output_folder(tmp_path: Path, run_fast, raw_mrc,
                                                                  kind: str) -> None:
    micrograph, fragment = bad_micrograph(kind, tmp_path, raw_mrc)
    out = tmp_path / "denoised-run"
    assert_one_line_error(run_fast(["denoise", micrograph, "--out", out]), micrograph, fragment)
    assert not out.exists()
    # Into a folder the user already has, the run removes only what it made.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "empty-of-mine").mkdir()
    assert_one_line_error(run_fast(["denoise", micrograph, "--out", out]), micrograph, fragment)
    assert sorted(p.name for p in out.iterdir()) == ["empty-of-mine", "notes.txt"]


def test_pick_on_a_denoise_folder_says_it_holds_no_picks(tmp_path: Path, run_fast, raw_mrc) -> None:
    image = np.random.default_rng(0).standard_normal((96, 96)).astype(np.float32)
    micrograph = raw_mrc(tmp_path / "mic_good.mrc", image)
    out = tmp_path / "den"
    code, _, stderr = run_fast(["denoise", micrograph, "--out", out])
    assert code == 0, stderr
    assert not (out / "candidates").exists()  # its denoised image marks a micrograph done, not an empty pick file
    assert_one_line_error(run_fast(["pick", out, "--threshold", "0", "--out", tmp_path / "p"]), out,
                          "holds no picks", "cryojoint denoise")
    denoised = out / "denoised" / "mic_good.mrc"
    written = denoised.stat().st_mtime_ns
    code, stdout, stderr = run_fast(["denoise", micrograph, "--out", out])  # a rerun resumes: nothing left to do
    assert code == 0, stderr
    assert "0 micrograph(s) denoised (1 already done)" in stdout
    assert denoised.stat().st_mtime_ns == written


def test_predict_diameter_with_no_unit_on_sized_micrographs_names_both_units(tmp_path: Path, run_fast,
                                                                             raw_mrc) -> None:
    from cryojoint.io.mrc import write_mrc

    micrograph = write_mrc(tmp_path / "sized.mrc", np.zeros((96, 96), np.float32), pixel_size=5.0)
    result = run_fast(["predict", "general", micrograph, "--particle-diameter", "250", "--out", tmp_path / "o"])
    code, _, stderr = result
    assert code == EXIT_USER_ERROR and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "no unit" in stderr and "250A" in stderr and "250px" in stderr
    assert not (tmp_path / "o").exists()


def test_a_border_wider_than_the_micrograph_is_its_error_not_an_empty_pick(tmp_path: Path, run_fast, raw_mrc) -> None:
    image = np.random.default_rng(0).standard_normal((96, 96)).astype(np.float32)
    micrograph = raw_mrc(tmp_path / "mic_good.mrc", image)
    result = run_fast(["predict", "general", micrograph, "--particle-diameter", "22px", "--border", "1000",
                       "--out", tmp_path / "o"])
    assert_one_line_error(result, micrograph, "--border 1000 px leaves none of its 96x96 pixels to pick in")
    assert not (tmp_path / "o").exists()


def test_ctrl_c_ends_with_one_line_on_what_is_kept(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from cryojoint import cli

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == cli.EXIT_INTERRUPTED == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "--resume" in lines[0]
