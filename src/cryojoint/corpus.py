"""The simulated corpus at the general model's scale: what pretraining learns from and fine-tuning may rehearse.

Micrographs of every shipped structure at drawn pixel sizes and doses, binned so that their particle measures what the
general model works at (``config.GENERAL_PARTICLE_PX``; smaller ones stay at their own size), with complete labels
from the simulation's truth, and real micrographs for the denoiser alone (:mod:`cryojoint.pretraining` says why).
Seeds start at :data:`CORPUS_SEED_BASE`, the benchmark's at 0 (a test keeps them disjoint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryojoint.config import GENERAL_PARTICLE_PX, CryojointConfig, default_config
from cryojoint.contrast import AS_RECORDED
from cryojoint.data import check_unique_names, network_factor
from cryojoint.errors import UserInputError
from cryojoint.imaging import bin_image, to_binned_coordinates
from cryojoint.io.mrc import Micrograph, micrograph_name, read_micrograph

#: Root of the corpus's simulation seeds; the benchmark simulates from seed 0 (a test keeps them disjoint).
CORPUS_SEED_BASE = 1_000_000


@dataclass
class CorpusConfig:
    """What the pretraining corpus holds (units in the names; px are the simulated micrograph's)."""

    structures: tuple[str, ...] = ("barrel", "dengue-e", "glua3-ntd", "ribosome", "ruvb")
    pixel_sizes_per_structure: int = 4  # simulations per structure, each at its own pixel size
    micrographs_per_simulation: int = 3
    size_px: int = 1024
    # The particle's diameter as simulated, drawn log-uniformly; the pixel size follows from the structure's
    # size. Above GENERAL_PARTICLE_PX the micrograph is binned to it (about half the draws), below it stays.
    particle_diameter_range_px: tuple[float, float] = (18.0, 90.0)
    # Share of the field's area the particles cover, drawn log-uniformly per simulation (the count follows from it
    # and the particle's size), e.g. (0.03, 0.4): sparse to packed, touching fields like real beta-galactosidase's
    # (~0.38). None: each preset's own count per 1024² field (what the shipped model learned from). Tried in session
    # 15 (benchmarks/README.md): zero-shot real-bgal 0.731 -> 0.749, but standard 10 % 0.835 -> 0.785 and second
    # 60 % 0.724 -> 0.528; not shipped.
    particle_area_fraction_range: tuple[float, float] | None = None
    # Each micrograph enters at one dose drawn from these (fractions of the full exposure); the simulator makes
    # them from the same scene, so one scene at two doses would be two views of the same particles.
    dose_fractions: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 1.0)
    seed: int = 0  # offset within the corpus's seed range (CORPUS_SEED_BASE + seed)
    # Real micrographs (MRC paths) for the denoiser: nothing is known of their particles, so the detector is not
    # scored on them. Each enters once per pixel size below (Å/px, integer block bins of its header's pixel size:
    # block means keep the pixel noise independent). Particles of 100-300 Å at the general scale's 36 px put a
    # user's micrographs at about 3-8 Å/px.
    real_micrographs: tuple[str, ...] = ()
    real_pixel_sizes_angstrom: tuple[float, ...] = (3.0, 6.0)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


#: What fine-tuning rehearses (``train.rehearsal_weight``): one 512² field per shipped structure at a pixel size of
#: its own, drawn as the pretraining corpus is but from another offset of its seed range (none of the shipped
#: model's draws, none of the benchmark's); ~12 s to simulate on 2 CPU cores.
REHEARSAL_CORPUS = CorpusConfig(pixel_sizes_per_structure=1, micrographs_per_simulation=1, size_px=512, seed=7)


@dataclass
class Corpus:
    """Micrographs at network scale with complete labels, and how each was made."""

    micrographs: list[Micrograph]
    labels: pd.DataFrame  # micrograph, x, y (network px)
    manifest: list[dict[str, Any]] = field(default_factory=list)

    @property
    def simulated(self) -> list[dict[str, Any]]:
        """Manifest entries of the simulated micrographs (complete labels, known particle size)."""
        return [entry for entry in self.manifest if entry.get("source", "simulated") == "simulated"]

    @property
    def denoiser_only(self) -> list[str]:
        """Names of the micrographs the detection loss does not score (the real ones)."""
        return [entry["micrograph"] for entry in self.manifest if entry.get("source", "simulated") != "simulated"]

    @property
    def particle_diameters_px(self) -> np.ndarray:
        return np.array([entry["network_particle_px"] for entry in self.simulated])


def corpus_seed(config: CorpusConfig) -> int:
    return CORPUS_SEED_BASE + int(config.seed)


def build_corpus(config: CorpusConfig | None = None, progress: bool = True) -> Corpus:
    """Simulate the corpus (deterministic in ``config``) and bring every micrograph to the general model's scale."""
    from cryojoint.progress import counted_progress
    from cryojoint.simulation import REFERENCE_FIELD_PX, SimulationConfig, list_presets, load_structure, simulate

    config = config or CorpusConfig()
    unknown = sorted(set(config.structures) - set(list_presets()))
    if unknown:
        raise UserInputError(None, f"unknown structure(s) {', '.join(unknown)} (known: {', '.join(list_presets())})")
    real_micrographs, real_manifest = real_corpus_micrographs(config)  # read first: a bad file fails at once
    rng = np.random.default_rng(corpus_seed(config))
    low, high = (math.log(v) for v in config.particle_diameter_range_px)
    diameters = {name: float(load_structure(name)[2]["diameter_angstrom"]) for name in config.structures}
    jobs = [(structure, diameters[structure] / float(math.exp(rng.uniform(low, high))), int(rng.integers(2**31)))
            for structure in config.structures for _ in range(config.pixel_sizes_per_structure)]
    # Drawn after the jobs so that each simulation keeps its pixel size and seed whether packing is drawn or not.
    area_fractions: list[float | None] = [None] * len(jobs)
    if config.particle_area_fraction_range is not None:
        fraction_low, fraction_high = (math.log(v) for v in config.particle_area_fraction_range)
        area_fractions = [float(math.exp(rng.uniform(fraction_low, fraction_high))) for _ in jobs]
    micrographs: list[Micrograph] = []
    tables: list[pd.DataFrame] = []
    manifest: list[dict[str, Any]] = []
    with counted_progress(len(jobs), progress, "simulating the pretraining corpus") as advance:
        for (structure, pixel_size, seed), area_fraction in zip(jobs, area_fractions):
            packing = {}
            if area_fraction is not None:
                particle_area_px = math.pi * (diameters[structure] / pixel_size) ** 2 / 4
                count = max(1, round(area_fraction * REFERENCE_FIELD_PX**2 / particle_area_px))
                packing = {"particles_per_micrograph": (count, count)}
            sim_config = SimulationConfig.for_preset(
                structure, seed=corpus_seed(config) + seed, n_micrographs=config.micrographs_per_simulation,
                size_px=(config.size_px, config.size_px), pixel_size_angstrom=pixel_size,
                dose_fractions=tuple(sorted(set(config.dose_fractions) | {1.0})), label_region_px=None, **packing)
            dataset = simulate(config=sim_config)
            factor = network_factor(dataset.particle_diameter_px, GENERAL_PARTICLE_PX)
            for index, clean in enumerate(dataset.clean):
                dose = float(rng.choice(config.dose_fractions))
                source = dataset.micrographs[f"dose_{round(dose * 100):03d}"][index]
                name = f"{structure}-{pixel_size:.2f}A-{seed}-{clean.name}"
                truth = dataset.truth[dataset.truth["micrograph"] == clean.name]
                image = bin_image(source.data, factor)
                xy = to_binned_coordinates(truth[["x", "y"]].to_numpy(float), factor)
                # binning drops the last rows/columns that make no whole output pixel: so do particles centred there
                xy = xy[(xy >= 0).all(axis=1) & (xy <= np.array(image.shape[::-1]) - 1).all(axis=1)]
                micrographs.append(Micrograph(image, pixel_size * factor, name))
                tables.append(pd.DataFrame({"micrograph": name, "x": xy[:, 0], "y": xy[:, 1]}))
                manifest.append({"micrograph": name, "structure": structure, "simulation_seed": sim_config.seed,
                                 "pixel_size_angstrom": pixel_size, "dose_fraction": dose, "bin_factor": factor,
                                 "particle_area_fraction_asked": area_fraction,
                                 "network_particle_px": dataset.particle_diameter_px / factor,
                                 "particles": int(len(xy))})
            advance()
    return Corpus(micrographs + real_micrographs, pd.concat(tables, ignore_index=True), manifest + real_manifest)


def real_corpus_micrographs(config: CorpusConfig) -> tuple[list[Micrograph], list[dict[str, Any]]]:
    """``config.real_micrographs`` binned to each of ``config.real_pixel_sizes_angstrom``, and their manifest."""
    micrographs: list[Micrograph] = []
    manifest: list[dict[str, Any]] = []
    # before reading any
    check_unique_names([micrograph_name(path) for path in config.real_micrographs], config.real_micrographs)
    for path in map(Path, config.real_micrographs):
        micrograph = read_micrograph(path)
        if micrograph.pixel_size is None:
            raise UserInputError(path, "no pixel size in the header: a real micrograph joins the corpus at pixel "
                                       "sizes in Å")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        factors = sorted({max(1, round(target / micrograph.pixel_size))
                          for target in config.real_pixel_sizes_angstrom})
        for factor in factors:
            name = f"real-{micrograph.name}-bin{factor}"
            micrographs.append(Micrograph(bin_image(micrograph.data, factor), micrograph.pixel_size * factor, name))
            manifest.append({"micrograph": name, "source": "real", "file": path.name, "sha256": digest,
                             "pixel_size_angstrom": micrograph.pixel_size, "bin_factor": factor,
                             "shape_px": list(micrographs[-1].shape), "labels": "none: denoiser only"})
    return micrographs, manifest


def pretraining_config(corpus: Corpus, steps: int, seed: int = 0, threads: int | None = None) -> CryojointConfig:
    """The joint default, told what the corpus is (complete labels, known size and count), at network scale."""
    config = default_config()
    simulated = {entry["micrograph"] for entry in corpus.simulated}
    areas = np.array([m.data.size for m in corpus.micrographs if m.name in simulated], dtype=float)
    counts = np.array([entry["particles"] for entry in corpus.simulated], dtype=float)
    config.data = dataclasses.replace(
        config.data, downsample=1.0, particle_diameter_px=float(np.median(corpus.particle_diameters_px)),
        # per micrograph of the corpus's mean area (PreparedData.mean_area_px2)
        expected_particles=float(counts.sum() / areas.sum() * areas.mean()), label_completeness=1.0,
        particle_contrast=AS_RECORDED)  # simulated and raw real micrographs: dark particles, by construction
    # A fixed budget (no early stopping); ~20 validation passes: one costs as much as ~100 steps on this corpus.
    config.train = dataclasses.replace(config.train, init="scratch", steps=int(steps), seed=int(seed), threads=threads,
                                       eval_every=max(config.train.eval_every, int(steps) // 20),
                                       early_stopping_patience=10**6)
    return config
