"""Typed configuration: the paper's defaults in one place, with units.

Units: every length here is in **pixels of the micrograph as the network sees it** (after any
``--downsample``), unless its name ends in ``_angstrom``. Probabilities and fractions are in [0, 1].
``None`` means "derive from the data" (particle size, expected count, cut-off), never "unset".

A :class:`CryojointConfig` is saved as YAML next to every output and inside every checkpoint, so a result
can always be traced to the settings that made it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cryojoint.errors import UserInputError

#: How particles may look against the ice (DataConfig.particle_contrast; "auto": read from the data).
PARTICLE_CONTRASTS: tuple[str, ...] = ("auto", "dark", "bright")

TRAINING_MODES: tuple[str, ...] = ("joint", "joint-no-consistency", "sequential", "denoise-only", "detect-only")


@dataclass
class ModelConfig:
    """Architecture. Field defaults are the ``default`` preset (the faster CPU variant); ``MODEL_PRESETS["paper"]``
    is the published network (appendix: 48 encoder / 96 decoder channels, ResNet8 32/64/128, full-resolution map).
    """

    preset: str = "default"
    unet_encoder_channels: int = 24  # paper: 48 in every encoder block
    unet_decoder_channels: int = 48  # paper: 96 in every decoder block (after concatenation)
    unet_depth: int = 5  # number of 2x poolings; inputs are padded to a multiple of 2**depth
    leaky_relu_slope: float = 0.1
    noise_model: str = "constant"  # "constant": one learnable sigma; "estimator": per-image sigma net
    detector_channels: tuple[int, ...] = (32, 64, 128)  # ResNet8 residual blocks (appendix)
    detector_output_stride: int = 2  # >1: dense map computed at this stride, then upsampled (paper: 1)
    sigmoid_clamp: float = 1e-4  # "modified sigmoid": sigmoid clamped to [clamp, 1 - clamp]
    # Consistency pass: True mirrors the denoised image (one denoiser pass, ~2x cheaper); False runs the
    # denoiser again on the mirrored input (the blind-spot net is not mirror-equivariant, so this is a
    # genuinely different view and the consistency term also trains the denoiser).
    consistency_shares_denoiser: bool = True
    # Detector input: the denoised image alone (paper) or stacked with the raw image as a second channel. With
    # CPU budgets the denoiser is young and smooths particles away; the raw channel keeps what it lost while the
    # detection loss still trains the denoiser through the first channel.
    detector_sees_raw: bool = True
    # Joint coupling: the detection loss trains the denoiser through the denoised image (paper: True). Off in the
    # default preset: 10 % dose, 600 steps, 3 seeds: AP 0.871 +- 0.021 without, 0.444 +- 0.099 with; FRC vs clean
    # 0.881 +- 0.025 without, 0.801 +- 0.082 with (benchmarks/results/2026-12-01-standard.md).
    detection_trains_denoiser: bool = False


@dataclass
class LossConfig:
    """Loss weights: L = alpha*L_denoise + (1-alpha)*L_detect + consistency_weight*L_consistency."""

    alpha: float = 0.75  # appendix: 0.75 (0.7-0.9 works)
    consistency_weight: float = 0.1  # appendix: lambda = 0.1
    # Reward for a larger noise estimate, per unit of the data's measured noise std: the likelihood loss minus
    # sigma_regulariser * sigma / noise_std. Laine et al. 2019 subtract 0.1*sigma on [0, 1] images whose sigma is
    # ~0.1, i.e. 0.01 per noise unit. (Before: 0.1 per unit of the normalised image, ~9x Laine's pull at 10 % dose.)
    sigma_regulariser: float = 0.01
    # GE penalty of the PU loss: "kl" (KL divergence, rewards uncertain unlabelled pixels) or "cross-entropy"
    # (Topaz's published GE-binomial). See losses.pu_loss.
    ge_form: str = "kl"
    label_sigma_fraction: float = 0.25  # soft label bump std = fraction x particle radius


@dataclass
class DataConfig:
    """Patch sampling and labels."""

    # Training patch side (px). None: from the particle size, the smallest multiple of 2**unet_depth holding the
    # detector's receptive field plus a particle radius, within [64, 256] (the paper: 64). A 64² patch around a
    # 52 px ribosome leaves the detector's 63 px field mostly outside the denoised patch; 96² measured better
    # (10% dose, 600 joint steps: AP 0.68 vs 0.42, PSNR vs full dose 34.6 vs 34.2 dB; benchmarks/README.md).
    patch_size_px: int | None = None
    batch_size: int = 4
    # Share of patches centred on a labelled particle (paper: 0.1 over ~300k steps). At CPU budgets of 10^3
    # steps 0.1 shows the detector too few positives: detect-only, 10% dose, 600 steps: test AP 0.52 at 0.1,
    # 0.80 at 0.5 (benchmarks/README.md). Those patches are kept out of the denoising loss (below).
    labelled_centre_fraction: float = 0.5
    # Paper: True (every patch trains the denoiser). False keeps particle-centred patches out of the denoising
    # loss, so the denoiser learns from an unbiased sample of the micrographs whatever the fraction above.
    denoise_on_particle_patches: bool = False
    particle_diameter_px: float | None = None  # None: estimated from the labelled particles
    # Per micrograph; None: training's prior from the labelled region's density, the cut-off's count measured after
    # training from where the labelled picks rank among the candidates (training._count_particles_from_label_scores).
    expected_particles: float | None = None
    # Share of the particles inside the labelled regions that the labels name, used to turn the label density
    # into the prior's expected particle count when none is given. The paper's users labelled 40-80 % of the
    # particles in a region; 1.0 treats the labels as complete there (a lower bound on the count).
    label_completeness: float = 0.6
    validation_fraction: float = 0.2  # share of labels (micrographs or regions) held out
    # Bin micrographs by this factor before the network sees them. None: automatic, the smallest factor that brings
    # the particle (given, or estimated from the labels) to at most max_network_particle_px; 1 for the particles of
    # our benchmarks (27-52 px), 2 for a 64-126 px particle, 4 for a 200 px one.
    # Fractional factors (e.g. 1.5, for the general model's fixed particle size) resample with an anti-aliasing
    # filter (imaging.bin_image); they are snapped to a ratio of integers with denominator <= 8.
    downsample: float | None = None
    # Widest particle (px at network scale) the automatic downsample leaves unbinned: the detector's receptive
    # field (models.detector.RECEPTIVE_FIELD, 63 px), so that it sees a particle whole. Wider particles also cost
    # larger patches and a U-Net pass over many more pixels for the same information (users bin to ~4-6 Å/px).
    max_network_particle_px: float = 63.0
    # Bin (fractionally if need be) so that the particle measures this many px, never up-sampling. None: the
    # integer rule above. Training from the general model sets it to GENERAL_PARTICLE_PX (its working scale).
    network_particle_px: float | None = None
    # Flatten the ice before the network: subtract a Gaussian-smoothed copy of each normalised micrograph (sigma =
    # this many particle diameters; gold and contamination clipped first, imaging.flatten_background), normalise
    # again, and put the background back into the denoised image. Real exposures carry gradients across the hole
    # and thicker and thinner ice. Measured (benchmarks/README.md, session 11): standard profile, 10 % dose, joint,
    # seeds 0/1/2: AP 0.816/0.829/0.833 flattened vs 0.748/0.748/0.780 not, FRC vs clean 0.905 vs 0.906; real
    # beta-galactosidase, seeds 0/1: 0.894/0.898 vs 0.893/0.888; raw fei-extended (27 hand picks in one region):
    # without it the model picked almost nothing on the brighter ice and its denoised image showed the gradient,
    # with it the picks cover the micrograph. None: off (the paper's input).
    background_sigma_diameters: float | None = 3.0
    # Flatten the spectrum of training micrographs that look low-pass filtered (imaging.looks_filtered) beyond
    # FILTERED_SPECTRUM_CUTOFF_CYCLES_PER_DIAMETER, as the general model does before picking on them, and do the same
    # whenever the trained model predicts. None: on when fine-tuning a shipped model (it learned from raw
    # micrographs' white shot noise; filtered input is new to it), off from scratch. Measured (session 21):
    # real-bgal's filtered 8-bit copies, 120 steps from `general`, seeds 0-2 — see docs/general-model.md.
    flatten_filtered_spectrum: bool | None = None
    # How particles look against the ice in the micrographs: "dark" (raw cryo-EM under defocus, what the shipped
    # models learned), "bright" (inverted micrographs, some simulators, negative stain: the network is given the
    # negated image) or "auto": read from the labelled picks (cryojoint.contrast), and the trained model keeps what
    # was read for the micrographs it predicts.
    particle_contrast: str = "auto"


@dataclass
class TrainConfig:
    """Optimisation schedule."""

    mode: str = "joint"
    # Starting weights: "scratch" (random, the data's noise level and prior) or a shipped model's name
    # ("general": fine-tune the pretrained model; the micrographs are then binned to its particle size). None: the
    # general model when this run's architecture is its own (the default preset), scratch otherwise (the paper
    # preset). Measured (benchmarks/README.md, session 14), 600 steps, seeds 0-2: standard 10 % AP 0.902 +- 0.009
    # fine-tuned vs 0.826 +- 0.010 from scratch; second (RuvB) 0.365 +- 0.010 vs 0.331 +- 0.005; real
    # beta-galactosidase 0.894 +- 0.009 vs 0.891 +- 0.008.
    init: str | None = None
    # What the standard benchmark measures (benchmarks/README.md): ~2.5 min for a 52 px particle on 2 CPU cores in
    # bfloat16. The paper trained ~300k steps on a GPU; more steps help where the validation AP is still rising
    # (metrics.csv).
    steps: int = 600
    # Denoiser (and everything but the detector). The paper: 1e-4 for the whole model over ~300k iterations. CPU
    # budgets are 10^2-10^3 steps, and since the detection loss no longer trains the denoiser (default preset)
    # 5e-4 denoises better: 10 % dose, 600 joint steps, seed 0: FRC with the clean image 0.905 vs 0.897 on the
    # standard ribosome data, 0.449 vs 0.423 on the second (RuvB, per-pixel SNR ~0.01); AP 0.890 vs 0.906 and
    # 0.406 vs 0.365 (benchmarks/README.md, session 7). (Session 2, with the coupling on: 0.59 vs 0.75.)
    learning_rate: float = 5e-4
    # The detector's own rate (None: ``learning_rate``, as in the paper). The small detector learns faster at 5e-4
    # than at the paper's 1e-4 (detect-only, 600 steps; benchmarks/README.md).
    detector_learning_rate: float | None = 5e-4
    # Fine-tuning from a shipped model: each step also scores the detector on a batch of simulated patches with
    # complete labels (pretraining.REHEARSAL_CORPUS), weighted by this, so that a few partial labels pull it less far
    # from what pretraining taught; a step then takes ~2.4x as long. 0: off. Measured at 0.3 (600 steps, seeds 0-2,
    # benchmarks/results/2026-12-05-s32-rehearsal.md): `second` 10 % AP 0.393 +- 0.005 vs 0.365 +- 0.002 without,
    # `standard` 10 % 0.897 +- 0.008 vs 0.891 +- 0.014, but real beta-galactosidase 0.874 +- 0.009 vs 0.907 +- 0.004
    # (below from scratch's 0.891): off by default.
    rehearsal_weight: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    rampup_fraction: float = 0.1  # cosine ramp-up over this share of steps
    rampdown_fraction: float = 0.3  # cosine ramp-down over the last share of steps
    eval_every: int = 100  # steps between validation passes
    checkpoint_every: int = 100  # steps between resumable checkpoints
    checkpoint_seconds: float = 60.0  # ... and at most this much training time between them (a kill loses <= 1 min)
    # Weights are averaged over training (an exponential moving average whose half-life is this share of the
    # steps); validation, model choice and model.pt use the average. 0 disables it.
    weight_averaging_half_life: float = 0.05
    early_stopping_patience: int = 10  # validation passes without improvement before stopping
    validation_smoothing: int = 3  # the best model / early stopping follow the mean of this many last passes
    # Which weights model.pt holds: "last" (the averaged weights at the end; early stopping still ends a run whose
    # validation figure has stopped improving) or "best-validation" (the validation pass with the best figure).
    # Validation on held-out *partial* labels of 1-2 micrographs chose badly: 10 % dose, seed 1, 300 steps, test AP
    # 0.40 for the validation-best step 100 vs 0.67 for the last averaged weights, while validation AP fell
    # 0.46 -> 0.30 (benchmarks/README.md, session 5).
    model_choice: str = "last"
    tensorboard: bool = True  # also log metrics to RUN/tensorboard when the tensorboard package is installed
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # Arithmetic of the network's passes in training (PRECISIONS; losses, gradients' accumulation and weights stay
    # float32). "auto": as predict.precision's auto (bfloat16 where the hardware has it). Standard profile, 10 %
    # dose, 600 joint steps, seeds 0-2: AP 0.906/0.906/0.875 vs 0.909/0.905/0.874 in float32, FRC vs clean
    # 0.905/0.915/0.904 vs 0.906/0.912/0.903, a step ~2x faster; second dataset (seed 0): AP 0.430 vs 0.426,
    # FRC 0.451 vs 0.454 (benchmarks/README.md, session 9).
    precision: str = "auto"
    threads: int | None = None  # torch intra-op threads; None = all cores


#: The automatic cut-off rules a user or a config names: keep as many picks as particles expected (the labels'
#: density or scores), or the quantile rule's top share of the candidates (the paper's advice).
EXPECTED_COUNT_RULE, QUANTILE_RULE = "expected-count", "quantile"
AUTO_THRESHOLD_RULES: tuple[str, ...] = (EXPECTED_COUNT_RULE, QUANTILE_RULE)


@dataclass
class PredictConfig:
    """Inference and picking."""

    threshold: float | None = None  # log-odds score cut-off (0 = probability 0.5); None = automatic
    auto_threshold_rule: str = EXPECTED_COUNT_RULE  # keep expected particles x micrographs; or QUANTILE_RULE
    auto_threshold_top_fraction: float = 0.25  # "quantile" rule (appendix): top 25-30% of candidate scores
    nms_radius_px: float | None = None  # None: particle radius
    border_px: float = 0.0  # drop peaks closer than this to the image edge
    # Largest output block computed per network pass (memory stays flat in the image size); blocks split evenly.
    # 1024: a typical binned micrograph runs in one pass, which the exact context below makes cheapest.
    tile_size_px: int = 1024
    # Context added on each side of a block. None: the receptive fields of U-Net and detector (default preset:
    # 384 px), so tiled output equals the whole-image pass exactly; a smaller value is faster but shows seams.
    # Used by context "whole-image" only.
    tile_overlap_px: int | None = None
    # What each output pixel is computed from. "training-patch": windows of the training patch side (blended with
    # a triangular weight), so the network sees at inference what it saw in training; its U-Net reaches far
    # beyond a training patch, and run on a whole image its output (and the detector's input) shifts away from
    # anything it was trained on (measured, 60 % dose: AP 0.76 whole-image vs 0.99). The detector runs in the
    # windows too: it was trained on zero-padded patches, and picks better so (see inference._window_passes).
    # "whole-image": the exact whole-image pass (tiled by tile_size_px / tile_overlap_px).
    context: str = "training-patch"
    # Spacing of the U-Net's windows, as a fraction of the window side (about (1/fraction)^2 windows per pixel,
    # each costing the same). Standard profile, 10 % dose, joint seeds 0-2: 2/3 gave the same denoised images
    # (FRC vs clean 0.907 +- 0.005 both) and picks (AP 0.896 vs 0.897) as 1/2 in 19 s instead of 31 s per 1024²
    # micrograph; on the second dataset (RuvB, seed 0) FRC 0.454 both, AP 0.426 vs 0.429, 23 s vs 41 s
    # (benchmarks/results/2026-12-01-ab-inference-*-strides.md).
    window_stride_fraction: float = 2.0 / 3.0
    # Spacing of the detector's windows over the blended denoised image. More windows pick better and cost more:
    # 1/4 gave AP 0.908 +- 0.019 (joint) and 0.882 (detect-only) vs 0.896 and 0.869 at 1/2, at 33 s instead of
    # 19 s per micrograph (detect-only 17 s vs 5 s), on the standard data; on the second dataset no gain
    # (0.425 vs 0.426), so 1/2 stays the default.
    detector_window_stride_fraction: float = 0.5
    # Arithmetic of the network passes (PRECISIONS; outputs are float32). "auto": bfloat16 autocast where the
    # hardware has it (CUDA; CPUs with AVX512-BF16/AMX), float16 on CUDA GPUs without, else float32. Standard
    # profile, 10 % dose, the same 3 joint + 3 detect-only models: AP 0.896 +- 0.019 and FRC 0.907 +- 0.005 in
    # both, 21.5 vs 49.4 s per 1024² micrograph on a busy 1-thread box
    # (benchmarks/results/2026-12-01-ab-inference-standard-010-precision.md). "float32" for exact passes.
    precision: str = "auto"


#: The automatic cut-off where no particle count is known (the general model told no labels): the quantile rule's top
#: share of the candidates, or as many as their probabilities sum to where that is more (prediction.choose_threshold).
PROBABILITY_SUM_RULE = "probability-sum"


#: Particle diameter (network px) the shipped general model is trained and run at (cryojoint.pretraining): inside
#: the 32-40 px at which the detector's 63 px receptive field sees a particle whole with its surroundings, and
#: coarse enough that a binned micrograph holds many.
GENERAL_PARTICLE_PX = 36.0
#: The general model, picking on a micrograph that looks low-pass filtered (imaging.looks_filtered), first flattens
#: its spectrum beyond this many cycles per particle diameter (imaging.flatten_spectrum_beyond): the filter took out
#: the white shot noise the model learned beside the particles. Zero-shot AP (docs/general-model.md, session 15):
#: real-bgal's filtered 8-bit copies 0.40 -> 0.80; simulated standard 20 % dose low-passed (Gaussian, sigma 2 px)
#: and stored in 8 bits 0.31 -> 0.75 (raw 0.87). Full whitening (every frequency) did no better on real-bgal with
#: the first general model (0.640 vs 0.642) and 2 cycles per diameter did worse (0.616).
FILTERED_SPECTRUM_CUTOFF_CYCLES_PER_DIAMETER = 1.0
#: Names of the shipped pretrained models (files: cryojoint.checkpoint.SHIPPED_MODELS); the first is the current
#: general model, the one training starts from by default (docs/general-model.md).
SHIPPED_MODEL_NAMES: tuple[str, ...] = ("general", "general-v1")
#: How inference feeds the network (see PredictConfig.context).
PREDICT_CONTEXTS = ("training-patch", "whole-image")
#: Arithmetic inference may run in (see PredictConfig.precision and cryojoint.runtime.autocast_dtype).
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")


@dataclass
class CryojointConfig:
    """Everything that determines a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | Path | None = None) -> CryojointConfig:
        """Build from a (possibly partial) nested dict; unknown keys are an error, not silently ignored."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, section_values in (values or {}).items():
            if name not in sections:
                raise UserInputError(source, f"unknown config section '{name}' (known: {', '.join(sections)})")
            section_cls = _SECTION_CLASSES[name]
            kwargs[name] = _build_section(section_cls, section_values or {}, source, name)
        config = cls(**kwargs)
        validate(config, source)
        return config

    def save_yaml(self, path: str | Path) -> None:
        from cryojoint._atomic import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load_yaml(cls, path: str | Path) -> CryojointConfig:
        path = Path(path)
        if not path.is_file():
            raise UserInputError(path, "config file not found")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise UserInputError(path, f"not valid YAML ({err.__class__.__name__})") from None
        if values is not None and not isinstance(values, dict):
            raise UserInputError(path, "config must be a mapping of sections")
        return cls.from_dict(values or {}, source=path)


#: Keys a section no longer has, still accepted (and dropped) so configs and models written before load.
RETIRED_KEYS: dict[str, frozenset[str]] = {
    "predict": frozenset({"batch_size"}),  # never read by anything
}

_SECTION_CLASSES: dict[str, type] = {
    "model": ModelConfig,
    "loss": LossConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "predict": PredictConfig,
}

#: Architecture presets. ``paper`` is the published network (appendix 1.1); ``default`` is the lighter
#: network we ship for CPU users (see benchmarks/ for its speed and quality against ``paper``).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        unet_encoder_channels=48,
        unet_decoder_channels=96,
        unet_depth=5,
        detector_channels=(32, 64, 128),
        detector_output_stride=1,
        consistency_shares_denoiser=False,
        detector_sees_raw=False,
        detection_trains_denoiser=True,
    ),
    "default": dict(
        unet_encoder_channels=24,
        unet_decoder_channels=48,
        unet_depth=5,
        detector_channels=(32, 64, 128),
        detector_output_stride=2,
        consistency_shares_denoiser=True,
        detector_sees_raw=True,
        detection_trains_denoiser=False,
    ),
}


def model_config_for_preset(preset: str) -> ModelConfig:
    if preset not in MODEL_PRESETS:
        raise UserInputError(None, f"unknown preset '{preset}' (known: {', '.join(MODEL_PRESETS)})")
    return ModelConfig(preset=preset, **MODEL_PRESETS[preset])


def default_config(preset: str = "default") -> CryojointConfig:
    return CryojointConfig(model=model_config_for_preset(preset))


def validate(config: CryojointConfig, source: str | Path | None = None) -> None:
    """Reject values that cannot work, with the option's name in the message."""
    pooled_px = 2 ** max(config.model.unet_depth, 0)  # the U-Net's inputs are multiples of this
    checks: list[tuple[bool, str]] = [
        (config.train.mode in TRAINING_MODES, f"train.mode must be one of {', '.join(TRAINING_MODES)}"),
        (0.0 <= config.loss.alpha <= 1.0, "loss.alpha must be in [0, 1]"),
        (config.loss.consistency_weight >= 0, "loss.consistency_weight must be >= 0"),
        (config.data.patch_size_px is None or config.data.patch_size_px >= 16,
         "data.patch_size_px must be >= 16 (or null: from the particle size)"),
        (config.data.batch_size >= 1, "data.batch_size must be >= 1"),
        (0.0 <= config.data.labelled_centre_fraction <= 1.0, "data.labelled_centre_fraction must be in [0, 1]"),
        (config.data.particle_diameter_px is None or config.data.particle_diameter_px > 0,
         "data.particle_diameter_px must be > 0"),
        (config.data.expected_particles is None or config.data.expected_particles > 0,
         "data.expected_particles must be > 0"),
        (config.data.downsample is None or config.data.downsample >= 1,
         "data.downsample must be >= 1 (or null: automatic, from the particle size)"),
        (config.data.max_network_particle_px >= 8, "data.max_network_particle_px must be >= 8"),
        (config.data.network_particle_px is None or config.data.network_particle_px >= 8,
         "data.network_particle_px must be >= 8 (or null: integer bins up to max_network_particle_px)"),
        (config.train.init in (None, "scratch", *SHIPPED_MODEL_NAMES),
         f"train.init must be scratch or one of {', '.join(SHIPPED_MODEL_NAMES)} (or null: automatic)"),
        (0.0 < config.data.label_completeness <= 1.0, "data.label_completeness must be in (0, 1]"),
        (config.data.particle_contrast in PARTICLE_CONTRASTS,
         f"data.particle_contrast must be one of {', '.join(PARTICLE_CONTRASTS)}"),
        (0.0 <= config.data.validation_fraction < 1.0, "data.validation_fraction must be in [0, 1)"),
        (config.train.steps >= 1, "train.steps must be >= 1"),
        (config.train.eval_every >= 1, "train.eval_every must be >= 1 (steps between validation passes)"),
        (config.train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1 (steps between checkpoints)"),
        (len(config.train.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in config.train.adam_betas),
         "train.adam_betas must be two numbers in [0, 1)"),
        (config.model.unet_encoder_channels >= 1, "model.unet_encoder_channels must be >= 1"),
        (len(config.model.detector_channels) == 3 and all(c >= 1 for c in config.model.detector_channels),
         "model.detector_channels must list three channel counts >= 1 (the ResNet8's three stages)"),
        (config.data.patch_size_px is None or config.data.patch_size_px % pooled_px == 0,
         f"data.patch_size_px must be a multiple of 2**model.unet_depth ({pooled_px}; or null: from the particle "
         "size)"),
        (config.train.seed >= 0, "train.seed must be >= 0"),
        (config.train.validation_smoothing >= 1, "train.validation_smoothing must be >= 1"),
        (config.train.checkpoint_seconds > 0, "train.checkpoint_seconds must be > 0"),
        (config.train.model_choice in ("last", "best-validation"), "train.model_choice must be last or "
                                                                    "best-validation"),
        (0.0 <= config.train.weight_averaging_half_life < 1.0, "train.weight_averaging_half_life must be in [0, 1)"),
        (config.loss.ge_form in ("kl", "cross-entropy"), "loss.ge_form must be kl or cross-entropy"),
        (config.loss.sigma_regulariser >= 0, "loss.sigma_regulariser must be >= 0"),
        (config.data.background_sigma_diameters is None or config.data.background_sigma_diameters > 0,
         "data.background_sigma_diameters must be > 0 (or null: no flattening)"),
        (config.train.learning_rate > 0, "train.learning_rate must be > 0"),
        (config.train.detector_learning_rate is None or config.train.detector_learning_rate > 0,
         "train.detector_learning_rate must be > 0 (or null: the same as learning_rate)"),
        (config.train.rehearsal_weight >= 0, "train.rehearsal_weight must be >= 0 (0: no rehearsal)"),
        (config.model.unet_depth >= 1, "model.unet_depth must be >= 1"),
        (config.model.noise_model in ("constant", "estimator"), "model.noise_model must be constant|estimator"),
        (config.model.detector_output_stride >= 1, "model.detector_output_stride must be >= 1"),
        (config.predict.auto_threshold_rule in AUTO_THRESHOLD_RULES,
         f"predict.auto_threshold_rule must be one of {', '.join(AUTO_THRESHOLD_RULES)}"),
        (0.0 < config.predict.auto_threshold_top_fraction < 1.0,
         "predict.auto_threshold_top_fraction must be in (0, 1)"),
        (config.predict.tile_size_px >= 64, "predict.tile_size_px must be >= 64"),
        (config.predict.tile_overlap_px is None or config.predict.tile_overlap_px >= 0,
         "predict.tile_overlap_px must be >= 0 (or null: exact, from the receptive fields)"),
        (0.0 < config.predict.window_stride_fraction <= 1.0, "predict.window_stride_fraction must be in (0, 1]"),
        (0.0 < config.predict.detector_window_stride_fraction <= 1.0,
         "predict.detector_window_stride_fraction must be in (0, 1]"),
        (config.train.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}"),
        (config.predict.precision in PRECISIONS,
         f"predict.precision must be one of {', '.join(PRECISIONS)}"),
        (config.predict.context in PREDICT_CONTEXTS,
         f"predict.context must be one of {', '.join(PREDICT_CONTEXTS)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserInputError(source, message)


def _build_section(section_cls: type, values: dict[str, Any], source: str | Path | None, name: str) -> Any:
    if not isinstance(values, dict):
        raise UserInputError(source, f"config section '{name}' must be a mapping")
    known = {f.name: f for f in dataclasses.fields(section_cls)}
    values = {k: v for k, v in values.items() if k not in RETIRED_KEYS.get(name, frozenset())}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserInputError(source, f"unknown key(s) in '{name}': {', '.join(unknown)}")
    # A model section starts from its preset (default: "default"), so a partial YAML changes only what it names.
    base = model_config_for_preset(values.get("preset", "default")) if section_cls is ModelConfig else section_cls()
    hints = typing.get_type_hints(section_cls)
    cleaned = {k: _typed_value(v, hints[k], f"{name}.{k}", source) for k, v in values.items()}
    return dataclasses.replace(base, **cleaned)


def _typed_value(value: Any, annotation: Any, key: str, source: str | Path | None) -> Any:
    """A YAML value as its field's type, or a one-line error naming the key.

    YAML 1.1 reads ``1e-4`` (no dot) as a string; a number written so is taken as the number it means.
    """
    allowed = set(typing.get_args(annotation)) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else {annotation}
    if value is None:
        if type(None) in allowed:
            return None
        raise UserInputError(source, f"config key '{key}' needs a value (null is not allowed here)")
    kinds = {typing.get_origin(kind) or kind for kind in allowed} - {type(None)}
    if tuple in kinds:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise UserInputError(source, f"config key '{key}' must be a list, got {value!r}")
    if bool in kinds:
        if isinstance(value, bool):
            return value
        raise UserInputError(source, f"config key '{key}' must be true or false, got {value!r}")
    if float in kinds or int in kinds:
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number):
            if float in kinds:
                return float(number)
            if float(number).is_integer():
                return int(number)
        what = "a number" if float in kinds else "a whole number"
        raise UserInputError(source, f"config key '{key}' must be {what}, got {value!r}")
    if str in kinds and not isinstance(value, str):
        raise UserInputError(source, f"config key '{key}' must be text, got {value!r}")
    return value


def _plain(value: Any) -> Any:
    """Tuples to lists so YAML and torch's weights_only loader see only plain types."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flattening_a_run_began_with(saved_config: str | Path) -> bool | None:
    """data.flatten_filtered_spectrum as a run's saved config.yaml resolved it, so that resuming keeps it: False
    for a config from before the option existed, None when there is no readable config or value to go by."""
    try:
        values = yaml.safe_load(Path(saved_config).read_text())
    except (OSError, yaml.YAMLError):
        return None
    data = values.get("data") if isinstance(values, dict) else None
    if not isinstance(data, dict):
        return None
    value = data.get("flatten_filtered_spectrum", False)
    return None if value is None else bool(value)
