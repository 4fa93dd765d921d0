"""The training loop: config in; best model, resumable checkpoints and a metrics log out.

One network, two heads (design.md §2). The mode's stages, which losses apply in each, which parts learn and
what runs are one table, :mod:`cryojoint.modes`; this loop reads it (one :class:`~cryojoint.modes.StagePlan` per
stage) and branches on nothing else.

Under ``torchrun --nproc-per-node N`` the same loop trains data-parallel (see :mod:`cryojoint.distributed`):
each process samples its own batches from its own random stream, gradients are averaged, rank 0 validates,
decides (early stopping, next stage) for everyone, and alone writes files. The data split is seeded
independently of the rank, so every process holds out the same micrographs.

Why one module of ~780 lines: what it holds is one loop and the private pieces that share its state. The
checkpoint is that state (``_State``, the weight average, every rank's random streams) and must change with it
for a bit-exact resume; stage changes and early stopping update the same ``_State``; tests replace
``_train_step`` and ``_begin_next_stage`` on this module. What stands apart already lives elsewhere (stages in
:mod:`cryojoint.modes`, losses, data preparation, model files in :mod:`cryojoint.checkpoint`, data parallelism,
inference, metrics). First to move out if it grows: the run's outputs (metrics CSV, TensorBoard, progress bar).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryojoint import distributed, losses
from cryojoint._atomic import atomic_path, check_can_write
from cryojoint.checkpoint import (
    MODEL_NAME,
    build_network,
    load_model,
    read_model_file,
    resolve_model_path,
    save_model,
)
from cryojoint.config import (
    GENERAL_PARTICLE_PX,
    SHIPPED_MODEL_NAMES,
    CryojointConfig,
    default_config,
    flattening_a_run_began_with,
    validate,
)
from cryojoint.contrast import AS_RECORDED
from cryojoint.data import (
    LabelledImage,
    PatchSampler,
    PreparedData,
    SizeReader,
    close_packed_density,
    load_micrographs,
    prepare_data,
    unlabelled_positive_fraction,
)
from cryojoint.distributed import DistributedContext
from cryojoint.errors import StopRequested, UserInputError
from cryojoint.io.coords import check_coordinate_table, drop_unknown_micrographs, read_coordinates
from cryojoint.io.mrc import Micrograph
from cryojoint.modes import StagePlan, TrainingStage, model_parts, stage_plan, training_stages
from cryojoint.runtime import (
    autocast,
    autocast_dtype,
    dtype_name,
    retain_freed_memory,
    select_device,
    threads_per_worker,
)
from cryojoint.size_reading import read_size_with_model

__all__ = ["TrainResult", "learning_rate_at", "load_model", "train", "training_patch_size"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.csv"
CONFIG_NAME = "config.yaml"
TENSORBOARD_DIR = "tensorboard"
#: Pixels around the validation picks' bounding box included when scoring validation AP.
VALIDATION_MARGIN_DIAMETERS = 1.0


def learning_rate_at(step: int, total: int, base: float, rampup_fraction: float, rampdown_fraction: float) -> float:
    """Cosine ramp-up over the first steps and cosine ramp-down over the last (Laine et al. 2019)."""
    up = max(int(total * rampup_fraction), 1)
    down = max(int(total * rampdown_fraction), 1)
    factor = 1.0
    if step < up:
        factor = 0.5 - 0.5 * math.cos(math.pi * (step + 1) / up)
    if step >= total - down:
        factor *= 0.5 + 0.5 * math.cos(math.pi * (step - (total - down)) / down)
    return base * max(factor, 1e-3)


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    best_step: int
    best_metric: float
    metric_name: str
    steps_done: int
    seconds: float
    stopped_early: bool
    history: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    #: How many of ``notes`` (the first ones) the progress bar already printed before training.
    notes_printed: int = 0


@dataclass
class _State:
    step: int = 0
    stage: int = 0
    best_metric: float = -math.inf
    best_step: int = 0
    chosen_step: int = 0  # the step whose (averaged) weights model.pt holds
    chosen_metric: float = -math.inf
    bad_evaluations: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    running: dict[str, float] = field(default_factory=dict)  # smoothed loss terms (shown and logged)
    stage_metrics: list[float] = field(default_factory=list)  # this stage's validation figures, in order
    # The shipped weights' file fine-tuning started from, fixed when the run begins ("general" moves on from version
    # to version: a run resumed after an upgrade still records what it started from). None: from scratch.
    init_weights: str | None = None
    # What the run learns from, fixed when it begins (_what_it_learns_from): a resume with another particle size, bin
    # or micrographs would go on training these weights on other data. None: a checkpoint from before it was kept.
    began_with: dict[str, Any] | None = None


def train(
    micrographs: Sequence[str | Path | Micrograph],
    labels: pd.DataFrame | str | Path,
    out: str | Path,
    config: CryojointConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    command_line: str | None = None,
    ignore_unknown_labels: bool = False,
    should_stop: Callable[[], bool] | None = None,
    denoiser_only: Collection[str] = (),
) -> TrainResult:
    """Train a joint model on micrographs and sparse labels; write ``out/model.pt`` (the best validation step).

    Parameters
    ----------
    micrographs
        MRC paths (files, folders, globs, as the CLI takes them), :class:`~cryojoint.io.mrc.Micrograph` objects
        (e.g. from :func:`cryojoint.simulate`) or 2D arrays (named ``image_0000``, ... in the labels).
    labels
        A coordinate file (any format :func:`~cryojoint.io.coords.read_coordinates` reads) or a table with
        columns ``micrograph, x, y`` in the micrographs' pixels.
    out
        Run folder: ``model.pt``, ``checkpoint.pt`` (resumable), ``metrics.csv``, ``config.yaml``.
    resume
        Continue from ``out/checkpoint.pt`` exactly where it stopped (same batches, same result; under
        torchrun with the same number of processes, each process continues its own stream of batches).
    ignore_unknown_labels
        Skip labels naming micrographs that are not among ``micrographs`` (a note says how many) instead of
        failing: labels for a whole project, training on a subset.
    should_stop
        Asked after every step (by rank 0 under torchrun); when it returns true the run saves its checkpoint
        and raises :class:`~cryojoint.errors.StopRequested` (``resume=True`` continues it). A hook, so that
        callers such as the RELION job (abort file) or a notebook can stop training without killing it.
    denoiser_only
        Names of micrographs whose particles are unknown (pretraining's real micrographs): the detection loss
        does not score them; the label-free terms (denoising, flip consistency) use them. Micrographs merely
        without labels are different: they count as holding the expected particles, none labelled.

    Notes
    -----
    Launched by ``torchrun --nproc-per-node N`` this trains data-parallel: ``config.data.batch_size`` patches
    per process and step (N times as many per step in all), gradients averaged, the same number of steps.
    Every process returns the same result; only rank 0 writes files.
    """
    config = _as_config(config)
    validate(config)  # a config built in Python (not loaded from YAML) has not been checked: refuse before any work
    micrographs = _as_micrograph_inputs(micrographs)
    if not isinstance(labels, (str, Path)):
        labels = check_coordinate_table(labels, "labels")
    run_dir = Path(out)
    command_line = command_line or " ".join(shlex.quote(a) for a in sys.argv)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    if resume and not checkpoint_path.is_file():
        # Killed before its first checkpoint (at most checkpoint_seconds of training lost): start afresh.
        warnings.warn(f"{checkpoint_path}: no checkpoint yet, training starts from step 0", UserWarning,
                      stacklevel=2)
        resume = False
    elif not resume:
        if not overwrite and (run_dir / MODEL_NAME).exists() and checkpoint_path.is_file():
            raise UserInputError(run_dir / MODEL_NAME, "already exists, from an earlier run (its checkpoint.pt is "
                                 "beside it): --resume goes on with that run where it stopped, --overwrite starts "
                                 "again")
        check_can_write(run_dir / MODEL_NAME, overwrite)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    with distributed.process_group(select_device(config.train.device)) as group:
        if not config.train.threads and group.enabled and group.device.type == "cpu":
            # Processes on one node share its cores (torchrun also sets OMP_NUM_THREADS=1 by default).
            torch.set_num_threads(threads_per_worker(group.local_world_size))
        return _train(micrographs, labels, run_dir, config, group, resume=resume, progress=progress,
                      command_line=command_line, ignore_unknown_labels=ignore_unknown_labels,
                      should_stop=should_stop, denoiser_only=denoiser_only)


def _train(
    micrographs: Sequence[str | Path | Micrograph],
    labels: pd.DataFrame | str | Path,
    run_dir: Path,
    config: CryojointConfig,
    group: DistributedContext,
    *,
    resume: bool,
    progress: bool,
    command_line: str,
    ignore_unknown_labels: bool = False,
    should_stop: Callable[[], bool] | None = None,
    denoiser_only: Collection[str] = (),
) -> TrainResult:
    """The loop of :func:`train`, run by every process of ``group`` in lockstep."""
    device = group.device
    network_dtype = autocast_dtype(device, config.train.precision)
    retain_freed_memory()
    checkpoint_path = run_dir / CHECKPOINT_NAME
    labels_source = labels if isinstance(labels, (str, Path)) else None
    label_table = read_coordinates(labels) if labels_source is not None else labels
    mics = [m if isinstance(m, Micrograph) else None for m in micrographs]
    paths = [m for m in micrographs if not isinstance(m, Micrograph)]
    loaded = iter(load_micrographs(paths)) if paths else iter(())
    mics = [m if m is not None else next(loaded) for m in mics]
    skipped_note = None
    if ignore_unknown_labels:
        label_table, n_rows, n_mics = drop_unknown_micrographs(label_table, [m.name for m in mics])
        if n_rows:
            skipped_note = (f"skipped {n_rows} label(s) on {n_mics} micrograph(s) that were not given "
                            "(--ignore-unknown-labels)")

    init = starting_weights(config)
    init_note = (f"fine-tuning the shipped {init} model (--init scratch starts from random weights)"
                 if config.train.init is None and init != "scratch" else None)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, init=init))
    if init != "scratch" and config.data.network_particle_px is None:
        # A pretrained model works at its own particle size: bin the micrographs to it.
        config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                      network_particle_px=GENERAL_PARTICLE_PX))
    if config.data.flatten_filtered_spectrum is None:
        # A pretrained model learned raw micrographs' white shot noise: filtered ones are flattened for it. A
        # resumed run keeps what it began with (runs begun before the option existed did not flatten).
        flatten = flattening_a_run_began_with(run_dir / CONFIG_NAME) if resume else None
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, flatten_filtered_spectrum=init != "scratch" if flatten is None else flatten))
    if model_parts(config.train.mode)[1] and not len(label_table):
        if skipped_note:
            raise UserInputError(labels_source, f"no label names a micrograph given ({skipped_note}); check the "
                                 "micrographs and the labels' micrograph names")
        raise UserInputError(labels_source, "no labels: picking is learned from some labelled particles (only "
                             "--mode denoise-only trains without them)")
    torch.manual_seed(config.train.seed)
    rng = np.random.default_rng(config.train.seed)
    # The split does not depend on the seed or the rank: every run and every process holds out the same data.
    read_size = _size_reader(config, device, progress and group.is_main) if init != "scratch" else None
    prepared = prepare_data(mics, label_table, config.data, config.loss, labels_source, denoiser_only, read_size)
    sampler_rng = rng if group.rank == 0 else _rank_generator(config.train.seed, group.rank)
    scored = [im for im in prepared.train if im.name not in denoiser_only] or prepared.train
    patch_size = config.data.patch_size_px or training_patch_size(  # sized for the micrographs the detector learns on
        prepared.particle_diameter_px, 2 ** config.model.unet_depth, min(min(im.image.shape) for im in scored))
    sampler = PatchSampler(prepared.train, patch_size, config.data.labelled_centre_fraction,
                           sampler_rng)

    rehearsal = _rehearsal_sampler(config, patch_size, sampler_rng) if (
        config.train.rehearsal_weight > 0 and init != "scratch" and model_parts(config.train.mode)[1]) else None
    network = build_network(config)
    _initialise(network, prepared)
    if config.train.init != "scratch":
        _load_initial_weights(network, config, prepared)
    network = network.to(device)
    if group.rank != 0:  # own torch stream per rank (rank 0 keeps the single-process one)
        torch.manual_seed(int(_rank_seed_sequence(config.train.seed, group.rank).generate_state(1)[0]))
    optimizer = torch.optim.Adam(_parameter_groups(network, config), betas=config.train.adam_betas)
    state = _State(init_weights=None if config.train.init == "scratch" else
                   resolve_model_path(config.train.init).name, began_with=_what_it_learns_from(prepared))
    stages = training_stages(config.train.mode)
    plans = [stage_plan(stage, config) for stage in stages]
    stage_lengths = [max(int(round(s.step_budget * config.train.steps)), 1) for s in stages]
    stage_ends = np.cumsum(stage_lengths).tolist()
    total = stage_ends[-1]
    average = WeightAverage(network, config.train.weight_averaging_half_life * stage_lengths[0])
    best_weights = average.weights()
    rehearsal_note = (f"rehearsing the pretraining task on simulated patches (train.rehearsal_weight "
                      f"{config.train.rehearsal_weight:g}: a step takes ~2.4x as long; 0 turns it off)"
                      if rehearsal is not None else None)
    notes = [note for note in (skipped_note, init_note, rehearsal_note) if note] + list(prepared.notes)
    if resume:
        began_from = state.init_weights
        state, best_weights, resume_notes = _load_checkpoint(checkpoint_path, network, optimizer, sampler_rng,
                                                             device, stages, group, config.train.seed, average)
        state.init_weights = state.init_weights or began_from  # checkpoints from before it was kept: the current file
        _check_resumed_on_the_same_data(run_dir, state, prepared)
        notes += resume_notes
    if group.is_main:
        config.save_yaml(run_dir / CONFIG_NAME)

    meta = _model_meta(prepared, command_line, config, sampler.patch_size, network_dtype)
    if state.init_weights is not None:  # which version of a shipped model ("general" moves on), to repeat the run
        meta["init_weights"] = state.init_weights
    has_detector = model_parts(config.train.mode)[1]
    if group.is_main and has_detector and prepared.expected_was_estimated:
        # model.pt is handed over at each validation pass; the particle count is measured once training ends.
        # Until then (an interrupted run) prediction says its cut-off keeps the labels' density estimate.
        meta["count_pending"] = True
    metric_name = "validation_ap" if has_detector else "validation_neg_denoise_loss"
    if not prepared.validation:
        metric_name = "step"  # _stage_metric: with nothing held out the step is the metric, the last step is kept
    stopped_early = False
    choose_last = config.train.model_choice == "last"
    start = time.perf_counter() - state.seconds
    last_checkpoint = time.perf_counter()
    bar = _ProgressBar(total, enabled=progress and group.is_main, initial=state.step)
    running = state.running
    if not prepared.validation:
        notes.append("no held-out labels (too few labelled micrographs/picks): no early stopping, the last step "
                     "is kept")
    _enter_stage(network, plans[state.stage])
    trainer = distributed.wrap_model(network, group)  # gradient averaging across processes (or network itself)
    board = _TensorBoardLog(run_dir / TENSORBOARD_DIR, config.train.tensorboard and group.is_main,
                            resume_step=state.step if resume else None)
    with bar, board:
        for note in notes:  # what was measured or chosen from the data, before the long part
            bar.note(note)
        notes_printed = len(notes) if bar.enabled else 0
        while state.step < total:
            if state.stage + 1 < len(stages) and state.step >= stage_ends[state.stage]:
                state = _begin_next_stage(network, best_weights, state, plans[state.stage + 1])
                average.restart(network, config.train.weight_averaging_half_life * stage_lengths[state.stage])
                trainer = None  # release the old wrapper's gradient hooks before the new one sets its own
                trainer = distributed.wrap_model(network, group)
            plan = plans[state.stage]
            stage_start, stage_end = stage_ends[state.stage] - stage_lengths[state.stage], stage_ends[state.stage]
            # Each stage runs its own schedule (sequential's two stages: two full ramps).
            lr = learning_rate_at(state.step - stage_start, stage_lengths[state.stage], config.train.learning_rate,
                                  config.train.rampup_fraction, config.train.rampdown_fraction)
            for group_params in optimizer.param_groups:  # the same ramp, scaled to each part's base rate
                group_params["lr"] = lr * group_params["base_lr"] / config.train.learning_rate
            terms = _train_step(trainer, network, optimizer, sampler, config, prepared, plan, device,
                                network_dtype, rehearsal)
            average.update(network)
            state.step += 1
            for key, value in terms.items():
                running[key] = 0.9 * running.get(key, value) + 0.1 * value
            bar.update(state.step, running)
            if state.step % config.train.eval_every == 0 or state.step == stage_end:
                # Rank 0 validates; every rank applies its verdict, so all stop or advance together.
                running_all = distributed.mean_over_processes(running, group)
                measured: dict[str, float] | None = None
                if group.is_main:
                    measured = {"step": state.step, "lr": lr, "seconds": time.perf_counter() - start, **running_all}
                    with average.applied(network):
                        measured.update(_validate(network, prepared, config, device, sampler.patch_size))
                record = distributed.broadcast_object(measured, group)
                assert record is not None
                state.stage_metrics.append(_stage_metric(record, plan))
                metric = smoothed_metric(state.stage_metrics, config.train.validation_smoothing)
                record["selection_metric"] = metric
                improved = metric > state.best_metric
                if improved:
                    state.best_metric, state.best_step, state.bad_evaluations = metric, state.step, 0
                else:
                    state.bad_evaluations += 1
                if improved or choose_last:  # the model this run hands over, as of now
                    state.chosen_step, state.chosen_metric = state.step, metric
                    best_weights = average.weights()
                    if group.is_main:
                        with average.applied(network):
                            save_model(run_dir / MODEL_NAME, network, config, {**meta, "best_step": state.step,
                                                                               metric_name: metric})
                state.history.append(record)
                if group.is_main:
                    _write_metrics(run_dir / METRICS_NAME, state.history)
                board.log(record)
                bar.log(record)
                if state.bad_evaluations >= config.train.early_stopping_patience:
                    if state.stage + 1 < len(stages):  # this stage has converged: go on to the next
                        state.step = max(state.step, stage_end)
                    else:
                        stopped_early = True
                        break
            due = (state.step % config.train.checkpoint_every == 0 or state.step == total
                   or time.perf_counter() - last_checkpoint >= config.train.checkpoint_seconds)
            if distributed.broadcast_object(due, group):  # rank 0's clock decides for every process
                state.seconds = time.perf_counter() - start
                _save_checkpoint(checkpoint_path, network, optimizer, sampler_rng, state, best_weights, group,
                                 average)
                last_checkpoint = time.perf_counter()
            if should_stop is not None and distributed.broadcast_object(should_stop() if group.is_main else None,
                                                                        group):
                state.seconds = time.perf_counter() - start
                _save_checkpoint(checkpoint_path, network, optimizer, sampler_rng, state, best_weights, group,
                                 average)
                raise StopRequested(f"training stopped on request after {state.step} of {total} steps "
                                    f"(checkpoint: {checkpoint_path})")
    state.seconds = time.perf_counter() - start
    _save_checkpoint(checkpoint_path, network, optimizer, sampler_rng, state, best_weights, group, average)
    if group.is_main and not (run_dir / MODEL_NAME).exists():
        with average.applied(network):
            save_model(run_dir / MODEL_NAME, network, config, {**meta, "best_step": state.step})
    if group.is_main and has_detector and prepared.expected_was_estimated:
        notes.append(_count_particles_from_label_scores(run_dir / MODEL_NAME, prepared, device, progress))
    if group.is_main and has_detector:
        _warn_if_no_better_than_chance(state.history, labels_source)
    return TrainResult(run_dir, run_dir / MODEL_NAME, state.chosen_step, state.chosen_metric, metric_name,
                       state.step, state.seconds, stopped_early, pd.DataFrame(state.history), notes, notes_printed)


class WeightAverage:
    """Exponential moving average of a network's weights (parameters and floating-point buffers).

    Averaging the last few percent of steps smooths out where the final minibatches happened to push the
    weights, one of the causes of seed-to-seed spread at CPU budgets. ``half_life_steps`` <= 0 disables it (the
    average is then the live network). The first updates use a shorter memory, so the average is never
    dominated by the initial weights.
    """

    def __init__(self, network: torch.nn.Module, half_life_steps: float) -> None:
        self.restart(network, half_life_steps)

    def restart(self, network: torch.nn.Module, half_life_steps: float) -> None:
        """Start again from the network's current weights (a new training stage)."""
        self.decay = 0.5 ** (1.0 / half_life_steps) if half_life_steps > 0 else 0.0
        self.state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        self.updates = 0

    def update(self, network: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        with torch.no_grad():
            for key, value in network.state_dict().items():
                average = self.state[key]
                if average.is_floating_point():
                    average.mul_(decay).add_(value.detach(), alpha=1.0 - decay)
                else:
                    average.copy_(value)

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of the averaged weights (a state dict)."""
        return {k: v.detach().clone() for k, v in self.state.items()}

    @contextlib.contextmanager
    def applied(self, network: torch.nn.Module) -> Iterator[None]:
        """Within the block the network holds the averaged weights; afterwards its own again."""
        live = {k: v.detach().clone() for k, v in network.state_dict().items()}
        network.load_state_dict(self.state)
        try:
            yield
        finally:
            network.load_state_dict(live)

    def to_payload(self) -> dict[str, Any]:
        return {"state": self.state, "updates": self.updates, "decay": self.decay}

    def load_payload(self, payload: dict[str, Any]) -> None:
        self.state = {k: v.clone() for k, v in payload["state"].items()}
        self.updates = int(payload["updates"])
        self.decay = float(payload["decay"])


#: Bounds of the automatic training patch side (px): the paper's 64, and a cap on the cost per step.
MIN_AUTO_PATCH_PX = 64
MAX_AUTO_PATCH_PX = 256


def training_patch_size(particle_diameter_px: float, multiple: int, smallest_image_side: int | None = None) -> int:
    """Patch side that holds the detector's receptive field plus a particle radius, as a multiple of ``multiple``.

    Then a particle near the patch centre is seen with all of its context, and the denoised input the detector
    reads there is not the patch's poorly denoised rim. Clipped to [64, 256] and to the smallest image.
    """
    from cryojoint.models.detector import RECEPTIVE_FIELD

    wanted = RECEPTIVE_FIELD + particle_diameter_px / 2.0
    side = int(math.ceil(wanted / multiple)) * multiple
    side = min(max(side, MIN_AUTO_PATCH_PX), MAX_AUTO_PATCH_PX)
    if smallest_image_side is not None:
        side = min(side, max(multiple, smallest_image_side // multiple * multiple))
    return side


def _rank_seed_sequence(seed: int, rank: int) -> np.random.SeedSequence:
    """Rank r's own stream: child r of the run's seed (independent of rank 0's, which is the seed itself)."""
    return np.random.SeedSequence(seed, spawn_key=(rank,))


def _rank_generator(seed: int, rank: int) -> np.random.Generator:
    """The patch sampler's generator on rank ``rank`` > 0: different batches on every process."""
    return np.random.default_rng(_rank_seed_sequence(seed, rank))


# ------------------------------------------------------------------------------------------ one step


def _initialise(network: torch.nn.Module, prepared: PreparedData) -> None:
    """Start from the data: the detector's bias at the prior pi, the denoiser's sigma at the measured noise."""
    if getattr(network, "detector", None) is not None:
        network.detector.initialise_prior(prepared.pi)
    if getattr(network, "denoiser", None) is not None:
        network.denoiser.initialise_noise_std(prepared.noise_std)


def _mismatch(payload: dict[str, Any], name: str, config: CryojointConfig) -> str | None:
    """Why a shipped model's weights cannot start this run's network (None: they can)."""
    source = CryojointConfig.from_dict(payload["config"], source=name).model
    if source != config.model:
        changed = [f.name for f in dataclasses.fields(source)
                   if getattr(source, f.name) != getattr(config.model, f.name)]
        return (f"its architecture differs from this run's in model.{', model.'.join(changed)} (it is the "
                f"'{source.preset}' preset)")
    weights = payload["state_dict"]
    for key, value in build_network(config).state_dict().items():
        if key not in weights:
            return f"its weights lack {key}"
        if tuple(weights[key].shape) != tuple(value.shape):
            # detect-only's detector reads the raw micrograph alone; the general model's also reads the denoised one
            return (f"its {key} has shape {tuple(weights[key].shape)}, this {config.train.mode} network's "
                    f"{tuple(value.shape)}")
    return None


def starting_weights(config: CryojointConfig) -> str:
    """``train.init`` as given; unset, the general model where its weights fit this run's network (the default
    preset, a mode with the denoiser), scratch where they cannot (another preset, detect-only)."""
    if config.train.init is not None:
        return config.train.init
    general = SHIPPED_MODEL_NAMES[0]
    return general if _mismatch(read_model_file(general), general, config) is None else "scratch"


def _load_initial_weights(network: torch.nn.Module, config: CryojointConfig, prepared: PreparedData) -> None:
    """Start from a shipped model's weights (``train.init``), the parts this mode trains; the noise level stays
    the one measured on these micrographs (the pretrained sigma is a mean over its corpus's doses)."""
    name = config.train.init
    payload = read_model_file(name)
    problem = _mismatch(payload, name, config)
    if problem:
        raise UserInputError(None, f"--init {name}: {problem} (--init scratch trains from random weights)")
    weights = payload["state_dict"]
    network.load_state_dict({key: weights[key] for key in network.state_dict()})
    if getattr(network, "denoiser", None) is not None:
        network.denoiser.initialise_noise_std(prepared.noise_std)


def _parameter_groups(network: torch.nn.Module, config: CryojointConfig) -> list[dict[str, Any]]:
    """Adam groups: the detector at ``detector_learning_rate`` (if set), everything else at ``learning_rate``."""
    rate, detector_rate = config.train.learning_rate, config.train.detector_learning_rate
    detector = getattr(network, "detector", None)
    if detector is None or detector_rate is None:
        return [{"params": list(network.parameters()), "base_lr": rate, "lr": rate}]
    detector_ids = {id(p) for p in detector.parameters()}
    rest = [p for p in network.parameters() if id(p) not in detector_ids]
    groups = [{"params": rest, "base_lr": rate, "lr": rate},
              {"params": list(detector.parameters()), "base_lr": detector_rate, "lr": detector_rate}]
    return [group for group in groups if group["params"]]  # detect-only: the detector is all there is


def _enter_stage(network: torch.nn.Module, plan: StagePlan) -> None:
    """Let exactly the parts the stage trains learn, as the mode table says (see :mod:`cryojoint.modes`)."""
    stage = plan.stage
    network.set_trainable(denoiser=stage.trains_denoiser, detector=stage.trains_detector,
                          detection_trains_denoiser=plan.detection_trains_denoiser)


def _train_step(
    trainer: torch.nn.Module,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: PatchSampler,
    config: CryojointConfig,
    prepared: PreparedData,
    plan: StagePlan,
    device: torch.device,
    network_dtype: torch.dtype | None = None,
    rehearsal: tuple[PatchSampler, PreparedData] | None = None,
) -> dict[str, float]:
    """One minibatch: the loss terms the stage uses, weighted as the mode table says, one Adam step.

    The network's passes run autocast to ``network_dtype`` (``None``: float32); the losses always in float32.

    ``trainer`` is ``network`` itself, or its data-parallel wrapper (whose forward and backward also average
    the gradients across processes); the mirrored pass reuses the same parameters, so its gradients are
    averaged along with the rest.
    """
    trainer.train()
    stage = plan.stage
    # A stage without detection samples patches uniformly: the denoiser learns from the micrographs as they are.
    images, targets, on_particle = sampler.sample_with_origin(
        config.data.batch_size, labelled_centre_fraction=None if plan.labelled_patches else 0.0)
    x = torch.from_numpy(images).to(device)
    t = torch.from_numpy(targets).to(device)
    # Dense logits over the whole patch: every pixel teaches the detector (a single centre logit per patch
    # would leave its last BatchNorm with batch_size values). No loss of the stage reads them: not computed.
    with autocast(device, network_dtype):
        output = trainer(x, dense=True, detect=plan.runs_detector)
    output = output.as_float32()
    l_denoise = l_detect = l_consistency = None
    if stage.denoise:
        weights = None if config.data.denoise_on_particle_patches else torch.from_numpy(~on_particle).to(device)
        l_denoise = losses.denoise_loss(x, output.prior_mean, output.prior_var, output.noise_var,
                                        config.loss.sigma_regulariser, sample_weights=weights,
                                        noise_std_scale=prepared.noise_std)
    if stage.detect:
        l_detect = _detection_loss(output.logits, targets, t, on_particle, prepared, config)
    if plan.runs_flipped_pass:
        with autocast(device, network_dtype):
            flipped_back = network.flipped_logits(x, output, dense=True,
                                                  share_denoiser=config.model.consistency_shares_denoiser)
        flipped_back = flipped_back.float()
        l_consistency = losses.consistency_loss(output.logits, flipped_back, config.model.sigmoid_clamp)
    elif stage.consistency:
        l_consistency = torch.zeros((), device=device)
    total = losses.stage_loss(stage, config.loss.alpha, config.loss.consistency_weight, l_denoise, l_detect,
                              l_consistency)
    l_rehearsal = None
    if rehearsal is not None and stage.detect:
        rehearsal_sampler, corpus = rehearsal
        r_images, r_targets, r_on_particle = rehearsal_sampler.sample_with_origin(config.data.batch_size)
        # Batch statistics normalise the corpus batch, but the running statistics inference uses stay the user's.
        with autocast(device, network_dtype), _running_statistics_frozen(network):
            r_output = trainer(torch.from_numpy(r_images).to(device), dense=True, detect=True)
        l_rehearsal = _detection_loss(r_output.as_float32().logits, r_targets, torch.from_numpy(r_targets).to(device),
                                      r_on_particle, corpus, config)
        total = total + config.train.rehearsal_weight * l_rehearsal
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    terms = {"loss": float(total.detach())}
    for name, value in (("loss_denoise", l_denoise), ("loss_detect", l_detect),
                        ("loss_consistency", l_consistency), ("loss_rehearsal", l_rehearsal)):
        if value is not None:
            terms[name] = float(value.detach())
    return terms


def _detection_loss(logits: torch.Tensor, targets: np.ndarray, targets_on_device: torch.Tensor,
                    on_particle: np.ndarray, prepared: PreparedData, config: CryojointConfig) -> torch.Tensor:
    """The PU detection loss of one batch of ``prepared``'s patches, with its labels' own prior."""
    pi = unlabelled_positive_fraction(targets, on_particle, prepared.density_per_px2, prepared.pixels_per_positive)
    return losses.pu_loss(logits, _targets_for(logits, targets_on_device), pi,
                          pixels_per_positive=prepared.pixels_per_positive, ge_form=config.loss.ge_form)


@contextlib.contextmanager
def _running_statistics_frozen(network: torch.nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise by the batch's statistics but leave their running averages as they are."""
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def _rehearsal_sampler(config: CryojointConfig, patch_size: int, rng: np.random.Generator
                       ) -> tuple[PatchSampler, PreparedData]:
    """Patches of the rehearsal corpus (:data:`cryojoint.corpus.REHEARSAL_CORPUS`) at the general model's scale,
    complete labels, prepared as pretraining prepares its corpus."""
    from cryojoint.corpus import REHEARSAL_CORPUS, build_corpus, pretraining_config

    corpus = build_corpus(REHEARSAL_CORPUS, progress=False)
    corpus_config = pretraining_config(corpus, steps=1)
    corpus_data = dataclasses.replace(corpus_config.data, validation_fraction=0.0)
    prepared = prepare_data(corpus.micrographs, corpus.labels, corpus_data, corpus_config.loss)
    return PatchSampler(prepared.train, patch_size, config.data.labelled_centre_fraction, rng), prepared


def _targets_for(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft labels at the positions the detector scored: the patch centre, or every pixel of a dense map."""
    if logits.shape[-2:] == targets.shape[-2:]:
        return targets
    if logits.shape[-2:] == (1, 1):
        cy, cx = targets.shape[-2] // 2, targets.shape[-1] // 2
        return targets[..., cy:cy + 1, cx:cx + 1]
    return torch.nn.functional.interpolate(targets, size=logits.shape[-2:], mode="area")


# -------------------------------------------------------------------------------------------- validation


def _stage_metric(record: dict[str, float], plan: StagePlan) -> float:
    """Validation AP while the detector learns; minus the validation denoise loss while only the denoiser does.

    Without any validation figure the step itself is the metric: the latest model is kept, none stops early.
    """
    if not any(key.startswith("validation") for key in record):
        return float(record["step"])
    if plan.validation_metric != "ap" or "validation_ap" not in record:
        return -record.get("validation_denoise_loss", math.inf)
    return record["validation_ap"]


@torch.no_grad()
def _validate(network: torch.nn.Module, prepared: PreparedData, config: CryojointConfig,
              device: torch.device, window_px: int | None = None) -> dict[str, float]:
    """Validation denoise loss and AP on held-out labels (cropped around them: scoring is where labels are)."""
    from cryojoint import losses
    from cryojoint.evaluation import average_precision
    from cryojoint.inference import candidate_peaks, run_network_on_image

    if not prepared.validation:
        return {}
    network.eval()
    denoise_losses = []
    ap_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    crop_areas: list[float] = []
    radius = prepared.particle_diameter_px / 2
    for image in prepared.validation:
        crop, offset = _validation_crop(image, prepared.particle_diameter_px)
        crop_areas.append(float(crop.size))
        result = run_network_on_image(network, crop, config, device, dense=True, window_px=window_px)
        if result.prior_mean is not None:
            y = torch.from_numpy(crop)[None, None]
            denoise_losses.append(float(losses.denoise_loss(
                y, torch.from_numpy(result.prior_mean)[None, None], torch.from_numpy(result.prior_var)[None, None],
                torch.as_tensor(result.noise_var).reshape(1, 1, 1, 1), config.loss.sigma_regulariser,
                noise_std_scale=prepared.noise_std)))
        if result.logits is not None:
            xy, scores = candidate_peaks(result.logits, radius, config.model.sigmoid_clamp)
            ap_parts.append((xy, scores, image.picks_xy - offset))
    record: dict[str, float] = {}
    if denoise_losses:
        record["validation_denoise_loss"] = float(np.mean(denoise_losses))
    if ap_parts:
        record["validation_ap"] = float(average_precision_pooled(ap_parts, radius, average_precision))
        record["validation_chance_ap"] = chance_average_precision(
            [len(truth) for _, _, truth in ap_parts], crop_areas, radius)
    return record


def _warn_if_no_better_than_chance(history: Sequence[dict[str, float]], labels_source: str | Path | None) -> None:
    """Labels that mark something else than particles (picked at another scale or on other micrographs, shifted)
    train a detector whose held-out AP never rises above what blind scores reach: say so, as no earlier check
    catches every such mistake. Hard data stays well above it: `second` 10 % (small RuvB, 600 steps, session 32)
    validation AP 0.29-0.41 against chance 0.101; real beta-galactosidase (fine-tuned with rehearsal) 0.45-0.48
    against 0.122."""
    measured = [(r["validation_ap"], r["validation_chance_ap"]) for r in history
                if r.get("validation_ap") is not None and r.get("validation_chance_ap") is not None]
    if not measured:
        return
    best, chance = max(ap for ap, _ in measured), measured[-1][1]
    if best <= chance:
        where = f"{labels_source}: " if labels_source else ""
        warnings.warn(f"{where}held-out validation AP never rose above {best:.3f}, no better than scores blind to "
                      f"the labels reach there ({chance:.3f}): the labels may not mark particles (picked on "
                      "micrographs of another size or other micrographs? see the notes above; check the picks in "
                      "`cryojoint report`), or training was too short to learn them", UserWarning, stacklevel=3)


def chance_average_precision(label_counts: Sequence[int], crop_areas_px2: Sequence[float], radius: float) -> float:
    """The AP that scores blind to where the labels are reach on the validation crops: the share of the crops' area
    within ``radius`` of a label (a candidate there matches one). A detector that has learned the particles ranks
    the labelled ones above the rest and scores above it by about 1 / (the particles' share of the area), unlabelled
    particles or not; one at or below it has learned nothing the labels mark, or marks something else."""
    total_area = float(sum(crop_areas_px2))
    label_area = float(sum(label_counts)) * math.pi * radius**2
    return min(label_area / total_area, 1.0) if total_area > 0 else 0.0


@torch.no_grad()
def _count_particles_from_label_scores(model_path: Path, prepared: PreparedData, device: torch.device,
                                      progress: bool = False) -> str:
    """Measure the particle density from where the labelled picks rank among the trained model's candidates and
    write it into ``model_path``: the automatic cut-off keeps that many.

    The label density needs the share of the region's particles the user picked (``--label-completeness``) and
    a region outlined by the picks; a few picks spread over a crowded field break both (5 picks per real
    β-galactosidase micrograph made 149 particles expected of 679, F1 0.32 at the cut-off). Where the labels
    rank needs neither. The candidates are found on the training micrographs as prediction finds them (same
    windows, NMS radius).
    """
    from cryojoint.inference import candidate_peaks, run_network_on_image
    from cryojoint.picking import count_from_label_scores
    from cryojoint.progress import counted_progress

    model = load_model(model_path, device)
    window = model.meta.get("training_patch_px")
    labelled = [im for im in [*prepared.train, *prepared.validation] if len(im.picks_xy)]
    radius = model.config.predict.nms_radius_px or prepared.particle_diameter_px / 2
    candidates = []
    with counted_progress(len(labelled), progress, "count particles") as advance:
        for image in labelled:
            result = run_network_on_image(model.network, image.image, model.config, device, keep=("logits",),
                                          window_px=None if window is None else int(window))
            candidates.append(candidate_peaks(result.logits, radius, model.config.model.sigmoid_clamp))
            advance()
    count = count_from_label_scores(candidates, [im.picks_xy for im in labelled], prepared.particle_diameter_px / 2)
    if count is None:
        save_model(model_path, model.network, model.config, {**model.meta, "count_pending": False})
        return (f"too few labelled picks were found among the candidates to count the particles: the cut-off "
                f"keeps the prior's {prepared.expected_particles:.0f} per micrograph (pass --threshold or "
                "--expected-particles)")
    # A poor picker counts its false peaks too: never more particles than discs of the diameter fit.
    density = min(count / float(sum(im.image.size for im in labelled)),
                  close_packed_density(prepared.particle_diameter_px))
    expected = density * prepared.mean_area_px2
    save_model(model_path, model.network, model.config,
               {**model.meta, "expected_particles": expected, "expected_density_per_px2": density,
                "expected_particles_from": "label scores", "count_pending": False,
                "expected_particles_prior": float(prepared.expected_particles)})
    return (f"expected particles per micrograph measured from the labelled picks' scores: {expected:.0f} (the "
            "automatic cut-off keeps that many)")


def average_precision_pooled(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], radius: float,
                             average_precision_fn: Any) -> float:
    """AP over several images: picks are matched within their own image, then ranked together."""
    if len(parts) == 1:
        xy, scores, truth = parts[0]
        return float(average_precision_fn(xy, scores, truth, radius))
    # Shift images apart so that no pick can match a particle of another image, then score once.
    shifted_xy, shifted_truth, all_scores = [], [], []
    offset = 0.0
    for xy, scores, truth in parts:
        shifted_xy.append(xy + [offset, 0.0])
        shifted_truth.append(truth + [offset, 0.0])
        all_scores.append(scores)
        span = max(xy[:, 0].max(initial=0.0), truth[:, 0].max(initial=0.0))
        offset += span + 4 * radius
    return float(average_precision_fn(np.concatenate(shifted_xy), np.concatenate(all_scores),
                                      np.concatenate(shifted_truth), radius))


def _validation_crop(image: LabelledImage, diameter: float) -> tuple[np.ndarray, np.ndarray]:
    margin = int(VALIDATION_MARGIN_DIAMETERS * diameter)
    ny, nx = image.image.shape
    x0 = int(max(np.floor(image.picks_xy[:, 0].min()) - margin, 0))
    x1 = int(min(np.ceil(image.picks_xy[:, 0].max()) + margin + 1, nx))
    y0 = int(max(np.floor(image.picks_xy[:, 1].min()) - margin, 0))
    y1 = int(min(np.ceil(image.picks_xy[:, 1].max()) + margin + 1, ny))
    return np.ascontiguousarray(image.image[y0:y1, x0:x1]), np.array([x0, y0], dtype=float)


# ------------------------------------------------------------------------------------ stages, saving


def _begin_next_stage(network: torch.nn.Module, best_weights: dict[str, torch.Tensor], state: _State,
                      next_plan: StagePlan) -> _State:
    """Sequential mode: restore the best weights of the stage that ended, let the next stage's parts learn (the
    denoiser freezes), reset the early-stopping record (the next stage is judged by its own metric)."""
    network.load_state_dict(best_weights)
    _enter_stage(network, next_plan)
    state.stage += 1
    state.best_metric = -math.inf
    state.bad_evaluations = 0
    state.stage_metrics = []
    return state


def smoothed_metric(values: Sequence[float], window: int) -> float:
    """Mean of the last ``window`` validation figures: the figure models are chosen and stopped by.

    Validation AP on held-out *partial* labels swings by ±0.1 between passes; a single lucky pass early in
    training would otherwise be kept as the best model (measured: one such pick had an undertrained denoiser).
    """
    if not values:
        raise ValueError("no validation figures")
    recent = list(values)[-max(window, 1):]
    return float(np.mean(recent))


def _as_config(config: CryojointConfig | dict[str, Any] | str | Path | None) -> CryojointConfig:
    """A config object, a dict of sections (as the YAML holds them) or a YAML path: what a notebook hands over."""
    if config is None:
        return default_config()
    if isinstance(config, dict):
        return CryojointConfig.from_dict(config, source="config")
    if isinstance(config, (str, Path)):
        return CryojointConfig.load_yaml(config)
    if not isinstance(config, CryojointConfig):
        raise UserInputError("config", f"expected a CryojointConfig, a dict of sections or a YAML path, got "
                             f"{type(config).__name__}")
    return config


def _as_micrograph_inputs(micrographs: Any) -> list[str | Path | Micrograph]:
    """Paths expanded as the CLI expands them (a folder or glob given as one string was read letter by letter);
    arrays made into micrographs named by position, as :func:`cryojoint.predict` names them."""
    from cryojoint.io.inputs import expand_micrographs

    items = [micrographs] if isinstance(micrographs, (str, Path, np.ndarray, Micrograph)) else list(micrographs)
    result: list[str | Path | Micrograph] = []
    for index, item in enumerate(items):
        if isinstance(item, Micrograph):
            result.append(item)
        elif isinstance(item, np.ndarray):
            result.append(Micrograph.from_array(item, index))
        elif isinstance(item, (str, Path)):
            result += expand_micrographs([str(item)]).paths
        else:
            raise UserInputError(f"micrograph {index}", f"is a {type(item).__name__}: give MRC paths, Micrograph "
                                 "objects or 2D arrays")
    return result


def _size_reader(config: CryojointConfig, device: torch.device, progress: bool) -> SizeReader:
    """The starting model's reading of the particle size (:mod:`cryojoint.size_reading`), for when the labels' blob
    reading found the mean particle's core: the starting model works at its own particle size, so the bin matters."""

    def read(labelled: Sequence[tuple[Micrograph, np.ndarray]], blob_px: float, largest_px: float) -> float | None:
        # Loading a model draws its random initial weights first: training's random stream stays as it was.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            reading = read_size_with_model(load_model(str(config.train.init), device), labelled, blob_px,
                                           config.data.particle_contrast, largest_px, device, progress)
        return None if reading is None else reading.diameter_px

    return read


def _what_it_learns_from(prepared: PreparedData) -> dict[str, Any]:
    return {"downsample": round(float(prepared.downsample), 6),
            "particle_diameter_px": round(float(prepared.particle_diameter_px), 6),
            "particle_contrast": prepared.particle_contrast,
            "train_micrographs": sorted(im.name for im in prepared.train),
            "validation_micrographs": sorted(im.name for im in prepared.validation)}


def _check_resumed_on_the_same_data(run_dir: Path, state: _State, prepared: PreparedData) -> None:
    """A resume goes on training the checkpoint's weights: on the particle size, bin and micrographs they began with."""
    now = _what_it_learns_from(prepared)
    if state.began_with is None:  # a checkpoint from before this record: nothing to compare with
        state.began_with = now
        return
    began = state.began_with
    words = {"downsample": lambda v: f"binned {v:g}x",
             "particle_diameter_px": lambda v: f"particle diameter {v:.4g} px (network)",
             "particle_contrast": lambda v: f"{v} particles",
             "train_micrographs": lambda v: f"{len(v)} training micrograph(s)",
             "validation_micrographs": lambda v: f"{len(v)} validation micrograph(s)"}
    before_recorded = {"particle_contrast": AS_RECORDED}  # checkpoints from before it was recorded trained as recorded
    for key, describe in words.items():
        if key not in began and key in before_recorded:
            began = {**began, key: before_recorded[key]}
        if key in began and began[key] != now[key]:  # another key absent: recorded before it was compared
            then, given = describe(began.get(key)), describe(now[key])
            if then == given:  # the same count of other micrographs
                then = f"{then} ({', '.join(began.get(key)[:3])}, ...)"
                given = f"{given} ({', '.join(now[key][:3])}, ...)"
            raise UserInputError(run_dir, f"its training began with {then}, resumed now with {given}: --resume "
                                 "goes on with the micrographs, labels and options the run began with (or train "
                                 "into another --out)")


def _model_meta(prepared: PreparedData, command_line: str, config: CryojointConfig,
                patch_size_px: int, network_dtype: torch.dtype | None = None) -> dict[str, Any]:
    return {
        "training_network_dtype": dtype_name(network_dtype),
        "training_patch_px": int(patch_size_px),  # chosen from the particle size unless the config set it
        "particle_diameter_px": float(prepared.particle_diameter_px),
        "particle_diameter_estimated": bool(prepared.diameter_was_estimated),
        "particle_contrast": prepared.particle_contrast,  # "bright": the network was given negated micrographs
        "expected_particles": float(prepared.expected_particles),
        "expected_particles_estimated": bool(prepared.expected_was_estimated),
        "expected_density_per_px2": float(prepared.expected_particles / prepared.mean_area_px2),
        "pi": float(prepared.pi),
        "downsample": float(prepared.downsample),
        # Å/px of the micrographs as given (None: not in their headers, or not one size): predict checks its inputs'.
        "input_pixel_size_angstrom": _input_pixel_size(prepared),
        "mode": config.train.mode,
        "init": config.train.init,
        "command_line": command_line,
        "train_micrographs": [im.name for im in prepared.train],
        "validation_micrographs": [im.name for im in prepared.validation],
    }


def _input_pixel_size(prepared: PreparedData) -> float | None:
    """The training micrographs' one pixel size as given (before binning), or None."""
    sizes = [im.pixel_size / prepared.downsample for im in prepared.train + prepared.validation if im.pixel_size]
    if not sizes or len(sizes) < len(prepared.train) + len(prepared.validation):
        return None
    return float(np.median(sizes)) if max(sizes) <= 1.01 * min(sizes) else None


def _save_checkpoint(path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     rng: np.random.Generator, state: _State, best_weights: dict[str, torch.Tensor],
                     group: DistributedContext, average: WeightAverage) -> None:
    """Everything a bit-exact resume needs; with several processes, every rank's random state (gathered to
    rank 0, which alone writes) and a digest of every rank's parameters (equal unless the replicas drifted)."""
    rank_random_states = distributed.gather_objects(
        {"numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, group)
    digests = distributed.gather_objects(distributed.parameter_digest(network), group)
    if not group.is_main:
        return
    if len(set(digests)) > 1:
        warnings.warn(f"training processes hold different parameters at step {state.step} "
                      "(data-parallel replicas drifted)", RuntimeWarning, stacklevel=2)
    payload = {
        "kind": "cryojoint-checkpoint",
        "network": network.state_dict(),
        "best_weights": best_weights,
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": rng.bit_generator.state,
        "state": {k: v for k, v in vars(state).items()},
        "world_size": group.world_size,
        "weight_average": average.to_payload(),
    }
    if group.enabled:
        payload["rank_random_states"] = rank_random_states
        payload["parameter_digests"] = digests
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     rng: np.random.Generator, device: torch.device, stages: Sequence[TrainingStage],
                     group: DistributedContext, seed: int, average: WeightAverage,
                     ) -> tuple[_State, dict[str, torch.Tensor], list[str]]:
    """Restore network, optimizer, loop state and this rank's random state; return notes for the user."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise UserInputError(path, f"cannot read checkpoint ({err.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("kind") != "cryojoint-checkpoint":
        raise UserInputError(path, "not a cryojoint training checkpoint")
    state = _State(**payload["state"])
    if state.stage >= len(stages):
        raise UserInputError(path, f"checkpoint is from another training mode than '{stages[0].name}'")
    try:
        network.load_state_dict(payload["network"])
        optimizer.load_state_dict(payload["optimizer"])
        if "weight_average" in payload:
            average.load_payload(payload["weight_average"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserInputError(path, f"checkpoint does not fit this configuration ({err})") from None
    notes: list[str] = []
    saved_world = int(payload.get("world_size", 1))
    per_rank = payload.get("rank_random_states") or [{"numpy_rng": payload["numpy_rng"],
                                                       "torch_rng": payload["torch_rng"]}]
    if saved_world != group.world_size:
        notes.append(f"checkpoint written by {saved_world} process(es), resumed on {group.world_size}: "
                     "the batches differ from an uninterrupted run")
    if group.rank < len(per_rank):
        torch.set_rng_state(per_rank[group.rank]["torch_rng"].cpu())
        rng.bit_generator.state = per_rank[group.rank]["numpy_rng"]
    else:  # a process the checkpoint did not have: a fresh stream, distinct from every earlier one
        fresh = np.random.SeedSequence(seed, spawn_key=(group.rank, state.step))
        rng.bit_generator.state = np.random.default_rng(fresh).bit_generator.state
        torch.manual_seed(int(fresh.generate_state(1)[0]))
    return state, payload["best_weights"], notes


def _write_metrics(path: Path, history: list[dict[str, float]]) -> None:
    keys = list(dict.fromkeys(k for record in history for k in record))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


class _TensorBoardLog:
    """Every validation record's numbers as TensorBoard scalars, when the optional package is installed.

    metrics.csv stays the record; this is for users who watch runs in TensorBoard. A resumed run purges the
    events the killed run wrote after its last checkpoint, so the curves continue without a fold.
    """

    def __init__(self, log_dir: Path, enabled: bool, resume_step: int | None) -> None:
        self.writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            return
        if resume_step is None and log_dir.exists():
            shutil.rmtree(log_dir)  # a new run (its model.pt may be overwritten): drop the old run's curves
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=resume_step)

    def __enter__(self) -> _TensorBoardLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.writer is not None:
            self.writer.close()

    def log(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, int(record["step"]))
        self.writer.flush()


class _ProgressBar:
    """A rich progress bar with the running loss terms and ETA; silent when disabled (tests, notebooks)."""

    def __init__(self, total: int, enabled: bool, initial: int = 0) -> None:
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            from cryojoint.progress import output_console

            self.progress = Progress(TextColumn("[bold]train"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.description}"),
                                     console=output_console())
            self.task = self.progress.add_task("", total=total, completed=initial)

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)

    def update(self, step: int, running: dict[str, float]) -> None:
        if self.enabled:
            text = " ".join(f"{k.removeprefix('loss_')}={v:.4f}" for k, v in running.items())
            self.progress.update(self.task, completed=step, description=text)

    def note(self, text: str) -> None:
        if self.enabled:
            self.progress.console.print(text)

    def log(self, record: dict[str, float]) -> None:
        if self.enabled:
            shown = {k: v for k, v in record.items() if k.startswith("validation")}
            text = ", ".join(f"{k}={v:.4f}" for k, v in shown.items())
            self.progress.console.print(f"step {int(record['step'])}: {text}")

