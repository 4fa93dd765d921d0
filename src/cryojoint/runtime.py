"""Where computations run: the torch device and how many threads each worker process uses.

A leaf module (torch and the error type only) that training, prediction and the Dask scale-out all use, so
none of them has to import another for these.
"""

from __future__ import annotations

import os

import torch

from cryojoint.errors import UserInputError


def select_device(name: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU, unless a device is forced."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserInputError(None, f"unknown device '{name}' (cpu, cuda, cuda:N, mps, auto)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserInputError(None, "--device cuda asked for, but no CUDA GPU is available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UserInputError(None, "--device mps asked for, but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Share the machine's cores between worker processes so they do not oversubscribe."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(workers, 1))
