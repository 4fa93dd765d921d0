"""Per-micrograph inference: tiled network passes in flat memory, the denoised image, the soft segmentation and
every candidate peak of one micrograph, and that micrograph's files.

What one worker does for one micrograph, wherever it runs: :mod:`cryojoint.prediction` calls it in-process,
:mod:`cryojoint.parallel` on Dask workers, and training's validation uses the network pass and the peaks. The
run-level steps (the cut-off over all candidates, the picks files, the run record) are in
:mod:`cryojoint.prediction`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryojoint._atomic import atomic_path
from cryojoint.checkpoint import LoadedModel
from cryojoint.config import (
    AUTO_THRESHOLD_RULES,
    EXPECTED_COUNT_RULE,
    GENERAL_PARTICLE_PX,
    PARTICLE_CONTRASTS,
    PRECISIONS,
    PROBABILITY_SUM_RULE,
    QUANTILE_RULE,
    CryojointConfig,
)
from cryojoint.contrast import AS_RECORDED, contrast_from_tails, vote_sample
from cryojoint.data import estimate_noise_std, flatten_ice, flatten_if_filtered, network_factor
from cryojoint.errors import UserInputError, check_number
from cryojoint.imaging import (
    bin_image,
    binned_shape,
    from_binned_coordinates,
    normalise,
    robust_centre_spread,
    snap_factor,
    unbin_image,
)
from cryojoint.io.coords import FILE_NAME_COLUMN, empty_table, make_table, write_coordinates
from cryojoint.io.mrc import Micrograph, read_micrograph, write_mrc
from cryojoint.models.unet import posterior_mean
from cryojoint.progress import counted_progress
from cryojoint.runtime import inference_precision

DENOISED_DIR, HEATMAP_DIR, CANDIDATE_DIR = "denoised", "heatmaps", "candidates"
#: Most window pixels per network pass. The U-Net's four branches and its merge hold ~2 kB per window pixel
#: (float32). At 256² every buffer stays under glibc's 32 MB heap ceiling, so with
#: :func:`cryojoint.runtime.retain_freed_memory` passes reuse memory instead of mapping it afresh: a 1024²
#: micrograph (default preset, bfloat16, 2 threads) took 7.0-7.9 s at 566 MB peak, flat over 6 micrographs,
#: against 9.4 s and a peak creeping 794 -> 1015 MB over 8 at 512² with glibc's defaults (session 8: 512² had
#: cut the float32 peak from 2.6 GB at 1024² to 1.2 GB). Memory and speed, not output.
WINDOW_BATCH_MAX_PIXELS = 256 * 256
#: The same on a CUDA GPU, where larger batches keep the device busy (~2 GB in float32, half that in bfloat16).
WINDOW_BATCH_MAX_PIXELS_CUDA = 1024 * 1024


def window_batch_pixels(config: CryojointConfig, device: torch.device | str) -> int:
    """Most window pixels per network pass on ``device`` (never more than a ``tile_size_px``² block)."""
    cap = WINDOW_BATCH_MAX_PIXELS_CUDA if torch.device(device).type == "cuda" else WINDOW_BATCH_MAX_PIXELS
    return min(config.predict.tile_size_px ** 2, cap)


@dataclass
class NetworkResult:
    """Per-pixel network outputs for one image, at network scale (arrays are ``None`` for absent heads)."""

    prior_mean: np.ndarray | None
    prior_var: np.ndarray | None
    noise_var: float | None
    denoised: np.ndarray | None
    logits: np.ndarray | None
    soft_segmentation: np.ndarray | None


def _blocks(length: int, largest: int, align: int = 1) -> list[tuple[int, int]]:
    """Split ``[0, length)`` into the fewest near-equal blocks of about ``largest`` pixels at most.

    Inner edges fall on multiples of ``align`` (the U-Net's pooling grid), so every block sees the pooling
    windows a single whole-image pass would.
    """
    count = max(1, math.ceil(length / largest))
    inner = [int(round(length * i / count / align)) * align for i in range(1, count)]
    edges = sorted({0, length, *(e for e in inner if 0 < e < length)})
    return list(zip(edges[:-1], edges[1:]))


def network_context_px(network: torch.nn.Module) -> int:
    """Context (px) a block needs on each side for tiled output to equal the whole-image pass exactly.

    The detector reads the denoised image within its receptive radius, and each of those denoised pixels reads
    the input within the U-Net's receptive radius: the two add up. Rounded up to the U-Net's pooling grid.
    """
    from cryojoint.models.detector import CONTEXT_RADIUS

    denoiser = getattr(network, "denoiser", None)
    detector = getattr(network, "detector", None)
    reach = (denoiser.receptive_radius_px if denoiser is not None else 0) + (CONTEXT_RADIUS if detector else 0)
    # A whole number of pooling cells, and of the detector's output stride: a block then puts the dense map's
    # interpolation nodes on the same pixels as the whole-image pass.
    multiple = math.lcm(denoiser.size_multiple if denoiser is not None else 1,
                        detector.output_stride if detector is not None else 1)
    return int(math.ceil(reach / multiple)) * multiple


def _whole_image_passes(network: torch.nn.Module, image: np.ndarray, config: CryojointConfig,
                        device: torch.device | str, dense: bool, wanted: set[str],
                        ) -> tuple[dict[str, np.ndarray], list[float]]:
    """The whole-image pass, computed in tiles that give exactly its output.

    The image is zero-padded at its bottom and right to a multiple of the U-Net's ``2**depth`` and split into
    the fewest near-equal blocks of at most ``tile_size_px`` whose inner edges lie on the pooling grid; each
    pass sees its block plus ``tile_overlap_px`` of context (default: :func:`network_context_px`, the receptive
    fields of denoiser and detector), clipped at the image, so every kept pixel is computed from exactly the
    inputs the whole-image pass gives it.
    """
    multiple = 2 ** config.model.unet_depth
    ny, nx = image.shape
    overlap = config.predict.tile_overlap_px
    context = network_context_px(network) if overlap is None else int(math.ceil(overlap / multiple)) * multiple
    padded_ny, padded_nx = ny + (-ny) % multiple, nx + (-nx) % multiple
    aligned = np.zeros((padded_ny, padded_nx), dtype=np.float32)
    aligned[:ny, :nx] = image
    outputs: dict[str, np.ndarray] = {}
    noise_vars: list[float] = []
    for y0, y1 in _blocks(ny, config.predict.tile_size_px, multiple):
        for x0, x1 in _blocks(nx, config.predict.tile_size_px, multiple):
            # Inner block edges are on the grid, the context is a whole number of grid cells, and a pass that
            # reaches the image's end takes its alignment padding: every pass is a multiple of the grid.
            cy0, cx0 = max(y0 - context, 0), max(x0 - context, 0)
            cy1 = padded_ny if y1 == ny else min(y1 + context, padded_ny)
            cx1 = padded_nx if x1 == nx else min(x1 + context, padded_nx)
            x = torch.from_numpy(np.ascontiguousarray(aligned[cy0:cy1, cx0:cx1]))[None, None].to(device)
            out = network(x, dense=dense)
            for key in wanted:
                value = getattr(out, key)
                if value is None:
                    continue
                block = value[0, 0].float().cpu().numpy()
                if key not in outputs:
                    outputs[key] = np.empty((ny, nx), dtype=np.float32)
                outputs[key][y0:y1, x0:x1] = block[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
            if out.noise_var is not None:
                noise_vars.append(float(out.noise_var.float().mean()))
    return outputs, noise_vars


def window_starts(length: int, window: int, stride_fraction: float = 0.5) -> list[int]:
    """Starts of windows of side ``window`` covering ``[0, length)`` at a stride of ``stride_fraction`` windows.

    Windows stay inside the image (the last one is moved back to end at the image's end), as training
    patches do; an image shorter than a window gets one window starting at 0 (zero-padded beyond the image).
    """
    if length <= window:
        return [0]
    stride = max(int(round(window * stride_fraction)), 1)
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def window_weight(window: int) -> np.ndarray:
    """1D blending weight of a window: triangular, highest at the centre, positive at the edges.

    At a stride of half a window the weights of neighbouring windows sum to a constant, so blended outputs have
    no seams; pixels far from a window's edges (where its content is like a training patch's centre) count most.
    """
    t = np.arange(window, dtype=np.float64) + 0.5
    return np.minimum(t, window - t) / (window / 2.0)


def _blend_windows(run: Callable[[torch.Tensor], dict[str, torch.Tensor]], image: np.ndarray, window: int,
                   stride_fraction: float, batch_pixels: int, device: torch.device | str,
                   ) -> dict[str, np.ndarray]:
    """Run ``run`` on windows of ``image`` ([H,W] or [C,H,W]) and blend its per-pixel outputs with
    :func:`window_weight`. ``run`` maps a [B,C,window,window] batch to named [B,1,window,window] maps (and may
    return ``noise_var`` [B,1,1,1], averaged over windows instead). Sides shorter than a window are zero-padded.

    Memory: one float32 image-sized sum per output and nothing else image-sized. Windows are cut from ``image``
    itself (a padded copy only when a side is shorter than a window), the total weight is the outer product of
    the rows' and the columns' coverage (the window grid and the weight are separable), and the sums are divided
    in place: a 4096² micrograph held five fewer 64 MB arrays than with a padded copy, a weight image and a
    divided copy (the quotients differ in the last bit at most).
    """
    channels = image if image.ndim == 3 else image[None]
    ny, nx = channels.shape[1:]
    if ny < window or nx < window:
        padded = np.zeros((channels.shape[0], max(ny, window), max(nx, window)), dtype=np.float32)
        padded[:, :ny, :nx] = channels
    else:
        padded = channels
    row_starts = window_starts(ny, window, stride_fraction)
    column_starts = window_starts(nx, window, stride_fraction)
    starts = [(y0, x0) for y0 in row_starts for x0 in column_starts]
    weight_1d = window_weight(window)
    weight_tensor = torch.from_numpy(np.outer(weight_1d, weight_1d).astype(np.float32))
    per_pass = max(1, batch_pixels // (window * window))
    sums: dict[str, np.ndarray] = {}
    noise_vars: list[float] = []
    for first in range(0, len(starts), per_pass):
        chunk = starts[first:first + per_pass]
        batch = np.stack([padded[:, y0:y0 + window, x0:x0 + window] for y0, x0 in chunk])
        for key, value in run(torch.from_numpy(batch).to(device)).items():
            if key == "noise_var":
                noise_vars.append(float(value.float().mean()))
                continue
            weighted = (value[:, 0].float().cpu() * weight_tensor).numpy()
            target = sums.setdefault(key, np.zeros(padded.shape[1:], dtype=np.float32))
            for (y0, x0), piece in zip(chunk, weighted, strict=True):
                target[y0:y0 + window, x0:x0 + window] += piece
    row_cover = _coverage(padded.shape[1], row_starts, weight_1d)
    column_cover = _coverage(padded.shape[2], column_starts, weight_1d)
    outputs: dict[str, np.ndarray] = {}
    for key, value in sums.items():
        np.divide(value, row_cover[:, None], out=value)
        np.divide(value, column_cover[None, :], out=value)
        outputs[key] = value if value.shape == (ny, nx) else np.ascontiguousarray(value[:ny, :nx])
    if noise_vars:
        outputs["noise_var"] = np.asarray(noise_vars, dtype=np.float64)
    return outputs


def _coverage(length: int, starts: Sequence[int], weight_1d: np.ndarray) -> np.ndarray:
    """Summed 1D window weight over ``[0, length)`` for windows at ``starts`` (float32, as the sums are)."""
    cover = np.zeros(length, dtype=np.float64)
    for start in starts:
        cover[start:start + len(weight_1d)] += weight_1d
    return cover.astype(np.float32)


def _window_passes(network: torch.nn.Module, image: np.ndarray, config: CryojointConfig,
                   device: torch.device | str, dense: bool, wanted: set[str], window_px: int,
                   ) -> tuple[dict[str, np.ndarray], list[float]]:
    """The network's outputs blended over windows of the training patch side, the denoiser's and the detector's
    in windows of their own spacing.

    Training shows the network patches of ``window_px``: its U-Net's receptive field (hundreds of pixels at
    depth 5) is filled with zero padding beyond a few tens of pixels. A whole-image pass fills it with image
    instead, and the prior (and the denoised image the detector reads) moves away from anything seen in
    training. Here each window is computed as a training patch would be, and overlapping windows are averaged
    with :func:`window_weight`; windows are batched up to ``tile_size_px``² (at most
    :data:`WINDOW_BATCH_MAX_PIXELS`) pixels per pass (memory, not output).

    The U-Net runs in windows ``window_stride_fraction`` apart. The detector reads the posterior mean of the
    blended prior (with the raw image when the model stacks both) in windows ``detector_window_stride_fraction``
    apart. It sees only 63 px, but trained densely on zero-padded patches it picks better from windows than
    from one exact pass over the whole image, and better the more windows it averages (standard profile, 10 %
    dose: benchmarks/results/2026-12-01-ab-inference-standard-010-*.md); the denoised image barely depends on
    the U-Net's window spacing.
    """
    multiple = 2 ** config.model.unet_depth
    window = max(int(math.ceil(window_px / multiple)) * multiple, multiple)
    batch_pixels = window_batch_pixels(config, device)
    outputs: dict[str, np.ndarray] = {}
    noise_vars: list[float] = []
    denoiser, detector = getattr(network, "denoiser", None), getattr(network, "detector", None)
    detector_wanted = "logits" in wanted and detector is not None
    detector_input = image
    if denoiser is not None:
        def denoise(batch: torch.Tensor) -> dict[str, torch.Tensor]:
            out = network.denoise(batch)
            return {"prior_mean": out.prior_mean, "prior_var": out.prior_var, "noise_var": out.noise_var}

        outputs = _blend_windows(denoise, image, window, config.predict.window_stride_fraction, batch_pixels,
                                 device)
        noise_vars = list(outputs.pop("noise_var"))
        if detector_wanted:  # the network's own posterior mean, as the detector read it in training
            detector_input = np.empty((2 if network.stack_raw else 1, *image.shape), dtype=np.float32)
            _posterior_mean_into(detector_input[0], image, outputs["prior_mean"], outputs["prior_var"],
                                 np.float32(np.mean(noise_vars)))
            if network.stack_raw:
                detector_input[1] = image
    if detector_wanted:
        def detect(batch: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": detector(batch, dense=dense)}

        outputs.update(_blend_windows(detect, np.ascontiguousarray(detector_input, dtype=np.float32), window,
                                      config.predict.detector_window_stride_fraction, batch_pixels, device))
        del detector_input
    return {key: value for key, value in outputs.items() if key in wanted}, noise_vars


#: Rows per slice of :func:`_posterior_mean_into` (memory, not output).
POSTERIOR_SLICE_ROWS = 256


def _posterior_mean_into(out: np.ndarray, y: np.ndarray, prior_mean: np.ndarray, prior_var: np.ndarray,
                         noise_var: np.float32) -> None:
    """:func:`~cryojoint.models.unet.posterior_mean` written into ``out`` a slice of rows at a time: the same
    numbers without four image-sized temporaries (256 MB on a 4096² micrograph)."""
    for start in range(0, y.shape[0], POSTERIOR_SLICE_ROWS):
        rows = slice(start, start + POSTERIOR_SLICE_ROWS)
        out[rows] = posterior_mean(y[rows], prior_mean[rows], prior_var[rows], noise_var)


@torch.no_grad()
def run_network_on_image(
    network: torch.nn.Module,
    image: np.ndarray,
    config: CryojointConfig,
    device: torch.device | str = "cpu",
    dense: bool = True,
    keep: Sequence[str] = ("prior_mean", "prior_var", "denoised", "logits"),
    window_px: int | None = None,
) -> NetworkResult:
    """Run the network over a normalised image in pieces, so memory does not grow with image size.

    With ``config.predict.context == "training-patch"`` and a ``window_px`` (the training patch side), every
    output pixel is a blend of windows of that side (see :func:`_window_passes`): what the network saw in
    training. Otherwise (``"whole-image"``, or no ``window_px``) the output is the exact whole-image pass
    (see :func:`_whole_image_passes`). Either way the image is zero-padded, never mirrored, so no pixel's own
    value can come back into its blind-spot prediction. The passes run in ``config.predict.precision``
    (:func:`~cryojoint.runtime.inference_precision`: by default bfloat16 autocast where the hardware has it).
    """
    network.eval()
    # The denoised image is recomputed from the prior over the whole image (calibrated_posterior_mean).
    # The network's own posterior mean is not kept: it would only be overwritten.
    wanted = set(keep) - {"denoised"} | ({"prior_mean", "prior_var"} if "denoised" in keep else set())
    with inference_precision(device, config.predict.precision):
        if config.predict.context == "training-patch" and window_px is not None:
            outputs, noise_vars = _window_passes(network, image, config, device, dense, wanted, window_px)
        else:
            outputs, noise_vars = _whole_image_passes(network, image, config, device, dense, wanted)
    noise_var = float(np.mean(noise_vars)) if noise_vars else None
    if "denoised" in keep and "prior_mean" in outputs and noise_var is not None:
        outputs["denoised"] = calibrated_posterior_mean(image, outputs["prior_mean"], outputs["prior_var"],
                                                        estimate_noise_std([image]) ** 2)
    logits = outputs.get("logits")
    soft = None
    if logits is not None:
        clamp = config.model.sigmoid_clamp
        # In place, float32: a 4096² map costs 64 MB per copy.
        soft = np.negative(logits)
        np.clip(soft, -80.0, 80.0, out=soft)
        np.exp(soft, out=soft)
        soft += 1.0
        np.reciprocal(soft, out=soft)
        np.clip(soft, clamp, 1 - clamp, out=soft)
    if "prior_mean" not in keep:
        outputs.pop("prior_mean", None)
    if "prior_var" not in keep:
        outputs.pop("prior_var", None)
    return NetworkResult(outputs.get("prior_mean"), outputs.get("prior_var"), noise_var, outputs.get("denoised"),
                         logits, soft)


#: Scales of the network's prior variance tried by :func:`calibrated_posterior_mean` (1: as the network says;
#: below 1: the prior mean is better than the network claims; 0: the prior mean alone, plus any inflation).
PRIOR_SCALE_GRID: tuple[float, ...] = (0.0, 2.0**-8, 2.0**-6, 2.0**-4, 2.0**-2, 1.0)
#: Inflations added to it, in units of mean(A^2) + s^2 (large: the input itself).
PRIOR_INFLATION_GRID: tuple[float, ...] = (0.0,) + tuple(float(2.0**k) for k in range(-6, 11))
#: Pixels SURE is evaluated on (a regular subsample of larger images; the estimate is a mean, so 2^18 pixels pin
#: it far below the differences between candidates), and per slice of the final pass (memory, not output).
SURE_SAMPLE_PX = 1 << 18
SURE_SLICE_PX = 1 << 20


def calibrated_posterior_mean(y: np.ndarray, prior_mean: np.ndarray, prior_var: np.ndarray,
                              noise_var: float) -> np.ndarray:
    """The denoised image: the posterior mean, with the prior's confidence checked against the image itself.

    The posterior mean ``mu + w (y - mu)``, ``w = A^2 / (A^2 + s^2)``, is only as good as mu, A^2 and s^2.
    ``noise_var`` is the image's own noise (:func:`~cryojoint.data.estimate_noise_std` from neighbour
    differences, exact for pixel-independent noise: ASPIRE's 10 % dose 0.964 vs 0.965 true, our standard 10 %
    0.538 vs 0.534), not the network's: that is one constant learned on its training data (for the general
    model a corpus of every dose: 0.61 for images whose true value ranged 0.14-0.97). A^2 is then scaled (the
    network may under- or over-trust its mu: on ASPIRE's micrographs the general model's mu was 10x closer to
    the truth than its A^2 said) and inflated, choosing the pair ``(scale, inflation)`` that minimises Stein's
    unbiased risk estimate of the mean squared error against the clean image, exact for this family because mu
    and A^2 at p never saw y[p] (the blind spot): ``SURE = mean((s^2 / (A^2 + s^2))^2 (y - mu)^2) - s^2
    + 2 s^2 mean(w)``. Infinite inflation returns y itself (risk s^2), so the chosen image is estimated to be no
    worse than the input; scale 1 and no inflation is the network's own posterior mean.
    """
    s2 = max(float(noise_var), 1e-12)
    flat_y, flat_mean, flat_var = (np.ravel(a) for a in (y, prior_mean, prior_var))
    count = flat_y.size
    sample = slice(None, None, max(1, -(-count // SURE_SAMPLE_PX)))  # every k-th pixel, k = ceil(count / max)
    a2 = flat_var[sample].astype(np.float64)
    squared_residual = np.square(flat_y[sample] - flat_mean[sample], dtype=np.float64)
    unit = float(a2.mean()) + s2
    candidates = [(scale, inflation * unit) for scale in PRIOR_SCALE_GRID for inflation in PRIOR_INFLATION_GRID]
    risks = []
    for scale, inflation in candidates:
        shrink = s2 / (scale * a2 + inflation + s2)  # 1 - w
        risks.append(float(np.mean(shrink * shrink * squared_residual)) - s2 + 2.0 * s2 * float(np.mean(1 - shrink)))
    scale, inflation = candidates[int(np.argmin(risks))]
    denoised = np.empty(flat_y.shape, dtype=np.float32)
    for start in range(0, count, SURE_SLICE_PX):
        part = slice(start, start + SURE_SLICE_PX)
        shrink = (s2 / (scale * flat_var[part].astype(np.float64) + inflation + s2)).astype(np.float32)
        denoised[part] = flat_y[part] - shrink * (flat_y[part] - flat_mean[part])
    return denoised.reshape(np.shape(y))


@dataclass
class MicrographPrediction:
    """What prediction makes of one micrograph. Coordinates are in the input's pixels."""

    name: str
    # Network scale (binned when downsample > 1; the input's with settings.denoise_at_input_size), input's units.
    denoised: np.ndarray | None
    soft_segmentation: np.ndarray | None  # network scale
    candidates: pd.DataFrame  # every NMS peak with its score, input pixels
    pixel_size: float | None  # Å/px of the arrays above
    seconds: float = 0.0


@dataclass
class PickingSettings:
    """Picking parameters resolved against the model (units: network pixels unless stated)."""

    downsample: float
    nms_radius_px: float
    border_px: float
    threshold: float | None
    top_fraction: float
    threshold_rule: str  # one of AUTO_THRESHOLD_RULES (used when threshold is None)
    expected_per_micrograph: float | None  # for a micrograph of the training micrographs' mean area
    expected_density_per_px2: float | None = None  # particles per network px^2 (scales to any image size)
    tile_size_px: int | None = None  # overrides the model config's predict.tile_size_px (memory vs speed)
    # Overrides the model config's predict.detector_window_stride_fraction (picks vs time).
    detector_window_stride_fraction: float | None = None
    precision: str | None = None  # overrides the model config's predict.precision (runtime.autocast_dtype)
    particle_diameter_px: float | None = None  # network px; None: the model's (the general model is told it)
    pick: bool = True  # False: denoise only (the detector does not run)
    # Flatten the spectrum of micrographs that look low-pass filtered before the network (the general model
    # picking: it learned from raw micrographs; config.FILTERED_SPECTRUM_CUTOFF_CYCLES_PER_DIAMETER), and always for
    # a model trained that way (data.flatten_filtered_spectrum).
    flatten_filtered_spectrum: bool = False
    # Denoise-only runs: the denoised image returned to the input's grid (the mean over the binning grid's
    # phases, _denoise_across_bin_phases) instead of written at the network's scale.
    denoise_at_input_size: bool = False
    # How particles look in the micrographs: "bright" ones are negated for the network (it learned dark ones) and
    # the denoised image negated back. "auto" (the general model only) until read from them (resolve_contrast).
    particle_contrast: str = AS_RECORDED

    @property
    def averages_bin_phases(self) -> bool:
        """Denoise-only, back to the input's grid as the mean of binned passes (only when the network bins)."""
        return self.denoise_at_input_size and not self.pick and self.downsample > 1

    @property
    def automatic_rule(self) -> str:
        """The automatic rule that applies: expected-count needs an expected count; without one (the general model
        told no labels) probability-sum; quantile when asked for."""
        if self.threshold_rule == QUANTILE_RULE:
            return QUANTILE_RULE
        if self.expected_per_micrograph:
            return EXPECTED_COUNT_RULE
        return PROBABILITY_SUM_RULE

    @classmethod
    def resolve(cls, model: LoadedModel, threshold: float | str | None = None, nms_radius_px: float | None = None,
                border_px: float | None = None, downsample: float | None = None,
                tile_size_px: int | None = None,
                detector_window_stride_fraction: float | None = None,
                precision: str | None = None, particle_diameter_px: float | None = None,
                pick: bool = True, denoise_at_input_size: bool = False,
                particle_contrast: str | None = None) -> PickingSettings:
        """Options given in input pixels (as users think of them) become network pixels here.

        ``particle_diameter_px`` (input px) tells the general model the particle's size: the input is binned so
        that it measures GENERAL_PARTICLE_PX (``downsample``, when given, stands). Trained models know theirs.
        ``denoise_at_input_size`` (denoise-only runs) returns the denoised image to the input's grid.
        ``particle_contrast`` ("dark", "bright"; ``None`` or "auto": a trained model's training micrographs', for the
        general model told the particle's size read from the micrographs by :func:`resolve_contrast`, else dark)
        says how particles look in them.
        """
        if particle_contrast is not None and particle_contrast not in PARTICLE_CONTRASTS:
            raise UserInputError(None, f"unknown particle contrast '{particle_contrast}' "
                                 f"({', '.join(PARTICLE_CONTRASTS)})")
        if particle_contrast in (None, "auto"):
            # The general model reads it from the micrographs where it knows the particle's size (read elsewhere, the
            # blobs compared are not the particle's); a trained model as it read its training micrographs.
            reads = model.is_general and particle_diameter_px is not None
            particle_contrast = "auto" if reads else str(model.meta.get("particle_contrast", AS_RECORDED))
        check_number(downsample, "--downsample", at_least=1)
        check_number(nms_radius_px, "--nms-radius", at_least=0)
        check_number(border_px, "--border", at_least=0)
        if not isinstance(threshold, str):
            check_number(threshold, "--threshold")
        if particle_diameter_px is not None:
            if not model.is_general:
                raise UserInputError(None, "--particle-diameter is for the general model; a trained model works at "
                                     "the particle size it was trained on")
            factor = snap_factor(downsample) if downsample else network_factor(particle_diameter_px,
                                                                               GENERAL_PARTICLE_PX)
            diameter_net = particle_diameter_px / factor
        elif model.is_general and pick:
            raise UserInputError(None, "the general model needs the particle's size: --particle-diameter 250A "
                                 "(Ångström, pixel size from the MRC header) or 48px (input pixels)")
        else:
            # A trained model works at the particle size it learned, in network px: another --downsample is for
            # micrographs at another pixel size, chosen so that the particle measures as it did in training.
            factor = snap_factor(downsample or model.downsample)
            diameter_net = model.particle_diameter_px
        predict_config = model.config.predict
        radius = nms_radius_px if nms_radius_px is not None else predict_config.nms_radius_px
        radius_net = radius / factor if radius is not None else diameter_net / 2
        border = border_px if border_px is not None else predict_config.border_px
        rule = predict_config.auto_threshold_rule
        if threshold == "auto":  # the CLI's word for the model's own rule
            threshold = None
        if isinstance(threshold, str):
            if threshold not in AUTO_THRESHOLD_RULES:
                raise UserInputError(None, f"unknown cut-off rule '{threshold}' (a number, or one of "
                                     f"{', '.join(AUTO_THRESHOLD_RULES)})")
            rule, threshold = threshold, None
        if tile_size_px is not None and tile_size_px < 2 ** model.config.model.unet_depth:
            raise UserInputError(None, f"--tile-size must be at least {2 ** model.config.model.unet_depth} px")
        if detector_window_stride_fraction is not None and not 0.0 < detector_window_stride_fraction <= 1.0:
            raise UserInputError(None, "--detector-window-stride must be in (0, 1] (a fraction of a window)")
        if precision is not None and precision not in PRECISIONS:
            raise UserInputError(None, f"unknown precision '{precision}' ({', '.join(PRECISIONS)})")
        expected = model.meta.get("expected_particles")
        density = model.meta.get("expected_density_per_px2")
        return cls(factor, float(radius_net), float(border) / factor,
                   threshold if threshold is not None else predict_config.threshold,
                   predict_config.auto_threshold_top_fraction, rule,
                   None if expected is None else float(expected), None if density is None else float(density),
                   tile_size_px, detector_window_stride_fraction, precision, float(diameter_net), pick,
                   (model.is_general and pick) or bool(model.config.data.flatten_filtered_spectrum),
                   denoise_at_input_size and not pick, particle_contrast)


#: Micrographs the general model reads both ways round to tell which contrast it knows (spread over those given).
MODEL_VOTE_MICROGRAPHS = 3
#: The share of each reading's peaks (its best-scoring) whose mean score is compared.
MODEL_VOTE_TOP_FRACTION = 0.1
#: The inverted reading must score this much higher (log-odds) to overturn dark, the convention of raw cryo-EM.
#: Measured (general-v2, told the true diameter; the benchmark's test micrographs as recorded vs inverted): `standard`
#: 10 % 0.32 vs -1.48, ASPIRE 10 % 2.72 vs -1.20, real beta-galactosidase 1.29 vs -0.06; `second` 10 % -2.12 vs
#: -2.13 (the model hardly picks there either way: the blobs' tails decide).
MODEL_READS_BRIGHT_LOGITS = 0.5


def resolve_contrast(model: LoadedModel, settings: PickingSettings, micrographs: Sequence[Micrograph | str | Path],
                     device: torch.device | str = "cpu", progress: bool = False,
                     ) -> tuple[PickingSettings, str | None]:
    """``settings`` with an "auto" particle contrast read, and a note when it reads bright.

    The general model (the one model predicting with "auto") runs on a few of the micrographs as given and negated,
    and the reading its best peaks score higher on by :data:`MODEL_READS_BRIGHT_LOGITS` or more is the one it knows
    particles from: its peaks weigh particle-likeness as it learned it, which a blob statistic cannot (the filtered
    real beta-galactosidase micrographs' blobs barely lean either way). Where it hardly tells the two apart (a
    protein it picks poorly either way), the blobs' tails decide (:func:`cryojoint.contrast.contrast_from_tails`:
    bright only by a margin). Costs two network passes per micrograph read. Files that cannot be read are passed
    over here (the prediction reports them).
    """
    if settings.particle_contrast != "auto":
        return settings, None
    sample: list[Micrograph] = []
    for item in vote_sample(list(micrographs), MODEL_VOTE_MICROGRAPHS):
        try:
            sample.append(item if isinstance(item, Micrograph) else read_micrograph(item))
        except UserInputError:
            continue
    # Read as the model picks them (a denoise-only run too): filtered micrographs' spectrum flattened first.
    flatten = settings.flatten_filtered_spectrum or model.is_general
    best: dict[str, list[np.ndarray]] = {"dark": [], "bright": []}
    with counted_progress(2 * len(sample), progress, "read contrast") as advance:
        for micrograph in sample:
            for contrast in best:
                trial = dataclasses.replace(settings, particle_contrast=contrast, pick=True,
                                            denoise_at_input_size=False, flatten_filtered_spectrum=flatten)
                try:
                    scores = predict_micrograph(model, micrograph, trial, device).candidates["score"].to_numpy(float)
                except UserInputError:
                    scores = np.zeros(0)
                if len(scores):
                    count = max(1, int(round(MODEL_VOTE_TOP_FRACTION * len(scores))))
                    best[contrast].append(np.sort(scores)[-count:])
                advance()
    if not best["dark"] or not best["bright"]:
        return dataclasses.replace(settings, particle_contrast=AS_RECORDED), None
    dark, bright = (float(np.concatenate(best[c]).mean()) for c in ("dark", "bright"))
    if abs(bright - dark) >= MODEL_READS_BRIGHT_LOGITS:
        contrast = "bright" if bright > dark else "dark"
        evidence = (f"the general model's best peaks score {bright:+.2f} on {len(sample)} micrograph(s) inverted, "
                    f"{dark:+.2f} as given")
    else:  # the model hardly tells them apart: the blobs' tails decide, with a margin for bright
        binned = [bin_image(m.data, settings.downsample) for m in sample]
        if flatten:
            binned = [flatten_if_filtered(image, settings.particle_diameter_px)[0] for image in binned]
        binned = [normalise(image) for image in binned]
        reading = contrast_from_tails(binned, settings.particle_diameter_px)
        contrast, evidence = reading.contrast, reading.evidence
    if contrast == "dark":
        return dataclasses.replace(settings, particle_contrast="dark"), None
    note = (f"particles read as brighter than the ice ({evidence}): the micrographs are inverted for the network "
            "(--particle-contrast dark, particle_contrast='dark' in Python, if they are not)")
    return dataclasses.replace(settings, particle_contrast="bright"), note


def predict_micrograph(model: LoadedModel, micrograph: Micrograph, settings: PickingSettings,
                       device: torch.device | str = "cpu") -> MicrographPrediction:
    """Denoise one micrograph, map it, and find every candidate peak (no cut-off yet)."""
    micrograph.check_not_blank()
    start = time.perf_counter()
    factor = settings.downsample
    if settings.pick and settings.border_px > 0:
        ny, nx = binned_shape(micrograph.shape, factor)
        if 2 * settings.border_px >= min(ny, nx):
            raise UserInputError(micrograph.path or micrograph.name, f"--border {settings.border_px * factor:g} px "
                                 f"leaves none of its {micrograph.shape[1]}x{micrograph.shape[0]} pixels to pick in")
    if settings.averages_bin_phases:
        denoised = _denoise_across_bin_phases(model, micrograph, settings, device)
        return MicrographPrediction(micrograph.name, denoised, None, _named_table(empty_table(), micrograph),
                                    micrograph.pixel_size, time.perf_counter() - start)
    denoised, result = _network_pass(model, micrograph, settings, device)
    candidates = empty_table()
    if result.logits is not None:
        xy, scores = candidate_peaks(result.logits, settings.nms_radius_px, model.config.model.sigmoid_clamp,
                                     settings.border_px)
        xy_input = from_binned_coordinates(xy, factor) if len(xy) else xy.reshape(0, 2)
        candidates = make_table(micrograph.name, xy_input[:, 0], xy_input[:, 1], scores)
    pixel_size = None if micrograph.pixel_size is None else micrograph.pixel_size * factor
    return MicrographPrediction(micrograph.name, denoised, result.soft_segmentation,
                                _named_table(candidates, micrograph), pixel_size, time.perf_counter() - start)


def detector_logits(model: LoadedModel, micrograph: Micrograph, settings: PickingSettings,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """The detector's log-odds map of one micrograph at network scale, prepared as for picking."""
    result = _network_pass(model, micrograph, dataclasses.replace(settings, pick=True), device)[1]
    return result.logits


def _named_table(candidates: pd.DataFrame, micrograph: Micrograph) -> pd.DataFrame:
    if micrograph.path is not None:
        candidates[FILE_NAME_COLUMN] = str(micrograph.path)  # as given, as predict_files names it
    return candidates


def _network_pass(model: LoadedModel, micrograph: Micrograph, settings: PickingSettings,
                  device: torch.device | str) -> tuple[np.ndarray | None, NetworkResult]:
    """The micrograph binned by ``settings.downsample`` through the network: the denoised image (network scale, the
    input's intensity units) and the network's other outputs."""
    factor = settings.downsample
    smallest = 2 ** model.config.model.unet_depth
    ny, nx = micrograph.data.shape
    if min(ny, nx) / factor < smallest:  # checked before binning: binned to nothing, numpy only warns
        binned_by = "" if factor == 1 else f", {int(nx // factor)}x{int(ny // factor)} px binned by {factor:g}"
        raise UserInputError(micrograph.path or micrograph.name,
                             f"image of {nx}x{ny} px{binned_by} is smaller than the network's {smallest} px "
                             "minimum side" + (" (a smaller --downsample or particle diameter bins it less)"
                                               if min(ny, nx) >= smallest else ""))
    binned = bin_image(micrograph.data, factor)
    diameter = settings.particle_diameter_px or model.particle_diameter_px
    if settings.flatten_filtered_spectrum:
        binned, _ = flatten_if_filtered(binned, diameter)
    centre, scale = robust_centre_spread(binned)
    normalised = normalise(binned)
    # "auto" is read over a run's micrographs (resolve_contrast); one handed straight to predict_micrograph is read
    # as recorded.
    if settings.particle_contrast == "bright":  # the network learned dark particles: give it the negated image
        np.negative(normalised, out=normalised)
        scale = -scale  # ... and the denoised image back in the input's contrast
    config = model.config
    normalised, flattening = flatten_ice(normalised, config.data, diameter)
    overrides = {key: value for key, value in (("tile_size_px", settings.tile_size_px),
                                               ("detector_window_stride_fraction",
                                                settings.detector_window_stride_fraction),
                                               ("precision", settings.precision)) if value is not None}
    if overrides:
        config = dataclasses.replace(config, predict=dataclasses.replace(config.predict, **overrides))
    window = model.meta.get("training_patch_px")  # network pixels; absent in models from before it was recorded
    keep = ("denoised", "logits") if settings.pick else ("denoised",)
    result = run_network_on_image(model.network, normalised, config, device, keep=keep,
                                  window_px=None if window is None else int(window))
    del normalised
    denoised = None
    if result.denoised is not None:
        restored = result.denoised if flattening is None else flattening.restore(result.denoised)
        denoised = (restored * scale + centre).astype(np.float32)
    return denoised, result


def bin_phase_offsets(factor: float) -> list[tuple[int, int]]:
    """Where the binning grid starts, (row, column) in input pixels, for each pass of a denoising returned to the
    input's size: no shift and half a bin (rounded) along each axis — 4 passes — from a 1.5-pixel bin up (it rounds
    to 2; the half bin to 1 px), else one pass. Each pass runs on ``factor²`` fewer pixels than the input. Only
    two offsets per axis, because every pass also resamples the whole micrograph twice (bin, unbin): with every
    whole-pixel phase (``round(factor)²`` passes) a 4k micrograph binned 6.25× took 110 s against 50 s at its own
    size (session 21)."""
    if round(factor) < 2:
        return [(0, 0)]
    per_axis = (0, round(factor / 2))
    return [(row, column) for row in per_axis for column in per_axis]


class BinPhaseMean:
    """The mean of passes over shifted binning grids, on the input's grid (cycle spinning).

    Each pass counts where its bins reached, a shifted pass not within a bin of its crop's edges (resampling and
    the network's padding see no context at the edge its shift moved into the image); the unshifted pass alone
    fills what none counts. Shared by :func:`_denoise_across_bin_phases` and the benchmark's fairness check, which
    gives Topaz-Denoise the same treatment.
    """

    def __init__(self, shape: tuple[int, int], factor: float) -> None:
        self.factor = snap_factor(factor)  # the factor bin_image applied
        self._margin = math.ceil(self.factor)
        self._total = np.zeros(shape, np.float64)
        self._covered = np.zeros(shape, np.float64)
        self._unshifted: np.ndarray | None = None

    def add(self, binned: np.ndarray, row: int, column: int) -> None:
        """One pass: ``binned`` made from the input's ``[row:, column:]`` crop binned by ``factor``."""
        crop_shape = (self._total.shape[0] - row, self._total.shape[1] - column)
        restored = unbin_image(binned, self.factor, crop_shape)
        if row == column == 0:
            self._unshifted = restored
        # Rows/columns its bins covered (the rest unbin_image fills by repetition), less one bin inside the crop's
        # edges when shifted.
        top, left = (self._margin if row else 0), (self._margin if column else 0)
        bottom = min(int(binned.shape[0] * self.factor), crop_shape[0]) - top
        right = min(int(binned.shape[1] * self.factor), crop_shape[1]) - left
        self._total[row + top:row + bottom, column + left:column + right] += restored[top:bottom, left:right]
        self._covered[row + top:row + bottom, column + left:column + right] += 1.0

    def mean(self) -> np.ndarray:
        if self._unshifted is None:
            raise ValueError("the unshifted pass (offset 0, 0) is needed to fill what no pass covers")
        total, covered = self._total.copy(), self._covered.copy()
        uncovered = covered == 0  # the last rows/columns no pass's bins reached
        total[uncovered], covered[uncovered] = self._unshifted[uncovered], 1.0
        return (total / covered).astype(np.float32)


def _denoise_across_bin_phases(model: LoadedModel, micrograph: Micrograph, settings: PickingSettings,
                               device: torch.device | str) -> np.ndarray:
    """Denoised at the network's scale, returned to the input's grid, averaged over shifts of the binning grid.

    Binning is not shift-invariant: each phase of the grid pools other pixels, so the passes' errors are partly
    independent and their mean is closer to the clean image than any one of them (cycle spinning, as for
    shift-variant wavelet denoisers; :class:`BinPhaseMean`).
    """
    data = micrograph.data
    phases = BinPhaseMean(data.shape, settings.downsample)
    for row, column in bin_phase_offsets(settings.downsample):
        denoised, _ = _network_pass(model, dataclasses.replace(micrograph, data=data[row:, column:]), settings,
                                    device)
        assert denoised is not None  # noqa: S101 - the denoiser always runs in this pass
        phases.add(denoised, row, column)
    return phases.mean()


def candidate_peaks(logits: np.ndarray, radius_px: float, clamp: float,
                    border_px: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Every NMS peak of the logit map with its score, the log-odds (logit) of being a particle.

    Scores are logits, as in Topaz (``topaz extract -t -6``), not probabilities: confident peaks reach logits of
    20-40, where probabilities round to 1.0 in any text file and the ranking of the best candidates would be
    lost. Peaks are found on logits, not on the clamped soft segmentation: the clamp (a training device) makes
    the best candidates tie at ``1 - clamp``. Pixels at or below the clamp's floor are background plateaus,
    not peaks.
    """
    from cryojoint.picking import nms_peaks

    floor_logit = float(np.log(clamp / (1.0 - clamp)))
    xy, logit_scores = nms_peaks(logits, radius_px, threshold=float(np.nextafter(floor_logit, np.inf)),
                                 border_px=border_px)
    return xy, np.asarray(logit_scores, dtype=np.float64)


def asks_for_picks(outputs: Sequence[str]) -> bool:
    """Whether a run with these outputs runs the detector (picks or a heat map) rather than only denoising."""
    return bool({"picks", "heatmap"} & set(outputs))


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    """Where one micrograph's files go in a predict output folder (:func:`done_marker` says which marks it done)."""
    return {
        "denoised": out_dir / DENOISED_DIR / f"{name}.mrc",
        "heatmap": out_dir / HEATMAP_DIR / f"{name}.mrc",
        "heatmap_png": out_dir / HEATMAP_DIR / f"{name}.png",
        "candidates": out_dir / CANDIDATE_DIR / f"{name}.csv",
    }


def done_marker(out_dir: Path, name: str, outputs: Sequence[str]) -> Path:
    """The file whose presence marks one micrograph done (a rerun skips it): written last and atomically, its
    candidates file when the run picks, else its denoised image (a denoise run writes no empty candidates)."""
    paths = output_paths(out_dir, name)
    return paths["candidates"] if asks_for_picks(outputs) else paths["denoised"]


def write_micrograph_outputs(prediction: MicrographPrediction, out_dir: Path, outputs: Sequence[str]) -> None:
    """Write one micrograph's files, each atomically, its :func:`done_marker` last."""
    paths = output_paths(out_dir, prediction.name)
    if "heatmap" in outputs and prediction.soft_segmentation is not None:
        write_mrc(paths["heatmap"], prediction.soft_segmentation, prediction.pixel_size)
        _write_thumbnail(paths["heatmap_png"], prediction.soft_segmentation)
    if "denoised" in outputs and prediction.denoised is not None:
        write_mrc(paths["denoised"], prediction.denoised, prediction.pixel_size)
    if asks_for_picks(outputs):
        write_coordinates(prediction.candidates, paths["candidates"], "csv")


def _write_thumbnail(path: Path, image: np.ndarray, max_side: int = 512) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, int(math.ceil(max(image.shape) / max_side)))
    with atomic_path(path) as tmp:
        plt.imsave(tmp, image[::step, ::step], cmap="magma", vmin=0.0, vmax=1.0, format="png")


__all__ = ["BinPhaseMean", "CANDIDATE_DIR", "DENOISED_DIR", "HEATMAP_DIR", "MicrographPrediction", "NetworkResult",
           "PickingSettings", "calibrated_posterior_mean", "candidate_peaks", "network_context_px", "output_paths",
           "asks_for_picks", "done_marker", "predict_micrograph", "run_network_on_image",
           "write_micrograph_outputs"]
