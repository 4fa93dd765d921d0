"""Speed and memory of what users run: the shipped training loop and ``cryojoint predict``, measured beside
Topaz and an earlier revision of cryojoint in one run on the same box.

Why not the network alone: a step of the shipped training loop also samples and augments patches, updates the
weight average and, every ``eval_every`` steps, validates and writes a checkpoint; a user's seconds per step
include all of it (the issue: ~2 s per default step from a fresh clone, where the network alone had measured
0.32 s on a quiet box). Inference is timed end to end (read, predict, write), and ``cryojoint predict`` runs in
its own process, so its peak RSS is its own.

What it runs (sizes: ``FULL``; ``--quick`` takes ``QUICK``, a smoke test):

1. Data: ribosome micrographs at 10 % dose simulated with :mod:`cryojoint.simulation`, cached under
   ``benchmarks/.cache/speed/data/``: a set of 1024² micrographs, one 4096² and one 1200x1240 (non-square).
   (``--quick``: 512² to train on, labelled all over, since one label region of a small micrograph holds too
   few picks to measure the particle size; 256² to predict.)
2. Training: :func:`cryojoint.training.train` with the default config for ``--train-steps`` steps, twice per
   repeat: once with validation and checkpoints beyond the last step (pure steps, timed between successive
   steps inside the loop) and once with both every ``steps / validations_per_run`` steps (what one validation
   pass and one checkpoint cost). The loop's own functions are wrapped with timers, not replaced. From these:
   the amortised step at the default ``eval_every`` / ``checkpoint_every``, and seconds per step of the whole
   call (set-up included). Patch sampling alone, the shipped step on a fixed batch (the network step) and the
   weight average show what lies outside the network.
3. Inference: :func:`cryojoint.prediction.predict_files` in this process, per micrograph (read, predict,
   write; the first is warm-up and left out), on 1024² micrographs and the non-square one (per-pixel speed);
   ``cryojoint predict`` as a subprocess, per micrograph from the completion times of its candidate files
   (written last for each micrograph); its peak RSS on the 4096² micrograph and on 1 vs ``--rss-micrographs``
   (through a small wrapper process: spawned from this one, a command's ``ru_maxrss`` would start at ours).
4. Peers, interleaved with our ``cryojoint predict`` run repeat by repeat: ``topaz denoise`` (Topaz-Denoise) and
   ``topaz preprocess`` + ``topaz extract`` with Topaz's shipped ``resnet8_u32`` weights (the architecture
   ``topaz train`` fits by default; scoring costs the same whatever the weights), run by
   ``benchmarks/peers/topaz``; with ``--compare-rev REV``, ``cryojoint predict`` of that git revision from a
   temporary worktree.
5. Tables: ``benchmarks/results/<date>-model-speed.md`` and ``.json``: median and min, wall-clock and CPU
   seconds per thread, the load average at start and end, and ratios (ours / Topaz, ours / REV).

Not a test: timings depend on the machine and its load. CPU seconds per thread are inflated much less than
wall-clock by other jobs on a shared box; ratios within one run compare.

Example::

    python benchmarks/bench_model_speed.py --compare-rev HEAD~1
    python benchmarks/bench_model_speed.py --quick --skip-topaz --out /tmp/speed   # smoke test, a few minutes
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import hashlib
import inspect
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from cryojoint import prediction, training  # noqa: E402
from cryojoint.config import TrainConfig, default_config  # noqa: E402

SOURCE_DIR = REPO_ROOT / "src"
CACHE = REPO_ROOT / "benchmarks" / ".cache" / "speed"
RESULTS = REPO_ROOT / "benchmarks" / "results"

#: Simulated data: the benchmark's structure at the dose of the issue's figures.
PRESET = "ribosome"
DOSE_FRACTION = 0.1
DOSE_FOLDER = "dose_010"
#: The simulator always makes the full dose as well (the sum the low doses are drawn from).
SIMULATED_DOSES = (1.0, DOSE_FRACTION)
DATA_SEED = 0

#: The issue's goals: a training step at the default patch, and predict's peak RSS on a 4096² micrograph.
GOAL_TRAIN_STEP_S = 0.30
GOAL_PREDICT_PEAK_RSS_MIB = 1.5e9 / 2 ** 20  # 1.5 GB
#: Never reached: the run measuring pure steps sets its intervals (and checkpoint clock) beyond the last step.
NEVER_SECONDS = 1e9
#: Steps of a model trained with the compared revision when it cannot load ours (speed does not need more).
REVISION_MODEL_STEPS = 10
#: Topaz: shipped weights of the architecture ``topaz train`` fits by default (resnet8, 32 units).
TOPAZ_EXTRACT_MODEL = "resnet8_u32"
#: A 1-minute load average above this share of the cores marks the run as contended in the table.
LOADED_SHARE_OF_CORES = 0.5
KIB_PER_MIB = 1024.0
MICRO = 1e-6


@dataclass(frozen=True)
class Sizes:
    """How much each measurement runs; ``FULL`` for the tables, ``QUICK`` for a smoke test."""

    train_px: int  # side of the square micrographs trained on
    infer_px: int  # side of the square micrographs predicted (the same set as training's when equal)
    train_micrographs: int
    infer_micrographs: int  # predicted per repeat; the first of each run is warm-up
    rss_micrographs: int  # "many" of the peak-RSS check 1 vs many
    large_px: int  # the peak-RSS check's large micrograph (the issue: 4096²)
    non_square_px: tuple[int, int]  # (height, width) of the per-pixel check
    train_steps: int
    warmup_steps: int  # steps of each training run left out of the step times
    micro_calls: int  # timed calls per repeat of sampling / network step / weight average alone
    repeats: int
    validations_per_run: int  # validation passes (and checkpoints) of the run that measures them, last included
    # Partial labels over the whole micrograph instead of the simulator's one region: small micrographs hold too
    # few picks in one region for the particle size to be measured from them.
    label_whole_micrograph: bool = False


FULL = Sizes(train_px=1024, infer_px=1024, train_micrographs=6, infer_micrographs=4, rss_micrographs=20, large_px=4096,
             non_square_px=(1200, 1240), train_steps=40, warmup_steps=3, micro_calls=20, repeats=3,
             validations_per_run=4)
QUICK = Sizes(train_px=512, infer_px=256, train_micrographs=3, infer_micrographs=2, rss_micrographs=2,
              large_px=384, non_square_px=(256, 288), train_steps=6, warmup_steps=1, micro_calls=3, repeats=1,
              validations_per_run=2, label_whole_micrograph=True)


# ------------------------------------------------------------------------------------------- measurements


@dataclass
class Call:
    """One call of a wrapped function: wall-clock and process CPU clock at its start and end."""

    start: float
    end: float
    cpu_start: float
    cpu_end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def cpu(self) -> float:
        return self.cpu_end - self.cpu_start


class CallRecorder:
    """Wrap functions of a module with timers inside a ``with`` block; the functions themselves still run.

    Why wrap and not copy: the module's own loop calls them by their global names, so what is timed is the
    shipped code path. The first call's arguments are kept (the training loop's sampler, network, ...).
    """

    def __init__(self, module: types.ModuleType, names: Sequence[str]) -> None:
        self.module = module
        self.names = tuple(names)
        self.calls: dict[str, list[Call]] = {name: [] for name in self.names}
        self.first_arguments: dict[str, inspect.BoundArguments] = {}
        self._originals: dict[str, Callable[..., Any]] = {}

    def _wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if name not in self.first_arguments:
                self.first_arguments[name] = inspect.signature(function).bind(*args, **kwargs)
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.calls[name].append(Call(start, time.perf_counter(), cpu_start, time.process_time()))

        return timed

    def __enter__(self) -> CallRecorder:
        for name in self.names:
            self._originals[name] = getattr(self.module, name)
            setattr(self.module, name, self._wrap(name, self._originals[name]))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for name, function in self._originals.items():
            setattr(self.module, name, function)


@dataclass
class Samples:
    """Wall-clock and CPU seconds of repeated measurements of one thing (CPU: process-wide, all threads)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float | None = None) -> None:
        self.wall.append(wall)
        if cpu is not None:
            self.cpu.append(cpu)

    def extend(self, other: Samples) -> None:
        self.wall += other.wall
        self.cpu += other.cpu


@dataclass
class Report:
    """Everything the tables show; ``measurements`` keeps insertion order (the table's row order)."""

    threads: int
    meta: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def timed(self, key: str, group: str, label: str, samples: Samples, note: str | None = None,
              **extra: Any) -> None:
        """A row of seconds: median and min wall-clock, median CPU seconds per thread."""
        if not samples.wall:
            self.notes.append(f"{label}: nothing to time in this run (no row)")
            return
        cpu_per_thread = [c / self.threads for c in samples.cpu]
        self.measurements[key] = {
            "group": group, "label": label, "median_s": statistics.median(samples.wall),
            "min_s": min(samples.wall), "median_cpu_per_thread_s":
                statistics.median(cpu_per_thread) if cpu_per_thread else None,
            "n": len(samples.wall), "samples_s": [round(w, 4) for w in samples.wall], "note": note, **extra}

    def derived(self, key: str, group: str, label: str, median_s: float, min_s: float, note: str,
                **extra: Any) -> None:
        """A row computed from other rows (its note says how)."""
        self.measurements[key] = {"group": group, "label": label, "median_s": median_s, "min_s": min_s,
                                  "median_cpu_per_thread_s": None, "n": None, "derived": True, "note": note,
                                  **extra}

    def memory(self, key: str, label: str, run: ProcessRun, **extra: Any) -> None:
        self.measurements[key] = {"group": "memory", "label": label, "peak_rss_mib": run.peak_rss_mib,
                                  "wall_s": run.wall_s, "cpu_per_thread_s": run.cpu_s / self.threads, **extra}

    def ratio(self, key: str, label: str, numerator: str, denominator: str | float, what: str = "median_s",
              ) -> None:
        """``numerator / denominator`` of two rows' medians (a number as denominator: a fixed goal)."""
        top = self.measurements.get(numerator, {}).get(what)
        bottom = (denominator if isinstance(denominator, (int, float))
                  else self.measurements.get(denominator, {}).get(what))
        if top is None or not bottom:
            return
        self.ratios[key] = {"label": label, "value": top / bottom, "numerator": numerator,
                            "denominator": denominator}


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SpeedData:
    """Cached simulated micrographs: training and predicted square sets, one large, one non-square."""

    train: list[Path]
    test: list[Path]
    train_labels: Path
    large: Path
    non_square: Path


def _simulated(cache: Path, shape: tuple[int, int], count: int, log: Callable[[str], None],
               label_whole_micrograph: bool = False) -> Path:
    """Simulate ``count`` micrographs of ``shape`` once (cached by their settings); returns the data folder."""
    from cryojoint.io.coords import write_coordinates
    from cryojoint.simulation import SIMULATOR_VERSION, SimulationConfig, simulate, write_dataset

    changes = {"label_region_px": None} if label_whole_micrograph else {}
    config = SimulationConfig.for_preset(PRESET, seed=DATA_SEED, n_micrographs=count, size_px=shape,
                                         dose_fractions=SIMULATED_DOSES, **changes)
    # Keyed on the simulator's version too: the same settings give other micrographs after a simulator change.
    settings = {**config.to_dict(), "simulator_version": SIMULATOR_VERSION}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    folder = cache / "data" / f"{PRESET}-{shape[0]}x{shape[1]}px-{count}mic-seed{DATA_SEED}-{digest}"
    marker = folder / "speed_dataset.json"
    if marker.exists():
        return folder
    log(f"simulating {count} x {shape[0]}x{shape[1]} {PRESET} micrographs into {folder}")
    started = time.perf_counter()
    dataset = simulate(config=config)
    write_dataset(dataset, folder, overwrite=True)
    write_coordinates(dataset.labels[["micrograph", "x", "y"]], folder / "labels.star")
    marker.write_text(json.dumps({"names": [m.name for m in dataset.clean], "seconds":
                                  time.perf_counter() - started, "n_labels": len(dataset.labels)}, indent=1))
    return folder


def ensure_data(cache: Path, sizes: Sizes, log: Callable[[str], None]) -> SpeedData:
    """The three data sets of the run, simulated on first use; training labels for the training set only."""
    from cryojoint.io.coords import read_coordinates, write_coordinates

    predicted = max(sizes.infer_micrographs, sizes.rss_micrographs)
    shared = sizes.infer_px == sizes.train_px
    count = sizes.train_micrographs + (predicted if shared else 0)
    train_dir = _simulated(cache, (sizes.train_px,) * 2, count, log, sizes.label_whole_micrograph)
    names = json.loads((train_dir / "speed_dataset.json").read_text())["names"]
    train_names = names[:sizes.train_micrographs]
    train_labels = train_dir / f"train_labels_{sizes.train_micrographs}.star"
    if not train_labels.exists():
        labels = read_coordinates(train_dir / "labels.star")
        write_coordinates(labels[labels["micrograph"].isin(train_names)], train_labels)
    if shared:
        infer_dir, infer_names = train_dir, names[sizes.train_micrographs:]
    else:
        infer_dir = _simulated(cache, (sizes.infer_px,) * 2, predicted, log)
        infer_names = json.loads((infer_dir / "speed_dataset.json").read_text())["names"]
    large_dir = _simulated(cache, (sizes.large_px, sizes.large_px), 1, log)
    odd_dir = _simulated(cache, sizes.non_square_px, 1, log)
    return SpeedData([train_dir / DOSE_FOLDER / f"{name}.mrc" for name in train_names],
                     [infer_dir / DOSE_FOLDER / f"{name}.mrc" for name in infer_names], train_labels,
                     _single(large_dir), _single(odd_dir))


def _single(folder: Path) -> Path:
    """A one-micrograph set's micrograph under a name of its own (``predict`` wants unique names in a run)."""
    link = folder / f"single_{folder.name.split('px-')[0]}.mrc"
    if not link.exists():
        link.symlink_to(Path(DOSE_FOLDER) / "mic_0000.mrc")
    return link


# --------------------------------------------------------------------------------------------- training


#: Functions of cryojoint.training the loop calls by name; wrapped with timers.
TRAINING_TIMED = ("_train_step", "_validate", "_save_checkpoint", "save_model")


@dataclass
class TrainingRun:
    """What one ``train()`` call's recorded calls say."""

    model_path: Path
    steps: int
    total: Call
    recorder: CallRecorder
    validation_steps: set[int]


def train_once(data: SpeedData, run_dir: Path, steps: int, eval_every: int | None) -> TrainingRun:
    """The shipped ``train()`` with the default config; ``eval_every=None``: no validation or checkpoint before
    the last step (the loop still validates and saves at its end, as every run does)."""
    config = default_config()
    interval = eval_every or steps + 1
    config.train.steps = steps
    config.train.eval_every = interval
    config.train.checkpoint_every = interval
    config.train.checkpoint_seconds = NEVER_SECONDS  # the time-based checkpoint is accounted for separately
    cpu_start, start = time.process_time(), time.perf_counter()
    with CallRecorder(training, TRAINING_TIMED) as recorder:
        result = training.train(data.train, data.train_labels, run_dir, config, overwrite=True, progress=False,
                                command_line="benchmarks/bench_model_speed.py")
    total = Call(start, time.perf_counter(), cpu_start, time.process_time())
    validation_steps = {s for s in range(1, steps + 1) if s % interval == 0 or s == steps}
    return TrainingRun(result.model_path, steps, total, recorder, validation_steps)


@dataclass
class LoopTimes:
    """Step intervals and one-off costs read from training runs, pooled over repeats."""

    loop_step: Samples = field(default_factory=Samples)  # start of step k to start of step k+1, nothing between
    step_call: Samples = field(default_factory=Samples)  # the shipped _train_step call (sampling + network)
    plain_gap: Samples = field(default_factory=Samples)  # end of a step to the next start, nothing due between
    validation_gap: Samples = field(default_factory=Samples)  # the same with a validation pass, checkpoint removed
    validate_call: Samples = field(default_factory=Samples)
    save_model_call: Samples = field(default_factory=Samples)
    checkpoint_call: Samples = field(default_factory=Samples)
    setup: Samples = field(default_factory=Samples)  # train() called to the first step
    wind_down: Samples = field(default_factory=Samples)  # the last step to train() returning
    whole_per_step: Samples = field(default_factory=Samples)  # train() call / steps

    def read(self, run: TrainingRun, warmup: int) -> None:
        steps = run.recorder.calls["_train_step"]
        checkpoints = run.recorder.calls["_save_checkpoint"]
        for name, samples in (("_validate", self.validate_call), ("save_model", self.save_model_call),
                              ("_save_checkpoint", self.checkpoint_call)):
            for call in run.recorder.calls[name]:
                samples.add(call.seconds, call.cpu)
        for index, call in enumerate(steps):
            step = index + 1
            if step > warmup:
                self.step_call.add(call.seconds, call.cpu)
            if index + 1 >= len(steps) or step <= warmup:
                continue
            following = steps[index + 1]
            in_gap = [c for c in checkpoints if call.end <= c.start < following.start]
            gap = following.start - call.end - sum(c.seconds for c in in_gap)
            gap_cpu = following.cpu_start - call.cpu_end - sum(c.cpu for c in in_gap)
            if step in run.validation_steps:
                self.validation_gap.add(gap, gap_cpu)
            elif not in_gap:
                self.plain_gap.add(gap, gap_cpu)
                self.loop_step.add(following.start - call.start, following.cpu_start - call.cpu_start)
        if steps:
            self.setup.add(steps[0].start - run.total.start, steps[0].cpu_start - run.total.cpu_start)
            self.wind_down.add(run.total.end - steps[-1].end, run.total.cpu_end - steps[-1].cpu_end)
        self.whole_per_step.add(run.total.seconds / run.steps, run.total.cpu / run.steps)


class _FixedBatch:
    """Stands in for the patch sampler: the same batch every call, so the shipped step times the network."""

    def __init__(self, batch: tuple[Any, Any, Any]) -> None:
        self.batch = batch

    def sample_with_origin(self, batch_size: int, labelled_centre_fraction: float | None = None
                           ) -> tuple[Any, Any, Any]:
        return tuple(part.copy() for part in self.batch)  # type: ignore[return-value]


def _timed_calls(function: Callable[[], Any], calls: int, warmup: int) -> Samples:
    samples = Samples()
    for index in range(warmup + calls):
        start, cpu_start = time.perf_counter(), time.process_time()
        function()
        if index >= warmup:
            samples.add(time.perf_counter() - start, time.process_time() - cpu_start)
    return samples


def micro_timings(run: TrainingRun, calls: int, warmup: int) -> tuple[dict[str, Samples], dict[str, Any]]:
    """Parts of a step on the objects the loop used: sampling alone, the network step alone, the weight average.

    The network step is the shipped ``_train_step`` given a fixed batch (forward, losses, backward, Adam).
    """
    arguments = run.recorder.first_arguments["_train_step"].arguments
    sampler, plan, config = arguments["sampler"], arguments["plan"], arguments["config"]
    centre_fraction = None if plan.labelled_patches else 0.0
    batch_size = config.data.batch_size

    def sample() -> Any:
        return sampler.sample_with_origin(batch_size, labelled_centre_fraction=centre_fraction)

    fixed = {**arguments, "sampler": _FixedBatch(sample())}
    step = functools.partial(training._train_step, **fixed)
    network = arguments["network"]
    average = training.WeightAverage(network, config.train.weight_averaging_half_life * config.train.steps)
    timings = {"sampling": _timed_calls(sample, calls, warmup), "network_step": _timed_calls(step, calls, warmup),
               "weight_average": _timed_calls(lambda: average.update(network), calls, warmup)}
    facts = {"patch_px": int(sampler.patch_size), "batch_size": int(batch_size),
             "parameters": int(sum(p.numel() for p in network.parameters()))}
    return timings, facts


def measure_training(report: Report, data: SpeedData, work: Path, sizes: Sizes, steps: int, repeats: int,
                     log: Callable[[str], None]) -> Path:
    """Pure and validating runs of the shipped loop per repeat, then the parts of a step; returns a model."""
    group = "training"
    report.meta["load_average_training_start"] = _load_average()
    # The validation after the last step is not followed by a step: one fewer than validations_per_run is timed.
    eval_every = max(1, steps // sizes.validations_per_run)
    loop = LoopTimes()
    micro: dict[str, Samples] = {}
    facts: dict[str, Any] = {}
    model_path = None
    for repeat in range(repeats):
        for label, every in (("pure", None), ("validating", eval_every)):
            log(f"training: repeat {repeat + 1}/{repeats}, {steps} steps, {label}")
            run = train_once(data, work / f"train-{label}-{repeat}", steps, every)
            loop.read(run, sizes.warmup_steps)
            model_path = model_path or run.model_path
            if repeat == repeats - 1 and label == "pure":
                parts, facts = micro_timings(run, sizes.micro_calls, warmup=1)
                for key, samples in parts.items():
                    micro.setdefault(key, Samples()).extend(samples)
            del run
    assert model_path is not None
    defaults = default_config().train
    report.meta["training"] = {**facts, "steps_per_run": steps, "validation_every_in_measuring_run": eval_every,
                               "warmup_steps_left_out": sizes.warmup_steps, "train_micrographs": len(data.train),
                               "default_eval_every": defaults.eval_every,
                               "default_checkpoint_every": defaults.checkpoint_every,
                               "default_checkpoint_seconds": defaults.checkpoint_seconds,
                               "default_steps": defaults.steps}
    patch = f"{facts.get('patch_px')}² patches, batch {facts.get('batch_size')}"
    report.timed("train_loop_step", group, f"loop step, no validation/checkpoint due ({patch})", loop.loop_step,
                 "start of one step to the start of the next inside train()", goal_s=GOAL_TRAIN_STEP_S)
    report.timed("train_step_call", group, "shipped _train_step (sampling + network + Adam)", loop.step_call)
    report.timed("sampling", group, "patch sampling alone (PatchSampler.sample_with_origin, one batch)",
                 micro.get("sampling", Samples()))
    report.timed("network_step", group, "network step alone (_train_step on a fixed batch)",
                 micro.get("network_step", Samples()))
    report.timed("weight_average", group, "weight average update alone", micro.get("weight_average", Samples()))
    report.timed("loop_gap", group, "in the loop between steps (weight average, bookkeeping)", loop.plain_gap)
    plain_gap = _median(loop.plain_gap.wall) or 0.0
    plain_gap_cpu = _median(loop.plain_gap.cpu) or 0.0
    validation = Samples([g - plain_gap for g in loop.validation_gap.wall],
                         [c - plain_gap_cpu for c in loop.validation_gap.cpu])
    report.timed("validation_pass", group, "one validation pass as the loop runs it (all of it)", validation,
                 "extra time between two steps when validation is due, checkpoint excluded")
    report.timed("validate_call", group, "  of which _validate (network on the held-out crops, AP)",
                 loop.validate_call)
    report.timed("save_model_call", group, "  of which writing model.pt", loop.save_model_call)
    report.timed("checkpoint", group, "one checkpoint write (_save_checkpoint)", loop.checkpoint_call)
    report.timed("train_setup", group, "train() set-up: reading, label statistics, network (once per run)",
                 loop.setup)
    report.timed("train_wind_down", group, "train() end: last validation and checkpoints (once per run)",
                 loop.wind_down)
    report.timed("train_whole_per_step", group, f"whole train() call / {steps} steps (set-up included)",
                 loop.whole_per_step)
    _amortised_rows(report, group, defaults)
    report.meta["load_average_training_end"] = _load_average()
    return model_path


def _amortised_rows(report: Report, group: str, defaults: TrainConfig) -> None:
    """The default schedule's cost per step: pure step + validation / eval_every + checkpoint / its interval."""
    rows = report.measurements
    if not all(k in rows for k in ("train_loop_step", "validation_pass", "checkpoint")):
        return
    parts = {k: (rows[k]["median_s"], rows[k]["min_s"]) for k in
             ("train_loop_step", "validation_pass", "checkpoint", "train_setup", "train_wind_down") if k in rows}

    def per_step(which: int) -> tuple[float, float]:
        step = parts["train_loop_step"][which]
        every = min(defaults.checkpoint_every, max(1, math.ceil(defaults.checkpoint_seconds / step)))
        return step + parts["validation_pass"][which] / defaults.eval_every + parts["checkpoint"][which] / every, every

    (median, every), (minimum, _) = per_step(0), per_step(1)
    report.derived("amortised_default_step", group, "amortised step at the default schedule", median, minimum,
                   f"loop step + validation pass / {defaults.eval_every} + checkpoint / {every} (checkpoint every "
                   f"{defaults.checkpoint_every} steps or {defaults.checkpoint_seconds:.0f} s)",
                   goal_s=GOAL_TRAIN_STEP_S)
    if "train_setup" in parts and "train_wind_down" in parts:
        n = defaults.steps
        whole = [(parts["train_setup"][i] + parts["train_wind_down"][i]) / n + v for i, v in enumerate((median,
                                                                                                      minimum))]
        report.derived("default_run_per_step", group, f"default {n}-step run, seconds per step incl. set-up",
                       whole[0], whole[1], f"(set-up + end) / {n} + amortised step")


# -------------------------------------------------------------------------------------------- inference


#: Functions of cryojoint.prediction its sequential loop calls by name, per micrograph.
PREDICTION_TIMED = ("read_micrograph", "predict_micrograph", "write_micrograph_outputs")


def measure_inference_in_process(report: Report, data: SpeedData, model_path: Path, work: Path, sizes: Sizes,
                                 repeats: int, log: Callable[[str], None]) -> None:
    """``predict_files`` as the CLI calls it, per micrograph and per part (read, predict, write)."""
    from cryojoint.io.mrc import micrograph_shape

    group = "inference"
    square = data.test[:sizes.infer_micrographs]
    parts = {name: Samples() for name in (*PREDICTION_TIMED, "total")}
    odd = Samples()
    for repeat in range(repeats):
        log(f"inference in process: repeat {repeat + 1}/{repeats}, {len(square)} + 1 micrographs")
        with CallRecorder(prediction, PREDICTION_TIMED) as recorder:
            prediction.predict_files(model_path, [*square, data.non_square], work / f"predict-{repeat}",
                                     overwrite=True, progress=False)
        reads, predicts, writes = (recorder.calls[name] for name in PREDICTION_TIMED)
        for index, (read, predicted, written) in enumerate(zip(reads, predicts, writes)):
            wall, cpu = written.end - read.start, written.cpu_end - read.cpu_start
            if index == len(square):
                odd.add(wall, cpu)
            elif index > 0:  # the first micrograph of a run is warm-up
                for name, call in zip(PREDICTION_TIMED, (read, predicted, written)):
                    parts[name].add(call.seconds, call.cpu)
                parts["total"].add(wall, cpu)
    side = sizes.infer_px
    height, width = micrograph_shape(data.non_square)
    report.timed("predict_in_process", group, f"{side}² micrograph, predict_files in process (read+predict+write)",
                 parts["total"], "first micrograph of each run left out",
                 us_per_pixel=(_median(parts["total"].wall) or 0.0) / (side * side) / MICRO)
    report.timed("predict_read", group, "  of which reading the MRC", parts["read_micrograph"])
    report.timed("predict_network", group, "  of which predict_micrograph (network, peaks)",
                 parts["predict_micrograph"])
    report.timed("predict_write", group, "  of which writing (denoised, heatmap, PNG, candidates)",
                 parts["write_micrograph_outputs"])
    report.timed("predict_non_square", group, f"{height}x{width} micrograph, same run", odd,
                 us_per_pixel=(_median(odd.wall) or 0.0) / (height * width) / MICRO)


@dataclass(frozen=True)
class ProcessRun:
    """One subprocess: wall-clock, its own CPU seconds and peak RSS, exit code, log."""

    argv: tuple[str, ...]
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    returncode: int
    log_path: Path

    def check(self) -> ProcessRun:
        if self.returncode != 0:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"exit code {self.returncode}: {' '.join(self.argv[:4])} ...\n{tail}")
        return self


#: Runs a command as its own child and writes that child's rusage as JSON. Spawned straight from this process
#: (gigabytes after training), a command's ru_maxrss would start at our RSS: Linux carries the parent's
#: high-water mark through fork and exec. The small wrapper in between (~8 MiB) keeps it the command's own.
_RUSAGE_WRAPPER = """
import json, os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as handle:
    json.dump({"maxrss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}, handle)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_process(argv: Sequence[str], env: dict[str, str], log_path: Path) -> ProcessRun:
    """Run ``argv`` to the end with its own peak RSS and CPU seconds (through ``_RUSAGE_WRAPPER``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    usage_path = log_path.with_name(log_path.name + ".rusage.json")
    usage_path.unlink(missing_ok=True)
    wrapped = [sys.executable, "-I", "-S", "-c", _RUSAGE_WRAPPER, str(usage_path), *argv]
    start = time.perf_counter()
    # Own process group: an interrupted benchmark stops the command too, not only the wrapper.
    with open(log_path, "wb") as log, subprocess.Popen(wrapped, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                       start_new_session=True) as process:
        try:
            returncode = process.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise
    wall = time.perf_counter() - start
    usage = json.loads(usage_path.read_text()) if usage_path.exists() else {"maxrss_kib": 0.0, "cpu_s": 0.0}
    return ProcessRun(tuple(argv), wall, float(usage["cpu_s"]), float(usage["maxrss_kib"]) / KIB_PER_MIB,
                      returncode, log_path)


def cryojoint_env(source_dir: Path) -> dict[str, str]:
    """Our environment with ``PYTHONPATH`` naming one checkout's ``src`` only (ours or the compared one)."""
    return {**os.environ, "PYTHONPATH": str(source_dir)}


def predict_cli(source_dir: Path, model_path: Path, micrographs: Sequence[Path], out: Path) -> ProcessRun:
    """``cryojoint predict MODEL MICROGRAPHS --out OUT`` (the CLI's defaults) of the checkout at ``source_dir``."""
    argv = [sys.executable, "-m", "cryojoint.cli", "predict", str(model_path), *map(str, micrographs),
            "--out", str(out), "--overwrite"]
    return run_process(argv, cryojoint_env(source_dir), out.with_name(out.name + ".log")).check()


def completion_intervals(out: Path) -> list[float]:
    """Seconds between successive micrographs of a predict run: the candidates file is written last for each
    (it marks a micrograph done), so its modification times are the completion times. The first micrograph
    has no predecessor and is left out (warm-up)."""
    times = sorted(path.stat().st_mtime_ns for path in (out / "candidates").glob("*.csv"))
    return [(later - earlier) / 1e9 for earlier, later in zip(times, times[1:])]


def seconds_per_micrograph_recorded(out: Path) -> float | None:
    """What the run recorded in predict.json (its loop's time / micrographs, first included)."""
    record = out / "predict.json"
    return float(json.loads(record.read_text())["seconds_per_micrograph"]) if record.exists() else None


# ------------------------------------------------------------------------------------ peers and revisions


@dataclass
class Revision:
    """A git revision of cryojoint checked out in a temporary worktree, and a model its code loads."""

    rev: str
    commit: str
    worktree: Path
    model_path: Path | None = None
    note: str | None = None

    @property
    def source_dir(self) -> Path:
        return self.worktree / "src"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _git_version() -> str:
    try:
        return _git("describe", "--always", "--dirty")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


@contextlib.contextmanager
def revision_worktree(rev: str) -> Iterator[Revision]:
    """``git worktree add --detach`` at ``rev`` in a temporary folder; removed again afterwards."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    parent = Path(tempfile.mkdtemp(prefix="cryojoint-speed-rev-"))
    worktree = parent / "worktree"
    _git("worktree", "add", "--detach", str(worktree), commit)
    try:
        yield Revision(rev, commit, worktree)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _git("worktree", "remove", "--force", str(worktree))
        shutil.rmtree(parent, ignore_errors=True)
        with contextlib.suppress(subprocess.CalledProcessError):
            _git("worktree", "prune")


def revision_model(revision: Revision, model_path: Path, data: SpeedData, work: Path) -> None:
    """Our model if the revision's code loads it; else a model its own ``cryojoint train`` makes in a few steps
    (speed does not depend on the weights); else a note and no model."""
    env = cryojoint_env(revision.source_dir)
    check = [sys.executable, "-c", "import sys; from cryojoint.checkpoint import load_model; load_model(sys.argv[1])",
             str(model_path)]
    if run_process(check, env, work / "revision-load.log").returncode == 0:
        revision.model_path = model_path
        return
    out = work / "revision-model"
    argv = [sys.executable, "-m", "cryojoint.cli", "train", *map(str, data.train), "--labels", str(data.train_labels),
            "--out", str(out), "--steps", str(REVISION_MODEL_STEPS), "--overwrite"]
    trained = run_process(argv, env, work / "revision-train.log")
    if trained.returncode == 0 and (out / "model.pt").exists():
        revision.model_path = out / "model.pt"
        revision.note = (f"{revision.rev} cannot load our model.pt; it predicts with a model its own `cryojoint "
                         f"train` made in {REVISION_MODEL_STEPS} steps on the same data (speed does not depend on "
                         "the weights; architecture and window size follow each revision's defaults)")
    else:
        revision.note = (f"{revision.rev} loads neither our model nor trains one (see {trained.log_path}): "
                         "no comparison")


@dataclass
class Topaz:
    """Topaz's launcher (its own venv) and what the run gives it."""

    launcher: Path
    versions: dict[str, str]
    particle_radius_px: float


def find_topaz(venv: Path, model_path: Path) -> tuple[Topaz | None, str | None]:
    """Topaz if its venv exists (never installed here); the particle radius is our model's estimate from labels."""
    from benchmarks.peers.topaz import LAUNCHER_NAME, installed_versions, topaz_env_installed

    from cryojoint.checkpoint import read_model_file

    if not topaz_env_installed(venv):
        return None, (f"Topaz rows skipped: no Topaz venv at {venv} (make one with `python -m benchmarks.peers.topaz "
                      "--selftest`, ~1.4 GB, or pass --topaz-venv)")
    radius = float(read_model_file(model_path)["meta"]["particle_diameter_px"]) / 2
    return Topaz(venv / "bin" / LAUNCHER_NAME, installed_versions(venv), radius), None


def run_topaz(topaz: Topaz, micrographs: Sequence[Path], work: Path) -> dict[str, Samples]:
    """``topaz denoise`` and ``topaz preprocess`` + ``topaz extract`` on the micrographs, per micrograph from
    Topaz's own log lines (first left out) and per command."""
    from benchmarks.peers.topaz import TOPAZ_DEFAULT_THRESHOLD, choose_downsample, topaz_denoise, topaz_extract

    denoised = topaz_denoise(micrographs, work / "topaz-denoise", launcher=topaz.launcher)
    downsample = choose_downsample(topaz.particle_radius_px)
    extracted = topaz_extract(TOPAZ_EXTRACT_MODEL, micrographs, work / "topaz-extract",
                              particle_radius_px=topaz.particle_radius_px, downsample=downsample,
                              threshold=TOPAZ_DEFAULT_THRESHOLD, launcher=topaz.launcher)
    n = len(micrographs)
    return {"denoise": Samples(list(denoised.seconds_per_micrograph.values())[1:]),
            "extract": Samples(list(extracted.seconds_per_micrograph.values())[1:]),
            "denoise_command": Samples([denoised.seconds / n]),
            "preprocess_command": Samples([extracted.preprocess_seconds / n]),
            "extract_command": Samples([extracted.seconds / n]),
            "peak_rss_denoise": Samples([denoised.peak_rss_mb]), "peak_rss_extract": Samples([extracted.peak_rss_mb])}


def measure_interleaved(report: Report, data: SpeedData, model_path: Path, work: Path, sizes: Sizes, repeats: int,
                        topaz: Topaz | None, revision: Revision | None, log: Callable[[str], None]) -> None:
    """Per repeat: our ``cryojoint predict``, then the compared revision's, then Topaz's two commands."""
    group = "inference"
    micrographs = data.test[:sizes.infer_micrographs]
    n = len(micrographs)
    ours, ours_command, theirs, theirs_command = Samples(), Samples(), Samples(), Samples()
    recorded: list[float] = []
    peers: dict[str, Samples] = {}
    for repeat in range(repeats):
        log(f"cryojoint predict subprocess: repeat {repeat + 1}/{repeats}, {n} micrographs")
        out = work / f"cli-ours-{repeat}"
        run = predict_cli(SOURCE_DIR, model_path, micrographs, out)
        ours.wall += completion_intervals(out)
        ours_command.add(run.wall_s / n, run.cpu_s / n)
        recorded += [v for v in [seconds_per_micrograph_recorded(out)] if v is not None]
        if revision is not None and revision.model_path is not None:
            log(f"cryojoint predict of {revision.rev}: repeat {repeat + 1}/{repeats}")
            out = work / f"cli-rev-{repeat}"
            run = predict_cli(revision.source_dir, revision.model_path, micrographs, out)
            theirs.wall += completion_intervals(out)
            theirs_command.add(run.wall_s / n, run.cpu_s / n)
        if topaz is not None:
            log(f"topaz denoise, preprocess, extract: repeat {repeat + 1}/{repeats}")
            for key, samples in run_topaz(topaz, micrographs, work / f"topaz-{repeat}").items():
                peers.setdefault(key, Samples()).extend(samples)
    side = sizes.infer_px
    report.timed("predict_cli", group, f"{side}² micrograph, `cryojoint predict` subprocess", ours,
                 "between successive micrographs' candidate files (first left out)",
                 us_per_pixel=(_median(ours.wall) or 0.0) / (side * side) / MICRO,
                 recorded_seconds_per_micrograph=_median(recorded))
    report.timed("predict_cli_command", group, f"  whole command / {n} micrographs (start-up, model load)",
                 ours_command)
    if revision is not None and theirs.wall:
        report.timed("revision_predict_cli", "comparison", f"{side}² micrograph, `cryojoint predict` of "
                     f"{revision.rev} ({revision.commit[:9]})", theirs, revision.note)
        report.timed("revision_predict_cli_command", "comparison", f"  whole command / {n} micrographs",
                     theirs_command)
        report.ratio("ours_vs_revision", f"ours / {revision.rev}, seconds per micrograph", "predict_cli",
                     "revision_predict_cli")
        report.ratio("ours_vs_revision_command", f"ours / {revision.rev}, whole command", "predict_cli_command",
                     "revision_predict_cli_command")
    if peers:
        group = "topaz"
        report.timed("topaz_denoise", group, f"{side}² micrograph, `topaz denoise` (unet)", peers["denoise"],
                     "from Topaz's per-micrograph log lines (first left out)",
                     peak_rss_mib=max(peers["peak_rss_denoise"].wall))
        report.timed("topaz_denoise_command", group, f"  whole command / {n} micrographs", peers["denoise_command"])
        report.timed("topaz_extract", group, f"{side}² micrograph, `topaz extract` ({TOPAZ_EXTRACT_MODEL})",
                     peers["extract"], "from Topaz's per-micrograph log lines (first left out)",
                     peak_rss_mib=max(peers["peak_rss_extract"].wall))
        report.timed("topaz_preprocess_command", group, f"  `topaz preprocess` command / {n} micrographs",
                     peers["preprocess_command"])
        report.timed("topaz_extract_command", group, f"  `topaz extract` command / {n} micrographs",
                     peers["extract_command"])
        rows = report.measurements
        if "topaz_denoise" in rows and "topaz_extract" in rows:
            both = [rows["topaz_denoise"][k] + rows["topaz_extract"][k] for k in ("median_s", "min_s")]
            report.derived("topaz_both", group, "Topaz-Denoise + Topaz extract per micrograph", both[0], both[1],
                           "sum of the two rows above (ours denoises and picks in one pass)")
        commands = ("topaz_denoise_command", "topaz_preprocess_command", "topaz_extract_command")
        if all(k in rows for k in commands):
            total = [sum(rows[k][which] for k in commands) for which in ("median_s", "min_s")]
            report.derived("topaz_both_command", group, "  the three whole commands / micrographs", total[0],
                           total[1], "denoise + preprocess + extract commands")
        report.ratio("ours_vs_topaz_denoise", "ours / Topaz-Denoise, seconds per micrograph", "predict_cli",
                     "topaz_denoise")
        report.ratio("ours_vs_topaz_both", "ours / (Topaz-Denoise + Topaz extract), seconds per micrograph",
                     "predict_cli", "topaz_both")
        report.ratio("ours_vs_topaz_both_command", "ours / Topaz, whole commands per micrograph",
                     "predict_cli_command", "topaz_both_command")


def measure_memory(report: Report, data: SpeedData, model_path: Path, work: Path, sizes: Sizes,
                   log: Callable[[str], None]) -> None:
    """Peak RSS of ``cryojoint predict`` on the large micrograph and on 1 vs many square ones."""
    from cryojoint.io.mrc import micrograph_shape

    report.meta["load_average_memory_start"] = _load_average()
    height, width = micrograph_shape(data.large)
    log(f"peak RSS: cryojoint predict on one {height}x{width} micrograph")
    out = work / "rss-large"
    run = predict_cli(SOURCE_DIR, model_path, [data.large], out)
    seconds = seconds_per_micrograph_recorded(out)
    report.memory("rss_large", f"`cryojoint predict`, one {height}x{width} micrograph", run,
                  n_micrographs=1, seconds_per_micrograph=seconds, goal_mib=GOAL_PREDICT_PEAK_RSS_MIB,
                  us_per_pixel=None if seconds is None else seconds / (height * width) / MICRO)
    side = sizes.infer_px
    for key, count in (("rss_one", 1), ("rss_many", sizes.rss_micrographs)):
        log(f"peak RSS: cryojoint predict on {count} {side}² micrograph(s)")
        out = work / f"{key}"
        run = predict_cli(SOURCE_DIR, model_path, data.test[:count], out)
        report.memory(key, f"`cryojoint predict`, {count} {side}² micrograph(s)", run, n_micrographs=count,
                      seconds_per_micrograph=seconds_per_micrograph_recorded(out))
    rows = report.measurements
    report.ratios["rss_many_vs_one"] = {"label": f"peak RSS {sizes.rss_micrographs} vs 1 micrograph(s)",
                                        "value": rows["rss_many"]["peak_rss_mib"] / rows["rss_one"]["peak_rss_mib"],
                                        "numerator": "rss_many", "denominator": "rss_one"}
    report.ratio("rss_large_vs_goal", "peak RSS of the large micrograph / the 1.5 GB goal", "rss_large",
                 GOAL_PREDICT_PEAK_RSS_MIB, what="peak_rss_mib")


# ---------------------------------------------------------------------------------------------- tables


def speed_markdown(report: dict[str, Any]) -> str:
    """The JSON report as markdown: one table per group, ratios, notes."""
    meta, rows = report["meta"], report["measurements"]
    lines = [f"# Model speed: the shipped training loop and `cryojoint predict` ({meta['date']})", "",
             f"git {meta['git']} · torch {meta['torch']} · {meta['threads']} thread(s) · {meta['machine']} · "
             f"{meta['cpu_count']} cores · {'quick (smoke-test sizes)' if meta['quick'] else 'full sizes'} · "
             f"{meta['repeats']} repeat(s) · {meta['seconds']:.0f} s in all", "",
             f"Load average (1, 5, 15 min) at start {meta['load_average_start']}, at end "
             f"{meta['load_average_end']}. {meta['load_remark']}", "",
             f"Data: {meta['data']}.", ""]
    titles = {"training": "Training: `cryojoint.training.train`, default config",
              "inference": "Inference: `predict_files` / `cryojoint predict`, default settings",
              "comparison": "Earlier revision (interleaved with ours)",
              "topaz": "Topaz 0.3.20 (interleaved with ours)"}
    for group, title in titles.items():
        timed = [(k, r) for k, r in rows.items() if r["group"] == group]
        if not timed:
            continue
        lines += [f"## {title}", "", "| measurement | median s | min s | CPU s / thread | n | note |",
                  "|---|---:|---:|---:|---:|---|"]
        for _, row in timed:
            extras = []
            if row.get("goal_s") is not None:
                extras.append(f"goal ≤ {row['goal_s']:.2f} s")
            if row.get("us_per_pixel"):
                extras.append(f"{row['us_per_pixel']:.2f} µs/pixel")
            if row.get("peak_rss_mib"):
                extras.append(f"peak RSS {row['peak_rss_mib']:.0f} MiB")
            note = "; ".join([*(extras), *([row["note"]] if row.get("note") else [])])
            lines.append(f"| {row['label']} | {_number(row['median_s'])} | {_number(row['min_s'])} | "
                         f"{_number(row.get('median_cpu_per_thread_s'))} | {row.get('n') or '—'} | {note} |")
        lines.append("")
    memory = [r for r in rows.values() if r["group"] == "memory"]
    if memory:
        lines += ["## Memory: peak RSS of a `cryojoint predict` process", "",
                  "| run | peak RSS MiB | wall s | CPU s / thread | s / micrograph (predict.json) | note |",
                  "|---|---:|---:|---:|---:|---|"]
        for row in memory:
            note = []
            if row.get("goal_mib"):
                note.append(f"goal ≤ {row['goal_mib']:.0f} MiB (1.5 GB)")
            if row.get("us_per_pixel"):
                note.append(f"{row['us_per_pixel']:.2f} µs/pixel")
            lines.append(f"| {row['label']} | {row['peak_rss_mib']:.0f} | {row['wall_s']:.1f} | "
                         f"{row['cpu_per_thread_s']:.1f} | {_number(row.get('seconds_per_micrograph'))} | "
                         f"{'; '.join(note)} |")
        lines.append("")
    if report["ratios"]:
        lines += ["## Ratios (same run, same box)", "", "| ratio | value |", "|---|---:|"]
        lines += [f"| {r['label']} | {r['value']:.2f} |" for r in report["ratios"].values()]
        lines.append("")
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]] + [""]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    payload = {"meta": report.meta, "measurements": report.measurements, "ratios": report.ratios,
               "notes": report.notes}
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(payload, indent=1, default=str))
    markdown_path.write_text(speed_markdown(payload))
    return json_path, markdown_path


# ------------------------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke test")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads here and in every subprocess (default: torch's own, all cores)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"training runs and predict runs per kind (default {FULL.repeats}; quick "
                             f"{QUICK.repeats})")
    parser.add_argument("--train-steps", type=int, default=None,
                        help=f"steps per training run (default {FULL.train_steps}; quick {QUICK.train_steps})")
    parser.add_argument("--rss-micrographs", type=int, default=None,
                        help=f"'many' of the peak-RSS check 1 vs many (default {FULL.rss_micrographs})")
    parser.add_argument("--skip-topaz", action="store_true", help="no Topaz rows")
    parser.add_argument("--topaz-venv", type=Path, default=None,
                        help="Topaz's venv (default: benchmarks/.venv-topaz of this checkout; never installed here)")
    parser.add_argument("--compare-rev", default=None, metavar="GIT_REV",
                        help="also time `cryojoint predict` of this git revision, interleaved with ours")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"simulated data and work files (default {CACHE})")
    parser.add_argument("--out", type=Path, default=None,
                        help="tables as OUT.md and OUT.json (default benchmarks/results/<date>-model-speed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = Sizes(**{**base.__dict__, **{k: v for k, v in (
        ("repeats", args.repeats), ("train_steps", args.train_steps), ("rss_micrographs", args.rss_micrographs))
        if v is not None}})
    if args.threads:
        torch.set_num_threads(args.threads)
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # our predict subprocesses and Topaz's
            os.environ[variable] = str(args.threads)
    threads = torch.get_num_threads()
    started = time.perf_counter()
    out = args.out or RESULTS / f"{dt.date.today().isoformat()}-model-speed"
    out = out.with_suffix("") if out.suffix in {".md", ".json"} else out

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    report = Report(threads)
    report.meta.update({
        "date": dt.date.today().isoformat(), "started": dt.datetime.now().isoformat(timespec="seconds"),
        "git": _git_version(), "torch": torch.__version__, "threads": threads,
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "quick": args.quick,
        "repeats": sizes.repeats, "sizes": sizes.__dict__, "load_average_start": _load_average(),
        "command_line": " ".join(sys.argv if argv is None else ["bench_model_speed.py", *argv])})
    work = args.cache / "work"
    shutil.rmtree(work, ignore_errors=True)  # this script's own scratch folder, rewritten every run
    work.mkdir(parents=True)
    data = ensure_data(args.cache, sizes, log)
    report.meta["data"] = (f"{PRESET} at {DOSE_FRACTION:.0%} dose (simulated, seed {DATA_SEED}); "
                           f"{len(data.train)} training micrographs of {sizes.train_px}²; "
                           f"{sizes.infer_micrographs} of {sizes.infer_px}² predicted per run; large "
                           f"{sizes.large_px}²; non-square {sizes.non_square_px[0]}x{sizes.non_square_px[1]}")

    model_path = measure_training(report, data, work, sizes, sizes.train_steps, sizes.repeats, log)
    measure_inference_in_process(report, data, model_path, work, sizes, sizes.repeats, log)
    topaz = None
    if not args.skip_topaz:
        topaz, reason = find_topaz(args.topaz_venv or REPO_ROOT / "benchmarks" / ".venv-topaz", model_path)
        if reason:
            report.notes.append(reason)
            log(reason)
        else:
            report.meta["topaz"] = topaz.versions  # type: ignore[union-attr]
    with contextlib.ExitStack() as stack:
        revision = None
        if args.compare_rev:
            revision = stack.enter_context(revision_worktree(args.compare_rev))
            log(f"comparing with {args.compare_rev} ({revision.commit[:9]}) in {revision.worktree}")
            revision_model(revision, model_path, data, work)
            if revision.note:
                report.notes.append(revision.note)
            report.meta["compare_rev"] = {"rev": revision.rev, "commit": revision.commit}
        measure_interleaved(report, data, model_path, work, sizes, sizes.repeats, topaz, revision, log)
    measure_memory(report, data, model_path, work, sizes, log)

    report.meta["load_average_end"] = _load_average()
    report.meta["seconds"] = time.perf_counter() - started
    busiest = max(report.meta["load_average_start"][0], report.meta["load_average_end"][0])
    cores = os.cpu_count() or 1
    report.meta["load_remark"] = (
        f"Contended: a 1-minute load of {busiest} on {cores} cores; wall-clock seconds are inflated, CPU seconds "
        "per thread much less, ratios within this run still compare." if busiest > LOADED_SHARE_OF_CORES * cores
        else "The box was quiet enough for wall-clock seconds to stand.")
    json_path, markdown_path = write_report(report, out)
    log(f"wrote {markdown_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
