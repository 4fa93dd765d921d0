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
  the map is computed on the node grid ``(s*k, s*l)``, where the same equality holds exactly, and is linearly
  interpolated between nodes. Each axis gets ``(-(L-1)) % s`` more zeros at its end (indistinguishable from
  the context padding), so that its last padded pixel is a node as well: no value is extrapolated, and every
  kept stride samples its input symmetrically (no valid layer drops a trailing row or column).

Flip consistency (:meth:`cryojoint.models.joint.JointModel.flipped_logits`): the mirrored pass is run with
``mirrored_dims``, which puts the extra zeros at the *start* of the mirrored axes, i.e. it runs the detector on
the mirror image of the very padded input the forward pass saw. Mirrored back, its nodes and interpolation
weights fall on the same pixels as the forward pass's, at every stride and for odd or even sizes; a detector
whose kernels are mirror-symmetric therefore gives the forward map exactly (to float rounding; in training mode
too, as both passes normalise over the same padded pixels), and the consistency loss measures only the
detector's own asymmetry, never interpolation error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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

    def forward(self, x: Tensor, dense: bool = False, mirrored_dims: tuple[int, ...] = ()) -> Tensor:
        """Logits: [B,1,1,1] for the patch centres, or [B,1,H,W] with ``dense=True`` (``mirrored_dims``: see
        :meth:`forward_dense`; dense only)."""
        if not dense:
            if mirrored_dims:
                raise ValueError("mirrored_dims applies to the dense map only")
            return self.forward_patch(x)
        return self.forward_dense(x, mirrored_dims=mirrored_dims)

    def forward_patch(self, x: Tensor) -> Tensor:
        """One logit per image for its centre pixel ``(H//2, W//2)``; needs H, W >= 63."""
        return self._run(centre_window(x), output_stride=TOTAL_STRIDE)

    def forward_dense(self, x: Tensor, output_stride: int | None = None,
                      mirrored_dims: tuple[int, ...] = ()) -> Tensor:
        """A logit for every pixel of ``x`` [B,C,H,W] -> [B,1,H,W] (see the module docstring).

        ``mirrored_dims`` names the spatial axes (-1/3 columns, -2/2 rows) along which ``x`` is the mirror image
        of the batch whose node grid counts: there the nodes are counted from the last pixel, so that the
        result mirrored back has its nodes on the same pixels ``(s*k, s*l)`` as ``forward_dense`` of the
        unmirrored batch. ``forward_dense(x.flip(d), mirrored_dims=d).flip(d)`` is then the map of the mirrored
        detector on ``x``, on the same grid (what the flip-consistency loss compares).
        """
        stride = self.output_stride if output_stride is None else output_stride
        padding, crop = dense_padding(x.shape[2:], stride, mirrored_dims)
        padded = F.pad(x, padding)
        coarse = self._run(padded, output_stride=stride)  # node (k, l) is padded pixel (stride*k, stride*l)
        nodes = tuple((size - RECEPTIVE_FIELD) // stride + 1 for size in padded.shape[2:])
        if tuple(coarse.shape[2:]) != nodes:  # a strided layer dropped a trailing row or column
            raise RuntimeError(f"dense map of {tuple(padded.shape[2:])} px padded input has nodes "
                               f"{tuple(coarse.shape[2:])}, expected {nodes}")
        fine = coarse if stride == 1 else upsample_grid(coarse, stride)
        return fine[:, :, crop[0], crop[1]]

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


def dense_padding(size: Sequence[int], stride: int, mirrored_dims: tuple[int, ...] = (),
                  ) -> tuple[tuple[int, int, int, int], tuple[slice, slice]]:
    """Zero padding of a [B,C,H,W] input for the dense map, and where the map of the input lies in the result.

    Each axis of length L gets the 31 px context on both sides plus ``(-(L-1)) % stride`` px at its end (at its
    start along ``mirrored_dims``), so that the padded length is ``62 + L'`` with ``L' - 1`` a multiple of
    ``stride``: the first and last pixels of the extended image are both nodes of the grid, and mirroring the
    padded input maps nodes onto nodes. Every kept strided layer then also samples its input symmetrically
    (its input length minus its extent 7 is a multiple of 2): the stem reads ``62 + L'`` px, ``L'`` odd; at
    stride 4 the second downsampling block reads ``(L' + 55) / 2 - 5`` px, ``L' - 1`` a multiple of 4.
    :meth:`ResNet8Detector.forward_dense` checks the resulting node count.

    Parameters
    ----------
    size
        Input ``(height, width)``.
    stride
        Output stride of the dense map.
    mirrored_dims
        Axes (-2/2 rows, -1/3 columns) whose extra zeros go first (see :meth:`ResNet8Detector.forward_dense`).

    Returns
    -------
    tuple
        The ``F.pad`` argument ``(left, right, top, bottom)``, and the row and column slices of the
        node-to-node upsampled map that hold the input's pixels.
    """
    mirrored = set()
    for dim in mirrored_dims:
        if dim not in (-2, -1, 2, 3):
            raise ValueError(f"mirrored_dims must name spatial axes (-2, -1), got {mirrored_dims}")
        mirrored.add(dim % 4)
    pads: list[tuple[int, int]] = []
    crops: list[slice] = []
    for axis, length in zip((2, 3), size):
        extra = (-(length - 1)) % stride
        before, after = (extra, 0) if axis in mirrored else (0, extra)
        pads.append((CONTEXT_RADIUS + before, CONTEXT_RADIUS + after))
        crops.append(slice(before, before + length))
    (top, bottom), (left, right) = pads
    return (left, right, top, bottom), (crops[0], crops[1])


def upsample_grid(coarse: Tensor, stride: int) -> Tensor:
    """Linear interpolation of a map whose node (k, l) sits at pixel (stride*k, stride*l), from the first node to
    the last: [B,C,n,m] -> [B,C,(n-1)*stride+1,(m-1)*stride+1]. Node values are kept exactly, and the weights are
    mirror-symmetric (the map of the mirrored nodes is the mirrored map)."""
    nodes_h, nodes_w = coarse.shape[2:]
    return F.interpolate(coarse, size=((nodes_h - 1) * stride + 1, (nodes_w - 1) * stride + 1),
                         mode="bilinear", align_corners=True)


def _valid_output_strides() -> tuple[int, ...]:
    strides = [1]
    for layer_stride in LAYER_STRIDES:
        if layer_stride > 1:
            strides.append(strides[-1] * layer_stride)
    return tuple(strides)
