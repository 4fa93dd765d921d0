"""Flattening the ice (data.background_sigma_diameters): gradients go, particles stay, the denoised image keeps
the input's background, and predictions do not depend on a gradient across the micrograph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cryojoint.checkpoint import LoadedModel
from cryojoint.config import CryojointConfig
from cryojoint.errors import UserInputError
from cryojoint.imaging import flatten_background, normalise, smooth_background
from cryojoint.inference import PickingSettings, predict_micrograph
from cryojoint.io.mrc import Micrograph
from cryojoint.models.joint import JointModel

DIAMETER_PX = 12.0
SIGMA_DIAMETERS = 2.0
TINY = {"model": {"unet_encoder_channels": 8, "unet_decoder_channels": 16, "unet_depth": 3,
                  "detector_channels": [8, 16, 16]}}


def _particles(shape: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """Dark Gaussian blobs of about DIAMETER_PX, contrast 1 at their centres, kept apart."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float64)
    margin = int(2 * DIAMETER_PX)
    rows = rng.integers(margin, shape[0] - margin, count)
    cols = rng.integers(margin, shape[1] - margin, count)
    image[rows, cols] = 1.0
    blobs = ndimage.gaussian_filter(image, DIAMETER_PX / 4)
    return -blobs / blobs.max()


def _ramp(shape: tuple[int, int], amplitude: float) -> np.ndarray:
    rows, cols = np.indices(shape)
    return amplitude * (0.6 * cols / shape[1] + 0.4 * rows / shape[0])


def _interior(image: np.ndarray, margin: int) -> np.ndarray:
    return image[margin:-margin, margin:-margin]


@pytest.mark.parametrize("shape", [(37, 45), (257, 449), (640, 618)])
def test_background_has_the_image_shape(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    background = smooth_background(image, SIGMA_DIAMETERS * DIAMETER_PX)
    assert background.shape == shape and background.dtype == np.float32


def test_flattening_removes_a_gradient_and_keeps_the_particles() -> None:
    shape = (384, 416)
    particles = _particles(shape, 40, seed=1)
    noise = np.random.default_rng(2).normal(scale=0.5, size=shape)
    image = normalise(particles + noise + _ramp(shape, 4.0))
    flat, _ = flatten_background(image, SIGMA_DIAMETERS * DIAMETER_PX)
    margin = int(4 * SIGMA_DIAMETERS * DIAMETER_PX)
    large_scale_before = ndimage.gaussian_filter(image, 2 * DIAMETER_PX)
    large_scale_after = ndimage.gaussian_filter(flat, 2 * DIAMETER_PX)
    assert np.ptp(_interior(large_scale_after, margin)) < 0.1 * np.ptp(_interior(large_scale_before, margin))
    # The particles keep their contrast against the noise: the mean over particle centres, in robust sds of the
    # image, changes little.
    centres = particles < -0.9
    assert flat[centres].mean() == pytest.approx(normalise(particles + noise)[centres].mean(), rel=0.15)


def test_restore_puts_back_what_flattening_took_out() -> None:
    image = normalise(np.random.default_rng(3).normal(size=(200, 150)) + _ramp((200, 150), 3.0))
    flat, flattening = flatten_background(image, 20.0)
    np.testing.assert_allclose(flattening.restore(flat), image, atol=1e-5)


def test_gold_does_not_spread_into_its_surroundings() -> None:
    shape = (256, 256)
    image = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    rows, cols = np.indices(shape)
    bead = np.hypot(rows - 128, cols - 128) < 6
    image[bead] = -60.0  # a gold bead: tens of sds darker than the ice
    background = smooth_background(image, SIGMA_DIAMETERS * DIAMETER_PX)
    around = (np.hypot(rows - 128, cols - 128) > 12) & (np.hypot(rows - 128, cols - 128) < 30)
    # Unclipped, the bead's mass (113 px at -60) would pull its surroundings down by ~1 sd.
    assert np.abs(background[around]).max() < 0.2


def test_a_non_positive_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="sigma"):
        smooth_background(np.zeros((64, 64), np.float32), 0.0)
    with pytest.raises(UserInputError, match="background_sigma_diameters"):
        CryojointConfig.from_dict({"data": {"background_sigma_diameters": -1.0}}, source="cfg.yaml")


def _model(background_sigma_diameters: float | None) -> LoadedModel:
    torch.manual_seed(0)
    config = CryojointConfig.from_dict({**TINY, "data": {"background_sigma_diameters": background_sigma_diameters}})
    return LoadedModel(JointModel(config.model).eval(), config, particle_diameter_px=DIAMETER_PX, downsample=1,
                       meta={"expected_particles": 20.0, "training_patch_px": 64})


def _logits_and_denoised(model: LoadedModel, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    micrograph = Micrograph(image.astype(np.float32), None, "m")
    prediction = predict_micrograph(model, micrograph, PickingSettings.resolve(model))
    soft = np.clip(prediction.soft_segmentation.astype(np.float64), 1e-6, 1 - 1e-6)
    return np.log(soft / (1 - soft)), prediction.denoised.astype(np.float64)


def test_predictions_do_not_depend_on_a_gradient_across_the_micrograph() -> None:
    shape = (256, 288)
    rng = np.random.default_rng(5)
    image = 1000.0 + 30.0 * (_particles(shape, 25, seed=6) + rng.normal(scale=1.0, size=shape))
    ramp = 30.0 * _ramp(shape, 2.5)  # 2.5 noise sds across the field: thin to thick ice
    margin = int(4 * SIGMA_DIAMETERS * DIAMETER_PX)

    flattened = _model(SIGMA_DIAMETERS)
    logits, denoised = _logits_and_denoised(flattened, image)
    logits_ramp, denoised_ramp = _logits_and_denoised(flattened, image + ramp)
    spread = np.ptp(_interior(logits, margin))
    assert np.abs(_interior(logits_ramp - logits, margin)).max() < 0.05 * spread
    # The denoised image is in the input's units and keeps its background: the ramp comes back.
    np.testing.assert_allclose(_interior(denoised_ramp - denoised, margin), _interior(ramp, margin), atol=3.0)

    # Without flattening the same network's map moves with the gradient (what the option is for).
    plain = _model(None)
    plain_logits, _ = _logits_and_denoised(plain, image)
    plain_logits_ramp, _ = _logits_and_denoised(plain, image + ramp)
    moved = np.abs(_interior(plain_logits_ramp - plain_logits, margin)).max()
    assert moved > 0.1 * np.ptp(_interior(plain_logits, margin))
