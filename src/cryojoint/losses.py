"""Loss functions of the joint model, and their weighted sum in one training stage. Pure functions, no state.

``L = alpha * L_denoise + (1 - alpha) * L_detect + consistency_weight * L_consistency`` (paper: alpha 0.75,
consistency weight 0.1), where

* ``L_denoise`` is the Gaussian negative log-likelihood of the noisy pixel under the blind-spot prediction
  (Laine et al. 2019), with a small reward for a larger noise estimate;
* ``L_detect`` is Topaz's GE-binomial positive-unlabelled loss (Bepler et al. 2019): labelled pixels are
  pushed towards "particle", all other pixels are unlabelled and only their *expected count* of particles is
  constrained, to a binomial with the expected positive fraction pi. No pixel is ever a negative;
* ``L_consistency`` is the mean squared difference between the soft segmentation of the batch and that of
  its mirror image, mirrored back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cryojoint.models.detector import soft_segmentation
from cryojoint.modes import TrainingStage, loss_weights

#: Floor for the model's count variance, so the log in the GE penalty stays finite when every p is 0 or 1.
MIN_COUNT_VARIANCE: float = 1e-6


def denoise_loss(y: Tensor, prior_mean: Tensor, prior_var: Tensor, noise_var: Tensor,
                 sigma_regulariser: float, sample_weights: Tensor | None = None,
                 noise_std_scale: float = 1.0) -> Tensor:
    """Self-supervised denoising loss of the blind-spot network.

    Parameters
    ----------
    y
        Noisy input [B,1,H,W] (the training target: the network never saw a pixel's own value).
    prior_mean, prior_var
        Blind-spot prediction mu and A^2 [B,1,H,W].
    noise_var
        sigma^2, broadcastable to ``y`` ([B,1,1,1]).
    sigma_regulariser
        Weight of the ``-sigma / noise_std_scale`` term. The likelihood only constrains A^2 + sigma^2; the small
        reward for a larger sigma resolves that ambiguity towards explaining variance as noise. Laine et al.
        subtract ``0.1 * sigma`` on [0, 1] images with sigma ~ 0.1, i.e. 0.01 per unit of the noise level: the
        reward is measured in units of the noise (``noise_std_scale``), so its pull does not depend on the
        data's intensity units or on how noisy the data are.
    noise_std_scale
        The noise level the reward is measured against (the data's estimated noise std, same units as ``y``).
    sample_weights
        Optional [B] weights of the patches in the likelihood and sigma means (e.g. 0 for patches chosen because
        they are centred on a particle). All zero gives 0: with no patch to learn from, the ``-sigma`` reward
        alone would only inflate the noise estimate.

    Returns
    -------
    Tensor
        Scalar: mean of ``(y - mu)^2 / (A^2 + sigma^2) + log(A^2 + sigma^2)`` minus
        ``sigma_regulariser * mean(sigma) / noise_std_scale``.
    """
    if not noise_std_scale > 0:
        raise ValueError(f"noise_std_scale must be > 0, got {noise_std_scale}")
    sigma_regulariser = sigma_regulariser / noise_std_scale
    total_var = prior_var + noise_var
    likelihood = (y - prior_mean) ** 2 / total_var + torch.log(total_var)
    if sample_weights is None:
        return likelihood.mean() - sigma_regulariser * noise_var.sqrt().mean()
    per_sample = likelihood.flatten(1).mean(dim=1)
    weights = sample_weights.to(per_sample.dtype)
    sigma_per_sample = torch.broadcast_to(noise_var.sqrt(), y.shape).flatten(1).mean(dim=1)
    weight_sum = weights.sum().clamp_min(1.0)  # all-zero weights: every term below is 0
    return ((per_sample - sigma_regulariser * sigma_per_sample) * weights).sum() / weight_sum


#: Forms of the GE penalty (see :func:`pu_loss`): Topaz's published cross-entropy, or the KL divergence.
GE_FORMS: tuple[str, ...] = ("cross-entropy", "kl")


def pu_loss(logits: Tensor, soft_targets: Tensor, pi: float, slack: float = 1.0,
            pixels_per_positive: float = 1.0, ge_form: str = "kl") -> Tensor:
    """Topaz's GE-binomial positive-unlabelled loss, generalised to soft labels.

    Each pixel with target ``w`` in [0, 1] counts as a labelled positive with weight ``w`` and as unlabelled
    with weight ``1 - w`` (hard labels: w in {0, 1}, exactly Topaz).

    * Labelled term: weighted mean of ``-log sigmoid(logit)`` over the labelled weight.
    * GE term: the model's count of positives among the unlabelled pixels is approximately
      ``N(q_mu, q_var)`` with ``q_mu = sum u*p``, ``q_var = sum u*p*(1-p)``; the prior says
      ``Binomial(N, pi)`` with ``N = sum u``, approximated by ``N(N*pi, N*pi*(1-pi))``.
      ``ge_form="cross-entropy"`` is Topaz's published GE-binomial: the expected negative
      log-likelihood of the count under the prior, ``E_q[-log prior(k)] = ((q_mu - N pi)^2 + q_var) / (2 N pi
      (1-pi))`` + const (Topaz sums a discretised q over every count; the normal form is its large-N limit). It
      penalises uncertain unlabelled pixels (q_var). ``ge_form="kl"`` is KL(q || prior), which adds
      ``-log(q_var) / 2``, the entropy of q: it *rewards* uncertain unlabelled pixels. That is where this
      loss departs from Topaz (config ``loss.ge_form``; benchmarks/README.md measures both).

    Parameters
    ----------
    logits
        Detector output (any shape, e.g. [B,1,1,1] per patch or [B,1,H,W] dense).
    soft_targets
        Same shape, values in [0, 1]: 1 at labelled particle centres, a bump around them, 0 elsewhere; NaN
        where the detector is not scored (micrographs given for the denoiser only): neither labelled nor
        unlabelled there.
    pi
        Expected fraction of positive pixels among the unlabelled ones.
    slack
        Weight of the GE term (Topaz ``--slack``, default 1).
    pixels_per_positive
        Pixels that one particle makes positive (e.g. the area of the label bump). Neighbouring pixels of
        a dense map are not independent draws: counting in particles rather than pixels (dividing every
        count by this) keeps the penalty on the scale Topaz has with independent patches. 1 = Topaz.

    Returns
    -------
    Tensor
        Scalar loss. The GE term is divided by the unlabelled count (in particles), where Topaz leaves it
        undivided: undivided, it grows linearly with the number of unlabelled samples per step, fine for
        Topaz's 256 crops, but a dense 4x64x64 map has 64x more pixels, and at initialisation (p ~ 0.5
        everywhere) the term is then in the thousands and its gradient wrecks the denoiser through the joint
        coupling. Divided, it is about ``(mean(p) - pi)^2 / (2 pi (1 - pi))`` whatever the batch and patch size.
    """
    if not 0.0 < pi < 1.0:
        raise ValueError(f"pi must be in (0, 1), got {pi}")
    if logits.shape != soft_targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(soft_targets.shape)} differ in shape")
    scored = ~torch.isnan(soft_targets)
    labelled = torch.where(scored, soft_targets.clamp(0.0, 1.0), 0.0)
    unlabelled = torch.where(scored, 1.0 - labelled, 0.0)

    labelled_weight = labelled.sum()
    positive_nll = (labelled * F.softplus(-logits)).sum() / labelled_weight.clamp_min(torch.finfo(logits.dtype).eps)

    p = torch.sigmoid(logits)
    count = unlabelled.sum() / pixels_per_positive
    q_mu = (unlabelled * p).sum() / pixels_per_positive
    q_var = (unlabelled * p * (1.0 - p)).sum() / pixels_per_positive + MIN_COUNT_VARIANCE
    prior_mu = count * pi
    prior_var = count * pi * (1.0 - pi)
    if prior_var.item() <= 0.0:  # no unlabelled pixel: nothing to constrain
        return positive_nll
    if ge_form == "kl":
        penalty = 0.5 * (q_var / prior_var + (q_mu - prior_mu) ** 2 / prior_var + torch.log(prior_var / q_var) - 1.0)
    elif ge_form == "cross-entropy":
        penalty = 0.5 * (q_var + (q_mu - prior_mu) ** 2) / prior_var
    else:
        raise ValueError(f"ge_form must be one of {GE_FORMS}, got {ge_form!r}")
    penalty = penalty / count  # per unlabelled particle (see Returns)
    return positive_nll + slack * penalty


def consistency_loss(logits: Tensor, flipped_back_logits: Tensor, clamp: float) -> Tensor:
    """Mean squared difference of the two soft segmentations (paper's flip consistency).

    Parameters
    ----------
    logits
        Detector output for the batch.
    flipped_back_logits
        Detector output for the mirrored batch, mirrored back (same shape).
    clamp
        ``sigmoid_clamp`` of the model config (the modified sigmoid).
    """
    return F.mse_loss(soft_segmentation(logits, clamp), soft_segmentation(flipped_back_logits, clamp))


def stage_loss(stage: TrainingStage, alpha: float, consistency_weight: float, l_denoise: Tensor | None,
               l_detect: Tensor | None, l_consistency: Tensor | None) -> Tensor:
    """Combine the terms ``stage`` uses, weighted as :mod:`cryojoint.modes` says; terms it does not use may be
    ``None`` and are never touched.

    Raises
    ------
    ValueError
        If a term the stage needs is ``None``.
    """
    weights = loss_weights(stage, alpha, consistency_weight)
    terms = (("denoise", stage.denoise, weights.denoise, l_denoise),
             ("detect", stage.detect, weights.detect, l_detect),
             ("consistency", stage.consistency, weights.consistency, l_consistency))
    total: Tensor | None = None
    for name, used, weight, value in terms:
        if not used:
            continue
        if value is None:
            raise ValueError(f"stage {stage.name!r} needs the {name} loss")
        total = weight * value if total is None else total + weight * value
    assert total is not None  # every stage uses at least one term
    return total
