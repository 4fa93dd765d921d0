"""Scale-out of prediction with Dask distributed: one task per micrograph, one model per worker process.

``scheduler=None`` or ``"local"`` starts a :class:`distributed.LocalCluster` of worker processes on this
machine; an address (``tcp://host:port``) uses an existing cluster (``dask scheduler`` + ``dask worker``,
dask-jobqueue on SLURM, Kubernetes). Workers write their micrograph's outputs atomically, so a rerun resumes
where the last one stopped; a task that crashes is retried, then reported, and never stops the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryojoint.checkpoint import is_shipped_model
from cryojoint.errors import UserInputError
from cryojoint.runtime import threads_per_worker

#: Times a crashed task (not a bad input) is retried on another attempt before it is reported.
TASK_RETRIES = 2
_MODEL_CACHE: dict[tuple[str, str], Any] = {}


def _cached_model(model_path: str, device: str) -> Any:
    """Load the model once per worker process and keep it for all the tasks that process runs."""
    from cryojoint.checkpoint import load_model

    key = (model_path, device)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_model(model_path, device)
    return _MODEL_CACHE[key]


def predict_task(model_path: str, micrograph_path: str, out_dir: str, settings: Any, outputs: Sequence[str],
                 threads: int) -> tuple[str, str | None]:
    """Predict one micrograph on a worker. Bad input is returned as an error; crashes raise (and are retried)."""
    import torch

    from cryojoint.inference import predict_micrograph, write_micrograph_outputs
    from cryojoint.io.mrc import micrograph_name, read_micrograph

    torch.set_num_threads(threads or _worker_threads())
    name = micrograph_name(micrograph_path)
    try:
        model = _cached_model(model_path, "cpu")
        prediction = predict_micrograph(model, read_micrograph(micrograph_path), settings, "cpu")
        write_micrograph_outputs(prediction, Path(out_dir), outputs)
    except UserInputError as err:
        return name, err.one_line()
    return name, None


def _worker_threads() -> int:
    """Threads for torch on a remote Dask worker: the threads it was started with (``dask worker --nthreads``),
    else the cores this process may use."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _client(workers: int, scheduler: str | None) -> Any:
    from distributed import Client, LocalCluster

    if scheduler in (None, "local"):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster)
    try:
        return Client(scheduler, timeout="20s")
    except OSError as err:
        raise UserInputError(None, f"cannot reach the Dask scheduler at {scheduler} ({err})") from None


def predict_distributed(
    model_path: str | Path,
    paths: Sequence[Path],
    out_dir: Path,
    settings: Any,
    outputs: Sequence[str],
    workers: int,
    scheduler: str | None,
    progress: bool = True,
) -> dict[str, str]:
    """Predict ``paths`` on a Dask cluster; return ``{micrograph name: error}`` for those that failed."""
    from distributed import as_completed

    from cryojoint.io.mrc import micrograph_name
    from cryojoint.progress import counted_progress

    if not paths:
        return {}
    client = _client(workers, scheduler)
    failures: dict[str, str] = {}
    try:
        n_workers = max(len(client.scheduler_info().get("workers", {})), 1)
        # Local workers share this machine's cores; a remote worker decides on its own machine (0 = ask it).
        threads = threads_per_worker(n_workers) if scheduler in (None, "local") else 0
        # A shipped model's name stays a name: each worker finds the weights in its own installation.
        model = str(model_path) if is_shipped_model(Path(model_path)) else str(Path(model_path).resolve())
        futures = {
            client.submit(predict_task, model, str(Path(p).resolve()),
                          str(out_dir.resolve()), settings, list(outputs), threads,
                          retries=TASK_RETRIES, pure=False): p
            for p in paths
        }
        with counted_progress(len(futures), progress, "predict" if settings.pick else "denoise") as advance:
            for future in as_completed(futures):
                path = futures[future]
                try:
                    name, error = future.result()
                except Exception as err:  # a crash that survived its retries: report it, keep going
                    name, error = micrograph_name(path), f"{path}: worker failed ({err.__class__.__name__}: {err})"
                if error is not None:
                    failures[name] = error
                advance()
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
    return failures
