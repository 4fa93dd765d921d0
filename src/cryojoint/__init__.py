"""cryojoint: joint self-supervised denoising and particle picking for cryo-EM micrographs.

The public API mirrors the CLI: ``simulate``, ``train``, ``load_model``, ``predict``, ``evaluate``.
They are imported lazily so that ``import cryojoint`` stays fast and has no side effects (no torch import,
no logging setup, no files created). The modules behind them are named by noun (``simulation``,
``training``, ``prediction``, ``evaluation``) so that a submodule import never shadows the function.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY_API: dict[str, str] = {
    "simulate": "cryojoint.simulation",
    "train": "cryojoint.training",
    "load_model": "cryojoint.training",
    "predict": "cryojoint.prediction",
    "evaluate": "cryojoint.evaluation",
}

__all__ = ["__version__", *_LAZY_API]


def __getattr__(name: str) -> Any:
    if name in _LAZY_API:
        return getattr(import_module(_LAZY_API[name]), name)
    raise AttributeError(f"module 'cryojoint' has no attribute '{name}'")


def __dir__() -> list[str]:
    """What tab completion offers: the API, not this module's own imports."""
    return sorted(__all__)
