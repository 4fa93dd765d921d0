"""Configuration: keys a section no longer has still load, unknown keys do not."""

from __future__ import annotations

import pytest

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
