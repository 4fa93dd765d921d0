"""Pretraining the general model: one network for every particle, trained on a broad simulated corpus.

The general model works at a fixed particle size in network pixels (``config.GENERAL_PARTICLE_PX``): a user's
micrographs are binned (fractionally when needed, :func:`cryojoint.imaging.bin_image`) so that their particle
has that diameter, and smaller particles are left at their own size (up-sampling would correlate the pixel noise
the blind-spot denoiser relies on being independent). The corpus therefore spans particles from about half that
size up to it, over every shipped structure, pixel sizes, doses, ice, carbon, gold, contamination and decoys
(simulator version 2), with complete labels from the simulation's truth. Real micrographs, when given, join it
for the denoiser (no labels needed, none assumed: the detection loss does not score them; the label-free flip
consistency still sees them), each binned to
pixel sizes a user's micrographs reach at the general scale.

Test sets stay out: the corpus is simulated from seeds at :data:`CORPUS_SEED_BASE` and above, the benchmark's
from seed 0 (``benchmarks/suite/datasets.py``), so no benchmark micrograph, nor any simulated instance of a
benchmark particle, is in it (a test checks the seeds are disjoint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import shlex
import subprocess
import time
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


def git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def pretrain_command_line(run_dir: Path, steps: int, seed: int, corpus_config: CorpusConfig) -> str:
    """The ``cryojoint pretrain`` command for this run: every command-line option that differs from its default.

    Corpus settings the command line has no option for (``size_px``, ``particle_diameter_range_px``, ...) are not
    in it; the weights' metadata keeps the whole corpus config beside it."""
    default = CorpusConfig()
    options = [f"--out {shlex.quote(str(run_dir))}", f"--steps {steps}"]
    options += [f"--seed {seed}"] if seed else []
    options += [f"--corpus-seed {corpus_config.seed}"] if corpus_config.seed != default.seed else []
    if corpus_config.pixel_sizes_per_structure != default.pixel_sizes_per_structure:
        options.append(f"--simulations-per-structure {corpus_config.pixel_sizes_per_structure}")
    if corpus_config.micrographs_per_simulation != default.micrographs_per_simulation:
        options.append(f"--micrographs-per-simulation {corpus_config.micrographs_per_simulation}")
    if tuple(corpus_config.structures) != default.structures:
        options.append(f"--structures {','.join(corpus_config.structures)}")
    options += [f"--real {shlex.quote(str(path))}" for path in corpus_config.real_micrographs]
    return " ".join(["cryojoint pretrain", *options])


def pretrain(out: str | Path, steps: int = 6000, corpus_config: CorpusConfig | None = None, seed: int = 0,
             resume: bool = False, overwrite: bool = False, threads: int | None = None,
             progress: bool = True) -> Path:
    """Build the corpus, train the joint model on it (resumable: ``resume=True``) and write ``out/general.pt``.

    Deterministic given ``corpus_config`` and ``seed``. The weights' metadata records the corpus (every
    micrograph's structure, seed, pixel size, dose and bin), steps, training time and the git revision.
    """
    from cryojoint.checkpoint import save_model
    from cryojoint.training import load_model, train

    corpus_config = corpus_config or CorpusConfig()
    run_dir = Path(out)
    started = time.perf_counter()
    corpus = build_corpus(corpus_config, progress=progress)
    config = pretraining_config(corpus, steps, seed, threads)
    manifest_path = run_dir / "corpus.json"
    if resume and manifest_path.is_file():
        # a resumed run must see the corpus it started on (simulated seeds, the same real files, byte for byte)
        recorded = json.loads(manifest_path.read_text()).get("micrographs")
        if recorded != json.loads(json.dumps(corpus.manifest)):
            raise UserInputError(manifest_path, "the corpus differs from the one this run started on (other "
                                 "structures, seeds or --real files): resume with the same options")
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps({"config": corpus_config.to_dict(), "micrographs": corpus.manifest}, indent=1))
    corpus_seconds = time.perf_counter() - started
    result = train(corpus.micrographs, corpus.labels, run_dir / "run", config, resume=resume, overwrite=overwrite,
                   progress=progress, command_line=pretrain_command_line(run_dir, steps, seed, corpus_config),
                   denoiser_only=corpus.denoiser_only)
    loaded = load_model(result.model_path)
    meta = dict(loaded.meta)
    meta.update({
        "general": True,
        "general_particle_px": GENERAL_PARTICLE_PX,
        "expected_particles": None,  # per user's micrograph: unknown without labels
        "expected_density_per_px2": None,
        "pretraining": {
            "corpus": {"config": corpus_config.to_dict(), "micrographs": len(corpus.micrographs),
                       "real_micrographs": [{k: e[k] for k in ("micrograph", "file", "sha256", "bin_factor")}
                                            for e in corpus.manifest if e.get("source") == "real"],
                       "particles": int(sum(e["particles"] for e in corpus.simulated)),
                       "network_particle_px_range": [float(corpus.particle_diameters_px.min()),
                                                     float(corpus.particle_diameters_px.max())]},
            # training_seconds runs on across resumes (the checkpoint keeps it); the two others are this invocation's
            # only (the corpus is rebuilt on every invocation).
            "steps": result.steps_done, "training_seconds": result.seconds, "corpus_seconds": corpus_seconds,
            "invocation_wall_seconds": time.perf_counter() - started, "seed": seed, "git_revision": git_revision(),
            "machine": platform.processor() or platform.machine(),
        },
    })
    return save_model(run_dir / "general.pt", loaded.network, loaded.config, meta)


def finest_learned_pixel_size(pretraining_meta: dict[str, Any]) -> float | None:
    """The finest pixel size (Å/px, at the network's scale) a general model saw micrographs at: its smallest
    structure at the corpus's largest particle in network px, or its finest real micrograph, whichever is finer.
    ``None`` when the model's metadata do not say (``meta["pretraining"]`` of :func:`pretrain`)."""
    from cryojoint.simulation import list_presets, load_structure

    corpus = pretraining_meta.get("corpus") or {}
    corpus_config = corpus.get("config") or {}
    candidates: list[float] = []
    structures = [name for name in corpus_config.get("structures", ()) if name in list_presets()]
    particle_px = corpus.get("network_particle_px_range")
    if structures and particle_px:
        smallest = min(float(load_structure(name)[2]["diameter_angstrom"]) for name in structures)
        candidates.append(smallest / float(max(particle_px)))
    if corpus.get("real_micrographs") and corpus_config.get("real_pixel_sizes_angstrom"):
        candidates.append(float(min(corpus_config["real_pixel_sizes_angstrom"])))
    return min(candidates) if candidates else None


def _contrast_as_the_model_reads(micrographs: list[str | Path], model: str, particle_diameter_px: float) -> str:
    """The particles' contrast as the shipped ``model`` reads it on ``micrographs`` told the diameter (input px),
    with the same warning `predict` gives when it reads bright."""
    import warnings

    from cryojoint.checkpoint import load_model
    from cryojoint.inference import PickingSettings, resolve_contrast

    loaded = load_model(model)
    settings = PickingSettings.resolve(loaded, particle_diameter_px=particle_diameter_px, pick=False)
    settings, note = resolve_contrast(loaded, settings, micrographs)
    if note:
        warnings.warn(note, UserWarning, stacklevel=3)
    return settings.particle_contrast


def adapt_denoiser(micrographs: list[str | Path], out: str | Path, steps: int, model: str = "general",
                   particle_diameter_px: float | None = None, downsample: float | None = None, seed: int = 0,
                   overwrite: bool = False, progress: bool = True, particle_contrast: str | None = None) -> Path:
    """Fine-tune a shipped model's denoiser on ``micrographs`` alone (self-supervised: no labels), for ``steps``
    steps; returns the adapted ``out/model.pt`` (a denoise-only model at the scale the general model would use:
    binned to its particle size when ``particle_diameter_px`` (input px) is given, else ``downsample`` or 1).
    ``particle_contrast`` as :func:`cryojoint.predict` takes it (read from the micrographs only at a known size)."""
    from cryojoint.io.coords import empty_table
    from cryojoint.training import train

    if steps < 1:
        raise UserInputError(None, f"--adapt-steps must be >= 1 (or 0: no adapting), got {steps}")
    # Filtered micrographs' spectrum is flattened beyond the particle's band (data.flatten_filtered_spectrum), so
    # only when the particle's size is known: an assumed one could cut into a smaller particle's band.
    size_known = particle_diameter_px is not None
    if particle_contrast in (None, "auto"):  # as `denoise` without adapting reads it: by the general model
        particle_contrast = _contrast_as_the_model_reads(micrographs, model, particle_diameter_px) if size_known \
            else AS_RECORDED
    if particle_diameter_px is None:  # denoise at the given bin (default none); the size sets the patch
        downsample = float(downsample or 1.0)
        particle_diameter_px = GENERAL_PARTICLE_PX * downsample
    # Otherwise training from a shipped model bins to its particle size (data.network_particle_px), as predict would.
    config = default_config()
    config.data = dataclasses.replace(config.data, particle_diameter_px=float(particle_diameter_px),
                                      downsample=downsample, expected_particles=1.0, validation_fraction=0.0,
                                      flatten_filtered_spectrum=size_known, particle_contrast=particle_contrast)
    config.train = dataclasses.replace(config.train, mode="denoise-only", init=model, steps=int(steps),
                                       seed=int(seed), eval_every=max(int(steps), 1),
                                       checkpoint_every=max(int(steps), 1))
    result = train(micrographs, empty_table(), out, config, overwrite=overwrite, progress=progress,
                   command_line=f"cryojoint denoise --adapt-steps {steps}")
    return result.model_path
