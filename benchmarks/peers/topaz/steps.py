"""The three Topaz steps the benchmark runs: train (from partial labels), extract (picks) and denoise.

Each stages its inputs, runs Topaz through :mod:`.commands` and reads the results with :mod:`.parsing`;
the returned records carry timings, peak RSS, the commands and the log.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import pandas as pd
from benchmarks.peers.topaz.commands import (
    FULL_RANKING_THRESHOLD,
    TOPAZ_DEFAULT_TRAIN_RADIUS_PX,
    ClassPrior,
    CommandRun,
    choose_downsample,
    class_prior,
    convert_command,
    denoise_command,
    extract_command,
    preprocess_command,
    run_logged,
    scaled_radius,
    stage_as_mrc,
    train_command,
    write_topaz_coordinates,
)
from benchmarks.peers.topaz.env import TopazError, ensure_topaz_env, installed_versions
from benchmarks.peers.topaz.parsing import _event_seconds, parse_training_curve, read_topaz_picks, seconds_per_minibatch

from cryojoint.errors import UserInputError
from cryojoint.io.mrc import read_micrograph, write_mrc


def _preprocess(
    launcher: Path, images: Sequence[Path], work: Path, downsample: int, seed: int
) -> tuple[list[Path], CommandRun]:
    """Stage and preprocess; seeded because Topaz fits its GMM normaliser on a random pixel subsample."""
    staged = stage_as_mrc(images, work / "staged")
    dest = work / "preprocessed"
    run = run_logged(preprocess_command(launcher, staged, dest, downsample), work / "preprocess.log", seed=seed)
    outputs = [dest / p.name for p in staged]
    missing = [str(p) for p in outputs if not p.exists()]
    if missing:
        raise TopazError(f"topaz preprocess wrote no {missing}")
    return outputs, run


def _image_pixels(path: Path) -> int:
    with mrcfile.open(path, header_only=True, permissive=True) as mrc:
        return int(mrc.header.nx) * int(mrc.header.ny)


def _convert_labels(
    launcher: Path, labels: pd.DataFrame, names: set[str], work: Path, downsample: int
) -> tuple[Path, int, CommandRun]:
    subset = labels[labels["micrograph"].astype(str).isin(names)]
    if subset.empty:
        raise UserInputError(None, f"no label names one of the micrographs {sorted(names)[:5]}")
    original = write_topaz_coordinates(subset, work / "labels_original_px.txt")
    converted = work / "labels_preprocessed_px.txt"
    run = run_logged(convert_command(launcher, original, converted, downsample), work / "convert.log")
    return converted, len(subset), run


# -------------------------------------------------------------------------------------------------- the steps


@dataclass
class TopazTrainResult:
    """A trained Topaz model and how it got there."""

    model_path: Path
    seconds: float
    """Wall-clock of ``topaz train`` alone."""
    total_seconds: float
    """Including preprocessing and coordinate conversion."""
    peak_rss_mb: float
    rss_source: str
    curve: pd.DataFrame
    seconds_per_minibatch: float
    downsample: int
    train_radius_px: int
    prior: ClassPrior
    pretrained: bool
    model: str
    epoch_models: list[Path]
    commands: list[list[str]]
    log_path: Path
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class TopazExtractResult:
    """Topaz picks in original pixels, best first per micrograph, with timings."""

    picks: pd.DataFrame
    seconds: float
    """Wall-clock of ``topaz extract`` alone (model load, scoring, NMS)."""
    preprocess_seconds: float
    peak_rss_mb: float
    rss_source: str
    seconds_per_micrograph: dict[str, float]
    commands: list[list[str]]
    log_path: Path


@dataclass
class TopazDenoiseResult:
    """Denoised float32 MRCs (same names and shapes as the inputs) with timings."""

    paths: dict[str, Path]
    seconds: float
    peak_rss_mb: float
    rss_source: str
    seconds_per_micrograph: dict[str, float]
    commands: list[list[str]]
    log_path: Path


def topaz_train(
    train_mrcs: Sequence[Path],
    labels: pd.DataFrame,
    out_dir: Path,
    *,
    particle_radius_px: float,
    expected_particles_per_micrograph: float,
    pretrained: bool,
    epochs: int = 10,
    minibatches_per_epoch: int = 200,
    downsample: int | None = None,
    model: str = "resnet8",
    seed: int = 0,
    train_radius_px: int | None = None,
    validation_mrcs: Sequence[Path] | None = None,
    validation_labels: pd.DataFrame | None = None,
    launcher: Path | None = None,
) -> TopazTrainResult:
    """Train a Topaz detector from partial labels, the way its docs say, minus the 0.3.20 π defects.

    Parameters
    ----------
    train_mrcs
        Training micrographs (any name; staged as ``<name>.mrc``).
    labels
        Partial labels: columns ``micrograph`` (name without extension), ``x``, ``y`` in original pixels.
        Only rows naming a training micrograph are used.
    out_dir
        Work folder: staged links, preprocessed images, converted labels, logs, ``model/model_epochN.sav``.
    particle_radius_px
        Particle radius in original pixels; sets ``downsample`` (when None) and caps the training radius.
    expected_particles_per_micrograph
        All particles expected per micrograph (not only labelled ones); gives π.
    pretrained
        Start from Topaz's shipped weights (``--pretrained``) or not (``--no-pretrained``); stated always.
    epochs, minibatches_per_epoch
        ``--num-epochs`` and ``--epoch-size`` (minibatches of Topaz's default 256 regions).
    downsample
        Integer binning for ``topaz preprocess -s``; None picks the smallest that fits the particle diameter
        in the model's documented limit (70 px for resnet8).
    model
        Topaz architecture (``resnet8`` by default).
    seed
        Seeds Python/NumPy/torch global RNGs in the Topaz processes (weight init, minibatch order, the
        normaliser's pixel subsample). Topaz 0.3.20 seeds its augmentation RNG from the process id, so
        repeated trainings still differ slightly.
    train_radius_px
        ``-r`` at the preprocessed scale; None means Topaz's default 3, capped at the particle radius.
    validation_mrcs, validation_labels
        Optional held-out set passed as ``--test-images/--test-targets`` (per-epoch test AUPRC in the curve).
    launcher
        The ``topaz-cpu`` launcher; None calls :func:`ensure_topaz_env`.
    """
    launcher = ensure_topaz_env() if launcher is None else Path(launcher)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = choose_downsample(particle_radius_px, model) if downsample is None else int(downsample)
    if scale < 1:
        raise ValueError("downsample must be a positive integer")
    particle_radius_scaled = scaled_radius(particle_radius_px, scale)
    radius = (
        min(TOPAZ_DEFAULT_TRAIN_RADIUS_PX, particle_radius_scaled) if train_radius_px is None
        else int(train_radius_px)
    )
    runs: list[CommandRun] = []

    train_images, run = _preprocess(launcher, train_mrcs, out_dir / "train", scale, seed)
    runs.append(run)
    names = {p.stem for p in train_images}
    train_targets, labelled, run = _convert_labels(launcher, labels, names, out_dir / "train", scale)
    runs.append(run)
    prior = class_prior(radius, expected_particles_per_micrograph, labelled,
                        [_image_pixels(p) for p in train_images])

    test_images_dir: Path | None = None
    test_targets: Path | None = None
    if validation_mrcs:
        if validation_labels is None:
            raise ValueError("validation_mrcs needs validation_labels")
        val_images, run = _preprocess(launcher, validation_mrcs, out_dir / "validation", scale, seed)
        runs.append(run)
        test_targets, _, run = _convert_labels(
            launcher, validation_labels, {p.stem for p in val_images}, out_dir / "validation", scale
        )
        runs.append(run)
        test_images_dir = out_dir / "validation" / "preprocessed"

    model_dir = out_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    argv = train_command(
        launcher,
        train_images=out_dir / "train" / "preprocessed",
        train_targets=train_targets,
        save_prefix=model_dir / "model",
        pi=prior.pi_passed,
        train_radius_px=radius,
        model=model,
        pretrained=pretrained,
        epochs=epochs,
        minibatches_per_epoch=minibatches_per_epoch,
        test_images=test_images_dir,
        test_targets=test_targets,
    )
    train_run = run_logged(argv, out_dir / "train.log", seed=seed)
    runs.append(train_run)
    if "setting method to PN" in train_run.text():
        raise TopazError("topaz train fell back to PN training despite the corrected --pi; see train.log")
    epoch_models = sorted(model_dir.glob("model_epoch*.sav"),
                          key=lambda p: int(re.sub(r"\D", "", p.stem.rsplit("epoch", 1)[-1]) or 0))
    if not epoch_models:
        raise TopazError(f"topaz train saved no model in {model_dir}")
    curve = parse_training_curve(train_run.lines)
    return TopazTrainResult(
        model_path=epoch_models[-1],
        seconds=train_run.seconds,
        total_seconds=sum(r.seconds for r in runs),
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
        rss_source=train_run.rss_source,
        curve=curve,
        seconds_per_minibatch=seconds_per_minibatch(curve),
        downsample=scale,
        train_radius_px=radius,
        prior=prior,
        pretrained=pretrained,
        model=model,
        epoch_models=epoch_models,
        commands=[list(r.argv) for r in runs],
        log_path=train_run.log_path,
        versions=installed_versions(launcher.parent.parent),
    )


def topaz_extract(
    model: Path | str,
    mrcs: Sequence[Path],
    out_dir: Path,
    *,
    particle_radius_px: float,
    downsample: int,
    threshold: float = FULL_RANKING_THRESHOLD,
    patch_size: int = 0,
    seed: int = 0,
    launcher: Path | None = None,
) -> TopazExtractResult:
    """Score micrographs with a Topaz model and return every pick above ``threshold`` in original pixels.

    Parameters
    ----------
    model
        A ``.sav`` from :func:`topaz_train` (or a shipped name such as ``resnet16``).
    mrcs
        Micrographs at the original scale; preprocessed here with the same ``downsample`` as training.
    particle_radius_px
        Particle radius in original pixels; the NMS radius is this at the preprocessed scale (Topaz advice).
    downsample
        The binning the model was trained at (``TopazTrainResult.downsample``).
    threshold
        Logit cut-off; the default keeps (nearly) the full ranking so an evaluator can sweep it. Topaz's own
        default is ``TOPAZ_DEFAULT_THRESHOLD``.
    patch_size
        ``topaz extract -p`` (preprocessed px) to score in tiles and bound memory; 0 scores whole images.
        Tiling changes scores slightly (up to ~0.05 logit seen), so keep one setting within a comparison.
    seed
        Seeds the preprocessing normaliser's pixel subsample, so the same inputs give the same picks.
    """
    launcher = ensure_topaz_env() if launcher is None else Path(launcher)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, preprocess_run = _preprocess(launcher, mrcs, out_dir, int(downsample), seed)
    output = out_dir / "picks_topaz.txt"
    argv = extract_command(
        launcher, model=model, images=images, output=output,
        radius_px=scaled_radius(particle_radius_px, int(downsample)), downsample=int(downsample),
        threshold=threshold, patch_size=patch_size,
    )
    run = run_logged(argv, out_dir / "extract.log")
    picks = read_topaz_picks(output)
    per_micrograph = dict(_event_seconds(run.lines, r"Extracted \d+ particles from (\S+)", r"Beginning extraction"))
    return TopazExtractResult(
        picks=picks,
        seconds=run.seconds,
        preprocess_seconds=preprocess_run.seconds,
        peak_rss_mb=max(run.peak_rss_mb, preprocess_run.peak_rss_mb),
        rss_source=run.rss_source,
        seconds_per_micrograph=per_micrograph,
        commands=[list(preprocess_run.argv), list(argv)],
        log_path=run.log_path,
    )


def topaz_denoise(
    mrcs: Sequence[Path], out_dir: Path, *, arch: str = "unet", launcher: Path | None = None
) -> TopazDenoiseResult:
    """Denoise with Topaz-Denoise's shipped model for ``arch`` (``unet`` = unet_L2_v0.2.2).

    Outputs are ``<out_dir>/<micrograph name>.mrc``, float32, same shape and pixel size as the input, in the
    input's intensity scale (Topaz restores mean and std when ``--normalize`` is not given).
    """
    launcher = ensure_topaz_env() if launcher is None else Path(launcher)
    out_dir = Path(out_dir)
    staged = stage_as_mrc(mrcs, out_dir / "staged")
    dest = out_dir / "denoised"
    argv = denoise_command(launcher, staged, dest, arch)
    run = run_logged(argv, out_dir / "denoise.log")
    paths: dict[str, Path] = {}
    for source, link in zip(mrcs, staged, strict=True):
        produced = dest / link.name
        if not produced.exists():
            raise TopazError(f"topaz denoise wrote no {produced}")
        original = read_micrograph(source)
        denoised = read_micrograph(produced)
        if denoised.shape != original.shape:
            raise TopazError(f"{produced}: shape {denoised.shape} differs from input {original.shape}")
        with mrcfile.open(produced, header_only=True, permissive=True) as mrc:
            is_float32 = int(mrc.header.mode) == 2
        if not is_float32 or denoised.pixel_size != original.pixel_size:
            write_mrc(produced, denoised.data, pixel_size=original.pixel_size)
        paths[link.stem] = produced
    completions = _event_seconds(run.lines, r"# (\d+) of \d+ completed", r"loading pretrained model")
    per_micrograph = {name: seconds for name, (_, seconds) in zip(paths, completions, strict=False)}
    return TopazDenoiseResult(
        paths=paths,
        seconds=run.seconds,
        peak_rss_mb=run.peak_rss_mb,
        rss_source=run.rss_source,
        seconds_per_micrograph=per_micrograph,
        commands=[argv],
        log_path=run.log_path,
    )
