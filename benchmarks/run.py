"""One command, cryojoint vs Topaz and the no-learning floors: same simulated data, same run, same machine.

::

    python benchmarks/run.py --profile quick                 # CI-sized (Topaz skipped if its venv is absent)
    python benchmarks/run.py --profile standard              # many hours on 2 CPU cores: three doses, seeds 0,1,2
    python benchmarks/run.py --profile full --doses 010      # 1024², both structures, every mode and preset
    python benchmarks/run.py --profile standard --seeds 0    # one training seed only (the quicker, noisier run)
    python benchmarks/run.py --profile quick --seeds 1,2 --only topaz-picker  # seeds 0,1,2 of one row

Every trained row (cryojoint modes, Topaz's picker) is trained with each of the profile's seeds (``standard`` and
``full``: 0, 1, 2; ``tiny`` and ``quick``: 0) or the ``--seeds`` given (seed 0 always among them); the main
tables show the mean over the seeds that finished, the "Spread over training seeds" section mean ± sd.

Every (structure, dose, method) cell is independent and cached under ``benchmarks/.cache/<profile>/cells``:
a failure becomes "failed: reason" in the tables and the run goes on; a rerun skips finished cells (unless
``--force``). The tables are rewritten after every cell, so a long run has partial results at any time:
``benchmarks/results/<date>-<profile>.md`` and ``.json``, plus ``<date>-<profile>/benchmark.json`` and its
``report.html`` (via :func:`cryojoint.report.write_report`). See ``benchmarks/README.md`` for what each number
means and how each peer is run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make ``benchmarks.peers`` importable
    sys.path.insert(0, str(REPO_ROOT))

from cryojoint.baselines import best_lowpass_sigma, blob_pick, choose_polarity, gaussian_lowpass  # noqa: E402
from cryojoint.config import DataConfig  # noqa: E402
from cryojoint.data import estimate_expected_particles  # noqa: E402
from cryojoint.evaluation import denoising_metrics, picking_metrics, psnr  # noqa: E402
from cryojoint.imaging import normalise  # noqa: E402
from cryojoint.io.coords import read_coordinates, write_coordinates  # noqa: E402
from cryojoint.io.mrc import read_micrograph, write_mrc  # noqa: E402
from cryojoint.picking import estimate_particle_diameter  # noqa: E402

DEFAULT_CACHE = REPO_ROOT / "benchmarks" / ".cache"
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results"
MEASURE_SCRIPT = Path(__file__).resolve().parent / "_measure.py"
DATASET_SEED = 0
TRAIN_SEED = 0
REFERENCE_DOSE = "dose_100"
#: Low-pass cut-off (Å) of the "PSNR vs low-passed full dose" reference: at 5.3 Å/px a 20 Å period is 3.8 px,
#: near the top of the FRC band (4 px); the paper does not name its filter.
LOWPASS_REFERENCE_ANGSTROM = 20.0
#: Topaz's extraction cut-off by default (logit); used for "F1 at the tool's own cut-off".
TOPAZ_DEFAULT_THRESHOLD = -6.0
#: Planning figure for Topaz's budget: Topaz gets at least as many minibatches as fit in our joint model's
#: training wall-clock at the same dose. Measured on this 2-core box with nothing else running: 0.41 s per
#: resnet8 minibatch (standard profile, 2026-11-26; the 2.5 s of session 1 was measured under load 5-10 and
#: gave Topaz a quarter of our time).
TOPAZ_SECONDS_PER_MINIBATCH_PLAN = 0.4
#: Points kept per precision-recall curve in benchmark.json (the report draws them).
MAX_CURVE_POINTS = 200
#: Characters of a failure reason shown in a table cell (the JSON keeps all of it).
MAX_REASON_CHARS = 70
DOSE_KEYS = ("010", "020", "060")
#: The single column of a profile of real micrographs (their dose is what it is).
REAL_DOSE = "real"


# ============================================================================================== profiles


@dataclass(frozen=True)
class CryojointMethod:
    """One cryojoint row: a training mode with a model preset."""

    mode: str
    model_preset: str = "default"
    tier: int = 3
    #: Config changes on top of the preset, as ("section.field", value) pairs, and their short name.
    overrides: tuple[tuple[str, Any], ...] = ()
    variant: str = ""

    @property
    def method_id(self) -> str:
        suffix = f"-{self.variant}" if self.variant else ""
        return f"cryojoint-{self.mode}-{self.model_preset}{suffix}"

    @property
    def label(self) -> str:
        variant = f", {self.variant}" if self.variant else ""
        return f"cryojoint {self.mode} ({self.model_preset}{variant})"


#: The joint model with the paper's coupling (the detection loss trains the denoiser through the denoised image).
COUPLED = CryojointMethod("joint", "default", 2, (("model.detection_trains_denoiser", True),), "coupled")


#: Seconds per joint training step at the standard profile's automatic 96² patch, on this 2-core box with
#: nothing else running (40-step runs, 2026-11-27; the validation pass excluded). Used only to give the paper
#: preset the default preset's wall-clock in the equal-time row.
SECONDS_PER_JOINT_STEP = {"default": 0.48, "paper": 2.55}


def paper_equal_time(default_steps: int, validations: int = 5) -> CryojointMethod:
    """The joint model with the paper preset, trained for the default preset's wall-clock (fewer steps)."""
    steps = round(default_steps * SECONDS_PER_JOINT_STEP["default"] / SECONDS_PER_JOINT_STEP["paper"])
    return CryojointMethod("joint", "paper", 4, (("train.steps", steps), ("train.eval_every", steps // validations)),
                           "equal-time")


ALL_MODES = ("joint", "joint-no-consistency", "sequential", "denoise-only", "detect-only")


def _modes(presets: Sequence[str], modes: Sequence[str] = ALL_MODES) -> tuple[CryojointMethod, ...]:
    """Methods in run order: joint (default) early (tier 1, beside Topaz), detect-only next, then the rest."""
    tiers = {"joint": 1, "detect-only": 2}
    methods = []
    for preset in presets:
        for mode in modes:
            tier = tiers.get(mode, 3) if preset == "default" else 4
            methods.append(CryojointMethod(mode, preset, tier))
    return tuple(methods)


@dataclass(frozen=True)
class Profile:
    """Size of one benchmark run. Times are for the 2-core CPU box this was written on."""

    name: str
    structures: tuple[str, ...]
    n_train: int
    n_test: int
    size_px: int
    doses: tuple[str, ...]
    methods: tuple[CryojointMethod, ...]
    steps: int
    eval_every: int
    topaz_min_minibatches: int
    topaz_minibatches_per_epoch: int
    #: Simulation overrides (small fields need denser particles so that the partial labels suffice).
    simulation_changes: Mapping[str, Any] = field(default_factory=dict)
    topaz_pretrained: bool = False
    description: str = ""
    #: Training seeds of every trained row (cryojoint modes, Topaz's picker); seed ``TRAIN_SEED`` is the row's
    #: reference run (computed first; Topaz's budget and count read the joint model's seed-0 cell).
    seeds: tuple[int, ...] = (TRAIN_SEED,)
    #: ``(scale, offset)`` applied to every stored image (all doses, reference, clean) as float32: data whose
    #: units are not the simulator's counts, as a pipeline that normalises or rescales would hand it over.
    intensity_map: tuple[float, float] | None = None
    #: Where the micrographs come from: ``"simulated"`` (our simulator, every truth known) or ``"real-bgal"``
    #: (real micrographs with reference picks, :mod:`benchmarks.real_bgal`: picking only, no clean image).
    dataset: str = "simulated"

    @property
    def has_denoising_truth(self) -> bool:
        """Clean and full-dose images exist, so denoising can be scored."""
        return self.dataset == "simulated"


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        "tiny", ("ribosome",), 2, 1, 256, ("020",), _modes(["default"], ["joint"]), 30, 15, 20, 10,
        {"particles_per_micrograph": (700, 800), "label_region_px": None},
        description="test-suite size: 2+1 micrographs at 256², 30 steps, joint only",
    ),
    "quick": Profile(
        "quick", ("ribosome",), 6, 2, 512, ("020",), _modes(["default"], ["joint", "detect-only"]), 300, 50,
        100, 50, {"particles_per_micrograph": (300, 400), "label_region_px": 500},
        description="CI size: 6+2 micrographs at 512², denser particles and a larger label region so the "
                    "labels suffice, one dose, 300 steps",
    ),
    "standard": Profile(
        "standard", ("ribosome",), 8, 4, 1024, DOSE_KEYS,
        (*_modes(["default"]), COUPLED, paper_equal_time(600), CryojointMethod("joint", "paper", 4)), 600,
        100,
        300, 100,
        description="8+4 micrographs at 1024², ribosome, three doses, five modes + joint with the paper's coupling + "
                    "joint with the "
                    "paper preset at equal steps and at equal wall-clock, 600 steps, training seeds 0, 1, 2",
        seeds=(0, 1, 2),
    ),
    "second": Profile(
        "second", ("ruvb",), 6, 3, 1024, ("010", "060"),
        (*_modes(["default"], ["joint", "denoise-only", "detect-only"]),), 600, 100, 300, 100,
        {"pixel_size_angstrom": 3.5}, intensity_map=(1.0 / 250.0, -3.0),
        description="a differently built dataset for checking defaults: 6+3 micrographs at 1024², RuvB (≈ 34 px "
                    "at 3.5 Å/px, denser fields), stored as x/250 − 3 in float32 (not counts), two doses, "
                    "600 steps, training seeds 0, 1, 2",
        seeds=(0, 1, 2),
    ),
    "real-bgal": Profile(
        "real-bgal", ("bgal",), 10, 10, 1024, (REAL_DOSE,),
        (*_modes(["default"], ["joint", "detect-only"]),), 600, 100, 300, 100, dataset="real-bgal",
        description="real micrographs: 10+10 EMPIAR-10017 β-galactosidase micrographs (CryoSegNet's filtered "
                    "8-bit copies, binned 4× to 1024², 7.08 Å/px, particle ≈ 27 px), half of the particles "
                    "inside one region of each training micrograph labelled; picking only; 600 steps, training "
                    "seeds 0, 1, 2",
        seeds=(0, 1, 2),
    ),
    "full": Profile(
        "full", ("ribosome", "ruvb"), 16, 8, 1024, DOSE_KEYS, _modes(["default", "paper"]), 3000, 100, 2000,
        200, description="16+8 micrographs at 1024², both structures, five modes × two presets, 3000 steps "
                         "(early stopping), Topaz ≥ 2000 minibatches, training seeds 0, 1, 2",
        seeds=(0, 1, 2),
    ),
}


# ============================================================================================== datasets


@dataclass
class DoseData:
    """Everything one (structure, dose) cell needs: inputs, partial labels, and the truth for scoring."""

    structure: str
    dose: str
    data_dir: Path
    train_names: list[str]
    test_names: list[str]
    train_labels: pd.DataFrame
    train_labels_path: Path
    test_truth: pd.DataFrame
    true_diameter_px: float
    pixel_size: float
    #: Folder of the micrographs when it is not ``dose_<dose>`` (real data), and whether clean, full-dose
    #: and mask images exist (simulated data only).
    image_dir: Path | None = None
    has_denoising_truth: bool = True
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def dose_dir(self) -> Path:
        return self.image_dir or self.data_dir / f"dose_{self.dose}"

    def mrcs(self, names: Sequence[str], dose_dir: Path | None = None) -> list[Path]:
        folder = dose_dir or self.dose_dir
        return [folder / f"{name}.mrc" for name in names]

    @property
    def train_mrcs(self) -> list[Path]:
        return self.mrcs(self.train_names)

    @property
    def test_mrcs(self) -> list[Path]:
        return self.mrcs(self.test_names)

    def _images(self, key: str, folder: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
        if key not in self._cache:
            self._cache[key] = {n: read_micrograph(folder / f"{n}.mrc").data for n in names}
        return self._cache[key]

    def test_images(self) -> dict[str, np.ndarray]:
        return self._images("test", self.dose_dir, self.test_names)

    def train_images(self) -> dict[str, np.ndarray]:
        return self._images("train", self.dose_dir, self.train_names)

    def references(self) -> dict[str, np.ndarray]:
        return self._images("reference", self.data_dir / REFERENCE_DOSE, self.test_names)

    def clean(self) -> dict[str, np.ndarray]:
        return self._images("clean", self.data_dir / "clean", self.test_names)

    def masks(self) -> dict[str, np.ndarray] | None:
        if not self.has_denoising_truth:
            return None
        images = self._images("masks", self.data_dir / "masks", self.test_names)
        return {n: np.rint(m).astype(np.uint8) for n, m in images.items()}

    def label_estimates(self) -> dict[str, float]:
        """Particle diameter and count per micrograph as cryojoint estimates them from the labels.

        The same functions and inputs as :func:`cryojoint.data.prepare_data` (no binning): what a user knows
        without the truth. Every tool and floor gets these numbers, never the simulator's diameter.
        """
        if "estimates" not in self._cache:
            images = self.train_images()
            labelled = [n for n in self.train_names if (self.train_labels["micrograph"] == n).any()]
            xy = [self.train_labels.loc[self.train_labels["micrograph"] == n, ["x", "y"]].to_numpy(float)
                  for n in labelled]
            normalised = [normalise(images[n]) for n in labelled]
            diameter = float(estimate_particle_diameter(normalised, xy))
            expected = float(estimate_expected_particles(xy, [im.shape for im in normalised], diameter,
                                                         DataConfig().label_completeness))
            polarity_votes = [choose_polarity(im, diameter, p) for im, p in zip(normalised, xy, strict=True)]
            polarity = max(set(polarity_votes), key=polarity_votes.count)
            self._cache["estimates"] = {"particle_diameter_px": diameter, "expected_particles": expected,
                                        "polarity": polarity}
        return self._cache["estimates"]


def _dataset_key(structure: str, profile: Profile) -> str:
    n_total = profile.n_train + profile.n_test
    changes = json.dumps(dict(profile.simulation_changes), sort_keys=True, default=list)
    mapped = "" if profile.intensity_map is None else f"|{list(profile.intensity_map)}"
    digest = hashlib.sha1(f"{structure}|{n_total}|{profile.size_px}|{DATASET_SEED}|{changes}{mapped}"
                          .encode()).hexdigest()
    return f"{structure}-{profile.size_px}px-{n_total}mic-seed{DATASET_SEED}-{digest[:8]}"


def ensure_dataset(structure: str, profile: Profile, cache_dir: Path, log: Callable[[str], None]) -> Path:
    """Simulate once per (structure, size, count, seed, overrides) and cache; returns the data folder.

    Real data is prepared once from its source instead (:func:`benchmarks.real_bgal.prepare`)."""
    from cryojoint.simulation import SimulationConfig, simulate, write_dataset

    if profile.dataset == "real-bgal":
        from benchmarks.real_bgal import SnapshotMissing, prepare

        try:
            return prepare(cache_dir, log=log)
        except SnapshotMissing as err:
            raise SystemExit(f"error: {err}") from None

    data_dir = cache_dir / "data" / _dataset_key(structure, profile)
    facts_path = data_dir / "benchmark_dataset.json"
    if facts_path.exists():
        return data_dir
    n_total = profile.n_train + profile.n_test
    log(f"simulating {n_total} × {profile.size_px}² {structure} micrographs into {data_dir}")
    config = SimulationConfig.for_preset(structure, seed=DATASET_SEED, n_micrographs=n_total,
                                         size_px=(profile.size_px, profile.size_px), **profile.simulation_changes)
    started = time.perf_counter()
    dataset = simulate(config=config)
    write_dataset(dataset, data_dir, overwrite=True)
    if profile.intensity_map is not None:
        _map_intensities(data_dir, *profile.intensity_map)
    names = [m.name for m in dataset.clean]
    dataset.truth[["micrograph", "x", "y"]].to_csv(data_dir / "truth_exact.csv", index=False)
    dataset.labels[["micrograph", "x", "y"]].to_csv(data_dir / "labels_exact.csv", index=False)
    facts = {"structure": structure, "names": names, "train_names": names[:profile.n_train],
             "test_names": names[profile.n_train:], "particle_diameter_px": dataset.particle_diameter_px,
             "pixel_size": dataset.config.pixel_size_angstrom, "n_truth": len(dataset.truth),
             "n_labels": len(dataset.labels), "simulation": dataset.config.to_dict(),
             "intensity_map": profile.intensity_map,
             "seconds": time.perf_counter() - started}
    facts_path.write_text(json.dumps(facts, indent=1, default=list))
    return data_dir


def _map_intensities(data_dir: Path, scale: float, offset: float) -> None:
    """Rewrite every stored image (not the masks) as ``scale·x + offset`` in float32, pixel size kept."""
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name != "masks"):
        for path in sorted(folder.glob("*.mrc")):
            micrograph = read_micrograph(path)
            mapped = (micrograph.data.astype(np.float64) * scale + offset).astype(np.float32)
            write_mrc(path, mapped, micrograph.pixel_size, overwrite=True)


def load_dose_data(data_dir: Path, dose: str, profile: Profile | None = None) -> DoseData:
    if profile is not None and profile.dataset == "real-bgal":
        from benchmarks.real_bgal import load_prepared

        real = load_prepared(data_dir)
        return DoseData(structure=profile.structures[0], dose=dose, data_dir=data_dir,
                        train_names=real.train_names, test_names=real.test_names, train_labels=real.train_labels,
                        train_labels_path=real.train_labels_path, test_truth=real.test_truth,
                        true_diameter_px=real.true_diameter_px, pixel_size=real.pixel_size,
                        image_dir=real.image_dir, has_denoising_truth=False)
    facts = json.loads((data_dir / "benchmark_dataset.json").read_text())
    truth = pd.read_csv(data_dir / "truth_exact.csv", dtype={"micrograph": str})
    labels = pd.read_csv(data_dir / "labels_exact.csv", dtype={"micrograph": str})
    train_labels = labels[labels["micrograph"].isin(facts["train_names"])].reset_index(drop=True)
    labels_path = data_dir / "train_labels.star"
    if not labels_path.exists():
        write_coordinates(train_labels, labels_path)
    return DoseData(
        structure=facts["structure"], dose=dose, data_dir=data_dir, train_names=list(facts["train_names"]),
        test_names=list(facts["test_names"]), train_labels=train_labels, train_labels_path=labels_path,
        test_truth=truth[truth["micrograph"].isin(facts["test_names"])].reset_index(drop=True),
        true_diameter_px=float(facts["particle_diameter_px"]), pixel_size=float(facts["pixel_size"]),
    )


# ============================================================================================== scoring


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _thin_curve(precision: np.ndarray, recall: np.ndarray) -> dict[str, list[float]]:
    keep = np.unique(np.linspace(0, len(precision) - 1, min(len(precision), MAX_CURVE_POINTS)).astype(int))
    return {"precision": [float(v) for v in precision[keep]], "recall": [float(v) for v in recall[keep]]}


def score_picks(data: DoseData, picks: pd.DataFrame, own_threshold: float | None) -> dict[str, Any]:
    """AP, best F1 (and its cut-off, with precision/recall/in-mask/edge recall there), F1 at the tool's cut-off.

    Match radius = the TRUE particle radius for every method (the same yardstick for all).
    """
    radius = data.true_diameter_px / 2.0
    masks = data.masks()
    picks = picks[["micrograph", "x", "y", "score"]].copy()
    sweep = picking_metrics(picks, data.test_truth, radius, threshold=None, masks=masks,
                            micrographs=data.test_names).overall
    result: dict[str, Any] = {
        "match_radius_px": radius, "n_candidates": int(len(picks)), "n_true": int(sweep.n_true),
        "average_precision": _finite(sweep.average_precision), "best_f1": _finite(sweep.best_f1),
        "best_f1_threshold": _finite(sweep.best_f1_threshold),
        "curve": _thin_curve(sweep.curve.precision, sweep.curve.recall),
    }
    if result["best_f1_threshold"] is not None:
        at_best = picking_metrics(picks, data.test_truth, radius, threshold=result["best_f1_threshold"],
                                  masks=masks, micrographs=data.test_names).overall
        result.update({"precision_at_best": _finite(at_best.precision), "recall_at_best": _finite(at_best.recall),
                       "picks_in_mask_at_best": _finite(at_best.fraction_picks_in_mask),
                       "edge_recall_at_best": _finite(at_best.edge_recall), "n_picks_at_best": at_best.n_picks})
    if own_threshold is not None:
        own = picking_metrics(picks, data.test_truth, radius, threshold=own_threshold, masks=masks,
                              micrographs=data.test_names).overall
        result.update({"own_threshold": float(own_threshold), "f1_at_own": _finite(own.f1),
                       "precision_at_own": _finite(own.precision), "recall_at_own": _finite(own.recall),
                       "n_picks_at_own": own.n_picks, "picks_in_mask_at_own": _finite(own.fraction_picks_in_mask)})
    return result


def score_denoised(data: DoseData, denoised: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """PSNR vs full dose, vs low-passed full dose, vs clean outside masks; FRC vs clean (same for all).

    Also PSNR vs the *rest* of the exposure (full dose minus this dose). The simulated doses are nested, so
    the full-dose image contains the input's own shot noise (60 % of it at 60 % dose) and PSNR vs full dose
    rewards keeping that noise: the raw input then scores above any denoiser. The rest of the exposure has
    noise independent of the input, so it ranks methods without that bias (its own noise lowers every score
    alike; the affine fit inside :func:`psnr` absorbs its lower mean).
    """
    references, inputs = data.references(), data.test_images()
    report = denoising_metrics(dict(denoised), references, clean=data.clean(), masks=data.masks(),
                               pixel_size=data.pixel_size, lowpass_angstrom=LOWPASS_REFERENCE_ANGSTROM)
    scores = {k: _finite(v) for k, v in report.mean.items()}
    rest = [psnr(np.asarray(denoised[n], np.float64),
                 references[n].astype(np.float64) - inputs[n].astype(np.float64)) for n in denoised]
    scores[INDEPENDENT_PSNR_KEY] = _finite(np.mean(rest))
    return scores


#: Key of the PSNR against the rest of the exposure (noise independent of the input).
INDEPENDENT_PSNR_KEY = "psnr_rest_of_exposure"


def refresh_denoising_scores(cell: dict[str, Any], data: DoseData, work: Path) -> bool:
    """Score a cached cryojoint cell's saved denoised micrographs again when it lacks a newer metric."""
    section = cell.get("denoising")
    denoised_dir = work / "pred" / "denoised"
    if not section or INDEPENDENT_PSNR_KEY in section:
        return False
    if not all((denoised_dir / f"{n}.mrc").exists() for n in data.test_names):
        return False
    cell["denoising"] = score_denoised(data, _read_mrc_folder(denoised_dir, data.test_names))
    return True


def _read_mrc_folder(folder: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    return {n: read_micrograph(folder / f"{n}.mrc").data for n in names}


# ============================================================================================== cells


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
    if previous and previous.get("ok") and Path(previous["model_path"]).exists():
        trained = previous
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
        candidate_files = [pred_dir / "candidates" / f"{n}.csv" for n in data.test_names]
        tables = [read_coordinates(p, "csv") for p in candidate_files if p.exists() and p.stat().st_size > 0
                  and len(p.read_text().splitlines()) > 1]
        candidates = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        if candidates.empty:
            raise CellFailed("the detector produced no candidate peaks")
        record["picking"] = score_picks(data, candidates, predicted.get("threshold"))
    denoised_dir = pred_dir / "denoised"
    if (method.mode != "detect-only" and data.has_denoising_truth
            and all((denoised_dir / f"{n}.mrc").exists() for n in data.test_names)):
        record["denoising"] = score_denoised(data, _read_mrc_folder(denoised_dir, data.test_names))
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
        "steps": profile.steps, "eval_every": profile.eval_every, "seed": seed,
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
    if not profile.has_denoising_truth:  # nothing to score a denoiser against
        specs = [spec for spec in specs if spec.row_id not in DENOISING_METHODS]
    for method in profile.methods:
        def run(data: DoseData, prof: Profile, work: Path, joint: Any, log: Callable[[str], None],
                seed: int = TRAIN_SEED, _method: CryojointMethod = method) -> dict[str, Any]:
            return cryojoint_cell(_method, data, prof, work, log, seed=seed)

        specs.append(MethodSpec(method.method_id, method.label, method.tier, False, run, trains=True))
    return specs


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

            replicates.append(dataclasses.replace(spec, method_id=f"{spec.method_id}-seed{seed}",
                                                  label=f"{spec.label}, seed {seed}", run=run, seed=seed,
                                                  base_id=spec.method_id))
    return replicates


def _run_order(profile: Profile, specs: Sequence[MethodSpec],
               doses: Sequence[str]) -> list[tuple[str, str, MethodSpec]]:
    """Cheap floors first; then per dose our joint model followed by Topaz; then, dose by dose from the lowest
    (where the paper's claims are strongest), the other modes of the default preset; the paper preset; seed
    replicates last (seed by seed, so a stopped run has whole replicates of the lowest dose first)."""
    within_tier = {"cryojoint-joint-default": 0, "topaz-picker": 1, "topaz-denoise": 2}

    def phase(tier: int) -> int:
        return 0 if tier <= 1 else (1 if tier <= 3 else 2)

    cells = [(s, d, spec) for s in profile.structures for d in doses for spec in specs]
    return sorted(cells, key=lambda c: (3 if c[2].is_replicate else phase(c[2].tier), c[2].seed,
                                        profile.structures.index(c[0]), doses.index(c[1]), c[2].tier,
                                        within_tier.get(c[2].row_id, 3)))


# ============================================================================================== tables


def _dose_label(structure: str, dose: str, profile: Profile) -> str:
    percent = f"{int(dose)}%" if dose.isdigit() else dose
    return percent if len(profile.structures) == 1 else f"{structure} {percent}"


def _cell_text(cell: dict[str, Any] | None, section: str, key: str, digits: int = 3) -> str:
    if cell is None:
        return "pending"
    if cell.get("status") == "failed":
        reason = str(cell.get("reason", "")).replace("|", "/").replace("\n", " ")
        return f"failed: {reason[:MAX_REASON_CHARS]}"
    part = cell.get(section)
    if not part or part.get(key) is None:
        return "n/a"
    value = part[key]
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _cell_number(cell: dict[str, Any] | None, section: str, key: str) -> float | None:
    if not cell or cell.get("status") != "ok" or not cell.get(section):
        return None
    return _finite(cell[section].get(key))


TABLES: tuple[tuple[str, str, str, str, int], ...] = (
    # (title, section, key, which methods: picking|denoising, digits)
    ("Picking: average precision (AP)", "picking", "average_precision", "picking", 3),
    ("Picking: best F1 over cut-offs", "picking", "best_f1", "picking", 3),
    ("Picking: F1 at the tool's own cut-off (cryojoint automatic; Topaz −6 logit)", "picking", "f1_at_own",
     "picking", 3),
    ("Picking: precision at the best-F1 cut-off", "picking", "precision_at_best", "picking", 3),
    ("Picking: recall at the best-F1 cut-off", "picking", "recall_at_best", "picking", 3),
    ("Picking: fraction of picks inside carbon/contamination/gold masks (at best-F1 cut-off)", "picking",
     "picks_in_mask_at_best", "picking", 3),
    ("Picking: recall of particles < 30 px from an edge (at best-F1 cut-off)", "picking", "edge_recall_at_best",
     "picking", 3),
    ("Denoising: PSNR vs full dose (dB)", "denoising", "psnr_full_dose", "denoising", 2),
    (f"Denoising: PSNR vs low-passed full dose ({LOWPASS_REFERENCE_ANGSTROM:g} Å) (dB)", "denoising",
     "psnr_lowpass_full_dose", "denoising", 2),
    ("Denoising: PSNR vs the rest of the exposure (full dose minus this dose: noise independent of the input) "
     "(dB)", "denoising", INDEPENDENT_PSNR_KEY, "denoising", 2),
    ("Denoising: PSNR vs clean, outside masks (dB)", "denoising", "psnr_clean_outside_masks", "denoising", 2),
    ("Denoising: FRC vs clean (mean over 0.015-0.25 cycles/px)", "denoising", "frc_clean", "denoising", 3),
)
PICKING_METHODS = ("floor-blob", "topaz-picker")
DENOISING_METHODS = ("raw", "floor-lowpass", "topaz-denoise")


def _applies(spec: MethodSpec, kind: str) -> bool:
    if spec.row_id.startswith("cryojoint-"):
        return not ((kind == "picking" and "denoise-only" in spec.row_id)
                    or (kind == "denoising" and "detect-only" in spec.row_id))
    return spec.row_id in (PICKING_METHODS if kind == "picking" else DENOISING_METHODS)


def table_seeds(specs: Sequence[MethodSpec]) -> tuple[int, ...]:
    """The training seeds in the tables (over the trained rows): the full set a trained row's mean is over."""
    return tuple(sorted({spec.seed for spec in specs if spec.trains})) or (TRAIN_SEED,)


def seed_groups(specs: Sequence[MethodSpec]) -> dict[str, list[MethodSpec]]:
    """Each row id with its specs in seed order: the main spec (seed ``TRAIN_SEED``) and its replicates."""
    groups: dict[str, list[MethodSpec]] = {}
    for spec in sorted(specs, key=lambda s: s.seed):
        groups.setdefault(spec.row_id, []).append(spec)
    return groups


def seed_summary(group: Sequence[MethodSpec], cells: Mapping[str, dict[str, Any]], structure: str, dose: str,
                 section: str, key: str) -> dict[str, Any]:
    """One row's figure in one (structure, dose) column over the training seeds that finished.

    ``per_seed`` maps each finished seed (as a string, as in the JSON) to its value; ``mean``, sample ``sd``
    (ddof 1; ``None`` below two seeds) and ``n`` summarise them (``mean`` is ``None`` when none finished).
    """
    per_seed: dict[str, float] = {}
    for spec in group:
        value = _cell_number(cells.get(_cell_key(structure, dose, spec.method_id)), section, key)
        if value is not None:
            per_seed[str(spec.seed)] = value
    values = list(per_seed.values())
    return {"per_seed": per_seed, "n": len(values), "mean": float(np.mean(values)) if values else None,
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def _mean_text(group: Sequence[MethodSpec], cells: Mapping[str, dict[str, Any]], structure: str, dose: str,
               section: str, key: str, digits: int, n_seeds: int) -> str:
    """A trained row's main-table cell: the mean over the seeds that finished, ``(n=k)`` when k < n_seeds; with
    no number yet, why not (the first cell present in seed order: failed, n/a), else "pending"."""
    summary = seed_summary(group, cells, structure, dose, section, key)
    if summary["n"]:
        text = f"{summary['mean']:.{digits}f}"
        return text if summary["n"] >= n_seeds else f"{text} (n={summary['n']})"
    present = [cell for spec in group if (cell := cells.get(_cell_key(structure, dose, spec.method_id)))]
    return _cell_text(present[0], section, key, digits) if present else "pending"


def _seeds_text(seeds: Sequence[int]) -> str:
    return ", ".join(str(seed) for seed in seeds)


def build_tables(profile: Profile, specs: Sequence[MethodSpec], doses: Sequence[str],
                 cells: Mapping[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Markdown lines and report tables (rows = methods, columns = doses, as in the paper's Table 1).

    A trained row (cryojoint modes, Topaz's picker) shows the mean over its training seeds that finished in that
    column, marked ``(n=k)`` when only k of the tables' seeds did; the report table holds the mean and its
    ``by_seed`` the per-seed values, mean, sd and n of each column. Other rows show their single value.
    """
    columns = [(s, d, _dose_label(s, d, profile)) for s in profile.structures for d in doses]
    header = "| method | " + " | ".join(c[2] for c in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    seeds = table_seeds(specs)
    groups = seed_groups(specs)
    if len(seeds) > 1:
        lines = [f"Trained rows (cryojoint, Topaz's picker): **mean over training seeds {_seeds_text(seeds)}**; "
                 "`(n=k)` marks a cell where only k of them have finished (pending or failed). Rows that do not "
                 "train (floors, raw input, pretrained Topaz-Denoise): one value. Per-seed values in the JSON, "
                 "mean ± sd under \"Spread over training seeds\".", ""]
        caption = (f"trained rows: mean over the training seeds that finished (of {_seeds_text(seeds)}; "
                   "n per cell in the markdown and JSON)")
    else:
        lines = [f"Trained rows: one training seed ({seeds[0]}); `--seeds 0,1,2` trains each again and the tables "
                 "then show the mean over seeds.", ""]
        caption = f"trained rows: training seed {seeds[0]}"
    report_tables: dict[str, Any] = {}
    for title, section, key, kind, digits in TABLES:
        if kind == "denoising" and not profile.has_denoising_truth:
            continue
        rows = [spec for spec in specs if _applies(spec, kind) and not spec.is_replicate]
        lines += [f"### {title}", "", header, rule]
        report_rows: dict[str, list[float | None]] = {}
        by_seed: dict[str, list[dict[str, Any]]] = {}
        for spec in rows:
            if spec.trains:
                group = groups[spec.row_id]
                summaries = [seed_summary(group, cells, s, d, section, key) for s, d, _ in columns]
                texts = [_mean_text(group, cells, s, d, section, key, digits, len(seeds)) for s, d, _ in columns]
                report_rows[spec.label] = [summary["mean"] for summary in summaries]
                by_seed[spec.label] = summaries
            else:
                texts = [_cell_text(cells.get(_cell_key(s, d, spec.method_id)), section, key, digits)
                         for s, d, _ in columns]
                report_rows[spec.label] = [_cell_number(cells.get(_cell_key(s, d, spec.method_id)), section, key)
                                           for s, d, _ in columns]
            lines.append(f"| {spec.label} | " + " | ".join(texts) + " |")
        lines.append("")
        report_tables[title] = {"columns": [c[2] for c in columns], "rows": report_rows,
                                "caption": f"{title}; {caption}", "by_seed": by_seed}
    return lines, report_tables


#: (title, section, key, digits) of the figures whose spread over training seeds is tabulated.
SPREAD_FIGURES: tuple[tuple[str, str, str, int], ...] = (
    ("AP", "picking", "average_precision", 3),
    ("best F1", "picking", "best_f1", 3),
    ("PSNR vs full dose (dB)", "denoising", "psnr_full_dose", 2),
    ("PSNR vs the rest of the exposure (dB)", "denoising", INDEPENDENT_PSNR_KEY, 2),
    ("FRC vs clean", "denoising", "frc_clean", 3),
)


def spread_lines(profile: Profile, specs: Sequence[MethodSpec], doses: Sequence[str],
                 cells: Mapping[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Mean ± sample standard deviation over the training seeds that finished, per row with replicates."""
    replicated = {row: group for row, group in seed_groups([s for s in specs if s.trains]).items()
                  if any(g.is_replicate for g in group)}
    if not replicated:
        return [], {}
    columns = [(s, d, _dose_label(s, d, profile)) for s in profile.structures for d in doses]
    lines = [f"Trained rows with training seeds {_seeds_text(table_seeds(specs))}, same data and budget (the main "
             "tables show the mean). Cells: mean ± sample sd (n seeds finished); a single value when only one "
             "finished.", ""]
    tables: dict[str, Any] = {}
    for title, section, key, digits in SPREAD_FIGURES:
        rows = {row: group for row, group in replicated.items()
                if _applies(group[0], "picking" if section == "picking" else "denoising")}
        if not rows:
            continue
        lines += [f"### {title} over seeds", "", "| method | " + " | ".join(c[2] for c in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        table_rows: dict[str, list[float | None]] = {}
        for group in rows.values():
            texts, means = [], []
            for s, d, _ in columns:
                summary = seed_summary(group, cells, s, d, section, key)
                means.append(summary["mean"])
                if not summary["n"]:
                    texts.append("pending")
                elif summary["n"] == 1:
                    texts.append(f"{summary['mean']:.{digits}f} (1)")
                else:
                    texts.append(f"{summary['mean']:.{digits}f} ± {summary['sd']:.{digits}f} ({summary['n']})")
            label = next(g.label for g in group if not g.is_replicate)
            lines.append(f"| {label} | " + " | ".join(texts) + " |")
            table_rows[label] = means
        lines.append("")
        tables[f"{title}, mean over seeds"] = {"columns": [c[2] for c in columns], "rows": table_rows,
                                               "caption": f"{title}: mean over training seeds"}
    return lines, tables


def _fmt(value: Any, digits: int = 1) -> str:
    number = _finite(value)
    return "-" if number is None else f"{number:.{digits}f}"


def cost_lines(profile: Profile, specs: Sequence[MethodSpec], doses: Sequence[str],
               cells: Mapping[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Training and inference cost per method and dose: wall-clock, steps, peak RSS."""
    lines = ["| method | dose | train s | steps (best) | early stop | train peak RSS MB | infer s/mic "
             "(steady / incl. start-up) | infer peak RSS MB | training curve |",
             "|---|---|---:|---|---|---:|---|---:|---|"]
    report_rows: dict[str, dict[str, Any]] = {}
    for s in profile.structures:
        for d in doses:
            for spec in specs:
                cell = cells.get(_cell_key(s, d, spec.method_id))
                if not cell or cell.get("status") != "ok":
                    continue
                cost = cell.get("cost") or {}
                if not cost:
                    continue
                curve = cell.get("curve") or []
                if spec.row_id == "topaz-picker":
                    auprcs = ", ".join(_fmt(r.get("test_auprc"), 3) for r in curve)
                    curve_text = f"Topaz-printed pixel AUPRC on 1 test mic/epoch: {auprcs}"
                elif curve:
                    curve_text = "val AP: " + ", ".join(f"{int(r['step'])}:{_fmt(r.get('validation_ap'), 2)}"
                                                        for r in curve if r.get("step") is not None)
                else:
                    curve_text = ""
                steps = cost.get("steps_done")
                steps_text = "-" if steps is None else f"{steps} ({cost.get('best_step') or '-'})"
                label = _dose_label(s, d, profile)
                lines.append(
                    f"| {spec.label} | {label} | {_fmt(cost.get('train_seconds'), 0)} | {steps_text} | "
                    f"{cost.get('stopped_early', '-')} | {_fmt(cost.get('train_peak_rss_mb'), 0)} | "
                    f"{_fmt(cost.get('infer_seconds_per_micrograph'), 2)} / "
                    f"{_fmt(cost.get('infer_seconds_per_micrograph_with_startup'), 2)} | "
                    f"{_fmt(cost.get('infer_peak_rss_mb'), 0)} | {curve_text} |")
                report_rows[f"{spec.label} @ {label}"] = {
                    "train s": _finite(cost.get("train_seconds")), "steps": steps,
                    "train peak RSS MB": _finite(cost.get("train_peak_rss_mb")),
                    "infer s/micrograph": _finite(cost.get("infer_seconds_per_micrograph")),
                    "infer peak RSS MB": _finite(cost.get("infer_peak_rss_mb"))}
    table = {"columns": ["train s", "steps", "train peak RSS MB", "infer s/micrograph", "infer peak RSS MB"],
             "rows": report_rows, "caption": "Time and memory (2-core CPU box; other jobs may share it)"}
    return lines, table


def machine_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
    try:
        from cryojoint import __version__

        facts["cryojoint"] = __version__
    except ImportError:
        pass
    try:
        from benchmarks.peers.topaz import installed_versions

        facts["topaz_env"] = installed_versions()
    except Exception:  # noqa: BLE001 - facts are best effort
        pass
    return facts


def code_version() -> str | None:
    """``git describe --always --dirty`` of this checkout: cached cells outlive code changes, so each says which
    code computed it."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def code_lines(specs: Sequence[MethodSpec], cells: Mapping[str, dict[str, Any]]) -> list[str]:
    """Which code version computed which cells (cells computed before versions were recorded say so)."""
    by_version: dict[str, list[str]] = {}
    for key, cell in cells.items():
        by_version.setdefault(cell.get("code") or "not recorded (before 2026-11-27)", []).append(key)
    if not by_version:
        return []
    lines = ["| code (git describe) | cells |", "|---|---|"]
    for version, keys in sorted(by_version.items()):
        lines.append(f"| {version} | {len(keys)}: {', '.join(sorted(k.split('/', 1)[1] for k in keys))} |")
    return [*lines, ""]


def _cell_key(structure: str, dose: str, method_id: str) -> str:
    return f"{structure}/{dose}/{method_id}"


NOTES = (
    "Match radius = the TRUE particle radius for every method. AP and best F1 sweep each method's full "
    "ranking (Topaz extracted with -t -20, cryojoint's candidates = every NMS peak, the blob picker every "
    "LoG peak), so best F1 is the fairest picking comparison; F1 at the tool's own cut-off shows what a user "
    "gets by default.",
    "Particle diameter and expected count are ESTIMATED from the partial labels (cryojoint's estimators) for "
    "cryojoint, Topaz and the blob picker alike; Topaz gets the expected count read from our joint model's "
    "meta at the same dose, and the particle radius from the same label-based estimate.",
    "Topaz: resnet8, --no-pretrained (trained from scratch on the same partial labels) unless the profile "
    "says otherwise; class prior passed with --pi corrected for Topaz 0.3.20's 3D pixel count "
    "(benchmarks/peers/README.md); its budget is at least our joint model's wall-clock at the same dose; "
    "the last epoch is scored; one test micrograph is passed as --test-images only to log its AUPRC curve.",
    "Topaz-Denoise: the shipped pretrained unet (unet_L2_v0.2.2), no training on our data.",
    "Gaussian low-pass floor: sigma chosen for the best PSNR vs full dose ON THE TEST SET (an oracle-tuned "
    "floor: as strong as any Gaussian blur can be).",
    f"PSNR vs low-passed full dose uses a Gaussian low-pass with half amplitude at {LOWPASS_REFERENCE_ANGSTROM:g} Å. "
    "PSNR after a least-squares affine fit to the reference (cryojoint.evaluation.psnr). FRC vs clean cannot "
    "be raised by any linear radial filter.",
)


def write_outputs(profile: Profile, specs: Sequence[MethodSpec], doses: Sequence[str],
                  cells: Mapping[str, dict[str, Any]], out_dir: Path, stem: str, run_facts: dict[str, Any],
                  write_html: bool = True, total: int | None = None) -> dict[str, Path]:
    """Rewrite ``<stem>.md``, ``<stem>.json`` and ``<stem>/benchmark.json`` (+ report.html) from the cells."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table_lines, report_tables = build_tables(profile, specs, doses, cells)
    time_lines, time_table = cost_lines(profile, specs, doses, cells)
    seed_lines, seed_tables = spread_lines(profile, specs, doses, cells)
    done = sum(1 for c in cells.values() if c.get("status") == "ok")
    failed = {k: c.get("reason") for k, c in cells.items() if c.get("status") == "failed"}
    total = total if total is not None else len(profile.structures) * len(doses) * len(specs)
    settings_rows = []
    for key, facts in sorted(run_facts.get("doses", {}).items()):
        settings_rows.append(f"| {key} | {_fmt(facts.get('true_diameter_px'))} | "
                             f"{_fmt(facts.get('estimated_diameter_px'))} | "
                             f"{_fmt(facts.get('estimated_expected_particles'), 0)} | "
                             f"{_fmt(facts.get('true_particles_per_micrograph'), 0)} | {facts.get('polarity', '-')} | "
                             f"{facts.get('n_labels', '-')} |")
    md = [
        f"# cryojoint vs Topaz — profile `{profile.name}` ({run_facts['date']})", "",
        f"{profile.description}.", "",
        f"Cells finished: {done} of {total}" + (f"; failed: {len(failed)}" if failed else "")
        + (" (partial results: the run is still going or was stopped)" if done + len(failed) < total else ""),
        "", "Command: `" + run_facts["command"] + "`", "",
        "## Picking and denoising (rows = methods, columns = dose fraction; test micrographs only)", "",
        *table_lines,
        *(["## Spread over training seeds", "", *seed_lines] if seed_lines else []),
        "## Time and memory", "",
        "Wall-clock seconds and peak RSS of each step in its own process (cryojoint: `benchmarks/_measure.py`; "
        "Topaz: GNU time of the Topaz process). Steady-state inference excludes model loading and start-up.", "",
        *time_lines, "",
        "## Code that computed each cell", "", *code_lines(specs, cells),
        "## Label-derived settings (what every tool was given)", "",
        "| structure/dose | true diameter px | estimated diameter px | estimated particles/mic | true particles/mic "
        "(test) | polarity | labels |", "|---|---:|---:|---:|---:|---|---:|", *settings_rows, "",
        "## Notes", "", *[f"- {n}" for n in NOTES], "",
        "## Machine and settings", "", "```json",
        json.dumps({"machine": run_facts["machine"], "profile": _profile_dict(profile),
                    "doses": list(doses)}, indent=1, default=str), "```", "",
    ]
    if failed:
        md += ["## Failures", "", *[f"- `{k}`: {v}" for k, v in failed.items()], ""]
    md_path = out_dir / f"{stem}.md"
    md_path.write_text("\n".join(md))
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps({"profile": _profile_dict(profile), "doses": list(doses),
                                     "run": run_facts, "cells": dict(cells),
                                     "tables": {**report_tables, **seed_tables},
                                     "time_memory": time_table}, indent=1, default=str))
    report_dir = out_dir / stem
    report_dir.mkdir(parents=True, exist_ok=True)
    curves: dict[str, Any] = {}
    several_seeds = len(table_seeds(specs)) > 1  # then a trained row's curve is its seed-0 run, not the mean
    for s in profile.structures:
        for d in doses:
            for spec in specs:
                cell = cells.get(_cell_key(s, d, spec.method_id))
                picking = (cell or {}).get("picking") if (cell or {}).get("status") == "ok" else None
                if picking and picking.get("curve") and not spec.is_replicate:
                    name = f"{spec.label}, seed {spec.seed}" if several_seeds and spec.trains else spec.label
                    curves.setdefault(_dose_label(s, d, profile), {})[name] = {
                        **picking["curve"], "average_precision": picking.get("average_precision")}
    benchmark = {"title": f"cryojoint vs Topaz — {profile.name} ({run_facts['date']})",
                 "tables": {**report_tables, "Time and memory": time_table}, "pr_curves": curves,
                 "notes": [*NOTES, *(f"failed {k}: {v}" for k, v in failed.items())]}
    (report_dir / "benchmark.json").write_text(json.dumps(benchmark, indent=1, default=str))
    paths = {"markdown": md_path, "json": json_path, "benchmark_json": report_dir / "benchmark.json"}
    if write_html:
        try:
            from cryojoint.report import write_report

            paths["html"] = write_report(report_dir)
        except Exception as err:  # noqa: BLE001 - the tables matter more than the page
            (report_dir / "report_error.txt").write_text(f"{type(err).__name__}: {err}\n")
    return paths


def _profile_dict(profile: Profile) -> dict[str, Any]:
    values = dataclasses.asdict(profile)
    values["methods"] = [m.method_id for m in profile.methods]
    return values


# ============================================================================================== driver


def run_benchmark(
    profile_name: str = "quick",
    out_dir: Path = DEFAULT_RESULTS,
    cache_dir: Path = DEFAULT_CACHE,
    skip_topaz: bool = False,
    doses: Sequence[str] | None = None,
    force: bool = False,
    write_html: bool = True,
    log: Callable[[str], None] | None = None,
    seeds: Sequence[int] | None = None,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a benchmark profile and write its tables; returns the output paths and the cells.

    Parameters
    ----------
    profile_name
        A key of :data:`PROFILES`.
    out_dir, cache_dir
        Where the tables go, and where datasets, model runs and finished cells are kept between runs.
    skip_topaz
        Leave Topaz out (``quick`` and ``tiny`` also leave it out when its venv is absent; never installed).
    doses
        Dose keys ("010", "020", "060") whose cells are computed; default: the profile's. The tables also show
        the profile's other doses when the cache holds cells for them.
    force
        Recompute finished cells.
    seeds
        Training seeds of every trained row (cryojoint modes, Topaz's picker) at the doses computed, in place of
        the profile's ``seeds`` (``None`` or empty: the profile's). Seed ``TRAIN_SEED`` is always among them
        (added when absent) and is computed first; the others run after every seed-0 cell. So ``[0]`` is a
        single-seed run and ``[1, 2]`` is seeds 0, 1, 2. Replicates already cached are shown whatever is asked.
        Trained rows show the mean over their finished seeds; a "Spread over training seeds" section gives
        mean ± sample sd.
    only
        Row ids (as in the cache's file names, e.g. ``cryojoint-joint-default``, ``topaz-picker``) whose cells
        are computed, replicates included; other rows are shown from the cache but not run.
    """
    log = log or (lambda text: print(text, flush=True))
    profile = PROFILES[profile_name]
    doses = tuple(doses or profile.doses)
    unknown = [d for d in doses if d not in profile.doses]
    if unknown:
        raise SystemExit(f"unknown dose {unknown[0]!r} for profile {profile.name}; choose from "
                         f"{', '.join(profile.doses)}")
    run_seeds = resolve_seeds(profile, seeds)
    from benchmarks.peers.topaz import topaz_env_installed

    if not skip_topaz and profile.name in ("quick", "tiny") and not topaz_env_installed():
        log("Topaz venv absent: skipping Topaz (the quick profiles never install it)")
        skip_topaz = True
    work_root = Path(cache_dir) / profile.name
    cells_dir = work_root / "cells"
    specs = [s for s in method_specs(profile) if not (skip_topaz and s.needs_topaz)]
    # Replicates already in the cache stay in the tables when a later run does not ask for their seeds.
    cached_seeds = {int(match.group(1)) for path in cells_dir.glob("*/*/*.json")
                    if (match := re.search(r"-seed(\d+)$", path.stem))}
    specs += seed_replicates(specs, sorted({*run_seeds, *cached_seeds}))
    if only is not None:
        known = sorted({s.row_id for s in specs})
        unknown_rows = [row for row in only if row not in known]
        if unknown_rows:
            raise SystemExit(f"unknown row {unknown_rows[0]!r} in --only; choose from {', '.join(known)}")
    today = dt.date.today().isoformat()
    stem = f"{today}-{profile.name}"
    run_facts: dict[str, Any] = {"date": today, "started": dt.datetime.now().isoformat(timespec="seconds"),
                                 "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) or "run_benchmark()",
                                 "machine": machine_facts(), "skip_topaz": skip_topaz, "seeds": list(run_seeds),
                                 "doses": {}}
    cells: dict[str, dict[str, Any]] = {}
    for structure in profile.structures:
        for dose in profile.doses:  # every dose: the tables show cached cells of doses not computed now
            for spec in specs:
                path = cells_dir / structure / dose / f"{spec.method_id}.json"
                if path.exists() and not force:
                    cell = json.loads(path.read_text())
                    if cell.get("status") == "ok":
                        cells[_cell_key(structure, dose, spec.method_id)] = cell
    data_dirs = {s: ensure_dataset(s, profile, Path(cache_dir), log) for s in profile.structures}
    dose_data = {(s, d): load_dose_data(data_dirs[s], d, profile) for s in profile.structures for d in doses}
    for (s, d), data in dose_data.items():
        facts: dict[str, Any] = {"true_diameter_px": data.true_diameter_px, "n_labels": len(data.train_labels),
                                 "true_particles_per_micrograph": len(data.test_truth) / len(data.test_names)}
        try:
            estimates = data.label_estimates()
            facts.update({"estimated_diameter_px": estimates["particle_diameter_px"],
                          "estimated_expected_particles": estimates["expected_particles"],
                          "polarity": estimates["polarity"]})
        except Exception as err:  # noqa: BLE001 - the cells that need it will fail with the reason
            facts["estimate_error"] = f"{type(err).__name__}: {err}"
        run_facts["doses"][f"{s}/{d}"] = facts

    for (s, d), data in dose_data.items():  # cached cells scored before a metric was added get it now
        for spec in specs:
            key = _cell_key(s, d, spec.method_id)
            if key in cells and refresh_denoising_scores(cells[key], data, work_root / "work" / s / d / spec.method_id):
                (cells_dir / s / d / f"{spec.method_id}.json").write_text(json.dumps(cells[key], indent=1, default=str))
                log(f"{key}: denoising scored again from its saved micrographs (new metric)")

    plan = [(s, d, spec) for s, d, spec in _run_order(profile, specs, doses)
            if (only is None or spec.row_id in only) and (not spec.is_replicate or spec.seed in run_seeds)]
    planned = {_cell_key(s, d, spec.method_id) for s, d, spec in plan}
    table_doses = tuple(d for d in profile.doses
                        if d in doses or any(key.split("/")[1] == d for key in cells))
    present = {key.rsplit("/", 1)[1] for key in (*planned, *cells)}  # method ids planned or cached
    shown_specs = [spec for spec in specs if not spec.is_replicate or spec.method_id in present]
    total = len({*planned, *cells, *(_cell_key(s, d, spec.method_id) for s in profile.structures
                                     for d in table_doses for spec in shown_specs if not spec.is_replicate)})

    def flush() -> dict[str, Path]:
        run_facts["machine"]["load_average_now"] = list(os.getloadavg())
        return write_outputs(profile, shown_specs, table_doses, cells, Path(out_dir), stem, run_facts, write_html,
                             total)

    paths = flush()
    for structure, dose, spec in plan:
        key = _cell_key(structure, dose, spec.method_id)
        if key in cells:
            continue
        work = work_root / "work" / structure / dose / spec.method_id
        joint = cells.get(_cell_key(structure, dose, "cryojoint-joint-default"))
        log(f"[{dt.datetime.now():%H:%M:%S}] {key} ...")
        started = time.perf_counter()
        code = code_version()  # before the cell: its subprocesses import the checkout as it is now
        try:
            record = spec.run(dose_data[(structure, dose)], profile, work, joint, log)
            record["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - one failing cell must not stop the benchmark
            record = {"status": "failed", "reason": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc()}
        record["cell_seconds"] = time.perf_counter() - started
        record["code"] = code
        cells[key] = record
        path = cells_dir / structure / dose / f"{spec.method_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, default=str))
        summary = record.get("reason") if record["status"] == "failed" else ", ".join(
            f"{k}={v:.3f}" for k, v in [("AP", (record.get("picking") or {}).get("average_precision")),
                                        ("bestF1", (record.get("picking") or {}).get("best_f1")),
                                        ("PSNRclean", (record.get("denoising") or {}).get("psnr_clean_outside_masks")),
                                        ("FRC", (record.get("denoising") or {}).get("frc_clean"))]
            if isinstance(v, (int, float)))
        log(f"[{dt.datetime.now():%H:%M:%S}] {key}: {record['status']} in {record['cell_seconds']:.0f} s  {summary}")
        paths = flush()
    run_facts["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    paths = flush()
    log(f"tables: {paths['markdown']}")
    return {"paths": paths, "cells": cells, "profile": profile, "specs": shown_specs, "doses": table_doses}


def resolve_seeds(profile: Profile, seeds: Sequence[int] | None) -> tuple[int, ...]:
    """The training seeds a run computes: ``seeds`` if given (non-empty), else the profile's; always with
    ``TRAIN_SEED`` (every row's reference run, which Topaz's budget and the seed-0-first order rely on)."""
    chosen = tuple(seeds) if seeds else profile.seeds
    negative = [seed for seed in chosen if seed < 0]
    if negative:
        raise SystemExit(f"seed {negative[0]} is negative; give seeds as 0,1,2")
    return tuple(sorted({TRAIN_SEED, *chosen}))


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python benchmarks/run.py --profile quick --skip-topaz")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None, help="default: quick")
    parser.add_argument("--quick", action="store_true", help="the CI-size run: same as --profile quick")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="folder for the tables")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="datasets, runs and finished cells")
    parser.add_argument("--skip-topaz", action="store_true", help="leave Topaz out")
    parser.add_argument("--doses", default=None, help="comma-separated dose keys, e.g. 010,020,060")
    parser.add_argument("--force", action="store_true", help="recompute finished cells")
    parser.add_argument("--no-html", action="store_true", help="do not render report.html")
    parser.add_argument("--seeds", default="", help="training seeds of every trained row, in place of the "
                        "profile's (standard, full: 0,1,2; tiny, quick: 0); seed 0 is always added, so '0' = one "
                        "seed and '1,2' = seeds 0,1,2. Tables show the mean over seeds and a mean ± sd section")
    parser.add_argument("--only", default=None, help="comma-separated row ids to compute, e.g. "
                        "cryojoint-joint-default,topaz-picker (others are shown from the cache)")
    args = parser.parse_args(argv)
    doses = [d.strip() for d in args.doses.split(",")] if args.doses else None
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give whole numbers separated by commas, e.g. 1,2")
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    if args.quick and args.profile not in (None, "quick"):
        parser.error(f"--quick and --profile {args.profile} name different profiles; give one")
    args.profile = args.profile or "quick"
    # `kill` (SIGTERM) then unwinds like Ctrl-C: subprocess.run kills the training child on the way out.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    run_benchmark(args.profile, args.out, args.cache, args.skip_topaz, doses, args.force, not args.no_html,
                  seeds=seeds or None, only=only)


if __name__ == "__main__":
    main()
