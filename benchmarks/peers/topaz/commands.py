"""Building and running Topaz commands: the numbers Topaz is given, its argv, its inputs, and a timed run.

The class prior π is corrected here: ``topaz train`` counts "pixels per particle" on a 3D grid ((2r+1)x too
many), which inflates ``-n`` *and* the observed labelled fraction it subtracts from ``--pi``. We pass a
``--pi`` that, after Topaz's own subtraction, leaves exactly the true expected positive fraction of the
unlabelled pixels (:func:`class_prior`). Every command is run by :func:`run_logged`, timed, with its peak RSS.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from benchmarks.peers.topaz.env import TopazError, _subprocess_env

from cryojoint.errors import UserInputError
from cryojoint.io.mrc import micrograph_name

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


# ---------------------------------------------------------------------------------------------------- running


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


# -------------------------------------------------------------------------------------- pure helpers (tested)


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


# --------------------------------------------------------------------------------------------- staging inputs


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
