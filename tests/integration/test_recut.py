"""``cryojoint pick`` and ``cryojoint threshold`` on a real ``predict`` output: re-cutting reproduces predict's
own picks at its cut-off, counts per micrograph agree with the candidates, and mistakes are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from conftest import TWO_STEP_TRAINING
from cryojoint.config import CryojointConfig
from cryojoint.io.coords import read_coordinates, write_coordinates
from cryojoint.io.mrc import write_mrc
from cryojoint.prediction import predict_files
from cryojoint.runtime import native_bfloat16
from cryojoint.simulation import simulate
from cryojoint.training import train

EXIT_USER_ERROR = 2
TINY = TWO_STEP_TRAINING


@pytest.fixture(scope="module")
def prediction(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A predict output folder from a 2-step model on three small simulated micrographs."""
    root = tmp_path_factory.mktemp("recut")
    data = simulate(n_micrographs=3, size=256, seed=4, preset="ruvb")
    paths = [write_mrc(root / f"{m.name}.mrc", m.data, m.pixel_size) for m in data.micrographs["dose_060"]]
    labels = data.truth.sample(frac=0.5, random_state=0)[["micrograph", "x", "y"]]
    train(paths, labels, root / "run", CryojointConfig.from_dict(TINY), progress=False)
    predict_files(root / "run" / "model.pt", paths, root / "pred", outputs=("picks",), device="cpu", progress=False)
    return root / "pred"


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table[["micrograph", "x", "y", "score"]].sort_values(["micrograph", "x", "y"]).reset_index(drop=True)


def test_pick_at_the_runs_own_cutoff_reproduces_predict_picks(
        prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    cut = json.loads((prediction / "predict.json").read_text())["threshold"]
    code, out, err = cryojoint_main(["pick", prediction, "--threshold", repr(cut), "--out", tmp_path / "same",
                          "--formats", "star,box,cbox"])
    assert code == 0, err
    pd.testing.assert_frame_equal(_sorted(read_coordinates(tmp_path / "same" / "picks.star")),
                                  _sorted(read_coordinates(prediction / "picks.star")))
    assert sorted(p.name for p in (tmp_path / "same" / "picks" / "box").iterdir()) == [
        "mic_0000.box", "mic_0001.box", "mic_0002.box"]
    # crYOLO CBOX (napari-boxmanager): the same picks, the score as confidence, boxes one diameter wide.
    from_cbox = read_coordinates(tmp_path / "same" / "picks" / "cbox")
    pd.testing.assert_frame_equal(_sorted(from_cbox), _sorted(read_coordinates(prediction / "picks.star")),
                                  atol=1e-5)
    diameter = json.loads((prediction / "predict.json").read_text())["particle_diameter_px_input"]
    boxes = starfile.read(tmp_path / "same" / "picks" / "cbox" / "mic_0000.cbox", always_dict=True)["cryolo"]
    assert set(boxes["Width"]) == {round(diameter)}
    record = json.loads((tmp_path / "same" / "pick.json").read_text())
    assert record["threshold"] == cut and record["count_per_micrograph"] is None
    # Re-cut into the same folder in STAR only: the boxes of the earlier cut-off do not stay beside it.
    code, out, err = cryojoint_main(["pick", prediction, "--count", "2", "--out", tmp_path / "same", "--overwrite"])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "same" / "picks").iterdir()) == ["star"]
    assert len(read_coordinates(tmp_path / "same" / "picks" / "star")) == 6


def test_pick_count_keeps_the_best_n_of_each_micrograph(
        prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    code, out, err = cryojoint_main(["pick", prediction, "--count", "4", "--out", tmp_path / "top4"])
    assert code == 0, err
    assert "12 picks (the best 4 per micrograph) in 3 of 3 micrograph(s)" in out
    picks = read_coordinates(tmp_path / "top4" / "picks.star")
    candidates = read_coordinates(prediction / "candidates.star")
    for name, rows in picks.groupby("micrograph"):
        best = np.sort(candidates.loc[candidates["micrograph"] == name, "score"].to_numpy())[::-1][:4]
        np.testing.assert_allclose(np.sort(rows["score"].to_numpy())[::-1], best)


def test_a_cutoff_above_every_score_writes_empty_files_for_every_micrograph(
        prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    code, out, err = cryojoint_main(["pick", prediction, "--threshold", "1e6", "--out", tmp_path / "none"])
    assert code == 0, err
    assert out.startswith("0 picks (cut-off 1e+06) in 0 of 3 micrograph(s)")
    assert sorted(p.name for p in (tmp_path / "none" / "picks" / "star").iterdir()) == [
        "mic_0000_autopick.star", "mic_0001_autopick.star", "mic_0002_autopick.star"]


def test_threshold_counts_agree_with_the_candidates_and_the_histogram_is_written(
        prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    png = tmp_path / "hist.png"
    code, out, err = cryojoint_main(["threshold", prediction, "--cutoffs", "-100,0,1e6", "--png", png])
    assert code == 0, err
    candidates = read_coordinates(prediction / "candidates.star")
    per_micrograph = candidates["micrograph"].value_counts()
    for name in ("mic_0000", "mic_0001", "mic_0002"):
        line = next(line for line in out.splitlines() if name in line)
        numbers = [int(v) for v in line.replace("│", " ").split()[1:]]
        at_zero = int((candidates.loc[candidates["micrograph"] == name, "score"] >= 0).sum())
        assert numbers == [int(per_micrograph.get(name, 0)), at_zero, 0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from cryojoint.recut import read_prediction_folder, threshold_summary

    counts, default_png, folder = threshold_summary(prediction)
    run_cut = json.loads((prediction / "predict.json").read_text())["threshold"]
    assert counts.loc["total", f"{round(run_cut, 3):g}"] == pytest.approx(
        (folder.candidates["score"] >= round(run_cut, 3)).sum())
    assert default_png == prediction / "score_histogram.png" and default_png.is_file()
    assert read_prediction_folder(prediction).micrographs == ["mic_0000", "mic_0001", "mic_0002"]


@pytest.mark.parametrize("case", ["neither", "both", "into predict folder", "not a predict folder", "cs format",
                                  "bad cutoffs"])
def test_mistakes_are_one_line_errors_and_write_nothing(
        case: str, prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    out = tmp_path / "out"
    args, source, fragment = {
        "neither": (["pick", prediction, "--out", out], None, "give either --threshold X or --count N"),
        "both": (["pick", prediction, "--out", out, "--threshold", "0", "--count", "3"], None, "give either"),
        "into predict folder": (["pick", prediction, "--out", prediction, "--count", "3"], prediction,
                                "is the predict folder itself"),
        "not a predict folder": (["pick", tmp_path, "--out", out, "--count", "3"], tmp_path,
                                 "not a cryojoint predict output folder"),
        "cs format": (["pick", prediction, "--out", out, "--count", "3", "--formats", "cs"], None,
                      "cryojoint convert OUT/picks.star picks.cs"),
        "bad cutoffs": (["threshold", prediction, "--cutoffs", "1,two", "--png", out / "h.png"], None,
                        "--cutoffs must be numbers"),
    }[case]
    code, _, err = cryojoint_main(args)
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(lines) == 1, err
    assert lines[0].startswith(f"error: {source}: " if source else "error: ") and fragment in lines[0]
    assert not out.exists()


def test_existing_output_is_kept_without_overwrite(
        prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    out = tmp_path / "out"
    assert cryojoint_main(["pick", prediction, "--count", "2", "--out", out])[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = cryojoint_main(["pick", prediction, "--count", "5", "--out", out])
    assert code == EXIT_USER_ERROR and "already exists (pass --overwrite" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert cryojoint_main(["pick", prediction, "--count", "5", "--out", out, "--overwrite"])[0] == 0
    assert len(read_coordinates(out / "picks.star")) == 15


def test_predict_detector_window_stride_is_recorded_and_checked(prediction: Path, tmp_path: Path,
                                                                cryojoint_main) -> None:
    model = prediction.parent / "run" / "model.pt"
    mics = sorted(str(p) for p in prediction.parent.glob("mic_*.mrc"))[:1]
    code, _, err = cryojoint_main(["predict", model, *mics, "--out", tmp_path / "dense",
                                   "--detector-window-stride", "0.25", "--outputs", "picks"])
    assert code == 0, err
    record = json.loads((tmp_path / "dense" / "predict.json").read_text())
    assert record["detector_window_stride_fraction"] == 0.25
    assert record["window_stride_fraction"] == pytest.approx(2 / 3)
    code, _, err = cryojoint_main(["predict", model, *mics, "--out", tmp_path / "bad",
                                   "--detector-window-stride", "0"])
    assert code == 2 and "--detector-window-stride must be in (0, 1]" in err
    assert not (tmp_path / "bad").exists()


def test_predict_precision_is_recorded_and_checked(prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    model = prediction.parent / "run" / "model.pt"
    mics = sorted(str(p) for p in prediction.parent.glob("mic_*.mrc"))[:1]
    code, _, err = cryojoint_main(["predict", model, *mics, "--out", tmp_path / "auto", "--outputs", "picks",
                                   "--device", "cpu"])
    assert code == 0, err
    record = json.loads((tmp_path / "auto" / "predict.json").read_text())
    assert (record["device"], record["precision"]) == ("cpu", "auto")
    assert record["network_dtype"] == ("bfloat16" if native_bfloat16("cpu") else "float32")
    for precision in ("float32", "bfloat16"):
        code, _, err = cryojoint_main(["predict", model, *mics, "--out", tmp_path / precision, "--outputs", "picks",
                                       "--device", "cpu", "--precision", precision])
        assert code == 0, err
        assert json.loads((tmp_path / precision / "predict.json").read_text())["network_dtype"] == precision
    code, _, err = cryojoint_main(["predict", model, *mics, "--out", tmp_path / "bad", "--precision", "half"])
    assert code == 2 and "unknown precision 'half'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--threshold", "nan"], "--threshold must be a finite number, got nan"),
    (["--downsample", "nan"], "--downsample must be a finite number >= 1, got nan"),
    (["--downsample", "inf"], "--downsample must be a finite number >= 1, got inf"),
    (["--nms-radius=-3"], "--nms-radius must be a finite number >= 0, got -3"),
    (["--border=-10"], "--border must be a finite number >= 0, got -10"),
    (["--outputs", ""], "no outputs asked for"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_predict_option_mistakes_are_one_line_errors_before_any_work(
        args: list[str], fragment: str, prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    model = prediction.parent / "run" / "model.pt"
    mics = sorted(str(p) for p in prediction.parent.glob("mic_*.mrc"))[:1]
    code, _, err = cryojoint_main(["predict", model, *mics, "--out", tmp_path / "p", *args])
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "p").exists()


def test_a_missing_micrograph_stops_predict_before_the_others_run(
        prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    model = prediction.parent / "run" / "model.pt"
    mics = sorted(str(p) for p in prediction.parent.glob("mic_*.mrc"))[:1]
    missing = tmp_path / "nosuch.mrc"
    code, out, err = cryojoint_main(["predict", model, *mics, missing, "--out", tmp_path / "p"])
    assert code == EXIT_USER_ERROR and err.strip() == f"error: {missing}: file not found", err
    assert not (tmp_path / "p").exists() and not out


def test_predicting_in_batches_into_one_folder_asks_for_all_micrographs(
        prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    """picks.star and the cut-off cover the micrographs a run is given: a second batch alone would drop the first
    batch's picks from them while candidates/ (and recut) still hold them."""
    model = prediction.parent / "run" / "model.pt"
    mics = sorted(str(p) for p in prediction.parent.glob("mic_*.mrc"))
    out = tmp_path / "p"
    assert cryojoint_main(["predict", model, *mics[:2], "--out", out, "--outputs", "picks"])[0] == 0
    code, _, err = cryojoint_main(["predict", model, mics[2], "--out", out, "--outputs", "picks"])
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(lines) == 1, err
    assert "holds the picks of 2 micrograph(s) this run was not given (mic_0000, mic_0001)" in lines[0]
    assert not (out / "candidates" / "mic_0002.csv").exists()
    code, stdout, err = cryojoint_main(["predict", model, *mics, "--out", out, "--outputs", "picks"])
    assert code == 0 and "(2 already done)" in stdout, err
    assert set(read_coordinates(out / "candidates.star")["micrograph"]) == {"mic_0000", "mic_0001", "mic_0002"}


def test_evaluate_and_convert_read_a_predict_folder_as_its_own_files(
        prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    """The folder holds picks.star, candidates.star and the per-micrograph files: read as a folder of coordinate
    files it would count every pick several times."""
    from cryojoint.evaluation import evaluate_files

    truth = prediction.parent / "truth.csv"
    picks = read_coordinates(prediction / "picks.star")
    half = pd.concat([picks.iloc[::2], picks.groupby("micrograph").head(1)]).drop_duplicates()
    half[["micrograph", "x", "y"]].to_csv(truth, index=False)  # a truth the picks half match, on every micrograph
    cut = json.loads((prediction / "predict.json").read_text())["threshold"]
    from_folder = evaluate_files(picks=prediction, truth=truth, match_radius=5)["picking"].overall
    # By hand from the per-micrograph CSVs: the digits predict cut on (candidates.star before it had them kept 6
    # decimals, and bfloat16 logits tie there: a cut-off on a tied value kept 13 more of its copies than predict).
    from cryojoint.prediction import read_candidates

    every_peak = pd.concat([read_candidates(p) for p in sorted((prediction / "candidates").glob("*.csv"))])
    by_hand = evaluate_files(picks=_written(every_peak, tmp_path / "every_peak.csv"), truth=truth, match_radius=5,
                             threshold=cut)["picking"].overall
    assert from_folder.n_picks == len(picks) == by_hand.n_picks
    assert from_folder.average_precision == pytest.approx(by_hand.average_precision, abs=2e-3)  # ties of 6 decimals
    code, stdout, err = cryojoint_main(["evaluate", "--picks", prediction, "--truth", truth, "--match-radius", "5"])
    assert code == 0 and "every candidate of the predict folder" in stdout, err
    assert "…" not in stdout  # not a terminal: the table is not cut to 80 columns
    code, _, err = cryojoint_main(["convert", prediction, tmp_path / "all.csv"])
    assert code == 0, err
    assert len(read_coordinates(tmp_path / "all.csv")) == len(picks)
    # Boxes without --box-size: the size predict itself writes (two diameters for .box), from predict.json.
    code, _, err = cryojoint_main(["convert", prediction, tmp_path / "boxes", "--to", "box"])
    assert code == 0, err
    diameter = json.loads((prediction / "predict.json").read_text())["particle_diameter_px_input"]
    first = next(f for f in sorted((tmp_path / "boxes").glob("*.box")) if f.read_text().strip())
    assert float(first.read_text().split()[2]) == round(2 * diameter)
    # Rescaled onto micrographs twice the size: the boxes grow with the picks.
    code, _, err = cryojoint_main(["convert", prediction, tmp_path / "boxes2", "--to", "box", "--scale", "2"])
    assert code == 0, err
    assert float((tmp_path / "boxes2" / first.name).read_text().split()[2]) == round(4 * diameter)


def test_evaluate_scores_a_predict_folder_on_the_micrographs_it_predicted(
        prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    """A truth file usually lists the training micrographs too: a predict folder of the test micrographs alone must
    not count those particles as missed (recall and AP would fall by the share of micrographs not predicted)."""
    from cryojoint.evaluation import evaluate_files

    picks = read_coordinates(prediction / "picks.star")
    truth_predicted = tmp_path / "truth_predicted.csv"
    picks[["micrograph", "x", "y"]].to_csv(truth_predicted, index=False)
    unpredicted = picks[["micrograph", "x", "y"]].assign(micrograph="mic_9999")
    truth_more = tmp_path / "truth_more.csv"
    pd.concat([picks[["micrograph", "x", "y"]], unpredicted]).to_csv(truth_more, index=False)
    on_predicted = evaluate_files(picks=prediction, truth=truth_predicted, match_radius=5)["picking"]
    with_more = evaluate_files(picks=prediction, truth=truth_more, match_radius=5)["picking"]
    assert with_more.overall.n_true == on_predicted.overall.n_true == len(picks)
    assert with_more.overall.recall == pytest.approx(on_predicted.overall.recall) == pytest.approx(1.0)
    assert [r.micrograph for r in with_more.per_micrograph] == ["mic_0000", "mic_0001", "mic_0002"]
    # Plain picks cannot say which micrographs were looked at: every truth micrograph is scored.
    plain = evaluate_files(picks=prediction / "picks.star", truth=truth_more, match_radius=5)["picking"].overall
    assert plain.n_true == 2 * len(picks) and plain.recall == pytest.approx(0.5)


def test_evaluate_counts_the_micrographs_whose_prediction_failed_as_picking_nothing(
        prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    """A micrograph predict failed on has no candidates file: left out of the scoring it would flatter recall."""
    root = prediction.parent
    paths = sorted(root.glob("mic_*.mrc"))
    blank = write_mrc(tmp_path / "mic_blank.mrc", np.zeros((256, 256), np.float32), 5.3)
    summary = predict_files(root / "run" / "model.pt", [*paths, blank], tmp_path / "pred", outputs=("picks",),
                            device="cpu", progress=False)
    assert list(summary.failures) == ["mic_blank"]
    picks = read_coordinates(prediction / "picks.star")[["micrograph", "x", "y"]]
    truth = tmp_path / "truth.csv"
    pd.concat([picks, picks.assign(micrograph="mic_blank")]).to_csv(truth, index=False)
    code, stdout, err = cryojoint_main(["evaluate", "--picks", tmp_path / "pred", "--truth", truth,
                                        "--match-radius", "5"])
    assert code == 0, err
    assert "scored as picking nothing: 1 micrograph(s) whose prediction failed (mic_blank;" in stdout
    from cryojoint.evaluation import evaluate_files

    report = evaluate_files(picks=tmp_path / "pred", truth=truth, match_radius=5)["picking"]
    assert report.failed_prediction_micrographs == ["mic_blank"]
    assert report.overall.n_true == 2 * len(picks) and report.overall.recall == pytest.approx(0.5)


@pytest.mark.parametrize("args, fragment", [
    (["pick", "PRED", "--threshold", "nan", "--out", "OUT"], "--threshold must be a finite number, got nan"),
    (["threshold", "PRED", "--cutoffs", "0,nan", "--png", "OUT/h.png"], "--cutoffs must be a finite number"),
    (["convert", "PRED/picks.star", "OUT", "--to", "box", "--box-size", "nan"],
     "--box-size must be a finite number > 0, got nan"),
    (["convert", "PRED/picks.star", "OUT", "--to", "box", "--box-size", "0"], "--box-size must be a finite number > 0"),
    (["evaluate", "--picks", "PRED/picks.star", "--truth", "PRED/picks.star", "--match-radius", "5",
      "--threshold", "nan"], "--threshold must be a finite number, got nan"),
    (["evaluate", "--denoised", "OUT", "--reference", "OUT", "--lowpass-angstrom", "0"],
     "--lowpass-angstrom must be a finite number > 0, got 0"),
])
def test_numbers_that_are_not_numbers_are_one_line_errors(
        args: list[str], fragment: str, prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    out = tmp_path / "out"
    filled = [a.replace("PRED", str(prediction)).replace("OUT", str(out)) for a in args]
    code, _, err = cryojoint_main(filled)
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(lines) == 1 and fragment in lines[0], err
    assert not out.exists()


def test_a_cutoff_that_keeps_nothing_evaluates_as_no_picks(prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    """cryojoint's own empty output (a legal cut-off above every score) scores recall 0, not an error."""
    assert cryojoint_main(["pick", prediction, "--threshold", "1e9", "--out", tmp_path / "none"])[0] == 0
    code, stdout, err = cryojoint_main(["evaluate", "--picks", tmp_path / "none" / "picks.star", "--truth",
                                        prediction / "picks.star", "--match-radius", "5"])
    assert code == 0, err
    all_row = next(line for line in stdout.splitlines() if line.lstrip("│ ").startswith("all"))
    assert " 0.000 " in all_row  # recall 0


def test_evaluate_says_which_picks_it_left_out(tmp_path: Path, cryojoint_main) -> None:
    picks, truth = tmp_path / "picks.csv", tmp_path / "truth.csv"
    picks.write_text("micrograph,x,y,score\nm1,10,10,1\nm2,5,5,1\n")
    truth.write_text("micrograph,x,y\nm1,10,10\nm1,50,50\n")
    code, stdout, err = cryojoint_main(["evaluate", "--picks", picks, "--truth", truth, "--match-radius", "5"])
    assert code == 0, err
    assert "not scored: the picks of 1 micrograph(s) the truth does not cover (m2)" in stdout


def _written(table: pd.DataFrame, path: Path) -> Path:
    table[["micrograph", "x", "y", "score"]].to_csv(path, index=False, float_format="%.10g")
    return path


def test_a_trained_model_warns_on_micrographs_of_another_pixel_size(prediction: Path, tmp_path: Path) -> None:
    import warnings

    from cryojoint.checkpoint import load_model
    from cryojoint.io.mrc import read_micrograph

    root = prediction.parent
    model_path = root / "run" / "model.pt"
    trained = read_micrograph(root / "mic_0000.mrc")
    assert load_model(model_path).meta["input_pixel_size_angstrom"] == pytest.approx(trained.pixel_size, rel=1e-4)
    finer = write_mrc(tmp_path / "finer.mrc", trained.data, trained.pixel_size / 2)
    with pytest.warns(UserWarning, match=r"finer.mrc: .* trained on micrographs at 5.3 Å/px.*--downsample 2"):
        predict_files(model_path, [finer], tmp_path / "a", outputs=("picks",), device="cpu", progress=False)
    finer_too = write_mrc(tmp_path / "finer_too.mrc", trained.data, trained.pixel_size / 2)
    with pytest.warns(UserWarning, match=r"2 of 3 micrographs \(the first .*finer.mrc\): .* run those apart from "
                                         r"the others and give --downsample 2"):
        predict_files(model_path, [finer, root / "mic_0001.mrc", finer_too], tmp_path / "mixed", outputs=("picks",),
                      device="cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        predict_files(model_path, [root / "mic_0001.mrc"], tmp_path / "b", outputs=("picks",), device="cpu",
                      progress=False)
        predict_files(model_path, [finer], tmp_path / "c", outputs=("picks",), device="cpu", progress=False,
                      downsample=2)


def test_a_downsample_that_bins_the_image_to_nothing_is_that_micrographs_one_clear_error(prediction: Path,
                                                                                        tmp_path: Path) -> None:
    root = prediction.parent
    summary = predict_files(root / "run" / "model.pt", [root / "mic_0000.mrc"], tmp_path / "p", outputs=("picks",),
                            device="cpu", progress=False, downsample=64)
    assert list(summary.failures) == ["mic_0000"]
    assert "is smaller than the network's" in summary.failures["mic_0000"]
    assert "a smaller --downsample or particle diameter bins it less" in summary.failures["mic_0000"]
    assert not (tmp_path / "p").exists()


def test_evaluating_the_folder_at_its_cutoff_counts_the_picks_predict_wrote(prediction: Path, tmp_path: Path) -> None:
    """The demo's table and its run summary count the same picks: the folder is scored with the candidates' full
    precision scores (candidates.star's 6 decimals could lift candidates just under the cut-off onto it)."""
    from cryojoint.evaluation import evaluate_files

    picks = read_coordinates(prediction / "picks.star")
    truth = read_coordinates(prediction / "candidates.star")[["micrograph", "x", "y"]]
    cut = json.loads((prediction / "predict.json").read_text())["threshold"]
    truth_path = write_coordinates(truth, tmp_path / "truth.star")
    for scored in (prediction, prediction / "candidates.star"):  # the STAR itself: its scores at full precision
        report = evaluate_files(picks=scored, truth=truth_path, match_radius=5.0, threshold=cut)
        assert report["picking"].overall.n_picks == len(picks), scored
    # candidates.star is written with the scores predict compared: read as a plain STAR, its cut-off keeps picks.star.
    star_scores = read_coordinates(prediction / "candidates.star")["score"].to_numpy(float)
    assert int((star_scores >= cut).sum()) == len(picks)
    # A folder predicted before that (6 decimals in candidates.star) is still scored at the CSVs' precision.
    old = tmp_path / "old_prediction"
    shutil.copytree(prediction, old)
    blocks = starfile.read(old / "candidates.star", always_dict=True)
    starfile.write(blocks, old / "candidates.star", float_format="%.6f", overwrite=True)
    for scored in (old, old / "candidates.star"):
        report = evaluate_files(picks=scored, truth=truth_path, match_radius=5.0, threshold=cut)
        assert report["picking"].overall.n_picks == len(picks), scored


def test_a_predict_folder_without_candidates_star_is_said_to_be_unfinished(prediction: Path, tmp_path: Path,
                                                                           cryojoint_main) -> None:
    """Read as a folder of coordinate files it gave 'holds two coordinate files with picks of micrograph ...'."""
    unfinished = tmp_path / "unfinished"
    shutil.copytree(prediction, unfinished)
    (unfinished / "candidates.star").unlink()
    truth = write_coordinates(read_coordinates(prediction / "picks.star"), tmp_path / "truth.star")
    for command in (["evaluate", "--picks", unfinished, "--truth", truth], ["threshold", unfinished]):
        code, _, err = cryojoint_main(command)
        assert code == 2 and err.startswith(f"error: {unfinished / 'candidates.star'}: not found: the predict run "
                                            "did not finish"), err
    (unfinished / "picks.star").unlink()
    code, _, err = cryojoint_main(["convert", unfinished, tmp_path / "out.csv"])
    assert code == 2 and err.startswith(f"error: {unfinished / 'picks.star'}: not found: the predict run did not "
                                        "finish"), err


def test_report_files_keep_their_own_suffix_so_a_slip_cannot_overwrite_the_predict_folder(
        prediction: Path, tmp_path: Path, cryojoint_main) -> None:
    """`threshold --png pred/candidates.star` made the folder's candidates a PNG, and every reader of it failed."""
    folder = tmp_path / "pred"
    shutil.copytree(prediction, folder)
    before = (folder / "candidates.star").read_bytes()
    code, _, err = cryojoint_main(["threshold", folder, "--png", folder / "candidates.star"])
    assert code == 2 and err.strip() == (f"error: {folder / 'candidates.star'}: --png writes a .png file: give a name "
                                         "ending in .png")
    truth = write_coordinates(read_coordinates(prediction / "picks.star"), tmp_path / "truth.star")
    code, _, err = cryojoint_main(["evaluate", "--picks", folder, "--truth", truth, "--json", folder / "picks.star"])
    assert code == 2 and "--json writes a .json file" in err
    assert (folder / "candidates.star").read_bytes() == before
    code, _, err = cryojoint_main(["threshold", folder, "--png", tmp_path / "scores.png"])
    assert code == 0 and (tmp_path / "scores.png").is_file(), err
