"""Prediction: even tiling, tiled == whole-image result, cut-off rules, the in-memory API."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cryojoint.checkpoint import LoadedModel
from cryojoint.config import CryojointConfig
from cryojoint.errors import UserInputError
from cryojoint.models.joint import JointModel
from cryojoint.prediction import PickingSettings, _blocks, choose_threshold, predict, run_network_on_image

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


def test_tiled_inference_matches_the_whole_image() -> None:
    """With context wider than the receptive fields that matter, tile seams do not show."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(150, 170)).astype(np.float32)
    whole_model = _model(tile_size_px=1024, tile_overlap_px=96)
    tiled_model = dataclasses.replace(whole_model, config=CryojointConfig.from_dict(
        {**TINY, "predict": {"tile_size_px": 64, "tile_overlap_px": 96}}))
    whole = run_network_on_image(whole_model.network, image, whole_model.config)
    tiled = run_network_on_image(tiled_model.network, image, tiled_model.config)
    assert whole.logits is not None and tiled.logits is not None
    np.testing.assert_allclose(tiled.denoised, whole.denoised, atol=1e-4)
    np.testing.assert_allclose(tiled.logits, whole.logits, atol=1e-4)


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


def test_expected_count_without_an_expected_count_falls_back_to_the_quantile() -> None:
    settings = _settings(expected_per_micrograph=None)
    assert settings.automatic_rule == "quantile" and _settings().automatic_rule == "expected-count"
    scores = np.linspace(0, 1, 101)
    assert choose_threshold([scores], settings) == (pytest.approx(np.quantile(scores, 0.75)), True)


def test_quantile_rule_is_the_stated_quantile() -> None:
    scores = np.linspace(0, 1, 101)
    cut, automatic = choose_threshold([scores], _settings(threshold_rule="quantile", top_fraction=0.3))
    assert automatic and cut == pytest.approx(np.quantile(scores, 0.7))


def test_unknown_rule_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match="cut-off rule"):
        PickingSettings.resolve(_model(), threshold="biggest")


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
    from cryojoint.io.coords import make_table, read_coordinates, write_coordinates
    from cryojoint.prediction import candidate_peaks

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
