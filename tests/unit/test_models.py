"""Networks: blind-spot property, dense == per-patch detector, shapes, posterior mean, joint plumbing."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

import cryojoint.models.unet as unet_module
from cryojoint.config import MODEL_PRESETS, ModelConfig, model_config_for_preset
from cryojoint.models import (
    RECEPTIVE_FIELD,
    BlindSpotUNet,
    JointModel,
    ResNet8Detector,
    centre_window,
    patch_centre_index,
    posterior_mean,
    soft_segmentation,
)

SMALL = ModelConfig(preset="test", unet_encoder_channels=6, unet_decoder_channels=8, unet_depth=3,
                    detector_channels=(4, 6, 8), detector_output_stride=1)
HALF = RECEPTIVE_FIELD // 2


def _randomise_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BN is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(n, generator=generator))
            module.bias.data.copy_(torch.randn(n, generator=generator))


# --- blind-spot U-Net ------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_model", ["constant", "estimator"])
@pytest.mark.parametrize("shape", [(32, 32), (32, 48)])
def test_blind_spot_output_never_sees_its_own_input_pixel(noise_model: str, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = BlindSpotUNet(dataclasses.replace(SMALL, noise_model=noise_model))
    x = torch.randn(1, 1, *shape, requires_grad=True)
    out = net(x)
    # odd/even rows and columns, away from the border so every neighbour exists
    for row, col in [(10, 11), (11, 10), (16, 16), (17, 21)]:
        for field in (out.prior_mean, out.prior_var):
            (grad,) = torch.autograd.grad(field[0, 0, row, col], x, retain_graph=True)
            grad = grad[0, 0]
            assert grad[row, col] == 0.0
            for dr, dc in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
                assert grad[row + dr, col + dc] != 0.0, (row, col, dr, dc)


def _reference_prior(net: BlindSpotUNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Laine et al.'s construction written out plainly: rotate, U-Net, shift down one row (zero on top),
    un-rotate, concatenate the four branches, 1x1 convolutions. The network's fused path must equal it."""
    branches = []
    for k in range(4):
        features = net._unet(torch.rot90(x, k, dims=(2, 3)))
        shifted = torch.nn.functional.pad(features, (0, 0, 1, 0))[:, :, :features.shape[2]]
        branches.append(torch.rot90(shifted, -k, dims=(2, 3)))
    merged = net.merge(torch.cat(branches, dim=1))
    return merged[:, 0:1], torch.nn.functional.softplus(merged[:, 1:2]) + 1e-6


@pytest.mark.parametrize("shape", [(32, 32), (32, 48), (512, 272)])
def test_fused_branches_and_merge_equal_the_plain_construction(shape: tuple[int, int]) -> None:
    """Square, non-square and large inputs (one rotation per pass) take different code paths."""
    torch.manual_seed(3)
    net = BlindSpotUNet(SMALL).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        out = net(x)
        mean, var = _reference_prior(net, x)
    torch.testing.assert_close(out.prior_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.prior_var, var, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(32, 32), (32, 48)])
def test_training_path_equals_the_plain_construction_in_values_and_gradients(shape: tuple[int, int]) -> None:
    """With autograd on, padding, up-sampling and the branches' shifts run out of place (training speed); the
    prior and every weight's gradient must be those of the plain construction."""
    torch.manual_seed(4)
    net = BlindSpotUNet(SMALL).train()
    x = torch.randn(2, 1, *shape)
    target = torch.randn(2, 1, *shape)

    def loss_and_grads(prior: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        mean, var = prior
        loss = ((mean - target) ** 2 / var + var.log()).mean()
        return loss.detach(), list(torch.autograd.grad(loss, list(net.merge.parameters())
                                                      + list(net.encoder_in.parameters())))

    out = net(x)
    fused_loss, fused_grads = loss_and_grads((out.prior_mean, out.prior_var))
    plain_loss, plain_grads = loss_and_grads(_reference_prior(net, x))
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-5, atol=1e-6)
    for fused, plain in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        untracked = net(x)
    torch.testing.assert_close(untracked.prior_mean, out.prior_mean.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not unet_module._FUSED_CONVOLUTION, reason="this torch has no oneDNN fused convolution")
@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_fused_inference_convolutions_equal_the_unfused_network(precision: torch.dtype | None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference fuses each blind convolution with its activation; float32 gives the same numbers, bfloat16
    the same within its rounding (the activation is applied before rounding instead of after)."""
    torch.manual_seed(5)
    net = BlindSpotUNet(SMALL).eval()
    x = torch.randn(2, 1, 32, 48)
    calls = []
    fused_call = unet_module.conv_leaky_relu_fused

    def counted(*args: object) -> torch.Tensor | None:
        result = fused_call(*args)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(unet_module, "conv_leaky_relu_fused", counted)
    autocast = torch.autocast("cpu", dtype=precision) if precision else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        fused = net(x)
        assert calls and all(calls)
        monkeypatch.setattr(unet_module, "_FUSED_CONVOLUTION", False)
        plain = net(x)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if precision is None else {"rtol": 0.05, "atol": 0.05}
    torch.testing.assert_close(fused.prior_mean.float(), plain.prior_mean.float(), **tolerance)
    torch.testing.assert_close(fused.prior_var.float(), plain.prior_var.float(), **tolerance)


def test_training_never_takes_the_fused_convolution() -> None:
    """oneDNN's fused convolution has no backward: with autograd on the plain convolution runs."""
    conv = torch.nn.Conv2d(2, 3, 3)
    assert unet_module.conv_leaky_relu_fused(torch.randn(1, 2, 8, 8), conv, 0.1) is None
    with torch.no_grad():
        fused = unet_module.conv_leaky_relu_fused(torch.randn(1, 2, 8, 8), conv, 0.1)
    assert fused is not None or not unet_module._FUSED_CONVOLUTION


def test_blind_spot_rejects_size_not_multiple_of_pooling() -> None:
    net = BlindSpotUNet(SMALL)
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.zeros(1, 1, 32, 36))


def test_noise_and_prior_variances_are_positive() -> None:
    torch.manual_seed(1)
    for noise_model in ("constant", "estimator"):
        out = BlindSpotUNet(dataclasses.replace(SMALL, noise_model=noise_model))(torch.randn(3, 1, 16, 16) * 5)
        assert out.noise_var.shape == (3, 1, 1, 1)
        assert (out.noise_var > 0).all() and (out.prior_var > 0).all()


@pytest.mark.parametrize("noise_model", ["constant", "estimator"])
def test_initialise_noise_std(noise_model: str) -> None:
    torch.manual_seed(13)
    net = BlindSpotUNet(dataclasses.replace(SMALL, noise_model=noise_model))
    net.initialise_noise_std(0.8)
    noise_var = net(torch.randn(2, 1, 16, 16)).noise_var
    torch.testing.assert_close(noise_var.sqrt(), torch.full((2, 1, 1, 1), 0.8))


def test_posterior_mean_limits() -> None:
    generator = torch.Generator().manual_seed(2)
    y, mu = torch.randn(2, 1, 8, 8, generator=generator), torch.randn(2, 1, 8, 8, generator=generator)
    var = torch.rand(2, 1, 8, 8, generator=generator) + 0.1
    tiny = torch.full_like(var, 1e-12)
    torch.testing.assert_close(posterior_mean(y, mu, tiny, var), mu)  # sure prior: the prior mean
    torch.testing.assert_close(posterior_mean(y, mu, var, tiny), y)  # no noise: the observation
    torch.testing.assert_close(posterior_mean(y, mu, var, var), (y + mu) / 2)  # equal variances: halfway


# --- ResNet8 detector ------------------------------------------------------------------------------------


def test_detector_receptive_field_is_the_centre_window() -> None:
    torch.manual_seed(3)
    detector = ResNet8Detector(SMALL).eval()
    _randomise_batchnorm(detector, seed=3)
    x = torch.randn(1, 1, 64, 64, requires_grad=True)
    detector(x)[0, 0, 0, 0].backward()
    seen = (x.grad[0, 0] != 0).nonzero()
    centre = patch_centre_index(64)
    assert seen.min(0).values.tolist() == [centre - HALF, centre - HALF]
    assert seen.max(0).values.tolist() == [centre + HALF, centre + HALF]


@pytest.mark.parametrize("output_stride", [1, 2, 4])
@pytest.mark.parametrize("shape", [(64, 64), (71, 66)])
def test_dense_map_equals_patch_logits_at_the_same_centres(output_stride: int, shape: tuple[int, int]) -> None:
    torch.manual_seed(4)
    detector = ResNet8Detector(dataclasses.replace(SMALL, detector_output_stride=output_stride)).eval()
    _randomise_batchnorm(detector, seed=4)
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        dense = detector(x, dense=True)
        assert dense.shape == (2, 1, *shape)
        centres = [(r, c) for r in range(HALF, shape[0] - HALF) for c in range(HALF, shape[1] - HALF)
                   if r % output_stride == 0 and c % output_stride == 0]
        assert centres
        for row, col in centres:
            patch = x[:, :, row - HALF:row + HALF + 1, col - HALF:col + HALF + 1]
            torch.testing.assert_close(detector(patch)[:, 0, 0, 0], dense[:, 0, row, col], rtol=1e-4, atol=1e-4)


def test_patch_logit_depends_on_the_centre_of_even_and_odd_patches() -> None:
    torch.manual_seed(5)
    detector = ResNet8Detector(SMALL).eval()
    _randomise_batchnorm(detector, seed=5)
    x = torch.randn(1, 1, 80, 80)
    with torch.no_grad():
        dense = detector(x, dense=True)
        for size in (64, 65):
            patch = x[:, :, 5:5 + size, 7:7 + size]
            centre = patch_centre_index(size)
            torch.testing.assert_close(detector(patch)[0, 0, 0, 0], dense[0, 0, 5 + centre, 7 + centre],
                                       rtol=1e-4, atol=1e-4)
    assert centre_window(patch).shape[2:] == (RECEPTIVE_FIELD, RECEPTIVE_FIELD)
    with pytest.raises(ValueError, match="receptive field"):
        detector(torch.zeros(1, 1, 62, 64))


def test_initialise_prior_sets_the_mean_output_near_pi() -> None:
    torch.manual_seed(12)
    detector = ResNet8Detector(SMALL).eval()
    detector.initialise_prior(0.02)
    assert torch.sigmoid(detector.classifier.bias).item() == pytest.approx(0.02)
    with pytest.raises(ValueError):
        detector.initialise_prior(1.0)


def test_soft_segmentation_is_clamped() -> None:
    probabilities = soft_segmentation(torch.tensor([-100.0, 0.0, 100.0]), clamp=1e-3)
    torch.testing.assert_close(probabilities, torch.tensor([1e-3, 0.5, 1 - 1e-3]))


# --- joint model -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
def test_output_shapes_of_each_preset(preset: str) -> None:
    torch.manual_seed(6)
    model = JointModel(model_config_for_preset(preset)).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        per_patch, dense = model(x, dense=False), model(x, dense=True)
    for out in (per_patch, dense):
        assert out.prior_mean.shape == out.prior_var.shape == out.denoised.shape == (2, 1, 64, 64)
        assert out.noise_var.shape == (2, 1, 1, 1)
    assert per_patch.logits.shape == (2, 1, 1, 1)
    assert dense.logits.shape == (2, 1, 64, 64)


def test_paper_preset_is_the_published_architecture() -> None:
    config = model_config_for_preset("paper")
    model = JointModel(config)
    first_encoder_conv = model.denoiser.encoder_in[0].conv
    last_decoder_conv = model.denoiser.decoders[-1][-1].conv
    assert first_encoder_conv.out_channels == 48 and last_decoder_conv.out_channels == 96
    assert model.denoiser.depth == 5 and model.size_multiple == 32
    widths = [m.out_channels for m in model.detector.modules()
              if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert sorted(set(widths)) == [32, 64, 128]


def test_partial_models() -> None:
    torch.manual_seed(7)
    x = torch.randn(1, 1, 64, 64)
    detect_only = JointModel(SMALL, use_denoiser=False)(x, dense=True)
    assert detect_only.denoised is None and detect_only.prior_mean is None
    assert detect_only.logits.shape == (1, 1, 64, 64)
    denoise_only = JointModel(SMALL, use_detector=False)(x)
    assert denoise_only.logits is None and denoise_only.denoised.shape == (1, 1, 64, 64)
    with pytest.raises(ValueError):
        JointModel(SMALL, use_denoiser=False, use_detector=False)


def test_detection_gradient_reaches_the_denoiser_unless_frozen() -> None:
    torch.manual_seed(8)
    model = JointModel(dataclasses.replace(SMALL, detection_trains_denoiser=True))  # the coupling (paper)
    x = torch.randn(2, 1, 64, 64)
    model(x).logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.denoiser.merge.parameters())
    model.zero_grad(set_to_none=True)
    model.freeze_denoiser()
    model.train()
    assert not model.denoiser.training
    model(x).logits.sum().backward()
    assert all(p.grad is None for p in model.denoiser.parameters())
    assert all(p.grad is not None for p in model.detector.parameters())


def test_set_trainable_applies_a_stage_and_never_thaws_the_denoiser() -> None:
    torch.manual_seed(8)
    model = JointModel(SMALL)  # default config: decoupled
    x = torch.randn(2, 1, 64, 64)
    model.set_trainable(denoiser=True, detector=True, detection_trains_denoiser=True)  # coupling set per stage
    model(x).logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.denoiser.merge.parameters())
    model.zero_grad(set_to_none=True)
    model.set_trainable(denoiser=False, detector=True, detection_trains_denoiser=False)
    model(x).logits.sum().backward()
    assert all(p.grad is None for p in model.denoiser.parameters()) and model.denoiser_frozen
    with pytest.raises(ValueError, match="frozen"):
        model.set_trainable(denoiser=True, detector=True, detection_trains_denoiser=False)
    detect_only = JointModel(SMALL, use_denoiser=False)
    detect_only.set_trainable(denoiser=False, detector=False, detection_trains_denoiser=False)  # no denoiser: skipped
    assert not any(p.requires_grad for p in detect_only.detector.parameters())


def test_inference_is_deterministic() -> None:
    torch.manual_seed(9)
    model = JointModel(SMALL).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        first, second = model(x, dense=True), model(x, dense=True)
    assert torch.equal(first.logits, second.logits) and torch.equal(first.denoised, second.denoised)


@pytest.mark.parametrize("share_denoiser", [False, True])
def test_flipped_patch_logit_is_the_centre_of_the_flipped_dense_map(share_denoiser: bool) -> None:
    """Mirroring an even patch must keep its centre pixel: per-patch and dense flipped passes agree."""
    torch.manual_seed(10)
    model = JointModel(SMALL).eval()
    _randomise_batchnorm(model, seed=10)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = model(x, dense=True)
        flipped_dense = model.flipped_logits(x, out, dense=True, share_denoiser=share_denoiser)
        flipped_patch = model.flipped_logits(x, out, dense=False, share_denoiser=share_denoiser)
    centre = patch_centre_index(64)
    torch.testing.assert_close(flipped_patch[:, 0, 0, 0], flipped_dense[:, 0, centre, centre],
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(flipped_dense, out.logits)  # the network is not mirror-symmetric


def test_flipped_pass_with_shared_denoiser_equals_detector_on_mirrored_denoised_image() -> None:
    torch.manual_seed(11)
    model = JointModel(SMALL).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        out = model(x, dense=True)
        shared = model.flipped_logits(x, out, dense=True, share_denoiser=True)
        stacked = torch.cat([out.denoised, x], dim=1) if model.stack_raw else out.denoised
        expected = model.detector(stacked.flip(-1), dense=True).flip(-1)
        rerun = model.flipped_logits(x, out, dense=True, share_denoiser=False)
    torch.testing.assert_close(shared, expected)
    assert not torch.allclose(rerun, shared)  # the blind-spot denoiser is not flip-equivariant


@pytest.mark.parametrize("sees_raw", [True, False])
def test_detector_reads_the_denoised_image_and_optionally_the_raw_one(sees_raw: bool) -> None:
    """With ``detector_sees_raw`` the raw input is a second channel: changing it changes the logits directly."""
    torch.manual_seed(12)
    model = JointModel(dataclasses.replace(SMALL, detector_sees_raw=sees_raw)).eval()
    assert model.detector.layers[0].conv.in_channels == (2 if sees_raw else 1)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        out = model(x, dense=True)
        stacked = torch.cat([out.denoised, x], dim=1) if sees_raw else out.denoised
        torch.testing.assert_close(out.logits, model.detector(stacked, dense=True))
    detect_only = JointModel(dataclasses.replace(SMALL, detector_sees_raw=sees_raw), use_denoiser=False)
    assert detect_only.detector.layers[0].conv.in_channels == 1
