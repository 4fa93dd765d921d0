"""The data of a benchmark run: simulated once per profile and cached, or real micrographs prepared once.

:func:`ensure_dataset` makes (or finds) a structure's folder under ``<cache>/data``; :func:`load_dose_data`
reads one dose of it back as a :class:`DoseData`: the inputs, the partial labels and the truth for scoring.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from benchmarks.suite.profiles import Profile

from cryojoint.baselines import choose_polarity
from cryojoint.config import DataConfig
from cryojoint.data import estimate_expected_particles
from cryojoint.imaging import normalise
from cryojoint.io.coords import write_coordinates
from cryojoint.io.mrc import read_micrograph, write_mrc
from cryojoint.picking import estimate_particle_diameter
from cryojoint.simulation import SIMULATOR_VERSION, SimulationConfig, simulate, write_dataset

DATASET_SEED = 0
REFERENCE_DOSE = "dose_100"


@dataclass
class DoseData:
    """Everything one (structure, dose) cell needs: inputs, partial labels, and the truth for scoring.

    Simulated data (:func:`load_dose_data`) and real micrographs (:func:`benchmarks.real_bgal.load_prepared`)
    alike; the real ones have only their micrographs, no clean, full-dose or mask images.
    """

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
    #: Denoising is scored on every image binned by this factor (1: at full size), so that rows whose network runs
    #: binned and rows at full size are measured at one scale.
    denoising_bin: int = 1
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
    """Folder name of a profile's simulated data: changes whenever the micrographs would (every simulation
    parameter, defaults included, and the simulator's version), so a cache never serves stale data."""
    n_total = profile.n_train + profile.n_test
    config = _simulation_config(structure, profile).to_dict()
    settings = json.dumps(config, sort_keys=True, default=list)
    mapped = "" if profile.intensity_map is None else f"|{list(profile.intensity_map)}"
    digest = hashlib.sha1(f"{structure}|v{SIMULATOR_VERSION}|{settings}{mapped}".encode()).hexdigest()
    return f"{structure}-{profile.size_px}px-{n_total}mic-seed{DATASET_SEED}-{digest[:8]}"


def _simulation_config(structure: str, profile: Profile) -> SimulationConfig:
    return SimulationConfig.for_preset(structure, seed=DATASET_SEED, n_micrographs=profile.n_train + profile.n_test,
                                       size_px=(profile.size_px, profile.size_px), **profile.simulation_changes)


def ensure_dataset(structure: str, profile: Profile, cache_dir: Path, log: Callable[[str], None]) -> Path:
    """Simulate once per (structure, size, count, seed, overrides) and cache; returns the data folder.

    Real data is prepared once from its source instead (:func:`benchmarks.real_bgal.prepare`), ASPIRE's micrographs
    once by ASPIRE (:func:`benchmarks.aspire_sim.prepare`, the same layout as ours)."""
    if profile.dataset == "aspire":
        from benchmarks.aspire_sim import AspireError
        from benchmarks.aspire_sim import prepare as prepare_aspire

        try:
            return prepare_aspire(cache_dir, profile, log=log)
        except AspireError as err:
            raise SystemExit(f"error: {err}") from None
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
    config = _simulation_config(structure, profile)
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

        return load_prepared(data_dir, structure=profile.structures[0], dose=dose)
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
        denoising_bin=profile.denoising_bin if profile is not None else 1,
    )
