"""Topaz (``topaz-em`` 0.3.20) as a benchmark peer: own venv, CPU only, run as subprocesses.

Why this module exists: a fair comparison needs Topaz installed and driven the way its authors intend
(``preprocess`` → ``train`` → ``extract``, coordinates scaled with ``convert``/``-x``), minus the defects of
0.3.20 that would make it a straw man (see ``/work/shared/peers.md`` and ``benchmarks/peers/README.md``):

* PyPI's ``torchvision`` wheels are CUDA builds whose C extension cannot load next to the CPU torch, and
  ``import torchvision`` then dies registering a fake kernel for ``torchvision::nms``. Topaz only needs
  ``torchvision.transforms.functional`` (pure Python), so we run Topaz through a small launcher written into
  its venv that declares the two missing operator schemas when the extension is absent.
* ``topaz train`` counts "pixels per particle" on a 3D grid ((2r+1)x too many). That inflates ``-n`` *and*
  the observed labelled fraction it subtracts from ``--pi``. We pass a ``--pi`` that, after Topaz's own
  subtraction, leaves exactly the true expected positive fraction of the unlabelled pixels.

Topaz is never imported here: every step is a subprocess of the launcher, timed, with its peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd

from cryojoint.errors import UserInputError
from cryojoint.io.mrc import micrograph_name, read_micrograph, write_mrc

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / "benchmarks" / ".venv-topaz"

TOPAZ_VERSION = "0.3.20"
#: CPU torch that lies in the machine's wheel folder; torchvision must be pinned in the SAME pip command, or
#: its ``torch`` requirement pulls a ~5 GB CUDA torch.
TORCH_VERSION = "2.13.0"
TORCHVISION_VERSION = "0.28.0"
#: Topaz loads its shipped weights through ``pkg_resources`` (``importlib.resources`` cannot take its
#: ``../pretrained`` paths), which setuptools 81 removed.
SETUPTOOLS_SPEC = "setuptools<81"
ENV_MARKER_NAME = "cryojoint-topaz-env.json"
LAUNCHER_NAME = "topaz-cpu"
#: Environment variable the launcher reads to seed Python, NumPy and torch global RNGs.
SEED_ENV_VAR = "CRYOJOINT_TOPAZ_SEED"

CPU_DEVICE = "-1"
#: Topaz's documented ceiling on particle *diameter* after downsampling, per model (its GUI help text).
MAX_PARTICLE_DIAMETER_PX = {"resnet8": 70, "conv31": 30, "conv63": 62, "conv127": 126}
#: Topaz's default training radius (``topaz train -r``), in preprocessed pixels; the docs advise a training
#: radius smaller than the particle radius, and the extraction radius equal to it.
TOPAZ_DEFAULT_TRAIN_RADIUS_PX = 3
#: Topaz's default extraction cut-off (logit); scores are logits.
TOPAZ_DEFAULT_THRESHOLD = -6.0
#: Low enough that extraction returns (nearly) every local maximum, so an evaluator can sweep the ranking.
FULL_RANKING_THRESHOLD = -20.0
#: GNU time prints the peak RSS in KiB with ``%M``.
GNU_TIME = Path("/usr/bin/time")
KIB_PER_MIB = 1024.0
#: Lines of a failing command's output quoted in the error.
ERROR_TAIL_LINES = 25

TOPAZ_COORD_COLUMNS = ("image_name", "x_coord", "y_coord")

_LAUNCHER_SOURCE = '''\
#!{python}
"""Run the Topaz CLI on CPU-only torch. Written by cryojoint's benchmarks/peers/topaz.py; do not edit.

PyPI's torchvision wheel is a CUDA build: its C extension fails to load next to torch+cpu, and
``import torchvision`` then fails registering a fake kernel for ``torchvision::nms``. Topaz only uses
torchvision's pure-Python image transforms, so declaring the missing operator schemas is enough.
"""
import importlib.util
import os
import random
import sys
from pathlib import Path

import numpy
import torch

_TORCHVISION_STUB_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _declare_missing_torchvision_ops():
    spec = importlib.util.find_spec("torchvision")
    extension = Path(list(spec.submodule_search_locations)[0]) / "_C.so"
    try:
        torch.ops.load_library(str(extension))
        return None
    except OSError:
        library = torch.library.Library("torchvision", "DEF")
        for schema in _TORCHVISION_STUB_SCHEMAS:
            library.define(schema)
        return library


_KEEP_ALIVE = _declare_missing_torchvision_ops()
_seed = os.environ.get("{seed_var}")
if _seed:
    random.seed(int(_seed))
    numpy.random.seed(int(_seed))
    torch.manual_seed(int(_seed))

from topaz.main import main  # noqa: E402

sys.argv[0] = "topaz"
sys.exit(main())
'''


class TopazError(RuntimeError):
    """A Topaz subprocess failed; the message carries the command and the tail of its output."""


# --------------------------------------------------------------------------------------------- environment


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def _installed_versions(venv_dir: Path) -> dict[str, str]:
    listing = subprocess.run(
        [str(_venv_python(venv_dir)), "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
    )
    wanted = {"topaz-em", "torch", "torchvision", "numpy", "setuptools"}
    return {row["name"]: row["version"] for row in json.loads(listing.stdout) if row["name"] in wanted}


def _expected_marker() -> dict[str, str]:
    return {"topaz-em": TOPAZ_VERSION, "torch": TORCH_VERSION, "torchvision": TORCHVISION_VERSION,
            "setuptools": SETUPTOOLS_SPEC}


def _marker_matches(marker_path: Path) -> bool:
    if not marker_path.exists():
        return False
    try:
        recorded = json.loads(marker_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    pins = recorded.get("pins", {})
    return pins == _expected_marker()


def topaz_env_installed(venv_dir: Path = DEFAULT_VENV) -> bool:
    """Whether :func:`ensure_topaz_env` has made the venv (its launcher and marker exist); never installs."""
    return (Path(venv_dir) / "bin" / LAUNCHER_NAME).exists() and (Path(venv_dir) / ENV_MARKER_NAME).exists()


def ensure_topaz_env(venv_dir: Path = DEFAULT_VENV) -> Path:
    """Create (once) a separate venv with CPU Topaz and return its launcher executable.

    Parameters
    ----------
    venv_dir
        Where the venv lives; ``benchmarks/.venv-topaz`` (git-ignored) by default.

    Returns
    -------
    Path
        ``<venv>/bin/topaz-cpu``: the ``topaz`` CLI, usable although PyPI's torchvision is a CUDA build.
        The plain ``<venv>/bin/topaz`` script does not start on this machine.

    Notes
    -----
    Idempotent: a marker file records the pinned and installed versions; when it matches, nothing runs.
    ``torch``, ``torchvision`` and ``topaz-em`` go in one pip command so torchvision cannot upgrade torch to
    a CUDA build; setuptools stays below 81 so Topaz can load its shipped weights. ``/etc/xdg/pip`` caps
    torch at 2.14.1 on these machines, which the pins respect.
    """
    venv_dir = Path(venv_dir)
    launcher = venv_dir / "bin" / LAUNCHER_NAME
    marker_path = venv_dir / ENV_MARKER_NAME
    if _marker_matches(marker_path) and launcher.exists():
        return launcher
    if not _venv_python(venv_dir).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
    install = subprocess.run(
        [
            str(_venv_python(venv_dir)), "-m", "pip", "install", "--quiet",
            f"torch=={TORCH_VERSION}", f"torchvision=={TORCHVISION_VERSION}", f"topaz-em=={TOPAZ_VERSION}",
            SETUPTOOLS_SPEC,
        ],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        raise TopazError(f"pip install into {venv_dir} failed:\n{install.stderr[-3000:]}")
    launcher.write_text(_LAUNCHER_SOURCE.format(python=_venv_python(venv_dir), seed_var=SEED_ENV_VAR))
    launcher.chmod(0o755)
    check = subprocess.run([str(launcher), "--help"], capture_output=True, text=True, env=_subprocess_env())
    if check.returncode != 0 or "extract" not in check.stdout:
        raise TopazError(f"`{launcher} --help` failed after install:\n{check.stderr[-2000:]}")
    installed = _installed_versions(venv_dir)
    if not installed.get("torch", "").startswith(TORCH_VERSION) or "+cpu" not in installed.get("torch", ""):
        raise TopazError(f"Topaz venv has torch {installed.get('torch')}, expected {TORCH_VERSION}+cpu")
    marker_path.write_text(json.dumps({"pins": _expected_marker(), "installed": installed}, indent=2) + "\n")
    return launcher


def installed_versions(venv_dir: Path = DEFAULT_VENV) -> dict[str, str]:
    """Versions recorded when the Topaz venv was made (``{}`` if it was not made by ``ensure_topaz_env``)."""
    marker_path = Path(venv_dir) / ENV_MARKER_NAME
    if not marker_path.exists():
        return {}
    return dict(json.loads(marker_path.read_text()).get("installed", {}))


def _subprocess_env(seed: int | None = None) -> dict[str, str]:
    """Our environment minus anything that would leak our venv's packages into Topaz's interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    env.pop(SEED_ENV_VAR, None)
    if seed is not None:
        env[SEED_ENV_VAR] = str(int(seed))
    return env


# ------------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class CommandRun:
    """One timed subprocess: its argv, wall-clock, peak RSS and every output line with its arrival time."""

    argv: tuple[str, ...]
    seconds: float
    peak_rss_mb: float
    rss_source: str
    lines: tuple[tuple[float, str], ...]
    log_path: Path

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def _read_peak_rss_kib(time_output: Path) -> float | None:
    if not time_output.exists():
        return None
    numbers = [line.strip() for line in time_output.read_text().splitlines() if line.strip().isdigit()]
    return float(numbers[-1]) if numbers else None


def run_logged(argv: Sequence[str], log_path: Path, *, seed: int | None = None) -> CommandRun:
    """Run ``argv``, stream its merged stdout/stderr to ``log_path`` with per-line arrival times.

    Peak RSS comes from GNU ``/usr/bin/time -f %M`` (the process's own max RSS) when installed; otherwise from
    ``getrusage(RUSAGE_CHILDREN)``, which is the maximum over *all* children so far (an upper bound).
    Lines end at ``\\n`` or ``\\r`` so progress counters printed with ``end='\\r'`` are timed too.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    use_gnu_time = GNU_TIME.exists()
    with tempfile.TemporaryDirectory(prefix="topaz-time-") as scratch:
        time_output = Path(scratch) / "rss.txt"
        full_argv = [str(GNU_TIME), "-f", "%M", "-o", str(time_output), *argv] if use_gnu_time else list(argv)
        lines: list[tuple[float, str]] = []
        start = time.monotonic()
        # Own process group, so that an interrupted driver can stop Topaz and not only GNU time around it.
        with open(log_path, "wb") as log, subprocess.Popen(
            full_argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_subprocess_env(seed),
            start_new_session=True,
        ) as process:
            assert process.stdout is not None
            pending = b""
            try:
                while True:
                    chunk = process.stdout.read1(65536)
                    if not chunk:
                        break
                    log.write(chunk)
                    now = time.monotonic() - start
                    pending += chunk
                    parts = re.split(rb"[\r\n]", pending)
                    pending = parts.pop()
                    lines.extend((now, part.decode(errors="replace")) for part in parts if part.strip())
            except BaseException:  # Ctrl-C or SIGTERM in the driver: no orphaned Topaz keeps the cores busy
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                raise
            if pending.strip():
                lines.append((time.monotonic() - start, pending.decode(errors="replace")))
            returncode = process.wait()
        seconds = time.monotonic() - start
        peak_kib = _read_peak_rss_kib(time_output) if use_gnu_time else None
    if peak_kib is not None:
        rss_source = "GNU time %M (peak RSS of the Topaz process)"
    else:
        peak_kib = float(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        rss_source = "getrusage(RUSAGE_CHILDREN).ru_maxrss (max over all children so far: upper bound)"
    if returncode != 0:
        tail = "\n".join(line for _, line in lines[-ERROR_TAIL_LINES:])
        raise TopazError(f"command failed with exit code {returncode}: {' '.join(argv)}\n{tail}")
    return CommandRun(tuple(argv), seconds, peak_kib / KIB_PER_MIB, rss_source, tuple(lines), log_path)


def _event_seconds(
    lines: Sequence[tuple[float, str]], pattern: str, start_pattern: str | None = None
) -> list[tuple[str, float]]:
    """Durations between successive output lines matching ``pattern`` (group 1 names the item).

    The first item is timed from the last line matching ``start_pattern`` before it (or, without one, from
    the line just before it), so process start-up is left out and per-item costs are comparable.
    """
    regex = re.compile(pattern)
    start_regex = re.compile(start_pattern) if start_pattern else None
    events: list[tuple[str, float]] = []
    previous_time: float | None = None
    start_time: float | None = None
    for index, (arrival, text) in enumerate(lines):
        match = regex.search(text)
        if match is None:
            if previous_time is None and start_regex is not None and start_regex.search(text):
                start_time = arrival
            continue
        if previous_time is None:
            if start_time is not None:
                previous_time = start_time
            else:
                previous_time = lines[index - 1][0] if index > 0 else 0.0
        events.append((match.group(1), arrival - previous_time))
        previous_time = arrival
    return events


# ------------------------------------------------------------------------------------ pure helpers (tested)


def pixels_within_radius(radius_px: int) -> int:
    """Pixels of a 2D disc of integer ``radius_px`` (Topaz's positive region per particle): 29 at r=3."""
    r = int(radius_px)
    offsets = np.arange(-r, r + 1)
    return int(np.count_nonzero(offsets[:, None] ** 2 + offsets[None, :] ** 2 <= r * r))


def topaz_pixels_per_particle(radius_px: int) -> int:
    """What ``topaz.stats.pixels_given_radius`` returns in 0.3.20: the disc counted on a 3D grid, (2r+1)x."""
    return (2 * int(radius_px) + 1) * pixels_within_radius(radius_px)


@dataclass(frozen=True)
class ClassPrior:
    """π for ``topaz train``: the value we pass and the quantities it derives from (all preprocessed scale)."""

    pi_total: float
    """Expected positive fraction of all pixels: disc pixels × expected particles / image pixels."""
    pi_unlabelled: float
    """Expected positive fraction among unlabelled pixels: what Topaz's GE-binomial loss should see."""
    p_observed_topaz: float
    """Labelled fraction as Topaz 0.3.20 computes it (3D-grid disc count) and subtracts from ``--pi``."""
    pi_passed: float
    """``--pi`` given to Topaz so that ``pi_passed - p_observed_topaz == pi_unlabelled``."""


def class_prior(
    train_radius_px: int,
    expected_particles_per_micrograph: float,
    labelled_particles: int,
    micrograph_pixels: Sequence[int],
) -> ClassPrior:
    """π to pass as ``topaz train --pi``, corrected for Topaz 0.3.20's 3D pixel count.

    Parameters
    ----------
    train_radius_px
        Training radius ``-r`` in preprocessed pixels.
    expected_particles_per_micrograph
        All particles expected per micrograph, labelled or not.
    labelled_particles
        Labels handed to Topaz across the training micrographs.
    micrograph_pixels
        ``nx * ny`` of each training micrograph at the preprocessed scale.
    """
    total_pixels = float(sum(micrograph_pixels))
    expected_total = float(expected_particles_per_micrograph) * len(micrograph_pixels)
    if total_pixels <= 0:
        raise ValueError("no training pixels")
    if expected_total <= labelled_particles:
        raise ValueError(
            f"expected {expected_total:g} particles in the training micrographs but {labelled_particles} are "
            "labelled: PU learning needs unlabelled particles (raise expected_particles_per_micrograph)"
        )
    disc = pixels_within_radius(train_radius_px)
    pi_total = disc * expected_total / total_pixels
    labelled_pixels = disc * labelled_particles
    pi_unlabelled = disc * (expected_total - labelled_particles) / (total_pixels - labelled_pixels)
    p_observed_topaz = topaz_pixels_per_particle(train_radius_px) * labelled_particles / total_pixels
    return ClassPrior(pi_total, pi_unlabelled, p_observed_topaz, pi_unlabelled + p_observed_topaz)


def choose_downsample(particle_radius_px: float, model: str = "resnet8") -> int:
    """Smallest integer binning that fits the particle diameter in the model's receptive field (Topaz docs)."""
    if model not in MAX_PARTICLE_DIAMETER_PX:
        raise ValueError(f"no documented particle-size limit for Topaz model {model!r}; pass downsample")
    return max(1, math.ceil(2.0 * float(particle_radius_px) / MAX_PARTICLE_DIAMETER_PX[model]))


def scaled_radius(radius_px: float, downsample: int) -> int:
    """A radius in original pixels as the integer Topaz takes at the preprocessed scale (at least 1)."""
    return max(1, int(round(float(radius_px) / int(downsample))))


def labels_to_topaz_table(labels: pd.DataFrame) -> pd.DataFrame:
    """Our coordinates (micrograph, x=column, y=row) as a Topaz coordinate table (integer pixels)."""
    missing = {"micrograph", "x", "y"} - set(labels.columns)
    if missing:
        raise UserInputError(None, f"labels table lacks column(s) {sorted(missing)}")
    return pd.DataFrame(
        {
            "image_name": labels["micrograph"].astype(str).to_numpy(),
            "x_coord": np.round(labels["x"].to_numpy(dtype=float)).astype(int),
            "y_coord": np.round(labels["y"].to_numpy(dtype=float)).astype(int),
        }
    )


def write_topaz_coordinates(labels: pd.DataFrame, path: Path) -> Path:
    """Write labels as Topaz's tab-separated ``image_name x_coord y_coord`` file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels_to_topaz_table(labels).to_csv(path, sep="\t", index=False)
    return path


def topaz_picks_to_table(picks: pd.DataFrame) -> pd.DataFrame:
    """Topaz's extract output (image_name, x_coord, y_coord, score) as our picks table, best first."""
    table = pd.DataFrame(
        {
            "micrograph": picks["image_name"].astype(str).to_numpy(),
            "x": picks["x_coord"].to_numpy(dtype=float),
            "y": picks["y_coord"].to_numpy(dtype=float),
            "score": picks["score"].to_numpy(dtype=float),
        }
    )
    return table.sort_values(["micrograph", "score"], ascending=[True, False], kind="stable").reset_index(
        drop=True
    )


def read_topaz_picks(path: Path) -> pd.DataFrame:
    """Read ``topaz extract -o`` output into our picks table."""
    raw = pd.read_csv(path, sep="\t", dtype={"image_name": str})
    return topaz_picks_to_table(raw)


def parse_training_curve(lines: Iterable[tuple[float, str]]) -> pd.DataFrame:
    """The per-minibatch / per-epoch table ``topaz train`` prints, with each row's arrival time (s).

    Columns: epoch, iter, split ("train"/"test"), Topaz's metrics (loss, ge_penalty, precision,
    adjusted_precision, tpr, fpr, auprc; "-" → NaN) and ``seconds`` since the command started.
    """
    header: list[str] | None = None
    rows: list[list[str]] = []
    times: list[float] = []
    for arrival, text in lines:
        fields = text.rstrip("\n").split("\t")
        if fields[:3] == ["epoch", "iter", "split"]:
            header = fields
            continue
        if header is not None and len(fields) == len(header) and fields[2] in ("train", "test"):
            rows.append(fields)
            times.append(arrival)
    if header is None:
        return pd.DataFrame(columns=["epoch", "iter", "split", "seconds"])
    curve = pd.DataFrame(rows, columns=header)
    for column in header:
        if column != "split":
            curve[column] = pd.to_numeric(curve[column], errors="coerce")
    curve["seconds"] = times
    return curve


def seconds_per_minibatch(curve: pd.DataFrame) -> float:
    """Median gap between successive training minibatches of one epoch (excludes test passes and start-up)."""
    train = curve[curve["split"] == "train"]
    gaps = [np.diff(group["seconds"].to_numpy()) for _, group in train.groupby("epoch")]
    flat = np.concatenate([g for g in gaps if g.size]) if any(g.size for g in gaps) else np.array([])
    return float(np.median(flat)) if flat.size else float("nan")


def preprocess_command(launcher: Path, images: Sequence[Path], dest: Path, downsample: int) -> list[str]:
    """``topaz preprocess``: Fourier-crop by ``downsample`` and GMM-normalise (extract does no normalising)."""
    return [str(launcher), "preprocess", "-s", str(int(downsample)), "-d", CPU_DEVICE, "-o", str(dest),
            *map(str, images)]


def convert_command(launcher: Path, source: Path, dest: Path, downsample: int) -> list[str]:
    """``topaz convert -s S``: coordinates from original to preprocessed pixels."""
    return [str(launcher), "convert", "-s", str(int(downsample)), "--to", "coord", "-o", str(dest), str(source)]


def train_command(
    launcher: Path,
    *,
    train_images: Path,
    train_targets: Path,
    save_prefix: Path,
    pi: float,
    train_radius_px: int,
    model: str,
    pretrained: bool,
    epochs: int,
    minibatches_per_epoch: int,
    test_images: Path | None = None,
    test_targets: Path | None = None,
) -> list[str]:
    """``topaz train`` with π given directly (never ``-n``), pretraining stated, on CPU."""
    argv = [
        str(launcher), "train", "-d", CPU_DEVICE,
        "--train-images", str(train_images), "--train-targets", str(train_targets),
        "--pi", repr(float(pi)), "-r", str(int(train_radius_px)),
        "--model", model, "--pretrained" if pretrained else "--no-pretrained",
        "--num-epochs", str(int(epochs)), "--epoch-size", str(int(minibatches_per_epoch)),
        "--num-workers", "0", "--save-prefix", str(save_prefix),
    ]
    if (test_images is None) != (test_targets is None):
        raise ValueError("test_images and test_targets go together")
    if test_images is not None and test_targets is not None:
        argv += ["--test-images", str(test_images), "--test-targets", str(test_targets)]
    return argv


def extract_command(
    launcher: Path,
    *,
    model: Path | str,
    images: Sequence[Path],
    output: Path,
    radius_px: int,
    downsample: int,
    threshold: float,
    patch_size: int = 0,
) -> list[str]:
    """``topaz extract``: NMS radius = particle radius (preprocessed px), coordinates back via ``-x S``."""
    argv = [
        str(launcher), "extract", "-d", CPU_DEVICE, "-m", str(model), "-r", str(int(radius_px)),
        "-t", repr(float(threshold)), "-x", str(int(downsample)), "-o", str(output), "-v",
    ]
    if patch_size > 0:
        argv += ["-p", str(int(patch_size))]
    return argv + [str(p) for p in images]


def denoise_command(launcher: Path, images: Sequence[Path], dest: Path, arch: str) -> list[str]:
    """``topaz denoise`` with a shipped model chosen by ``--arch`` (0.3.20 ignores ``-m``), pixel scale kept."""
    return [str(launcher), "denoise", "-d", CPU_DEVICE, "--arch", arch, "-o", str(dest), *map(str, images)]


# ----------------------------------------------------------------------------------------- staging inputs


def stage_as_mrc(images: Sequence[Path], folder: Path) -> list[Path]:
    """Symlink inputs as ``<micrograph name>.mrc``: Topaz reads only the exact ``.mrc`` suffix as MRC."""
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[Path] = []
    seen: set[str] = set()
    for image in images:
        image = Path(image).resolve()
        if not image.exists():
            raise UserInputError(image, "file not found")
        name = micrograph_name(image)
        if name in seen:
            raise UserInputError(image, f"two inputs share the micrograph name {name!r}")
        seen.add(name)
        link = folder / f"{name}.mrc"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(image)
        staged.append(link)
    return staged


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


# --------------------------------------------------------------------------------------------- the steps


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


# --------------------------------------------------------------------------------- synthetic self-test data

#: Synthetic self-test micrographs: particle disc contrast in units of the noise standard deviation.
SELFTEST_CONTRAST_SIGMA = 1.0


def make_disc_micrographs(
    folder: Path,
    *,
    count: int,
    size: int,
    particle_radius_px: int,
    particles_per_micrograph: int,
    labelled_fraction: float,
    seed: int,
    pixel_size: float = 5.3,
) -> tuple[list[Path], pd.DataFrame, pd.DataFrame]:
    """Noisy micrographs with dark particle discs (and as many bright decoy discs); returns paths, labels, truth.

    Labels are a random ``labelled_fraction`` of the particles of each micrograph (partial labelling).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.arange(size)[:, None]
    cols = np.arange(size)[None, :]
    min_gap = 2.5 * particle_radius_px
    paths: list[Path] = []
    truth_rows: list[dict[str, float | str]] = []
    label_rows: list[dict[str, float | str]] = []
    for index in range(count):
        name = f"synthetic_{index:02d}"
        centres: list[tuple[float, float]] = []
        attempts = 0
        while len(centres) < 2 * particles_per_micrograph and attempts < 100 * particles_per_micrograph:
            attempts += 1
            x, y = rng.uniform(particle_radius_px, size - particle_radius_px, size=2)
            if all((x - cx) ** 2 + (y - cy) ** 2 >= min_gap**2 for cx, cy in centres):
                centres.append((float(x), float(y)))
        signal = np.zeros((size, size), dtype=np.float32)
        for k, (x, y) in enumerate(centres):
            disc = (cols - x) ** 2 + (rows - y) ** 2 <= particle_radius_px**2
            is_particle = k % 2 == 0
            signal[disc] += -SELFTEST_CONTRAST_SIGMA if is_particle else SELFTEST_CONTRAST_SIGMA
            if is_particle:
                truth_rows.append({"micrograph": name, "x": x, "y": y})
                if rng.uniform() < labelled_fraction:
                    label_rows.append({"micrograph": name, "x": x, "y": y})
        image = signal + rng.normal(0.0, 1.0, size=(size, size)).astype(np.float32)
        paths.append(write_mrc(folder / f"{name}.mrc", image, pixel_size=pixel_size))
    return paths, pd.DataFrame(label_rows), pd.DataFrame(truth_rows)


def nearest_distances(picks: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Distance from each pick to the nearest true particle of its micrograph (inf where none)."""
    out = np.full(len(picks), np.inf)
    for name, group in picks.groupby("micrograph"):
        true = truth[truth["micrograph"] == name][["x", "y"]].to_numpy(dtype=float)
        if true.size == 0:
            continue
        xy = group[["x", "y"]].to_numpy(dtype=float)
        d = np.sqrt(((xy[:, None, :] - true[None, :, :]) ** 2).sum(-1)).min(axis=1)
        out[group.index.to_numpy()] = d
    return out


def _selftest(work: Path, *, size: int, count: int, epochs: int, minibatches: int, seed: int) -> None:
    launcher = ensure_topaz_env()
    print(f"launcher: {launcher}  versions: {installed_versions()}")
    radius = 6
    mrcs, labels, truth = make_disc_micrographs(
        work / "data", count=count, size=size, particle_radius_px=radius,
        particles_per_micrograph=max(4, size * size // 4096), labelled_fraction=0.5, seed=seed,
    )
    expected = len(truth) / count
    print(f"{count} micrographs {size}², {len(truth)} particles, {len(labels)} labelled")

    trained = topaz_train(
        mrcs[:-1], labels, work / "train", particle_radius_px=radius,
        expected_particles_per_micrograph=expected, pretrained=False, epochs=epochs,
        minibatches_per_epoch=minibatches, seed=seed, validation_mrcs=mrcs[-1:], validation_labels=truth,
        launcher=launcher,
    )
    print(f"train: {trained.seconds:.1f} s (total {trained.total_seconds:.1f} s), peak {trained.peak_rss_mb:.0f} MB "
          f"[{trained.rss_source}], {trained.seconds_per_minibatch:.3f} s/minibatch, S={trained.downsample}, "
          f"r={trained.train_radius_px}, pi passed {trained.prior.pi_passed:.4g} (total {trained.prior.pi_total:.4g})")
    print(trained.curve.tail(4).to_string(index=False))

    extracted = topaz_extract(
        trained.model_path, mrcs, work / "extract", particle_radius_px=radius,
        downsample=trained.downsample, launcher=launcher,
    )
    picks = extracted.picks
    top = picks.groupby("micrograph").head(int(expected))
    hits = float(np.mean(nearest_distances(top.reset_index(drop=True), truth) <= radius))
    print(f"extract: {extracted.seconds:.1f} s (+ preprocess {extracted.preprocess_seconds:.1f} s), peak "
          f"{extracted.peak_rss_mb:.0f} MB, per micrograph {extracted.seconds_per_micrograph}, "
          f"{len(picks)} picks, top-{int(expected)} within r of a particle: {hits:.2f}")

    denoised = topaz_denoise(mrcs, work / "denoise", launcher=launcher)
    first = read_micrograph(next(iter(denoised.paths.values())))
    print(f"denoise: {denoised.seconds:.1f} s, peak {denoised.peak_rss_mb:.0f} MB, per micrograph "
          f"{denoised.seconds_per_micrograph}, output {first.shape} {first.data.dtype} "
          f"mean {first.data.mean():.3f} std {first.data.std():.3f}")


def _measure(work: Path, *, size: int, minibatches: int, seed: int) -> None:
    """Budget numbers: train s/minibatch, extract and denoise s and peak RSS per ``size``² micrograph."""
    launcher = ensure_topaz_env()
    radius = 8
    mrcs, labels, truth = make_disc_micrographs(
        work / "data", count=2, size=size, particle_radius_px=radius,
        particles_per_micrograph=size * size // 8192, labelled_fraction=0.5, seed=seed,
    )
    trained = topaz_train(
        mrcs, labels, work / "train", particle_radius_px=radius,
        expected_particles_per_micrograph=len(truth) / 2, pretrained=True, epochs=1,
        minibatches_per_epoch=minibatches, seed=seed, launcher=launcher,
    )
    print(f"train {minibatches} minibatches: {trained.seconds:.1f} s, {trained.seconds_per_minibatch:.3f} s/minibatch"
          f" (median), peak {trained.peak_rss_mb:.0f} MB")
    for patch in (0, 512):
        extracted = topaz_extract(
            trained.model_path, mrcs[:1], work / f"extract_p{patch}", particle_radius_px=radius,
            downsample=trained.downsample, patch_size=patch, launcher=launcher,
        )
        print(f"extract {size}² (-p {patch}): {extracted.seconds:.1f} s incl. start-up, per micrograph "
              f"{extracted.seconds_per_micrograph}, preprocess {extracted.preprocess_seconds:.1f} s, peak "
              f"{extracted.peak_rss_mb:.0f} MB")
    denoised = topaz_denoise(mrcs[:1], work / "denoise", launcher=launcher)
    print(f"denoise {size}²: {denoised.seconds:.1f} s incl. start-up, per micrograph "
          f"{denoised.seconds_per_micrograph}, peak {denoised.peak_rss_mb:.0f} MB")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.peers.topaz --selftest`` (or ``--measure``): install, run, print timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--selftest", action="store_true", help="small synthetic train/extract/denoise run")
    parser.add_argument("--measure", action="store_true", help="budget timings on 1024² micrographs")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--size", type=int, default=None, help="micrograph side in pixels")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--minibatches", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.selftest or args.measure):
        parser.error("choose --selftest and/or --measure")
    with tempfile.TemporaryDirectory(prefix="topaz-selftest-") as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        if args.selftest:
            _selftest(work / "selftest", size=args.size or 256, count=3, epochs=args.epochs,
                      minibatches=args.minibatches or 10, seed=args.seed)
        if args.measure:
            _measure(work / "measure", size=args.size or 1024, minibatches=args.minibatches or 20, seed=args.seed)


if __name__ == "__main__":
    main()
