"""Micrographs whose particles are brighter than the ice (inverted contrast): read from the labels or the
micrographs, given to the network negated, and everything written as if the micrographs had been recorded dark."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TWO_STEP_TRAINING
from cryojoint.checkpoint import load_model
from cryojoint.config import CryojointConfig
from cryojoint.contrast import contrast_from_tails, read_labels_contrast, read_particle_contrast, vote_sample
from cryojoint.imaging import normalise
from cryojoint.io.coords import FILE_NAME_COLUMN, read_coordinates
from cryojoint.io.mrc import read_micrograph, write_mrc
from cryojoint.prediction import predict
from cryojoint.simulation import simulate
from cryojoint.training import train

EXIT_USER_ERROR = 2
TINY = TWO_STEP_TRAINING


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Three small simulated micrographs as recorded (dark particles) and inverted (bright), with half the truth
    as labels."""
    root = tmp_path_factory.mktemp("contrast")
    data = simulate(n_micrographs=3, size=256, seed=4, preset="ruvb")
    (root / "dark").mkdir()
    (root / "bright").mkdir()
    dark, bright = [], []
    for m in data.micrographs["dose_060"]:
        dark.append(write_mrc(root / "dark" / f"{m.name}.mrc", m.data, m.pixel_size))
        bright.append(write_mrc(root / "bright" / f"{m.name}.mrc", -m.data, m.pixel_size))
    labels = data.truth.sample(frac=0.5, random_state=0)[["micrograph", "x", "y"]]
    return {"root": root, "dark": dark, "bright": bright, "labels": labels, "truth": data.truth,
            "diameter": data.particle_diameter_px}


def _images(paths: list[Path]) -> list[np.ndarray]:
    return [normalise(read_micrograph(p).data) for p in paths]


def _label_xy(labels: pd.DataFrame, paths: list[Path]) -> list[np.ndarray]:
    return [labels.loc[labels["micrograph"] == p.stem, ["x", "y"]].to_numpy(float) for p in paths]


def test_labelled_picks_and_tails_read_dark_as_recorded_and_bright_inverted(scenes: dict) -> None:
    d = scenes["diameter"]
    for kind in ("dark", "bright"):
        images = _images(scenes[kind])
        at_picks, _ = read_labels_contrast(images, _label_xy(scenes["labels"], scenes[kind]), d)
        assert at_picks is not None and at_picks.contrast == kind
        assert "labelled picks" in at_picks.evidence
        assert contrast_from_tails(images, d).contrast == kind


def test_picks_that_do_not_decide_fall_back_to_the_micrographs() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(128, 128))
    image[40:50, 40:50] -= 30.0  # one dark object stretches the dark tail
    xy = [np.array([[100.0, 100.0]])]  # a single pick: too few to decide
    assert read_labels_contrast([image], xy, 10.0) == (None, None)
    reading, _ = read_particle_contrast([image], xy, 10.0)
    assert reading.contrast == "dark" and "mean of 1 micrograph(s)" in reading.evidence
    assert read_particle_contrast([-image], xy, 10.0)[0].contrast == "bright"
    # Blobs that barely lean either way do not overturn dark (the convention of raw micrographs).
    assert read_particle_contrast([rng.normal(size=(128, 128))], None, 10.0)[0].contrast == "dark"


def test_the_vote_sample_spreads_over_the_micrographs() -> None:
    assert vote_sample(list(range(5)), 8) == [0, 1, 2, 3, 4]
    sample = vote_sample(list(range(100)), 8)
    assert len(sample) == 8 and sample[0] == 0 and sample[-1] == 99 and sample == sorted(set(sample))


def test_training_on_inverted_micrographs_learns_the_same_model_and_keeps_the_contrast(
        scenes: dict, tmp_path: Path) -> None:
    """Negation is exact in floating point (median, MAD, binning, FFT flattening), so the network sees the same
    numbers: the same weights, the same candidates, and the denoised images negated."""
    config = CryojointConfig.from_dict(TINY)
    dark = train(scenes["dark"], scenes["labels"], tmp_path / "dark", config, progress=False)
    bright = train(scenes["bright"], scenes["labels"], tmp_path / "bright", config, progress=False)
    assert any("brighter than the ice" in note for note in bright.notes)
    assert not any("brighter than the ice" in note for note in dark.notes)
    model_dark, model_bright = load_model(dark.model_path), load_model(bright.model_path)
    assert model_dark.meta["particle_contrast"] == "dark" and model_bright.meta["particle_contrast"] == "bright"
    for (key, a), b in zip(model_dark.network.state_dict().items(), model_bright.network.state_dict().values(),
                           strict=True):
        assert torch.equal(a, b), key
    seen_dark = predict(model_dark, scenes["dark"])
    seen_bright = predict(model_bright, scenes["bright"])
    for a, b in zip(seen_dark.micrographs, seen_bright.micrographs, strict=True):
        pd.testing.assert_frame_equal(a.candidates.drop(columns=FILE_NAME_COLUMN),  # the folders differ
                                      b.candidates.drop(columns=FILE_NAME_COLUMN))
        np.testing.assert_allclose(b.denoised, -a.denoised, rtol=0, atol=1e-3 * float(np.abs(a.denoised).max()))
    from cryojoint.report import write_report

    assert "brighter than the ice: the micrographs are inverted" in write_report(tmp_path / "bright").read_text()
    assert "brighter than the ice" not in write_report(tmp_path / "dark").read_text()
    # Told otherwise, the model reads the micrographs as the user says (here: wrongly, so other picks).
    told_dark = predict(model_bright, scenes["bright"], particle_contrast="dark")
    assert not told_dark.micrographs[0].candidates.equals(seen_bright.micrographs[0].candidates)


def test_the_contrast_can_be_given_and_a_wrong_word_is_a_one_line_error(
        scenes: dict, tmp_path: Path, cryojoint_main) -> None:
    config = CryojointConfig.from_dict({**TINY, "data": {**TINY["data"], "particle_contrast": "dark"}})
    given = train(scenes["bright"], scenes["labels"], tmp_path / "given", config, progress=False)
    assert load_model(given.model_path).meta["particle_contrast"] == "dark"  # as told, though it reads bright
    labels = tmp_path / "labels.csv"
    scenes["labels"].to_csv(labels, index=False)
    code, _, err = cryojoint_main(["train", *scenes["bright"], "--labels", labels, "--out", tmp_path / "bad",
                                   "--particle-contrast", "grey"])
    assert code == EXIT_USER_ERROR and len(err.strip().splitlines()) == 1
    assert "--particle-contrast must be one of auto, dark, bright" in err
    assert not (tmp_path / "bad").exists()
    code, _, err = cryojoint_main(["predict", "general", *scenes["bright"], "--particle-diameter", "22px",
                                   "--out", tmp_path / "bad2", "--particle-contrast", "grey"])
    assert code == EXIT_USER_ERROR and "unknown particle contrast 'grey'" in err and len(err.strip().splitlines()) == 1


def _run_recording_warnings(cryojoint_main, args: list) -> tuple[int, str, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = cryojoint_main(args)
    return code, err, [str(w.message) for w in caught]


def test_the_general_model_reads_inverted_micrographs_and_picks_them_as_recorded(
        scenes: dict, tmp_path: Path, cryojoint_main) -> None:
    d = f"{scenes['diameter']:.3f}px"
    code, err, said = _run_recording_warnings(cryojoint_main, [
        "predict", "general", *scenes["dark"], "--particle-diameter", d, "--out", tmp_path / "dark",
        "--outputs", "picks,denoised"])
    assert code == 0, err
    assert not any("brighter than the ice" in w for w in said)
    code, err, said = _run_recording_warnings(cryojoint_main, [
        "predict", "general", *scenes["bright"], "--particle-diameter", d, "--out", tmp_path / "bright",
        "--outputs", "picks,denoised"])
    assert code == 0, err
    assert any(w.startswith("particles read as brighter than the ice (the general model's best peaks score ")
               for w in said), said
    dark, bright = (read_coordinates(tmp_path / run / "candidates.star").drop(columns=FILE_NAME_COLUMN)
                    for run in ("dark", "bright"))  # the same picks; the micrographs' folders differ
    pd.testing.assert_frame_equal(dark, bright)
    settings = json.loads((tmp_path / "bright" / "output_settings.json").read_text())
    assert settings["particle_contrast"] == "bright"
    denoised_dark = read_micrograph(tmp_path / "dark" / "denoised" / "mic_0000.mrc").data
    denoised_bright = read_micrograph(tmp_path / "bright" / "denoised" / "mic_0000.mrc").data
    np.testing.assert_allclose(denoised_bright, -denoised_dark, rtol=0,
                               atol=1e-3 * float(np.abs(denoised_dark).max()))
    # A rerun into the folder keeps the earlier reading; told another, it stops instead of mixing the two.
    code, err, said = _run_recording_warnings(cryojoint_main, [
        "predict", "general", *scenes["bright"], "--particle-diameter", d, "--out", tmp_path / "bright",
        "--outputs", "picks,denoised"])
    assert code == 0 and not any("brighter than the ice" in w for w in said), err
    code, err, _ = _run_recording_warnings(cryojoint_main, [
        "predict", "general", *scenes["bright"], "--particle-diameter", d, "--out", tmp_path / "bright",
        "--outputs", "picks,denoised", "--particle-contrast", "dark"])
    assert code == EXIT_USER_ERROR and "bright particles there, dark particles now" in err, err


@pytest.fixture(scope="module")
def larger_scene() -> dict[str, object]:
    """Three 384² RuvB micrographs at 60 % dose with half their particles labelled (~80 picks)."""
    data = simulate(n_micrographs=3, size=384, seed=4, preset="ruvb")
    return {"micrographs": data.micrographs["dose_060"], "diameter": data.particle_diameter_px,
            "labels": data.truth.sample(frac=0.5, random_state=0)[["micrograph", "x", "y"]]}


@pytest.mark.parametrize("mirror", ["flipped top to bottom", "flipped left to right", "with x and y swapped", None])
def test_labels_that_sit_on_particles_only_mirrored_are_named(larger_scene: dict, mirror: str | None) -> None:
    """A coordinate convention lost between two tools (an origin at the bottom, a transposed image): the labels lie
    inside the micrographs, so no bounds check stops them, but they sit on no particle."""
    from cryojoint.config import default_config
    from cryojoint.contrast import MIRRORS, read_labels_contrast
    from cryojoint.data import prepare_data

    micrographs, labels = larger_scene["micrographs"], larger_scene["labels"]
    size = micrographs[0].shape[0]
    moved = labels.copy()
    if mirror == "flipped top to bottom":
        moved["y"] = size - 1 - labels["y"]
    elif mirror == "flipped left to right":
        moved["x"] = size - 1 - labels["x"]
    elif mirror == "with x and y swapped":
        moved["x"], moved["y"] = labels["y"], labels["x"]
    images = [normalise(m.data) for m in micrographs]
    coords = [moved.loc[moved["micrograph"] == m.name, ["x", "y"]].to_numpy(float) for m in micrographs]
    reading, named = read_labels_contrast(images, coords, larger_scene["diameter"])
    assert reading is not None and reading.contrast == "dark"  # read where the particles are
    assert (named is None) if mirror is None else named.startswith(mirror) and named in MIRRORS
    config = default_config()
    config.data.particle_diameter_px = float(larger_scene["diameter"])
    notes = prepare_data(micrographs, moved, config.data, config.loss).notes
    said = [n for n in notes if "do not sit on particles as given" in n]
    assert said == [] if mirror is None else said[0].startswith(
        f"the labels do not sit on particles as given, but do {mirror}")


def test_an_output_folder_from_before_the_contrast_was_recorded_reads_as_recorded(
        scenes: dict, tmp_path: Path, cryojoint_main) -> None:
    """Its micrographs were predicted as recorded (dark): a rerun goes on so, and one told bright stops."""
    d = f"{scenes['diameter']:.3f}px"
    args = ["predict", "general", *scenes["bright"], "--particle-diameter", d, "--out", tmp_path / "old",
            "--outputs", "picks"]
    code, err, _ = _run_recording_warnings(cryojoint_main, args)
    assert code == 0, err
    record = tmp_path / "old" / "output_settings.json"
    settings = json.loads(record.read_text())
    del settings["particle_contrast"]
    record.write_text(json.dumps(settings))
    code, err, said = _run_recording_warnings(cryojoint_main, args)
    assert code == 0 and not any("brighter than the ice" in w for w in said), err
    assert json.loads(record.read_text())["particle_contrast"] == "dark"
    record.write_text(json.dumps(settings))  # the key-less record again
    code, err, _ = _run_recording_warnings(cryojoint_main, [*args, "--particle-contrast", "bright"])
    assert code == EXIT_USER_ERROR and "dark particles there, bright particles now" in err, err


def test_a_handful_of_picks_names_no_mirroring(larger_scene: dict) -> None:
    """A standard error from a few picks is itself noise: no convention is named from fewer than the minimum."""
    from cryojoint.contrast import MIRROR_NAMED_MIN_PICKS, MIRRORS, read_labels_contrast

    micrographs, labels = larger_scene["micrographs"], larger_scene["labels"]
    size = micrographs[0].shape[0]
    first = micrographs[0]
    few = labels[labels["micrograph"] == first.name].head(MIRROR_NAMED_MIN_PICKS - 1)
    flipped = np.column_stack([few["x"], size - 1 - few["y"]])
    image = normalise(first.data)
    _, named = read_labels_contrast([image], [flipped], larger_scene["diameter"])
    assert named is None
    many = labels[labels["micrograph"] == first.name]
    assert len(many) >= MIRROR_NAMED_MIN_PICKS
    _, named = read_labels_contrast([image], [np.column_stack([many["x"], size - 1 - many["y"]])],
                                    larger_scene["diameter"])
    assert named in MIRRORS and named.startswith("flipped top to bottom")
