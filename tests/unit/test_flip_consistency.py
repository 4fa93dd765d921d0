"""Flip consistency of the dense detector: a mirror-symmetric detector is exactly consistent at every stride.

The consistency loss compares the dense logits with those of the mirrored batch mirrored back
(:meth:`JointModel.flipped_logits`). For that comparison to measure only the detector's own asymmetry, a detector
whose convolutions are mirror-symmetric must give identical maps, also when the dense map is computed on a
coarse node grid (``detector_output_stride`` 2 or 4) and interpolated, and whatever the parity of the size.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cryojoint.config import ModelConfig
from cryojoint.models import RECEPTIVE_FIELD, JointModel, ResNet8Detector

SMALL = ModelConfig(preset="test", unet_encoder_channels=6, unet_decoder_channels=8, unet_depth=3,
                    detector_channels=(4, 6, 8))
HALF = RECEPTIVE_FIELD // 2
#: Heights and widths, odd and even, including sizes one above and one below a multiple of 4.
SHAPES = [(64, 64), (65, 97), (96, 70), (97, 65), (70, 96)]
FLIP_DIMS = [(-1,), (-2,), (-2, -1)]


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights and non-trivial BatchNorm statistics, drawn from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, torch.nn.Conv2d):
                fan_in = sub.weight[0].numel()  # unit-variance activations: logits of order 1
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator) * fan_in ** -0.5)
                if sub.bias is not None:
                    sub.bias.copy_(torch.randn(sub.bias.shape, generator=generator) * 0.1)
            elif isinstance(sub, torch.nn.BatchNorm2d):
                n = sub.num_features
                sub.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                sub.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                sub.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                sub.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def _symmetrise(detector: ResNet8Detector, dims: tuple[int, ...]) -> None:
    """Make every convolution kernel mirror-symmetric along ``dims``: the detector then commutes with the flip."""
    with torch.no_grad():
        for sub in detector.modules():
            if isinstance(sub, torch.nn.Conv2d):
                for dim in dims:
                    sub.weight.copy_((sub.weight + sub.weight.flip(dim)) / 2)


def _detect_only(stride: int, seed: int, symmetric_dims: tuple[int, ...] = ()) -> JointModel:
    model = JointModel(dataclasses.replace(SMALL, detector_output_stride=stride), use_denoiser=False,
                       use_detector=True)
    _randomise(model, seed)
    _symmetrise(model.detector, symmetric_dims)
    return model.eval()


@pytest.mark.parametrize("flip_dims", FLIP_DIMS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_mirror_symmetric_detector_is_exactly_flip_consistent(stride: int, shape: tuple[int, int],
                                                              flip_dims: tuple[int, ...]) -> None:
    """Symmetric kernels, any size parity, any stride: the mirrored pass mirrored back is the same map."""
    model = _detect_only(stride, seed=100 + stride, symmetric_dims=flip_dims)
    x = torch.randn(2, 1, *shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        out = model(x, dense=True)
        back = model.flipped_logits(x, out, dense=True, flip_dims=flip_dims)
    assert back.shape == out.logits.shape == (2, 1, *shape)
    assert (back - out.logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("stride", [2, 4])
def test_symmetric_detector_is_flip_consistent_in_training_mode(stride: int) -> None:
    """With batch statistics too: both passes see the same padded pixels, so BatchNorm normalises alike."""
    model = _detect_only(stride, seed=7, symmetric_dims=(-1,)).train()
    x = torch.randn(4, 1, 96, 96, generator=torch.Generator().manual_seed(7))
    out = model(x, dense=True)
    back = model.flipped_logits(x, out, dense=True)
    assert (back - out.logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("flip_dims", FLIP_DIMS)
@pytest.mark.parametrize("stride", [2, 4])
def test_flipped_pass_puts_its_nodes_on_the_same_pixels(stride: int, flip_dims: tuple[int, ...]) -> None:
    """Any detector: at node pixels (multiples of the stride) the mirrored pass gives the patch logit of the
    mirrored window centred there, as the forward pass gives the patch logit of the window itself."""
    model = _detect_only(stride, seed=3)
    shape = (70, 67)
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        back = model.flipped_logits(x, model(x, dense=True), dense=True, flip_dims=flip_dims)
        nodes = [(r, c) for r in range(HALF, shape[0] - HALF) for c in range(HALF, shape[1] - HALF)
                 if r % stride == 0 and c % stride == 0]
        assert nodes
        for row, col in nodes:
            window = x[:, :, row - HALF:row + HALF + 1, col - HALF:col + HALF + 1].flip(flip_dims)
            torch.testing.assert_close(model.detector(window)[0, 0, 0, 0], back[0, 0, row, col],
                                       rtol=1e-4, atol=1e-4)


def test_shared_denoiser_mirrored_pass_equals_the_unmirrored_one_for_a_symmetric_detector() -> None:
    """Default detector settings (stride 2, raw image stacked) behind a real, asymmetric denoiser: sharing the
    denoised image mirrors the detector input itself, so a symmetric detector gives the same map; running the
    denoiser again on the mirrored batch does not (the blind-spot U-Net is not mirror-equivariant)."""
    config = dataclasses.replace(ModelConfig(), unet_encoder_channels=6, unet_decoder_channels=8, unet_depth=3,
                                 detector_channels=(4, 6, 8))
    assert config.detector_sees_raw and config.detector_output_stride == 2
    model = JointModel(config)
    _randomise(model, seed=21)
    _symmetrise(model.detector, (-1,))
    model.eval()
    assert model.stack_raw
    x = torch.randn(2, 1, 64, 96, generator=torch.Generator().manual_seed(21))
    with torch.no_grad():
        out = model(x, dense=True)
        shared = model.flipped_logits(x, out, dense=True, share_denoiser=True)
        rerun = model.flipped_logits(x, out, dense=True, share_denoiser=False)
    assert (shared - out.logits).abs().max().item() < 1e-4
    assert (rerun - out.logits).abs().max().item() > 1e-3


@pytest.mark.parametrize("coupled", [False, True])
def test_the_flipped_views_denoiser_pass_records_a_graph_only_when_coupled(coupled: bool) -> None:
    """Decoupled, nothing of the mirrored pass reaches the denoiser: it runs without autograd (cost, not output)."""
    from cryojoint.config import CryojointConfig
    from cryojoint.models.joint import JointModel

    torch.manual_seed(0)
    config = CryojointConfig.from_dict({"model": {"unet_encoder_channels": 4, "unet_decoder_channels": 8,
                                                  "unet_depth": 3, "detector_channels": [4, 8, 8],
                                                  "detection_trains_denoiser": coupled}})
    model = JointModel(config.model).train()
    seen: list[bool] = []
    model.denoiser.register_forward_hook(lambda module, inputs, output: seen.append(torch.is_grad_enabled()))
    x = torch.randn(2, 1, 32, 32)
    output = model(x, dense=True)
    model.flipped_logits(x, output, dense=True)
    assert seen == [True, coupled]
