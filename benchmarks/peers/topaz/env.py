"""Topaz's own venv: CPU torch, pinned versions, and the launcher that lets Topaz start on this machine.

Why a launcher: PyPI's ``torchvision`` wheels are CUDA builds whose C extension cannot load next to the CPU
torch, and ``import torchvision`` then dies registering a fake kernel for ``torchvision::nms``. Topaz only needs
``torchvision.transforms.functional`` (pure Python), so we run Topaz through a small launcher written into its
venv that declares the two missing operator schemas when the extension is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
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


# ------------------------------------------------------------------------------------------------ environment


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
