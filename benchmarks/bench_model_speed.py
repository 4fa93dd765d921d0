"""Speed of the joint model on CPU: one training step and one micrograph at inference, per preset.

Training step = forward + backward + Adam on a batch of 64x64 patches with every loss of ``joint`` mode
(denoise, PU detection, flip consistency). Inference = denoise + dense detection of a square micrograph,
whole and tiled. Prints a table and writes JSON. Not a test: timings depend on the machine and its load.
Besides wall-clock seconds it records process CPU seconds divided by the thread count, which other jobs on
a shared machine inflate much less (equal to wall-clock when the threads are fully busy and nothing else runs).

Example::

    python benchmarks/bench_model_speed.py --out benchmarks/results/model_speed.json
    python benchmarks/bench_model_speed.py --preset default --set unet_encoder_channels=24 \
        --set unet_decoder_channels=48 --set detector_output_stride=2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cryojoint.config import LossConfig, ModelConfig, model_config_for_preset
from cryojoint.losses import consistency_loss, denoise_loss, pu_loss, stage_loss, training_stages
from cryojoint.models import JointModel

BATCH_SIZE = 4
PATCH_SIZE = 64  # the paper's and the reference; --patch-size for the automatic size (96 for ribosome)
MICROGRAPH_SIZE = 1024
TILE_SIZES = (512, 576)  # 512: config default (3x3 tiles of a 1024^2 image); 576: 2x2 tiles
TILE_OVERLAP = 64
EXPECTED_POSITIVE_FRACTION = 0.02  # arbitrary: speed does not depend on it
LABELLED_FRACTION = 0.05
AUTHORS_TRAIN_STEP_S = 2.3  # peers.md, this machine kind
AUTHORS_MICROGRAPH_S = 79.0


def train_step_seconds(config: ModelConfig, dense: bool, share_denoiser: bool, warmup: int, repeats: int,
                       seed: int, patch_size: int = PATCH_SIZE) -> list[tuple[float, float]]:
    """Wall-clock seconds of ``repeats`` joint-mode training steps after ``warmup`` untimed ones."""
    generator = torch.Generator().manual_seed(seed)
    model = JointModel(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99))
    losses = LossConfig()
    stage = training_stages("joint")[0]
    x = torch.randn(BATCH_SIZE, 1, patch_size, patch_size, generator=generator)
    target_shape = (BATCH_SIZE, 1, patch_size, patch_size) if dense else (BATCH_SIZE, 1, 1, 1)
    targets = (torch.rand(target_shape, generator=generator) < LABELLED_FRACTION).float()
    times = []
    for step in range(warmup + repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = model(x, dense=dense)
        flipped = model.flipped_logits(x, out, dense=dense, share_denoiser=share_denoiser)
        loss = stage_loss(
            stage, losses.alpha, losses.consistency_weight,
            denoise_loss(x, out.prior_mean, out.prior_var, out.noise_var, losses.sigma_regulariser),
            pu_loss(out.logits, targets, EXPECTED_POSITIVE_FRACTION),
            consistency_loss(out.logits, flipped, config.sigmoid_clamp),
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step >= warmup:
            times.append((time.perf_counter() - start, time.process_time() - cpu_start))
    return times


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Fewest tiles of ``tile`` pixels overlapping by at least ``overlap`` that cover ``size``, spread evenly."""
    if tile >= size:
        return [0]
    count = -(-(size - overlap) // (tile - overlap))
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def micrograph_seconds(config: ModelConfig, tile_size: int | None, repeats: int,
                       seed: int) -> list[tuple[float, float]]:
    """Seconds to denoise and densely detect one MICROGRAPH_SIZE^2 image (eval mode, no autograd)."""
    generator = torch.Generator().manual_seed(seed)
    model = JointModel(config).eval()
    image = torch.randn(1, 1, MICROGRAPH_SIZE, MICROGRAPH_SIZE, generator=generator)
    starts = tile_starts(MICROGRAPH_SIZE, tile_size or MICROGRAPH_SIZE, TILE_OVERLAP)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            if tile_size:
                for top in starts:
                    for left in starts:
                        tile = image[:, :, top:top + tile_size, left:left + tile_size]
                        model(tile, dense=True)
            else:
                model(image, dense=True)
            times.append((time.perf_counter() - start, time.process_time() - cpu_start))
    return times


def _summary(times: list[tuple[float, float]]) -> dict[str, float]:
    wall = [w for w, _ in times]
    cpu_per_thread = [c / torch.get_num_threads() for _, c in times]
    return {"median_s": statistics.median(wall), "min_s": min(wall),
            "median_cpu_per_thread_s": statistics.median(cpu_per_thread), "n": len(times)}


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        overrides[key] = tuple(int(v) for v in value.split(",")) if "," in value else _number(value)
    return overrides


def _number(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _timed(label: str, fn: Callable[..., list[tuple[float, float]]], *args: Any) -> dict[str, float]:
    result = _summary(fn(*args))
    print(f"  {label:<44} median {result['median_s']:7.3f} s   min {result['min_s']:7.3f} s   "
          f"cpu/thread {result['median_cpu_per_thread_s']:7.3f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="preset(s) to time (default: paper and default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ModelConfig field for every preset timed")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--inference-repeats", type=int, default=2)
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--train-variants", default="patch-rerun,patch-shared,dense-rerun,dense-shared",
                        help="comma-separated subset of patch|dense x rerun|shared training steps to time")
    parser.add_argument("--label", default=None, help="name of this run in the JSON (default: the preset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch-size", type=int, default=PATCH_SIZE, help="training patch side in px")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model_speed.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    overrides = _parse_overrides(args.set)
    report: dict[str, Any] = {
        "torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
        "batch_size": BATCH_SIZE, "patch_size": args.patch_size, "micrograph_size": MICROGRAPH_SIZE,
        "tile_sizes": TILE_SIZES, "tile_overlap": TILE_OVERLAP,
        "authors_train_step_s": AUTHORS_TRAIN_STEP_S, "authors_micrograph_s": AUTHORS_MICROGRAPH_S,
        "presets": {},
    }
    for preset in args.preset or ["paper", "default"]:
        config = dataclasses.replace(model_config_for_preset(preset), **overrides)
        n_params = sum(p.numel() for p in JointModel(config).parameters())
        print(f"{preset}: {dataclasses.asdict(config)}  ({n_params:,} parameters)")
        entry: dict[str, Any] = {"config": dataclasses.asdict(config), "parameters": n_params}
        for variant in args.train_variants.split(","):
            logits, denoiser = variant.split("-")
            label = f"train step ({logits} logits, {denoiser} denoiser)"
            entry[f"train_{logits}_{denoiser}"] = _timed(
                label, train_step_seconds, config, logits == "dense", denoiser == "shared", args.warmup,
                args.repeats, args.seed, args.patch_size)
        if not args.skip_inference:
            for tile_size in (None, *TILE_SIZES):
                count = len(tile_starts(MICROGRAPH_SIZE, tile_size, TILE_OVERLAP)) ** 2 if tile_size else 1
                label = f"{MICROGRAPH_SIZE}^2 micrograph " + (f"({count} tiles of {tile_size}^2)" if tile_size
                                                              else "(whole)")
                entry[f"micrograph_tiles_{tile_size}" if tile_size else "micrograph_whole"] = _timed(
                    label, micrograph_seconds, config, tile_size, args.inference_repeats, args.seed)
        report["presets"][args.label or preset] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=list))
    markdown = args.out.with_suffix(".md")
    markdown.write_text(speed_markdown(report))
    print(f"wrote {args.out} and {markdown}")


def speed_markdown(report: dict[str, Any]) -> str:
    """One row per preset and measurement: median wall-clock and CPU seconds per thread."""
    lines = [f"# Model speed ({report['threads']} threads, batch {report['batch_size']}, "
             f"{report['patch_size']}² training patches, {report['micrograph_size']}² micrographs)", "",
             f"Authors' implementation on this machine kind: {report['authors_train_step_s']} s per training step, "
             f"{report['authors_micrograph_s']} s per micrograph.", "",
             "| preset | measurement | median s | min s | CPU s per thread |", "|---|---|---:|---:|---:|"]
    for preset, entry in report["presets"].items():
        for key, value in entry.items():
            if isinstance(value, dict) and "median_s" in value:
                lines.append(f"| {preset} | {key} | {value['median_s']:.3f} | {value['min_s']:.3f} | "
                             f"{value['median_cpu_per_thread_s']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
