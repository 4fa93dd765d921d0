"""Topaz (``topaz-em`` 0.3.20) as a benchmark peer: own venv, CPU only, run as subprocesses.

Why this package exists: a fair comparison needs Topaz installed and driven the way its authors intend
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

Modules: ``env`` (the venv and its launcher), ``commands`` (π and scales, argv, staging, timed runs),
``parsing`` (Topaz's logs and outputs), ``steps`` (train, extract, denoise), ``selftest`` (``python -m
benchmarks.peers.topaz --selftest``). Every name is re-exported here, as when this was one module.
"""

from __future__ import annotations

from benchmarks.peers.topaz.commands import (
    CPU_DEVICE,
    ERROR_TAIL_LINES,
    FULL_RANKING_THRESHOLD,
    GNU_TIME,
    KIB_PER_MIB,
    MAX_PARTICLE_DIAMETER_PX,
    TOPAZ_DEFAULT_THRESHOLD,
    TOPAZ_DEFAULT_TRAIN_RADIUS_PX,
    ClassPrior,
    CommandRun,
    choose_downsample,
    class_prior,
    convert_command,
    denoise_command,
    extract_command,
    labels_to_topaz_table,
    pixels_within_radius,
    preprocess_command,
    run_logged,
    scaled_radius,
    stage_as_mrc,
    topaz_pixels_per_particle,
    train_command,
    write_topaz_coordinates,
)
from benchmarks.peers.topaz.env import (
    DEFAULT_VENV,
    ENV_MARKER_NAME,
    LAUNCHER_NAME,
    REPO_ROOT,
    SEED_ENV_VAR,
    SETUPTOOLS_SPEC,
    TOPAZ_VERSION,
    TORCH_VERSION,
    TORCHVISION_VERSION,
    TopazError,
    ensure_topaz_env,
    installed_versions,
    topaz_env_installed,
)
from benchmarks.peers.topaz.parsing import (
    TOPAZ_COORD_COLUMNS,
    _event_seconds,
    parse_training_curve,
    read_topaz_picks,
    seconds_per_minibatch,
    topaz_picks_to_table,
)
from benchmarks.peers.topaz.selftest import SELFTEST_CONTRAST_SIGMA, main, make_disc_micrographs, nearest_distances
from benchmarks.peers.topaz.steps import (
    TopazDenoiseResult,
    TopazExtractResult,
    TopazTrainResult,
    topaz_denoise,
    topaz_extract,
    topaz_train,
)

__all__ = [
    # env
    "DEFAULT_VENV", "ENV_MARKER_NAME", "LAUNCHER_NAME", "REPO_ROOT", "SEED_ENV_VAR", "SETUPTOOLS_SPEC",
    "TOPAZ_VERSION", "TORCH_VERSION", "TORCHVISION_VERSION", "TopazError", "ensure_topaz_env",
    "installed_versions", "topaz_env_installed",
    # commands
    "CPU_DEVICE", "ERROR_TAIL_LINES", "FULL_RANKING_THRESHOLD", "GNU_TIME", "KIB_PER_MIB",
    "MAX_PARTICLE_DIAMETER_PX", "TOPAZ_DEFAULT_THRESHOLD", "TOPAZ_DEFAULT_TRAIN_RADIUS_PX", "ClassPrior",
    "CommandRun", "choose_downsample", "class_prior", "convert_command", "denoise_command", "extract_command",
    "labels_to_topaz_table", "pixels_within_radius", "preprocess_command", "run_logged", "scaled_radius",
    "stage_as_mrc", "topaz_pixels_per_particle", "train_command", "write_topaz_coordinates",
    # parsing (``_event_seconds`` too: the runner's tests call it)
    "TOPAZ_COORD_COLUMNS", "_event_seconds", "parse_training_curve", "read_topaz_picks", "seconds_per_minibatch",
    "topaz_picks_to_table",
    # steps
    "TopazDenoiseResult", "TopazExtractResult", "TopazTrainResult", "topaz_denoise", "topaz_extract",
    "topaz_train",
    # selftest
    "SELFTEST_CONTRAST_SIGMA", "main", "make_disc_micrographs", "nearest_distances",
]
