"""Run one benchmark step (train or predict cryojoint) in a fresh process and record its time and peak RSS.

Why a separate process: the peak resident memory of a step is only meaningful when nothing else (earlier
cells, cached datasets) lives in the same process, and a crash in one step must not end the whole benchmark.

Usage (called by ``benchmarks/run.py``; not a user command)::

    python benchmarks/_measure.py train SPEC.json RESULT.json
    python benchmarks/_measure.py predict SPEC.json RESULT.json

``RESULT.json`` gets ``{"ok": true, "seconds": S, "peak_rss_mb": M, "torch_threads": T, ...step fields}`` or
``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: ``ru_maxrss`` is in KiB on Linux.
KIB_PER_MIB = 1024.0


def _train(spec: dict[str, Any]) -> dict[str, Any]:
    """Train cryojoint as a user would: the particle size and count are estimated from the labels."""
    from cryojoint.checkpoint import read_model_file
    from cryojoint.config import CryojointConfig, default_config
    from cryojoint.training import train

    values = default_config(spec["model_preset"]).to_dict()
    values["train"].update(mode=spec["mode"], steps=int(spec["steps"]), eval_every=int(spec["eval_every"]),
                           checkpoint_every=int(spec["eval_every"]), seed=int(spec["seed"]))
    for key, value in spec.get("overrides", []):
        section, name = key.split(".")
        values.setdefault(section, {})[name] = value
    # from_dict rejects unknown sections/keys and validates, as for a user's --config file.
    config = CryojointConfig.from_dict(values)
    result = train(spec["train_mrcs"], spec["labels"], spec["run_dir"], config, overwrite=True, progress=False,
                   command_line="benchmarks/run.py")
    meta = read_model_file(result.model_path)["meta"]
    history = result.history
    return {
        "model_path": str(result.model_path),
        "train_seconds": float(result.seconds),
        "steps_done": int(result.steps_done),
        "best_step": int(result.best_step),
        "best_metric": float(result.best_metric),
        "metric_name": result.metric_name,
        "stopped_early": bool(result.stopped_early),
        "notes": list(result.notes),
        "meta": {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool))},
        "history": json.loads(history.to_json(orient="records")) if len(history) else [],
    }


def _predict(spec: dict[str, Any]) -> dict[str, Any]:
    """Predict the test micrographs with the automatic cut-off; candidates keep every peak for AP."""
    from cryojoint.prediction import predict_files

    summary = predict_files(spec["model_path"], spec["test_mrcs"], spec["pred_dir"], formats=("star",),
                            overwrite=True, progress=False,
                            outputs=spec.get("outputs", ("picks", "denoised", "heatmap")),
                            particle_diameter_px=spec.get("particle_diameter_px"),
                            denoise_at_input_size=bool(spec.get("denoise_at_input_size", False)))
    if summary.failures:
        raise RuntimeError(f"prediction failed on {summary.failures}")
    return {
        "threshold": None if summary.threshold is None else float(summary.threshold),
        "threshold_was_automatic": bool(summary.threshold_was_automatic),
        "n_picks": int(summary.n_picks),
        "seconds_per_micrograph": float(summary.seconds_per_micrograph),
    }


STEPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"train": _train, "predict": _predict}


def main(argv: list[str]) -> int:
    """Run ``argv = [step, spec_path, result_path]``; always writes the result file, returns 0 or 1."""
    step, spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    started = time.perf_counter()
    try:
        payload = STEPS[step](spec)
        outcome: dict[str, Any] = {"ok": True, **payload}
    except Exception as err:  # noqa: BLE001 - any failure becomes the cell's "failed: reason"
        outcome = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    import torch

    outcome["seconds"] = time.perf_counter() - started
    outcome["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB
    outcome["torch_threads"] = torch.get_num_threads()
    Path(result_path).write_text(json.dumps(outcome, indent=1))
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
