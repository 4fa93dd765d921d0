"""The shipped general model from the command line: `predict general`, `denoise` (with and without adaptation) and
`train --init general`, on a small simulated dataset written as MRC files with their pixel size."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from cryojoint.checkpoint import SHIPPED_MODELS, load_model
from cryojoint.io.mrc import read_micrograph, write_mrc
from cryojoint.simulation import simulate_to_folder

#: tests/conftest.py's ``cli_in_process``: ARGS -> (exit code, stdout, stderr).
CliRunner = Callable[[Sequence[object]], tuple[int, str, str]]

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("general-cli") / "data"
    simulate_to_folder(folder, n_micrographs=2, size=256, seed=5, preset="ruvb", progress=False)
    return folder


def test_predict_general_needs_the_particle_size(data_dir: Path, tmp_path: Path, cli_in_process: CliRunner) -> None:
    code, _, err = cli_in_process(["predict", "general", data_dir / "dose_020", "--out", tmp_path / "p"])
    assert code == 2 and err.count("\n") == 1 and "--particle-diameter" in err
    assert not (tmp_path / "p" / "picks.star").exists()


def test_predict_general_in_angstrom_bins_to_its_particle_size(data_dir: Path, tmp_path: Path,
                                                                cli_in_process: CliRunner) -> None:
    mic = read_micrograph(next((data_dir / "dose_020").glob("*.mrc")))
    diameter_px = 54.0
    angstrom = diameter_px * mic.pixel_size
    code, out, err = cli_in_process(["predict", "general", data_dir / "dose_020", "--out", tmp_path / "p",
                          "--particle-diameter", f"{angstrom:.3f}A"])
    assert code == 0, err
    record = json.loads((tmp_path / "p" / "predict.json").read_text())
    assert record["general_model"] and record["downsample"] == 1.5
    assert set(record["micrograph_files"]) == {p.stem for p in (data_dir / "dose_020").glob("*.mrc")}
    assert all(Path(path).is_absolute() for path in record["micrograph_files"].values())
    assert "model_file" not in record  # a shipped model is named, not located
    assert record["particle_diameter_px_input"] == pytest.approx(diameter_px, rel=1e-3)
    assert (tmp_path / "p" / "picks.star").exists()
    denoised = read_micrograph(tmp_path / "p" / "denoised" / f"{mic.name}.mrc")
    assert denoised.shape == (170, 170)
    assert denoised.pixel_size == pytest.approx(mic.pixel_size * 1.5, rel=1e-4)
    assert "automatic cut-off" in out
    code, out, err = cli_in_process(["predict", "general", data_dir / "dose_020", "--out", tmp_path / "p",
                                     "--particle-diameter", f"{angstrom:.3f}A", "--threshold", "quantile",
                                     "--formats", "star,box"])  # the network's outputs reused: only the cut-off
    assert code == 0, err
    assert "quantile-rule cut-off" in out


def test_evaluate_a_predict_folder_reads_edge_recall_from_its_inputs(data_dir: Path, tmp_path: Path,
                                                                     cli_in_process: CliRunner) -> None:
    """predict.json names the inputs, whose headers give the sizes edge recall needs; picks alone do not."""
    from cryojoint.evaluation import evaluate

    code, _, err = cli_in_process(["predict", "general", data_dir / "dose_020", "--out", tmp_path / "p",
                                   "--particle-diameter", "54px"])
    assert code == 0, err
    truth = data_dir / "truth.star"
    folder_report = evaluate(picks=tmp_path / "p", truth=truth)["picking"]
    picks_report = evaluate(picks=tmp_path / "p" / "picks.star", truth=truth)["picking"]
    assert np.isfinite(folder_report.overall.edge_recall)
    assert not np.isfinite(picks_report.overall.edge_recall)
    code, out, _ = cli_in_process(["evaluate", "--picks", tmp_path / "p" / "picks.star", "--truth", truth])
    words = " ".join(out.split())  # the table's caption wraps at its width
    assert code == 0 and "edge recall needs the micrographs' sizes" in words and "picks in mask needs --masks" in words
    code, out, _ = cli_in_process(["evaluate", "--picks", tmp_path / "p", "--truth", truth])
    words = " ".join(out.split())
    assert code == 0 and "edge recall needs" not in words and "picks in mask needs --masks" in words


def test_denoise_keeps_the_input_size_and_writes_no_picks(data_dir: Path, tmp_path: Path,
                                                           cli_in_process: CliRunner) -> None:
    code, out, err = cli_in_process(["denoise", data_dir / "dose_020", "--out", tmp_path / "d"])
    assert code == 0, err
    assert "2 micrograph(s) denoised" in out
    for path in (data_dir / "dose_020").glob("*.mrc"):
        assert read_micrograph(tmp_path / "d" / "denoised" / path.name).shape == read_micrograph(path).shape
    assert not (tmp_path / "d" / "picks.star").exists()
    record = json.loads((tmp_path / "d" / "predict.json").read_text())
    assert record["picked"] is False
    assert set(record["micrograph_files"]) == {p.stem for p in (data_dir / "dose_020").glob("*.mrc")}


def test_denoise_at_a_pixel_size_finer_than_the_model_learned_says_how_to_bin(data_dir: Path, tmp_path: Path,
                                                                             cli_in_process: CliRunner) -> None:
    """Raw micrographs at ~1 Å/px, denoised at their own size with no particle size given, take the general model
    far below the ~3 Å/px it learned from: a warning names the remedy (the run still goes on)."""
    source = read_micrograph(next((data_dir / "dose_020").glob("*.mrc")))
    write_mrc(tmp_path / "fine.mrc", source.data, pixel_size=1.0)
    with pytest.warns(UserWarning, match="finer than the finest the general model learned") as caught:
        code, _, err = cli_in_process(["denoise", tmp_path / "fine.mrc", "--out", tmp_path / "d"])
    assert code == 0, err
    warning = next(str(w.message) for w in caught if "finer" in str(w.message))
    assert "fine.mrc" in warning and "3.0x finer" in warning and "--particle-diameter" in warning
    assert "--downsample 3 " in warning
    assert (tmp_path / "d" / "denoised" / "fine.mrc").exists()
    told = [(tmp_path / "fine.mrc", ["--particle-diameter", "60px"]), (tmp_path / "fine.mrc", ["--downsample", "3"]),
            (data_dir / "dose_020", [])]  # told a scale, or at the simulation's 5.3 Å/px: nothing to say
    for index, (source_path, extra) in enumerate(told):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code, _, err = cli_in_process(["denoise", source_path, "--out", tmp_path / f"q{index}", *extra])
        assert code == 0, err
        assert not [w for w in caught if "finer" in str(w.message)], extra


@pytest.mark.parametrize("extra, size, phases", [(["--particle-diameter", "72px"], 256, 4),
                                                  (["--particle-diameter", "72px", "--downsample", "2"], 128, 1)])
def test_denoise_told_the_size_works_at_the_models_scale_and_writes_at_the_inputs(
        data_dir: Path, tmp_path: Path, cli_in_process: CliRunner, extra: list[str], size: int, phases: int) -> None:
    code, out, err = cli_in_process(["denoise", data_dir / "dose_020", "--out", tmp_path / "d", *extra])
    assert code == 0, err
    record = json.loads((tmp_path / "d" / "predict.json").read_text())
    assert record["downsample"] == 2.0 and record["denoising_bin_phases"] == phases
    assert record["denoised_at_input_size"] is (phases > 1)
    for path in (data_dir / "dose_020").glob("*.mrc"):
        mic, denoised = read_micrograph(path), read_micrograph(tmp_path / "d" / "denoised" / path.name)
        assert denoised.shape == (size, size)
        assert denoised.pixel_size == pytest.approx(mic.pixel_size * 256 / size, rel=1e-4)
        assert np.isfinite(denoised.data).all()


def test_a_rerun_into_a_folder_of_other_outputs_refuses_to_mix_them(data_dir: Path, tmp_path: Path,
                                                                   cli_in_process: CliRunner) -> None:
    """A rerun skips the micrographs done before; with settings that shape the files otherwise (binned vs input
    size, denoise vs pick) the folder would mix both runs' files, so it stops unless told --overwrite."""
    out = tmp_path / "d"
    binned = ["denoise", data_dir / "dose_020", "--out", out, "--particle-diameter", "72px", "--downsample", "2"]
    assert cli_in_process(binned)[0] == 0
    code, stdout, err = cli_in_process(binned)  # the same run again: everything skipped, nothing refused
    assert code == 0, err
    written = {p.name: p.stat().st_mtime_ns for p in (out / "denoised").glob("*.mrc")}
    for other, reason in (
            (["denoise", data_dir / "dose_020", "--out", out, "--particle-diameter", "72px"],
             "denoised binned there, denoised at the input's size now"),
            (["predict", "general", data_dir / "dose_020", "--out", out, "--particle-diameter", "72px"],
             "denoised only there, picked now")):
        code, _, err = cli_in_process(other)
        assert code == 2 and err.count("\n") == 1 and reason in err and "--overwrite" in err, err
        assert {p.name: p.stat().st_mtime_ns for p in (out / "denoised").glob("*.mrc")} == written
        assert not (out / "picks.star").exists()
    # Adapting makes new weights: refused before the minutes of adapting, not after them.
    code, _, err = cli_in_process([*binned, "--adapt-steps", "3"])
    assert code == 2 and err.count("\n") == 1 and "--adapt-steps" in err and "--overwrite" in err, err
    assert not (out / "adapted").exists()
    code, _, err = cli_in_process([*binned[:-2], "--overwrite"])
    assert code == 0, err
    assert all(read_micrograph(p).shape == (256, 256) for p in (out / "denoised").glob("*.mrc"))


def test_a_run_stopped_part_way_resumes_with_the_settings_it_began_with(data_dir: Path, tmp_path: Path) -> None:
    """The settings are recorded before the first micrograph: a run stopped after one (an --overwrite run over an
    older folder, say) resumes without --overwrite, and the finished record is what a later run compares with."""
    from cryojoint.errors import StopRequested, UserInputError
    from cryojoint.prediction import predict_files

    mics = sorted((data_dir / "dose_020").glob("*.mrc"))
    out = tmp_path / "d"
    predict_files("general", mics, out, outputs=["denoised"], progress=False)  # an older run at the input's size
    asked = iter([False, False, True])  # before the start, before each micrograph
    with pytest.raises(StopRequested):
        predict_files("general", mics, out, outputs=["denoised"], particle_diameter_px=72.0, downsample=2,
                      overwrite=True, progress=False, should_stop=lambda: next(asked))
    resumed = predict_files("general", mics, out, outputs=["denoised"], particle_diameter_px=72.0, downsample=2,
                            progress=False)
    assert resumed.n_skipped == 1 and resumed.n_done == 1
    with pytest.raises(UserInputError, match="binned 2x there, binned 1x now"):
        predict_files("general", mics, out, outputs=["denoised"], progress=False)
    # Other micrographs into the same folder: nothing would be skipped, but the folder would hold two runs.
    first = tmp_path / "first"
    predict_files("general", mics[:1], first, outputs=["picks"], particle_diameter_px=72.0, progress=False)
    with pytest.raises(UserInputError, match="outputs picks there, outputs denoised,picks now"):
        predict_files("general", mics[1:], first, outputs=["picks", "denoised"], particle_diameter_px=72.0,
                      progress=False)


def test_a_rerun_with_other_detector_windows_or_precision_refuses_to_mix(data_dir: Path, tmp_path: Path) -> None:
    """The windows' overlap and the network's precision move the scores: recorded, and compared on a rerun."""
    from cryojoint.errors import UserInputError
    from cryojoint.prediction import predict_files
    from cryojoint.runtime import autocast_dtype, dtype_name

    mics = sorted((data_dir / "dose_020").glob("*.mrc"))[:1]
    out = tmp_path / "p"
    predict_files("general", mics, out, outputs=["picks"], particle_diameter_px=72.0, progress=False,
                  detector_window_stride_fraction=0.5)
    recorded = json.loads((out / "output_settings.json").read_text())
    assert recorded["detector_window_stride_fraction"] == 0.5
    assert recorded["network_dtype"] == dtype_name(autocast_dtype("cpu", "auto"))
    with pytest.raises(UserInputError, match="detector windows every 0.5 of a window there, detector windows "
                                             "every 0.25 of a window now"):
        predict_files("general", mics, out, outputs=["picks"], particle_diameter_px=72.0, progress=False,
                      detector_window_stride_fraction=0.25)
    if recorded["network_dtype"] != "float32":  # a CPU with bfloat16: the exact float32 pass is another run
        with pytest.raises(UserInputError, match="network in bfloat16 there, network in float32 now"):
            predict_files("general", mics, out, outputs=["picks"], particle_diameter_px=72.0, progress=False,
                          detector_window_stride_fraction=0.5, precision="float32")


@pytest.mark.parametrize("sized", [False, True])
def test_denoise_adapts_the_general_denoiser_without_labels(data_dir: Path, tmp_path: Path,
                                                            cli_in_process: CliRunner, sized: bool) -> None:
    extra = ["--particle-diameter", "72px"] if sized else []
    code, out, err = cli_in_process(["denoise", data_dir / "dose_020", "--out", tmp_path / "d", "--adapt-steps", "3",
                                     *extra])
    assert code == 0, err
    adapted = torch.load(tmp_path / "d" / "adapted" / "model.pt", map_location="cpu", weights_only=True)
    assert adapted["meta"]["mode"] == "denoise-only" and adapted["meta"]["init"] == "general"
    # filtered input is flattened beyond the particle's band only when the band is known
    assert load_model(tmp_path / "d" / "adapted" / "model.pt").config.data.flatten_filtered_spectrum is sized
    record = json.loads((tmp_path / "d" / "predict.json").read_text())
    assert record["downsample"] == (2.0 if sized else 1.0) and record["denoised_at_input_size"]
    for path in (data_dir / "dose_020").glob("*.mrc"):
        assert read_micrograph(tmp_path / "d" / "denoised" / path.name).shape == read_micrograph(path).shape
    assert len(list((tmp_path / "d" / "denoised").glob("*.mrc"))) == 2
    # The same command again (as after Ctrl-C while denoising) goes on with the adapted weights; other steps refuse.
    weights = (tmp_path / "d" / "adapted" / "model.pt").read_bytes()
    code, out, err = cli_in_process(["denoise", data_dir / "dose_020", "--out", tmp_path / "d", "--adapt-steps", "3",
                                     *extra])
    assert code == 0 and "0 micrograph(s) denoised (2 already done)" in out, err
    assert (tmp_path / "d" / "adapted" / "model.pt").read_bytes() == weights
    code, _, err = cli_in_process(["denoise", data_dir / "dose_020", "--out", tmp_path / "d", "--adapt-steps", "4",
                                   *extra])
    assert code == 2 and "--adapt-steps makes new weights" in err
    # Its report shows a denoising run: no picks, cut-off, expected count or diameter it was never told.
    code, _, err = cli_in_process(["report", tmp_path / "d"])
    assert code == 0, err
    page = (tmp_path / "d" / "report.html").read_text()
    assert "Denoising only: no picks" in page and "--denoised" in page
    for absent in ("expected particles per micrograph", "NMS radius", "Score distribution", "picks for mic_",
                   "candidate peaks"):
        assert absent not in page, absent
    assert ("particle diameter" in page) is sized  # the size it binned to, when it was told one


def test_adaptation_is_for_shipped_models(data_dir: Path, tmp_path: Path, cli_in_process: CliRunner) -> None:
    code, _, err = cli_in_process(["denoise", data_dir / "dose_020", "--out", tmp_path / "d", "--adapt-steps", "3",
                        "--model", tmp_path / "model.pt"])
    assert code == 2 and "shipped model" in err


def test_train_init_general_fine_tunes_at_its_scale(data_dir: Path, tmp_path: Path, cli_in_process: CliRunner) -> None:
    code, out, err = cli_in_process(["train", data_dir / "dose_020", "--labels", data_dir / "labels.star", "--out",
                          tmp_path / "run", "--steps", "3", "--init", "general", "--particle-diameter", "54px"])
    assert code == 0, err
    meta = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=True)["meta"]
    assert meta["init"] == "general" and meta["downsample"] == 1.5
    assert meta["init_weights"] == SHIPPED_MODELS["general"]  # the version "general" named when it trained
    assert meta["particle_diameter_px"] == pytest.approx(36.0)


@pytest.mark.parametrize("init", [None, "scratch"])
def test_train_fine_tunes_by_default(data_dir: Path, tmp_path: Path, cli_in_process: CliRunner,
                                     init: str | None) -> None:
    args = ["train", data_dir / "dose_020", "--labels", data_dir / "labels.star", "--out", tmp_path / "run",
            "--steps", "3", "--particle-diameter", "54px"] + (["--init", init] if init else [])
    code, out, err = cli_in_process(args)
    assert code == 0, err
    meta = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=True)["meta"]
    assert meta["init"] == (init or "general")
    assert meta["downsample"] == (1.5 if init is None else 1.0)  # scratch keeps 54 px (< the 63 px limit)
    # printed once (above the progress bar), not again with the summary
    assert (out + err).count("fine-tuning the shipped general model") == (init is None)
    # a pretrained start flattens filtered micrographs' spectrum as its picking does; scratch learns them as they are
    assert load_model(tmp_path / "run" / "model.pt").config.data.flatten_filtered_spectrum is (init is None)


def test_train_without_labels_is_only_for_denoise_only(data_dir: Path, tmp_path: Path) -> None:
    from cryojoint.config import default_config
    from cryojoint.errors import UserInputError
    from cryojoint.io.coords import empty_table
    from cryojoint.training import train

    config = default_config()
    config.data.particle_diameter_px = 34.0
    config.train.steps = 2
    with pytest.raises(UserInputError, match="no labels"):
        train(sorted((data_dir / "dose_020").glob("*.mrc")), empty_table(), tmp_path / "run", config, progress=False)


def test_pretrain_with_a_real_micrograph_lacking_its_pixel_size_fails_in_one_line(tmp_path: Path,
                                                                                 cli_in_process: CliRunner) -> None:
    import numpy as np

    from cryojoint.io.mrc import write_mrc

    bare = write_mrc(tmp_path / "bare.mrc", np.ones((64, 64), np.float32))
    code, _, err = cli_in_process(["pretrain", "--out", tmp_path / "general", "--steps", "1", "--structures", "ruvb",
                                   "--real", bare])
    assert code == 2 and err.count("\n") == 1 and "bare.mrc" in err and "pixel size" in err
    assert not (tmp_path / "general" / "general.pt").exists()


def test_a_diameter_that_bins_the_image_to_nothing_is_one_clear_error(data_dir: Path, tmp_path: Path,
                                                                     cli_in_process: CliRunner) -> None:
    import warnings

    mic = sorted((data_dir / "dose_020").glob("*.mrc"))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's empty-slice warnings before the error were the defect
        code, _, err = cli_in_process(["predict", "general", mic, "--out", tmp_path / "p",
                                       "--particle-diameter", "100000px"])
    lines = err.strip().splitlines()
    # Refused before any micrograph is binned: no diameter wider than a micrograph is a particle's.
    assert code == 2 and len(lines) == 1 and "--particle-diameter 100000px is 100000 px: larger than" in lines[0], err
    assert mic.name in lines[0] and not (tmp_path / "p").exists()
