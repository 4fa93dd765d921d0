"""Prediction: even tiling, tiled == whole-image result, cut-off rules, the in-memory API."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from cryojoint.checkpoint import LoadedModel
from cryojoint.config import CryojointConfig
from cryojoint.errors import UserInputError
from cryojoint.imaging import bin_image, unbin_image
from cryojoint.inference import PickingSettings, _blocks, bin_phase_offsets, run_network_on_image
from cryojoint.io.mrc import Micrograph
from cryojoint.models.joint import JointModel
from cryojoint.models.unet import BlindSpotUNet
from cryojoint.picking import count_from_probabilities
from cryojoint.prediction import choose_threshold, predict

TINY = {"model": {"unet_encoder_channels": 8, "unet_decoder_channels": 16, "unet_depth": 3,
                  "detector_channels": [8, 16, 16], "detector_output_stride": 1}}


def _model(seed: int = 0, **predict_overrides: float) -> LoadedModel:
    torch.manual_seed(seed)
    config = CryojointConfig.from_dict({**TINY, "predict": predict_overrides})
    network = JointModel(config.model).eval()
    return LoadedModel(network, config, particle_diameter_px=12.0, downsample=1,
                       meta={"expected_particles": 5.0})


@pytest.mark.parametrize(("length", "largest", "align"),
                         [(1024, 512, 32), (1000, 512, 32), (100, 512, 32), (513, 512, 1), (7, 3, 1), (700, 128, 8)])
def test_blocks_cover_evenly_without_gaps_on_the_pooling_grid(length: int, largest: int, align: int) -> None:
    blocks = _blocks(length, largest, align)
    assert blocks[0][0] == 0 and blocks[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert all(start % align == 0 for start, _ in blocks)
    sizes = [b - a for a, b in blocks]
    assert max(sizes) <= largest + align and max(sizes) - min(sizes) <= align + 1
    assert len(blocks) == -(-length // largest)


#: The default preset's depth and strides with few channels (the receptive fields do not depend on width).
NARROW_DEFAULT_DEPTH = {"model": {"unet_encoder_channels": 4, "unet_decoder_channels": 8,
                                  "detector_channels": [4, 8, 8]}}


def _narrow_model(seed: int = 0, **predict_overrides: object) -> LoadedModel:
    torch.manual_seed(seed)
    config = CryojointConfig.from_dict({**NARROW_DEFAULT_DEPTH, "predict": predict_overrides})
    assert config.model.unet_depth == 5 and config.model.detector_output_stride == 2
    return LoadedModel(JointModel(config.model).eval(), config, particle_diameter_px=12.0, downsample=1, meta={})


def _max_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("shape", [(300, 270), (257, 449)])
def test_tiled_inference_equals_the_whole_image_at_the_default_depth(shape: tuple[int, int]) -> None:
    """Sides that are no multiple of the tile or the pooling grid; blocks far smaller than the U-Net's reach."""
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    model = _narrow_model()
    whole = run_network_on_image(model.network, image, model.config)
    tiled_config = dataclasses.replace(model.config, predict=dataclasses.replace(model.config.predict,
                                                                                  tile_size_px=96))
    assert len(_blocks(shape[0], 96, 32)) >= 3
    tiled = run_network_on_image(model.network, image, tiled_config)
    for key in ("prior_mean", "prior_var", "denoised", "logits"):
        assert _max_relative_difference(getattr(tiled, key), getattr(whole, key)) <= 1e-4, key


def test_too_little_tile_context_shows_seams() -> None:
    """The check above can fail: with the old 64 px context the tiles differ from the whole image."""
    image = np.random.default_rng(1).normal(size=(300, 270)).astype(np.float32)
    model = _narrow_model()
    whole = run_network_on_image(model.network, image, model.config)
    seamed_config = dataclasses.replace(model.config, predict=dataclasses.replace(
        model.config.predict, tile_size_px=96, tile_overlap_px=64))
    seamed = run_network_on_image(model.network, image, seamed_config)
    assert _max_relative_difference(seamed.prior_mean, whole.prior_mean) > 1e-3


def test_receptive_radius_bounds_what_an_output_pixel_reads() -> None:
    """Gradient probe of the real network: nothing beyond the stated radius reaches the centre pixel."""
    config = CryojointConfig.from_dict(NARROW_DEFAULT_DEPTH).model
    torch.manual_seed(0)
    unet = BlindSpotUNet(config)
    radius = unet.receptive_radius_px
    side = 2 * (radius + 32) // 32 * 32
    x = torch.randn(1, 1, side, side, requires_grad=True)
    out = unet(x)
    centre = side // 2
    (out.prior_mean[0, 0, centre, centre] + out.prior_var[0, 0, centre, centre]).backward()
    rows, cols = np.nonzero(x.grad[0, 0].abs().numpy() > 0)
    reach = max(np.abs(rows - centre).max(), np.abs(cols - centre).max())
    assert reach <= radius
    assert reach >= 0.75 * radius  # a bound, but not a loose one


@pytest.mark.parametrize("shape", [(37, 45), (64, 33)])
def test_blind_spot_holds_at_every_pixel_through_the_inference_path(shape: tuple[int, int]) -> None:
    """mu and A^2 at p do not change when y[p] changes, borders included (no mirrored copy of y[p] in the
    padding); the denoised value, the posterior mean, is the one output that may use y[p]."""
    rng = np.random.default_rng(2)
    image = rng.normal(size=shape).astype(np.float32)
    model = _narrow_model(tile_size_px=1024)
    base = run_network_on_image(model.network, image, model.config, keep=("prior_mean", "prior_var", "denoised"))
    ny, nx = shape
    border = [(r, c) for r in range(ny) for c in range(nx) if min(r, c) < 3 or r >= ny - 3 or c >= nx - 3]
    interior = [(int(r), int(c)) for r, c in zip(rng.integers(3, ny - 3, 10), rng.integers(3, nx - 3, 10))]
    for r, c in border[::2] + interior:
        changed = image.copy()
        changed[r, c] += 25.0
        out = run_network_on_image(model.network, changed, model.config, keep=("prior_mean", "prior_var",
                                                                                "denoised"))
        assert out.prior_mean[r, c] == pytest.approx(base.prior_mean[r, c], rel=1e-5, abs=1e-5), (r, c)
        assert out.prior_var[r, c] == pytest.approx(base.prior_var[r, c], rel=1e-5, abs=1e-6), (r, c)
        assert out.denoised[r, c] != pytest.approx(base.denoised[r, c], abs=1e-4)


def _settings(**changes: object) -> PickingSettings:
    base = PickingSettings(downsample=1, nms_radius_px=5.0, border_px=0.0, threshold=None, top_fraction=0.25,
                           threshold_rule="expected-count", expected_per_micrograph=3.0)
    return dataclasses.replace(base, **changes)


def test_fixed_cut_off_wins() -> None:
    assert choose_threshold([np.array([0.1, 0.9])], _settings(threshold=0.42)) == (0.42, False)


def test_expected_count_keeps_as_many_picks_as_particles_expected() -> None:
    scores = [np.array([0.9, 0.8, 0.7, 0.1, 0.05]), np.array([0.95, 0.6, 0.3, 0.2])]
    cut, automatic = choose_threshold(scores, _settings(expected_per_micrograph=3.0))
    assert automatic
    kept = sum(int((s >= cut).sum()) for s in scores)
    assert kept == 6 and cut == pytest.approx(0.3)


def test_expected_count_beyond_the_candidates_keeps_them_all() -> None:
    cut, _ = choose_threshold([np.array([0.9, 0.2])], _settings(expected_per_micrograph=50.0))
    assert cut == pytest.approx(0.2)


def test_without_an_expected_count_the_quantile_stands_where_the_model_is_unsure() -> None:
    settings = _settings(expected_per_micrograph=None)
    assert settings.automatic_rule == "probability-sum" and _settings().automatic_rule == "expected-count"
    # Log-odds -9..-5 (probabilities <= 0.7 %: summed, under one particle): the top 25 % of the candidates.
    scores = np.linspace(-9.0, -5.0, 101)
    assert choose_threshold([scores], settings) == (pytest.approx(np.quantile(scores, 0.75)), True)


def test_without_an_expected_count_a_confident_model_keeps_as_many_as_its_probabilities_sum_to() -> None:
    # A crowded field: 60 of 100 candidates at probability 0.95-0.998, the rest ~0.002 (summed ~58.7: 59 picks,
    # where the top 25 % would keep 25).
    confident, unsure = np.linspace(3.0, 6.0, 60), np.full(40, -6.0)
    scores = [np.r_[confident[::2], unsure[:20]], np.r_[confident[1::2], unsure[20:]]]
    cut, automatic = choose_threshold(scores, _settings(expected_per_micrograph=None))
    kept = sum(int((s >= cut).sum()) for s in scores)
    assert automatic and kept == round(count_from_probabilities(np.concatenate(scores))) == 59
    # Asked for by name, the quantile rule is the appendix's alone.
    quantile_cut, _ = choose_threshold(scores, _settings(threshold_rule="quantile"))
    assert sum(int((s >= quantile_cut).sum()) for s in scores) == 25


def test_count_from_probabilities_is_the_sum_of_the_logistic_and_survives_huge_scores() -> None:
    assert count_from_probabilities(np.array([0.0, 0.0, np.log(3.0)])) == pytest.approx(1.75)
    assert count_from_probabilities(np.array([1e6, -1e6, np.nan])) == pytest.approx(1.0)


def test_quantile_rule_is_the_stated_quantile() -> None:
    scores = np.linspace(0, 1, 101)
    cut, automatic = choose_threshold([scores], _settings(threshold_rule="quantile", top_fraction=0.3))
    assert automatic and cut == pytest.approx(np.quantile(scores, 0.7))


def test_unknown_rule_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match="cut-off rule"):
        PickingSettings.resolve(_model(), threshold="biggest")


def test_another_bin_keeps_the_particle_size_the_model_learned_in_network_pixels() -> None:
    # --downsample on a trained model is for micrographs at another pixel size (benchmarks/real_mrcfile.py trains at
    # 6x and predicts a finer-pixel exposure at 8x): the particle then measures in network px what it did in
    # training, and so do the NMS radius and the particle density per network px^2.
    model = dataclasses.replace(_model(), downsample=2.0,
                                meta={"expected_particles": 5.0, "expected_density_per_px2": 0.001})
    for downsample in (None, 1, 4):
        settings = PickingSettings.resolve(model, downsample=downsample)
        assert settings.downsample == (downsample or 2.0)
        assert settings.particle_diameter_px == 12.0 and settings.nms_radius_px == 6.0
        assert settings.expected_density_per_px2 == 0.001


def test_predict_on_arrays_returns_coordinates_in_input_pixels() -> None:
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(96, 128)).astype(np.float32), rng.normal(size=(64, 64)).astype(np.float32)]
    result = predict(_model(), images, threshold=0.0)
    assert [m.name for m in result.micrographs] == ["image_0000", "image_0001"]
    for prediction, image in zip(result.micrographs, images):
        assert prediction.denoised is not None and prediction.denoised.shape == image.shape
        xy = prediction.candidates[["x", "y"]].to_numpy()
        assert ((xy >= 0) & (xy < np.array(image.shape[::-1]))).all()
    assert not result.threshold_was_automatic


def test_predict_rejects_non_finite_arrays() -> None:
    image = np.zeros((64, 64), np.float32)
    image[3, 3] = np.nan
    with pytest.raises(UserInputError, match="NaN"):
        predict(_model(), [image])


def test_confident_candidates_keep_their_ranking_in_files(tmp_path) -> None:
    """Scores are logits: peaks at logits 25, 30 and 40 (all probability 1.0 after rounding) stay ordered."""
    from cryojoint.inference import candidate_peaks
    from cryojoint.io.coords import make_table, read_coordinates, write_coordinates

    logits = np.full((64, 64), -10.0, dtype=np.float32)
    for (row, col), value in zip([(10, 10), (30, 40), (50, 20)], [25.0, 40.0, 30.0], strict=True):
        logits[row, col] = value
    xy, scores = candidate_peaks(logits, radius_px=5.0, clamp=1e-4)
    assert sorted(scores.tolist(), reverse=True) == [40.0, 30.0, 25.0]
    for suffix in ("csv", "star"):
        path = tmp_path / f"picks.{suffix}"
        write_coordinates(make_table("m", xy[:, 0], xy[:, 1], scores), path)
        back = read_coordinates(path).sort_values("score", ascending=False)
        assert back["score"].is_unique
        assert back[["x", "y"]].to_numpy().tolist() == [[40, 30], [20, 50], [10, 10]]


@pytest.mark.parametrize("preset", ["ruvb", "ribosome"])
def test_an_untrained_denoiser_does_not_make_the_image_worse(preset: str) -> None:
    """Where the network has learned nothing, the calibrated posterior mean is no further from the clean image
    than the raw input (mean squared error, what SURE guarantees), on every micrograph, while the network's own
    posterior mean is further on some.

    Not asserted, because it does not hold: the FRC with the clean image. An untrained prior mean carries wrong
    content at low frequencies, and the MSE-best shrinkage, which mostly removes high-frequency noise, lets
    some of it in: FRC fell below the raw input's on 5 of these 8 micrographs (by up to 0.17 where particles
    are the only structure), before and after the simulator's decoys. Trained models stay above raw in the
    benchmark's FRC table.
    """
    from cryojoint.data import estimate_noise_std
    from cryojoint.imaging import normalise
    from cryojoint.models.unet import posterior_mean
    from cryojoint.simulation import simulate

    uncalibrated_worse = 0
    for seed in (4, 5, 6, 7):
        data = simulate(n_micrographs=1, size=256, seed=seed, preset=preset)  # 10 % dose
        raw = normalise(data.micrographs["dose_010"][0].data)
        # The clean image in the raw input's units: least-squares affine fit (the noise is independent of it).
        clean = data.clean[0].data.astype(np.float64)
        design = np.stack([clean.ravel(), np.ones(clean.size)], axis=1)
        fit = np.linalg.lstsq(design, raw.ravel().astype(np.float64), rcond=None)[0]
        truth = (design @ fit).reshape(clean.shape)
        model = _narrow_model()
        model.network.denoiser.initialise_noise_std(estimate_noise_std([raw]))
        result = run_network_on_image(model.network, raw, model.config)

        def mse(image: np.ndarray, truth: np.ndarray = truth) -> float:
            return float(np.mean((image - truth) ** 2))

        uncalibrated = posterior_mean(*(torch.from_numpy(a) for a in (raw, result.prior_mean, result.prior_var)),
                                      torch.tensor(result.noise_var)).numpy()
        # No worse than either extreme SURE chooses between (the input itself, the network's own posterior mean),
        # up to SURE's estimation error; the network's own is worse than the input on some micrographs.
        assert mse(result.denoised) <= min(mse(raw), 1.02 * mse(uncalibrated)), seed
        uncalibrated_worse += mse(uncalibrated) > mse(raw)
    assert uncalibrated_worse >= 1


def test_a_good_prior_keeps_its_gain() -> None:
    """When mu is informative, the check keeps (nearly) the network's own posterior mean and its gain over y."""
    from cryojoint.inference import calibrated_posterior_mean
    from cryojoint.models.unet import posterior_mean

    rng = np.random.default_rng(3)
    clean = rng.normal(size=(128, 128)).astype(np.float32)
    y = clean + rng.normal(scale=0.5, size=clean.shape).astype(np.float32)
    mu = clean + rng.normal(scale=0.3, size=clean.shape).astype(np.float32)
    a2 = np.full_like(y, 0.3**2)
    bayes = posterior_mean(*(torch.from_numpy(a) for a in (y, mu, a2)), torch.tensor(0.25)).numpy()
    checked = calibrated_posterior_mean(y, mu, a2, 0.25)

    def mse(image: np.ndarray) -> float:
        return float(np.mean((image - clean) ** 2))

    assert mse(checked) <= 1.02 * mse(bayes) < 0.5 * mse(y)


def test_an_underconfident_prior_is_trusted_more() -> None:
    """A prior mean far better than its variance says (the general model on data unlike its corpus): the check
    scales A^2 down and keeps the prior mean's gain, which the network's own posterior mean throws away."""
    from cryojoint.inference import calibrated_posterior_mean
    from cryojoint.models.unet import posterior_mean

    rng = np.random.default_rng(4)
    clean = rng.normal(scale=0.2, size=(128, 128)).astype(np.float32)
    y = clean + rng.normal(scale=1.0, size=clean.shape).astype(np.float32)
    mu = clean + rng.normal(scale=0.05, size=clean.shape).astype(np.float32)
    a2 = np.full_like(y, 0.35)  # the network's claim; the prior mean's real error variance is 0.0025
    bayes = posterior_mean(*(torch.from_numpy(a) for a in (y, mu, a2)), torch.tensor(1.0)).numpy()
    checked = calibrated_posterior_mean(y, mu, a2, 1.0)

    def mse(image: np.ndarray) -> float:
        return float(np.mean((image - clean) ** 2))

    assert mse(checked) < 0.1 * mse(bayes)
    assert mse(checked) < 2 * mse(mu)


def test_the_noise_is_measured_on_the_image_not_taken_from_the_network() -> None:
    """A network whose learned noise level is far off (0.01 or 100x the truth) denoises the same image alike."""
    rng = np.random.default_rng(6)
    clean = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 3).astype(np.float32) * 10
    raw = (clean + rng.normal(size=clean.shape)).astype(np.float32)
    model = _narrow_model()
    results = []
    for noise_std in (0.1, 10.0):
        model.network.denoiser.initialise_noise_std(noise_std)
        results.append(run_network_on_image(model.network, raw, model.config).denoised)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("slice_px", "sample_px"), [(97, 1 << 18), (1 << 20, 1 << 18), (1 << 20, 100)])
def test_the_calibrated_posterior_mean_is_the_sure_choice_over_the_grid(monkeypatch, slice_px: int,
                                                                        sample_px: int) -> None:
    """The whole-image formula, written out: SURE over every (scale, inflation) of the grids on the evaluated
    pixels (all of them, or every k-th of a larger image), then the chosen posterior mean on every pixel, in
    slices or not."""
    import cryojoint.inference as inference

    rng = np.random.default_rng(5)
    y = rng.normal(scale=1.5, size=(61, 47)).astype(np.float32)
    mu = (0.4 * y + rng.normal(scale=0.5, size=y.shape)).astype(np.float32)
    a2 = np.abs(rng.normal(scale=0.4, size=y.shape)).astype(np.float32)
    s2 = 0.8
    step = -(-y.size // sample_px)
    seen = [np.ravel(a)[::step].astype(np.float64) for a in (y, mu, a2)]
    unit = float(np.mean(seen[2])) + s2
    best = (np.inf, 0.0, 0.0)
    for scale in inference.PRIOR_SCALE_GRID:
        for factor in inference.PRIOR_INFLATION_GRID:
            shrink = s2 / (scale * seen[2] + factor * unit + s2)
            risk = float(np.mean(shrink**2 * (seen[0] - seen[1]) ** 2)) - s2 + 2 * s2 * float(np.mean(1 - shrink))
            best = min(best, (risk, scale, factor * unit))
    _, scale, inflation = best
    expected = y - (s2 / (scale * a2.astype(np.float64) + inflation + s2)).astype(np.float32) * (y - mu)
    monkeypatch.setattr(inference, "SURE_SLICE_PX", slice_px)
    monkeypatch.setattr(inference, "SURE_SAMPLE_PX", sample_px)
    result = inference.calibrated_posterior_mean(y, mu, a2, s2)
    assert result.shape == y.shape and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("factor, passes", [(1.0, 1), (10 / 7, 1), (5 / 3, 4), (2.0, 4), (23 / 8, 4), (6.25, 4)])
def test_a_bin_is_denoised_unshifted_and_shifted_by_half_a_bin(factor: float, passes: int) -> None:
    offsets = bin_phase_offsets(factor)
    assert len(offsets) == len(set(offsets)) == passes and (0, 0) in offsets
    assert all(0 <= o < max(1, round(factor)) for pair in offsets for o in pair)
    if passes > 1:
        assert max(o for pair in offsets for o in pair) == round(factor / 2)


@pytest.mark.parametrize("factor", [2.0, 4.0, 6.25])
def test_the_mean_over_bin_phases_stays_on_the_inputs_grid(monkeypatch: pytest.MonkeyPatch, factor: float) -> None:
    """With a pass that only bins (an identity denoiser), every phase returns the smooth image in place: a phase
    put back one pixel off would shift its share of the mean, and a shifted pass's own edges (its first rows, with
    no context above them; its last, filled by repetition) would spoil the image near its edges."""
    from cryojoint import inference

    rng = np.random.default_rng(3)
    smooth = ndimage.gaussian_filter(rng.normal(size=(203, 197)), 2.0 * factor).astype(np.float32)
    smooth /= np.abs(smooth).max()
    settings = PickingSettings.resolve(_model(), downsample=factor, pick=False, denoise_at_input_size=True)
    assert settings.denoise_at_input_size
    monkeypatch.setattr(inference, "_network_pass",
                        lambda model, mic, s, device: (bin_image(mic.data, s.downsample), None))
    averaged = inference._denoise_across_bin_phases(None, Micrograph(smooth), settings, "cpu")
    single = unbin_image(bin_image(smooth, factor), factor, smooth.shape)
    assert averaged.shape == smooth.shape
    error_averaged, error_single = np.abs(averaged - smooth), np.abs(single - smooth)
    interior = (slice(3 * int(factor), -3 * int(factor)),) * 2
    assert error_averaged[interior].max() < 0.05
    assert error_averaged[interior].mean() <= 1.01 * error_single[interior].mean()
    # Along each edge, row by row: no seam where a shifted pass begins, no repeated fill where it ends.
    band = 3 * int(np.ceil(factor))
    for errors in (lambda e: e[:band, band:-band].max(1), lambda e: e[-band:, band:-band].max(1),
                   lambda e: e[band:-band, :band].max(0), lambda e: e[band:-band, -band:].max(0)):
        assert (errors(error_averaged) <= errors(error_single) + 2e-3).all()
