"""Benchmark profiles: how big a run is, which cryojoint rows it trains and with which training seeds.

A :class:`Profile` names the structures, micrograph counts and size, doses, cryojoint rows
(:class:`CryojointMethod`), training budget, Topaz's budget floor and training seeds of one run;
:data:`PROFILES` holds the named ones (``python benchmarks/run.py --profile NAME``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryojoint.simulation import NO_DECOYS

#: Training seed of every trained row's reference run (its cell is the one without a ``-seed<N>`` suffix).
TRAIN_SEED = 0
DOSE_KEYS = ("010", "020", "060")
#: The single column of a profile of real micrographs (their dose is what it is).
REAL_DOSE = "real"


@dataclass(frozen=True)
class CryojointMethod:
    """One cryojoint row: a training mode with a model preset."""

    mode: str
    model_preset: str = "default"
    tier: int = 3
    #: Config changes on top of the preset, as ("section.field", value) pairs, and their short name.
    overrides: tuple[tuple[str, Any], ...] = ()
    variant: str = ""

    @property
    def method_id(self) -> str:
        suffix = f"-{self.variant}" if self.variant else ""
        return f"cryojoint-{self.mode}-{self.model_preset}{suffix}"

    @property
    def label(self) -> str:
        variant = f", {self.variant}" if self.variant else ""
        # each stage runs the full step budget (issue 14's fair sequential), so it trains twice the steps
        cost = "; 2 stages × the steps" if self.mode == "sequential" else ""
        return f"cryojoint {self.mode} ({self.model_preset}{variant}{cost})"


#: The joint model with the paper's coupling (the detection loss trains the denoiser through the denoised image).
COUPLED = CryojointMethod("joint", "default", 2, (("model.detection_trains_denoiser", True),), "coupled")


#: The joint model with its network run in bfloat16 (autocast) in training and prediction; losses and weights
#: stay float32. About 2x faster on a CPU with native bfloat16 (AVX512-BF16/AMX); the row measures what it costs.
BFLOAT16 = CryojointMethod("joint", "default", 3, (("train.precision", "bfloat16"), ("predict.precision", "bfloat16")),
                           "bf16")


#: The joint model without the ice flattening that is the default since session 11 (data.background_sigma_diameters):
#: the network reads the normalised micrograph with its gradients, as before (and as in the paper).
UNFLATTENED = CryojointMethod("joint", "default", 3, (("data.background_sigma_diameters", None),), "unflattened")


#: The joint model at the micrographs' own pixel size, without the automatic binning of particles wider than the
#: detector's receptive field (data.downsample, session 12).
FULL_SIZE = CryojointMethod("joint", "default", 3, (("data.downsample", 1),), "full-size")


#: Training starts from the shipped general model (train.init unset, issue 16, default since session 15): the
#: default rows are fine-tuned, micrographs binned to its 36 px particle. SCRATCH is the joint model from random
#: weights (the default before); DEFAULT_120 the default stopped at 120 steps (the issue asks for the from-scratch
#: 600-step AP within 120).
SCRATCH = CryojointMethod("joint", "default", 2, (("train.init", "scratch"),), "scratch")
DEFAULT_120 = CryojointMethod("joint", "default", 3, (("train.steps", 120), ("train.eval_every", 20)), "120")


#: Seconds per joint training step at the standard profile's automatic 96² patch, on this 2-core box with
#: nothing else running (40-step runs, 2026-11-27; the validation pass excluded). Used only to give the paper
#: preset the default preset's wall-clock in the equal-time row.
SECONDS_PER_JOINT_STEP = {"default": 0.48, "paper": 2.55}


def paper_equal_time(default_steps: int, validations: int = 5) -> CryojointMethod:
    """The joint model with the paper preset, trained for the default preset's wall-clock (fewer steps)."""
    steps = round(default_steps * SECONDS_PER_JOINT_STEP["default"] / SECONDS_PER_JOINT_STEP["paper"])
    return CryojointMethod("joint", "paper", 4, (("train.steps", steps), ("train.eval_every", steps // validations)),
                           "equal-time")


ALL_MODES = ("joint", "joint-no-consistency", "sequential", "denoise-only", "detect-only")


def _modes(presets: Sequence[str], modes: Sequence[str] = ALL_MODES) -> tuple[CryojointMethod, ...]:
    """Methods in run order: joint (default) early (tier 1, beside Topaz), detect-only next, then the rest."""
    tiers = {"joint": 1, "detect-only": 2}
    methods = []
    for preset in presets:
        for mode in modes:
            tier = tiers.get(mode, 3) if preset == "default" else 4
            methods.append(CryojointMethod(mode, preset, tier))
    return tuple(methods)


@dataclass(frozen=True)
class Profile:
    """Size of one benchmark run. Times are for the 2-core CPU box this was written on."""

    name: str
    structures: tuple[str, ...]
    n_train: int
    n_test: int
    size_px: int
    doses: tuple[str, ...]
    methods: tuple[CryojointMethod, ...]
    steps: int
    eval_every: int
    topaz_min_minibatches: int
    topaz_minibatches_per_epoch: int
    #: Simulation overrides (small fields need denser particles so that the partial labels suffice).
    simulation_changes: Mapping[str, Any] = field(default_factory=dict)
    topaz_pretrained: bool = False
    description: str = ""
    #: Training seeds of every trained row (cryojoint modes, Topaz's picker); seed ``TRAIN_SEED`` is the row's
    #: reference run (computed first; Topaz's budget and count read the joint model's seed-0 cell).
    seeds: tuple[int, ...] = (TRAIN_SEED,)
    #: ``(scale, offset)`` applied to every stored image (all doses, reference, clean) as float32: data whose
    #: units are not the simulator's counts, as a pipeline that normalises or rescales would hand it over.
    intensity_map: tuple[float, float] | None = None
    #: Where the micrographs come from: ``"simulated"`` (our simulator, every truth known), ``"aspire"`` (another
    #: simulator, :mod:`benchmarks.aspire_sim`, every truth known) or ``"real-bgal"`` (real micrographs with
    #: reference picks, :mod:`benchmarks.real_bgal`: picking only, no clean image).
    dataset: str = "simulated"
    #: Denoising is scored on images binned by this factor (DoseData.denoising_bin): the scale of the coarsest row.
    denoising_bin: int = 1
    #: Rows of the shipped general model with no training (zero-shot picking given the diameter, denoising).
    general_rows: bool = False

    @property
    def has_denoising_truth(self) -> bool:
        """Clean and full-dose images exist, so denoising can be scored."""
        return self.dataset in ("simulated", "aspire")


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        "tiny", ("ribosome",), 2, 1, 256, ("020",), _modes(["default"], ["joint"]), 30, 15, 20, 10,
        {"particles_per_micrograph": (700, 800), "label_region_px": None},
        description="test-suite size: 2+1 micrographs at 256², 30 steps, joint only",
    ),
    "quick": Profile(
        "quick", ("ribosome",), 6, 2, 512, ("020",), _modes(["default"], ["joint", "detect-only"]), 300, 50,
        100, 50, {"particles_per_micrograph": (300, 400), "label_region_px": 1024},
        description="CI size: 6+2 micrographs at 512², denser particles and a larger label region so the "
                    "labels suffice, one dose, 300 steps",
    ),
    "standard": Profile(
        "standard", ("ribosome",), 8, 4, 1024, DOSE_KEYS,
        (*_modes(["default"]), COUPLED, BFLOAT16, UNFLATTENED, paper_equal_time(600),
         CryojointMethod("joint", "paper", 4), SCRATCH, DEFAULT_120),
        600,
        100,
        300, 100,
        description="8+4 micrographs at 1024², ribosome among decoys (simulator version 2), three doses, five modes "
                    "+ joint with the paper's coupling + "
                    "joint with the "
                    "paper preset at equal steps and at equal wall-clock, the default at 120 steps, from scratch "
                    "(random weights), the general model untrained, 600 steps, training seeds 0, 1, 2",
        seeds=(0, 1, 2), general_rows=True,
    ),
    "second": Profile(
        "second", ("ruvb",), 6, 3, 1024, ("010", "060"),
        (*_modes(["default"], ["joint", "denoise-only", "detect-only"]), BFLOAT16, SCRATCH, DEFAULT_120), 600, 100,
        300, 100, {"pixel_size_angstrom": 3.5}, intensity_map=(1.0 / 250.0, -3.0),
        description="a differently built dataset for checking defaults: 6+3 micrographs at 1024², RuvB (≈ 34 px "
                    "at 3.5 Å/px, denser fields), stored as x/250 − 3 in float32 (not counts), two doses, "
                    "600 steps (and the default at 120), training seeds 0, 1, 2",
        seeds=(0, 1, 2), general_rows=True,
    ),
    "unbinned": Profile(
        "unbinned", ("ribosome",), 8, 4, 2048, ("010",), (CryojointMethod("joint", "default", 1), FULL_SIZE), 600,
        100, 300, 100,
        {"pixel_size_angstrom": 2.65, "particles_per_micrograph": (25, 50), "ice_crystals_per_micrograph": (0, 3)},
        description="micrographs as a user may hand them, not binned to the picking scale: the standard ribosome "
                    "field at 2.65 Å/px (8+4 micrographs at 2048², particle ≈ 104 px, as many particles and ice "
                    "crystals per area as `standard`), 10 % dose; the default (binned 2× inside the network "
                    "automatically) vs the same model at full size, denoising scored binned 2×; 600 steps, "
                    "training seeds 0, 1, 2",
        seeds=(0, 1, 2), denoising_bin=2,
    ),
    "real-bgal": Profile(
        "real-bgal", ("bgal",), 10, 10, 1024, (REAL_DOSE,),
        (*_modes(["default"], ["joint", "detect-only"]), UNFLATTENED, SCRATCH, DEFAULT_120), 600, 100, 300, 100,
        dataset="real-bgal", general_rows=True,
        description="real micrographs: 10+10 EMPIAR-10017 β-galactosidase micrographs (CryoSegNet's filtered "
                    "8-bit copies, binned 4× to 1024², 7.08 Å/px, particle ≈ 27 px), half of the particles "
                    "inside one region of each training micrograph labelled; picking only; 600 steps, training "
                    "seeds 0, 1, 2",
        seeds=(0, 1, 2),
    ),
    "aspire": Profile(
        "aspire", ("aspire-blobs",), 8, 4, 1024, ("010", "020"),
        (*_modes(["default"], ["joint", "detect-only"]), SCRATCH), 600, 100, 300, 100,
        dataset="aspire", general_rows=True, seeds=(0, 1, 2),
        description="another simulator: 8+4 micrographs at 1024² made by ASPIRE (`benchmarks/aspire_sim.py`): one "
                    "of its synthetic particles (≈ 72 px) and as many decoys of another shape and the same size, "
                    "ASPIRE's CTF and white noise in its own units (mean ≈ 0), per-pixel SNR 0.01 at 10 % dose; "
                    "half of the particles inside one region (half the side) of each training micrograph "
                    "labelled; 600 steps, training seeds 0, 1, 2",
    ),
    "full": Profile(
        "full", ("ribosome", "ruvb"), 16, 8, 1024, DOSE_KEYS, _modes(["default", "paper"]), 3000, 100, 2000,
        200, description="16+8 micrographs at 1024², both structures, five modes × two presets, 3000 steps "
                         "(early stopping), Topaz ≥ 2000 minibatches, training seeds 0, 1, 2",
        seeds=(0, 1, 2),
    ),
}

#: ``standard`` on the simulator's version-1 data (no decoys, the same micrographs bit for bit): every
#: ``standard`` table up to 2026-12-01 was measured on it, and its rows can still be extended.
PROFILES["standard-v1"] = dataclasses.replace(
    PROFILES["standard"], name="standard-v1", simulation_changes=dict(NO_DECOYS),
    description="`standard` as it was until 2026-12-01 (simulator version 1: no decoys, the same micrographs bit for "
                "bit), kept so the tables measured on it can be extended: 8+4 micrographs at 1024², ribosome, three "
                "doses, 600 steps, training seeds 0, 1, 2",
)


def resolve_seeds(profile: Profile, seeds: Sequence[int] | None) -> tuple[int, ...]:
    """The training seeds a run computes: ``seeds`` if given (non-empty), else the profile's; always with
    ``TRAIN_SEED`` (every row's reference run, which Topaz's budget and the seed-0-first order rely on)."""
    chosen = tuple(seeds) if seeds else profile.seeds
    negative = [seed for seed in chosen if seed < 0]
    if negative:
        raise SystemExit(f"seed {negative[0]} is negative; give seeds as 0,1,2")
    return tuple(sorted({TRAIN_SEED, *chosen}))
