"""Micrographs from another simulator: ASPIRE's ``MicrographSimulation``, for the benchmark's ``aspire`` profile.

::

    python -m benchmarks.aspire_sim --cache benchmarks/.cache      # make (once) and print the data folder
    python benchmarks/run.py --profile aspire                      # the benchmark on it

Every other simulated figure comes from our own simulator, whose choices (contrast, ice, decoys, noise in
counts) the defaults may have come to suit. ASPIRE (GPL-3, PyPI ``aspire``) forms the image its own way: the
particle is one of its synthetic volumes (an asymmetric cluster of Gaussian blobs, not a protein model we
ship), projected at random directions, each micrograph's particles through ASPIRE's radial CTF at its own
defocus, placed by ASPIRE, plus ASPIRE's white Gaussian noise, in ASPIRE's units (mean ≈ 0, not counts).
Half of the objects are **decoys**: a second synthetic volume of the same size and blob count that ASPIRE mixes
in (each object's volume is drawn uniformly), so a blob detector cannot solve it: it ranks by size and
darkness, which the decoys share (measured: the LoG floor sits near 0.33 AP at every dose).

ASPIRE runs in its own venv (``benchmarks/.venv-aspire``, made once by :func:`ensure_aspire_env`); only
``benchmarks/peers/aspire_generate.py`` runs there, so the GPL code never enters cryojoint's process. This module
writes what it returns as the benchmark's simulated layout (``dose_<dose>/``, ``dose_100/`` as the full-dose
reference, ``clean/``, empty ``masks/``, ``truth_exact.csv``, ``labels_exact.csv``, ``benchmark_dataset.json``),
atomically, once per spec (the folder name holds a digest of the spec, ASPIRE's version and the generator).

The choices, and why:

- **Signal-to-noise**: white noise of variance ``var(clean) / SNR_FULL_DOSE`` at full dose, divided by the dose
  fraction: per-pixel SNR 0.01 at 10 % dose. Not matched to our simulator; lower than that the particles'
  shapes, which are all that tells them from the decoys, would be below anything a picker could learn from ~50
  labels.
- **Size**: a 96 px box, in which ASPIRE's blobs make a particle ≈ 72 px across (the benchmark's volume: its mean
  projection without CTF falls to 5 % of its peak 36 px from the centre, :data:`DIAMETER_PROFILE_FRACTION`),
  larger than our profiles' particles (27-52 px), so the general model bins its input 2×.
- **Labels**: as a user gives them, half of the particles inside one square of half the field's side on each
  training micrograph (:func:`benchmarks.real_bgal.partial_labels` with a larger region: the particles are fewer
  and larger than β-galactosidase's), ≈ 50 labels over the 8 training micrographs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.real_bgal import partial_labels  # noqa: E402
from benchmarks.suite.profiles import Profile  # noqa: E402

from cryojoint.io.mrc import write_mrc  # noqa: E402

ASPIRE_VERSION = "0.14.3"
DEFAULT_VENV = REPO_ROOT / "benchmarks" / ".venv-aspire"
ENV_MARKER_NAME = "cryojoint-aspire-env.json"
GENERATOR = REPO_ROOT / "benchmarks" / "peers" / "aspire_generate.py"
STRUCTURE = "aspire-blobs"
REFERENCE_DOSE = "100"
#: Per-pixel signal-to-noise at full dose (signal: the clean micrograph's variance); at dose fraction f, f times it.
SNR_FULL_DOSE = 0.1
#: The particle's diameter: where its mean projection (no CTF) falls to this fraction of its peak, times two.
DIAMETER_PROFILE_FRACTION = 0.05
#: Labels: a square of this fraction of the field's side, half of the particles inside it (``partial_labels``).
LABEL_REGION_FRACTION = 0.5
LABEL_SEED = 0


@dataclass(frozen=True)
class AspireSpec:
    """What ASPIRE is asked for (units in the names). ``benchmarks/peers/aspire_generate.py`` reads these keys."""

    n_micrographs: int
    size_px: int
    doses: tuple[str, ...]
    seed: int = 0
    box_px: int = 96
    gaussian_blobs: int = 64
    decoy_volumes: int = 1
    pixel_size_angstrom: float = 4.0
    defocus_range_angstrom: tuple[float, float] = (10_000.0, 25_000.0)
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    particles_per_micrograph: int = 100
    interparticle_distance_px: int = 64
    snr_full_dose: float = SNR_FULL_DOSE

    @classmethod
    def for_profile(cls, profile: Profile) -> AspireSpec:
        doses = tuple(sorted(set(profile.doses) | {REFERENCE_DOSE}))
        return cls(n_micrographs=profile.n_train + profile.n_test, size_px=profile.size_px, doses=doses)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class AspireError(RuntimeError):
    """ASPIRE's venv could not be made or its simulation failed (the message says which and why)."""


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def ensure_aspire_env(venv_dir: Path = DEFAULT_VENV) -> Path:
    """Create (once) a venv holding ASPIRE and return its Python. Idempotent: a marker records the version."""
    venv_dir = Path(venv_dir)
    marker = venv_dir / ENV_MARKER_NAME
    python = _venv_python(venv_dir)
    if marker.exists() and python.exists() and json.loads(marker.read_text()).get("aspire") == ASPIRE_VERSION:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"aspire=={ASPIRE_VERSION}"],
                             capture_output=True, text=True)
    if install.returncode != 0:
        raise AspireError(f"pip install aspire=={ASPIRE_VERSION} into {venv_dir} failed:\n{install.stderr[-3000:]}")
    marker.write_text(json.dumps({"aspire": ASPIRE_VERSION}))
    return python


def dataset_key(spec: AspireSpec) -> str:
    """Folder name: changes whenever the micrographs would (the spec, ASPIRE's version, the generator's code)."""
    settings = json.dumps(spec.to_dict(), sort_keys=True)
    generator = hashlib.sha1(GENERATOR.read_bytes()).hexdigest()
    digest = hashlib.sha1(f"{settings}|{ASPIRE_VERSION}|{generator}".encode()).hexdigest()
    return f"{STRUCTURE}-{spec.size_px}px-{spec.n_micrographs}mic-seed{spec.seed}-{digest[:8]}"


def particle_diameter_px(projection: np.ndarray, fraction: float = DIAMETER_PROFILE_FRACTION) -> float:
    """Twice the radius where the radially averaged mean projection first falls below ``fraction`` of its peak."""
    half = projection.shape[0] // 2
    yy, xx = np.mgrid[-half:projection.shape[0] - half, -half:projection.shape[1] - half]
    rings = np.rint(np.hypot(yy, xx)).astype(int)
    profile = np.bincount(rings.ravel(), projection.ravel()) / np.bincount(rings.ravel())
    below = np.flatnonzero(profile < fraction * profile.max())
    if below.size == 0:
        raise AspireError("the particle's mean projection never falls off inside its box")
    return float(2 * below[0])


def _simulate(spec: AspireSpec, python: Path, log: Callable[[str], None]) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="cryojoint-aspire-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.npz"
        spec_path.write_text(json.dumps(spec.to_dict()))
        log(f"simulating {spec.n_micrographs} × {spec.size_px}² micrographs with ASPIRE {ASPIRE_VERSION}")
        # In the temporary folder: ASPIRE writes a log file into ./logs of its working directory.
        run = subprocess.run([str(python), str(GENERATOR), str(spec_path), str(out_path)], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": ""}, cwd=tmp)
        if run.returncode != 0:
            raise AspireError(f"ASPIRE's simulation failed:\n{run.stderr[-3000:]}")
        with np.load(out_path) as npz:
            return {key: npz[key] for key in npz.files}


def prepare(cache_dir: Path, profile: Profile, log: Callable[[str], None] = print,
            venv_dir: Path = DEFAULT_VENV) -> Path:
    """The profile's data folder under ``<cache>/data``, simulated with ASPIRE once (atomically) and reused."""
    spec = AspireSpec.for_profile(profile)
    data_dir = Path(cache_dir) / "data" / dataset_key(spec)
    if (data_dir / "benchmark_dataset.json").exists():
        return data_dir
    started = time.perf_counter()
    arrays = _simulate(spec, ensure_aspire_env(venv_dir), log)
    staging = data_dir.with_name(f".{data_dir.name}.{uuid.uuid4().hex[:8]}")
    try:
        _write(staging, spec, arrays, profile, time.perf_counter() - started)
        if data_dir.exists():  # a folder without its facts file: an interrupted earlier run
            shutil.rmtree(data_dir)
        staging.rename(data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return data_dir


def _write(folder: Path, spec: AspireSpec, arrays: dict[str, np.ndarray], profile: Profile, seconds: float) -> None:
    names = [f"mic_{index:04d}" for index in range(spec.n_micrographs)]
    train_names, test_names = names[:profile.n_train], names[profile.n_train:]
    pixel = spec.pixel_size_angstrom
    for index, name in enumerate(names):
        write_mrc(folder / "clean" / f"{name}.mrc", arrays["clean"][index], pixel)
        write_mrc(folder / "masks" / f"{name}.mrc", np.zeros_like(arrays["clean"][index]), pixel)
        for dose in spec.doses:
            write_mrc(folder / f"dose_{dose}" / f"{name}.mrc", arrays[f"noisy_{dose}"][index], pixel)
    rows, decoys, labels = [], [], []
    for index, name in enumerate(names):
        rc = arrays["centres_rc"][index].astype(float)
        is_particle = arrays["volume_index"][index] == 1
        xy = rc[:, ::-1]
        rows.append(pd.DataFrame({"micrograph": name, "x": xy[is_particle, 0], "y": xy[is_particle, 1]}))
        decoys.append(pd.DataFrame({"micrograph": name, "x": xy[~is_particle, 0], "y": xy[~is_particle, 1]}))
        if name in train_names:
            labelled, _ = partial_labels(xy[is_particle], (spec.size_px, spec.size_px), LABEL_SEED, index,
                                         region_fraction=LABEL_REGION_FRACTION)
            labels.append(rows[-1][labelled])
    truth = pd.concat(rows, ignore_index=True)
    label_table = pd.concat(labels, ignore_index=True)
    truth.to_csv(folder / "truth_exact.csv", index=False)
    label_table.to_csv(folder / "labels_exact.csv", index=False)
    pd.concat(decoys, ignore_index=True).to_csv(folder / "decoys.csv", index=False)
    facts = {"structure": STRUCTURE, "names": names, "train_names": train_names, "test_names": test_names,
             "particle_diameter_px": particle_diameter_px(arrays["projection"]), "pixel_size": pixel,
             "n_truth": len(truth), "n_labels": len(label_table), "n_decoys": int(sum(len(d) for d in decoys)),
             "simulator": f"aspire {ASPIRE_VERSION}", "simulation": spec.to_dict(),
             "noise_variance_full_dose": float(arrays["noise_variance_full"]),
             "defocus_angstrom": [float(v) for v in arrays["defocus_angstrom"]],
             "image_units": "ASPIRE's (mean ≈ 0), float32", "seconds": seconds}
    (folder / "benchmark_dataset.json").write_text(json.dumps(facts, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.suite.profiles import PROFILES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "benchmarks" / ".cache")
    parser.add_argument("--profile", default="aspire")
    args = parser.parse_args(argv)
    try:
        print(prepare(args.cache, PROFILES[args.profile]))
    except AspireError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
