"""Configuration: keys a section no longer has still load, unknown keys do not."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cryojoint.config import CryojointConfig, default_config
from cryojoint.errors import UserInputError


def test_a_retired_key_written_by_an_older_version_is_dropped_on_load() -> None:
    """``predict.batch_size`` was written into every config.yaml and model.pt before it was removed."""
    saved = default_config().to_dict()
    saved["predict"]["batch_size"] = 1
    assert CryojointConfig.from_dict(saved) == default_config()
    assert "batch_size" not in default_config().to_dict()["predict"]


def test_an_unknown_key_is_still_an_error() -> None:
    with pytest.raises(UserInputError, match="unknown key"):
        CryojointConfig.from_dict({"predict": {"batch_sise": 1}})
    with pytest.raises(UserInputError, match="unknown key"):
        CryojointConfig.from_dict({"train": {"batch_size": 1}})  # retired only where it was


def test_a_number_yaml_reads_as_text_is_taken_as_the_number(tmp_path) -> None:
    """PyYAML (YAML 1.1) reads ``1e-4`` as the string '1e-4'; that raised a TypeError deep in validation."""
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  learning_rate: 1e-4\n  steps: 300\ndata:\n  batch_size: '8'\n")
    config = CryojointConfig.load_yaml(path)
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.data.batch_size == 8 and isinstance(config.data.batch_size, int)


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "learning_rate", "fast", "must be a number"),
    ("train", "steps", 2.5, "must be a whole number"),
    ("train", "steps", True, "must be a whole number"),
    ("train", "tensorboard", "yes please", "must be true or false"),
    ("train", "mode", 3, "must be text"),
    ("model", "detector_channels", 32, "must be a list"),
    ("train", "steps", None, "needs a value"),
])
def test_a_value_of_the_wrong_type_is_a_one_line_error_naming_the_key(section, key, value, message) -> None:
    with pytest.raises(UserInputError, match=f"{section}.{key}' {message}"):
        CryojointConfig.from_dict({section: {key: value}})


def test_a_saved_config_loads_back_unchanged(tmp_path) -> None:
    for preset in ("default", "paper"):
        config = default_config(preset)
        config.save_yaml(tmp_path / "c.yaml")
        assert CryojointConfig.load_yaml(tmp_path / "c.yaml") == config


@pytest.mark.parametrize("section", ["train", "predict"])
def test_an_unknown_precision_is_refused(section: str) -> None:
    with pytest.raises(UserInputError, match=f"{section}.precision must be one of auto, float32"):
        CryojointConfig.from_dict({section: {"precision": "half"}})


def test_a_resume_reads_the_flattening_its_run_began_with(tmp_path: Path) -> None:
    from cryojoint.config import flattening_a_run_began_with

    saved = tmp_path / "config.yaml"
    assert flattening_a_run_began_with(saved) is None  # no saved config: the default resolves as for a new run
    default_config().save_yaml(saved)
    assert flattening_a_run_began_with(saved) is None  # unresolved (train saves it resolved): nothing to go by
    values = default_config().to_dict()
    values["data"]["flatten_filtered_spectrum"] = True
    saved.write_text(yaml.safe_dump(values))
    assert flattening_a_run_began_with(saved) is True
    del values["data"]["flatten_filtered_spectrum"]  # a run begun before the option existed
    saved.write_text(yaml.safe_dump(values))
    assert flattening_a_run_began_with(saved) is False
    saved.write_text("data: [unclosed")
    assert flattening_a_run_began_with(saved) is None


@pytest.mark.parametrize("section, values, message", [
    ("train", {"eval_every": 0}, "train.eval_every must be >= 1"),
    ("train", {"checkpoint_every": 0}, "train.checkpoint_every must be >= 1"),
    ("train", {"adam_betas": [0.9]}, "train.adam_betas must be two numbers"),
    ("model", {"unet_encoder_channels": 0}, "model.unet_encoder_channels must be >= 1"),
    ("model", {"detector_channels": []}, "model.detector_channels must list three"),
    ("model", {"detector_channels": [8, 16]}, "model.detector_channels must list three"),
    ("data", {"patch_size_px": 48}, r"data.patch_size_px must be a multiple of 2\*\*model.unet_depth \(32"),
])
def test_values_that_would_fail_inside_training_are_refused_up_front(section: str, values: dict,
                                                                     message: str) -> None:
    """Each crashed training with a traceback (a division by zero, a patch the U-Net cannot pool, ...): no model
    holds them, so a saved model's config (checked when it loads) is never refused by these."""
    with pytest.raises(UserInputError, match=message):
        CryojointConfig.from_dict({section: values})
