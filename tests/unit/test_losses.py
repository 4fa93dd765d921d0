"""Loss functions and their weighted sum per training stage (the mode table itself: test_modes.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cryojoint.losses import (
    MIN_COUNT_VARIANCE,
    consistency_loss,
    denoise_loss,
    pu_loss,
    stage_loss,
)
from cryojoint.modes import loss_weights, training_stages

CLAMP = 1e-4


# --- denoising -------------------------------------------------------------------------------------------


def test_denoise_loss_matches_the_formula_by_hand() -> None:
    y = torch.tensor([1.0, -1.0]).view(1, 1, 1, 2)
    mu = torch.tensor([0.5, 0.0]).view(1, 1, 1, 2)
    prior_var = torch.tensor([0.25, 1.0]).view(1, 1, 1, 2)
    noise_var = torch.tensor(0.75).view(1, 1, 1, 1)
    # pixel 1: 0.25/1.0 + log 1.0 = 0.25; pixel 2: 1/1.75 + log 1.75; minus 0.1 * sqrt(0.75)
    expected = (0.25 + 1 / 1.75 + math.log(1.75)) / 2 - 0.1 * math.sqrt(0.75)
    assert denoise_loss(y, mu, prior_var, noise_var, 0.1).item() == pytest.approx(expected, rel=1e-6)


def test_denoise_loss_gradients_point_to_the_right_answer() -> None:
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(2, 1, 8, 8, generator=generator)
    mu = torch.zeros_like(y, requires_grad=True)
    prior_var = torch.full_like(y, 0.5, requires_grad=True)
    noise_var = torch.full((2, 1, 1, 1), 0.5, requires_grad=True)
    denoise_loss(y, mu, prior_var, noise_var, sigma_regulariser=0.0).backward()
    # the mean is pulled towards the observation ...
    assert torch.all(torch.sign(-mu.grad) == torch.sign(y))
    # ... and the total variance towards the squared error: shrink where the error is small, grow where large
    error2 = y**2
    assert torch.all((prior_var.grad > 0)[error2 < 0.99]) and torch.all((prior_var.grad < 0)[error2 > 1.01])

    mean = torch.zeros(1, 1, 1, 1, requires_grad=True)
    loss = denoise_loss(torch.ones(1, 1, 1, 1), mean, torch.full((1, 1, 1, 1), 0.5),
                        torch.full((1, 1, 1, 1), 0.5), sigma_regulariser=0.0)
    (grad_mean,) = torch.autograd.grad(loss, mean)
    assert grad_mean.item() == pytest.approx(-2.0)  # d/dmu (1 - mu)^2 / (0.5 + 0.5) at mu = 0

    # the total variance A^2 + sigma^2 is optimal at the squared error: zero gradient there
    total = torch.tensor(0.64, requires_grad=True)
    loss = denoise_loss(torch.full((1, 1, 1, 1), 0.8), torch.zeros(1, 1, 1, 1), total.view(1, 1, 1, 1) - 0.3,
                        torch.full((1, 1, 1, 1), 0.3), sigma_regulariser=0.0)
    (grad_total,) = torch.autograd.grad(loss, total)
    assert grad_total.item() == pytest.approx(0.0, abs=1e-6)

    sigma = torch.tensor(0.3, requires_grad=True)
    regularised = denoise_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2),
                               (sigma**2).view(1, 1, 1, 1), sigma_regulariser=0.1)
    unregularised = denoise_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2),
                                 (sigma**2).view(1, 1, 1, 1), sigma_regulariser=0.0)
    assert (unregularised - regularised).item() == pytest.approx(0.1 * 0.3)


# --- positive-unlabelled detection -----------------------------------------------------------------------


def test_pu_loss_matches_a_hand_computed_case() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    targets = torch.tensor([1.0, 0.0, 0.0, 0.0])
    pi = 0.2
    # labelled term: -log sigmoid(2) = log(1 + e^-2)
    positive = math.log1p(math.exp(-2.0))
    # unlabelled pixels: three, with p = sigmoid(-1), sigmoid(0.5), sigmoid(-3)
    p = [1 / (1 + math.exp(-z)) for z in (-1.0, 0.5, -3.0)]
    q_mu, q_var = sum(p), sum(v * (1 - v) for v in p)
    prior_mu, prior_var = 3 * pi, 3 * pi * (1 - pi)
    kl = 0.5 * (q_var / prior_var + (q_mu - prior_mu) ** 2 / prior_var + math.log(prior_var / q_var) - 1)
    assert positive + kl == pytest.approx(0.246526, abs=1e-5)  # the numbers written out once by hand
    assert pu_loss(logits, targets, pi).item() == pytest.approx(positive + kl / 3, rel=1e-4)  # 3 unlabelled
    assert pu_loss(logits, targets, pi, slack=0.0).item() == pytest.approx(positive, rel=1e-6)


def test_pu_loss_per_unit_scale_does_not_grow_with_the_number_of_pixels() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 1, 8, 8, generator=generator) + 1.0
    targets = torch.zeros_like(logits)
    bigger = logits.repeat(1, 1, 4, 4)  # same values, 16x the pixels
    # No labels: the loss is the GE term per unlabelled pixel; Topaz's undivided term is it times the pixels.
    summed_small = pu_loss(logits, targets, 0.05).item() * logits.numel()
    summed_big = pu_loss(bigger, torch.zeros_like(bigger), 0.05).item() * bigger.numel()
    assert summed_big > 10 * summed_small
    assert pu_loss(bigger, torch.zeros_like(bigger), 0.05).item() == pytest.approx(
        pu_loss(logits, targets, 0.05).item(), rel=0.05)


def test_pu_loss_unlabelled_pixels_are_pulled_to_the_expected_fraction_not_to_zero() -> None:
    targets = torch.zeros(1, 1, 16, 16)
    pi = 0.1
    too_many = torch.full((1, 1, 16, 16), 2.0, requires_grad=True)  # p ~ 0.88 everywhere
    pu_loss(too_many, targets, pi).backward()
    assert torch.all(too_many.grad > 0)  # gradient descent lowers them
    too_few = torch.full((1, 1, 16, 16), -6.0, requires_grad=True)  # p ~ 0.0025
    pu_loss(too_few, targets, pi).backward()
    assert torch.all(too_few.grad < 0)  # raises them: unlabelled is not negative
    at_prior = torch.full((1, 1, 16, 16), math.log(pi / (1 - pi)))
    assert pu_loss(at_prior, targets, pi).item() == pytest.approx(0.0, abs=1e-4)  # matching normals


def test_pu_loss_soft_targets_weight_labelled_and_unlabelled_parts() -> None:
    logits = torch.tensor([1.0, -2.0, 0.0, 0.5, -1.0])
    soft = torch.tensor([0.5, 0.0, 0.0, 0.0, 0.0])
    only_labelled_part = F.softplus(-logits[0]).item()
    assert pu_loss(logits, soft, 0.3, slack=0.0).item() == pytest.approx(only_labelled_part)
    # the half-labelled pixel also counts half in the unlabelled count (KL of the weighted count, per unit)
    unlabelled = torch.tensor([0.5, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    p = torch.sigmoid(logits.double())
    count = float(unlabelled.sum())
    q_mu, q_var = float((unlabelled * p).sum()), float((unlabelled * p * (1 - p)).sum()) + MIN_COUNT_VARIANCE
    prior_mu, prior_var = count * 0.3, count * 0.3 * 0.7
    kl = 0.5 * (q_var / prior_var + (q_mu - prior_mu) ** 2 / prior_var + math.log(prior_var / q_var) - 1)
    ge_only = pu_loss(logits, soft, 0.3) - pu_loss(logits, soft, 0.3, slack=0.0)
    assert ge_only.item() == pytest.approx(kl / count, rel=1e-5)


def test_pu_loss_pixels_per_positive_rescales_only_the_count_mismatch() -> None:
    targets = torch.zeros(64)
    pi = 0.2

    def undivided(logits: torch.Tensor, pixels_per_positive: float = 1.0) -> float:
        """Topaz's GE term: without labels, the loss times the unlabelled count (in particles)."""
        return pu_loss(logits, targets, pi, pixels_per_positive=pixels_per_positive).item() * (
            logits.numel() / pixels_per_positive)

    matched = torch.full((64,), math.log(pi / (1 - pi)))  # expected count already right
    assert undivided(matched, 9.0) == pytest.approx(undivided(matched), abs=1e-5)
    too_high = torch.full((64,), 1.0)
    assert 0 < undivided(too_high, 9.0) < undivided(too_high)


def test_pu_loss_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="pi"):
        pu_loss(torch.zeros(4), torch.zeros(4), 0.0)
    with pytest.raises(ValueError, match="shape"):
        pu_loss(torch.zeros(4), torch.zeros(5), 0.1)


def test_pu_loss_all_labelled_has_no_ge_term() -> None:
    logits = torch.tensor([0.3, -0.2])
    assert pu_loss(logits, torch.ones(2), 0.1).item() == pytest.approx(F.softplus(-logits).mean().item())


def test_pu_loss_leaves_unscored_pixels_out() -> None:
    """NaN targets (micrographs given to the denoiser alone) count neither as labelled nor as unlabelled: the loss
    equals the loss of the scored patches alone, and no gradient reaches the unscored logits."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 8, 8, generator=generator, requires_grad=True)
    targets = torch.zeros(4, 1, 8, 8)
    targets[0, 0, 3, 4] = 1.0
    targets[1, 0, 2:4, 2:4] = 0.5
    targets[2:] = float("nan")
    for ge_form in ("kl", "cross-entropy"):
        loss = pu_loss(logits, targets, 0.05, pixels_per_positive=3.0, ge_form=ge_form)
        alone = pu_loss(logits[:2], targets[:2], 0.05, pixels_per_positive=3.0, ge_form=ge_form)
        assert torch.isfinite(loss) and loss.item() == pytest.approx(alone.item(), rel=1e-6)
        (gradient,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(gradient).all() and (gradient[2:] == 0).all() and (gradient[:2] != 0).any()
    nothing_scored = pu_loss(logits[2:], targets[2:], 0.05)
    assert nothing_scored.item() == 0.0
    (gradient,) = torch.autograd.grad(nothing_scored, logits)
    assert (gradient == 0).all()


# --- consistency -----------------------------------------------------------------------------------------


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, kernel.view(1, 1, *kernel.shape), padding=kernel.shape[-1] // 2)


def test_consistency_loss_is_zero_for_flip_equivariant_detector_and_positive_otherwise() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 16, 16, generator=generator) * 3
    symmetric = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
    lopsided = torch.tensor([[0.0, 0.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    for kernel, equivariant in ((symmetric, True), (lopsided, False)):
        logits = _blur(x, kernel)
        flipped_back = _blur(x.flip(-1), kernel).flip(-1)
        value = consistency_loss(logits, flipped_back, CLAMP).item()
        assert (value == pytest.approx(0.0, abs=1e-12)) if equivariant else value > 1e-3


# --- combining terms and modes ---------------------------------------------------------------------------


def test_stage_losses_use_exactly_the_terms_of_each_mode() -> None:
    d, t, c = torch.tensor(2.0), torch.tensor(4.0), torch.tensor(10.0)
    alpha, weight = 0.75, 0.1
    joint = training_stages("joint")[0]
    # the paper's L = alpha L_denoise + (1 - alpha) L_detect + lambda L_consistency
    assert stage_loss(joint, alpha, weight, d, t, c).item() == pytest.approx(0.75 * 2 + 0.25 * 4 + 0.1 * 10)
    no_consistency = training_stages("joint-no-consistency")[0]
    assert stage_loss(no_consistency, alpha, weight, d, t, None).item() == pytest.approx(0.75 * 2 + 0.25 * 4)
    first, second = training_stages("sequential")
    assert stage_loss(first, alpha, weight, d, None, None).item() == pytest.approx(2.0)
    assert stage_loss(second, alpha, weight, None, t, None).item() == pytest.approx(4.0)
    assert stage_loss(training_stages("denoise-only")[0], alpha, weight, d, None, None).item() == 2.0
    assert stage_loss(training_stages("detect-only")[0], alpha, weight, None, t, None).item() == 4.0
    assert loss_weights(no_consistency, alpha, weight).consistency == 0.0
    with pytest.raises(ValueError, match="consistency"):
        stage_loss(joint, alpha, weight, d, t, None)


def test_denoise_loss_sample_weights_leave_out_patches() -> None:
    """Unit weights change nothing; a zero-weight patch gets no likelihood gradient."""
    torch.manual_seed(0)
    y = torch.randn(3, 1, 8, 8)
    mu = torch.randn(3, 1, 8, 8, requires_grad=True)
    a2 = torch.rand(3, 1, 8, 8) + 0.1
    s2 = torch.full((3, 1, 1, 1), 0.5)
    plain = denoise_loss(y, mu, a2, s2, 0.1)
    ones = denoise_loss(y, mu, a2, s2, 0.1, sample_weights=torch.ones(3))
    torch.testing.assert_close(plain, ones)
    weighted = denoise_loss(y, mu, a2, s2, 0.1, sample_weights=torch.tensor([True, False, True]))
    weighted.backward()
    assert mu.grad is not None
    assert torch.all(mu.grad[1] == 0) and torch.all(mu.grad[0] != 0) and torch.all(mu.grad[2] != 0)
    alone = denoise_loss(y[[0, 2]], mu.detach()[[0, 2]], a2[[0, 2]], s2[[0, 2]], 0.1)
    torch.testing.assert_close(weighted.detach(), alone)


def test_denoise_loss_with_no_eligible_patch_is_zero() -> None:
    """A batch of particle-centred patches only must not reward a larger sigma on its own."""
    y = torch.randn(2, 1, 8, 8)
    s2 = torch.full((2, 1, 1, 1), 0.5, requires_grad=True)
    loss = denoise_loss(y, torch.zeros_like(y), torch.ones_like(y), s2, 0.1, sample_weights=torch.zeros(2))
    loss.backward()
    assert loss.item() == 0.0
    assert s2.grad is not None and torch.all(s2.grad == 0)


def test_denoise_loss_weights_the_sigma_reward_like_the_likelihood() -> None:
    """With a per-image sigma, a left-out patch's sigma is neither rewarded nor penalised."""
    y = torch.randn(2, 1, 8, 8)
    s2 = torch.tensor([0.5, 2.0]).view(2, 1, 1, 1).requires_grad_(True)
    loss = denoise_loss(y, torch.zeros_like(y), torch.ones_like(y), s2, 0.1, sample_weights=torch.tensor([1.0, 0.0]))
    loss.backward()
    assert s2.grad is not None and s2.grad[1].item() == 0.0 and s2.grad[0].item() != 0.0
    alone = denoise_loss(y[:1], torch.zeros_like(y[:1]), torch.ones_like(y[:1]), s2.detach()[:1], 0.1)
    torch.testing.assert_close(loss.detach(), alone)
