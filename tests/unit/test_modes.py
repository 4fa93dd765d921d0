"""The mode table (cryojoint.modes): every mode has its rows, rows are coherent, and a row resolves to what runs.

What a real training step of each row does to the network's parameters: tests/integration/test_training.py.
"""

from __future__ import annotations

from dataclasses import astuple

import pytest

from cryojoint.config import TRAINING_MODES, CryojointConfig
from cryojoint.modes import (
    TRAINING_STAGES,
    TrainingStage,
    _row,
    loss_weights,
    model_parts,
    stage_plan,
    training_stages,
)


def test_every_config_mode_has_stages_and_the_right_parts() -> None:
    assert set(TRAINING_STAGES) == set(TRAINING_MODES)
    assert model_parts("joint") == (True, True)
    assert model_parts("joint-no-consistency") == (True, True)
    assert model_parts("sequential") == (True, True)
    assert model_parts("denoise-only") == (True, False)
    assert model_parts("detect-only") == (False, True)
    for mode in TRAINING_MODES:
        assert all(stage.step_budget == 1.0 for stage in training_stages(mode))  # every stage: the whole budget
    assert [s.name for s in training_stages("sequential")] == ["sequential-denoise", "sequential-detect"]
    with pytest.raises(ValueError, match="unknown training mode"):
        training_stages("jiont")


def test_the_table_says_which_parts_learn_in_each_stage() -> None:
    learns = {(mode, i): (s.trains_denoiser, s.trains_detector)
              for mode in TRAINING_MODES for i, s in enumerate(training_stages(mode))}
    assert learns == {("joint", 0): (True, True), ("joint-no-consistency", 0): (True, True),
                      ("sequential", 0): (True, False), ("sequential", 1): (False, True),
                      ("denoise-only", 0): (True, False), ("detect-only", 0): (False, True)}


@pytest.mark.parametrize(("losses", "learns", "message"), [
    ((False, False, False), (True, False), "no loss"),
    ((True, False, False), (False, False), "denoiser does not learn"),
    ((True, False, False), (True, True), "detector learns exactly"),
    ((False, True, False), (False, False), "detector learns exactly"),
])
def test_incoherent_rows_are_refused(losses: tuple[bool, bool, bool], learns: tuple[bool, bool], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingStage("x", *losses, *learns)
    with pytest.raises(ValueError, match="losses are among"):
        _row("x", "denoise detection", "denoiser")  # a misspelt term


def test_loss_weights_split_alpha_only_when_both_tasks_train() -> None:
    joint, = training_stages("joint")
    assert astuple(loss_weights(joint, 0.75, 0.1)) == (0.75, 0.25, 0.1)  # the paper's split
    no_consistency, = training_stages("joint-no-consistency")
    assert loss_weights(no_consistency, 0.75, 0.1).consistency == 0.0
    for mode in ("sequential", "denoise-only", "detect-only"):
        for stage in training_stages(mode):
            assert astuple(loss_weights(stage, 0.75, 0.1)) == (float(stage.denoise), float(stage.detect), 0.0)


@pytest.mark.parametrize(("coupled", "consistency_weight"), [(False, 0.1), (True, 0.1), (False, 0.0)])
def test_a_row_resolves_to_what_each_step_runs(coupled: bool, consistency_weight: float) -> None:
    config = CryojointConfig.from_dict({"model": {"detection_trains_denoiser": coupled},
                                        "loss": {"consistency_weight": consistency_weight}})
    plans = {(mode, i): stage_plan(s, config) for mode in TRAINING_MODES for i, s in enumerate(training_stages(mode))}
    runs = {key: (p.runs_detector, p.runs_flipped_pass, p.labelled_patches, p.validation_metric)
            for key, p in plans.items()}
    flipped = consistency_weight > 0
    assert runs == {("joint", 0): (True, flipped, True, "ap"),
                    ("joint-no-consistency", 0): (True, False, True, "ap"),
                    ("sequential", 0): (False, False, False, "denoise_loss"),
                    ("sequential", 1): (True, False, True, "ap"),
                    ("denoise-only", 0): (False, False, False, "denoise_loss"),
                    ("detect-only", 0): (True, False, True, "ap")}
    coupling = {key for key, p in plans.items() if p.detection_trains_denoiser}
    # The coupling only where one stage trains both parts; never through sequential's frozen denoiser.
    assert coupling == ({("joint", 0), ("joint-no-consistency", 0)} if coupled else set())
