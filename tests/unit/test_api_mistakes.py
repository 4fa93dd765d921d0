"""Mistakes a notebook or CLI user makes with the library's own entry points: one clear error, before any work."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cryojoint.errors import UserInputError


def test_demo_checks_its_options_before_simulating(tmp_path: Path) -> None:
    from cryojoint.demo import run_demo

    with pytest.raises(UserInputError, match="--dose must be one of dose_100"):
        run_demo(tmp_path / "d", dose="10", progress=False)
    with pytest.raises(UserInputError, match="train.steps must be >= 1"):
        run_demo(tmp_path / "d", steps=0, progress=False)  # was silently the default 600
    with pytest.raises(UserInputError, match="train.seed must be >= 0"):
        run_demo(tmp_path / "d", seed=-1, progress=False)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("kwargs, fragment", [({"seed": -1}, "seed must be a whole number >= 0"),
                                              ({"seed": None}, "seed must be a whole number >= 0"),
                                              ({"size": 10_000_000}, "size must be at most 16384 px")])
def test_simulate_refuses_a_seed_or_size_it_cannot_use(kwargs: dict, fragment: str) -> None:
    from cryojoint.simulation import simulate

    with pytest.raises(UserInputError, match=fragment):
        simulate(n_micrographs=1, **kwargs)


def test_train_checks_a_config_built_in_python_before_writing(tmp_path: Path) -> None:
    """A config made in Python is not checked by a YAML loader: 0 steps used to train one and write a model.pt that
    load_model then refused."""
    from cryojoint.config import default_config
    from cryojoint.io.mrc import Micrograph
    from cryojoint.training import train

    config = default_config()
    config.train.steps = 0
    image = Micrograph(np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32), name="m")
    import pandas as pd

    with pytest.raises(UserInputError, match="train.steps must be >= 1"):
        train([image], pd.DataFrame({"micrograph": ["m"], "x": [30.0], "y": [30.0]}), tmp_path / "run", config,
              progress=False)
    assert not (tmp_path / "run").exists()


def test_predict_takes_the_words_the_cli_takes() -> None:
    """device="auto" and threshold="auto" are the CLI's defaults; the notebook API refused both."""
    import cryojoint

    image = np.random.default_rng(1).normal(size=(128, 128)).astype(np.float32)
    result = cryojoint.predict("general", [image], threshold="auto", device="auto", particle_diameter_px=36.0)
    assert result.threshold_was_automatic
    with pytest.raises(UserInputError, match="unknown device 'gpu'"):
        cryojoint.predict("general", [image], device="gpu", particle_diameter_px=36.0)


def test_the_report_reads_a_fractional_bin(tmp_path: Path) -> None:
    """The general model bins fractionally (52 px -> 36 px: 1.43x): read as an integer the report said the particle
    measured 36.4 input px and showed no binning."""
    from cryojoint.report.loading import RunContents, _downsample, _particle_diameter_input_px

    contents = RunContents.__new__(RunContents)
    contents.predict_record = None
    contents.model_meta = {"downsample": 52 / 36.4, "particle_diameter_px": 36.4}
    assert _downsample(contents) == pytest.approx(52 / 36.4)
    assert _particle_diameter_input_px(contents) == pytest.approx(52.0)


def test_a_notebook_scores_what_predict_returned_and_sees_the_api_in_dir() -> None:
    import cryojoint
    from cryojoint.io.mrc import Micrograph

    assert {"simulate", "train", "load_model", "predict", "evaluate"} <= set(dir(cryojoint))
    assert "import_module" not in dir(cryojoint)
    rng = np.random.default_rng(2)
    images = [Micrograph(rng.normal(size=(128, 128)).astype(np.float32), name=f"m{i}") for i in range(2)]
    result = cryojoint.predict("general", images, particle_diameter_px=36.0)
    truth = result.picks[["micrograph", "x", "y"]].iloc[::2]
    report = cryojoint.evaluate(picks=result, truth=truth, match_radius=5)["picking"]
    assert report.threshold == result.threshold and report.overall.n_picks == len(result.picks)
    with pytest.raises(UserInputError, match="several micrographs share the name 'm0'"):
        cryojoint.predict("general", [images[0], images[0]], particle_diameter_px=36.0)


@pytest.mark.parametrize("labels, fragment", [
    (lambda: __import__("pandas").DataFrame({"micrograph": ["m"], "X": [1.0], "Y": [2.0]}), "lacks column(s) x, y"),
    (lambda: __import__("pandas").DataFrame({"micrograph": ["m"], "x": [float("nan")], "y": [2.0]}),
     "column x holds values that are not finite"),
    (lambda: __import__("pandas").DataFrame({"micrograph": ["m"], "x": ["a"], "y": [2.0]}),
     "column x holds values that are not finite"),
    (lambda: np.zeros((3, 2)), "expected a pandas DataFrame or a coordinate file, got ndarray"),
])
def test_train_names_what_is_wrong_with_a_label_table(tmp_path: Path, labels, fragment: str) -> None:
    from cryojoint.training import train

    image = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    with pytest.raises(UserInputError, match=re.escape(fragment)):
        train([image], labels(), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_train_takes_a_folder_or_glob_as_one_string_a_dict_config_and_arrays(tmp_path: Path) -> None:
    """A folder given as one string was read letter by letter; a dict config raised AttributeError."""
    import pandas as pd

    from cryojoint.io.mrc import write_mrc
    from cryojoint.training import _as_config, _as_micrograph_inputs

    for i in range(2):
        write_mrc(tmp_path / f"mic_{i}.mrc", np.random.default_rng(i).normal(size=(64, 64)).astype(np.float32), 5.0)
    assert [Path(p).name for p in _as_micrograph_inputs(str(tmp_path))] == ["mic_0.mrc", "mic_1.mrc"]
    assert len(_as_micrograph_inputs(str(tmp_path / "mic_*.mrc"))) == 2
    assert [m.name for m in _as_micrograph_inputs([np.zeros((40, 40)), np.ones((40, 40))])] == ["image_0000",
                                                                                                 "image_0001"]
    assert _as_config({"train": {"steps": 7}}).train.steps == 7
    with pytest.raises(UserInputError, match="expected a CryojointConfig"):
        _as_config(42)
    with pytest.raises(UserInputError, match="micrograph 0.*is a int"):
        _as_micrograph_inputs([3])
    assert isinstance(pd.DataFrame, type)
