"""Command line: thin typer commands, each parsing options and calling one library function.

User mistakes surface as one line ``error: <file>: <problem>`` on stderr with exit code 2.
"""

from __future__ import annotations

import errno
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cryojoint.config import AUTO_THRESHOLD_RULES, QUANTILE_RULE, DataConfig, TrainConfig
from cryojoint.errors import UserInputError, first_names

if TYPE_CHECKING:
    from cryojoint.config import CryojointConfig, ModelConfig

app = typer.Typer(
    name="cryojoint",
    help="Joint self-supervised denoising and particle picking for cryo-EM micrographs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USER_ERROR = 2
#: Exit code after Ctrl-C (the shell's 128 + SIGINT), with one line on what is kept.
EXIT_INTERRUPTED = 130
INTERRUPTED_LINE = ("interrupted: every file written so far is complete (each is written whole); run the same "
                    "command again to go on (predict/denoise skip the micrographs done; train needs --resume)")
#: Exit code when the machine refused a read or write (disk full, read-only, no permission): not a bug, not bad input.
EXIT_ENVIRONMENT_ERROR = 3
#: Errors of the file system a user can act on: they end a run with one line, not a traceback.
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                                 errno.EMFILE, errno.ENFILE, errno.ENAMETOOLONG})
_TRAIN_DEFAULTS, _DATA_DEFAULTS = TrainConfig(), DataConfig()


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


def _preset_under_yaml_model(preset: str, config_path: Path) -> ModelConfig:
    """The ``preset`` architecture with the model keys the YAML at ``config_path`` set on top.

    A YAML that names its own ``model.preset`` (as every saved RUN/config.yaml does, listing every key) has
    keys that merely repeat that preset's values: those came from the preset, not from the user, and give way
    to ``preset``. Keys the YAML changed from its preset, and every key of a YAML naming no preset, win.
    """
    import yaml

    from cryojoint.config import CryojointConfig, model_config_for_preset

    values = yaml.safe_load(config_path.read_text()) or {}  # already checked by CryojointConfig.load_yaml
    section = {k: tuple(v) if isinstance(v, list) else v for k, v in (values.get("model") or {}).items()}
    yaml_preset = section.pop("preset", None)
    if yaml_preset is not None:
        inherited = model_config_for_preset(yaml_preset)
        section = {k: v for k, v in section.items() if getattr(inherited, k) != v}
    return CryojointConfig.from_dict({"model": {**section, "preset": preset}}, source=config_path).model


def _train_config(
    config_path: Path | None = None,
    preset: str | None = None,
    mode: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    particle_diameter: float | None = None,
    expected_particles: float | None = None,
    downsample: float | None = None,
    label_completeness: float | None = None,
    init: str | None = None,
    particle_contrast: str | None = None,
) -> CryojointConfig:
    """The config ``cryojoint train`` runs with: the YAML (or the defaults), then only the options given.

    ``None`` means "not given": the YAML's value (or the default) stands. ``preset`` replaces the YAML's
    ``model.preset`` and the architecture follows it, but model keys the YAML set keep their values
    (:func:`_preset_under_yaml_model`).
    """
    import dataclasses

    from cryojoint.config import (
        PARTICLE_CONTRASTS,
        TRAINING_MODES,
        CryojointConfig,
        default_config,
        model_config_for_preset,
        validate,
    )

    if mode is not None and mode not in TRAINING_MODES:
        raise UserInputError(None, f"--mode must be one of {', '.join(TRAINING_MODES)}")
    if particle_contrast is not None and particle_contrast not in PARTICLE_CONTRASTS:
        raise UserInputError(None, f"--particle-contrast must be one of {', '.join(PARTICLE_CONTRASTS)}")
    if preset is not None:
        model_config_for_preset(preset)  # an unknown name fails here, naming the option's value
    if config_path is None:
        cfg = default_config(preset or "default")
    else:
        cfg = CryojointConfig.load_yaml(config_path)  # the file, its keys and values are checked here
        if preset is not None:
            cfg.model = _preset_under_yaml_model(preset, config_path)
    cfg.train = dataclasses.replace(cfg.train, **_given(mode=mode, steps=steps, seed=seed, device=device, init=init))
    cfg.data = dataclasses.replace(cfg.data, **_given(particle_diameter_px=particle_diameter,
                                                      expected_particles=expected_particles, downsample=downsample,
                                                      label_completeness=label_completeness,
                                                      particle_contrast=particle_contrast))
    validate(cfg)  # the YAML passed on its own, so what fails now is an option's value
    return cfg


def _exit_on_failures(failures: dict[str, str]) -> None:
    """Micrographs that failed (the others were written): one error line each, then exit code 2."""
    if failures:
        for message in failures.values():
            typer.echo(f"error: {message}", err=True)
        raise typer.Exit(EXIT_USER_ERROR)


def _given(**options: object) -> dict[str, object]:
    return {k: v for k, v in options.items() if v is not None}


def _version(value: bool) -> None:
    if value:
        from cryojoint import __version__

        typer.echo(f"cryojoint {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Joint self-supervised denoising and particle picking for cryo-EM micrographs.

    Example: cryojoint demo runs/demo
    """


@app.command()
def convert(
    inputs: Annotated[list[Path], typer.Argument(help="Coordinate file(s) or a folder of them (a predict output "
                                                      "folder: its picks.star).")],
    output: Annotated[Path, typer.Argument(help="Output file, or folder for one file per micrograph.")],
    in_fmt: Annotated[str | None, typer.Option("--from", help="star|box|cbox|csv|topaz|imod|cs (default: "
                                                                 "by suffix)")] = None,
    out_fmt: Annotated[str | None, typer.Option("--to", help="star|box|cbox|csv|topaz|cs (default: by "
                                                                 "suffix)")] = None,
    box_size: Annotated[float | None, typer.Option(help="Box size in pixels (needed to write .box "
                                                                    "and .cbox; from a predict output folder, the "
                                                                    "size predict writes).")] = None,
    micrographs: Annotated[list[str] | None, typer.Option(
        "--micrographs", help="The micrographs the picks are on (as for predict: files, folders, globs, @lists, "
                              "micrograph STARs; repeat the option): their sizes, needed to write cryoSPARC .cs "
                              "from other formats.")] = None,
    scale: Annotated[float, typer.Option(help="Multiply the coordinates by this: picks made on micrographs of "
                                              "another size, e.g. 4 for picks on 4x-binned copies used with the "
                                              "full-size micrographs, 0.25 the other way (a STAR's optics "
                                              "pixel size is divided by it too; --micrographs names the "
                                              "micrographs the picks are now on).")] = 1.0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
) -> None:
    """Convert particle coordinates between RELION STAR, EMAN BOX, crYOLO CBOX, CSV, Topaz, IMOD and cryoSPARC .cs.

    Example: cryojoint convert picks.star picks.cs --micrographs 'Movies/*.mrc'
    Example: cryojoint convert picks_on_bin4.star picks.star --scale 4
    """
    from cryojoint.io.coords import convert_coordinates
    from cryojoint.prediction import COMBINED_STAR
    from cryojoint.recut import UNFINISHED_RUN, is_prediction_folder

    if len(inputs) == 1 and is_prediction_folder(inputs[0]):  # its picks, not picks + candidates + picks.cs
        if not (inputs[0] / COMBINED_STAR).is_file():
            raise UserInputError(inputs[0] / COMBINED_STAR, UNFINISHED_RUN)
        if box_size is None:  # the boxes predict itself writes, from the diameter its run used (rescaled)
            box_size = _predicted_box_size(inputs[0], output, out_fmt, scale)
        inputs = [inputs[0] / COMBINED_STAR]
    paths = _micrograph_paths(micrographs) if micrographs else None
    written = convert_coordinates(inputs, output, in_fmt, out_fmt, box_size, overwrite, paths, scale)
    typer.echo(f"wrote {len(written)} file(s): {written[0]}{' ...' if len(written) > 1 else ''}")


def _predicted_box_size(folder: Path, output: Path, out_fmt: str | None, scale: float = 1.0) -> float | None:
    """The box size ``predict`` writes for a boxed format (predict.json's diameter, times ``scale`` for picks
    rescaled to other micrographs), ``None`` when it does not say."""
    from cryojoint.io.coords import FORMAT_OF_SUFFIX
    from cryojoint.prediction import box_size_px, read_run_record

    fmt = out_fmt or FORMAT_OF_SUFFIX.get(output.suffix.lower())
    try:
        diameter = (read_run_record(folder) or {}).get("particle_diameter_px_input")
    except UserInputError:
        return None
    return box_size_px(fmt, float(diameter) * scale) if fmt and isinstance(diameter, (int, float)) else None


MICROGRAPHS_HELP = ("Micrographs (MRC): files, folders, quoted globs ('mics/*.mrc'), @list.txt files (one path a "
                    "line) or RELION micrograph STAR files (paths relative to the current folder).")
PARTICLE_DIAMETER_HELP = ("For the general model: the particle's diameter, 250A (Ångström, with the pixel size from "
                          "the MRC headers) or 48px (input pixels). The micrographs are binned so that it measures "
                          "36 px inside the network.")
PARTICLE_CONTRAST_HELP = ("dark | bright | auto: how particles look against the ice. Default: a trained model's "
                          "training micrographs'; the general model told --particle-diameter reads it from the "
                          "micrographs (else dark). Bright ones are inverted for the network.")


def _micrograph_paths(items: list[str]) -> list[Path]:
    """The micrograph files the arguments name (:func:`cryojoint.io.inputs.expand_micrographs`)."""
    from cryojoint.io.inputs import expand_micrographs

    return expand_micrographs(items).paths


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _threshold(value: str | None) -> float | str | None:
    """'auto' -> the model's rule; 'expected-count' / 'quantile' -> that rule; a number -> fixed cut-off."""
    if value is None or value.lower() == "auto":
        return None
    if value.lower() in AUTO_THRESHOLD_RULES:
        return value.lower()
    try:
        return float(value)
    except ValueError:
        raise UserInputError(None, f"--threshold must be auto, expected-count, quantile or a number, "
                             f"not '{value}'") from None


def _command_line() -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in ["cryojoint", *sys.argv[1:]])


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Output folder (dose_100/, dose_060/, ..., clean/, truth.star, ...).")],
    micrographs: Annotated[int, typer.Option(help="Number of micrographs.")] = 16,
    size: Annotated[int, typer.Option(help="Micrograph side in pixels.")] = 1024,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data, bit for bit).")] = 0,
    preset: Annotated[str, typer.Option(help="Particle structure preset, e.g. ribosome, barrel, ruvb (all: "
                                             "docs/simulation.md).")] = "ribosome",
    frames: Annotated[int, typer.Option(help="Also write K-frame movies whose sums give the doses.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """Simulate micrographs at 100/60/20/10% dose with ground truth, masks, partial labels and decoys.

    Example: cryojoint simulate data/ --micrographs 16 --size 1024 --seed 1
    """
    from cryojoint.simulation import simulate_to_folder

    summary = simulate_to_folder(out, n_micrographs=micrographs, size=size, seed=seed, preset=preset,
                                 frames=frames, overwrite=overwrite, progress=True)
    typer.echo(summary)


@app.command()
def train(
    micrographs: Annotated[list[str], typer.Argument(help=MICROGRAPHS_HELP)],
    labels: Annotated[Path, typer.Option(help="Partial particle labels (STAR, BOX folder, CSV, Topaz, IMOD).")],
    out: Annotated[Path, typer.Option(help="Run folder for model.pt, checkpoints and metrics.")],
    mode: Annotated[str | None, typer.Option(help="joint | joint-no-consistency | sequential | denoise-only | "
                                                  f"detect-only (default: {_TRAIN_DEFAULTS.mode}, or train.mode "
                                                  "of --config)")] = None,
    preset: Annotated[str | None, typer.Option(help="Architecture: default (fast on CPU) or paper (published). "
                                                    "Default: model.preset of --config, else default. Model keys "
                                                    "--config sets apply on top of the preset.")] = None,
    steps: Annotated[int | None, typer.Option(help=f"Training steps (minibatches) (default: {_TRAIN_DEFAULTS.steps}, "
                                                   "or train.steps of --config).")] = None,
    particle_diameter: Annotated[str | None, typer.Option(
        "--particle-diameter", help="Particle diameter: 250A (Ångström, with the pixel size from the MRC headers) or "
                                    "48px (input pixels; a bare 48 only where the headers give no pixel size). "
                                    "Default: data.particle_diameter_px of --config, else estimated from the labels "
                                    "(at low dose with few picks often only the particle's core: give it if you know "
                                    "it).")] = None,
    expected_particles: Annotated[float | None, typer.Option(
        help="Particles per micrograph, for training's prior and the automatic cut-off (default: "
             "data.expected_particles of --config; else the prior from the label density and "
             "--label-completeness, and the cut-off's count measured after training from where the labelled "
             "picks rank among the candidates).")] = None,
    label_completeness: Annotated[float | None, typer.Option(
        help=f"Share of the particles inside your labelled regions that you labelled, in (0, 1] (default: "
             f"{_DATA_DEFAULTS.label_completeness}, or data.label_completeness of --config); turns the label "
             "density into training's prior particle count (the cut-off's count is measured from the labels' "
             "scores).")] = None,
    downsample: Annotated[float | None, typer.Option(help="Bin micrographs by N before training (default: "
                                                        "data.downsample of --config, else automatic: the "
                                                        "smallest N that brings the particle to at most "
                                                        f"{_DATA_DEFAULTS.max_network_particle_px:.0f} px; "
                                                        "1 keeps the full size).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config (see config.yaml in any run folder); options "
                                                     "given on the command line override its values.")] = None,
    seed: Annotated[int | None, typer.Option(help=f"Random seed (default: {_TRAIN_DEFAULTS.seed}, or train.seed "
                                                  "of --config).")] = None,
    device: Annotated[str | None, typer.Option(help=f"auto | cpu | cuda | cuda:N | mps (default: "
                                                    f"{_TRAIN_DEFAULTS.device}, or train.device of --config)")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run.")] = False,
    ignore_unknown_labels: Annotated[bool, typer.Option(
        "--ignore-unknown-labels", help="Skip labels naming micrographs that were not given (their count is "
                                        "printed) instead of stopping with an error.")] = False,
    init: Annotated[str | None, typer.Option(help="Starting weights: general (fine-tune the shipped pretrained "
                                                  "model, its current version; micrographs are binned to its "
                                                  "particle size), general-v1 (the earlier version) or scratch "
                                                  "(random). Default: general for the default preset, scratch for "
                                                  "another architecture, or train.init of --config.")] = None,
    particle_contrast: Annotated[str | None, typer.Option(
        "--particle-contrast", help="dark | bright | auto: how particles look against the ice (default: "
                                    "data.particle_contrast of --config, else auto: read from the labelled picks; "
                                    "bright ones are inverted for the network, and the model keeps this).")] = None,
) -> None:
    """Train one network to denoise and pick, from micrographs and a few hand-picked particles.

    Example: cryojoint train data/dose_010/*.mrc --labels data/labels.star --out runs/m1 --steps 2000
    """
    from cryojoint.data import particle_diameter_in_pixels
    from cryojoint.training import train as train_model

    paths = _micrograph_paths(micrographs)
    diameter = None if particle_diameter is None else particle_diameter_in_pixels(particle_diameter, paths)
    cfg = _train_config(config, preset=preset, mode=mode, steps=steps, seed=seed, device=device,
                        particle_diameter=diameter, expected_particles=expected_particles,
                        downsample=downsample, label_completeness=label_completeness, init=init,
                        particle_contrast=particle_contrast)
    from cryojoint.distributed import is_main_process

    started = time.perf_counter()
    result = train_model(paths, labels, out, cfg, resume=resume, overwrite=overwrite,
                         command_line=_command_line(), ignore_unknown_labels=ignore_unknown_labels)
    if not is_main_process():  # under torchrun, one summary is enough
        return
    for note in result.notes[result.notes_printed:]:  # the rest were printed above the progress bar
        typer.echo(note)
    stop = "stopped early" if result.stopped_early else "finished"
    best = (f"best {result.metric_name} {result.best_metric:.4f} at step {result.best_step}"
            if result.metric_name.startswith("validation") else "nothing held out to validate on: the last step kept")
    typer.echo(f"{stop} after {result.steps_done} steps in {result.seconds:.0f} s of training "
               f"({time.perf_counter() - started:.0f} s in all, reading and counting included); {best}; "
               f"model: {result.model_path}")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="Trained model (RUN/model.pt), or 'general': the shipped "
                                               "pretrained model (give --particle-diameter).")],
    micrographs: Annotated[list[str], typer.Argument(help=MICROGRAPHS_HELP)],
    out: Annotated[Path, typer.Option(help="Output folder: picks.star, denoised/, heatmaps/, picks/<format>/.")],
    threshold: Annotated[str | None, typer.Option(help="Cut-off on the peak score (log-odds as in Topaz; "
                                                       "0 = probability 0.5), or a rule: auto "
                                                       "(= expected-count: keep as many picks as particles "
                                                       "expected; the general model, which expects none: the "
                                                       "top 25%, or as many as the candidates' probabilities "
                                                       "sum to where that is more), quantile (top 25% of "
                                                       "candidate scores, the paper's advice). A rule's cut-off "
                                                       "is one number for all the run's micrographs, chosen on "
                                                       "all of them: runs of other micrographs may cut one "
                                                       "differently (pin it with a number; `pick` re-cuts).")] = "auto",
    nms_radius: Annotated[float | None, typer.Option("--nms-radius", help="NMS radius in input pixels "
                                                     "(default: particle radius).")] = None,
    border: Annotated[float | None, typer.Option(help="Drop picks closer than this to the edge (input px).")] = None,
    formats: Annotated[str, typer.Option(help="Pick files: any of star,box,cbox,csv,topaz (one file per micrograph "
                                              "in picks/<format>/) and cs (one cryoSPARC picks.cs).")] = "star",
    outputs: Annotated[str, typer.Option(help="Any of picks,denoised,heatmap.")] = "picks,denoised,heatmap",
    downsample: Annotated[float | None, typer.Option(help="Bin input by N (default: as in training). For "
                                                   "micrographs at another pixel size than the training ones: the "
                                                   "N that makes the particle measure as it did in training "
                                                   "(a trained model keeps its particle size in network pixels). "
                                                   "Coordinates are written in input pixels.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
    workers: Annotated[int, typer.Option(help="Parallel workers (Dask).")] = 1,
    scheduler: Annotated[str | None, typer.Option(help="'local' or a Dask scheduler address tcp://host:port.")] = None,
    tile_size: Annotated[int | None, typer.Option(help="Largest block per network pass, px (default: the "
                                                  "model's predict.tile_size_px; windows are batched up to "
                                                  "256² px per pass, 1024² on CUDA). Smaller needs less "
                                                  "memory.")] = None,
    detector_window_stride: Annotated[float | None, typer.Option(
        help="Spacing of the detector's windows, a fraction of a window (default: the model's, 0.5). 0.25 "
             "picked better (AP +0.012 measured) and took ~1.7x as long.")] = None,
    precision: Annotated[str | None, typer.Option(
        help="Arithmetic of the network: auto | float32 | bfloat16 | float16 (default: the model's; auto = "
             "bfloat16 on CUDA and on CPUs with AVX512-BF16/AMX, about 2x faster on the CPU, else float32).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo micrographs already predicted.")] = False,
    particle_diameter: Annotated[str | None, typer.Option(
        "--particle-diameter", help=PARTICLE_DIAMETER_HELP)] = None,
    particle_contrast: Annotated[str | None, typer.Option(
        "--particle-contrast", help=PARTICLE_CONTRAST_HELP)] = None,
) -> None:
    """Denoise micrographs and pick particles with a trained model, or with the shipped general model.

    Example: cryojoint predict runs/m1/model.pt data/dose_010/*.mrc --out runs/m1/pred --formats star,box
    Example: cryojoint predict general data/*.mrc --particle-diameter 250A --out picks
    """
    from cryojoint.data import particle_diameter_in_pixels
    from cryojoint.prediction import predict_files

    paths = _micrograph_paths(micrographs)
    diameter = None if particle_diameter is None else particle_diameter_in_pixels(particle_diameter, paths)
    summary = predict_files(model, paths, out, threshold=_threshold(threshold), nms_radius_px=nms_radius,
                            border_px=border, downsample=downsample, formats=_split(formats),
                            outputs=_split(outputs), overwrite=overwrite, device=device, workers=workers,
                            scheduler=scheduler, command_line=_command_line(), tile_size_px=tile_size,
                            detector_window_stride_fraction=detector_window_stride, precision=precision,
                            particle_diameter_px=diameter, particle_contrast=particle_contrast)
    how = "fixed" if not summary.threshold_was_automatic else \
        "quantile-rule" if str(threshold).strip().lower() == QUANTILE_RULE else "automatic"
    done = summary.n_micrographs - len(summary.failures)
    if done and summary.threshold is None:  # --outputs without picks: nothing was cut
        typer.echo(f"{done} micrograph(s) ({summary.n_skipped} already done); no picks asked for; "
                   f"{summary.seconds_per_micrograph:.1f} s/micrograph; outputs: {summary.out_dir}")
    elif done:  # when every micrograph failed, only their errors say so
        typer.echo(f"{summary.n_picks} picks in {done} micrograph(s) ({summary.n_skipped} already done); {how} "
                   f"cut-off {summary.threshold:.3f}; {summary.seconds_per_micrograph:.1f} s/micrograph; picks: "
                   f"{summary.out_dir / 'picks.star'}")
    _exit_on_failures(summary.failures)


@app.command()
def denoise(
    micrographs: Annotated[list[str], typer.Argument(help=MICROGRAPHS_HELP)],
    out: Annotated[Path, typer.Option(help="Output folder: denoised/<name>.mrc, predict.json, output_settings.json.")],
    model: Annotated[Path, typer.Option(help="'general' (the shipped pretrained model) or a trained model.pt.")] =
    Path("general"),
    particle_diameter: Annotated[str | None, typer.Option(
        "--particle-diameter", help="Optional (250A or 48px): denoise at the scale the general model learned "
                                    "(particle of 36 px), averaged over the binning grid's phases, and write at "
                                    "the input's size. Default: denoise at the input's own pixel size (or as the "
                                    "trained model was trained).")] = None,
    downsample: Annotated[float | None, typer.Option(help="Bin input by N before denoising and write the binned "
                                                          "images (default: 1 for the general model, as in "
                                                          "training for a trained one).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
    precision: Annotated[str | None, typer.Option(help="auto | float32 | bfloat16 | float16 (default: the "
                                                       "model's).")] = None,
    workers: Annotated[int, typer.Option(help="Parallel workers (Dask).")] = 1,
    scheduler: Annotated[str | None, typer.Option(help="'local' or a Dask scheduler address tcp://host:port.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo micrographs already denoised.")] = False,
    adapt_steps: Annotated[int, typer.Option(help="First fine-tune the general model's denoiser on these "
                                                  "micrographs for N steps (self-supervised, no labels; the "
                                                  "adapted model is kept in OUT/adapted/). 0: no adaptation.")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed of the adaptation.")] = 0,
    particle_contrast: Annotated[str | None, typer.Option(
        "--particle-contrast", help=PARTICLE_CONTRAST_HELP)] = None,
) -> None:
    """Denoise micrographs with no training (like Topaz-Denoise): the general model's denoiser alone.

    Example: cryojoint denoise data/*.mrc --out denoised
    Example: cryojoint denoise data/*.mrc --out denoised --adapt-steps 200
    """
    from cryojoint.data import particle_diameter_in_pixels
    from cryojoint.prediction import holds_earlier_outputs, predict_files

    paths = _micrograph_paths(micrographs)
    diameter = None if particle_diameter is None else particle_diameter_in_pixels(particle_diameter, paths)
    at_input_size = diameter is not None and downsample is None
    if adapt_steps:
        from cryojoint.config import SHIPPED_MODEL_NAMES
        from cryojoint.pretraining import adapt_denoiser, adaptation_request, finished_adaptation

        if str(model) not in SHIPPED_MODEL_NAMES:
            _fail(f"--adapt-steps adapts a shipped model ({', '.join(SHIPPED_MODEL_NAMES)}), not {model}")
        request = adaptation_request(paths, adapt_steps, str(model), diameter, downsample, seed, particle_contrast)
        same_again = not overwrite and finished_adaptation(out / "adapted", request) is not None
        if not overwrite and not same_again and holds_earlier_outputs(out):  # said before minutes of adapting
            _fail(f"{out}: holds the outputs of another run, and --adapt-steps makes new weights whose outputs "
                  "would mix with them: rerun with --overwrite to replace them, or write to another folder")
        model = adapt_denoiser(paths, out / "adapted", adapt_steps, str(model), diameter, downsample, seed,
                               overwrite=overwrite, particle_contrast=particle_contrast)
        particle_contrast = None  # the adapted model keeps what it read
        diameter, downsample = None, None  # the adapted model bins as it was adapted
    summary = predict_files(model, paths, out, downsample=downsample, outputs=["denoised"], overwrite=overwrite,
                            device=device, workers=workers, scheduler=scheduler, command_line=_command_line(),
                            precision=precision, particle_diameter_px=diameter, denoise_at_input_size=at_input_size,
                            particle_contrast=particle_contrast)
    if len(summary.failures) < summary.n_micrographs:
        typer.echo(f"{summary.n_micrographs - len(summary.failures) - summary.n_skipped} micrograph(s) denoised "
                   f"({summary.n_skipped} already done); {summary.seconds_per_micrograph:.1f} s/micrograph; "
                   f"images: {summary.out_dir / 'denoised'}")
    _exit_on_failures(summary.failures)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def relion(
    ctx: typer.Context,
    o: Annotated[Path, typer.Option("--o", help="The job folder RELION gives (External/jobNNN/).")],
    in_mics: Annotated[Path | None, typer.Option("--in_mics", help="Micrographs STAR file (e.g. "
                                                 "CtfFind/job003/micrographs_ctf.star).")] = None,
    in_coords: Annotated[Path | None, typer.Option("--in_coords", help="Coordinate index of the training picks "
                                                   "(e.g. ManualPick/job004/manualpick.star).")] = None,
    in_parts: Annotated[Path | None, typer.Option("--in_parts", help="Particles STAR file of training picks "
                                                  "(with or instead of --in_coords).")] = None,
    task: Annotated[str, typer.Option("--task", help="train, predict, or train,predict.")] = "train,predict",
    model: Annotated[Path | None, typer.Option("--model", help="model.pt to predict with when --task is "
                                               "predict (e.g. External/job010/train/model.pt), or 'general': "
                                               "the shipped model, no training (give the diameter).")] = None,
    particle_diameter: Annotated[float | None, typer.Option(
        "--particle_diameter", help="Particle diameter in micrograph pixels (default: estimated from the "
                                    "picks; required with --model general).")] = None,
    particle_diameter_angstrom: Annotated[float | None, typer.Option(
        "--particle_diameter_angstrom", help="Particle diameter in Å, converted with the optics block's "
                                             "_rlnMicrographPixelSize (instead of --particle_diameter).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help=f"Training steps (default: "
                                              f"{_TRAIN_DEFAULTS.steps}).")] = None,
    threshold: Annotated[str | None, typer.Option("--threshold", help="Cut-off on the score (log-odds) or "
                                                  "auto / quantile, as for predict.")] = "auto",
    config: Annotated[Path | None, typer.Option("--config", help="YAML config, as for train.")] = None,
    j: Annotated[int, typer.Option("--j", help="Threads (RELION's 'Number of threads').")] = 1,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps (default: "
                                               "train.device of --config, else auto)")] = None,
    relion_version: Annotated[str, typer.Option("--relion_version", help="Node type labels of RELION 4 or "
                                                "5.")] = "4",
) -> None:
    """Run as a RELION 4/5 External job: train on manual picks, then pick and denoise every micrograph.

    Example (from the RELION project folder): cryojoint relion --o External/job005/ --in_mics
    CtfFind/job003/micrographs_ctf.star --in_coords ManualPick/job004/manualpick.star --particle_diameter 52 --j 2

    Writes per-micrograph coordinate STARs, autopick.star, micrographs_denoised.star, RELION_OUTPUT_NODES.star
    and RELION_JOB_EXIT_SUCCESS/FAILURE (ABORTED when RELION_JOB_ABORT_NOW appears). Options RELION adds that
    this job does not use (e.g. --pipeline_control) are ignored.
    """
    from cryojoint import relion as external

    ignored = external.unknown_options(ctx.args)
    if ignored:
        typer.echo(f"ignored: {'; '.join(ignored)}")

    def make_job() -> tuple[external.ExternalJob, CryojointConfig]:
        job = external.ExternalJob(o, in_mics, in_coords, in_parts, external.parse_tasks(task), model,
                                   particle_diameter_angstrom, _threshold(threshold), j, device, relion_version)
        return job, _train_config(config, steps=steps, particle_diameter=particle_diameter)

    code = external.run_external_job(o, make_job, typer.echo, lambda line: typer.echo(line, err=True))
    raise typer.Exit(code)


@app.command()
def pick(
    prediction: Annotated[Path, typer.Argument(help="A predict output folder (holds candidates.star).")],
    out: Annotated[Path, typer.Option(help="Output folder: picks.star, picks/<format>/, pick.json.")],
    threshold: Annotated[float | None, typer.Option(help="Keep candidates scoring at least this (log-odds; "
                                                    "0 = probability 0.5).")] = None,
    count: Annotated[int | None, typer.Option(help="Keep the N best candidates of each micrograph "
                                              "(instead of --threshold).")] = None,
    formats: Annotated[str, typer.Option(help="Per-micrograph pick files: any of star,box,cbox,csv,"
                                              "topaz.")] = "star",
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
) -> None:
    """Re-cut picks from a predict output at another cut-off or count, without running the network.

    Example: cryojoint pick runs/m1/pred --threshold 2 --out runs/m1/pick_t2
    """
    from cryojoint.recut import RECORD_NAME, pick_files

    picks, written = pick_files(prediction, out, threshold=threshold, count=count, formats=_split(formats),
                                overwrite=overwrite)
    rule = f"cut-off {threshold:g}" if threshold is not None else f"the best {count} per micrograph"
    n_micrographs = json.loads((out / RECORD_NAME).read_text())["n_micrographs"]
    typer.echo(f"{len(picks)} picks ({rule}) in {picks['micrograph'].nunique()} of {n_micrographs} "
               f"micrograph(s); wrote {len(written)} file(s): {out / 'picks.star'}")


@app.command(name="threshold")
def threshold_command(
    prediction: Annotated[Path, typer.Argument(help="A predict output folder (holds candidates.star).")],
    cutoffs: Annotated[str | None, typer.Option(help="Comma-separated cut-offs (log-odds), e.g. -2,0,2,4 "
                                                "(default: 7 spread over the scores, plus the run's own).")] = None,
    png: Annotated[Path | None, typer.Option(help="Score histogram (default: PRED_DIR/score_histogram.png).")] =
    None,
) -> None:
    """Print the picks per micrograph at a range of cut-offs and write the score histogram, to choose one.

    Example: cryojoint threshold runs/m1/pred --cutoffs -2,0,2,4
    """
    from rich.console import Console
    from rich.table import Table

    from cryojoint.recut import threshold_summary

    values = None
    if cutoffs is not None:
        try:
            values = [float(v) for v in _split(cutoffs)]
        except ValueError:
            raise UserInputError(None, f"--cutoffs must be numbers separated by commas, not '{cutoffs}'") from None
    counts, png_path, run = threshold_summary(prediction, values, png)
    own = "" if run.threshold is None else f" (the run's own cut-off: {round(run.threshold, 3):g})"
    table = Table(title=f"picks per micrograph at each cut-off{own}")
    table.add_column("micrograph")
    for column in counts.columns:
        table.add_column(f">= {column}", justify="right")
    for name, row in counts.iterrows():
        table.add_row(str(name), *(str(int(v)) for v in row))
    Console(width=max(80, 16 + 10 * len(counts.columns))).print(table)
    typer.echo(f"score histogram: {png_path}")


@app.command()
def evaluate(
    picks: Annotated[Path | None, typer.Option(help="Predicted picks (STAR/CSV/Topaz/folder), or a predict output "
                                                    "folder: AP over all its candidates, P/R/F1 at its cut-off "
                                                    "(or --threshold), on the micrographs it predicted.")] = None,
    truth: Annotated[Path | None, typer.Option(help="True particle coordinates.")] = None,
    match_radius: Annotated[float | None, typer.Option(help="Match distance in px (default: the true particle "
                                                       "radius, from simulation.yaml beside the truth as "
                                                       "'cryojoint simulate' writes it; required otherwise). Never "
                                                       "the scored method's own size estimate: every method gets "
                                                       "the same yardstick.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Score cut-off for P/R/F1 (default: all picks).")] = None,
    masks: Annotated[Path | None, typer.Option(help="Folder of per-micrograph mask MRCs to exclude.")] = None,
    denoised: Annotated[Path | None, typer.Option(help="Folder of denoised MRCs.")] = None,
    reference: Annotated[Path | None, typer.Option(help="Folder of reference (full-dose) MRCs.")] = None,
    clean: Annotated[Path | None, typer.Option(help="Folder of noise-free MRCs (simulated data).")] = None,
    lowpass_angstrom: Annotated[float | None, typer.Option(help="Also score vs the reference low-passed to "
                                                           "this resolution (Å).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full results as JSON.")] = None,
) -> None:
    """Score picks against truth (precision, recall, F1, AP) and denoised images against references (PSNR, FRC).

    Example: cryojoint evaluate --picks runs/m1/pred/picks.star --truth data/truth.star --match-radius 12

    The match radius used, and where it came from, is printed, in the picking table's title and in --json.
    """
    from cryojoint.evaluation import PickingReport, evaluate_files
    from cryojoint.progress import output_console
    from cryojoint.recut import is_prediction_folder

    if picks is not None and is_prediction_folder(picks):
        cut = "--threshold" if threshold is not None else "the run's own cut-off"
        typer.echo(f"picks: every candidate of the predict folder {picks} (precision, recall, F1 at {cut})")
    results = evaluate_files(picks=picks, truth=truth, match_radius=match_radius, threshold=threshold,
                             mask_dir=masks, denoised_dir=denoised, reference_dir=reference, clean_dir=clean,
                             lowpass_angstrom=lowpass_angstrom, json_path=json_out)
    console = output_console()  # piped or logged, rich would cut the table to 80 columns
    for report in results.values():
        console.print(report.to_rich_table())
    picking = results.get("picking")
    if isinstance(picking, PickingReport):
        typer.echo(picking.describe_match_radius())
        ignored = picking.ignored_pick_micrographs
        if ignored:
            typer.echo(f"not scored: the picks of {len(ignored)} micrograph(s) the truth does not cover "
                       f"({first_names(ignored)})")
        failed = picking.failed_prediction_micrographs
        if failed:
            typer.echo(f"scored as picking nothing: {len(failed)} micrograph(s) whose prediction failed "
                       f"({first_names(failed)}; predict.json says why)")


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run folder (from train, demo or the benchmark).")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default: RUN/report.html).")] = None,
) -> None:
    """Write one self-contained HTML page: images, picks, score histogram, PR curves, losses, tables.

    Example: cryojoint report runs/demo
    """
    from cryojoint.report import write_report

    path = write_report(run, out)
    typer.echo(f"report: {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Folder for the demo data, model, predictions and report.")] = Path(
        "runs/demo"),
    steps: Annotated[int | None, typer.Option(help="Training steps (default: fits a few CPU minutes).")] = None,
    dose: Annotated[str, typer.Option(help="Dose fraction to train and pick on: dose_010, dose_020, dose_060.")] =
    "dose_020",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo folder.")] = False,
) -> None:
    """Simulate a small dataset, train, pick, denoise, evaluate and write a report: the first thing to run.

    Example: cryojoint demo runs/demo
    """
    from cryojoint.demo import run_demo

    result = run_demo(out, steps=steps, dose=dose, seed=seed, overwrite=overwrite)
    typer.echo(result)


@app.command()
def pretrain(
    out: Annotated[Path, typer.Option(help="Folder for the corpus manifest, the training run and general.pt.")],
    steps: Annotated[int, typer.Option(help="Training steps.")] = 6000,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    corpus_seed: Annotated[int, typer.Option(help="Seed of the simulated corpus (offset within its own seed "
                                                  "range, disjoint from the benchmark's).")] = 0,
    simulations_per_structure: Annotated[int | None, typer.Option(
        help="Pixel sizes (simulations) per structure (default: the corpus's, 4).")] = None,
    micrographs_per_simulation: Annotated[int | None, typer.Option(
        help="Micrographs per simulation (default: the corpus's, 3).")] = None,
    structures: Annotated[str | None, typer.Option(help="Comma-separated simulator presets (default: all shipped "
                                                        "structures), e.g. to hold one out.")] = None,
    real: Annotated[list[Path] | None, typer.Option(
        "--real", help="A real micrograph (MRC with its pixel size in the header) for the denoiser: no labels, "
                       "the detection loss does not score it (its particles are unknown). Repeat for several.")] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads (default: all cores).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/run/checkpoint.pt.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run.")] = False,
) -> None:
    """Pretrain the general model on a simulated corpus of every shipped structure; writes OUT/general.pt.

    Example: cryojoint pretrain --out runs/general --steps 6000 --real exposure1.mrc --real exposure2.mrc
    """
    from cryojoint.pretraining import CorpusConfig
    from cryojoint.pretraining import pretrain as pretrain_general

    corpus = CorpusConfig(seed=corpus_seed, **_given(pixel_sizes_per_structure=simulations_per_structure,
                                                     micrographs_per_simulation=micrographs_per_simulation,
                                                     structures=tuple(_split(structures)) if structures else None,
                                                     real_micrographs=tuple(str(p) for p in real) if real else None))
    path = pretrain_general(out, steps=steps, corpus_config=corpus, seed=seed, resume=resume, overwrite=overwrite,
                            threads=threads)
    typer.echo(f"general model: {path}")


def relion_main() -> None:
    """``cryojoint-relion``: the ``relion`` command as one executable, for RELION's "External executable" field."""
    sys.argv.insert(1, "relion")
    main()


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """Warnings the library gives users read as one line, not as our source file and line with its code."""
    return f"warning: {message}\n"


def main() -> None:
    """Console entry point: user mistakes become one line and exit code 2, never a traceback."""
    import warnings

    warnings.formatwarning = _warning_line
    try:
        app()
    except UserInputError as err:
        typer.echo(f"error: {err.one_line()}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED_LINE, err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as err:
        if err.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        typer.echo(f"error: {where}{err.strerror or err}", err=True)
        sys.exit(EXIT_ENVIRONMENT_ERROR)


if __name__ == "__main__":
    main()
