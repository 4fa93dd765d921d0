"""Simulate micrographs with ASPIRE (run by ``benchmarks/aspire_sim.py`` inside ASPIRE's own venv).

Usage: ``<aspire venv>/bin/python aspire_generate.py SPEC.json OUT.npz``. Imports only ASPIRE and NumPy, so
the GPL simulator never enters cryojoint's process; everything about the image (the particle, its projections,
the CTF, the placement and the noise) is ASPIRE's. The spec's keys are those of
``benchmarks.aspire_sim.AspireSpec``; the output holds ``clean`` (n, size, size), one ``noisy_<dose>`` stack
per dose, ``centres_rc`` (n, k, 2: row, column), ``defocus_angstrom`` (n,) and ``projection`` (the particle's
mean projection without CTF, averaged over the micrographs' particles' directions, for its size).
"""

from __future__ import annotations

import json
import sys

import numpy as np
from aspire.image import Image
from aspire.noise import WhiteNoiseAdder
from aspire.operators import RadialCTFFilter
from aspire.source import MicrographSimulation
from aspire.volume import AsymmetricVolume


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as handle:
        spec = json.load(handle)
    rng = np.random.default_rng(spec["seed"])
    # Volume 1 is the particle; the others are decoys: other shapes of the same size, which ASPIRE's Simulation
    # mixes in (each particle's volume drawn uniformly), as a sample holds aggregates and broken particles.
    volume = AsymmetricVolume(L=spec["box_px"], C=1 + spec["decoy_volumes"], K=spec["gaussian_blobs"],
                              seed=spec["seed"], dtype=np.float32, pixel_size=spec["pixel_size_angstrom"]).generate()
    count = spec["n_micrographs"]
    defoci = rng.uniform(*spec["defocus_range_angstrom"], size=count)
    filters = [RadialCTFFilter(voltage=spec["voltage_kv"], defocus=float(d), Cs=spec["cs_mm"],
                               alpha=spec["amplitude_contrast"]) for d in defoci]
    common = dict(micrograph_size=spec["size_px"], micrograph_count=count,
                  particles_per_micrograph=spec["particles_per_micrograph"], seed=spec["seed"],
                  interparticle_distance=spec["interparticle_distance_px"])
    source = MicrographSimulation(volume, ctf_filters=filters, **common)
    clean = source.clean_images[:].asnumpy().astype(np.float32)
    # The same particles (directions and places) without the CTF: the particle as it is, for its diameter only.
    plain = MicrographSimulation(volume, **common)
    if not np.array_equal(plain.centers, source.centers):
        raise RuntimeError("ASPIRE placed the particles differently without the CTF")
    states = np.asarray(source.simulation.states).reshape(source.centers.shape[:2])
    projection = _mean_particle(plain.clean_images[:].asnumpy(), source.centers, states == 1, spec["box_px"])
    noise_variance_full = float(clean.var()) / spec["snr_full_dose"]
    stacks = {}
    for index, dose in enumerate(spec["doses"]):
        adder = WhiteNoiseAdder(var=noise_variance_full / (int(dose) / 100.0), seed=spec["seed"] + 1 + index)
        stacks[f"noisy_{dose}"] = adder.forward(Image(clean.copy())).asnumpy().astype(np.float32)
    np.savez(out_path, clean=clean, centres_rc=source.centers.astype(np.int64), volume_index=states,
             defocus_angstrom=defoci, projection=projection, noise_variance_full=noise_variance_full, **stacks)


def _mean_particle(images: np.ndarray, centres: np.ndarray, keep: np.ndarray, box: int) -> np.ndarray:
    half = box // 2
    total = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float64)
    for image, points, chosen in zip(images, centres, keep):
        padded = np.pad(image, half)
        for row, column in points[chosen]:
            total += padded[row:row + 2 * half + 1, column:column + 2 * half + 1]
    return total / max(1, int(keep.sum()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
