"""Shared fixtures: small, generic helpers for writing test inputs the way other software writes them."""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import mrcfile
import numpy as np
import pytest

RawMrcWriter = Callable[..., Path]


def write_raw_mrc(
    path: Path, data: np.ndarray, pixel_size: float | None = None, image_stack: bool = False
) -> Path:
    """Write ``data`` with ``mrcfile`` in its own dtype (the MRC mode follows it), as a microscope or
    another package would, without going through cryojoint's writer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN/Inf test data makes mrcfile warn
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data))
            if image_stack:
                mrc.set_image_stack()
            if pixel_size is not None:
                mrc.voxel_size = pixel_size
    return Path(path)


@pytest.fixture(scope="session")
def raw_mrc() -> RawMrcWriter:
    """``raw_mrc(path, data, pixel_size=None, image_stack=False)``: an MRC file in ``data``'s own dtype."""
    return write_raw_mrc


def blob_field_image(
    rng: np.random.Generator, shape: tuple[int, int], diameter: float, kind: str, contrast: float, noise: float,
    coverage: float = 0.2, spacing: float = 1.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping discs or Gaussian blobs (std = d / 2√2) of one diameter in white noise (contrast sign =
    polarity), and their centres (x, y): ``coverage`` x area / d² of them, centres ``spacing`` x d apart or more."""
    count = int(coverage * shape[0] * shape[1] / (diameter * diameter))
    points: list[np.ndarray] = []
    for _ in range(50 * count):
        if len(points) == count:
            break
        p = rng.uniform(diameter / 2, np.array(shape[::-1]) - 1 - diameter / 2)
        if all(np.hypot(*(p - q)) >= spacing * diameter for q in points):
            points.append(p)
    xy = np.array(points)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape)
    sigma = diameter / (2 * math.sqrt(2))
    for x, y in xy:
        r2 = (cols - x) ** 2 + (rows - y) ** 2
        image += (r2 <= (diameter / 2) ** 2) if kind == "disc" else np.exp(-r2 / (2 * sigma * sigma))
    return contrast * image + rng.normal(0.0, noise, shape), xy


@pytest.fixture(scope="session")
def blob_field() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``blob_field(rng, shape, diameter, kind, contrast, noise)``: a synthetic particle field and its centres."""
    return blob_field_image


#: Set by .ci/run: tests that need Topaz install its venv (pip, ~1.4 GB) instead of skipping.
INSTALL_TOPAZ_VARIABLE = "CRYOJOINT_TEST_TOPAZ"


@pytest.fixture(scope="session")
def topaz_launcher() -> Path:
    """Topaz's CPU launcher from ``benchmarks/.venv-topaz``; installed when CI asks, else the test skips."""
    repo_root = Path(__file__).resolve().parents[1]
    if str(repo_root) not in sys.path:
        sys.path.insert(0, str(repo_root))
    from benchmarks.peers import topaz

    if os.environ.get(INSTALL_TOPAZ_VARIABLE) == "1":
        return topaz.ensure_topaz_env()
    if not topaz.topaz_env_installed():
        pytest.skip(f"Topaz venv not installed (set {INSTALL_TOPAZ_VARIABLE}=1, as .ci/run does, or run "
                    "`python -m benchmarks.peers.topaz --selftest`; ~1.4 GB)")
    return topaz.DEFAULT_VENV / "bin" / topaz.LAUNCHER_NAME


#: A config dict for a 2-step training of a small network on small simulated micrographs (seconds on two cores).
TWO_STEP_TRAINING = {"model": {"unet_encoder_channels": 8, "unet_decoder_channels": 16, "unet_depth": 3,
                               "detector_channels": [8, 16, 16]},
                     "train": {"steps": 2, "eval_every": 2, "seed": 1, "device": "cpu"},
                     "data": {"particle_diameter_px": 22.0},
                     "predict": {"tile_size_px": 128, "tile_overlap_px": 32}}

#: A small network with frequent validation: training runs for a few steps in seconds on two cores.
TINY_CONFIG_YAML = (
    "model:\n  unet_encoder_channels: 8\n  unet_decoder_channels: 16\n  unet_depth: 3\n"
    "  detector_channels: [8, 16, 16]\n"
    "train:\n  eval_every: 2\n  checkpoint_every: 2\n"
    "data:\n  particle_diameter_px: 22.0\n"
    "predict:\n  tile_size_px: 128\n  tile_overlap_px: 32\n"
)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A YAML config for ``--config`` that keeps training to seconds."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG_YAML)
    return path


def make_relion_project(root: Path, n_micrographs: int = 3, size: int = 256, seed: int = 21) -> dict[str, Path]:
    """A RELION 4/5-style project folder as RELION lays it out, with tiny simulated micrographs.

    ``MotionCorr/job002/Movies/mic_*.mrc``; ``CtfFind/job003/micrographs_ctf.star`` (``data_optics`` +
    ``data_micrographs``, paths relative to the project); ``ManualPick/job004/manualpick.star`` (a coordinate
    index, ``data_coordinate_files``) pointing at ``ManualPick/job004/Movies/mic_*_manualpick.star`` with half
    of the simulated particles each.
    """
    import pandas as pd
    import starfile

    from cryojoint.io.mrc import write_mrc
    from cryojoint.simulation import simulate

    data = simulate(n_micrographs=n_micrographs, size=size, seed=seed, preset="ruvb")
    labels = data.truth.sample(frac=0.5, random_state=0)
    movies = root / "MotionCorr" / "job002" / "Movies"
    picks = root / "ManualPick" / "job004" / "Movies"
    picks.mkdir(parents=True)
    names, index_rows = [], []
    for mic in data.micrographs["dose_060"]:
        relative = f"MotionCorr/job002/Movies/{mic.name}.mrc"
        write_mrc(root / relative, mic.data, mic.pixel_size)
        names.append(relative)
        rows = labels[labels["micrograph"] == mic.name]
        coordinate_file = f"ManualPick/job004/Movies/{mic.name}_manualpick.star"
        starfile.write({"": pd.DataFrame({"rlnCoordinateX": rows["x"].to_numpy(float),
                                          "rlnCoordinateY": rows["y"].to_numpy(float)})}, root / coordinate_file)
        index_rows.append((relative, coordinate_file))
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographOriginalPixelSize": [data.micrographs["dose_060"][0].pixel_size],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnMicrographPixelSize": [data.micrographs["dose_060"][0].pixel_size]})
    micrographs = pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": [1] * len(names),
                                "rlnDefocusU": [15000.0] * len(names), "rlnDefocusV": [14800.0] * len(names)})
    mics_star = root / "CtfFind" / "job003" / "micrographs_ctf.star"
    mics_star.parent.mkdir(parents=True)
    starfile.write({"optics": optics, "micrographs": micrographs}, mics_star)
    index = root / "ManualPick" / "job004" / "manualpick.star"
    starfile.write({"coordinate_files": pd.DataFrame(index_rows, columns=["rlnMicrographName",
                                                                          "rlnMicrographCoordinates"])}, index)
    return {"root": root, "mics_star": mics_star.relative_to(root), "coords": index.relative_to(root),
            "movies": movies.relative_to(root)}


@pytest.fixture
def relion_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """:func:`make_relion_project` in ``tmp_path/project``, which becomes the current folder (as under RELION)."""
    root = tmp_path / "project"
    root.mkdir()
    project = make_relion_project(root)
    monkeypatch.chdir(root)
    return project


CliResult = tuple[int, str, str]


@pytest.fixture
def cryojoint_main(monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[object]], CliResult]:
    """``run(args)``: ``cryojoint ARGS`` through the console entry point (``cli.main``, which turns user
    mistakes into one ``error:`` line and exit 2) in this process; returns (exit code, stdout, stderr)."""
    from cryojoint import cli

    def run(args: Sequence[object]) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["cryojoint", *map(str, args)])
        with pytest.raises(SystemExit) as stopped:
            cli.main()
        captured = capsys.readouterr()
        return int(stopped.value.code or 0), captured.out, captured.err

    return run


CliRunner = Callable[[Sequence[object]], tuple[int, str, str]]


@pytest.fixture
def cli_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """``cli_in_process(args) -> (exit code, stdout, stderr)``: ``cryojoint ARGS`` through ``cli.main`` (the console
    entry point, which turns user errors into one line and exit code 2) in this process."""
    from cryojoint import cli

    def run(args: Sequence[object]) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["cryojoint", *map(str, args)])
        with pytest.raises(SystemExit) as stopped:
            cli.main()
        captured = capsys.readouterr()
        code = stopped.value.code
        return (0 if code is None else int(code)), captured.out, captured.err

    return run
