"""Networks of the joint model: blind-spot U-Net denoiser, ResNet8 detector, and the two chained."""

from cryojoint.models.detector import (
    RECEPTIVE_FIELD,
    ResNet8Detector,
    centre_window,
    patch_centre_index,
    soft_segmentation,
)
from cryojoint.models.joint import JointModel, JointOutput
from cryojoint.models.unet import BlindSpotUNet, DenoiserOutput, posterior_mean

__all__ = [
    "RECEPTIVE_FIELD",
    "BlindSpotUNet",
    "DenoiserOutput",
    "JointModel",
    "JointOutput",
    "ResNet8Detector",
    "centre_window",
    "patch_centre_index",
    "posterior_mean",
    "soft_segmentation",
]
