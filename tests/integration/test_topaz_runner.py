"""The Topaz benchmark runner: pure parts always, the real Topaz (its own venv) in slow tests."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # ``benchmarks`` is a top-level folder, not part of the installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.peers import topaz  # noqa: E402

from cryojoint.errors import UserInputError  # noqa: E402
from cryojoint.io.mrc import read_micrograph, write_mrc  # noqa: E402

# A real ``topaz train`` stdout/stderr excerpt (0.3.20), as the runner sees it line by line.
TRAIN_LOG = [
    (1.0, "# pi = 0.028"),
    (2.0, "epoch\titer\tsplit\tloss\tge_penalty\tprecision\tadjusted_precision\ttpr\tfpr\tauprc"),
    (3.0, "1\t1\ttrain\t0.70\t441.3\t0.057\t0.065\t0.49\t0.44\t-"),
    (3.5, "1\t2\ttrain\t0.68\t418.5\t0.102\t0.117\t0.50\t0.43\t-"),
    (4.0, "1\t3\ttrain\t0.62\t416.3\t0.092\t0.106\t0.54\t0.42\t-"),
    (9.0, "1\t4\ttest\t0.58\t-\t0.009\t0.010\t0.56\t0.44\t0.507"),
    (10.0, "2\t4\ttrain\t0.07\t381.7\t0.079\t0.091\t0.92\t0.38\t-"),
    (10.5, "2\t5\ttrain\t0.10\t362.4\t0.112\t0.128\t0.89\t0.37\t-"),
    (11.0, "# Done!"),
]


# ------------------------------------------------------------------------------------------- class prior


def test_disc_pixel_counts_match_topaz_defect() -> None:
    assert topaz.pixels_within_radius(0) == 1
    assert topaz.pixels_within_radius(1) == 5
    assert topaz.pixels_within_radius(3) == 29
    # Topaz 0.3.20 counts the same disc once per slice of a (2r+1)-deep 3D grid: 7x at r=3.
    assert topaz.topaz_pixels_per_particle(3) == 7 * 29


def test_class_prior_equals_positive_fraction_of_unlabelled_pixels() -> None:
    """Paint discs on real grids and count: the prior must be the unlabelled pixels' positive fraction."""
    rng = np.random.default_rng(3)
    radius, size, per_micrograph, labelled_per_micrograph = 3, 96, 12, 5
    yy, xx = np.mgrid[:size, :size]
    positives = unlabelled = 0
    for _ in range(2):
        centres = rng.permutation([(x, y) for x in range(8, size - 8, 10) for y in range(8, size - 8, 10)])
        particle_mask = np.zeros((size, size), bool)
        labelled_mask = np.zeros((size, size), bool)
        for k, (x, y) in enumerate(centres[:per_micrograph]):
            disc = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
            particle_mask |= disc
            if k < labelled_per_micrograph:
                labelled_mask |= disc
        positives += int(np.count_nonzero(particle_mask & ~labelled_mask))
        unlabelled += int(np.count_nonzero(~labelled_mask))
    prior = topaz.class_prior(radius, per_micrograph, 2 * labelled_per_micrograph, [size * size] * 2)
    assert prior.pi_unlabelled == pytest.approx(positives / unlabelled, rel=1e-12)
    assert prior.pi_total == pytest.approx(29 * 24 / (2 * size * size))
    # What Topaz subtracts from --pi, and what it is left with for its GE-binomial loss.
    assert prior.p_observed_topaz == pytest.approx(203 * 10 / (2 * size * size))
    assert prior.pi_passed - prior.p_observed_topaz == pytest.approx(prior.pi_unlabelled)
    # The naive --pi = pi_total would fall below Topaz's inflated observed fraction: the silent PN switch.
    assert prior.pi_total < prior.p_observed_topaz < prior.pi_passed


def test_class_prior_refuses_fully_labelled_data() -> None:
    with pytest.raises(ValueError, match="unlabelled"):
        topaz.class_prior(3, 10, 20, [1000, 1000])


def test_choose_downsample_fits_diameter_in_documented_limit() -> None:
    assert topaz.choose_downsample(6) == 1
    assert topaz.choose_downsample(35) == 1  # diameter 70 = resnet8's limit
    assert topaz.choose_downsample(36) == 2
    assert topaz.choose_downsample(100) == 3
    assert topaz.choose_downsample(16, model="conv31") == 2
    with pytest.raises(ValueError, match="pass downsample"):
        topaz.choose_downsample(10, model="resnet16")


def test_scaled_radius_is_a_positive_integer() -> None:
    assert topaz.scaled_radius(12, 2) == 6
    assert topaz.scaled_radius(7, 2) == 4
    assert topaz.scaled_radius(1, 8) == 1


# ----------------------------------------------------------------------------------------- coordinates


def test_labels_round_trip_through_topaz_coordinate_file(tmp_path: Path) -> None:
    labels = pd.DataFrame({"micrograph": ["a.b", "a.b", "c"], "x": [10.4, 20.6, 3.0], "y": [5.5, 7.49, 99.0]})
    path = topaz.write_topaz_coordinates(labels, tmp_path / "labels.txt")
    lines = path.read_text().splitlines()
    assert lines[0] == "image_name\tx_coord\ty_coord"
    raw = pd.read_csv(path, sep="\t", dtype={"image_name": str})
    assert raw["image_name"].tolist() == ["a.b", "a.b", "c"]
    assert raw["x_coord"].tolist() == [10, 21, 3]
    assert raw["y_coord"].tolist() == [6, 7, 99]


def test_labels_without_coordinates_are_a_user_error() -> None:
    with pytest.raises(UserInputError, match="lacks column"):
        topaz.labels_to_topaz_table(pd.DataFrame({"micrograph": ["a"], "x": [1.0]}))


def test_picks_table_is_renamed_and_ranked(tmp_path: Path) -> None:
    path = tmp_path / "picks.txt"
    path.write_text("image_name\tx_coord\ty_coord\tscore\nm2\t5\t6\t-3.5\nm1\t1\t2\t-7.0\nm1\t3\t4\t1.25\n")
    picks = topaz.read_topaz_picks(path)
    assert list(picks.columns) == ["micrograph", "x", "y", "score"]
    assert picks["micrograph"].tolist() == ["m1", "m1", "m2"]
    assert picks["score"].tolist() == [1.25, -7.0, -3.5]
    assert picks.loc[0, ["x", "y"]].tolist() == [3.0, 4.0]


# ------------------------------------------------------------------------------------ logs and commands


def test_training_curve_parsed_with_times_and_minibatch_rate() -> None:
    curve = topaz.parse_training_curve(TRAIN_LOG)
    assert curve["split"].tolist() == ["train"] * 3 + ["test"] + ["train"] * 2
    test_row = curve[curve["split"] == "test"].iloc[0]
    assert test_row["auprc"] == pytest.approx(0.507)
    assert np.isnan(test_row["ge_penalty"])
    assert curve["seconds"].tolist() == [3.0, 3.5, 4.0, 9.0, 10.0, 10.5]
    # The 5 s test pass and the epoch boundary are not minibatches.
    assert topaz.seconds_per_minibatch(curve) == pytest.approx(0.5)


def test_event_seconds_start_at_the_named_line() -> None:
    lines = [(0.0, "# start"), (4.0, "# Beginning extraction"), (6.0, "# Scoring a"),
             (6.5, "# Extracted 10 particles from a"), (9.5, "# Extracted 12 particles from b")]
    events = topaz._event_seconds(lines, r"Extracted \d+ particles from (\S+)", r"Beginning extraction")
    assert events == [("a", pytest.approx(2.5)), ("b", pytest.approx(3.0))]


def test_train_command_gives_pi_never_n_and_states_pretraining(tmp_path: Path) -> None:
    argv = topaz.train_command(
        tmp_path / "topaz-cpu", train_images=tmp_path / "imgs", train_targets=tmp_path / "t.txt",
        save_prefix=tmp_path / "model", pi=0.0123, train_radius_px=3, model="resnet8", pretrained=False,
        epochs=10, minibatches_per_epoch=200, test_images=tmp_path / "v", test_targets=tmp_path / "vt.txt",
    )
    assert argv[1] == "train"
    assert argv[argv.index("-d") + 1] == "-1"
    assert float(argv[argv.index("--pi") + 1]) == 0.0123
    assert "-n" not in argv and "--num-particles" not in argv
    assert "--no-pretrained" in argv and "--pretrained" not in argv
    assert argv[argv.index("--epoch-size") + 1] == "200"
    assert argv[argv.index("--test-targets") + 1] == str(tmp_path / "vt.txt")
    with pytest.raises(ValueError, match="together"):
        topaz.train_command(
            tmp_path / "topaz-cpu", train_images=tmp_path, train_targets=tmp_path / "t.txt",
            save_prefix=tmp_path / "m", pi=0.1, train_radius_px=3, model="resnet8", pretrained=True,
            epochs=1, minibatches_per_epoch=1, test_images=tmp_path,
        )


def test_extract_command_scales_back_and_keeps_full_ranking(tmp_path: Path) -> None:
    images = [tmp_path / "a.mrc", tmp_path / "b.mrc"]
    argv = topaz.extract_command(
        tmp_path / "topaz-cpu", model=tmp_path / "m.sav", images=images, output=tmp_path / "o.txt",
        radius_px=6, downsample=2, threshold=topaz.FULL_RANKING_THRESHOLD, patch_size=256,
    )
    assert argv[argv.index("-x") + 1] == "2"
    assert argv[argv.index("-r") + 1] == "6"
    assert float(argv[argv.index("-t") + 1]) < topaz.TOPAZ_DEFAULT_THRESHOLD
    assert argv[argv.index("-p") + 1] == "256"
    assert argv[-2:] == [str(p) for p in images]
    unpatched = topaz.extract_command(
        tmp_path / "topaz-cpu", model="none", images=images, output=tmp_path / "o.txt",
        radius_px=6, downsample=1, threshold=-6.0,
    )
    assert "-p" not in unpatched


def test_denoise_command_picks_model_by_arch(tmp_path: Path) -> None:
    argv = topaz.denoise_command(tmp_path / "topaz-cpu", [tmp_path / "a.mrc"], tmp_path / "out", "unet-small")
    assert argv[argv.index("--arch") + 1] == "unet-small"
    assert "-m" not in argv and "--normalize" not in argv


def test_staging_names_inputs_dot_mrc_and_rejects_clashes(tmp_path: Path) -> None:
    first = write_mrc(tmp_path / "in" / "mic_1.mrcs", np.zeros((4, 4), np.float32))
    second = write_mrc(tmp_path / "other" / "mic_1.mrc", np.zeros((4, 4), np.float32))
    staged = topaz.stage_as_mrc([first], tmp_path / "staged")
    assert staged[0].name == "mic_1.mrc" and staged[0].resolve() == first.resolve()
    with pytest.raises(UserInputError, match="share the micrograph name"):
        topaz.stage_as_mrc([first, second], tmp_path / "staged2")


def test_run_logged_times_lines_split_on_carriage_returns(tmp_path: Path) -> None:
    script = "import sys, time; print('# a'); time.sleep(0.3); sys.stderr.write('# 1 of 2\\r# 2 of 2\\n')"
    run = topaz.run_logged([sys.executable, "-c", script], tmp_path / "log.txt")
    texts = [text for _, text in run.lines]
    assert texts == ["# a", "# 1 of 2", "# 2 of 2"]
    assert run.lines[-1][0] - run.lines[0][0] >= 0.25
    assert run.peak_rss_mb > 1.0
    assert (tmp_path / "log.txt").read_text().startswith("# a")


def test_run_logged_failure_quotes_output(tmp_path: Path) -> None:
    script = "import sys; print('ERROR: no training particles'); sys.exit(3)"
    with pytest.raises(topaz.TopazError, match="no training particles"):
        topaz.run_logged([sys.executable, "-c", script], tmp_path / "log.txt")


class _Interrupted(Exception):
    pass


def _running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" not in status.read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir() or not hasattr(signal, "setitimer"), reason="needs /proc, setitimer")
def test_interrupted_run_logged_leaves_no_process_behind(tmp_path: Path) -> None:
    """An interrupted driver must stop the whole command (GNU time's child included), not orphan it."""
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time; child = subprocess.Popen(['sleep', '60']); "
              f"open({str(pid_file)!r}, 'w').write(str(child.pid)); print('# started', flush=True); time.sleep(60)")

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        with pytest.raises(_Interrupted):
            topaz.run_logged([sys.executable, "-c", script], tmp_path / "log.txt")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # Not a speed figure: without the kill the interruption waits for the 60 s command to end by itself.
    assert time.monotonic() - started < 30, "the interruption waited for the command instead of stopping it"
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(grandchild)


def test_synthetic_micrographs_are_deterministic_and_partially_labelled(tmp_path: Path) -> None:
    kwargs = dict(count=2, size=64, particle_radius_px=3, particles_per_micrograph=4, labelled_fraction=0.5, seed=1)
    paths_a, labels_a, truth_a = topaz.make_disc_micrographs(tmp_path / "a", **kwargs)
    paths_b, labels_b, truth_b = topaz.make_disc_micrographs(tmp_path / "b", **kwargs)
    assert np.array_equal(read_micrograph(paths_a[0]).data, read_micrograph(paths_b[0]).data)
    pd.testing.assert_frame_equal(truth_a, truth_b)
    assert 0 < len(labels_a) < len(truth_a)
    assert labels_a.merge(truth_a, how="left", indicator=True)["_merge"].eq("both").all()


# --------------------------------------------------------------------------------------- the real Topaz


def _gaussian_peaks(size: int, peaks: list[tuple[float, float]], sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    image = np.zeros((size, size), np.float32)
    for x, y in peaks:
        image += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return image


@pytest.mark.slow
@pytest.mark.parametrize("downsample", [1, 2])
def test_topaz_extract_returns_x_column_y_row_in_original_pixels(tmp_path: Path, downsample: int,
                                                                  topaz_launcher: Path) -> None:
    """Score maps with known peaks through preprocess + ``extract -m none``: axes and ``-x`` scaling."""
    peaks = [(40.0, 100.0), (150.0, 30.0), (200.0, 180.0)]  # (x=column, y=row), deliberately asymmetric
    rng = np.random.default_rng(0)
    image = 5.0 * _gaussian_peaks(256, peaks, sigma=4.0) + rng.normal(0, 0.05, (256, 256)).astype(np.float32)
    path = write_mrc(tmp_path / "map.mrc", image)
    result = topaz.topaz_extract(
        "none", [path], tmp_path / "out", particle_radius_px=12, downsample=downsample, threshold=2.0,
        launcher=topaz_launcher,
    )
    found = result.picks[["x", "y"]].to_numpy()
    assert len(found) == len(peaks)
    for x, y in peaks:
        assert np.min(np.hypot(found[:, 0] - x, found[:, 1] - y)) <= downsample
    assert result.picks["micrograph"].eq("map").all()
    assert result.peak_rss_mb > 0 and result.seconds > 0


@pytest.mark.slow
def test_topaz_train_extract_denoise_end_to_end(tmp_path: Path, topaz_launcher: Path) -> None:
    mrcs, labels, truth = topaz.make_disc_micrographs(
        tmp_path / "data", count=2, size=128, particle_radius_px=5, particles_per_micrograph=6,
        labelled_fraction=0.5, seed=4,
    )
    trained = topaz.topaz_train(
        mrcs, labels, tmp_path / "train", particle_radius_px=5, expected_particles_per_micrograph=6,
        pretrained=False, epochs=1, minibatches_per_epoch=3, seed=0, launcher=topaz_launcher,
    )
    assert trained.model_path.exists() and trained.downsample == 1 and trained.train_radius_px == 3
    assert (trained.curve["split"] == "train").sum() == 3
    assert trained.seconds_per_minibatch > 0 and trained.peak_rss_mb > 0
    assert any("--no-pretrained" in argv for argv in trained.commands)
    assert "setting method to PN" not in trained.log_path.read_text()

    extracted = topaz.topaz_extract(
        trained.model_path, mrcs, tmp_path / "extract", particle_radius_px=5, downsample=trained.downsample,
        launcher=topaz_launcher,
    )
    assert set(extracted.picks["micrograph"]) == {p.stem for p in mrcs}
    assert set(extracted.seconds_per_micrograph) == {p.stem for p in mrcs}
    assert extracted.picks["x"].between(0, 127).all() and extracted.picks["y"].between(0, 127).all()

    denoised = topaz.topaz_denoise(mrcs, tmp_path / "denoise", launcher=topaz_launcher)
    for source in mrcs:
        out = read_micrograph(denoised.paths[source.stem])
        original = read_micrograph(source)
        assert out.shape == original.shape and out.data.dtype == np.float32
        assert out.pixel_size == pytest.approx(original.pixel_size)
        assert out.data.std() < original.data.std()  # denoised, in the input's intensity scale
        assert abs(out.data.mean() - original.data.mean()) < 0.1 * original.data.std()
