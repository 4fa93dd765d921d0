"""Topaz-style ResNet8 particle detector (Bepler et al. 2019), re-implemented from its description.

The network is a stack of *valid* (unpadded) convolutions: a 7x7 stride-2 convolution, three residual blocks
with dilated 3x3 convolutions (the second one strided), a 3x3 convolution and a 1x1 classifier. Its receptive
field is :data:`RECEPTIVE_FIELD` = 63 px (Topaz's ResNet8 ends with a 5x5 convolution and sees 71 px; the 3x3
keeps the field inside a 64x64 training patch, so the patch centre's logit depends on that patch only).

Two ways to run the same weights:

* **per patch** (``dense=False``): one logit for the centre pixel ``(H//2, W//2)`` of each patch, computed
  from the 63x63 window centred there (rows ``H//2-31 .. H//2+31``). Output [B,1,1,1].
* **dense** (``dense=True``): a logit for every pixel. The input is zero-padded by 31 px (normalised images
  have mean 0, so padding looks like featureless background) and, as in Topaz's ``fill()``, strides are
  turned into dilations of all later layers, which makes the valid network a sliding window with step 1.
  In eval mode ``dense(x)[i, j] == patch(window of x centred at (i, j))`` for every pixel whose window lies
  inside the image. With ``output_stride`` s > 1 the first strides are kept (cheaper: s^2 fewer positions),
  the map is computed on the grid ``(s*k, s*l)``, where the same equality holds exactly, and is linearly
  interpolated between grid nodes (the last node is repeated past the last row/column).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryojoint.config import ModelConfig

#: Receptive field of the detector, in input pixels (odd, so it has a centre pixel).
RECEPTIVE_FIELD: int = 63
#: Pixels of context on each side of a logit's pixel: the dense map zero-pads the input by this much.
CONTEXT_RADIUS: int = RECEPTIVE_FIELD // 2
STEM_KERNEL: int = 7
HEAD_KERNEL: int = 3
BLOCK_DILATION: int = 2
DOWNSAMPLE_STRIDE: int = 2
#: Strides of the layers in order (stem, block 1, block 2, block 3, head): total stride 4.
LAYER_STRIDES: tuple[int, ...] = (DOWNSAMPLE_STRIDE, 1, DOWNSAMPLE_STRIDE, 1, 1)
TOTAL_STRIDE: int = math.prod(LAYER_STRIDES)
#: Activation layout. oneDNN's CPU convolutions run about twice as fast on channels-last tensors.
MEMORY_FORMAT: torch.memory_format = torch.channels_last


def patch_centre_index(size: int) -> int:
    """Index of the pixel whose logit a patch of ``size`` pixels gives (per axis): ``size // 2``."""
    return size // 2


def centre_window(x: Tensor) -> Tensor:
    """The detector's receptive field around each patch's centre pixel ``(H//2, W//2)``: [B,C,63,63]."""
    height, width = x.shape[2:]
    if min(height, width) < RECEPTIVE_FIELD:
        raise ValueError(f"patch {height}x{width} is smaller than the receptive field {RECEPTIVE_FIELD}")
    top = patch_centre_index(height) - CONTEXT_RADIUS
    left = patch_centre_index(width) - CONTEXT_RADIUS
    return x[:, :, top:top + RECEPTIVE_FIELD, left:left + RECEPTIVE_FIELD]


def soft_segmentation(logits: Tensor, clamp: float) -> Tensor:
    """The paper's "modified sigmoid": sigmoid of the logits clamped to ``[clamp, 1 - clamp]``.

    Parameters
    ----------
    logits
        Detector output, any shape.
    clamp
        Distance kept from 0 and 1 (config ``sigmoid_clamp``, 1e-4), so that no pixel is ever certain.

    Returns
    -------
    Tensor
        Soft segmentation map in ``[clamp, 1 - clamp]``, same shape as ``logits``.
    """
    return torch.sigmoid(logits).clamp(clamp, 1.0 - clamp)


class _ConvBnRelu(nn.Module):
    """Valid convolution, BatchNorm, ReLU (Topaz ``BasicConv2d``); dilation/stride chosen at call time."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.stride = stride

    def forward(self, x: Tensor, spacing: int, strided: bool) -> Tensor:
        stride = self.stride if strided else 1
        y = F.conv2d(x, self.conv.weight, stride=stride, dilation=spacing)
        return F.relu(self.bn(y))


class _ResidualBlock(nn.Module):
    """Topaz ``ResidA``: 3x3 conv, BN, ReLU, dilated 3x3 conv (+ stride), add the cropped input, BN, ReLU."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, hidden_channels, 3, bias=False)
        self.bn0 = nn.BatchNorm2d(hidden_channels)
        self.conv1 = nn.Conv2d(hidden_channels, out_channels, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.proj = nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None
        self.stride = stride

    def forward(self, x: Tensor, spacing: int, strided: bool) -> Tensor:
        stride = self.stride if strided else 1
        h = F.relu(self.bn0(F.conv2d(x, self.conv0.weight, dilation=spacing)))
        y = F.conv2d(h, self.conv1.weight, stride=stride, dilation=BLOCK_DILATION * spacing)
        edge = spacing + BLOCK_DILATION * spacing  # what the two convolutions trimmed from each side
        shortcut = x[:, :, edge:x.shape[2] - edge, edge:x.shape[3] - edge]
        if self.proj is not None:
            shortcut = F.conv2d(shortcut, self.proj.weight, stride=stride)
        elif stride > 1:
            shortcut = shortcut[:, :, ::stride, ::stride]
        return F.relu(self.bn1(y + shortcut))


class ResNet8Detector(nn.Module):
    """ResNet8 classifier giving a particle logit per patch (training) or per pixel (inference).

    Parameters
    ----------
    config
        ``detector_channels`` (three widths, paper 32/64/128) and ``detector_output_stride`` (1, 2 or 4:
        the grid on which the dense map is computed before interpolation).
    """

    def __init__(self, config: ModelConfig, in_channels: int = 1) -> None:
        super().__init__()
        if len(config.detector_channels) != 3:
            raise ValueError(f"detector_channels needs 3 widths, got {config.detector_channels}")
        if config.detector_output_stride not in _valid_output_strides():
            raise ValueError(f"detector_output_stride must be one of {_valid_output_strides()}, "
                             f"got {config.detector_output_stride}")
        c0, c1, c2 = config.detector_channels
        self.layers = nn.ModuleList([
            _ConvBnRelu(in_channels, c0, STEM_KERNEL, LAYER_STRIDES[0]),
            _ResidualBlock(c0, c0, c0, LAYER_STRIDES[1]),
            _ResidualBlock(c0, c0, c1, LAYER_STRIDES[2]),
            _ResidualBlock(c1, c1, c1, LAYER_STRIDES[3]),
            _ConvBnRelu(c1, c2, HEAD_KERNEL, LAYER_STRIDES[4]),
        ])
        self.classifier = nn.Conv2d(c2, 1, 1)
        self.output_stride = config.detector_output_stride
        self.receptive_field = RECEPTIVE_FIELD
        self.to(memory_format=MEMORY_FORMAT)

    def initialise_prior(self, pi: float) -> None:
        """Set the classifier bias to ``logit(pi)``, so an untrained detector's mean output is near the
        expected positive fraction instead of 0.5 (a gentler start for the PU loss). Call before training."""
        if not 0.0 < pi < 1.0:
            raise ValueError(f"pi must be in (0, 1), got {pi}")
        with torch.no_grad():
            self.classifier.bias.fill_(math.log(pi / (1.0 - pi)))

    def forward(self, x: Tensor, dense: bool = False) -> Tensor:
        """Logits: [B,1,1,1] for the patch centres, or [B,1,H,W] with ``dense=True``."""
        return self.forward_dense(x) if dense else self.forward_patch(x)

    def forward_patch(self, x: Tensor) -> Tensor:
        """One logit per image for its centre pixel ``(H//2, W//2)``; needs H, W >= 63."""
        return self._run(centre_window(x), output_stride=TOTAL_STRIDE)

    def forward_dense(self, x: Tensor, output_stride: int | None = None) -> Tensor:
        """A logit for every pixel of ``x`` [B,1,H,W] -> [B,1,H,W] (see the module docstring)."""
        stride = self.output_stride if output_stride is None else output_stride
        height, width = x.shape[2:]
        padded = F.pad(x, (CONTEXT_RADIUS,) * 4)
        coarse = self._run(padded, output_stride=stride)  # node (k, l) is pixel (stride*k, stride*l)
        if stride == 1:
            return coarse
        return upsample_grid(coarse, stride, (height, width))

    def _run(self, x: Tensor, output_stride: int) -> Tensor:
        """Valid forward pass keeping strides until ``output_stride`` is reached, dilating afterwards."""
        x = x.contiguous(memory_format=MEMORY_FORMAT)
        spacing, kept = 1, 1
        for layer in self.layers:
            strided = layer.stride > 1 and kept < output_stride
            x = layer(x, spacing=spacing, strided=strided)
            if layer.stride > 1:
                if strided:
                    kept *= layer.stride
                else:
                    spacing *= layer.stride  # the stride became a dilation of every later layer
        return self.classifier(x)


def upsample_grid(coarse: Tensor, stride: int, size: tuple[int, int]) -> Tensor:
    """Linear interpolation of a map whose node (k, l) sits at pixel (stride*k, stride*l), to ``size``.

    Node values are kept exactly; past the last node the last value is repeated.
    """
    extended = F.pad(coarse, (0, 1, 0, 1), mode="replicate")
    nodes_h, nodes_w = extended.shape[2:]
    fine = F.interpolate(extended, size=((nodes_h - 1) * stride + 1, (nodes_w - 1) * stride + 1),
                         mode="bilinear", align_corners=True)
    return fine[:, :, : size[0], : size[1]]


def _valid_output_strides() -> tuple[int, ...]:
    strides = [1]
    for layer_stride in LAYER_STRIDES:
        if layer_stride > 1:
            strides.append(strides[-1] * layer_stride)
    return tuple(strides)
