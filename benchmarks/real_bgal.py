"""Real micrographs with reference picks: EMPIAR-10017 β-galactosidase from the CryoSegNet repository.

::

    python -m benchmarks.real_bgal --cache benchmarks/.cache                     # snapshot found under /work/.mirror
    python -m benchmarks.real_bgal --cache benchmarks/.cache --snapshot GIT_DIR  # a bare clone of CryoSegNet

Every simulated figure of the benchmark comes from our own simulator; these 20 micrographs are the real check
of picking. The repository ``jianlin-cheng/CryoSegNet`` (MIT; EMPIAR data are CC0) holds them as 4096² 8-bit
JPGs with one mask per micrograph (a filled 108 px disc per particle). This module reads them from a bare git
snapshot (``git show HEAD:<path>``, nothing downloaded here), takes the particle centres from the masks (a circle
Hough transform with the known disc radius: touching discs stay apart), bins 4× to 1024² at 7.08 Å/px,
draws partial labels as a user gives them, and writes everything with the commit it came from into
``<cache>/data/real-bgal-<commit[:8]>/`` (atomically, once).

Caveats (``../shared/data-sources.md``): the JPGs are CryoSegNet's *filtered* images, not raw exposures, so
they test picking only (no clean or full-dose image exists: denoising rows do not apply); they are y-flipped
relative to the EMPIAR MRC files, and everything here stays in the JPG's frame, where the given picks lie.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from benchmarks.suite.datasets import DoseData
from benchmarks.suite.profiles import REAL_DOSE
from scipy import ndimage, signal
from scipy.spatial import cKDTree

from cryojoint.imaging import bin_image, to_binned_coordinates
from cryojoint.io.coords import make_table, read_coordinates, write_coordinates
from cryojoint.io.mrc import read_micrograph, write_mrc

REPO_ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------ source

SOURCE_REPOSITORY = "jianlin-cheng/CryoSegNet"
#: Where the agent's ``fetch`` tool leaves snapshots (``owner+name`` folders holding a bare git dir).
DEFAULT_MIRROR_ROOT = Path("/work/.mirror")
MIRROR_GLOB = "jianlin-cheng+CryoSegNet*"
IMAGE_DIR = "finetune_dataset/images"
MASK_DIR = "finetune_dataset/masks"
MASK_SUFFIX = "_mask.jpg"
#: The one micrograph with picks given as coordinates (629 picks), used to measure the centre extraction.
GIVEN_PICKS_PATH = "finetune_dataset/sample.star"
NAME_PREFIX = "Falcon_2012_06_12-"
EXPECTED_MICROGRAPHS = 20
GET_SNAPSHOT_HINT = (f"get one with the fetch tool (source github:{SOURCE_REPOSITORY}) or "
                     f"`git clone --bare https://github.com/{SOURCE_REPOSITORY} DIR`, then pass --snapshot DIR")
DEFAULT_CACHE = REPO_ROOT / "benchmarks" / ".cache"
DATASET_PREFIX = "real-bgal"
FACTS_NAME = "benchmark_dataset.json"
COMMIT_PREFIX_CHARS = 8

# ------------------------------------------------------------------------------------------------ geometry

#: EMPIAR-10017's pixel size (Å/px) at the JPGs' full size (Falcon II, 4096²).
FULL_PIXEL_SIZE_ANGSTROM = 1.77
#: Block-mean binning: 4096² -> 1024², 7.08 Å/px, particle ≈ 27 px (our models' working range).
BIN_FACTOR = 4
PIXEL_SIZE_ANGSTROM = FULL_PIXEL_SIZE_ANGSTROM * BIN_FACTOR
#: Particle diameter (px, full size) CryoSegNet drew its mask discs with (``Diameter`` column of its CSVs).
MASK_DIAMETER_PX = 108
#: ``cv2.circle(mask, (x, y), int(diameter / 2), 255, -1)`` in CryoSegNet's utils/generate_masks.py.
DISC_RADIUS_PX = MASK_DIAMETER_PX // 2
PARTICLE_DIAMETER_PX = MASK_DIAMETER_PX / BIN_FACTOR

# ------------------------------------------------------------------------------------- centre extraction

#: 8-bit grey level between the JPEG mask's two modes (0 and 255; compression ringing stays within ±30).
MASK_THRESHOLD = 128
#: Width (px, Gaussian sigma) of the ring each rim pixel votes along: the JPEG edge wanders by about a pixel.
RING_SIGMA_PX = 1.0
#: Ring kernel reaches this many sigmas past the radius.
RING_HALF_WIDTH_SIGMAS = 3.0
#: A centre's disc must fit inside the mask up to this many px (thresholded JPEG edges move by ~1 px).
FIT_TOLERANCE_PX = 2.0
#: Least share of an isolated disc's rim votes a centre needs: a disc in a cluster shows part of its rim
#: (on the micrograph with given picks the least visible true disc kept 22 %).
MIN_VISIBLE_RIM_FRACTION = 0.1
#: Least distance between two centres, as a fraction of the disc diameter. Given picks sit down to 54.6 px
#: (0.51 diameters) apart on the micrograph with picks and 11 % of them closer than 0.7 diameters, so the
#: brief's 0.7 would merge real neighbours; the Hough votes need no wide suppression.
MIN_SEPARATION_DIAMETERS = 0.45
#: Agreement radius (px, full size) between given picks and extracted centres (the data-sources recipe).
AGREEMENT_RADIUS_PX = 20.0

# ------------------------------------------------------------------------------------------------ labels

N_TRAIN = 10
#: Side of the labelled square as a fraction of the field's side.
LABEL_REGION_FRACTION = 1.0 / 3.0
#: Share of the particles inside the region that are labelled (a user picks some, not all).
LABEL_FRACTION = 0.5
LABEL_SEED = 0
LABEL_RULE = (f"training micrographs only: a square of side {LABEL_REGION_FRACTION:.3g} × the field, corner drawn "
              f"uniformly with numpy default_rng([seed, index of the micrograph in sorted order]); "
              f"round({LABEL_FRACTION} × particles whose centre lies inside) of those particles, drawn by the "
              f"same generator, are labelled; the rest of the micrograph is unlabelled")
SPLIT_RULE = f"names sorted; first {N_TRAIN} train, the rest test (time order of acquisition)"

# ------------------------------------------------------------------------------------------------ figures

#: Micrographs drawn for a reviewer: the first training and the first test micrograph.
FIGURE_COUNT = 2
FIGURE_DPI = 110
FIGURE_INCHES = 9.0
#: Side (binned px) of the zoomed panel beside the whole field.
ZOOM_SIDE_PX = 256
#: Display range of the grey image (percentiles).
DISPLAY_PERCENTILES = (1.0, 99.0)


class SnapshotMissing(Exception):
    """No readable CryoSegNet snapshot: the data cannot be prepared (one line for the user)."""


# ============================================================================================== snapshot


def find_snapshot(mirror_root: Path = DEFAULT_MIRROR_ROOT) -> Path:
    """The bare git dir of a CryoSegNet snapshot under ``mirror_root`` (``owner+name*/`` or its ``repo/``)."""
    for folder in sorted(mirror_root.glob(MIRROR_GLOB)) if mirror_root.is_dir() else []:
        for candidate in (folder, folder / "repo"):
            if _is_git_dir(candidate):
                return candidate
    raise SnapshotMissing(f"no snapshot of {SOURCE_REPOSITORY} under {mirror_root}/{MIRROR_GLOB}; "
                          f"{GET_SNAPSHOT_HINT}")


def _is_git_dir(path: Path) -> bool:
    if not (path / "HEAD").is_file():
        return False
    done = subprocess.run(["git", "--git-dir", str(path), "rev-parse", "--verify", "HEAD"],
                          capture_output=True, text=True)
    return done.returncode == 0


@dataclass(frozen=True)
class Snapshot:
    """Read-only access to one commit of a bare git directory (no work tree, no network)."""

    git_dir: Path

    def _git(self, *args: str) -> bytes:
        done = subprocess.run(["git", "--git-dir", str(self.git_dir), *args], capture_output=True)
        if done.returncode != 0:
            raise SnapshotMissing(f"{self.git_dir}: git {' '.join(args)} failed: "
                                  f"{done.stderr.decode(errors='replace').strip()}")
        return done.stdout

    @property
    def commit(self) -> str:
        return self._git("rev-parse", "HEAD").decode().strip()

    def commit_date(self) -> str:
        return self._git("log", "-1", "--format=%cI", "HEAD").decode().strip()

    def list_files(self, folder: str) -> list[str]:
        return sorted(self._git("ls-tree", "--name-only", "HEAD", f"{folder}/").decode().split())

    def blob_id(self, path: str) -> str:
        return self._git("rev-parse", f"HEAD:{path}").decode().strip()

    def read(self, path: str) -> bytes:
        return self._git("show", f"HEAD:{path}")


def open_snapshot(snapshot: Path | None) -> Snapshot:
    """The given git dir, or the one found under the mirror; fails with one line saying how to get one."""
    git_dir = find_snapshot() if snapshot is None else Path(snapshot)
    if not _is_git_dir(git_dir):
        raise SnapshotMissing(f"{git_dir} is not a git directory of {SOURCE_REPOSITORY}; {GET_SNAPSHOT_HINT}")
    return Snapshot(git_dir)


def micrograph_names(snapshot: Snapshot) -> list[str]:
    """The 20 micrographs that have both an image and a mask, sorted (= acquisition time)."""
    images = {Path(p).stem for p in snapshot.list_files(IMAGE_DIR) if Path(p).name.startswith(NAME_PREFIX)}
    masks = {Path(p).name[: -len(MASK_SUFFIX)] for p in snapshot.list_files(MASK_DIR) if p.endswith(MASK_SUFFIX)}
    names = sorted(images & masks)
    if len(names) != EXPECTED_MICROGRAPHS:
        raise SnapshotMissing(f"{snapshot.git_dir}: expected {EXPECTED_MICROGRAPHS} image+mask pairs under "
                              f"{IMAGE_DIR} and {MASK_DIR}, found {len(names)} (an incomplete snapshot?)")
    return names


def decode_jpeg(data: bytes) -> np.ndarray:
    """8-bit greyscale array of a JPEG (Pillow, a matplotlib dependency)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


# ===================================================================================== centre extraction


def _ring_kernel(radius_px: float, sigma_px: float) -> np.ndarray:
    half = int(math.ceil(radius_px + RING_HALF_WIDTH_SIGMAS * sigma_px))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    return np.exp(-0.5 * ((np.hypot(xx, yy) - radius_px) / sigma_px) ** 2).astype(np.float32)


def _rim(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _isolated_disc_votes(radius_px: float, kernel: np.ndarray) -> float:
    """Votes a lone disc of this radius gets at its centre: the scale of 'whole rim visible'."""
    side = kernel.shape[0] + 2
    centre = side // 2
    yy, xx = np.mgrid[:side, :side]
    disc = np.hypot(xx - centre, yy - centre) <= radius_px
    return float(signal.fftconvolve(_rim(disc).astype(np.float32), kernel, mode="same")[centre, centre])


def disc_centres(mask: np.ndarray, radius_px: float = DISC_RADIUS_PX, *,
                 min_separation_px: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(n, 2)`` as (x, y) of the equal discs whose union is ``mask``, and each one's visible rim share.

    Why a circle Hough transform and not peaks of the distance transform: where three or more discs touch,
    the distance transform peaks *between* them (higher than any true centre) and suppresses them. Here every
    rim pixel votes for the points ``radius_px`` away; a centre must also have its whole disc inside the mask
    (distance transform ≥ radius − tolerance). Touching discs keep their own peaks. The mask is mirrored past
    the image border so discs cut by it are not mistaken for rims.
    """
    mask = np.asarray(mask, dtype=bool)
    min_separation_px = (MIN_SEPARATION_DIAMETERS * 2 * radius_px if min_separation_px is None
                         else min_separation_px)
    kernel = _ring_kernel(radius_px, RING_SIGMA_PX)
    pad = kernel.shape[0] // 2 + 1
    padded = np.pad(mask, pad, mode="symmetric")
    inside = ndimage.distance_transform_edt(padded)[pad:-pad, pad:-pad]
    votes = signal.fftconvolve(_rim(padded).astype(np.float32), kernel, mode="same")[pad:-pad, pad:-pad]
    votes /= _isolated_disc_votes(radius_px, kernel)
    peaks = ((votes == ndimage.maximum_filter(votes, size=3)) & (inside >= radius_px - FIT_TOLERANCE_PX)
             & (votes >= MIN_VISIBLE_RIM_FRACTION))
    ys, xs = np.nonzero(peaks)
    keep = _suppress(np.column_stack([xs, ys]).astype(float), votes[ys, xs], min_separation_px)
    centres = np.column_stack([xs, ys]).astype(float)[keep]
    return centres, votes[ys, xs][keep].astype(float)


def _suppress(points: np.ndarray, strength: np.ndarray, radius: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (strongest first, ties in raster order)."""
    if len(points) == 0:
        return np.zeros(0, dtype=int)
    order = np.argsort(-strength, kind="stable")
    tree = cKDTree(points)
    removed = np.zeros(len(points), dtype=bool)
    kept: list[int] = []
    for index in order:
        if removed[index]:
            continue
        kept.append(int(index))
        removed[tree.query_ball_point(points[index], radius)] = True
    return np.sort(np.asarray(kept, dtype=int))


def mask_from_jpeg(data: bytes) -> np.ndarray:
    return decode_jpeg(data) >= MASK_THRESHOLD


def reconstruction_iou(mask: np.ndarray, centres: np.ndarray, radius_px: float = DISC_RADIUS_PX) -> float:
    """Intersection over union of the mask and the discs drawn at ``centres``: do the centres explain it?"""
    seeds = np.ones(mask.shape, dtype=bool)
    rows = np.clip(np.rint(centres[:, 1]).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip(np.rint(centres[:, 0]).astype(int), 0, mask.shape[1] - 1)
    seeds[rows, cols] = False
    drawn = ndimage.distance_transform_edt(seeds) <= radius_px if len(centres) else np.zeros_like(mask)
    union = np.count_nonzero(mask | drawn)
    return float(np.count_nonzero(mask & drawn) / union) if union else 1.0


def agreement(given: np.ndarray, found: np.ndarray, radius_px: float = AGREEMENT_RADIUS_PX) -> dict[str, Any]:
    """Share of given picks with a found centre within ``radius_px``, and of found centres with a given pick."""
    if len(given) == 0 or len(found) == 0:
        return {"n_given": len(given), "n_found": len(found), "given_near_found": 0.0, "found_near_given": 0.0}
    to_found = cKDTree(found).query(given)[0]
    to_given = cKDTree(given).query(found)[0]
    matched = to_found[to_found <= radius_px]
    return {"n_given": int(len(given)), "n_found": int(len(found)), "radius_px": radius_px,
            "given_near_found": float(np.mean(to_found <= radius_px)),
            "found_near_given": float(np.mean(to_given <= radius_px)),
            "median_offset_px": float(np.median(matched)) if len(matched) else None,
            "max_offset_px": float(np.max(matched)) if len(matched) else None}


# ================================================================================================ labels


def split_names(names: Sequence[str], n_train: int = N_TRAIN) -> tuple[list[str], list[str]]:
    """Sorted names: the first ``n_train`` train, the rest test (fixed, so every tool sees the same split)."""
    ordered = sorted(names)
    return ordered[:n_train], ordered[n_train:]


def partial_labels(xy: np.ndarray, shape: tuple[int, int], seed: int, index: int,
                   region_fraction: float = LABEL_REGION_FRACTION) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Which particles a user labels: half of those inside one square region, drawn from ``(seed, index)``.

    Returns a boolean array over ``xy`` and the region ``(x0, y0, side)`` in the same pixels. The region (of
    ``region_fraction`` of the field's shorter side) is placed uniformly; a user labels some particles of one
    area and leaves the rest of the field unlabelled.
    """
    ny, nx = shape
    side = region_fraction * min(ny, nx)
    rng = np.random.default_rng([seed, index])
    x0 = float(rng.uniform(0.0, nx - side))
    y0 = float(rng.uniform(0.0, ny - side))
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    inside = np.flatnonzero((xy[:, 0] >= x0) & (xy[:, 0] < x0 + side) & (xy[:, 1] >= y0) & (xy[:, 1] < y0 + side))
    chosen = rng.choice(inside, size=int(round(LABEL_FRACTION * len(inside))), replace=False)
    labelled = np.zeros(len(xy), dtype=bool)
    labelled[chosen] = True
    return labelled, (x0, y0, side)


def bin_micrograph(image: np.ndarray, centres_xy: np.ndarray, factor: int = BIN_FACTOR
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Block-mean binned image (float32) and the centres in its pixels (pixel centres map to pixel centres)."""
    return bin_image(np.asarray(image, dtype=np.float32), factor), to_binned_coordinates(centres_xy, factor)


# =============================================================================================== prepare


def dataset_dir(cache: Path, commit: str) -> Path:
    return Path(cache) / "data" / f"{DATASET_PREFIX}-{commit[:COMMIT_PREFIX_CHARS]}"


def prepare(cache: Path, snapshot: Path | None = None, log: Callable[[str], None] = print,
            force: bool = False) -> Path:
    """Prepare the dataset once; returns its folder. Skips when ``benchmark_dataset.json`` already exists.

    Everything is written into a hidden sibling folder and renamed into place at the end, so an interrupted
    run leaves no half dataset that a later run would take as prepared.
    """
    source = open_snapshot(snapshot)
    commit = source.commit
    target = dataset_dir(cache, commit)
    if (target / FACTS_NAME).exists() and not force:
        log(f"already prepared: {target}")
        return target
    started = time.perf_counter()
    names = micrograph_names(source)
    train_names, test_names = split_names(names)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.part"
    (staging / "micrographs").mkdir(parents=True)
    try:
        facts = _prepare_into(staging, source, names, train_names, test_names, log)
        facts["seconds"] = round(time.perf_counter() - started, 1)
        (staging / FACTS_NAME).write_text(json.dumps(facts, indent=1))
        if target.exists():  # --force, or a folder left without its facts file
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    log(f"prepared {len(names)} micrographs in {facts['seconds']} s: {target}")
    return target


def _prepare_into(folder: Path, source: Snapshot, names: list[str], train_names: list[str],
                  test_names: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    truth_parts, label_parts, full_parts = [], [], []
    per_micrograph: dict[str, dict[str, Any]] = {}
    files: list[dict[str, str]] = []
    sample_found: np.ndarray | None = None
    given = _given_picks(source)
    for index, name in enumerate(names):
        image_path, mask_path = f"{IMAGE_DIR}/{name}.jpg", f"{MASK_DIR}/{name}{MASK_SUFFIX}"
        files += [{"path": image_path, "blob": source.blob_id(image_path)},
                  {"path": mask_path, "blob": source.blob_id(mask_path)}]
        image = decode_jpeg(source.read(image_path))
        mask = mask_from_jpeg(source.read(mask_path))
        if mask.shape != image.shape:
            raise SnapshotMissing(f"{mask_path}: shape {mask.shape} differs from its image's {image.shape}")
        centres, rim_share = disc_centres(mask)
        if name in set(given["micrograph"]):
            sample_found = centres
        binned, binned_xy = bin_micrograph(image, centres)
        write_mrc(folder / "micrographs" / f"{name}.mrc", binned, PIXEL_SIZE_ANGSTROM)
        truth_parts.append(make_table(name, binned_xy[:, 0], binned_xy[:, 1]))
        full_parts.append(make_table(name, centres[:, 0], centres[:, 1], rim_share))
        info: dict[str, Any] = {"split": "train" if name in train_names else "test", "n_truth": int(len(centres)),
                                "mask_reconstruction_iou": round(reconstruction_iou(mask, centres), 4),
                                "least_visible_rim": round(float(rim_share.min()), 3) if len(rim_share) else None}
        if name in train_names:
            labelled, region = partial_labels(binned_xy, binned.shape, LABEL_SEED, index)
            label_parts.append(make_table(name, binned_xy[labelled, 0], binned_xy[labelled, 1]))
            info.update({"n_labels": int(labelled.sum()), "label_region_x0_y0_side_px": [round(v, 2) for v in region]})
        per_micrograph[name] = info
        log(f"{index + 1}/{len(names)} {name}: {info['n_truth']} centres, labels {info.get('n_labels', '-')}, "
            f"mask IoU {info['mask_reconstruction_iou']}")
    truth = pd.concat(truth_parts, ignore_index=True)
    labels = pd.concat(label_parts, ignore_index=True)
    for table, stem in ((truth, "truth"), (labels, "labels")):
        write_coordinates(table, folder / f"{stem}.star")
        write_coordinates(table, folder / f"{stem}.csv")
    write_coordinates(pd.concat(full_parts, ignore_index=True), folder / "centres_full_size.csv")
    sample_name = str(given["micrograph"].iloc[0])
    measured = agreement(given[["x", "y"]].to_numpy(float), sample_found if sample_found is not None
                         else np.zeros((0, 2)))
    measured.update({"micrograph": sample_name, "given_picks": GIVEN_PICKS_PATH,
                     "mask_reconstruction_iou": per_micrograph[sample_name]["mask_reconstruction_iou"]})
    log(f"centre extraction vs {GIVEN_PICKS_PATH}: {measured['given_near_found']:.4f} of {measured['n_given']} given "
        f"picks within {AGREEMENT_RADIUS_PX:g} px of a centre, {measured['found_near_given']:.4f} of "
        f"{measured['n_found']} centres within {AGREEMENT_RADIUS_PX:g} px of a given pick")
    figure_names = [train_names[0], test_names[0]][:FIGURE_COUNT]
    for name in figure_names:
        draw_figure(folder, name, truth, labels, per_micrograph[name])
    counts = np.array([per_micrograph[n]["n_truth"] for n in names])
    ny, nx = binned.shape
    xy = truth[["x", "y"]].to_numpy(float)
    edge_gap = float(np.min(np.column_stack([xy, nx - 1 - xy[:, :1], ny - 1 - xy[:, 1:]])))
    return {
        "dataset": DATASET_PREFIX,
        "source": {"repository": SOURCE_REPOSITORY, "commit": source.commit, "commit_date": source.commit_date(),
                   "snapshot": str(source.git_dir), "files": files,
                   "licence": "MIT (repository); EMPIAR-10017 data CC0"},
        "empiar": "EMPIAR-10017 β-galactosidase, Falcon II",
        "caveats": ["images are CryoSegNet's filtered 8-bit JPGs (Gaussian, NLM, Wiener, CLAHE, guided filter), "
                    "not raw exposures: picking only, no clean or full-dose image",
                    "y-flipped relative to the EMPIAR MRC files; all coordinates are in the JPG's frame",
                    "truth = disc centres extracted from CryoSegNet's masks (given as coordinates for one micrograph)",
                    "the filtered images have a striped border about 20 binned px wide (a filter edge artefact) and "
                    f"no truth lies within {edge_gap:.1f} binned px of an edge: picks there can only be false "
                    "positives, for every method alike"],
        "names": names, "train_names": train_names, "test_names": test_names, "split_rule": SPLIT_RULE,
        "micrograph_dir": "micrographs", "full_size_px": list(image.shape), "bin_factor": BIN_FACTOR,
        "binning": "block mean (cryojoint.data.bin_image); coordinates (x + 0.5) / 4 - 0.5",
        "size_px": [int(s) for s in binned.shape], "full_pixel_size": FULL_PIXEL_SIZE_ANGSTROM,
        "pixel_size": PIXEL_SIZE_ANGSTROM, "particle_diameter_px": PARTICLE_DIAMETER_PX,
        "mask_diameter_full_size_px": MASK_DIAMETER_PX,
        "n_truth": int(len(truth)), "n_labels": int(len(labels)), "truth_min_distance_to_edge_px": edge_gap,
        "truth_per_micrograph": {"mean": float(counts.mean()), "min": int(counts.min()), "max": int(counts.max())},
        "label_rule": LABEL_RULE, "label_seed": LABEL_SEED, "label_region_fraction": LABEL_REGION_FRACTION,
        "label_fraction": LABEL_FRACTION,
        "centre_extraction": {
            "method": "circle Hough transform of the thresholded mask's rim with the known disc radius; a centre's "
                      "disc must fit inside the mask; greedy suppression by votes",
            "mask_threshold": MASK_THRESHOLD, "disc_radius_px": DISC_RADIUS_PX, "ring_sigma_px": RING_SIGMA_PX,
            "fit_tolerance_px": FIT_TOLERANCE_PX, "min_visible_rim_fraction": MIN_VISIBLE_RIM_FRACTION,
            "min_separation_px": MIN_SEPARATION_DIAMETERS * MASK_DIAMETER_PX,
            "agreement_with_given_picks": measured},
        "files_written": {"micrographs": "micrographs/<name>.mrc (float32, 0-255 grey levels binned)",
                          "truth": ["truth.star", "truth.csv"], "labels": ["labels.star", "labels.csv"],
                          "full_size_centres": "centres_full_size.csv (JPG pixels, score = visible rim share)",
                          "figures": [f"figures/{n}.png" for n in figure_names]},
        "per_micrograph": per_micrograph,
    }


def _given_picks(source: Snapshot) -> pd.DataFrame:
    """The given picks of the sample micrograph, read with cryojoint's STAR reader (``starfile``)."""
    with tempfile.TemporaryDirectory(prefix="real-bgal-") as tmp:
        path = Path(tmp) / Path(GIVEN_PICKS_PATH).name
        path.write_bytes(source.read(GIVEN_PICKS_PATH))
        return read_coordinates(path)


# =============================================================================================== figures


def draw_figure(folder: Path, name: str, truth: pd.DataFrame, labels: pd.DataFrame, info: dict[str, Any]) -> Path:
    """Truth circles (cyan) and labelled particles (red) over the binned micrograph, whole and zoomed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Rectangle

    image = read_micrograph(folder / "micrographs" / f"{name}.mrc").data
    low, high = np.percentile(image, DISPLAY_PERCENTILES)
    mine, labelled = truth[truth["micrograph"] == name], labels[labels["micrograph"] == name]
    region = info.get("label_region_x0_y0_side_px")
    if region is not None:
        cx, cy = region[0] + region[2] / 2, region[1] + region[2] / 2
    else:
        cy, cx = (s / 2 for s in image.shape)
    half = ZOOM_SIDE_PX / 2
    zx0 = float(np.clip(cx - half, 0, image.shape[1] - ZOOM_SIDE_PX))
    zy0 = float(np.clip(cy - half, 0, image.shape[0] - ZOOM_SIDE_PX))
    fig, axes = plt.subplots(1, 2, figsize=(2 * FIGURE_INCHES, FIGURE_INCHES))
    radius = PARTICLE_DIAMETER_PX / 2
    for ax, zoom in zip(axes, (False, True)):
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        width = 1.2 if zoom else 0.5
        for x, y in mine[["x", "y"]].to_numpy(float):
            ax.add_patch(Circle((x, y), radius, fill=False, color="cyan", lw=width))
        for x, y in labelled[["x", "y"]].to_numpy(float):
            ax.add_patch(Circle((x, y), radius * 0.8, fill=False, color="red", lw=2 * width))
        if region is not None:
            ax.add_patch(Rectangle(region[:2], region[2], region[2], fill=False, color="yellow", ls="--", lw=width))
        if zoom:
            ax.set_xlim(zx0, zx0 + ZOOM_SIDE_PX)
            ax.set_ylim(zy0 + ZOOM_SIDE_PX, zy0)
            ax.set_title(f"zoom {ZOOM_SIDE_PX}² px at ({zx0:.0f}, {zy0:.0f})")
        else:
            ax.add_patch(Rectangle((zx0, zy0), ZOOM_SIDE_PX, ZOOM_SIDE_PX, fill=False, color="white", lw=1))
            ax.set_title(f"{name} ({info['split']}): {info['n_truth']} centres (cyan), "
                         f"{info.get('n_labels', 0)} labelled (red)")
        ax.set_axis_off()
    fig.tight_layout()
    path = folder / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


# ================================================================================================ loader


def load_prepared(data_dir: Path, structure: str = "bgal", dose: str = REAL_DOSE) -> DoseData:
    """Read a prepared folder back (for ``benchmarks/run.py``): labels of the training micrographs only.

    The same :class:`~benchmarks.suite.datasets.DoseData` as a simulated dose, with its images in
    ``micrographs/`` and no clean, full-dose or mask images (``has_denoising_truth`` false).
    """
    data_dir = Path(data_dir)
    facts = json.loads((data_dir / FACTS_NAME).read_text())
    truth = read_coordinates(data_dir / "truth.star")
    labels = read_coordinates(data_dir / "labels.star")
    return DoseData(
        structure=structure, dose=dose, data_dir=data_dir, train_names=list(facts["train_names"]),
        test_names=list(facts["test_names"]),
        train_labels=labels[labels["micrograph"].isin(facts["train_names"])].reset_index(drop=True),
        train_labels_path=data_dir / "labels.star",
        test_truth=truth[truth["micrograph"].isin(facts["test_names"])].reset_index(drop=True),
        true_diameter_px=float(facts["particle_diameter_px"]), pixel_size=float(facts["pixel_size"]),
        image_dir=data_dir / "micrographs", has_denoising_truth=False)


# =================================================================================================== CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_bgal", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache folder (default %(default)s)")
    parser.add_argument("--snapshot", type=Path, default=None,
                        help=f"bare git dir of {SOURCE_REPOSITORY} (default: found under "
                             f"{DEFAULT_MIRROR_ROOT}/{MIRROR_GLOB})")
    parser.add_argument("--force", action="store_true", help="prepare again even if the folder exists")
    args = parser.parse_args(argv)
    try:
        folder = prepare(args.cache, args.snapshot, force=args.force)
    except SnapshotMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(folder)
    return 0


__all__ = [
    "Snapshot", "SnapshotMissing", "agreement", "bin_micrograph", "disc_centres", "find_snapshot",
    "load_prepared", "main", "open_snapshot", "partial_labels", "prepare", "reconstruction_iou", "split_names"]

if __name__ == "__main__":
    raise SystemExit(main())
