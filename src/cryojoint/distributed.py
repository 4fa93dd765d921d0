"""Data-parallel training under ``torchrun``: process group, rank helpers, gradient sync, broadcasts.

``cryojoint train ...`` runs unchanged as ``torchrun --nproc-per-node N -m cryojoint.cli train ...``: torchrun
starts N processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`process_group` reads them, joins the group (NCCL on CUDA, gloo on CPU) and leaves it
at the end. Without those variables (a plain ``cryojoint train``) every helper here is a no-op, so the
single-process path is untouched.

Each process samples its own patches; :func:`wrap_model` averages the gradients of the parameters that train
(DistributedDataParallel), so every process applies the same update and the models stay identical. Rank 0
alone validates, logs and writes files; :func:`broadcast_object` hands its decisions to the others.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn

from cryojoint.errors import UserInputError

__all__ = [
    "DistributedContext",
    "broadcast_object",
    "gather_objects",
    "is_main_process",
    "launched_by_torchrun",
    "mean_over_processes",
    "parameter_digest",
    "process_group",
    "rank",
    "single_process",
    "unwrap",
    "world_size",
    "wrap_model",
]

#: How long a process waits at a collective before giving up. Rank 0 validates while the others wait at the
#: broadcast of its decision, so this must exceed the longest validation pass (torch's gloo default is 30 min).
COLLECTIVE_TIMEOUT = timedelta(minutes=60)
#: The rank that validates, logs, writes files and whose decisions the others follow.
MAIN_RANK = 0

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job: its rank, the number of processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str | None = None  # None: a single process, no group
    owns_group: bool = False  # this context initialised the process group, so it tears it down

    @property
    def enabled(self) -> bool:
        """True when several processes train together (and collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that validates, logs and writes files."""
        return self.rank == MAIN_RANK


def single_process(device: torch.device) -> DistributedContext:
    """The context of an ordinary run: rank 0 of 1."""
    return DistributedContext(0, 1, 0, 1, device)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserInputError(None, f"environment variable {name}={value!r} is not an integer") from None


def launched_by_torchrun() -> bool:
    """True when the launcher (torchrun, or SLURM's srun with the same variables) asked for several processes."""
    return _env_int("WORLD_SIZE", 1) > 1


def rank() -> int:
    """This process's rank: from the live process group, else from ``RANK``, else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return _env_int("RANK", 0)


def world_size() -> int:
    """Number of training processes: from the live process group, else from ``WORLD_SIZE``, else 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single-process run): the process that should print and write."""
    return rank() == MAIN_RANK


def _device_for_rank(device: torch.device, local_rank: int) -> torch.device:
    """One GPU per process on a node (``cuda:LOCAL_RANK``); processes share the CPU."""
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserInputError(None, f"process {local_rank} on this node has no GPU of its own "
                                 f"({torch.cuda.device_count()} visible): use --nproc-per-node <= GPUs")
        return torch.device("cuda", local_rank)
    if device.type == "mps":
        raise UserInputError(None, "multi-process training does not support Apple MPS: use --device cpu")
    return device


@contextmanager
def process_group(device: torch.device) -> Iterator[DistributedContext]:
    """Join the process group torchrun describes (if any) for the duration of the block.

    Parameters
    ----------
    device
        The device the user asked for; under torchrun a CUDA device becomes ``cuda:LOCAL_RANK``.

    Yields
    ------
    DistributedContext
        Rank 0 of 1 on ``device`` when not launched by torchrun. If a group already exists (a caller set
        it up), it is used and left alone.
    """
    dist = torch.distributed
    if not launched_by_torchrun() and not (dist.is_available() and dist.is_initialized()):
        yield single_process(device)
        return
    if not dist.is_available():
        raise UserInputError(None, "this PyTorch build has no torch.distributed: run one process")
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", 1)
    device = _device_for_rank(device, local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    context = DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, local_world_size, device,
                                 dist.get_backend(), owns_group)
    try:
        yield context
        if context.enabled:
            dist.barrier()  # nobody leaves before rank 0 has written its files
    finally:
        if owns_group:
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------- gradients


def wrap_model(module: nn.Module, context: DistributedContext) -> nn.Module:
    """Average gradients across processes during ``backward`` (DistributedDataParallel); ``module`` itself alone.

    Only parameters with ``requires_grad`` at this moment are synchronised, and every one of them must get a
    gradient in every step: freeze what a training stage does not train *before* wrapping, and wrap again when
    the set changes. Building the wrapper copies rank 0's parameters and buffers to every process, and
    every forward pass copies rank 0's buffers (batch-norm statistics) again.
    Calls of ``module``'s other methods (e.g. a second, mirrored pass) share the same parameters and their
    gradients are synchronised too, because the sync hooks sit on the parameters, not on ``forward``.
    """
    if not context.enabled:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a :func:`wrap_model` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def parameter_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal on all ranks iff the replicas are bit-identical."""
    digest = hashlib.sha256()
    for name, parameter in unwrap(module).named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- collectives


def broadcast_object(obj: T, context: DistributedContext, src: int = MAIN_RANK) -> T:
    """``obj`` as rank ``src`` has it, on every rank (picklable objects; ``obj`` itself in one process)."""
    if not context.enabled:
        return obj
    holder = [obj if context.rank == src else None]
    torch.distributed.broadcast_object_list(holder, src=src, device=_collective_device(context))
    return holder[0]  # type: ignore[return-value]


def gather_objects(obj: T, context: DistributedContext) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
    if not context.enabled:
        return [obj]
    gathered: list[Any] = [None] * context.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def mean_over_processes(values: dict[str, float], context: DistributedContext) -> dict[str, float]:
    """Average each named value over the ranks that report it (the values themselves in one process)."""
    if not context.enabled:
        return values
    per_rank = gather_objects(values, context)
    keys = list(dict.fromkeys(k for entry in per_rank for k in entry))
    return {k: sum(e[k] for e in per_rank if k in e) / sum(1 for e in per_rank if k in e) for k in keys}


def _collective_device(context: DistributedContext) -> torch.device | None:
    """NCCL moves pickled objects through the GPU; gloo through the CPU."""
    return context.device if context.backend == "nccl" else None
