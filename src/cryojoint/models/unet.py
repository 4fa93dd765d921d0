"""Blind-spot U-Net denoiser (Laine, Karras, Lehtinen & Aila 2019, "High-quality self-supervised deep image
denoising"), re-implemented from the paper's description.

Why blind-spot: the network is trained on the noisy micrograph itself. If an output pixel could see its own
input pixel, predicting the noisy value would be the trivial optimum. Here every output pixel sees only its
neighbours, so the best it can do is predict the *clean* signal (noise is pixel-independent).

How: the input is rotated by 0/90/180/270 degrees and the four copies go through one U-Net whose receptive
field is restricted to pixels at or above the output row (each 3x3 convolution sees its input shifted down by
one row, and each 2x2 max-pooling is preceded by a one-row shift so that up-sampling cannot leak the row
below). Shifting each branch's output down by one more row makes it see *strictly* above; un-rotating the four
branches gives views from above, below, left and right, whose union is every pixel except the centre. 1x1
convolutions merge them into a per-pixel Gaussian prior N(mu, A^2) on the clean value. The noise is Gaussian
with variance sigma^2 (one learnable constant, or one value per image from a small non-blind estimator), and
the denoised image is the posterior mean, which does use the centre pixel:
``(y*A^2 + mu*sigma^2) / (A^2 + sigma^2)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryojoint.config import ModelConfig

#: Rotations (in multiples of 90 degrees) whose half-plane views together cover every pixel but the centre.
ROTATIONS: tuple[int, ...] = (0, 1, 2, 3)
#: Smallest prior / noise variance, so that the likelihood's log and division stay finite.
MIN_VARIANCE: float = 1e-6
#: Initial noise standard deviation when none is given. Inputs are normalised to unit standard deviation and
#: at the doses this tool is for (SNR << 1) nearly all of that is noise. Adam moves the raw parameter by about
#: the learning rate per step, so a poor start takes thousands of steps to correct: prefer
#: :meth:`BlindSpotUNet.initialise_noise_std` with an estimate from the data.
INITIAL_NOISE_STD: float = 0.9
#: Hidden channels of the small non-blind noise estimator (``noise_model="estimator"``).
ESTIMATOR_CHANNELS: int = 16
#: 2x2 max-poolings in the noise estimator (it only needs a coarse view to estimate one number per image).
ESTIMATOR_POOLINGS: int = 2
CONV_KERNEL: int = 3
NOISE_MODELS: tuple[str, ...] = ("constant", "estimator")
#: Largest batch x height x width whose four rotations run as one batch; beyond it, one rotation at a time.
ROTATION_BATCH_MAX_PIXELS: int = 512 * 512
#: Activation layout. oneDNN's CPU convolutions run about twice as fast on channels-last tensors.
MEMORY_FORMAT: torch.memory_format = torch.channels_last
#: The branch's final one-row down shift (rotated frame), seen after un-rotating rotation k: (rows, columns).
UNROTATED_SHIFTS: dict[int, tuple[int, int]] = {0: (1, 0), 1: (0, -1), 2: (-1, 0), 3: (0, 1)}


class DenoiserOutput(NamedTuple):
    """Per-pixel Gaussian prior on the clean image and the noise variance (all [B,1,H,W]-broadcastable)."""

    prior_mean: Tensor  # mu, [B,1,H,W]
    prior_var: Tensor  # A^2 > 0, [B,1,H,W]
    noise_var: Tensor  # sigma^2 > 0, [B,1,1,1]


def posterior_mean(y: Tensor, mu: Tensor, a2: Tensor, s2: Tensor) -> Tensor:
    """Posterior mean of the clean value given noisy ``y``, prior N(mu, a2) and noise variance ``s2``.

    Parameters
    ----------
    y, mu, a2, s2
        Broadcastable tensors: observation, prior mean, prior variance, noise variance.

    Returns
    -------
    Tensor
        ``(y*a2 + mu*s2) / (a2 + s2)``: trusts the observation where the prior is vague (a2 >> s2) and the
        prior where the noise dominates. This is the denoised image.
    """
    return (y * a2 + mu * s2) / (a2 + s2)


class BlindConv2d(nn.Module):
    """3x3 convolution whose output at row i sees input rows i-2..i only (never below), then LeakyReLU.

    Equivalent to Laine's "shift the input down by kernel//2, convolve with 'same' padding, crop", done as
    one asymmetric zero pad (:func:`blind_pad`: 2 rows on top, none below, 1 column each side) and a valid
    convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, slope: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, CONV_KERNEL)
        self.act = nn.LeakyReLU(slope, inplace=True)  # acts on the fresh convolution output: safe in place
        _he_init(self.conv, slope)

    def forward(self, x: Tensor, prepadded: bool = False) -> Tensor:
        """``prepadded=True``: ``x`` already went through :func:`blind_pad` (or :func:`upsample_concat_pad`)."""
        padded = x if prepadded else blind_pad(x)
        fused = conv_leaky_relu_fused(padded, self.conv, self.act.negative_slope)
        return fused if fused is not None else self.act(self.conv(padded))


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast casts convolutions to, ``None`` when it is off (or this torch cannot say)."""
    try:
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    except (AttributeError, TypeError):  # torch < 2.4
        return None


def conv_leaky_relu_fused(x: Tensor, conv: nn.Conv2d, slope: float) -> Tensor | None:
    """``leaky_relu(conv(x))`` as one oneDNN convolution with the activation as its post-op (what
    ``torch.compile`` emits on CPUs), or ``None`` where it does not apply: autograd on, not a CPU, no oneDNN.

    Why: at inference the activation, a pass over the memory as large as the convolution's output, took a fifth
    of the time of a 1024² micrograph. In float32 the result is the unfused one; under bfloat16 autocast the
    activation is applied before the output is rounded to bfloat16 instead of after, which moves negative
    outputs by at most one bfloat16 unit.
    """
    if (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)) or x.device.type != "cpu" \
            or not _FUSED_CONVOLUTION:
        return None
    dtype = _cpu_autocast_dtype() or x.dtype
    bias = None if conv.bias is None else conv.bias.to(dtype)
    return torch.ops.mkldnn._convolution_pointwise(
        x.to(dtype), conv.weight.to(dtype), bias, list(conv.padding), list(conv.stride), list(conv.dilation),
        conv.groups, "leaky_relu", [slope], "")


#: oneDNN's fused convolution (torch's CPU builds with oneDNN; absent elsewhere).
_FUSED_CONVOLUTION: bool = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                                            "_convolution_pointwise")


#: Zero rows added on top / zero columns on each side before a valid 3x3 blind convolution.
PAD_TOP: int = 2 * (CONV_KERNEL // 2)
PAD_SIDE: int = CONV_KERNEL // 2


def _padded_buffer(like: Tensor, height: int, width: int, channels: int) -> Tensor:
    """Uninitialised [B, H+2, W+2, C] (NHWC) buffer whose padding border (top rows, side columns) is zero.

    Zeroing only the border, then writing the interior once, avoids ``F.pad``'s full zero fill + copy.
    """
    buffer = like.new_empty(like.shape[0], height + PAD_TOP, width + 2 * PAD_SIDE, channels)
    buffer[:, :PAD_TOP].zero_()
    buffer[:, PAD_TOP:, :PAD_SIDE].zero_()
    buffer[:, PAD_TOP:, width + PAD_SIDE:].zero_()
    return buffer


def _interior(buffer: Tensor) -> Tensor:
    return buffer[:, PAD_TOP:, PAD_SIDE:buffer.shape[2] - PAD_SIDE]


def blind_pad(x: Tensor) -> Tensor:
    """Zero-pad [B,C,H,W] by 2 rows on top and 1 column each side; returns a channels-last tensor.

    Where autograd tracks ``x`` (training) ``F.pad``: the backward of an in-place copy into a buffer
    (``CopySlices``) clones the buffer's whole gradient, which cost more than the copy saved.
    """
    if x.requires_grad:
        return F.pad(x, (PAD_SIDE, PAD_SIDE, PAD_TOP, 0)).contiguous(memory_format=MEMORY_FORMAT)
    batch, channels, height, width = x.shape
    buffer = _padded_buffer(x, height, width, channels)
    _interior(buffer).copy_(x.permute(0, 2, 3, 1))
    return buffer.permute(0, 3, 1, 2)


def upsample_concat_pad(coarse: Tensor, skip: Tensor) -> Tensor:
    """``blind_pad(cat([nearest_upsample_2x(coarse), skip], channels))`` in one pass over the memory (out of
    place where autograd tracks the inputs, as in :func:`blind_pad`)."""
    if coarse.requires_grad or skip.requires_grad:
        # Padded apart, then concatenated: padding the concatenation (an odd channel count at full resolution)
        # took a slow path, 36 vs 12 ms forward + backward at [16, 49, 96, 96].
        upsampled = blind_pad(F.interpolate(coarse, scale_factor=2, mode="nearest"))
        return torch.cat([upsampled, blind_pad(skip.to(upsampled.dtype))], dim=1).contiguous(
            memory_format=MEMORY_FORMAT)
    batch, coarse_channels, height, width = coarse.shape
    buffer = _padded_buffer(coarse, 2 * height, 2 * width, coarse_channels + skip.shape[1])
    interior = _interior(buffer)
    upsampled = interior[..., :coarse_channels].unflatten(1, (height, 2)).unflatten(3, (width, 2))
    upsampled.copy_(coarse.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand_as(upsampled))
    interior[..., coarse_channels:].copy_(skip.permute(0, 2, 3, 1))
    return buffer.permute(0, 3, 1, 2)


def copy_shifted(target: Tensor, source: Tensor, rows: int, columns: int) -> None:
    """``target[i, j] = source[i - rows, j - columns]`` over [B,H,W,C] tensors, zeros where that falls outside.

    The un-rotated branch and its one-pixel shift in one copy (instead of a padded, shifted copy of the
    rotated features followed by the un-rotated copy).
    """
    height, width = source.shape[1:3]

    def spans(offset: int, length: int) -> tuple[slice, slice, slice]:
        """Target span, source span, and the target's uncovered edge (rows/columns left zero)."""
        if offset >= 0:
            return slice(offset, length), slice(0, length - offset), slice(0, offset)
        return slice(0, length + offset), slice(-offset, length), slice(length + offset, length)

    target_rows, source_rows, edge_rows = spans(rows, height)
    target_columns, source_columns, edge_columns = spans(columns, width)
    target[:, target_rows, target_columns].copy_(source[:, source_rows, source_columns])
    target[:, edge_rows].zero_()
    target[:, :, edge_columns].zero_()


def shifted(source: Tensor, rows: int, columns: int) -> Tensor:
    """Out-of-place :func:`copy_shifted`: ``result[i, j] = source[i - rows, j - columns]`` over [B,H,W,C], zeros
    where that falls outside (a zero pad on the side the content moves away from, then a crop)."""
    height, width = source.shape[1:3]
    padded = F.pad(source, (0, 0, max(columns, 0), max(-columns, 0), max(rows, 0), max(-rows, 0)))
    top, left = max(-rows, 0), max(-columns, 0)
    return padded[:, top:top + height, left:left + width]


def blind_pool(x: Tensor) -> Tensor:
    """2x2 max-pooling after a one-row down shift.

    Without the shift, pooled row k would mix rows 2k and 2k+1 and, once up-sampled back to row 2k, let row
    2k see row 2k+1 below it. With it, row k pools rows 2k-1 and 2k, both at or above rows 2k and 2k+1.
    """
    # Pooling padding of one row on top and bottom realises the shift without a copy (max-pooling pads with
    # -inf, so the top pooled row is just row 0); the extra last pooled row is the one the shift pushes out.
    return F.max_pool2d(x, 2, padding=(1, 0))[:, :, : x.shape[2] // 2]


class BlindSpotUNet(nn.Module):
    """Laine et al. 2019 blind-spot U-Net with a Gaussian prior head and a noise-variance model.

    Parameters
    ----------
    config
        ``unet_encoder_channels`` (paper 48), ``unet_decoder_channels`` (paper 96), ``unet_depth`` (number of
        2x poolings, paper 5; input height and width must be multiples of ``2**unet_depth``),
        ``leaky_relu_slope`` and ``noise_model`` (``"constant"`` or ``"estimator"``).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.noise_model not in NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {NOISE_MODELS}, got {config.noise_model!r}")
        enc, dec, depth, slope = (config.unet_encoder_channels, config.unet_decoder_channels,
                                  config.unet_depth, config.leaky_relu_slope)
        self.depth = depth
        self.noise_model = config.noise_model
        self.encoder_in = nn.Sequential(BlindConv2d(1, enc, slope), BlindConv2d(enc, enc, slope))
        self.encoders = nn.ModuleList(BlindConv2d(enc, enc, slope) for _ in range(depth - 1))
        self.bottom = BlindConv2d(enc, enc, slope)
        # Decoder level l (deepest first) gets the up-sampled features and the skip of the level above: the
        # pooled encoder features, or the input image itself at full resolution (as in Noise2Noise/Laine).
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            skip_channels = 1 if level == 0 else enc
            in_channels = (enc if level == depth - 1 else dec) + skip_channels
            self.decoders.append(nn.Sequential(BlindConv2d(in_channels, dec, slope), BlindConv2d(dec, dec, slope)))
        branches = len(ROTATIONS) * dec
        self.merge = nn.Sequential(
            nn.Conv2d(branches, branches, 1), nn.LeakyReLU(slope),
            nn.Conv2d(branches, dec, 1), nn.LeakyReLU(slope),
            nn.Conv2d(dec, 2, 1),  # mu and the pre-softplus prior variance
        )
        merge_convs = [layer for layer in self.merge if isinstance(layer, nn.Conv2d)]
        for layer in merge_convs:
            _he_init(layer, slope if layer is not merge_convs[-1] else None)
        if config.noise_model == "constant":
            self.noise_std_raw = nn.Parameter(torch.tensor(_inverse_softplus(INITIAL_NOISE_STD)))
            self.estimator = None
        else:
            self.noise_std_raw = None
            self.estimator = NoiseEstimator(slope)
        self.to(memory_format=MEMORY_FORMAT)

    def initialise_noise_std(self, noise_std: float) -> None:
        """Start sigma at ``noise_std`` (in normalised units, e.g. ``std(x[:, 1:] - x[:, :-1]) / sqrt(2)`` of
        the training micrographs, which for pixel-independent noise and smooth signal estimates sigma)."""
        if not 0.0 < noise_std:
            raise ValueError(f"noise_std must be > 0, got {noise_std}")
        raw = _inverse_softplus(max(noise_std - math.sqrt(MIN_VARIANCE), math.sqrt(MIN_VARIANCE)))
        with torch.no_grad():
            if self.noise_std_raw is not None:
                self.noise_std_raw.fill_(raw)
            else:
                self.estimator.head.bias.fill_(raw)
                self.estimator.head.weight.mul_(0.0)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (``2**depth``)."""
        return 2**self.depth

    @property
    def receptive_radius_px(self) -> int:
        """Upper bound on how far (px, any direction) an output pixel's inputs lie from it.

        Tiled inference needs at least this much real context around each block to reproduce the whole-image
        pass exactly (default depth 5: 346 px). Bounded layer by layer: a blind 3x3 convolution at scale s reaches
        2s rows up, a shifted 2x2 pooling 2s, a nearest up-sampling s, the final branch shift one pixel.
        """
        return unet_receptive_radius(self.depth)

    def forward(self, x: Tensor) -> DenoiserOutput:
        """Prior mean, prior variance and noise variance for a normalised image batch ``x`` [B,1,H,W]."""
        batch, _, height, width = x.shape
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(f"input {height}x{width} is not a multiple of {self.size_multiple} "
                             f"(unet_depth={self.depth}); pad it first")
        # Small square inputs (training patches): all four rotations share one batched pass. Otherwise
        # rotations 0/180 and 90/270 have different shapes and run as two passes; large inputs (inference
        # tiles) run one rotation at a time, which holds a quarter of the activations in memory at once.
        if batch * height * width > ROTATION_BATCH_MAX_PIXELS:
            groups = [(k,) for k in ROTATIONS]
        elif height == width:
            groups = [ROTATIONS]
        else:
            groups = [ROTATIONS[0::2], ROTATIONS[1::2]]
        # Un-rotated branches side by side along channels, written straight into one channels-last buffer
        # (as [B,H,W,C]: far cheaper than torch.cat of rotated channels-last views).
        # Where autograd tracks the features (training) the branches are concatenated out of place instead (see
        # blind_pad): the backward of each in-place copy would clone the whole buffer's gradient.
        branches: Tensor | None = None
        pieces: dict[int, Tensor] = {}
        for group in groups:
            stacked = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in group], dim=0)
            features = self._unet(stacked)
            channels = features.shape[1]
            tracked = features.requires_grad
            if branches is None and not tracked:
                branches = features.new_empty(batch, height, width, channels * len(ROTATIONS))
            for k, chunk in zip(group, features.split(batch, dim=0), strict=True):
                unrotated = torch.rot90(chunk.permute(0, 2, 3, 1), -k, dims=(1, 2))  # [B,H,W,C]
                # The branch's one-row down shift (strictly above, not at or above), in the un-rotated frame.
                if tracked:
                    pieces[k] = shifted(unrotated, *UNROTATED_SHIFTS[k])
                else:
                    copy_shifted(branches[..., k * channels:(k + 1) * channels], unrotated, *UNROTATED_SHIFTS[k])
        if tracked:
            branches = torch.cat([pieces[k] for k in ROTATIONS], dim=-1)
        merged = self._merge(branches)  # [B,H,W,2]
        prior_mean = merged[..., 0].unsqueeze(1)
        prior_var = F.softplus(merged[..., 1]).unsqueeze(1) + MIN_VARIANCE
        return DenoiserOutput(prior_mean, prior_var, self._noise_var(x))

    def _merge(self, branches: Tensor) -> Tensor:
        """``self.merge`` (1x1 convolutions) as matrix products over the channels-last buffer [B,H,W,C], with
        in-place activations: the same numbers, without the slow 1x1-convolution path or fresh activations."""
        h = branches
        for layer in self.merge:
            if isinstance(layer, nn.Conv2d):
                h = F.linear(h, layer.weight.flatten(1), layer.bias)
            else:
                h = F.leaky_relu_(h, layer.negative_slope)
        return h

    def _unet(self, x: Tensor) -> Tensor:
        skips = [x]
        h = blind_pool(self.encoder_in(x))
        for encoder in self.encoders:
            skips.append(h)
            h = blind_pool(encoder(h))
        h = self.bottom(h)
        for first_conv, second_conv in self.decoders:
            h = second_conv(first_conv(upsample_concat_pad(h, skips.pop()), prepadded=True))
        return h

    def _noise_var(self, x: Tensor) -> Tensor:
        if self.estimator is not None:
            noise_std = self.estimator(x)
        else:
            noise_std = (F.softplus(self.noise_std_raw) + math.sqrt(MIN_VARIANCE)).expand(x.shape[0], 1, 1, 1)
        return noise_std**2


def unet_receptive_radius(depth: int) -> int:
    """See :attr:`BlindSpotUNet.receptive_radius_px` (mirrors :meth:`BlindSpotUNet._unet` layer by layer)."""
    conv_reach = PAD_TOP  # rows above the output that one blind 3x3 convolution reads, at scale 1
    scale = 1
    reach = 2 * conv_reach  # encoder_in: two convolutions at full resolution
    skip_reach = [0]  # the full-resolution skip is the input itself
    reach += 2 * scale  # blind_pool: one-row shift + 2x2 window
    scale *= 2
    for _ in range(depth - 1):
        skip_reach.append(reach)
        reach += conv_reach * scale + 2 * scale  # encoder conv, then blind_pool
        scale *= 2
    reach += conv_reach * scale  # bottom
    for level in reversed(range(depth)):
        scale //= 2
        reach = max(reach + scale, skip_reach[level])  # nearest 2x up-sampling, concatenated with the skip
        reach += 2 * conv_reach * scale  # the decoder's two convolutions
    return reach + 1  # the branch's final one-row shift


class NoiseEstimator(nn.Module):
    """Small non-blind CNN giving one noise standard deviation per image (mean of a per-pixel estimate).

    It may see every pixel: sigma is one number per image, so it cannot copy the noise into mu.
    """

    def __init__(self, slope: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, ESTIMATOR_CHANNELS, CONV_KERNEL, padding=CONV_KERNEL // 2),
                                   nn.LeakyReLU(slope)]
        for _ in range(ESTIMATOR_POOLINGS):
            layers += [nn.Conv2d(ESTIMATOR_CHANNELS, ESTIMATOR_CHANNELS, CONV_KERNEL, padding=CONV_KERNEL // 2),
                       nn.LeakyReLU(slope), nn.MaxPool2d(2)]
        head = nn.Conv2d(ESTIMATOR_CHANNELS, 1, 1)
        layers.append(head)
        self.net = nn.Sequential(*layers)
        for layer in layers:
            if isinstance(layer, nn.Conv2d):
                _he_init(layer, slope if layer is not head else None)
        nn.init.constant_(head.bias, _inverse_softplus(INITIAL_NOISE_STD))

    @property
    def head(self) -> nn.Conv2d:
        """The last (linear) layer, whose bias sets the initial estimate."""
        return self.net[-1]

    def forward(self, x: Tensor) -> Tensor:
        per_pixel_std = F.softplus(self.net(x)) + math.sqrt(MIN_VARIANCE)
        return per_pixel_std.mean(dim=(2, 3), keepdim=True)


def _he_init(conv: nn.Conv2d, slope: float | None) -> None:
    """He-normal weights (as Laine et al.), zero bias; ``slope=None`` for a linear output layer."""
    if slope is None:
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        nn.init.normal_(conv.weight, 0.0, 1.0 / math.sqrt(fan_in))
    else:
        nn.init.kaiming_normal_(conv.weight, a=slope, nonlinearity="leaky_relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _inverse_softplus(value: float) -> float:
    return math.log(math.expm1(value))
