"""``cryojoint train``: options the user did not give leave the YAML config's values alone.

The merging is :func:`cryojoint.cli._train_config`; the last tests go through the real command line (training
itself replaced by a stub that records the config it is handed).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cryojoint import cli
from cryojoint.config import CryojointConfig, ModelConfig, default_config, model_config_for_preset
from cryojoint.errors import UserInputError
from cryojoint.io.mrc import write_mrc


def _yaml(folder: Path, text: str, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _model_fields(model: ModelConfig) -> dict[str, object]:
    return dataclasses.asdict(model)


# ------------------------------------------------------------------------------------------------ mode


def test_yaml_mode_stands_when_no_mode_option(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "train:\n  mode: detect-only\n")
    assert cli._train_config(config).train.mode == "detect-only"


def test_mode_option_overrides_yaml_mode(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "train:\n  mode: detect-only\n")
    assert cli._train_config(config, mode="joint").train.mode == "joint"


def test_no_yaml_no_options_gives_the_defaults() -> None:
    assert cli._train_config().to_dict() == default_config().to_dict()


def test_unknown_mode_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="--mode must be one of"):
        cli._train_config(None, mode="both")


# ------------------------------------------------------------------------------------- other options


def test_yaml_values_stand_for_every_option_not_given(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "train:\n  steps: 7\n  seed: 3\n  device: cpu\n"
                             "data:\n  particle_diameter_px: 30\n  expected_particles: 50\n  downsample: 2\n")
    cfg = cli._train_config(config)
    assert (cfg.train.steps, cfg.train.seed, cfg.train.device) == (7, 3, "cpu")
    assert (cfg.data.particle_diameter_px, cfg.data.expected_particles, cfg.data.downsample) == (30, 50, 2)


def test_options_given_override_the_yaml(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "train:\n  steps: 7\n  seed: 3\n  device: cpu\n"
                             "data:\n  particle_diameter_px: 30\n  expected_particles: 50\n  downsample: 2\n")
    cfg = cli._train_config(config, steps=11, seed=5, device="auto", particle_diameter=22.0,
                            expected_particles=80.0, downsample=1)
    assert (cfg.train.steps, cfg.train.seed, cfg.train.device) == (11, 5, "auto")
    assert (cfg.data.particle_diameter_px, cfg.data.expected_particles, cfg.data.downsample) == (22.0, 80.0, 1)


def test_label_completeness_option_overrides_only_when_given(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "data:\n  label_completeness: 0.8\n")
    assert cli._train_config(config).data.label_completeness == 0.8
    assert cli._train_config(config, label_completeness=0.5).data.label_completeness == 0.5
    with pytest.raises(UserInputError, match="label_completeness"):
        cli._train_config(None, label_completeness=1.5)


def test_an_option_value_that_cannot_work_is_not_blamed_on_the_yaml(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "train:\n  steps: 7\n")
    with pytest.raises(UserInputError) as raised:
        cli._train_config(config, steps=0)
    assert raised.value.source is None and "train.steps" in raised.value.problem


# ---------------------------------------------------------------------------------------------- preset


def test_preset_without_yaml_is_the_preset() -> None:
    cfg = cli._train_config(None, preset="paper")
    assert cfg.model == model_config_for_preset("paper")


def test_yaml_model_keys_apply_on_top_of_the_preset_option(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "model:\n  unet_encoder_channels: 16\n")
    model = cli._train_config(config, preset="paper").model
    assert model.unet_encoder_channels == 16
    expected = dataclasses.replace(model_config_for_preset("paper"), unet_encoder_channels=16)
    assert _model_fields(model) == _model_fields(expected)  # every other key from the paper preset


def test_yaml_preset_stands_when_no_preset_option(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "model:\n  preset: paper\n  unet_depth: 4\n")
    model = cli._train_config(config).model
    assert _model_fields(model) == _model_fields(dataclasses.replace(model_config_for_preset("paper"),
                                                                     unet_depth=4))


def test_preset_option_beats_the_yaml_preset_but_not_its_own_changes(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "model:\n  preset: paper\n  unet_depth: 4\n")
    model = cli._train_config(config, preset="default").model
    assert _model_fields(model) == _model_fields(dataclasses.replace(model_config_for_preset("default"),
                                                                     unet_depth=4))


def test_a_saved_run_config_with_another_preset_gives_the_preset_asked_for(tmp_path: Path) -> None:
    """RUN/config.yaml lists every key; the ones that only repeat its preset give way to --preset."""
    saved = default_config("default")
    saved.model = dataclasses.replace(saved.model, noise_model="estimator")  # one real change
    saved.train.mode = "detect-only"
    saved.save_yaml(tmp_path / "config.yaml")
    cfg = cli._train_config(tmp_path / "config.yaml", preset="paper")
    expected = dataclasses.replace(model_config_for_preset("paper"), noise_model="estimator")
    assert _model_fields(cfg.model) == _model_fields(expected)
    assert cfg.train.mode == "detect-only"


def test_unknown_preset_option_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="unknown preset 'huge'"):
        cli._train_config(_yaml(tmp_path, "train:\n  steps: 3\n"), preset="huge")


# --------------------------------------------------------------------------------- through the CLI


@pytest.fixture
def train_stub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Run ``cryojoint train ...`` in this process; return the config training would have run with."""
    import cryojoint.training

    class Handed(Exception):
        pass

    seen: list[CryojointConfig] = []

    def fake_train(micrographs, labels, out, cfg, **kwargs):
        seen.append(cfg)
        raise Handed

    monkeypatch.setattr(cryojoint.training, "train", fake_train)

    def run(*options: str) -> CryojointConfig:
        args = ["cryojoint", "train", str(tmp_path / "m.mrc"), "--labels", str(tmp_path / "l.star"),
                "--out", str(tmp_path / "run"), *options]
        monkeypatch.setattr(sys, "argv", args)
        with pytest.raises(Handed):
            cli.main()
        return seen[-1]

    return run


def test_cli_keeps_yaml_mode_and_model_keys(tmp_path: Path, train_stub) -> None:
    config = _yaml(tmp_path, "model:\n  unet_encoder_channels: 16\ntrain:\n  mode: detect-only\n  steps: 9\n")
    cfg = train_stub("--config", str(config))
    assert (cfg.train.mode, cfg.train.steps, cfg.model.unet_encoder_channels) == ("detect-only", 9, 16)
    cfg = train_stub("--config", str(config), "--preset", "paper", "--mode", "joint")
    assert (cfg.train.mode, cfg.train.steps) == ("joint", 9)
    assert cfg.model.preset == "paper" and cfg.model.unet_encoder_channels == 16
    assert cfg.model.unet_decoder_channels == model_config_for_preset("paper").unet_decoder_channels


@pytest.mark.parametrize(("given", "expected_px"), [("265A", 53.0), ("265 Å", 53.0), ("48px", 48.0)])
def test_train_particle_diameter_in_angstrom_or_pixels(tmp_path: Path, train_stub, given: str,
                                                       expected_px: float) -> None:
    """As predict and denoise read it: Ångström through the MRC header's pixel size (5 Å/px here), else pixels."""
    write_mrc(tmp_path / "m.mrc", np.zeros((64, 64), np.float32), pixel_size=5.0)
    cfg = train_stub("--particle-diameter", given)
    assert cfg.data.particle_diameter_px == pytest.approx(expected_px)


def _train_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, diameter: str) -> str:
    """``cryojoint train ... --particle-diameter DIAMETER`` must stop with a non-zero code: its stderr."""
    monkeypatch.setattr(sys, "argv", ["cryojoint", "train", str(tmp_path / "m.mrc"), "--labels",
                                      str(tmp_path / "l.star"), "--out", str(tmp_path / "run"),
                                      "--particle-diameter", diameter])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code != 0
    assert not (tmp_path / "run").exists()
    return capsys.readouterr().err


def test_train_particle_diameter_that_is_no_size_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys) -> None:
    error = _train_error(tmp_path, monkeypatch, capsys, "abc")
    assert "'abc' is not a size" in error and len(error.strip().splitlines()) == 1


def test_train_particle_diameter_in_angstrom_needs_a_pixel_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys) -> None:
    write_mrc(tmp_path / "m.mrc", np.zeros((64, 64), np.float32), pixel_size=None)
    error = _train_error(tmp_path, monkeypatch, capsys, "265A")
    assert "m.mrc" in error and "no pixel size" in error and "Traceback" not in error


def test_train_particle_diameter_without_unit_on_sized_micrographs_asks_for_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    write_mrc(tmp_path / "m.mrc", np.zeros((64, 64), np.float32), pixel_size=5.0)
    error = _train_error(tmp_path, monkeypatch, capsys, "250")
    assert "no unit" in error and "250A" in error and "250px" in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_is_one_line_and_its_own_exit_code(monkeypatch: pytest.MonkeyPatch, capsys,
                                                                     code: int) -> None:
    def refuse() -> None:
        raise OSError(code, os.strerror(code), "out/denoised/m.mrc")

    monkeypatch.setattr(cli, "app", refuse)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == cli.EXIT_ENVIRONMENT_ERROR
    error = capsys.readouterr().err
    assert error.strip() == f"error: out/denoised/m.mrc: {os.strerror(code)}"


def test_other_os_errors_are_bugs_and_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise OSError(errno.EBADF, "bad file descriptor")

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(OSError, match="bad file descriptor"):
        cli.main()


def test_python_dash_m_runs_the_same_command_line() -> None:
    result = subprocess.run([sys.executable, "-m", "cryojoint", "--help"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and "train" in result.stdout and "predict" in result.stdout


def test_cli_help_still_names_the_defaults(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["cryojoint", "train", "--help"])
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        cli.main()
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("default: joint", "else default", "default: 600", "default: 0", "default: auto",
                     "else automatic", "at most 63 px"):
        assert fragment in text, fragment


def test_saved_config_round_trips_through_the_merge(tmp_path: Path) -> None:
    cfg = cli._train_config(None, preset="paper", mode="sequential", steps=5)
    cfg.save_yaml(tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == cli._train_config(
        tmp_path / "config.yaml").to_dict()
