"""Seeded synthetic cryo-EM micrographs with ground truth at several dose fractions.

No labelled real data is reachable from where cryojoint is built and tested, so every quality figure stands
on this simulator; it is made to be as hard as real low-dose data, not to flatter the method:

* particles are projections of real atomic models (shipped maps in ``cryojoint/structures``), in uniformly
  random orientations, crowded, sometimes touching, some cut by the image edge;
* particle-sized objects that are not particles lie among them (broken particles, protein clumps, ice
  crystals; listed in ``decoys``, never in the truth or labels), so a blob detector cannot solve the data;
* the specimen has an ice-thickness gradient with low-frequency variation, structural noise of vitreous
  ice, sometimes a carbon-film edge, contamination blobs and gold beads (all recorded in ``masks``);
* the exit wave ``exp(i*phase - absorption)`` is imaged through an astigmatic CTF (defocus, Cs, amplitude
  contrast, B-factor envelope) on a canvas larger than the image, so nothing wraps around the edges;
* dose fractions are cumulative sums of the *same* Poisson frames (10% is inside 20% inside 60% inside
  100%), plus zero-mean integer detector noise, in units of detected electrons per pixel (counts).

Units: lengths in Å unless the name ends in ``_px`` (pixels of the simulated micrograph) or ``_um``
(micrometres); dose in electrons per Å²; angles in degrees; images in counts (detected electrons per pixel;
``clean`` is the expected count at 100% dose). ``docs/simulation.md`` describes the physics and calibration.

Why one module of ~800 lines: it is one seeded pipeline (structures → specimen → optics → one micrograph →
writing, marked as sections below) whose steps share :class:`SimulationConfig` and the per-micrograph seed
streams; split apart, the calibration and the seeding that keep datasets reproducible would be spread out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import fft, ndimage
from scipy.spatial.transform import Rotation

from cryojoint.errors import UserInputError
from cryojoint.io.mrc import Micrograph

#: Bumped whenever the same SimulationConfig gives different micrographs (caches key their data on it).
#: 1: session 1-9 simulator; 2: decoys (fragments, protein clumps, ice crystals) among the particles.
SIMULATOR_VERSION = 2

# --- physical constants -----------------------------------------------------------------------------------
ELECTRON_REST_ENERGY_KEV = 510.99895
#: Wavelength constant: lambda[Å] = 12.2643 / sqrt(V (1 + 0.97848e-6 V)), V in volts.
WAVELENGTH_NUMERATOR = 12.2643247
RELATIVISTIC_CORRECTION_PER_VOLT = 0.978476e-6
#: Interaction constant at 300 kV (rad per V·Å); scaled relativistically for other voltages.
INTERACTION_CONSTANT_300KV = 6.526e-4
#: Mean inner potential of vitreous ice (V) and its electron density (electrons per Å³).
ICE_MEAN_INNER_POTENTIAL_V = 4.5
ICE_ELECTRON_DENSITY = 0.31
#: Electron density of protein/RNA (electrons per Å³): only the excess over the ice it displaces scatters.
PROTEIN_ELECTRON_DENSITY = 0.43
#: Mean inner potential of amorphous carbon (V) and of gold (V).
CARBON_MEAN_INNER_POTENTIAL_V = 9.0
GOLD_MEAN_INNER_POTENTIAL_V = 30.0
#: Mean free paths (Å) for losing electrons from the image (inelastic + aperture) in ice, carbon, gold.
ICE_MEAN_FREE_PATH = 3500.0
CARBON_MEAN_FREE_PATH = 2500.0
GOLD_MEAN_FREE_PATH = 90.0
#: Mean free path (Å) for crystalline ice: Bragg reflections leave the objective aperture, so a crystal is far
#: darker than vitreous ice of the same thickness (an assumption; vitreous ice uses ICE_MEAN_FREE_PATH).
ICE_CRYSTAL_MEAN_FREE_PATH = 600.0
#: How many differently broken copies of the particle the fragments of one dataset are drawn from.
FRAGMENT_SHAPES = 3
#: Entropy words (after the dataset seed) of the fragments' stream; micrograph streams use [seed, index].
FRAGMENT_SEED_WORDS = (0, 1)
#: Kinds of decoy recorded in ``SimulatedDataset.decoys``.
DECOY_KINDS = ("fragment", "aggregate", "ice_crystal")
#: SimulationConfig changes that switch every decoy off: the version-1 scene, bit for bit.
NO_DECOYS: dict[str, Any] = {"fragments_per_particle": (0.0, 0.0), "aggregates_per_particle": (0.0, 0.0),
                             "ice_crystals_per_micrograph": (0, 0)}
#: The binned micrograph size at which region sizes and particle counts are quoted.
REFERENCE_FIELD_PX = 1024
#: RELION-style names of the dose folders: dose fraction 0.1 -> "dose_010".
DOSE_KEY_FORMAT = "dose_{:03d}"
#: Mask values (documented in docs/simulation.md).
MASK_NONE, MASK_CARBON, MASK_CONTAMINATION, MASK_GOLD = 0, 1, 2, 3
MASK_NAMES = {MASK_NONE: "none", MASK_CARBON: "carbon", MASK_CONTAMINATION: "contamination", MASK_GOLD: "gold"}

#: Per-preset changes to the defaults: smaller particles are imaged more crowded, as in practice.
PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "ribosome": {"particles_per_micrograph": (100, 200)},
    "ruvb": {"particles_per_micrograph": (200, 400)},
    "barrel": {"particles_per_micrograph": (80, 160)},
    "dengue-e": {"particles_per_micrograph": (150, 300)},
    "glua3-ntd": {"particles_per_micrograph": (200, 400)},
}


@dataclass
class SimulationConfig:
    """Every parameter of the simulation, with units; saved as ``simulation.yaml`` next to the data."""

    preset: str = "ribosome"  # name of a shipped structure (list_presets())
    seed: int = 0
    n_micrographs: int = 8
    size_px: tuple[int, int] = (1024, 1024)  # (height, width) of each micrograph
    pixel_size_angstrom: float = 5.3  # the paper's 8x-binned scale
    # optics
    voltage_kv: float = 300.0
    spherical_aberration_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_range_um: tuple[float, float] = (1.0, 3.0)  # mean underfocus, uniform per micrograph
    astigmatism_max_um: float = 0.15  # |defocus_u - defocus_v| / 2, uniform in [0, max]
    envelope_b_factor_a2: float = 200.0  # coherence/drift envelope exp(-B k^2 / 4) on the transfer
    # specimen
    particles_per_micrograph: tuple[int, int] = (100, 200)  # per 1024² field, uniform per micrograph
    min_centre_distance_fraction: float = 0.75  # of the particle diameter; <1 lets neighbours touch
    clustered_fraction: float = 0.3  # share of particles placed next to an earlier one (aggregation)
    # decoys: particle-sized objects that are not particles (never in truth or labels; listed in `decoys`)
    fragments_per_particle: tuple[float, float] = (0.25, 0.5)  # broken/dissociated particles, per particle
    fragment_kept_fraction: tuple[float, float] = (0.3, 0.6)  # share of the particle's mass a fragment keeps
    aggregates_per_particle: tuple[float, float] = (0.1, 0.3)  # amorphous protein clumps, per particle
    aggregate_diameter_fraction: tuple[float, float] = (0.6, 1.6)  # of the particle diameter
    aggregate_packing: tuple[float, float] = (0.3, 0.7)  # protein volume fraction inside a clump
    ice_crystals_per_micrograph: tuple[int, int] = (0, 10)  # per 1024² field; masked as contamination
    ice_crystal_diameter_angstrom: tuple[float, float] = (60.0, 300.0)
    ice_crystal_thickness_angstrom: tuple[float, float] = (100.0, 500.0)
    protein_contrast_scale: float = 1.0  # multiplies the physical phase of the particles (calibration knob)
    ice_thickness_range_angstrom: tuple[float, float] = (300.0, 700.0)  # mean per micrograph
    ice_gradient_fraction: float = 0.15  # max relative thickness change across the field (linear ramp)
    ice_variation_fraction: float = 0.08  # std of the smooth relative thickness variation
    ice_variation_scale_angstrom: float = 800.0  # correlation length of that variation
    ice_texture_rad: float = 0.012  # std of per-pixel phase noise from ice structure at 500 Å (white)
    carbon_probability: float = 0.35  # share of micrographs crossed by a carbon-film edge
    carbon_thickness_angstrom: float = 120.0
    carbon_texture_rad: float = 0.08  # std of per-pixel phase noise of amorphous carbon
    hole_diameter_um: tuple[float, float] = (1.0, 2.0)  # holey-carbon hole size: sets the edge curvature
    contamination_per_micrograph: tuple[int, int] = (0, 3)
    contamination_diameter_angstrom: tuple[float, float] = (150.0, 800.0)
    contamination_thickness_angstrom: tuple[float, float] = (1500.0, 4000.0)
    gold_probability: float = 0.3  # share of micrographs holding gold beads
    gold_beads_per_micrograph: tuple[int, int] = (1, 6)
    gold_diameter_angstrom: tuple[float, float] = (50.0, 100.0)
    # dose and detector
    total_dose_e_per_a2: float = 50.0  # incident, whole exposure
    detective_quantum_efficiency: float = 0.75  # share of incident electrons counted (binned scale)
    readout_noise_counts: float = 3.0  # std of zero-mean integer detector noise per pixel, whole exposure
    dose_fractions: tuple[float, ...] = (1.0, 0.6, 0.2, 0.1)
    # partial labels (as in the paper: some particles in one region per micrograph)
    label_region_px: int | None = 300  # square side at a 1024² field, scaled with the field; None = all
    labelled_fraction: tuple[float, float] = (0.4, 0.8)  # of the particles in the region, uniform
    label_jitter_fraction: float = 0.04  # std of a user's click error, as a fraction of the diameter

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (tuples become lists), for YAML."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def for_preset(cls, preset: str = "ribosome", **changes: Any) -> SimulationConfig:
        """Defaults of ``preset`` (e.g. denser fields for small particles), then ``changes``."""
        if preset not in list_presets():
            raise UserInputError(None, f"unknown simulation preset '{preset}' (known: {', '.join(list_presets())})")
        values = {"preset": preset, **PRESET_OVERRIDES.get(preset, {}), **changes}
        return cls(**values)


@dataclass
class SimulatedDataset:
    """Micrographs at every dose, in the same form as the real-data reader, plus everything true about them."""

    config: SimulationConfig
    micrographs: dict[str, list[Micrograph]]  # "dose_100", "dose_060", ... -> one Micrograph per scene
    clean: list[Micrograph]  # noise-free expected counts at 100% dose (after CTF)
    masks: list[np.ndarray]  # uint8: 0 none, 1 carbon, 2 contamination, 3 gold
    truth: pd.DataFrame  # micrograph, x, y, angle_rot/tilt/psi, defocus_u/v, defocus_angle
    labels: pd.DataFrame  # micrograph, x, y: the partial picks a user would make
    particle_diameter_px: float
    structure: dict[str, Any] = field(default_factory=dict)  # provenance of the particle's atomic model
    #: Particle-sized objects that are not particles: micrograph, x, y (image px), kind (DECOY_KINDS).
    decoys: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["micrograph", "x", "y", "kind"]))


# --- structures ----------------------------------------------------------------------------------------------


def list_presets() -> list[str]:
    """Names of the shipped particle structures (each a ``.npz`` map with a ``.json`` provenance)."""
    folder = resources.files("cryojoint") / "structures"
    return sorted(entry.name[: -len(".npz")] for entry in folder.iterdir() if entry.name.endswith(".npz"))


def load_structure(preset: str) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Density map (sum of atomic numbers per voxel, float32), its voxel size (Å) and provenance."""
    if preset not in list_presets():
        raise UserInputError(None, f"unknown simulation preset '{preset}' (known: {', '.join(list_presets())})")
    folder = resources.files("cryojoint") / "structures"
    with (folder / f"{preset}.npz").open("rb") as handle, np.load(handle) as archive:
        density = archive["density"].astype(np.float32)
        voxel = float(archive["voxel_angstrom"])
    provenance = json.loads((folder / f"{preset}.json").read_text())
    return density, voxel, provenance


def _resample_volume(density: np.ndarray, voxel: float, pixel: float) -> np.ndarray:
    """Fourier-resample to ``pixel`` Å voxels (band-limited, no aliasing); values become atomic number per Å³."""
    side = density.shape[0]
    new_side = max(3, 2 * int(round(side * voxel / pixel / 2)) + 1)
    spectrum = fft.fftshift(fft.fftn(fft.ifftshift(density / voxel**3)))
    start_old = max(0, side // 2 - new_side // 2)
    start_new = max(0, new_side // 2 - side // 2)
    width = min(side, new_side)
    resized = np.zeros((new_side,) * 3, dtype=np.complex128)
    region_old = (slice(start_old, start_old + width),) * 3
    region_new = (slice(start_new, start_new + width),) * 3
    resized[region_new] = spectrum[region_old]
    resampled = fft.fftshift(fft.ifftn(fft.ifftshift(resized))).real * (new_side / side) ** 3
    return np.clip(resampled, 0.0, None).astype(np.float32)


class _Projector:
    """Projections of one map by the Fourier-slice theorem: one 3D FFT, then a cheap 2D slice per particle."""

    def __init__(self, volume: np.ndarray, pixel: float) -> None:
        self.side = volume.shape[0]
        padded_side = 2 * self.side
        padded = np.zeros((padded_side,) * 3, dtype=np.float32)
        offset = padded_side // 2 - self.side // 2
        padded[(slice(offset, offset + self.side),) * 3] = volume * pixel  # sum along z in Å
        spectrum = fft.fftshift(fft.fftn(fft.ifftshift(padded), workers=-1))
        self.spectrum_real = np.ascontiguousarray(spectrum.real, dtype=np.float32)
        self.spectrum_imag = np.ascontiguousarray(spectrum.imag, dtype=np.float32)
        self.padded_side = padded_side

    def project(self, rotations: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """Projections ``(n, side, side)`` (atomic number per Å²) of the rotated map, shifted by ``shifts`` px.

        ``rotations`` are 3x3 matrices acting on (x, y, z) of the map; the projection runs along z. The
        slice is read at the map's own frequency spacing (every other sample of the 2x-padded spectrum,
        which only serves accurate interpolation), so its inverse FFT is exactly ``side`` wide.
        """
        centre = self.padded_side // 2
        frequencies = np.arange(self.side) - self.side // 2
        ky, kx = (grid.ravel() for grid in np.meshgrid(frequencies, frequencies, indexing="ij"))
        oversampling = self.padded_side / self.side
        out = np.empty((len(rotations), self.side, self.side), dtype=np.float32)
        for index, (matrix, shift) in enumerate(zip(rotations, shifts, strict=True)):
            # P^(k) = V^(R^T k): frequency (kx, ky, 0) of the image is kx*R[0] + ky*R[1] in the map.
            vector = kx[:, None] * matrix[0][None, :] + ky[:, None] * matrix[1][None, :]  # (n, xyz)
            coordinates = centre + oversampling * vector[:, ::-1].T  # array order (z, y, x)
            real = ndimage.map_coordinates(self.spectrum_real, coordinates, order=1, mode="constant")
            imag = ndimage.map_coordinates(self.spectrum_imag, coordinates, order=1, mode="constant")
            phase = np.exp(-2j * np.pi * (kx * shift[0] + ky * shift[1]) / self.side)
            plane = ((real + 1j * imag) * phase).reshape(self.side, self.side)
            out[index] = fft.fftshift(fft.ifft2(fft.ifftshift(plane))).real
        return out


# --- optics --------------------------------------------------------------------------------------------------


def electron_wavelength_angstrom(voltage_kv: float) -> float:
    """Relativistic electron wavelength (Å) at an accelerating voltage (kV)."""
    volts = voltage_kv * 1e3
    return WAVELENGTH_NUMERATOR / math.sqrt(volts * (1.0 + RELATIVISTIC_CORRECTION_PER_VOLT * volts))


def interaction_constant(voltage_kv: float) -> float:
    """Phase shift per projected potential (rad per V·Å), scaled from its 300 kV value."""
    def sigma_unscaled(kv: float) -> float:
        wavelength = electron_wavelength_angstrom(kv)
        return (1.0 + kv / ELECTRON_REST_ENERGY_KEV) * wavelength

    return INTERACTION_CONSTANT_300KV * sigma_unscaled(voltage_kv) / sigma_unscaled(300.0)


def phase_per_atomic_number(voltage_kv: float) -> float:
    """Phase (rad·Å²) added by one unit of atomic number of a macromolecule over the ice it displaces.

    An electron of protein carries the ice's mean inner potential per electron (V·Å³); only the excess of
    protein electron density over ice (about a quarter) produces contrast in the ice.
    """
    potential_per_electron = ICE_MEAN_INNER_POTENTIAL_V / ICE_ELECTRON_DENSITY
    excess_share = 1.0 - ICE_ELECTRON_DENSITY / PROTEIN_ELECTRON_DENSITY
    return interaction_constant(voltage_kv) * potential_per_electron * excess_share


def ctf_wave_transfer(
    shape: tuple[int, int], pixel: float, defocus_u: float, defocus_v: float, angle_deg: float,
    config: SimulationConfig,
) -> np.ndarray:
    """Transfer ``exp(i chi) * envelope`` applied to the exit wave's spectrum (defocus in Å, underfocus > 0).

    With this sign a weak phase object's image contrast is ``-2 sin(chi)`` times its phase, so particles in
    underfocus look dark at low resolution, as in real micrographs.
    """
    wavelength = electron_wavelength_angstrom(config.voltage_kv)
    cs = config.spherical_aberration_mm * 1e7
    fy = fft.fftfreq(shape[0], d=pixel)[:, None]
    fx = fft.fftfreq(shape[1], d=pixel)[None, :]
    k2 = fx**2 + fy**2
    azimuth = np.arctan2(fy, fx)
    defocus = 0.5 * (defocus_u + defocus_v + (defocus_u - defocus_v) * np.cos(2 * (azimuth - np.deg2rad(angle_deg))))
    chi = np.pi * wavelength * defocus * k2 - 0.5 * np.pi * cs * wavelength**3 * k2**2
    envelope = np.exp(-config.envelope_b_factor_a2 * k2 / 4.0)
    return (np.exp(1j * chi) * envelope).astype(np.complex64)


def pixel_integration_transfer(shape: tuple[int, int]) -> np.ndarray:
    """Summing a square of detector pixels into one binned pixel: sinc(fx) sinc(fy), f in cycles per pixel."""
    fy = fft.fftfreq(shape[0])[:, None]
    fx = fft.fftfreq(shape[1])[None, :]
    return (np.sinc(fy) * np.sinc(fx)).astype(np.float32)


# --- specimen ------------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean unit-std Gaussian random field correlated over ``scale_px`` (Gaussian filter in Fourier space)."""
    fy = fft.fftfreq(shape[0])[:, None]
    fx = fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2.0 * (np.pi * scale_px) ** 2 * (fx**2 + fy**2))
    field_ = fft.irfft2(fft.rfft2(rng.standard_normal(shape)) * transfer, s=shape)
    return (field_ - field_.mean()) / max(float(field_.std()), 1e-12)


@dataclass
class _Specimen:
    """Everything in the canvas before imaging: phase (rad), log-amplitude loss, masks."""

    phase: np.ndarray
    absorption: np.ndarray  # amplitude = exp(-absorption)
    mask: np.ndarray
    ice_crystals: np.ndarray  # (n, 2) centres (row, col) in canvas pixels


def _ice_and_supports(
    rng: np.random.Generator, shape: tuple[int, int], config: SimulationConfig, decoy_rng: np.random.Generator,
) -> tuple[_Specimen, float]:
    """Ice slab with gradient and variation, carbon edge, contamination, gold, ice crystals (drawn from
    ``decoy_rng``). Returns specimen, mean thickness."""
    pixel = config.pixel_size_angstrom
    sigma_e = interaction_constant(config.voltage_kv)
    ny, nx = shape
    rows, cols = np.mgrid[0:ny, 0:nx].astype(np.float32)
    mean_thickness = rng.uniform(*config.ice_thickness_range_angstrom)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(direction) * (cols - nx / 2) + np.sin(direction) * (rows - ny / 2)) / max(nx, ny)
    gradient = rng.uniform(0.3, 1.0) * config.ice_gradient_fraction
    variation = _smooth_field(rng, shape, config.ice_variation_scale_angstrom / pixel)
    thickness = mean_thickness * (1.0 + gradient * ramp + config.ice_variation_fraction * variation)
    thickness = np.clip(thickness, 0.2 * mean_thickness, None)
    texture = rng.standard_normal(shape) * config.ice_texture_rad * np.sqrt(thickness / 500.0)
    phase = sigma_e * ICE_MEAN_INNER_POTENTIAL_V * (thickness - mean_thickness) + texture
    absorption = thickness / (2.0 * ICE_MEAN_FREE_PATH)
    mask = np.zeros(shape, dtype=np.uint8)

    if rng.random() < config.carbon_probability:
        # The edge of a round hole in the carbon film: a gentle arc crossing the field.
        radius = 0.5 * rng.uniform(*config.hole_diameter_um) * 1e4 / pixel
        angle = rng.uniform(0, 2 * np.pi)
        reach = rng.uniform(0.15, 0.45) * min(ny, nx)  # how far the carbon reaches into the field
        centre_y = ny / 2 + np.sin(angle) * (radius - min(ny, nx) / 2 + reach)
        centre_x = nx / 2 + np.cos(angle) * (radius - min(ny, nx) / 2 + reach)
        wobble = 3.0 * _smooth_field(rng, shape, 40.0)
        outside_hole = np.hypot(rows - centre_y, cols - centre_x) + wobble > radius
        carbon_thickness = config.carbon_thickness_angstrom
        phase = phase + outside_hole * (
            sigma_e * CARBON_MEAN_INNER_POTENTIAL_V * carbon_thickness
            + rng.standard_normal(shape) * config.carbon_texture_rad
        )
        absorption = absorption + outside_hole * carbon_thickness / (2.0 * CARBON_MEAN_FREE_PATH)
        mask[outside_hole] = MASK_CARBON

    for _ in range(rng.integers(config.contamination_per_micrograph[0], config.contamination_per_micrograph[1] + 1)):
        diameter = rng.uniform(*config.contamination_diameter_angstrom) / pixel
        half = int(diameter) + 8
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        y0, x0 = int(cy) - half, int(cx) - half
        box_rows, box_cols = np.mgrid[y0 : y0 + 2 * half, x0 : x0 + 2 * half]
        radial = np.hypot(box_rows - cy, box_cols - cx) / (diameter / 2)
        lumps = _smooth_field(rng, radial.shape, max(diameter / 6, 1.0))
        shape_field = 1.0 - radial + 0.35 * lumps
        inside = shape_field > 0
        profile = np.where(inside, np.sqrt(np.clip(shape_field, 0, None)), 0.0)
        blob_thickness = rng.uniform(*config.contamination_thickness_angstrom) * profile
        valid = (box_rows >= 0) & (box_rows < ny) & (box_cols >= 0) & (box_cols < nx)
        r_idx, c_idx = box_rows[valid], box_cols[valid]
        absorption[r_idx, c_idx] += blob_thickness[valid] / (2.0 * ICE_MEAN_FREE_PATH)
        phase[r_idx, c_idx] += sigma_e * ICE_MEAN_INNER_POTENTIAL_V * blob_thickness[valid]
        mask[r_idx[inside[valid]], c_idx[inside[valid]]] = MASK_CONTAMINATION

    if rng.random() < config.gold_probability:
        for _ in range(rng.integers(config.gold_beads_per_micrograph[0], config.gold_beads_per_micrograph[1] + 1)):
            radius = 0.5 * rng.uniform(*config.gold_diameter_angstrom)
            cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
            half = int(radius / pixel) + 3
            y0, x0 = int(cy) - half, int(cx) - half
            box_rows, box_cols = np.mgrid[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1]
            distance = np.hypot(box_rows - cy, box_cols - cx) * pixel
            chord = 2.0 * np.sqrt(np.clip(radius**2 - distance**2, 0, None))  # Å of gold along the beam
            valid = (box_rows >= 0) & (box_rows < ny) & (box_cols >= 0) & (box_cols < nx)
            r_idx, c_idx = box_rows[valid], box_cols[valid]
            absorption[r_idx, c_idx] += chord[valid] / (2.0 * GOLD_MEAN_FREE_PATH)
            phase[r_idx, c_idx] += sigma_e * GOLD_MEAN_INNER_POTENTIAL_V * chord[valid]
            inside = chord[valid] > 0
            mask[r_idx[inside], c_idx[inside]] = MASK_GOLD

    crystals = _add_ice_crystals(decoy_rng, phase, absorption, mask, config)
    return _Specimen(phase.astype(np.float32), absorption.astype(np.float32), mask, crystals), mean_thickness


def _add_ice_crystals(
    rng: np.random.Generator, phase: np.ndarray, absorption: np.ndarray, mask: np.ndarray, config: SimulationConfig
) -> np.ndarray:
    """Small hexagonal plates of crystalline ice (frost from transfer): dark, particle-sized, not particles.

    Added in place (masked as contamination, so particles keep clear of them); returns their centres."""
    pixel = config.pixel_size_angstrom
    sigma_e = interaction_constant(config.voltage_kv)
    ny, nx = mask.shape
    area_scale = (ny * nx) / REFERENCE_FIELD_PX**2
    low, high = config.ice_crystals_per_micrograph
    count = int(round(rng.integers(low, high + 1) * area_scale))
    centres = []
    for _ in range(count):
        radius = 0.5 * rng.uniform(*config.ice_crystal_diameter_angstrom) / pixel
        thickness = rng.uniform(*config.ice_crystal_thickness_angstrom)
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        turn = rng.uniform(0, np.pi / 3)
        half = int(radius) + 3
        y0, x0 = int(cy) - half, int(cx) - half
        box_rows, box_cols = np.mgrid[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1]
        angle = np.arctan2(box_rows - cy, box_cols - cx) - turn
        # Distance to a regular hexagon's edge along each direction (inradius = radius * cos 30°).
        sector = np.mod(angle, np.pi / 3) - np.pi / 6
        edge = radius * np.cos(np.pi / 6) / np.cos(sector)
        inside = np.hypot(box_rows - cy, box_cols - cx) <= edge
        valid = (box_rows >= 0) & (box_rows < ny) & (box_cols >= 0) & (box_cols < nx) & inside
        r_idx, c_idx = box_rows[valid], box_cols[valid]
        absorption[r_idx, c_idx] += thickness / (2.0 * ICE_CRYSTAL_MEAN_FREE_PATH)
        phase[r_idx, c_idx] += sigma_e * ICE_MEAN_INNER_POTENTIAL_V * thickness
        mask[r_idx, c_idx] = MASK_CONTAMINATION
        centres.append((cy, cx))
    return np.asarray(centres, dtype=np.float64).reshape(-1, 2)


def _place_particles(
    rng: np.random.Generator, count: int, free: np.ndarray, diameter: float, config: SimulationConfig,
    border: float,
) -> np.ndarray:
    """Sub-pixel centres (row, col) in free canvas pixels, at least a minimum distance apart; some clustered."""
    ny, nx = free.shape
    min_distance = config.min_centre_distance_fraction * diameter
    # A particle may not overlap carbon/contamination/gold: its centre keeps half a diameter from them.
    clearance = ndimage.distance_transform_edt(free)
    allowed = clearance > 0.5 * diameter
    centres: list[tuple[float, float]] = []
    attempts = 0
    max_attempts = 60 * count + 200
    while len(centres) < count and attempts < max_attempts:
        attempts += 1
        if centres and rng.random() < config.clustered_fraction:
            anchor = centres[rng.integers(len(centres))]
            angle = rng.uniform(0, 2 * np.pi)
            distance = rng.uniform(min_distance, 1.05 * diameter)
            candidate = (anchor[0] + distance * np.sin(angle), anchor[1] + distance * np.cos(angle))
        else:
            candidate = (rng.uniform(border, ny - border), rng.uniform(border, nx - border))
        row, col = candidate
        if not (border <= row < ny - border and border <= col < nx - border):
            continue
        if not allowed[int(row), int(col)]:
            continue
        if centres:
            existing = np.asarray(centres)
            if np.min(np.hypot(existing[:, 0] - row, existing[:, 1] - col)) < min_distance:
                continue
        centres.append(candidate)
    return np.asarray(centres, dtype=np.float64).reshape(-1, 2)


def _fragment_projectors(volume: np.ndarray, pixel: float, config: SimulationConfig) -> list[_Projector]:
    """Broken copies of the particle (what is left on one side of a random plane), as projectors.

    Drawn once per dataset from its own stream, so micrograph ``i`` stays the same whatever ``n_micrographs``."""
    if config.fragments_per_particle[1] <= 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, *FRAGMENT_SEED_WORDS]))
    side = volume.shape[0]
    grid = np.stack(np.meshgrid(*(np.arange(side) - side // 2,) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    mass = volume.reshape(-1).astype(np.float64)
    projectors = []
    for _ in range(FRAGMENT_SHAPES):
        normal = rng.standard_normal(3)
        normal /= np.linalg.norm(normal)
        distance = grid @ normal
        order = np.argsort(distance)[::-1]
        kept_mass = np.cumsum(mass[order]) / max(mass.sum(), 1e-12)
        target = rng.uniform(*config.fragment_kept_fraction)
        cut = distance[order][min(int(np.searchsorted(kept_mass, target)), len(order) - 1)]
        keep = 1.0 / (1.0 + np.exp(-(distance - cut)))  # a one-voxel soft edge: no aliasing at the break
        fragment = (mass * keep).reshape(volume.shape)
        # Centre the fragment on its own mass, so the listed decoy position is where the fragment is.
        centroid = np.asarray(ndimage.center_of_mass(fragment)) - side // 2
        fragment = ndimage.shift(fragment, -centroid, order=1, mode="constant")
        projectors.append(_Projector(np.clip(fragment, 0.0, None).astype(np.float32), pixel))
    return projectors


def _aggregate_projection(
    rng: np.random.Generator, diameter_px: float, pixel: float, protein_z_density: float, config: SimulationConfig
) -> np.ndarray:
    """Projected atomic number per Å² of an amorphous protein clump (denatured or aggregated protein).

    An irregular lumpy ball of diameter ``aggregate_diameter_fraction`` × the particle's, filled with protein at
    ``aggregate_packing`` of a folded protein's density (``protein_z_density``, measured on the particle's map)."""
    size = rng.uniform(*config.aggregate_diameter_fraction) * diameter_px
    half = int(size) + 4
    rows, cols = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    stretch = rng.uniform(0.7, 1.0)  # clumps are not round
    turn = rng.uniform(0, np.pi)
    u = np.cos(turn) * cols + np.sin(turn) * rows
    v = (-np.sin(turn) * cols + np.cos(turn) * rows) / stretch
    radial = np.hypot(u, v) / (size / 2)
    lumps = _smooth_field(rng, radial.shape, max(size / 8, 1.0))
    shape_field = np.clip(1.0 - radial**2 + 0.3 * lumps, 0.0, None)
    chord = size * pixel * np.sqrt(shape_field)  # Å of clump along the beam (a ball's chord, lumpy)
    texture = np.clip(1.0 + 0.4 * _smooth_field(rng, radial.shape, 1.5), 0.0, None)
    return (chord * texture * rng.uniform(*config.aggregate_packing) * protein_z_density).astype(np.float32)


def _protein_z_density(volume: np.ndarray) -> float:
    """Mean atomic number per Å³ inside the particle's envelope (voxels above a tenth of the map's peak)."""
    inside = volume > 0.1 * float(volume.max())
    return float(volume[inside].mean()) if inside.any() else 0.0


@dataclass
class _DecoySources:
    """What a dataset's decoys are made from: broken copies of the particle and the protein's density."""

    fragments: list[_Projector]
    protein_z_density: float  # atomic number per Å³ inside the particle


def _decoy_counts(rng: np.random.Generator, particles: int, config: SimulationConfig) -> tuple[int, int]:
    fragments = int(round(particles * rng.uniform(*config.fragments_per_particle)))
    aggregates = int(round(particles * rng.uniform(*config.aggregates_per_particle)))
    return fragments, aggregates


# --- one micrograph ------------------------------------------------------------------------------------------


@dataclass
class _Scene:
    clean_counts: np.ndarray  # expected counts at 100% dose, image-sized
    mask: np.ndarray
    particles: pd.DataFrame  # x, y (image pixels), angles, defocus, for centres inside the image
    decoys: pd.DataFrame  # x, y (image pixels), kind, for centres inside the image


def _render_scene(
    rng: np.random.Generator, projector: _Projector, diameter_px: float, config: SimulationConfig, name: str,
    decoy_sources: _DecoySources, decoy_rng: np.random.Generator,
) -> _Scene:
    """One micrograph's scene. Decoys draw from ``decoy_rng`` only, so with none asked for the scene is the
    version-1 simulator's, bit for bit."""
    ny, nx = config.size_px
    pixel = config.pixel_size_angstrom
    margin = projector.side // 2 + 16
    canvas_shape = (fft.next_fast_len(ny + 2 * margin), fft.next_fast_len(nx + 2 * margin))
    top = (canvas_shape[0] - ny) // 2
    left = (canvas_shape[1] - nx) // 2
    specimen, _ = _ice_and_supports(rng, canvas_shape, config, decoy_rng)

    area_scale = (ny * nx) / REFERENCE_FIELD_PX**2
    canvas_scale = (canvas_shape[0] * canvas_shape[1]) / (ny * nx)
    per_field = rng.uniform(*config.particles_per_micrograph) * area_scale
    count = int(round(per_field * canvas_scale))
    n_fragments, n_aggregates = _decoy_counts(decoy_rng, count, config)
    fragments = decoy_sources.fragments  # empty exactly when no fragments are asked for (n_fragments is 0)
    border = projector.side / 2 + 1
    # Particles and decoys share one placement (decoys sit among and against particles), then get their roles.
    placed = _place_particles(rng, count + n_fragments + n_aggregates, specimen.mask == MASK_NONE, diameter_px,
                              config, border)
    roles = decoy_rng.permutation(np.repeat([0, 1, 2], [count, n_fragments, n_aggregates]))[: len(placed)]
    centres = placed[roles == 0]
    rotations = Rotation.random(len(centres), random_state=rng) if len(centres) else None

    particle_phase = np.zeros(canvas_shape, dtype=np.float32)
    if rotations is not None:
        integer = np.floor(centres).astype(int)
        fraction = centres - integer  # (row, col) sub-pixel part
        shifts = fraction[:, ::-1]  # (x, y)
        projections = projector.project(rotations.as_matrix(), shifts)
        half = projector.side // 2
        for (row, col), projection in zip(integer, projections, strict=True):
            particle_phase[row - half : row - half + projector.side, col - half : col - half + projector.side] += (
                projection
            )
    half = projector.side // 2
    for fragment_centre in placed[roles == 1]:
        fragment = fragments[int(decoy_rng.integers(len(fragments)))]
        row, col = np.floor(fragment_centre).astype(int)
        shift = (fragment_centre - np.floor(fragment_centre))[::-1][None, :]
        image = fragment.project(Rotation.random(random_state=decoy_rng).as_matrix()[None], shift)[0]
        particle_phase[row - half : row - half + fragment.side, col - half : col - half + fragment.side] += image
    for clump_centre in placed[roles == 2]:
        clump = _aggregate_projection(decoy_rng, diameter_px, pixel, decoy_sources.protein_z_density, config)
        row, col = np.floor(clump_centre).astype(int)
        h = clump.shape[0] // 2
        r0, c0 = max(row - h, 0), max(col - h, 0)
        r1, c1 = min(row + h + 1, canvas_shape[0]), min(col + h + 1, canvas_shape[1])
        particle_phase[r0:r1, c0:c1] += clump[r0 - (row - h) : r1 - (row - h), c0 - (col - h) : c1 - (col - h)]
    particle_phase *= phase_per_atomic_number(config.voltage_kv) * config.protein_contrast_scale

    amplitude_contrast_ratio = config.amplitude_contrast / math.sqrt(1.0 - config.amplitude_contrast**2)
    phase = specimen.phase + particle_phase
    absorption = specimen.absorption + amplitude_contrast_ratio * particle_phase
    exit_wave = np.exp(1j * phase - absorption).astype(np.complex64)

    mean_defocus = rng.uniform(*config.defocus_range_um) * 1e4
    astigmatism = rng.uniform(0, config.astigmatism_max_um) * 1e4
    defocus_u, defocus_v = mean_defocus + astigmatism, mean_defocus - astigmatism
    defocus_angle = rng.uniform(-90.0, 90.0)
    transfer = ctf_wave_transfer(canvas_shape, pixel, defocus_u, defocus_v, defocus_angle, config)
    image_wave = fft.ifft2(fft.fft2(exit_wave, workers=-1) * transfer, workers=-1)
    intensity = (image_wave.real**2 + image_wave.imag**2).astype(np.float32)
    intensity = fft.irfft2(
        fft.rfft2(intensity, workers=-1) * pixel_integration_transfer(canvas_shape)[:, : canvas_shape[1] // 2 + 1],
        s=canvas_shape, workers=-1,
    )
    counts_per_pixel = config.total_dose_e_per_a2 * pixel**2 * config.detective_quantum_efficiency
    clean = np.clip(intensity[top : top + ny, left : left + nx], 0.0, None) * counts_per_pixel

    rows = centres[:, 0] - top
    cols = centres[:, 1] - left
    inside = (rows >= 0) & (rows <= ny - 1) & (cols >= 0) & (cols <= nx - 1)
    angles = rotations.as_euler("ZYZ", degrees=True) if rotations is not None else np.zeros((0, 3))
    particles = pd.DataFrame(
        {
            "micrograph": name,
            "x": cols[inside],
            "y": rows[inside],
            "angle_rot": angles[inside, 0],
            "angle_tilt": angles[inside, 1],
            "angle_psi": angles[inside, 2],
            "defocus_u": defocus_u,
            "defocus_v": defocus_v,
            "defocus_angle": defocus_angle,
        }
    )
    mask = specimen.mask[top : top + ny, left : left + nx].copy()
    kinds = np.concatenate([np.where(roles[roles > 0] == 1, DECOY_KINDS[0], DECOY_KINDS[1]),
                            np.full(len(specimen.ice_crystals), DECOY_KINDS[2])]).astype(str)
    where = np.concatenate([placed[roles > 0], specimen.ice_crystals]) - np.array([top, left])
    inside = (where[:, 0] >= 0) & (where[:, 0] <= ny - 1) & (where[:, 1] >= 0) & (where[:, 1] <= nx - 1)
    decoys = pd.DataFrame({"micrograph": name, "x": where[inside, 1], "y": where[inside, 0], "kind": kinds[inside]})
    return _Scene(clean.astype(np.float32), mask, particles, decoys)


def _dose_increments(
    clean: np.ndarray, fractions: list[float], config: SimulationConfig, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per dose interval (ascending): Poisson signal+noise counts and the negative half of the detector noise.

    Detector noise is Skellam (difference of two Poisson counts): zero-mean, integer, and its sum over frames
    is again Skellam, so every dose and every frame stays an exact sum of integers.
    """
    detector_rate = 0.5 * config.readout_noise_counts**2
    expected = clean.astype(np.float64)
    increments = []
    previous = 0.0
    for fraction in fractions:
        share = fraction - previous
        positive = rng.poisson(expected * share + detector_rate * share)
        negative = rng.poisson(detector_rate * share, size=clean.shape)
        increments.append((positive, negative))
        previous = fraction
    return increments


def _sorted_fractions(config: SimulationConfig) -> list[float]:
    fractions = sorted(set(float(f) for f in config.dose_fractions))
    if not fractions or fractions[0] <= 0 or fractions[-1] != 1.0:
        raise UserInputError(None, "dose_fractions must be in (0, 1] and include 1.0 (the full dose)")
    return fractions


def dose_key(fraction: float) -> str:
    """Folder/key name of a dose fraction: 0.1 -> ``dose_010``."""
    return DOSE_KEY_FORMAT.format(int(round(fraction * 100)))


def _seeds(config: SimulationConfig, index: int) -> tuple[np.random.SeedSequence, ...]:
    """Independent streams (scene, dose noise, labels, frames) for micrograph ``index``: the same micrograph
    comes out whatever ``n_micrographs`` is."""
    return tuple(np.random.SeedSequence([config.seed, index]).spawn(4))


#: Largest micrograph side simulated (px): a 16k² field at four doses already needs ~5 GB; a typo of a zero more
#: would ask for terabytes.
MAX_SIZE_PX = 16384
#: Smallest micrograph side simulated (px).
MIN_SIZE_PX = 32


def _validate(config: SimulationConfig) -> None:
    checks = [
        (isinstance(config.seed, (int, np.integer)) and config.seed >= 0, "seed must be a whole number >= 0"),
        (config.n_micrographs >= 1, "n_micrographs must be >= 1"),
        (min(config.size_px) >= MIN_SIZE_PX, f"size must be at least {MIN_SIZE_PX} px"),
        (max(config.size_px) <= MAX_SIZE_PX, f"size must be at most {MAX_SIZE_PX} px"),
        (config.pixel_size_angstrom > 0, "pixel_size_angstrom must be > 0"),
        (config.total_dose_e_per_a2 > 0, "total_dose_e_per_a2 must be > 0"),
        (0 <= config.amplitude_contrast < 1, "amplitude_contrast must be in [0, 1)"),
        (config.particles_per_micrograph[0] <= config.particles_per_micrograph[1], "particles range reversed"),
        (0 < config.labelled_fraction[0] <= config.labelled_fraction[1] <= 1, "labelled_fraction in (0, 1]"),
        (config.readout_noise_counts >= 0, "readout_noise_counts must be >= 0"),
        (0 <= config.fragments_per_particle[0] <= config.fragments_per_particle[1],
         "fragments_per_particle must be a range (low <= high) of values >= 0"),
        (0 < config.fragment_kept_fraction[0] <= config.fragment_kept_fraction[1] < 1,
         "fragment_kept_fraction must be a range inside (0, 1)"),
        (0 <= config.aggregates_per_particle[0] <= config.aggregates_per_particle[1],
         "aggregates_per_particle must be a range (low <= high) of values >= 0"),
        (0 < config.aggregate_diameter_fraction[0] <= config.aggregate_diameter_fraction[1],
         "aggregate_diameter_fraction must be a range of values > 0"),
        (0 < config.aggregate_packing[0] <= config.aggregate_packing[1] <= 1,
         "aggregate_packing must be a range inside (0, 1]"),
        (0 <= config.ice_crystals_per_micrograph[0] <= config.ice_crystals_per_micrograph[1],
         "ice_crystals_per_micrograph must be a range (low <= high) of counts >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserInputError(None, message)
    _sorted_fractions(config)


def _partial_labels(
    rng: np.random.Generator, particles: pd.DataFrame, diameter_px: float, config: SimulationConfig
) -> pd.DataFrame:
    """A user's picks: 40-80% of the particles inside one square region, away from the edge, with click error."""
    ny, nx = config.size_px
    radius = diameter_px / 2
    inside_image = (
        (particles["x"] >= radius) & (particles["x"] <= nx - 1 - radius)
        & (particles["y"] >= radius) & (particles["y"] <= ny - 1 - radius)
    )
    candidates = particles[inside_image]
    if config.label_region_px is not None:
        side = config.label_region_px * min(ny, nx) / REFERENCE_FIELD_PX
        side = min(side, ny, nx)
        y0 = rng.uniform(0, ny - side)
        x0 = rng.uniform(0, nx - side)
        in_region = (candidates["x"] >= x0) & (candidates["x"] < x0 + side)
        in_region &= (candidates["y"] >= y0) & (candidates["y"] < y0 + side)
        candidates = candidates[in_region]
    fraction = rng.uniform(*config.labelled_fraction)
    n_labels = int(round(fraction * len(candidates)))
    chosen = np.sort(rng.choice(len(candidates), size=n_labels, replace=False)) if n_labels else np.array([], int)
    picked = candidates.iloc[chosen][["micrograph", "x", "y"]].reset_index(drop=True)
    jitter = rng.normal(0, config.label_jitter_fraction * diameter_px, size=(len(picked), 2))
    picked["x"] = np.clip(picked["x"] + jitter[:, 0], 0, nx - 1)
    picked["y"] = np.clip(picked["y"] + jitter[:, 1], 0, ny - 1)
    return picked


def micrograph_names(n_micrographs: int) -> list[str]:
    return [f"mic_{index:04d}" for index in range(n_micrographs)]


def simulate(
    n_micrographs: int = 8,
    size: int | tuple[int, int] = 1024,
    seed: int = 0,
    preset: str = "ribosome",
    config: SimulationConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimulatedDataset:
    """Simulate micrographs of one particle at several dose fractions, with ground truth and partial labels.

    Parameters
    ----------
    n_micrographs, size, seed, preset
        Shorthands for the same fields of ``config``; ignored when ``config`` is given.
        ``size`` is one side (square) or ``(height, width)`` in pixels.
    config
        Every parameter (see :class:`SimulationConfig`); ``SimulationConfig.for_preset(preset, **changes)``.
    progress
        Called as ``progress(done, total)`` after each micrograph.

    Returns
    -------
    SimulatedDataset
        Micrographs per dose (counts per pixel), clean images, masks, truth and partial labels.
        Deterministic: the same config gives bit-identical output.
    """
    if config is None:
        shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        config = SimulationConfig.for_preset(preset, seed=seed, n_micrographs=n_micrographs, size_px=shape)
    config = dataclasses.replace(config, size_px=tuple(int(s) for s in config.size_px))
    _validate(config)
    density, voxel, provenance = load_structure(config.preset)
    volume = _resample_volume(density, voxel, config.pixel_size_angstrom)
    projector = _Projector(volume, config.pixel_size_angstrom)
    decoy_sources = _DecoySources(_fragment_projectors(volume, config.pixel_size_angstrom, config),
                                  _protein_z_density(volume))
    diameter_px = float(provenance["diameter_angstrom"]) / config.pixel_size_angstrom
    fractions = _sorted_fractions(config)
    pixel = config.pixel_size_angstrom

    micrographs: dict[str, list[Micrograph]] = {dose_key(f): [] for f in sorted(fractions, reverse=True)}
    clean_images: list[Micrograph] = []
    masks: list[np.ndarray] = []
    truths: list[pd.DataFrame] = []
    labels: list[pd.DataFrame] = []
    decoys: list[pd.DataFrame] = []
    names = micrograph_names(config.n_micrographs)
    for index, name in enumerate(names):
        scene_seed, noise_seed, label_seed, _ = _seeds(config, index)
        scene = _render_scene(np.random.default_rng(scene_seed), projector, diameter_px, config, name, decoy_sources,
                              np.random.default_rng(scene_seed.spawn(1)[0]))
        increments = _dose_increments(scene.clean_counts, fractions, config, np.random.default_rng(noise_seed))
        total = np.zeros(config.size_px, dtype=np.int64)
        for fraction, (positive, negative) in zip(fractions, increments, strict=True):
            total += positive - negative
            micrographs[dose_key(fraction)].append(Micrograph(total.astype(np.float32), pixel, name))
        clean_images.append(Micrograph(scene.clean_counts, pixel, name))
        masks.append(scene.mask)
        truths.append(scene.particles)
        decoys.append(scene.decoys)
        labels.append(_partial_labels(np.random.default_rng(label_seed), scene.particles, diameter_px, config))
        if progress is not None:
            progress(index + 1, len(names))

    return SimulatedDataset(
        config=config,
        micrographs=micrographs,
        clean=clean_images,
        masks=masks,
        truth=pd.concat(truths, ignore_index=True),
        labels=pd.concat(labels, ignore_index=True),
        particle_diameter_px=diameter_px,
        structure=provenance,
        decoys=pd.concat(decoys, ignore_index=True),
    )


# --- writing -------------------------------------------------------------------------------------------------


def dose_frames(dataset: SimulatedDataset, index: int, frames: int) -> np.ndarray:
    """The ``frames`` movie frames (counts) of micrograph ``index`` whose cumulative sums are its doses.

    The per-interval counts are redrawn from the same seed as in :func:`simulate` (so they are identical)
    and split evenly among the interval's frames; a split Poisson count is again Poisson, so the frames are
    distributed exactly as independent exposures.
    """
    config = dataset.config
    fractions = _sorted_fractions(config)
    frame_edges = [fraction * frames for fraction in fractions]
    if frames < 1 or any(abs(edge - round(edge)) > 1e-9 for edge in frame_edges):
        raise UserInputError(
            None, f"frames={frames} cannot hold the dose fractions {fractions} exactly: use a multiple of "
            f"{_frames_multiple(fractions)}"
        )
    _, noise_seed, _, split_seed = _seeds(config, index)
    increments = _dose_increments(dataset.clean[index].data, fractions, config, np.random.default_rng(noise_seed))
    split_rng = np.random.default_rng(split_seed)
    stack = np.empty((frames, *config.size_px), dtype=np.float32)
    first = 0
    for edge, (positive, negative) in zip(frame_edges, increments, strict=True):
        last = int(round(edge))
        n_frames = last - first
        share = np.full(n_frames, 1.0 / n_frames)
        split_positive = split_rng.multinomial(positive, share)
        split_negative = split_rng.multinomial(negative, share)
        stack[first:last] = np.moveaxis(split_positive - split_negative, -1, 0)
        first = last
    return stack


def _frames_multiple(fractions: list[float]) -> int:
    for candidate in range(1, 1001):
        if all(abs(f * candidate - round(f * candidate)) < 1e-9 for f in fractions):
            return candidate
    return 1000


def _star_table(table: pd.DataFrame, with_truth: bool) -> pd.DataFrame:
    star = pd.DataFrame(
        {
            "rlnMicrographName": table["micrograph"].astype(str) + ".mrc",
            "rlnCoordinateX": table["x"].astype(float),
            "rlnCoordinateY": table["y"].astype(float),
        }
    )
    if with_truth:
        star["rlnAngleRot"] = table["angle_rot"].astype(float)
        star["rlnAngleTilt"] = table["angle_tilt"].astype(float)
        star["rlnAnglePsi"] = table["angle_psi"].astype(float)
        star["rlnDefocusU"] = table["defocus_u"].astype(float)
        star["rlnDefocusV"] = table["defocus_v"].astype(float)
        star["rlnDefocusAngle"] = table["defocus_angle"].astype(float)
    return star


def write_dataset(dataset: SimulatedDataset, out_dir: Path, overwrite: bool = False, frames: int = 0) -> None:
    """Write the dataset as a user would receive real data, plus the truth (layout in docs/simulation.md).

    ``OUT/dose_100/ dose_060/ dose_020/ dose_010/`` hold ``mic_NNNN.mrc`` (counts, pixel size in the header);
    ``OUT/clean/``, ``OUT/masks/`` (uint8 values written as float), ``OUT/truth.star``, ``OUT/labels.star``,
    ``OUT/decoys.csv`` (objects that are not particles), ``OUT/simulation.yaml``; with ``frames > 0`` also
    ``OUT/frames/mic_NNNN.mrcs``. Every file is written atomically.
    """
    import starfile
    import yaml

    from cryojoint._atomic import atomic_path
    from cryojoint.io.mrc import write_mrc

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(out_dir, "exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserInputError(out_dir, "folder is not empty (pass --overwrite to replace its simulation)")
    if frames:
        _check_frames(dataset.config, frames)
    pixel = dataset.config.pixel_size_angstrom
    for key, images in dataset.micrographs.items():
        for image in images:
            write_mrc(out_dir / key / f"{image.name}.mrc", image.data, pixel, overwrite=True)
    for index, (image, mask) in enumerate(zip(dataset.clean, dataset.masks, strict=True)):
        write_mrc(out_dir / "clean" / f"{image.name}.mrc", image.data, pixel, overwrite=True)
        write_mrc(out_dir / "masks" / f"{image.name}.mrc", mask.astype(np.float32), pixel, overwrite=True)
        if frames:
            write_mrc(out_dir / "frames" / f"{image.name}.mrcs", dose_frames(dataset, index, frames), pixel)
    for filename, table, with_truth in (("truth.star", dataset.truth, True), ("labels.star", dataset.labels, False)):
        with atomic_path(out_dir / filename, overwrite=True) as tmp:
            starfile.write(_star_table(table, with_truth), tmp, overwrite=True)
    with atomic_path(out_dir / "decoys.csv", overwrite=True) as tmp:
        dataset.decoys[["micrograph", "x", "y", "kind"]].to_csv(tmp, index=False, float_format="%.3f")
    summary = {
        "config": dataset.config.to_dict(),
        "particle_diameter_px": round(dataset.particle_diameter_px, 3),
        "image_units": "counts: detected electrons per pixel (clean = expected counts at 100% dose)",
        "mask_values": {int(k): v for k, v in MASK_NAMES.items()},
        "frames": frames,
        "structure": dataset.structure,
        "n_truth_particles": len(dataset.truth),
        "n_labels": len(dataset.labels),
        "n_decoys": {kind: int((dataset.decoys["kind"] == kind).sum()) for kind in DECOY_KINDS},
    }
    with atomic_path(out_dir / "simulation.yaml", overwrite=True) as tmp:
        tmp.write_text(yaml.safe_dump(summary, sort_keys=False, allow_unicode=True))


def _check_frames(config: SimulationConfig, frames: int) -> None:
    fractions = _sorted_fractions(config)
    if frames < 0:
        raise UserInputError(None, f"--frames must be 0 (no movies) or a positive multiple of "
                             f"{_frames_multiple(fractions)}, got {frames}")
    if any(abs(f * frames - round(f * frames)) > 1e-9 for f in fractions):
        raise UserInputError(
            None, f"frames={frames} cannot hold the dose fractions {fractions} exactly: use a multiple of "
            f"{_frames_multiple(fractions)}"
        )


def simulate_to_folder(
    out_dir: str | Path,
    n_micrographs: int = 16,
    size: int = 1024,
    seed: int = 0,
    preset: str = "ribosome",
    frames: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """What ``cryojoint simulate`` does: check the output first, simulate with a progress bar, write, summarise."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(out_dir, "exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserInputError(out_dir, "folder is not empty (pass --overwrite to replace its simulation)")
    if n_micrographs < 1:
        raise UserInputError(None, "--micrographs must be at least 1")
    if preset not in list_presets():
        raise UserInputError(None, f"unknown preset '{preset}' (known: {', '.join(list_presets())})")
    if frames:  # before the long part, not after it
        _check_frames(SimulationConfig.for_preset(preset), frames)
    if not MIN_SIZE_PX <= size <= MAX_SIZE_PX:
        raise UserInputError(None, f"--size must be {MIN_SIZE_PX} to {MAX_SIZE_PX} px, got {size}")
    from cryojoint.progress import counted_progress

    with counted_progress(n_micrographs, progress, "simulate") as advance:
        dataset = simulate(n_micrographs, size, seed, preset, progress=lambda done, total: advance())
    write_dataset(dataset, out_dir, overwrite=overwrite, frames=frames)
    if dataset.labels.empty:
        warnings.warn(f"no particle is labelled in {n_micrographs} micrograph(s) of {size} px ({preset}: "
                      f"{dataset.particle_diameter_px:.0f} px particles, {len(dataset.truth)} in all): training needs "
                      "labels; simulate larger or more micrographs (e.g. --size 512)", UserWarning, stacklevel=2)
    return (f"wrote {n_micrographs} micrograph(s) x {len(dataset.micrographs)} doses to {out_dir}: "
            f"{len(dataset.truth)} particles (diameter {dataset.particle_diameter_px:.0f} px), "
            f"{len(dataset.labels)} labelled in labels.star, {len(dataset.decoys)} decoys (not particles) in "
            "decoys.csv")
