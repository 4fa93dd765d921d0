"""``python -m benchmarks.peers.topaz --selftest`` / ``--measure``: synthetic micrographs through all three steps."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from benchmarks.peers.topaz.env import ensure_topaz_env, installed_versions
from benchmarks.peers.topaz.steps import topaz_denoise, topaz_extract, topaz_train

from cryojoint.io.mrc import read_micrograph, write_mrc

#: Synthetic self-test micrographs: particle disc contrast in units of the noise standard deviation.
SELFTEST_CONTRAST_SIGMA = 1.0


def make_disc_micrographs(
    folder: Path,
    *,
    count: int,
    size: int,
    particle_radius_px: int,
    particles_per_micrograph: int,
    labelled_fraction: float,
    seed: int,
    pixel_size: float = 5.3,
) -> tuple[list[Path], pd.DataFrame, pd.DataFrame]:
    """Noisy micrographs with dark particle discs (and as many bright decoy discs); returns paths, labels, truth.

    Labels are a random ``labelled_fraction`` of the particles of each micrograph (partial labelling).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.arange(size)[:, None]
    cols = np.arange(size)[None, :]
    min_gap = 2.5 * particle_radius_px
    paths: list[Path] = []
    truth_rows: list[dict[str, float | str]] = []
    label_rows: list[dict[str, float | str]] = []
    for index in range(count):
        name = f"synthetic_{index:02d}"
        centres: list[tuple[float, float]] = []
        attempts = 0
        while len(centres) < 2 * particles_per_micrograph and attempts < 100 * particles_per_micrograph:
            attempts += 1
            x, y = rng.uniform(particle_radius_px, size - particle_radius_px, size=2)
            if all((x - cx) ** 2 + (y - cy) ** 2 >= min_gap**2 for cx, cy in centres):
                centres.append((float(x), float(y)))
        signal = np.zeros((size, size), dtype=np.float32)
        for k, (x, y) in enumerate(centres):
            disc = (cols - x) ** 2 + (rows - y) ** 2 <= particle_radius_px**2
            is_particle = k % 2 == 0
            signal[disc] += -SELFTEST_CONTRAST_SIGMA if is_particle else SELFTEST_CONTRAST_SIGMA
            if is_particle:
                truth_rows.append({"micrograph": name, "x": x, "y": y})
                if rng.uniform() < labelled_fraction:
                    label_rows.append({"micrograph": name, "x": x, "y": y})
        image = signal + rng.normal(0.0, 1.0, size=(size, size)).astype(np.float32)
        paths.append(write_mrc(folder / f"{name}.mrc", image, pixel_size=pixel_size))
    return paths, pd.DataFrame(label_rows), pd.DataFrame(truth_rows)


def nearest_distances(picks: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Distance from each pick to the nearest true particle of its micrograph (inf where none)."""
    out = np.full(len(picks), np.inf)
    for name, group in picks.groupby("micrograph"):
        true = truth[truth["micrograph"] == name][["x", "y"]].to_numpy(dtype=float)
        if true.size == 0:
            continue
        xy = group[["x", "y"]].to_numpy(dtype=float)
        d = np.sqrt(((xy[:, None, :] - true[None, :, :]) ** 2).sum(-1)).min(axis=1)
        out[group.index.to_numpy()] = d
    return out


def _selftest(work: Path, *, size: int, count: int, epochs: int, minibatches: int, seed: int) -> None:
    launcher = ensure_topaz_env()
    print(f"launcher: {launcher}  versions: {installed_versions()}")
    radius = 6
    mrcs, labels, truth = make_disc_micrographs(
        work / "data", count=count, size=size, particle_radius_px=radius,
        particles_per_micrograph=max(4, size * size // 4096), labelled_fraction=0.5, seed=seed,
    )
    expected = len(truth) / count
    print(f"{count} micrographs {size}², {len(truth)} particles, {len(labels)} labelled")

    trained = topaz_train(
        mrcs[:-1], labels, work / "train", particle_radius_px=radius,
        expected_particles_per_micrograph=expected, pretrained=False, epochs=epochs,
        minibatches_per_epoch=minibatches, seed=seed, validation_mrcs=mrcs[-1:], validation_labels=truth,
        launcher=launcher,
    )
    print(f"train: {trained.seconds:.1f} s (total {trained.total_seconds:.1f} s), peak {trained.peak_rss_mb:.0f} MB "
          f"[{trained.rss_source}], {trained.seconds_per_minibatch:.3f} s/minibatch, S={trained.downsample}, "
          f"r={trained.train_radius_px}, pi passed {trained.prior.pi_passed:.4g} (total {trained.prior.pi_total:.4g})")
    print(trained.curve.tail(4).to_string(index=False))

    extracted = topaz_extract(
        trained.model_path, mrcs, work / "extract", particle_radius_px=radius,
        downsample=trained.downsample, launcher=launcher,
    )
    picks = extracted.picks
    top = picks.groupby("micrograph").head(int(expected))
    hits = float(np.mean(nearest_distances(top.reset_index(drop=True), truth) <= radius))
    print(f"extract: {extracted.seconds:.1f} s (+ preprocess {extracted.preprocess_seconds:.1f} s), peak "
          f"{extracted.peak_rss_mb:.0f} MB, per micrograph {extracted.seconds_per_micrograph}, "
          f"{len(picks)} picks, top-{int(expected)} within r of a particle: {hits:.2f}")

    denoised = topaz_denoise(mrcs, work / "denoise", launcher=launcher)
    first = read_micrograph(next(iter(denoised.paths.values())))
    print(f"denoise: {denoised.seconds:.1f} s, peak {denoised.peak_rss_mb:.0f} MB, per micrograph "
          f"{denoised.seconds_per_micrograph}, output {first.shape} {first.data.dtype} "
          f"mean {first.data.mean():.3f} std {first.data.std():.3f}")


def _measure(work: Path, *, size: int, minibatches: int, seed: int) -> None:
    """Budget numbers: train s/minibatch, extract and denoise s and peak RSS per ``size``² micrograph."""
    launcher = ensure_topaz_env()
    radius = 8
    mrcs, labels, truth = make_disc_micrographs(
        work / "data", count=2, size=size, particle_radius_px=radius,
        particles_per_micrograph=size * size // 8192, labelled_fraction=0.5, seed=seed,
    )
    trained = topaz_train(
        mrcs, labels, work / "train", particle_radius_px=radius,
        expected_particles_per_micrograph=len(truth) / 2, pretrained=True, epochs=1,
        minibatches_per_epoch=minibatches, seed=seed, launcher=launcher,
    )
    print(f"train {minibatches} minibatches: {trained.seconds:.1f} s, {trained.seconds_per_minibatch:.3f} s/minibatch"
          f" (median), peak {trained.peak_rss_mb:.0f} MB")
    for patch in (0, 512):
        extracted = topaz_extract(
            trained.model_path, mrcs[:1], work / f"extract_p{patch}", particle_radius_px=radius,
            downsample=trained.downsample, patch_size=patch, launcher=launcher,
        )
        print(f"extract {size}² (-p {patch}): {extracted.seconds:.1f} s incl. start-up, per micrograph "
              f"{extracted.seconds_per_micrograph}, preprocess {extracted.preprocess_seconds:.1f} s, peak "
              f"{extracted.peak_rss_mb:.0f} MB")
    denoised = topaz_denoise(mrcs[:1], work / "denoise", launcher=launcher)
    print(f"denoise {size}²: {denoised.seconds:.1f} s incl. start-up, per micrograph "
          f"{denoised.seconds_per_micrograph}, peak {denoised.peak_rss_mb:.0f} MB")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.peers.topaz --selftest`` (or ``--measure``): install, run, print timings."""
    from benchmarks.peers import topaz  # the package's first docstring line describes the tool

    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.topaz",
                                     description=(topaz.__doc__ or "").splitlines()[0])
    parser.add_argument("--selftest", action="store_true", help="small synthetic train/extract/denoise run")
    parser.add_argument("--measure", action="store_true", help="budget timings on 1024² micrographs")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--size", type=int, default=None, help="micrograph side in pixels")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--minibatches", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.selftest or args.measure):
        parser.error("choose --selftest and/or --measure")
    with tempfile.TemporaryDirectory(prefix="topaz-selftest-") as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        if args.selftest:
            _selftest(work / "selftest", size=args.size or 256, count=3, epochs=args.epochs,
                      minibatches=args.minibatches or 10, seed=args.seed)
        if args.measure:
            _measure(work / "measure", size=args.size or 1024, minibatches=args.minibatches or 20, seed=args.seed)
