"""RELION 4/5 External job: train on a project's manual picks, then pick and denoise its micrographs.

RELION's External job runs ``cryojoint relion --o External/jobNNN/ --in_mics <micrographs STAR>
[--in_coords <coordinate index>] [--in_parts <particles STAR>] [--label value ...] --j N`` from the project
folder; every path in RELION's STAR files is relative to that folder. This module does the job and writes what
RELION reads back, all under ``--o``:

``<Movies/...>/<mic>_autopick.star``
    one coordinate STAR per micrograph (``_rlnCoordinateX/Y`` in the micrograph's pixels,
    ``_rlnAutopickFigureOfMerit`` = our score, log-odds), mirroring the input layout below the producing job's
    folder, as RELION's own pickers do;
``autopick.star``
    the coordinate index (``data_coordinate_files``: ``_rlnMicrographName``, ``_rlnMicrographCoordinates``);
``micrographs_denoised.star`` + ``denoised/<mic>.mrc``
    the denoised micrographs with the input's optics block and per-micrograph metadata (CTF, ...);
``RELION_OUTPUT_NODES.star``
    the two output nodes;
``train/``, ``picks.star``, ``candidates.star``, ``predict.json``
    our own run (model, metrics; every candidate with its score for re-cutting);
``RELION_JOB_EXIT_SUCCESS`` / ``_FAILURE`` / ``_ABORTED``
    written last. ``RELION_JOB_ABORT_NOW`` in ``--o`` is polled after every training step and before every
    micrograph; the run then stops cleanly (training keeps its checkpoint, so running the job again continues).

Node types: RELION 4/5 read the label (``_rlnPipeLineNodeTypeLabel``, ``PipeLine::getOutputNodesFromStarFile``),
RELION 3.1 the number (``_rlnPipeLineNodeType``, an integer there); both are written. RELION 5 renamed the
labels (``MicrographCoordsGroup``, ``MicrographGroupMetadata``; 4.0 has ``MicrographsCoords``,
``MicrographsData``); ``relion_version="5"`` writes RELION 5's, so its GUI offers the nodes as inputs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import starfile

from cryojoint._atomic import atomic_path
from cryojoint.checkpoint import is_shipped_model
from cryojoint.config import CryojointConfig
from cryojoint.errors import StopRequested, UserInputError
from cryojoint.io.coords import per_micrograph_file, read_coordinates
from cryojoint.io.inputs import MicrographsStar, read_micrographs_star
from cryojoint.io.mrc import micrograph_name

ABORT_NOW = "RELION_JOB_ABORT_NOW"
EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
OUTPUT_NODES = "RELION_OUTPUT_NODES.star"
COORDINATE_INDEX = "autopick.star"
DENOISED_STAR = "micrographs_denoised.star"
TRAIN_DIR = "train"
TASKS: tuple[str, ...] = ("train", "predict")
#: Node type labels by RELION version (src/pipeline_jobs.h: LABEL_AUTOPICK_COORDS, LABEL_AUTOPICK_MICS).
NODE_LABELS: dict[str, dict[str, str]] = {
    "4": {"coords": "MicrographsCoords.star.relion.autopick", "mics": "MicrographsData.star.relion"},
    "5": {"coords": "MicrographCoordsGroup.star.relion.autopick", "mics": "MicrographGroupMetadata.star.relion"},
}
#: RELION 3.1's integer node types (NODE_MICS, NODE_MIC_COORDS), for readers that know only those.
NODE_CODES: dict[str, int] = {"mics": 1, "coords": 2}
#: Exit codes: a user mistake (as every cryojoint command), an abort on RELION's request.
EXIT_CODE_FAILURE, EXIT_CODE_ABORTED = 2, 1
_JOB_FOLDER = re.compile(r"job\d+")


@dataclass
class ExternalJob:
    """One External job's options, as RELION passes them (units: input pixels unless named otherwise)."""

    out_dir: Path
    in_mics: Path | None = None
    in_coords: Path | None = None
    in_parts: Path | None = None
    tasks: tuple[str, ...] = TASKS
    model: Path | None = None  # for --task predict alone: a model.pt from an earlier job, or a shipped model's name
    particle_diameter_angstrom: float | None = None  # converted with the optics block's pixel size
    threshold: float | str | None = None
    threads: int = 1
    device: str | None = None  # None: the config's train.device (default auto)
    relion_version: str = "4"


def parse_tasks(value: str) -> tuple[str, ...]:
    """``train,predict`` -> ``("train", "predict")``, in the order they run."""
    given = {t.strip() for t in value.split(",") if t.strip()}
    unknown = sorted(given - set(TASKS))
    if unknown or not given:
        raise UserInputError(None, f"--task must be train, predict or train,predict, not '{value}'")
    return tuple(t for t in TASKS if t in given)


def mirrored_folder(micrograph: str) -> Path:
    """Where RELION's pickers put a micrograph's coordinate file inside their job folder.

    ``MotionCorr/job002/Movies/GridA/mic.mrc`` -> ``Movies/GridA``: the producing job's ``Type/jobNNN/`` is
    dropped and the folders below it kept. Paths outside a job folder keep their relative folders; absolute
    paths keep none (there is nothing to mirror inside the project).
    """
    path = Path(micrograph)
    if path.is_absolute():
        return Path()
    parts = [p for p in path.parent.parts if p not in (".", "..")]
    if len(parts) >= 2 and _JOB_FOLDER.fullmatch(parts[1]):
        parts = parts[2:]
    return Path(*parts) if parts else Path()


def clear_exit_files(out_dir: Path) -> None:
    """Remove the exit markers of an earlier run of this job (RELION reads the first one it finds)."""
    for name in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
        (out_dir / name).unlink(missing_ok=True)


def run_external_job(out_dir: Path, make_job: Callable[[], tuple[ExternalJob, CryojointConfig]],
                     echo: Callable[[str], None] = print, echo_error: Callable[[str], None] = print) -> int:
    """Run the job in ``out_dir`` and leave exactly one exit marker there; return the process exit code.

    ``make_job`` parses the options into the job and its training config inside the guard, so a bad option
    still ends in ``RELION_JOB_EXIT_FAILURE``. A user mistake prints one ``error:`` line; a bug writes the
    failure marker and re-raises, keeping its traceback.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        echo_error(f"error: {out_dir}: cannot create the job folder ({err.strerror})")
        return EXIT_CODE_FAILURE
    clear_exit_files(out_dir)
    try:
        job, config = make_job()
        _run(job, config, echo)
    except StopRequested as stop:
        echo(f"aborted: {stop} ({ABORT_NOW} found)")
        (out_dir / EXIT_ABORTED).touch()
        return EXIT_CODE_ABORTED
    except UserInputError as err:
        echo_error(f"error: {err.one_line()}")
        (out_dir / EXIT_FAILURE).touch()
        return EXIT_CODE_FAILURE
    except BaseException:
        (out_dir / EXIT_FAILURE).touch()
        raise
    (out_dir / EXIT_SUCCESS).touch()
    return 0


def _run(job: ExternalJob, config: CryojointConfig, echo: Callable[[str], None]) -> None:
    """Check every input, then train and/or predict, then write RELION's files."""
    import torch

    from cryojoint.prediction import predict_files
    from cryojoint.training import CHECKPOINT_NAME, MODEL_NAME, train

    if job.relion_version not in NODE_LABELS:
        raise UserInputError(None, f"--relion_version must be {' or '.join(NODE_LABELS)}")
    if job.in_mics is None:
        raise UserInputError(None, "--in_mics (a micrographs STAR file) is required")
    mics = read_micrographs_star(job.in_mics)
    config = _with_diameter_from_angstrom(config, job.particle_diameter_angstrom, mics)
    config.train = dataclasses.replace(config.train, threads=job.threads,
                                       device=job.device or config.train.device)
    torch.set_num_threads(max(job.threads, 1))
    should_stop = (job.out_dir / ABORT_NOW).exists
    run_dir = job.out_dir / TRAIN_DIR
    model_path = job.model if job.model is not None else run_dir / MODEL_NAME
    # A shipped model by name picks with no training at all; the diameter is then the only thing it is told.
    shipped = "train" not in job.tasks and job.model is not None and is_shipped_model(job.model)
    labels = _read_labels(job) if "train" in job.tasks else None
    if shipped and config.data.particle_diameter_px is None:  # said in this job's words, not predict's flags
        raise UserInputError(None, f"the shipped model '{job.model}' needs the particle's size: "
                             "--particle_diameter_angstrom 250 (with the optics block's pixel size) or "
                             "--particle_diameter 48 (pixels)")
    if "train" not in job.tasks and not shipped and not model_path.is_file():
        raise UserInputError(model_path, "model not found (--task predict needs --model RUN/model.pt, --model "
                             "general with the particle diameter, or a job that trained one)")

    fresh = True
    if labels is not None:
        names = set(labels["micrograph"].astype(str))
        train_paths = [p for p in mics.paths if micrograph_name(p) in names]
        if not train_paths:
            raise UserInputError(job.in_coords or job.in_parts, "no labelled micrograph is in --in_mics")
        fresh = not (run_dir / CHECKPOINT_NAME).is_file()
        echo(f"training on the {len(train_paths)} labelled of {len(mics.paths)} micrographs"
             + ("" if fresh else f" (continuing from {run_dir / CHECKPOINT_NAME})"))
        result = train(train_paths, labels, run_dir, config, resume=not fresh, overwrite=fresh,
                       ignore_unknown_labels=True, should_stop=should_stop)
        for note in result.notes[result.notes_printed:]:  # the rest were printed above the progress bar
            echo(note)
        echo(f"trained {result.steps_done} steps; model: {result.model_path}")
    if "predict" not in job.tasks:
        return
    summary = predict_files(model_path, mics.paths, job.out_dir, threshold=job.threshold, formats=(),
                            outputs=("picks", "denoised"), overwrite=fresh, device=config.train.device,
                            should_stop=should_stop,
                            particle_diameter_px=config.data.particle_diameter_px if shipped else None,
                            particle_contrast=config.data.particle_contrast if shipped else None)
    if summary.failures:
        first = next(iter(summary.failures.values()))
        raise UserInputError(None, f"{len(summary.failures)} micrograph(s) failed, e.g. {first}")
    picks = summary.picks if summary.picks is not None else pd.DataFrame(columns=["micrograph", "x", "y", "score"])
    index = write_coordinate_files(job.out_dir, mics, picks)
    denoised = write_denoised_star(job.out_dir, mics, _downsample_of(job.out_dir))
    nodes = {index: "coords"} if denoised is None else {index: "coords", denoised: "mics"}
    write_output_nodes(job.out_dir, nodes, job.relion_version)
    echo(f"{len(picks)} picks in {len(mics.paths)} micrographs at cut-off {summary.threshold:.3f}; "
         f"coordinates: {index}; denoised micrographs: "
         + (str(denoised) if denoised is not None else "none (the model has no denoiser)"))


def _read_labels(job: ExternalJob) -> pd.DataFrame:
    """The training picks: the coordinate index's files and/or the particles STAR, together."""
    sources = [s for s in (job.in_coords, job.in_parts) if s is not None]
    if not sources:
        raise UserInputError(None, "training needs labels: --in_coords (a coordinate index, e.g. from ManualPick) "
                             "or --in_parts (a particles STAR file)")
    tables = []
    for source in sources:
        if not Path(source).is_file():
            raise UserInputError(source, "file not found")
        tables.append(read_coordinates(source, "star"))
    return pd.concat(tables, ignore_index=True).drop_duplicates(subset=["micrograph", "x", "y"])


def _with_diameter_from_angstrom(config: CryojointConfig, diameter_angstrom: float | None,
                                 mics: MicrographsStar) -> CryojointConfig:
    """``--particle_diameter_angstrom`` in input pixels, through the optics block's pixel size."""
    if diameter_angstrom is None:
        return config
    if config.data.particle_diameter_px is not None:
        raise UserInputError(None, "a diameter in pixels (--particle_diameter, or data.particle_diameter_px of "
                             "--config) and --particle_diameter_angstrom both given: give one")
    pixel_size = mics.pixel_size()
    if pixel_size is None:
        raise UserInputError(mics.source, "no single _rlnMicrographPixelSize in data_optics to convert "
                             "--particle_diameter_angstrom (give --particle_diameter in pixels)")
    config.data = dataclasses.replace(config.data, particle_diameter_px=diameter_angstrom / pixel_size)
    return config


def _downsample_of(out_dir: Path) -> float:
    """The binning the prediction ran at (predict.json), which scales the denoised micrographs' pixel size."""
    from cryojoint.prediction import read_run_record

    return float((read_run_record(out_dir) or {}).get("downsample", 1))


def write_coordinate_files(out_dir: Path, mics: MicrographsStar, picks: pd.DataFrame) -> Path:
    """One ``<mic>_autopick.star`` per micrograph (empty when it has no picks) and the ``autopick.star`` index."""
    rows = []
    by_name = {str(name): group for name, group in picks.groupby("micrograph", sort=False)}
    for listed in mics.micrographs["rlnMicrographName"].astype(str):
        name = micrograph_name(listed)
        target = per_micrograph_file(out_dir / mirrored_folder(listed), name, "star")
        mine = by_name.get(name, picks.iloc[:0])
        table = pd.DataFrame({"rlnCoordinateX": mine["x"].to_numpy(float),
                              "rlnCoordinateY": mine["y"].to_numpy(float),
                              "rlnAutopickFigureOfMerit": mine["score"].to_numpy(float)})
        _write_star({"": table}, target)
        rows.append((listed, str(target)))
    index = out_dir / COORDINATE_INDEX
    _write_star({"coordinate_files": pd.DataFrame(rows, columns=["rlnMicrographName", "rlnMicrographCoordinates"])},
                index)
    return index


def write_denoised_star(out_dir: Path, mics: MicrographsStar, downsample: float) -> Path | None:
    """The denoised micrographs as a RELION micrographs STAR: the input's rows and optics, new file names.

    Binned denoising (``downsample`` > 1) changes the pixel size, so the optics block's
    ``_rlnMicrographPixelSize`` is scaled with it. ``None`` when the model denoised nothing (detect-only).
    """
    from cryojoint.inference import DENOISED_DIR

    rows = mics.micrographs.copy()
    rows["rlnMicrographName"] = [str(out_dir / DENOISED_DIR / f"{micrograph_name(n)}.mrc")
                                 for n in rows["rlnMicrographName"].astype(str)]
    missing = [n for n in rows["rlnMicrographName"] if not Path(n).is_file()]
    if len(missing) == len(rows):
        return None
    if missing:
        raise UserInputError(missing[0], f"denoised micrograph missing ({len(missing)} in all)")
    blocks: dict[str, pd.DataFrame] = {}
    if mics.optics is not None:
        optics = mics.optics.copy()
        if downsample > 1 and "rlnMicrographPixelSize" in optics.columns:
            optics["rlnMicrographPixelSize"] = pd.to_numeric(optics["rlnMicrographPixelSize"]) * downsample
        blocks["optics"] = optics
    blocks["micrographs"] = rows
    path = out_dir / DENOISED_STAR
    _write_star(blocks, path)
    return path


def write_output_nodes(out_dir: Path, nodes: dict[Path, str], relion_version: str) -> Path:
    """``RELION_OUTPUT_NODES.star``: each node's name, type label (RELION 4/5) and type number (RELION 3.1)."""
    labels = NODE_LABELS[relion_version]
    table = pd.DataFrame({"rlnPipeLineNodeName": [str(p) for p in nodes],
                          "rlnPipeLineNodeTypeLabel": [labels[kind] for kind in nodes.values()],
                          "rlnPipeLineNodeType": [NODE_CODES[kind] for kind in nodes.values()]})
    path = out_dir / OUTPUT_NODES
    _write_star({"output_nodes": table}, path)
    return path


def _write_star(blocks: dict[str, pd.DataFrame], path: Path) -> None:
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp)


def unknown_options(args: Sequence[str]) -> list[str]:
    """The ``--label value`` pairs RELION added that this job does not use, for one line of the log."""
    return [" ".join(args[i:i + 2]) if i + 1 < len(args) and not args[i + 1].startswith("--") else args[i]
            for i in range(len(args)) if args[i].startswith("--")]
