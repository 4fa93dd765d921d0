"""Shared fixtures: small, generic helpers for writing test inputs the way other software writes them."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
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
