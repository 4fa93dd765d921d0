"""The rows of the tables and how each computes one (structure, dose) cell into a JSON-ready record.

A row is a :class:`MethodSpec`: a cryojoint mode (trained and predicted in fresh processes by
``benchmarks/_measure.py``), Topaz's picker or denoiser (:mod:`benchmarks.peers.topaz`), or a no-learning floor.
:func:`method_specs` lists a profile's rows, :func:`seed_replicates` their runs with other training seeds. The
driver (``benchmarks/run.py``) keeps each record in ``<cache>/<profile>/cells/<structure>/<dose>/<row>.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from benchmarks.suite.datasets import DoseData
from benchmarks.suite.profiles import TRAIN_SEED, CryojointMethod, Profile
from benchmarks.suite.scoring import _finite, _read_mrc_folder, score_denoised, score_picks

from cryojoint.baselines import best_lowpass_sigma, blob_pick, gaussian_lowpass
from cryojoint.checkpoint import model_file_sha256
from cryojoint.config import SHIPPED_MODEL_NAMES
from cryojoint.io.coords import read_coordinates
from cryojoint.io.mrc import read_micrograph
from cryojoint.training import MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]
MEASURE_SCRIPT = REPO_ROOT / "benchmarks" / "_measure.py"
#: Planning figure for Topaz's budget: Topaz gets at least as many minibatches as fit in our joint model's
#: training wall-clock at the same dose. Measured on this 2-core box with nothing else running: 0.41 s per
#: resnet8 minibatch (standard profile, 2026-11-26; the 2.5 s of session 1 was measured under load 5-10 and
#: gave Topaz a quarter of our time).
TOPAZ_SECONDS_PER_MINIBATCH_PLAN = 0.4
PICKING_METHODS = ("floor-blob", "topaz-picker")
DENOISING_METHODS = ("raw", "floor-lowpass", "topaz-denoise", "cryojoint-general-denoise",
                     "cryojoint-general-denoise-sized")


class CellFailed(RuntimeError):
    """A cell could not produce its numbers; the message is shown in the tables."""


def _run_measured(step: str, spec: dict[str, Any], work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Run one ``_measure.py`` step in a fresh process (own peak RSS; a crash stays inside the cell)."""
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = work / f"{step}_spec.json", work / f"{step}_result.json", work / f"{step}.log"
    spec_path.write_text(json.dumps(spec, indent=1, default=str))
    if result_path.exists():
        result_path.unlink()
    with open(log_path, "w") as out:
        completed = subprocess.run([sys.executable, str(MEASURE_SCRIPT), step, str(spec_path), str(result_path)],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    if not result_path.exists():
        tail = log_path.read_text()[-1500:]
        raise CellFailed(f"{step} process exited with code {completed.returncode} and no result: {tail}")
    result = json.loads(result_path.read_text())
    if not result.get("ok"):
        log(result.get("traceback", ""))
        raise CellFailed(f"{step}: {result.get('error')}")
    return result


def cryojoint_cell(method: CryojointMethod, data: DoseData, profile: Profile, work: Path,
                   log: Callable[[str], None], seed: int = TRAIN_SEED) -> dict[str, Any]:
    """Train (partial labels of the training micrographs), predict the test micrographs, score both heads."""
    train_result_path = work / "train_result.json"
    previous = json.loads(train_result_path.read_text()) if train_result_path.exists() else None
    # The model this cell trained is always in its own folder; the recorded path goes stale when a migration
    # renames cells' folders (and may then name another cell's model).
    own_model = work / "run" / MODEL_NAME
    if previous and previous.get("ok") and own_model.exists():
        trained = {**previous, "model_path": str(own_model)}
        log("  reusing the trained model of an interrupted run")
    else:
        spec = {"model_preset": method.model_preset, "mode": method.mode, "steps": profile.steps,
                "overrides": [list(pair) for pair in method.overrides],
                "eval_every": profile.eval_every, "seed": seed,
                "train_mrcs": [str(p) for p in data.train_mrcs], "labels": str(data.train_labels_path),
                "run_dir": str(work / "run")}
        trained = _run_measured("train", spec, work, log)
    predicted = _run_measured("predict", {"model_path": trained["model_path"],
                                          "test_mrcs": [str(p) for p in data.test_mrcs],
                                          "pred_dir": str(work / "pred")}, work, log)
    pred_dir = work / "pred"
    record: dict[str, Any] = {"picking": None, "denoising": None}
    if method.mode != "denoise-only":  # a denoise-only model has no detector: its candidate files are empty
        record["picking"] = score_picks(data, _candidates(pred_dir, data, "the detector"), predicted.get("threshold"))
    denoised_dir = pred_dir / "denoised"
    if (method.mode != "detect-only" and data.has_denoising_truth
            and all((denoised_dir / f"{n}.mrc").exists() for n in data.test_names)):
        try:
            record["denoising"] = score_denoised(data, _read_mrc_folder(denoised_dir, data.test_names))
        except ValueError as err:  # a denoised image at no scale of the micrograph
            record["denoising_not_scored"] = str(err)
    history = trained.get("history", [])
    meta = trained.get("meta", {})
    record["cost"] = {
        "train_seconds": trained.get("train_seconds"), "train_process_seconds": trained.get("seconds"),
        "train_peak_rss_mb": trained.get("peak_rss_mb"), "steps_done": trained.get("steps_done"),
        "best_step": trained.get("best_step"), "stopped_early": trained.get("stopped_early"),
        "infer_seconds_per_micrograph": predicted.get("seconds_per_micrograph"),
        "infer_seconds_per_micrograph_with_startup": predicted["seconds"] / len(data.test_names),
        "infer_peak_rss_mb": predicted.get("peak_rss_mb"), "torch_threads": trained.get("torch_threads"),
    }
    record["settings"] = {
        "mode": method.mode, "model_preset": method.model_preset, "overrides": dict(method.overrides),
        "steps": profile.steps, "eval_every": profile.eval_every, "seed": seed, "init": meta.get("init"),
        "auto_threshold": predicted.get("threshold"),
        "estimated_particle_diameter_px": meta.get("particle_diameter_px"),
        "estimated_expected_particles": meta.get("expected_particles"), "notes": trained.get("notes"),
    }
    record["curve"] = [{k: row.get(k) for k in ("step", "seconds", "validation_ap", "validation_denoise_loss")}
                       for row in history]
    return record


def _topaz_budget(profile: Profile, joint_seconds: float | None) -> tuple[int, int]:
    """Epochs × minibatches: at least the profile's floor and at least our joint training's wall-clock."""
    per_epoch = profile.topaz_minibatches_per_epoch
    wanted = profile.topaz_min_minibatches
    if joint_seconds:
        wanted = max(wanted, math.ceil(joint_seconds / TOPAZ_SECONDS_PER_MINIBATCH_PLAN))
    return max(1, math.ceil(wanted / per_epoch)), per_epoch


def topaz_picker_cell(data: DoseData, profile: Profile, work: Path, joint_record: dict[str, Any] | None,
                      log: Callable[[str], None], seed: int = TRAIN_SEED) -> dict[str, Any]:
    """``topaz train`` on the same partial labels, radius and count from the labels, then ``topaz extract``."""
    from benchmarks.peers.topaz import TOPAZ_DEFAULT_THRESHOLD as PEER_DEFAULT
    from benchmarks.peers.topaz import ensure_topaz_env, topaz_extract, topaz_train

    estimates = data.label_estimates()
    if joint_record and joint_record.get("settings", {}).get("estimated_expected_particles"):
        # Same number cryojoint used (read from our model's meta), so both tools get the same prior knowledge.
        expected = float(joint_record["settings"]["estimated_expected_particles"])
        expected_source = "cryojoint joint model meta (estimated from the labels)"
    else:
        expected = estimates["expected_particles"]
        expected_source = "cryojoint's label-density estimate (computed by the driver)"
    radius = estimates["particle_diameter_px"] / 2.0
    joint_seconds = (joint_record or {}).get("cost", {}).get("train_seconds")
    epochs, per_epoch = _topaz_budget(profile, joint_seconds)
    launcher = ensure_topaz_env()
    trained = topaz_train(
        data.train_mrcs, data.train_labels, work / "train", particle_radius_px=radius,
        expected_particles_per_micrograph=expected, pretrained=profile.topaz_pretrained, epochs=epochs,
        minibatches_per_epoch=per_epoch, seed=seed, validation_mrcs=data.test_mrcs[:1],
        validation_labels=data.test_truth, launcher=launcher,
    )
    extracted = topaz_extract(trained.model_path, data.test_mrcs, work / "extract", particle_radius_px=radius,
                              downsample=trained.downsample, launcher=launcher)
    record: dict[str, Any] = {"picking": score_picks(data, extracted.picks, PEER_DEFAULT), "denoising": None}
    curve = trained.curve
    test_rows = curve[curve["split"] == "test"] if "split" in curve else curve.iloc[:0]
    record["curve"] = [{"epoch": int(r["epoch"]), "seconds": float(r["seconds"]),
                        "test_auprc": _finite(r.get("auprc"))} for _, r in test_rows.iterrows()]
    per_mic = list(extracted.seconds_per_micrograph.values())
    record["cost"] = {
        "train_seconds": trained.seconds, "train_total_seconds": trained.total_seconds,
        "train_peak_rss_mb": trained.peak_rss_mb, "steps_done": epochs * per_epoch,
        "seconds_per_minibatch": trained.seconds_per_minibatch, "best_step": None, "stopped_early": False,
        "infer_seconds_per_micrograph": float(np.mean(per_mic)) if per_mic else None,
        "infer_seconds_per_micrograph_with_startup":
            (extracted.seconds + extracted.preprocess_seconds) / len(data.test_names),
        "infer_peak_rss_mb": extracted.peak_rss_mb, "rss_source": trained.rss_source,
    }
    record["settings"] = {
        "model": trained.model, "pretrained": trained.pretrained, "epochs": epochs, "minibatches_per_epoch": per_epoch,
        "seed": seed,
        "downsample": trained.downsample, "train_radius_px": trained.train_radius_px,
        "extract_radius_px": radius, "particle_diameter_px_from_labels": estimates["particle_diameter_px"],
        "expected_particles": expected, "expected_source": expected_source,
        "pi_passed": trained.prior.pi_passed, "pi_total": trained.prior.pi_total,
        "validation_for_curve_only": data.test_names[:1], "scored_model": str(trained.model_path),
        "budget_rule": f"max({profile.topaz_min_minibatches} minibatches, our joint training seconds / "
                       f"{TOPAZ_SECONDS_PER_MINIBATCH_PLAN} s per minibatch)",
        "commands": trained.commands + extracted.commands, "versions": trained.versions,
    }
    return record


def topaz_denoise_cell(data: DoseData, profile: Profile, work: Path, joint_record: dict[str, Any] | None,
                       log: Callable[[str], None]) -> dict[str, Any]:
    """Topaz-Denoise's shipped pretrained ``unet`` (unet_L2_v0.2.2) on the test micrographs of this dose."""
    from benchmarks.peers.topaz import ensure_topaz_env, topaz_denoise

    result = topaz_denoise(data.test_mrcs, work, launcher=ensure_topaz_env())
    denoised = {name: read_micrograph(path).data for name, path in result.paths.items()}
    per_mic = list(result.seconds_per_micrograph.values())
    return {
        "picking": None, "denoising": score_denoised(data, denoised),
        "cost": {"train_seconds": None, "infer_seconds_per_micrograph": float(np.mean(per_mic)) if per_mic else None,
                 "infer_seconds_per_micrograph_with_startup": result.seconds / len(data.test_names),
                 "infer_peak_rss_mb": result.peak_rss_mb, "rss_source": result.rss_source},
        "settings": {"arch": "unet (unet_L2_v0.2.2, pretrained, shipped)", "commands": result.commands},
    }


def blob_cell(data: DoseData, profile: Profile, work: Path, joint_record: dict[str, Any] | None,
              log: Callable[[str], None]) -> dict[str, Any]:
    """LoG blob picker at the diameter estimated from the labels, polarity decided from the labels."""
    estimates = data.label_estimates()
    rows, seconds = [], []
    for name, image in data.test_images().items():
        started = time.perf_counter()
        xy, scores = blob_pick(image, estimates["particle_diameter_px"], polarity=estimates["polarity"])
        seconds.append(time.perf_counter() - started)
        rows.append(pd.DataFrame({"micrograph": name, "x": xy[:, 0], "y": xy[:, 1], "score": scores}))
    picks = pd.concat(rows, ignore_index=True)
    return {"picking": score_picks(data, picks, None), "denoising": None,
            "cost": {"train_seconds": 0.0, "infer_seconds_per_micrograph": float(np.mean(seconds))},
            "settings": {**estimates, "nms_radius_px": estimates["particle_diameter_px"] / 2}}


def lowpass_cell(data: DoseData, profile: Profile, work: Path, joint_record: dict[str, Any] | None,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Gaussian low-pass with the sigma that maximises PSNR vs full dose ON THE TEST SET (an oracle floor)."""
    images, references = data.test_images(), data.references()
    sigma = best_lowpass_sigma([images[n] for n in data.test_names], [references[n] for n in data.test_names])
    started = time.perf_counter()
    denoised = {n: gaussian_lowpass(images[n], sigma_px=sigma) for n in data.test_names}
    seconds = (time.perf_counter() - started) / len(data.test_names)
    return {"picking": None, "denoising": score_denoised(data, denoised),
            "cost": {"train_seconds": 0.0, "infer_seconds_per_micrograph": seconds},
            "settings": {"sigma_px": sigma, "tuned_on": "test micrographs vs full dose (oracle)"}}


def general_zero_shot_cell(data: DoseData, profile: Profile, work: Path, joint_record: dict[str, Any] | None,
                           log: Callable[[str], None]) -> dict[str, Any]:
    """The shipped general model with no training and no labels, told the particle diameter (as a user knows it:
    the true one); micrographs binned to its 36 px particle; picks scored at the automatic cut-off."""
    predicted = _run_measured("predict", {"model_path": "general", "test_mrcs": [str(p) for p in data.test_mrcs],
                                          "pred_dir": str(work / "pred"), "outputs": ["picks"],
                                          "particle_diameter_px": data.true_diameter_px}, work, log)
    candidates = _candidates(work / "pred", data, "the general model")
    return {"picking": score_picks(data, candidates, predicted.get("threshold")), "denoising": None,
            "cost": _untrained_cost(predicted, data),
            "settings": {"model": "general", "particle_diameter_px": data.true_diameter_px,
                         "auto_threshold": predicted.get("threshold")}}


def general_denoise_cell(data: DoseData, profile: Profile, work: Path, joint_record: dict[str, Any] | None,
                         log: Callable[[str], None]) -> dict[str, Any]:
    """``cryojoint denoise``: the shipped general model's denoiser alone, no training, at the input's pixel size
    (the detector does not run), like Topaz-Denoise's pretrained model beside it."""
    return _general_denoise(data, work, log, None)


def general_denoise_sized_cell(data: DoseData, profile: Profile, work: Path, joint_record: dict[str, Any] | None,
                               log: Callable[[str], None]) -> dict[str, Any]:
    """``cryojoint denoise --particle-diameter``: told the diameter (the true one, as the zero-shot row), it
    denoises at the scale the model learned and writes at the input's size (mean over the binning phases)."""
    return _general_denoise(data, work, log, data.true_diameter_px)


def _general_denoise(data: DoseData, work: Path, log: Callable[[str], None],
                     particle_diameter_px: float | None) -> dict[str, Any]:
    sized = particle_diameter_px is not None
    predicted = _run_measured("predict", {"model_path": "general", "test_mrcs": [str(p) for p in data.test_mrcs],
                                          "pred_dir": str(work / "pred"), "outputs": ["denoised"],
                                          "particle_diameter_px": particle_diameter_px,
                                          "denoise_at_input_size": sized}, work, log)
    denoised = _read_mrc_folder(work / "pred" / "denoised", data.test_names)
    command = "cryojoint denoise MICS --out DIR" + (f" --particle-diameter {particle_diameter_px:g}px" if sized else "")
    return {"picking": None, "denoising": score_denoised(data, denoised), "cost": _untrained_cost(predicted, data),
            "settings": {"model": "general", "command": command,
                         **({"particle_diameter_px": particle_diameter_px} if sized else {})}}


def _candidates(pred_dir: Path, data: DoseData, source: str) -> pd.DataFrame:
    """Every candidate peak a predict run wrote for the test micrographs (``pred_dir/candidates/*.csv``)."""
    files = [pred_dir / "candidates" / f"{n}.csv" for n in data.test_names]
    tables = [read_coordinates(p, "csv") for p in files if p.exists() and p.stat().st_size > 0
              and len(p.read_text().splitlines()) > 1]
    if not tables:
        raise CellFailed(f"{source} produced no candidate peaks")
    return pd.concat(tables, ignore_index=True)


def _untrained_cost(predicted: dict[str, Any], data: DoseData) -> dict[str, Any]:
    """The cost record of a row that only predicts (no training): time and memory of its predict process."""
    return {"train_seconds": 0.0, "infer_seconds_per_micrograph": predicted.get("seconds_per_micrograph"),
            "infer_seconds_per_micrograph_with_startup": predicted["seconds"] / len(data.test_names),
            "infer_peak_rss_mb": predicted.get("peak_rss_mb")}


def raw_cell(data: DoseData, profile: Profile, work: Path, joint_record: dict[str, Any] | None,
             log: Callable[[str], None]) -> dict[str, Any]:
    """The low-dose input itself, scored as a 'denoised' image: what any denoiser must beat."""
    return {"picking": None, "denoising": score_denoised(data, data.test_images()), "cost": {}, "settings": {}}


@dataclass(frozen=True)
class MethodSpec:
    method_id: str
    label: str
    tier: int
    needs_topaz: bool
    run: Callable[..., dict[str, Any]]
    #: Training seed; a spec with a seed other than TRAIN_SEED is a replicate of the row ``base_id``.
    seed: int = TRAIN_SEED
    base_id: str = ""
    #: Whether the method trains (only those get seed replicates).
    trains: bool = False

    @property
    def row_id(self) -> str:
        return self.base_id or self.method_id

    @property
    def is_replicate(self) -> bool:
        return self.seed != TRAIN_SEED


def method_specs(profile: Profile) -> list[MethodSpec]:
    """Every row of the tables for ``profile``, with its run function and its place in the run order."""
    specs = [
        MethodSpec("raw", "raw low-dose input (no denoising)", 0, False, raw_cell),
        MethodSpec("floor-lowpass", "floor: Gaussian low-pass (oracle σ)", 0, False, lowpass_cell),
        MethodSpec("floor-blob", "floor: LoG blob picker", 0, False, blob_cell),
        MethodSpec("topaz-denoise", "Topaz-Denoise unet (pretrained)", 1, True, topaz_denoise_cell),
        MethodSpec("topaz-picker", f"Topaz resnet8 ({'pretrained' if profile.topaz_pretrained else 'from scratch'})",
                   1, True, topaz_picker_cell, trains=True),
    ]
    if profile.general_rows:
        specs += [MethodSpec("cryojoint-general-zero-shot", "cryojoint general model, zero-shot (no labels, given "
                             "the diameter)", 2, False, general_zero_shot_cell),
                  MethodSpec("cryojoint-general-denoise", "cryojoint denoise (general model, no training)", 2, False,
                             general_denoise_cell),
                  MethodSpec("cryojoint-general-denoise-sized", "cryojoint denoise --particle-diameter (general "
                             "model, no training, at the model's scale)", 2, False, general_denoise_sized_cell)]
    if not profile.has_denoising_truth:  # nothing to score a denoiser against
        specs = [spec for spec in specs if spec.row_id not in DENOISING_METHODS]
    for method in profile.methods:
        def run(data: DoseData, prof: Profile, work: Path, joint: Any, log: Callable[[str], None],
                seed: int = TRAIN_SEED, _method: CryojointMethod = method) -> dict[str, Any]:
            return cryojoint_cell(_method, data, prof, work, log, seed=seed)

        specs.append(MethodSpec(method.method_id, method.label, method.tier, False, run, trains=True))
    return specs


#: A replicate's cell id: its row's id, then ``-seed<N>``; the row's main cell (seed TRAIN_SEED) has the bare id.
_REPLICATE_ID = re.compile(r"^(?P<row>.+?)-seed(?P<seed>\d+)$")


def replicate_id(row_id: str, seed: int) -> str:
    """Cell id of row ``row_id`` trained with ``seed``: what the results' ``cells`` and the cache are keyed by."""
    return row_id if seed == TRAIN_SEED else f"{row_id}-seed{seed}"


def split_replicate_id(cell_id: str) -> tuple[str, int]:
    """(row id, training seed) of a cell id made by :func:`replicate_id`; any other id is a main cell."""
    match = _REPLICATE_ID.match(cell_id)
    return (match["row"], int(match["seed"])) if match else (cell_id, TRAIN_SEED)


def seed_replicates(specs: Sequence[MethodSpec], seeds: Sequence[int]) -> list[MethodSpec]:
    """The trained rows again with other training seeds (same data, same budget): the spread they show is
    what a single-seed difference between two rows has to exceed before it means anything."""
    replicates = []
    for seed in seeds:
        if seed == TRAIN_SEED:
            continue
        for spec in specs:
            if not spec.trains:
                continue

            def run(data: DoseData, prof: Profile, work: Path, joint: Any, log: Callable[[str], None],
                    _run: Callable[..., dict[str, Any]] = spec.run, _seed: int = seed) -> dict[str, Any]:
                return _run(data, prof, work, joint, log, seed=_seed)

            replicates.append(dataclasses.replace(spec, method_id=replicate_id(spec.method_id, seed),
                                                  label=f"{spec.label}, seed {seed}", run=run, seed=seed,
                                                  base_id=spec.method_id))
    return replicates


def starting_model(record: dict[str, Any]) -> str | None:
    """The shipped model a cell's method started from (fine-tuned) or ran as it is; None: random weights, a peer,
    a floor, or a cell recorded before cells said so."""
    settings = record.get("settings") or {}
    name = settings.get("init") or settings.get("model")
    return name if name in SHIPPED_MODEL_NAMES else None


@functools.cache  # read once per run: a checkout's weights do not change under it
def shipped_model_sha256(name: str) -> str:
    """The SHA-256 of the weights a shipped model's name gives in this checkout: ``general`` moves on from version
    to version, and a cell made from another version is stale."""
    return model_file_sha256(name)


def _cell_key(structure: str, dose: str, method_id: str) -> str:
    return f"{structure}/{dose}/{method_id}"


def code_version() -> str | None:
    """``git describe --always --dirty`` of this checkout: cached cells outlive code changes, so each says which
    code computed it."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None
