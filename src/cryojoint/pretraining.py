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
import json
import platform
import shlex
import subprocess
import time
from pathlib import Path

from cryojoint._atomic import atomic_path
from cryojoint.checkpoint import MODEL_NAME
from cryojoint.config import GENERAL_PARTICLE_PX, default_config
from cryojoint.contrast import AS_RECORDED
from cryojoint.corpus import (  # the corpus's names, where pretraining's users have always found them
    CORPUS_SEED_BASE,
    REHEARSAL_CORPUS,
    Corpus,
    CorpusConfig,
    build_corpus,
    corpus_seed,
    pretraining_config,
    real_corpus_micrographs,
)
from cryojoint.errors import UserInputError

__all__ = ["CORPUS_SEED_BASE", "REHEARSAL_CORPUS", "Corpus", "CorpusConfig", "adapt_denoiser", "build_corpus",
           "corpus_seed", "git_revision", "pretrain", "pretrain_command_line", "pretraining_config",
           "real_corpus_micrographs"]


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


#: What an adaptation was asked to do, written beside its model when it finishes: the same request reuses it.
ADAPTATION_RECORD = "adaptation.json"


def adaptation_request(micrographs: list[str | Path], steps: int, model: str, particle_diameter_px: float | None,
                       downsample: float | None, seed: int, particle_contrast: str | None) -> dict:
    """The arguments of :func:`adapt_denoiser` as a record (micrographs by name)."""
    from cryojoint.io.mrc import micrograph_name

    return {"model": str(model), "steps": int(steps), "seed": int(seed),
            "particle_diameter_px": None if particle_diameter_px is None else float(particle_diameter_px),
            "downsample": None if downsample is None else float(downsample), "particle_contrast": particle_contrast,
            "micrographs": sorted(micrograph_name(p) for p in micrographs)}


def finished_adaptation(out: str | Path, request: dict) -> Path | None:
    """``out/model.pt`` when an adaptation asked the same finished there (a rerun of a ``denoise`` stopped while
    denoising goes on with those weights), else ``None``."""
    out = Path(out)
    try:
        earlier = json.loads((out / ADAPTATION_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return out / MODEL_NAME if earlier == request and (out / MODEL_NAME).is_file() else None


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
    request = adaptation_request(micrographs, steps, model, particle_diameter_px, downsample, seed, particle_contrast)
    done = None if overwrite else finished_adaptation(out, request)
    if done is not None:
        return done
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
    (Path(out) / ADAPTATION_RECORD).unlink(missing_ok=True)  # written again only when this adaptation finishes
    result = train(micrographs, empty_table(), out, config, overwrite=overwrite, progress=progress,
                   command_line=f"cryojoint denoise --adapt-steps {steps}")
    with atomic_path(Path(out) / ADAPTATION_RECORD, overwrite=True) as tmp:
        tmp.write_text(json.dumps(request, indent=2))
    return result.model_path
