"""Scoring one cell: picks against the true particles, denoised images against the clean and full-dose images.

Every method goes through the same functions with the same yardsticks (the TRUE particle radius for matching).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from benchmarks.suite.datasets import DoseData

from cryojoint.evaluation import denoising_metrics, picking_metrics, psnr
from cryojoint.imaging import bin_factor_between, bin_image, unbin_image
from cryojoint.io.mrc import read_micrograph

#: Low-pass cut-off (Å) of the "PSNR vs low-passed full dose" reference: at 5.3 Å/px a 20 Å period is 3.8 px,
#: near the top of the FRC band (4 px); the paper does not name its filter.
LOWPASS_REFERENCE_ANGSTROM = 20.0
#: Points kept per precision-recall curve in benchmark.json (the report draws them).
MAX_CURVE_POINTS = 200
#: Key of the PSNR against the rest of the exposure (noise independent of the input).
INDEPENDENT_PSNR_KEY = "psnr_rest_of_exposure"


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _thin_curve(precision: np.ndarray, recall: np.ndarray) -> dict[str, list[float]]:
    keep = np.unique(np.linspace(0, len(precision) - 1, min(len(precision), MAX_CURVE_POINTS)).astype(int))
    return {"precision": [float(v) for v in precision[keep]], "recall": [float(v) for v in recall[keep]]}


def score_picks(data: DoseData, picks: pd.DataFrame, own_threshold: float | None) -> dict[str, Any]:
    """AP, best F1 (and its cut-off, with precision/recall/in-mask/edge recall there), F1 at the tool's cut-off.

    Match radius = the TRUE particle radius for every method (the same yardstick for all).
    """
    radius = data.true_diameter_px / 2.0
    masks = data.masks()
    picks = picks[["micrograph", "x", "y", "score"]].copy()
    sweep = picking_metrics(picks, data.test_truth, radius, threshold=None, masks=masks,
                            micrographs=data.test_names).overall
    result: dict[str, Any] = {
        "match_radius_px": radius, "n_candidates": int(len(picks)), "n_true": int(sweep.n_true),
        "average_precision": _finite(sweep.average_precision), "best_f1": _finite(sweep.best_f1),
        "best_f1_threshold": _finite(sweep.best_f1_threshold),
        "curve": _thin_curve(sweep.curve.precision, sweep.curve.recall),
    }
    if result["best_f1_threshold"] is not None:
        at_best = picking_metrics(picks, data.test_truth, radius, threshold=result["best_f1_threshold"],
                                  masks=masks, micrographs=data.test_names).overall
        result.update({"precision_at_best": _finite(at_best.precision), "recall_at_best": _finite(at_best.recall),
                       "picks_in_mask_at_best": _finite(at_best.fraction_picks_in_mask),
                       "edge_recall_at_best": _finite(at_best.edge_recall), "n_picks_at_best": at_best.n_picks})
    if own_threshold is not None:
        own = picking_metrics(picks, data.test_truth, radius, threshold=own_threshold, masks=masks,
                              micrographs=data.test_names).overall
        result.update({"own_threshold": float(own_threshold), "f1_at_own": _finite(own.f1),
                       "precision_at_own": _finite(own.precision), "recall_at_own": _finite(own.recall),
                       "n_picks_at_own": own.n_picks, "picks_in_mask_at_own": _finite(own.fraction_picks_in_mask)})
    return result


def score_denoised(data: DoseData, denoised: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """PSNR vs full dose, vs low-passed full dose, vs clean outside masks; FRC vs clean (same for all).

    Also PSNR vs the *rest* of the exposure (full dose minus this dose). The simulated doses are nested, so
    the full-dose image contains the input's own shot noise (60 % of it at 60 % dose) and PSNR vs full dose
    rewards keeping that noise: the raw input then scores above any denoiser. The rest of the exposure has
    noise independent of the input, so it ranks methods without that bias (its own noise lowers every score
    alike; the affine fit inside :func:`psnr` absorbs its lower mean).
    """
    scale = data.denoising_bin
    references, inputs = _binned(data.references(), scale), _binned(data.test_images(), scale)
    denoised = {n: _to_scale(np.asarray(image), data.references()[n].shape, scale, n) for n, image in denoised.items()}
    masks = data.masks()
    if masks is not None and scale > 1:
        masks = {n: (bin_image(m.astype(np.float32), scale) > 0.5).astype(np.uint8) for n, m in masks.items()}
    report = denoising_metrics(dict(denoised), references, clean=_binned(data.clean(), scale), masks=masks,
                               pixel_size=data.pixel_size * scale, lowpass_angstrom=LOWPASS_REFERENCE_ANGSTROM)
    scores = {k: _finite(v) for k, v in report.mean.items()}
    rest = [psnr(np.asarray(denoised[n], np.float64),
                 references[n].astype(np.float64) - inputs[n].astype(np.float64)) for n in denoised]
    scores[INDEPENDENT_PSNR_KEY] = _finite(np.mean(rest))
    return scores


def _binned(images: Mapping[str, np.ndarray], factor: int) -> dict[str, np.ndarray]:
    return {n: bin_image(image, factor) if factor > 1 else image for n, image in images.items()}


def _to_scale(image: np.ndarray, full_shape: tuple[int, ...], scale: int, name: str) -> np.ndarray:
    """A denoised image (full size, or binned by the network's downsample) binned to ``scale`` of the full size.

    An image at a fractional bin (a model fine-tuned from the general one works at its 36 px particle) is first
    resampled back to full size by the inverse of :func:`cryojoint.imaging.bin_image`'s polyphase filter: its
    Nyquist lies above the FRC band's top (0.25 cycles/px) for any bin below 2, so the band is scored in full; the
    rows and columns the bin dropped are filled with the edge's values."""
    factor = bin_factor_between(full_shape, image.shape)
    if factor is not None and not float(factor).is_integer():
        image, factor = unbin_image(image, factor, full_shape), 1.0
    own = int(factor or 0)
    if own < 1 or scale % own:
        raise ValueError(f"{name}: denoised image of shape {image.shape} is not the {full_shape} micrograph binned by "
                         f"a factor dividing the scoring scale {scale}")
    return bin_image(image, scale // own) if scale > own else image


def refresh_denoising_scores(cell: dict[str, Any], data: DoseData, work: Path) -> bool:
    """Score a cached cryojoint cell's saved denoised micrographs again when it lacks a newer metric."""
    section = cell.get("denoising")
    denoised_dir = work / "pred" / "denoised"
    if not section or INDEPENDENT_PSNR_KEY in section:
        return False
    if not all((denoised_dir / f"{n}.mrc").exists() for n in data.test_names):
        return False
    cell["denoising"] = score_denoised(data, _read_mrc_folder(denoised_dir, data.test_names))
    return True


def _read_mrc_folder(folder: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    return {n: read_micrograph(folder / f"{n}.mrc").data for n in names}
