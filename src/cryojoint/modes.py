"""Training modes in one table: per mode and stage, which losses apply, which parts learn and what runs.

:data:`TRAINING_STAGES` is the table; training reads everything mode-specific from it, through
:func:`stage_plan` (nothing else in the package branches on the mode's name)::

    | mode                 | stage              | L_denoise | L_detect | L_consistency | denoiser | detector |
    | -------------------- | ------------------ | --------- | -------- | ------------- | -------- | -------- |
    | joint                | joint              | alpha     | 1-alpha  | lambda        | trains   | trains   |
    | joint-no-consistency | joint-no-consist.  | alpha     | 1-alpha  | -             | trains   | trains   |
    | sequential           | sequential-denoise | 1         | -        | -             | trains   | idle     |
    |                      | sequential-detect  | -         | 1        | -             | frozen   | trains   |
    | denoise-only         | denoise            | 1         | -        | -             | trains   | absent   |
    | detect-only          | detect             | -         | 1        | -             | absent   | trains   |

(alpha = ``loss.alpha``, lambda = ``loss.consistency_weight``; the paper's
``L = alpha L_denoise + (1 - alpha) L_detect + lambda L_consistency``.) Each stage runs for ``step_budget`` x
``train.steps`` steps under its own learning-rate schedule: every stage gets the whole budget, so
``sequential`` costs twice the steps of a joint run. The rest follows from a row (:func:`stage_plan`):

* **parts built**: a denoiser if some stage of the mode applies L_denoise, a detector if some stage applies
  L_detect (:func:`model_parts`); "absent" above.
* a **frozen** denoiser runs (the detector reads its output) in eval mode, without gradient or graph: its
  parameters and buffers stay bit-identical. An **idle** detector neither runs nor learns: its parameters and
  BatchNorm statistics stay as they are.
* **detector runs** when L_detect or L_consistency applies; the **flipped pass** (the mirrored view for
  L_consistency) when L_consistency applies with a weight > 0 (weight 0: the term is logged as 0, not computed).
* **the detection loss reaches the denoiser** only when the stage trains both parts and
  ``model.detection_trains_denoiser`` is set (the paper's coupling; off by default: the detector reads the
  denoised image detached, so L_detect and L_consistency train the detector alone).
* **patches**: a share ``data.labelled_centre_fraction`` centred on labelled particles when L_detect applies,
  else all uniform (a denoiser trained alone learns from the micrographs as they are).
* **validation metric** (model choice, early stopping): AP when L_detect applies, else minus the validation
  denoising loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryojoint.config import TRAINING_MODES, CryojointConfig


@dataclass(frozen=True)
class TrainingStage:
    """One row of the table: one phase of a training mode."""

    name: str
    denoise: bool  # L_denoise applies
    detect: bool  # L_detect applies
    consistency: bool  # L_consistency applies (needs the detector, and the flipped pass)
    trains_denoiser: bool  # the denoiser's weights learn (False with a denoiser: frozen)
    trains_detector: bool  # the detector's weights learn (False with a detector: idle)
    # Steps this stage may run, in units of train.steps.
    step_budget: float = 1.0

    def __post_init__(self) -> None:
        if not (self.denoise or self.detect or self.consistency):
            raise ValueError(f"stage {self.name!r} applies no loss")
        if self.denoise and not self.trains_denoiser:
            raise ValueError(f"stage {self.name!r}: L_denoise applies but the denoiser does not learn")
        if self.trains_detector != (self.detect or self.consistency):
            raise ValueError(f"stage {self.name!r}: the detector learns exactly when a loss reads it")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three loss terms in one stage (0 = term not computed)."""

    denoise: float
    detect: float
    consistency: float


_LOSSES = ("denoise", "detect", "consistency")
_PARTS = ("denoiser", "detector")


def _row(name: str, losses: str, learns: str) -> TrainingStage:
    """One row written as in the docstring's table: the loss terms that apply, and the parts that learn."""
    applied, learning = losses.split(), learns.split()
    if not set(applied) <= set(_LOSSES) or not set(learning) <= set(_PARTS):
        raise ValueError(f"stage {name!r}: losses are among {_LOSSES}, parts among {_PARTS}")
    return TrainingStage(name, denoise="denoise" in applied, detect="detect" in applied,
                         consistency="consistency" in applied, trains_denoiser="denoiser" in learning,
                         trains_detector="detector" in learning)


#: Training mode -> its stages, in order: the table of the module docstring (modes as in
#: ``cryojoint.config.TRAINING_MODES``). Sequential is the paper's baseline: the denoiser trains alone, then the
#: detector on its frozen output; neither stage uses consistency, part of the joint method it is compared with.
TRAINING_STAGES: dict[str, tuple[TrainingStage, ...]] = {
    #                             stage                   losses that apply             parts that learn
    "joint":                (_row("joint",                "denoise detect consistency", "denoiser detector"),),
    "joint-no-consistency": (_row("joint-no-consistency", "denoise detect",             "denoiser detector"),),
    "sequential":           (_row("sequential-denoise",   "denoise",                    "denoiser"),
                             _row("sequential-detect",    "detect",                     "detector")),
    "denoise-only":         (_row("denoise",              "denoise",                    "denoiser"),),
    "detect-only":          (_row("detect",               "detect",                     "detector"),),
}
# The config validates mode names before any of this runs (it sits below this module); one list of names.
if tuple(TRAINING_STAGES) != TRAINING_MODES:
    raise RuntimeError(f"modes table {tuple(TRAINING_STAGES)} and config.TRAINING_MODES {TRAINING_MODES} differ")


def training_stages(mode: str) -> tuple[TrainingStage, ...]:
    """The stages of a training mode, in order (``sequential`` has two, every other mode one)."""
    if mode not in TRAINING_STAGES:
        raise ValueError(f"unknown training mode {mode!r} (known: {', '.join(TRAINING_STAGES)})")
    return TRAINING_STAGES[mode]


def model_parts(mode: str) -> tuple[bool, bool]:
    """``(use_denoiser, use_detector)`` to build a :class:`~cryojoint.models.joint.JointModel` for ``mode``."""
    stages = training_stages(mode)
    return any(s.denoise for s in stages), any(s.detect for s in stages)


def loss_weights(stage: TrainingStage, alpha: float, consistency_weight: float) -> LossWeights:
    """Weights of the terms in ``stage``: the paper's alpha split when both tasks train, 1 for a lone task."""
    consistency = consistency_weight if stage.consistency else 0.0
    if stage.denoise and stage.detect:
        return LossWeights(alpha, 1.0 - alpha, consistency)
    return LossWeights(float(stage.denoise), float(stage.detect), consistency)


@dataclass(frozen=True)
class StagePlan:
    """What one training step of ``stage`` does under a given config (see the module docstring)."""

    stage: TrainingStage
    runs_detector: bool  # the forward pass runs the detector
    runs_flipped_pass: bool  # the mirrored view for L_consistency is computed
    detection_trains_denoiser: bool  # the detector's input keeps its graph back into the denoiser
    labelled_patches: bool  # a share of patches centred on labelled particles (else all uniform)

    @property
    def validation_metric(self) -> str:
        """The validation figure this stage is judged by: ``"ap"`` or ``"denoise_loss"`` (lower is better)."""
        return "ap" if self.stage.detect else "denoise_loss"


def stage_plan(stage: TrainingStage, config: CryojointConfig) -> StagePlan:
    """Resolve one row of the table against ``config``: what runs in each step (the loss weights:
    :func:`loss_weights`, applied by :func:`cryojoint.losses.stage_loss`)."""
    return StagePlan(
        stage=stage,
        runs_detector=stage.detect or stage.consistency,
        runs_flipped_pass=stage.consistency and config.loss.consistency_weight > 0,
        detection_trains_denoiser=(stage.trains_denoiser and stage.trains_detector
                                   and config.model.detection_trains_denoiser),
        labelled_patches=stage.detect,
    )
