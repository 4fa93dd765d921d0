"""Inference in windows of the training patch side: coverage, blending, batching, blind spot, the predict path."""

from __future__ import annotations

import dataclasses
import platform
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cryojoint.checkpoint import LoadedModel
from cryojoint.config import CryojointConfig
from cryojoint.errors import UserInputError
from cryojoint.inference import (
    PickingSettings,
    _blend_windows,
    predict_micrograph,
    run_network_on_image,
    window_starts,
    window_weight,
)
from cryojoint.io.mrc import Micrograph
from cryojoint.models.joint import JointModel
from cryojoint.runtime import autocast_dtype, retain_freed_memory

SMALL = {"model": {"unet_encoder_channels": 4, "unet_decoder_channels": 8, "unet_depth": 3,
                   "detector_channels": [4, 8, 8], "detector_output_stride": 2}}
KEEP = ("prior_mean", "prior_var", "denoised", "logits")


def _model(seed: int = 0, **predict: object) -> LoadedModel:
    torch.manual_seed(seed)
    # float32 unless a test asks otherwise: these tests compare with exact passes ("auto" is bfloat16 on CPUs
    # that have it). No ice flattening: these tests feed the network the normalised image themselves
    # (flattening has its own tests, test_background.py).
    config = CryojointConfig.from_dict({**SMALL, "predict": {"precision": "float32", **predict},
                                        "data": {"background_sigma_diameters": None}})
    return LoadedModel(JointModel(config.model).eval(), config, particle_diameter_px=10.0, downsample=1,
                       meta={"expected_particles": 4.0, "training_patch_px": 48})


@given(length=st.integers(1, 600), window=st.integers(8, 128), fraction=st.sampled_from([0.5, 0.6667, 0.75, 1.0]))
def test_windows_cover_the_image_and_stay_inside_it(length: int, window: int, fraction: float) -> None:
    starts = window_starts(length, window, fraction)
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        assert start >= 0 and (start + window <= length or (length <= window and start == 0))
        covered[start:start + window] = True
    assert covered.all()
    assert starts == sorted(set(starts))


@given(window=st.integers(2, 200).map(lambda n: 2 * n))
def test_triangular_weights_of_windows_half_a_window_apart_sum_to_a_constant(window: int) -> None:
    weight = window_weight(window)
    assert (weight > 0).all() and weight.max() <= 1.0
    half = window // 2
    np.testing.assert_allclose(weight[:half] + weight[half:], 1.0, atol=1e-12)


def _naive_blend(run, image: np.ndarray, window: int, fraction: float) -> np.ndarray:
    """The blend written out plainly: a padded copy, a weight image summed window by window, one division."""
    channels = image if image.ndim == 3 else image[None]
    ny, nx = channels.shape[1:]
    padded = np.zeros((channels.shape[0], max(ny, window), max(nx, window)), dtype=np.float64)
    padded[:, :ny, :nx] = channels
    weight = np.outer(window_weight(window), window_weight(window))
    total, weight_sum = np.zeros(padded.shape[1:]), np.zeros(padded.shape[1:])
    for y0 in window_starts(ny, window, fraction):
        for x0 in window_starts(nx, window, fraction):
            piece = padded[None, :, y0:y0 + window, x0:x0 + window].astype(np.float32)
            value = run(torch.from_numpy(piece))["out"][0, 0].double().numpy()
            total[y0:y0 + window, x0:x0 + window] += weight * value
            weight_sum[y0:y0 + window, x0:x0 + window] += weight
    return (total / weight_sum)[:ny, :nx]


@pytest.mark.parametrize(("shape", "window", "fraction", "batch_pixels"),
                         [((70, 53), 16, 0.5, 16 * 16), ((37, 90), 48, 2 / 3, 10**6), ((2, 64, 41), 32, 0.75, 3000)])
def test_blending_equals_the_blend_written_out_plainly(shape: tuple[int, ...], window: int, fraction: float,
                                                       batch_pixels: int) -> None:
    """Windows cut from the image itself, a separable weight and in-place division (memory) give the plain
    blend: sides shorter than a window, sides no multiple of the stride, several channels, any batch."""
    image = np.random.default_rng(3).normal(size=shape).astype(np.float32)

    def run(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        # Depends on where a pixel sits in its window (the roll wraps inside it), so a misplaced window shows.
        first = batch[:, :1]
        return {"out": first * first + torch.roll(batch[:, -1:], 1, dims=-1)}

    blended = _blend_windows(run, image, window, fraction, batch_pixels, "cpu")["out"]
    assert blended.dtype == np.float32 and blended.shape == shape[-2:]
    np.testing.assert_allclose(blended, _naive_blend(run, image, window, fraction), rtol=1e-6, atol=1e-6)


def test_an_image_of_one_window_is_the_network_run_on_that_window() -> None:
    model = _model()
    image = np.random.default_rng(0).normal(size=(48, 48)).astype(np.float32)
    windowed = run_network_on_image(model.network, image, model.config, keep=KEEP, window_px=48)
    with torch.no_grad():
        direct = model.network(torch.from_numpy(image)[None, None], dense=True)
    np.testing.assert_allclose(windowed.prior_mean, direct.prior_mean[0, 0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(windowed.logits, direct.logits[0, 0].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(130, 97), (40, 150)])
def test_the_result_does_not_depend_on_how_many_windows_run_per_pass(shape: tuple[int, int]) -> None:
    """tile_size_px sets memory (windows per pass), never the output; sides no multiple of anything."""
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    one = _model(tile_size_px=64)  # one 48² window per pass
    many = _model(tile_size_px=1024)
    a = run_network_on_image(one.network, image, one.config, keep=KEEP, window_px=48)
    b = run_network_on_image(many.network, image, many.config, keep=KEEP, window_px=48)
    for key in ("prior_mean", "prior_var", "denoised", "logits"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-4, atol=1e-5, err_msg=key)
    assert a.prior_mean.shape == shape


def test_whole_image_context_ignores_the_window() -> None:
    image = np.random.default_rng(2).normal(size=(96, 96)).astype(np.float32)
    whole = _model(context="whole-image")
    windowed = _model()
    exact = run_network_on_image(whole.network, image, whole.config, keep=KEEP)
    also_exact = run_network_on_image(whole.network, image, whole.config, keep=KEEP, window_px=48)
    blended = run_network_on_image(windowed.network, image, windowed.config, keep=KEEP, window_px=48)
    np.testing.assert_array_equal(exact.logits, also_exact.logits)
    assert np.abs(exact.prior_mean - blended.prior_mean).max() > 1e-3  # a different computation


def test_blind_spot_holds_at_every_pixel_in_windows() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(size=(61, 70)).astype(np.float32)
    model = _model()
    keep = ("prior_mean", "prior_var", "denoised")
    base = run_network_on_image(model.network, image, model.config, keep=keep, window_px=48)
    ny, nx = image.shape
    pixels = [(r, c) for r in range(0, ny, 4) for c in range(0, nx, 5)] + [(ny - 1, nx - 1), (0, nx - 1)]
    for r, c in pixels:
        changed = image.copy()
        changed[r, c] += 25.0
        out = run_network_on_image(model.network, changed, model.config, keep=keep, window_px=48)
        assert out.prior_mean[r, c] == pytest.approx(base.prior_mean[r, c], rel=1e-5, abs=1e-5), (r, c)
        assert out.prior_var[r, c] == pytest.approx(base.prior_var[r, c], rel=1e-5, abs=1e-6), (r, c)


def test_predict_runs_in_windows_of_the_models_training_patch() -> None:
    model = _model()
    image = np.random.default_rng(4).normal(size=(100, 90)).astype(np.float32)
    settings = PickingSettings(downsample=1, nms_radius_px=5.0, border_px=0.0, threshold=None, top_fraction=0.25,
                               threshold_rule="expected-count", expected_per_micrograph=4.0)
    predicted = predict_micrograph(model, Micrograph(image, None, "m"), settings)
    from cryojoint.imaging import normalise, robust_centre_spread

    centre, scale = robust_centre_spread(image)
    windowed = run_network_on_image(model.network, normalise(image), model.config, keep=("denoised",), window_px=48)
    np.testing.assert_allclose(predicted.denoised, windowed.denoised * scale + centre, rtol=1e-4, atol=1e-4)
    old_model = dataclasses.replace(model, meta={"expected_particles": 4.0})  # no recorded patch: whole image
    exact = run_network_on_image(model.network, normalise(image), model.config, keep=("denoised",))
    np.testing.assert_allclose(predict_micrograph(old_model, Micrograph(image, None, "m"), settings).denoised,
                               exact.denoised * scale + centre, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(150, 131), (97, 160)])
def test_a_detect_only_model_tiled_equals_its_whole_image_pass(shape: tuple[int, int]) -> None:
    """Blocks must put the stride-2 dense map's nodes on the whole pass's pixels (context a multiple of 2)."""
    torch.manual_seed(6)
    image = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    config = CryojointConfig.from_dict({**SMALL, "predict": {"tile_size_px": 1024, "context": "whole-image"}})
    network = JointModel(config.model, use_denoiser=False).eval()
    whole = run_network_on_image(network, image, config, keep=("logits",))
    tiled_config = dataclasses.replace(config, predict=dataclasses.replace(config.predict, tile_size_px=64))
    tiled = run_network_on_image(network, image, tiled_config, keep=("logits",))
    np.testing.assert_allclose(tiled.logits, whole.logits, rtol=1e-4, atol=1e-5)


def test_windows_a_whole_window_apart_tile_the_image_with_plain_window_outputs() -> None:
    """Windows a whole window apart: no overlap, so each pixel's outputs are those of the one window holding it
    (the detector's window reads the denoised window the network itself would give it)."""
    model = _model(window_stride_fraction=1.0, detector_window_stride_fraction=1.0)
    image = np.random.default_rng(7).normal(size=(96, 144)).astype(np.float32)
    assert window_starts(144, 48, 1.0) == [0, 48, 96]
    tiled = run_network_on_image(model.network, image, model.config, keep=KEEP, window_px=48)
    with torch.no_grad():
        for y0 in (0, 48):
            for x0 in (0, 48, 96):
                window = torch.from_numpy(image[y0:y0 + 48, x0:x0 + 48].copy())[None, None]
                alone = model.network(window, dense=True)
                for key in ("prior_mean", "logits"):
                    np.testing.assert_allclose(getattr(tiled, key)[y0:y0 + 48, x0:x0 + 48],
                                               getattr(alone, key)[0, 0].numpy(), rtol=1e-5, atol=1e-5)


def test_the_detector_blends_its_own_windows_over_the_blended_denoised_image() -> None:
    """Denser detector windows change only the logits; the prior (and so the denoised image) stays."""
    image = np.random.default_rng(8).normal(size=(120, 100)).astype(np.float32)
    half = _model()
    quarter = _model(detector_window_stride_fraction=0.25)
    a = run_network_on_image(half.network, image, half.config, keep=KEEP, window_px=48)
    b = run_network_on_image(quarter.network, image, quarter.config, keep=KEEP, window_px=48)
    np.testing.assert_array_equal(a.prior_mean, b.prior_mean)
    np.testing.assert_array_equal(a.denoised, b.denoised)
    assert np.abs(a.logits - b.logits).max() > 1e-4


def _bfloat16_hardware(monkeypatch: pytest.MonkeyPatch, cpu: bool, cuda: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: cuda)


def test_auto_precision_is_bfloat16_where_the_hardware_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _bfloat16_hardware(monkeypatch, cpu=False, cuda=False)
    assert autocast_dtype("cpu") is None and autocast_dtype("cuda") is torch.float16
    assert autocast_dtype("mps") is None
    _bfloat16_hardware(monkeypatch, cpu=True, cuda=True)
    assert autocast_dtype("cpu") is torch.bfloat16 and autocast_dtype("cuda") is torch.bfloat16
    for device in ("cpu", "cuda"):
        assert autocast_dtype(device, "float32") is None
    assert autocast_dtype("cpu", "bfloat16") is torch.bfloat16
    with pytest.raises(UserInputError, match="unknown precision 'half'"):
        autocast_dtype("cpu", "half")


@pytest.mark.parametrize("native", [False, True])
def test_reduced_precision_changes_outputs_little_and_auto_follows_the_hardware(
        monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """The autocast path (what CUDA and CPUs with bfloat16 run by default) tested on CPU with bfloat16: float32
    outputs, close to the float32 pass; "auto" is the float32 pass bit for bit without bfloat16 hardware and the
    bfloat16 pass with it."""
    _bfloat16_hardware(monkeypatch, cpu=native, cuda=False)
    image = np.random.default_rng(3).normal(size=(100, 90)).astype(np.float32)
    results = {}
    for precision in ("float32", "auto", "bfloat16"):
        model = _model(precision=precision)
        results[precision] = run_network_on_image(model.network, image, model.config, keep=KEEP, window_px=48)
    for key in KEEP:
        exact, auto, reduced = (getattr(results[p], key) for p in ("float32", "auto", "bfloat16"))
        np.testing.assert_array_equal(auto, reduced if native else exact)
        assert reduced.dtype == np.float32
        assert not np.array_equal(reduced, exact)  # the autocast really ran
        assert np.corrcoef(reduced.ravel(), exact.ravel())[0, 1] > 0.999, key


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt only")
def test_freed_memory_is_retained_on_glibc() -> None:
    assert retain_freed_memory() and retain_freed_memory()  # accepted, and harmless to ask twice
