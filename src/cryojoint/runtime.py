"""Where computations run: the torch device, the precision the network runs in (training and inference), how
many threads each worker process uses, and how freed memory is kept.

A leaf module (torch, the configuration's vocabulary and the error type only) that training, prediction and the
Dask scale-out all use, so none of them has to import another for these.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch

from cryojoint.config import PRECISIONS
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


_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def native_bfloat16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU with bfloat16, or a CPU with AVX512-BF16 or
    AMX (oneDNN then runs the network's convolutions in bfloat16 about twice as fast as in float32; without it
    bfloat16 is emulated and was 5-10x slower)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(probe is not None and bool(probe()) for probe in probes)
    return False


def autocast_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype | None:
    """The reduced-precision type the network's passes autocast to on ``device``, or ``None`` for float32.

    "auto" means bfloat16 where the hardware has it (float32's range, so the prior variance cannot overflow):
    CUDA GPUs and CPUs with AVX512-BF16/AMX; float16 on CUDA GPUs without bfloat16; float32 elsewhere (other
    CPUs, MPS). The same seed gives the same result on the same kind of machine, not across kinds.
    """
    if precision not in PRECISIONS:
        raise UserInputError(None, f"unknown precision '{precision}' ({', '.join(PRECISIONS)})")
    device = torch.device(device)
    if precision == "auto":
        if native_bfloat16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    if precision == "float32":
        return None
    if not torch.amp.is_autocast_available(device.type):
        raise UserInputError(None, f"precision '{precision}' is not available on device '{device.type}'")
    return _DTYPES[precision]


def dtype_name(dtype: torch.dtype | None) -> str:
    """What records say the network ran in: "float32" for ``None`` (no autocast), else e.g. "bfloat16"."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``'s type, or nothing for ``None`` (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def inference_precision(device: torch.device | str, precision: str = "auto") -> Iterator[torch.dtype | None]:
    """Run the block's network passes in :func:`autocast_dtype`'s precision (autocast); outputs still leave as
    float32 arrays. On CUDA it also lets cuDNN pick its fastest convolutions for the window shapes it sees
    (their results may differ from run to run in the last bits)."""
    dtype = autocast_dtype(device, precision)
    benchmark_before = torch.backends.cudnn.benchmark
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        with autocast(device, dtype):
            yield dtype
    finally:
        torch.backends.cudnn.benchmark = benchmark_before


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Largest block glibc takes from its heap (its ceiling on 64-bit); larger ones are mapped and returned at once.
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024


def retain_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for the next allocation instead of handing it back to the system.

    The network allocates and frees hundreds of MB per batch of windows or training step; by default glibc maps
    large blocks afresh each time and returns them, and the page faults cost time: with this and window batches
    whose buffers stay under the 32 MB heap ceiling (inference.WINDOW_BATCH_MAX_PIXELS) a 1024² micrograph took
    7.0-7.9 s at a flat 566 MB instead of 9.4 s with a peak creeping from 794 to 1015 MB (2 threads, bfloat16).
    Blocks over 32 MB are still mapped and returned. Process-wide for the rest of the process (predict_files and
    train call it); a no-op (False) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return (bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
                and bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)))
    except (OSError, AttributeError):
        return False
