"""Denoiser -> detector in one module: the joint model of Huang et al. 2024.

The detector reads the denoiser's posterior mean. That input is deterministic (no sampling), so prediction
is reproducible, and it is differentiable in the denoiser's outputs, so the detection loss can train the
denoiser too: that gradient path is the joint coupling (``detection_trains_denoiser``; otherwise the detector
reads the denoised image detached). ``use_denoiser=False`` gives a detect-only model (detector on the raw
input), ``use_detector=False`` a denoise-only model. Which parts learn in a training stage, and whether the
coupling is on, is set by :meth:`JointModel.set_trainable` from the mode table (:mod:`cryojoint.modes`).

:meth:`JointModel.flipped_logits` gives the mirrored view for the flip-consistency loss. Its dense map is exactly
the forward map for a detector with mirror-symmetric kernels (the dense node grid is made symmetric under the
flip; see :mod:`cryojoint.models.detector`); the per-patch logit keeps the patch's centre pixel. With its own
denoiser pass the view also differs by the blind-spot U-Net's asymmetry, which is not flip-equivariant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cryojoint.config import ModelConfig
from cryojoint.models.detector import ResNet8Detector, centre_window
from cryojoint.models.unet import BlindSpotUNet, posterior_mean

#: Axis flipped for the consistency pass: the last one (columns, a left-right mirror).
DEFAULT_FLIP_DIMS: tuple[int, ...] = (-1,)


@dataclass
class JointOutput:
    """What one forward pass produces; ``None`` for the parts of the model not in use."""

    prior_mean: Tensor | None  # mu, [B,1,H,W]
    prior_var: Tensor | None  # A^2, [B,1,H,W]
    noise_var: Tensor | None  # sigma^2, [B,1,1,1]
    denoised: Tensor | None  # posterior mean, [B,1,H,W]
    logits: Tensor | None  # [B,1,1,1] per patch, [B,1,H,W] dense

    def as_float32(self) -> JointOutput:
        """The same outputs in float32 (differentiable casts): losses are computed in full precision even where
        the network ran under autocast."""
        return JointOutput(*(None if value is None else value.float()
                             for value in (self.prior_mean, self.prior_var, self.noise_var, self.denoised,
                                           self.logits)))


class JointModel(nn.Module):
    """Blind-spot U-Net denoiser followed by a ResNet8 detector.

    Parameters
    ----------
    config
        Architecture (see :class:`cryojoint.config.ModelConfig`).
    use_denoiser, use_detector
        Which parts to build; at least one.
    """

    def __init__(self, config: ModelConfig, use_denoiser: bool = True, use_detector: bool = True) -> None:
        super().__init__()
        if not (use_denoiser or use_detector):
            raise ValueError("a JointModel needs a denoiser, a detector, or both")
        self.config = config
        self.denoiser = BlindSpotUNet(config) if use_denoiser else None
        self.stack_raw = bool(config.detector_sees_raw and use_denoiser)
        self.detector = ResNet8Detector(config, in_channels=2 if self.stack_raw else 1) if use_detector else None
        self.denoiser_frozen = False
        # The coupling: the config's choice for a model used on its own; training sets it per stage.
        self.detection_trains_denoiser = bool(config.detection_trains_denoiser)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (1 without a denoiser)."""
        return self.denoiser.size_multiple if self.denoiser is not None else 1

    def forward(self, x: Tensor, dense: bool = False, detect: bool = True) -> JointOutput:
        """Run on a normalised batch ``x`` [B,1,H,W]; ``dense`` selects per-pixel instead of per-patch logits.

        ``detect=False`` skips the detector (``logits=None``): a training stage no detection loss reads.
        """
        out = self.denoise(x)
        if self.detector is not None and detect:
            out.logits = self.detector(self._detector_input(x, out.denoised), dense=dense)
        return out

    def _detector_input(self, x: Tensor, denoised: Tensor | None) -> Tensor:
        """What the detector reads: the denoised image, stacked with the raw one if the config says so."""
        if denoised is None:
            return x
        if not self.detection_trains_denoiser:
            denoised = denoised.detach()
        return torch.cat([denoised, x], dim=1) if self.stack_raw else denoised

    def denoise(self, x: Tensor) -> JointOutput:
        """Denoiser part only (``logits=None``); without a denoiser every field is ``None``."""
        if self.denoiser is None:
            return JointOutput(None, None, None, None, None)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.denoiser_frozen):
            prior = self.denoiser(x)
            denoised = posterior_mean(x, prior.prior_mean, prior.prior_var, prior.noise_var)
        return JointOutput(prior.prior_mean, prior.prior_var, prior.noise_var, denoised, None)

    def flipped_logits(self, x: Tensor, output: JointOutput, dense: bool = False, share_denoiser: bool = False,
                       flip_dims: tuple[int, ...] = DEFAULT_FLIP_DIMS) -> Tensor:
        """Logits of the flipped batch, mapped back to the unflipped pixel grid (for the consistency loss).

        Parameters
        ----------
        x
            The batch given to :meth:`forward`.
        output
            What :meth:`forward` returned for ``x`` (its denoised image is reused if ``share_denoiser``).
        dense
            As in :meth:`forward`; the result has the same shape as ``output.logits``. The dense map is computed
            on the mirror image of the forward pass's padded input (see
            :meth:`~cryojoint.models.detector.ResNet8Detector.forward_dense`), so its nodes and interpolation
            weights, mirrored back, fall on the forward pass's pixels: for a detector with mirror-symmetric
            kernels the result equals ``output.logits`` exactly (to float rounding), at every output stride and
            for odd or even sizes, and the consistency loss measures only the detector's asymmetry.
        share_denoiser
            ``False`` (faithful, the default): the denoiser also runs on the flipped input. The blind-spot
            U-Net is not flip-equivariant (its shifted convolutions and the fixed order of its four rotation
            branches single out directions), so this is a genuinely different view; with the coupling on
            (``detection_trains_denoiser``) the consistency loss also penalises the denoiser's own asymmetry.
            ``True`` (about half the denoiser cost of a step): mirror the denoised image instead. With the
            coupling on, the consistency loss still reaches the denoiser through the shared denoised image (it
            asks for an image whose detection is mirror-consistent), but no longer compares two denoiser passes.
        flip_dims
            Spatial axes to mirror (-1 columns, -2 rows).
        """
        if self.detector is None:
            raise ValueError("flipped_logits needs a detector")
        if self.denoiser is None:
            mirrored = x.flip(flip_dims)
        elif share_denoiser:
            mirrored = self._detector_input(x, output.denoised).flip(flip_dims)
        else:
            flipped = x.flip(flip_dims)
            # Without the coupling nothing of this pass reaches the denoiser (its output is detached): no graph.
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.detection_trains_denoiser):
                denoised = self.denoise(flipped).denoised
            mirrored = self._detector_input(flipped, denoised)
        if dense:
            # The mirror image of the padded input the forward pass saw: node pixels map onto node pixels, so a
            # mirror-symmetric detector gives exactly ``output.logits`` at any stride and size parity.
            return self.detector(mirrored, dense=True, mirrored_dims=flip_dims).flip(flip_dims)
        # Per patch: mirror the window around the patch centre, so that the centre pixel stays the centre
        # (the mirror image of an even-sized patch has its centre one pixel off).
        window = centre_window(mirrored.flip(flip_dims))
        return self.detector(window.flip(flip_dims), dense=False)

    def set_trainable(self, denoiser: bool, detector: bool, detection_trains_denoiser: bool) -> None:
        """Let exactly the parts a training stage trains learn (a :class:`~cryojoint.modes.StagePlan` says which).

        ``denoiser=False`` freezes the denoiser (:meth:`freeze_denoiser`; for good: a frozen denoiser is not
        thawed). ``detector`` sets the detector's ``requires_grad`` (what a data-parallel wrapper synchronises);
        a detector that does not learn is not run either. ``detection_trains_denoiser`` keeps the detector's
        input attached to the denoiser's graph. Parts the model does not have are skipped.
        """
        if not denoiser:
            self.freeze_denoiser()
        elif self.denoiser_frozen:
            raise ValueError("the denoiser is frozen: it cannot learn again")
        if self.detector is not None:
            self.detector.requires_grad_(detector)
        self.detection_trains_denoiser = detection_trains_denoiser

    def freeze_denoiser(self) -> None:
        """Stop training the denoiser (stage 2 of ``sequential``): no gradients, no graph, frozen weights."""
        if self.denoiser is None:
            return
        self.denoiser.requires_grad_(False)
        self.denoiser.eval()
        self.denoiser_frozen = True

    def train(self, mode: bool = True) -> JointModel:
        super().train(mode)
        if self.denoiser_frozen and self.denoiser is not None:
            self.denoiser.eval()
        return self

