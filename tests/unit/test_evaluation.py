"""Matching, precision-recall, AP, picking reports, PSNR, FRC and denoising reports."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from scipy import ndimage

from cryojoint.errors import UserInputError
from cryojoint.evaluation import (
    average_precision,
    denoising_metrics,
    evaluate,
    evaluate_denoised_dirs,
    evaluate_pick_files,
    frc,
    frc_score,
    lowpass_reference,
    match_picks,
    picking_metrics,
    precision_recall_curve,
    psnr,
)
from cryojoint.io.mrc import write_mrc

# ------------------------------------------------------------------------------------ brute force


def _brute_force_matchings(pred: np.ndarray, true: np.ndarray, radius: float) -> tuple[int, float]:
    """Maximum number of one-to-one matches within radius, and the least total distance achieving it."""
    distance = np.hypot(pred[:, None, 0] - true[None, :, 0], pred[:, None, 1] - true[None, :, 1]) \
        if len(pred) and len(true) else np.zeros((len(pred), len(true)))
    best = (0, 0.0)
    for assignment in itertools.product([-1, *range(len(true))], repeat=len(pred)):
        used = [t for t in assignment if t >= 0]
        if len(used) != len(set(used)):
            continue
        if any(t >= 0 and distance[p, t] > radius for p, t in enumerate(assignment)):
            continue
        total = float(sum(distance[p, t] for p, t in enumerate(assignment) if t >= 0))
        if len(used) > best[0] or (len(used) == best[0] and total < best[1]):
            best = (len(used), total)
    return best


points = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), min_size=0, max_size=5)


@settings(max_examples=150, deadline=None)
@given(pred=points, true=points, radius=st.sampled_from([1.0, 2.0, 2.5, 4.0]))
def test_match_picks_is_a_maximum_matching_of_least_distance(
    pred: list[tuple[int, int]], true: list[tuple[int, int]], radius: float
) -> None:
    pred_xy = np.array(pred, dtype=float).reshape(-1, 2)
    true_xy = np.array(true, dtype=float).reshape(-1, 2)
    pred_index, true_index = match_picks(pred_xy, true_xy, radius)
    assert len(set(pred_index.tolist())) == pred_index.size
    assert len(set(true_index.tolist())) == true_index.size
    distances = np.hypot(*(pred_xy[pred_index] - true_xy[true_index]).T) if pred_index.size else np.zeros(0)
    assert np.all(distances <= radius)
    count, total = _brute_force_matchings(pred_xy, true_xy, radius)
    assert pred_index.size == count
    assert float(distances.sum()) == pytest.approx(total, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(pred=points, true=points, data=st.data())
def test_pr_curve_counts_equal_maximum_matching_at_every_cut_off(
    pred: list[tuple[int, int]], true: list[tuple[int, int]], data: st.DataObject
) -> None:
    radius = 2.5
    pred_xy = np.array(pred, dtype=float).reshape(-1, 2)
    true_xy = np.array(true, dtype=float).reshape(-1, 2)
    scores = np.array(data.draw(st.lists(st.integers(0, 3), min_size=len(pred), max_size=len(pred))), float)
    precision, recall, thresholds = precision_recall_curve(pred_xy, scores, true_xy, radius)
    assert np.all(np.diff(thresholds) < 0)
    assert len(thresholds) == len(set(scores.tolist()))
    for p, r, cut in zip(precision, recall, thresholds, strict=True):
        kept = scores >= cut
        count, _ = _brute_force_matchings(pred_xy[kept], true_xy, radius)
        assert p == pytest.approx(count / kept.sum())
        if len(true_xy):
            assert r == pytest.approx(count / len(true_xy))


def test_greedy_matching_would_lose_a_match_that_the_curve_keeps() -> None:
    # The best pick sits between two particles; nearest-first greedy would give it the particle the
    # second pick needs. Maximum matching finds both.
    true_xy = np.array([[0.0, 0.0], [3.0, 0.0]])
    pred_xy = np.array([[1.6, 0.0], [-1.0, 0.0]])
    precision, recall, _ = precision_recall_curve(pred_xy, np.array([0.9, 0.5]), true_xy, radius=2.0)
    np.testing.assert_allclose(recall, [0.5, 1.0])
    np.testing.assert_allclose(precision, [1.0, 1.0])


def test_match_picks_handles_empty_inputs() -> None:
    for pred, true in [(np.zeros((0, 2)), np.ones((3, 2))), (np.ones((3, 2)), np.zeros((0, 2))), ([], [])]:
        pred_index, true_index = match_picks(pred, true, 5.0)
        assert pred_index.size == true_index.size == 0


def test_match_picks_scales_to_many_points() -> None:
    rng = np.random.default_rng(0)
    true_xy = rng.uniform(0, 1024, size=(600, 2))
    pred_xy = np.concatenate([true_xy + rng.normal(0, 2, true_xy.shape), rng.uniform(0, 1024, (400, 2))])
    pred_index, _ = match_picks(pred_xy, true_xy, 8.0)
    assert pred_index.size >= 595


# -------------------------------------------------------------------------------------------- AP


def test_average_precision_perfect_reversed_and_analytic() -> None:
    true_xy = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]])
    false_xy = np.array([[200.0, 200.0], [300.0, 300.0], [400.0, 400.0]])
    pred_xy = np.concatenate([true_xy, false_xy])
    good_first = np.array([6, 5, 4, 3, 2, 1], dtype=float)
    assert average_precision(pred_xy, good_first, true_xy, 3.0) == pytest.approx(1.0)
    bad_first = good_first[::-1].copy()
    reversed_ap = average_precision(pred_xy, bad_first, true_xy, 3.0)
    # Hits at ranks 4, 5, 6: (1/3)(1/4 + 2/5 + 3/6).
    assert reversed_ap == pytest.approx((1 / 4 + 2 / 5 + 3 / 6) / 3)
    # TP, FP, TP with two particles: P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1 -> AP = 1/2 + 1/3.
    small_pred = np.array([[10.0, 10.0], [300.0, 300.0], [50.0, 50.0]])
    assert average_precision(small_pred, np.array([0.9, 0.8, 0.7]), true_xy[:2], 3.0) == pytest.approx(5 / 6)
    # A missed particle caps AP at the recall.
    assert average_precision(true_xy[:2], np.array([1.0, 0.5]), true_xy, 3.0) == pytest.approx(2 / 3)


def test_average_precision_without_scores_or_truth() -> None:
    true_xy = np.array([[0.0, 0.0], [20.0, 0.0]])
    pred_xy = np.array([[0.0, 1.0], [40.0, 0.0]])
    # All picks tie: one point at P = 1/2, R = 1/2.
    assert average_precision(pred_xy, None, true_xy, 3.0) == pytest.approx(0.25)
    assert average_precision(pred_xy, np.array([np.nan, np.nan]), true_xy, 3.0) == pytest.approx(0.25)
    assert math.isnan(average_precision(pred_xy, np.ones(2), np.zeros((0, 2)), 3.0))
    assert average_precision(np.zeros((0, 2)), np.zeros(0), true_xy, 3.0) == 0.0


# ------------------------------------------------------------------------------------ picking report


def _table(name: str, xy: np.ndarray, score: np.ndarray | None = None) -> pd.DataFrame:
    return pd.DataFrame({"micrograph": name, "x": xy[:, 0], "y": xy[:, 1],
                         "score": np.full(len(xy), np.nan) if score is None else score})


def _two_micrograph_case() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    picks, truth = [], []
    for name in ("mic_a", "mic_b"):
        true_xy = rng.uniform(40, 200, size=(12, 2))
        true_xy[0] = [5.0, 100.0]  # an edge particle
        hits = true_xy[:9] + rng.normal(0, 1.0, (9, 2))
        misses = rng.uniform(0, 240, size=(4, 2))
        pred_xy = np.concatenate([hits, misses])
        score = np.concatenate([rng.uniform(0.5, 1.0, 9), rng.uniform(0.0, 0.6, 4)])
        picks.append(_table(name, pred_xy, score))
        truth.append(_table(name, true_xy))
    masks = {"mic_a": np.zeros((240, 240), np.int8), "mic_b": np.zeros((240, 240), np.int8)}
    return pd.concat(picks, ignore_index=True), pd.concat(truth, ignore_index=True), masks


def test_picking_metrics_counts_and_pooling() -> None:
    picks, truth, masks = _two_micrograph_case()
    report = picking_metrics(picks, truth, match_radius=6.0, masks=masks)
    for result in report.per_micrograph:
        expected_tp = match_picks(picks[picks.micrograph == result.micrograph][["x", "y"]].to_numpy(),
                                  truth[truth.micrograph == result.micrograph][["x", "y"]].to_numpy(), 6.0)[0].size
        assert result.true_positives == expected_tp
        assert result.precision == pytest.approx(expected_tp / 13)
        assert result.recall == pytest.approx(expected_tp / 12)
        assert result.n_true_near_edge == 1
        assert result.fraction_picks_in_mask == 0.0
    overall = report.overall
    assert overall.n_picks == 26 and overall.n_true == 24
    assert overall.true_positives == sum(r.true_positives for r in report.per_micrograph)
    assert overall.f1 == pytest.approx(2 * overall.true_positives / 50)
    # Pooling = one micrograph holding both, far apart (matching stays within each micrograph).
    shifted_picks, shifted_truth = picks.copy(), truth.copy()
    for table in (shifted_picks, shifted_truth):
        table.loc[table.micrograph == "mic_b", "x"] += 10_000
        table["micrograph"] = "merged"
    merged = picking_metrics(shifted_picks, shifted_truth, match_radius=6.0)
    assert overall.average_precision == pytest.approx(merged.overall.average_precision)
    assert overall.best_f1 == pytest.approx(merged.overall.best_f1)
    assert 0 < overall.average_precision <= 1


def test_picking_metrics_threshold_masks_and_edges() -> None:
    picks, truth, masks = _two_micrograph_case()
    masks["mic_a"][:, :120] = 2  # contamination on the left half of mic_a
    report = picking_metrics(picks, truth, 6.0, threshold=0.7, masks=masks)
    kept = picks[picks.score >= 0.7]
    assert report.overall.n_picks == len(kept)
    left = kept[(kept.micrograph == "mic_a")]
    expected_fraction = float(np.mean(np.rint(left.x) < 120))
    assert report.per_micrograph[0].fraction_picks_in_mask == pytest.approx(expected_fraction)
    assert report.per_micrograph[0].average_precision == pytest.approx(
        picking_metrics(picks, truth, 6.0).per_micrograph[0].average_precision)

    excluded = picking_metrics(picks, truth, 6.0, masks=masks, exclude_mask_values=True)
    truth_a = truth[truth.micrograph == "mic_a"]
    assert excluded.per_micrograph[0].n_true == int(np.sum(np.rint(truth_a.x) >= 120))
    assert picking_metrics(picks, truth, 6.0, masks=masks, exclude_mask_values=[1]).overall.n_true == 24
    assert excluded.excluded_masked

    with_shapes = picking_metrics(picks, truth, 6.0, shapes={"mic_a": (240, 240), "mic_b": (240, 240)})
    assert with_shapes.overall.n_true_near_edge == 2
    assert with_shapes.overall.edge_recall == pytest.approx(1.0)  # the edge particles were among the hits


def test_picking_report_serialises_and_renders() -> None:
    picks, truth, masks = _two_micrograph_case()
    extra = _table("mic_z", np.array([[1.0, 1.0]]), np.array([0.5]))
    report = picking_metrics(pd.concat([picks, extra]), truth, 6.0, masks=masks)
    assert report.ignored_pick_micrographs == ["mic_z"]
    text = json.dumps(report.to_dict(include_curves=True), allow_nan=False)
    assert '"average_precision"' in text
    frame = report.to_dataframe()
    assert list(frame.micrograph) == ["mic_a", "mic_b", "all"]
    console = Console(record=True, width=200)
    console.print(report.to_rich_table())
    assert "mic_b" in console.export_text()


def test_picks_without_scores_get_no_ranking_figures() -> None:
    """BOX files and hand picks have no scores: precision/recall/F1 apply, AP and best F1 (a ranking) do not."""
    picks, truth, _ = _two_micrograph_case()
    report = picking_metrics(picks.assign(score=np.nan), truth, 6.0)
    for result in [*report.per_micrograph, report.overall]:
        assert math.isnan(result.average_precision) and math.isnan(result.best_f1)
        assert 0 < result.f1 < 1
    assert report.overall.f1 == pytest.approx(picking_metrics(picks, truth, 6.0).overall.f1)
    assert not math.isnan(picking_metrics(picks, truth, 6.0).overall.average_precision)


def test_picking_metrics_user_errors() -> None:
    picks, truth, _ = _two_micrograph_case()
    renamed = picks.assign(micrograph="other")
    with pytest.raises(UserInputError, match="no micrograph name in common"):
        picking_metrics(renamed, truth, 6.0)
    with pytest.raises(UserInputError, match="no scores"):
        picking_metrics(picks.assign(score=np.nan), truth, 6.0, threshold=0.5)
    with pytest.raises(UserInputError, match="lacks column"):
        picking_metrics(picks.drop(columns="x"), truth, 6.0)
    with pytest.raises(UserInputError):
        picking_metrics(picks, truth, 0.0)


def test_picking_metrics_micrograph_without_picks_counts_as_missed() -> None:
    picks, truth, _ = _two_micrograph_case()
    report = picking_metrics(picks[picks.micrograph == "mic_a"], truth, 6.0)
    assert report.per_micrograph[1].n_picks == 0
    assert report.per_micrograph[1].recall == 0.0
    assert math.isnan(report.per_micrograph[1].precision)
    assert report.overall.n_true == 24


# ------------------------------------------------------------------------------------------ PSNR


def test_psnr_identities() -> None:
    rng = np.random.default_rng(0)
    reference = ndimage.gaussian_filter(rng.normal(size=(64, 80)), 2.0)
    assert psnr(reference, reference) == math.inf
    noisy = reference + rng.normal(0, 0.05, reference.shape)
    value = psnr(noisy, reference)
    assert psnr(-3.0 * noisy + 7.0, reference) == pytest.approx(value, abs=1e-9)
    assert psnr(noisy.astype(np.float32), reference) == pytest.approx(value, abs=1e-4)
    with pytest.raises(ValueError):
        psnr(noisy[:10], reference)


def test_psnr_known_value_for_added_noise() -> None:
    rng = np.random.default_rng(1)
    reference = rng.uniform(0.0, 1.0, size=(512, 512))
    noise_variance = 0.01
    noisy = reference + rng.normal(0, math.sqrt(noise_variance), reference.shape)
    signal_variance = float(np.var(reference))
    fitted_mse = noise_variance * signal_variance / (noise_variance + signal_variance)
    peak = float(reference.max() - reference.min())
    assert psnr(noisy, reference) == pytest.approx(10 * math.log10(peak**2 / fitted_mse), abs=0.05)


def test_psnr_mask_selects_pixels() -> None:
    rng = np.random.default_rng(2)
    reference = rng.uniform(size=(40, 40))
    image = reference.copy()
    image[:, :10] = 50.0 * rng.normal(size=(40, 10))  # garbage only under the mask
    outside = np.ones_like(reference, dtype=bool)
    outside[:, :10] = False
    assert psnr(image, reference, outside) == math.inf
    # Unmasked, the garbage forces the fit to ~ the reference mean: no better than predicting a constant.
    constant_psnr = 10 * math.log10(np.ptp(reference) ** 2 / np.var(reference))
    assert psnr(image, reference) < constant_psnr + 0.5


# ------------------------------------------------------------------------------------------- FRC


@pytest.mark.parametrize("shape", [(64, 64), (63, 80)])
def test_frc_of_identical_images_is_one(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).normal(size=shape)
    freqs, curve = frc(image, image)
    assert freqs[0] == 0 and freqs[-1] == pytest.approx(0.5, abs=1 / min(shape))
    np.testing.assert_allclose(curve[1:], 1.0, atol=1e-12)
    assert frc_score(image, image) == pytest.approx(1.0)


def test_frc_of_independent_noise_is_near_zero() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(256, 256)), rng.normal(size=(256, 256))
    assert abs(frc_score(a, b)) < 0.02


def test_frc_is_unchanged_by_a_radial_lowpass() -> None:
    rng = np.random.default_rng(2)
    clean = ndimage.gaussian_filter(rng.normal(size=(256, 256)), 1.5, mode="wrap")
    noisy = clean + rng.normal(0, 0.1, clean.shape)
    blurred = ndimage.gaussian_filter(noisy, 1.0, mode="wrap")
    assert frc_score(blurred, clean) == pytest.approx(frc_score(noisy, clean), abs=0.02)
    assert psnr(blurred, clean) != pytest.approx(psnr(noisy, clean), abs=0.5)  # PSNR does move


def test_lowpass_reference_has_half_amplitude_at_cutoff() -> None:
    pixel_size, cutoff = 5.0, 40.0  # period 8 px
    wave = np.cos(2 * math.pi * np.arange(512) / 8.0)[None, :].repeat(4, axis=0)
    filtered = lowpass_reference(wave, pixel_size, cutoff)
    assert np.abs(filtered[:, 100:400]).max() == pytest.approx(0.5, abs=0.02)


# ------------------------------------------------------------------------------------ denoising report


def _denoising_case() -> tuple[dict[str, np.ndarray], ...]:
    rng = np.random.default_rng(4)
    clean, full, low, masks = {}, {}, {}, {}
    for name in ("m1", "m2"):
        c = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 2.0)
        clean[name] = c
        full[name] = c + rng.normal(0, 0.05, c.shape)
        low[name] = c + rng.normal(0, 0.3, c.shape)
        mask = np.zeros(c.shape, np.uint8)
        mask[:20, :20] = 1
        masks[name] = mask
    return clean, full, low, masks


def test_denoising_metrics_rank_a_better_denoiser_higher() -> None:
    clean, full, low, masks = _denoising_case()
    denoised = {k: ndimage.gaussian_filter(v, 1.0) for k, v in low.items()}
    noisy_report = denoising_metrics(low, full, clean=clean, masks=masks)
    smooth_report = denoising_metrics(denoised, full, clean=clean, masks=masks)
    assert set(noisy_report.mean) == {"psnr_full_dose", "psnr_lowpass_full_dose", "psnr_clean_outside_masks",
                                      "frc_clean"}
    assert smooth_report.mean["psnr_clean_outside_masks"] > noisy_report.mean["psnr_clean_outside_masks"]
    row = noisy_report.per_micrograph[0]
    assert row["psnr_full_dose"] == pytest.approx(psnr(low["m1"], full["m1"]))
    outside = masks["m1"] == 0
    assert row["psnr_clean_outside_masks"] == pytest.approx(psnr(low["m1"], clean["m1"], outside))
    assert noisy_report.mean["frc_clean"] == pytest.approx(
        np.mean([frc_score(low[k], clean[k]) for k in low]))
    json.dumps(noisy_report.to_dict(), allow_nan=False)
    console = Console(record=True, width=200)
    console.print(noisy_report.to_rich_table())
    assert "mean" in console.export_text()
    without_clean = denoising_metrics(low, full)
    assert set(without_clean.mean) == {"psnr_full_dose", "psnr_lowpass_full_dose"}


def test_denoising_metrics_user_errors() -> None:
    clean, full, low, _ = _denoising_case()
    with pytest.raises(UserInputError, match="m2"):
        denoising_metrics(low, {"m1": full["m1"]})
    with pytest.raises(UserInputError, match="pixel size"):
        denoising_metrics(low, full, lowpass_angstrom=20.0)
    with pytest.raises(UserInputError, match="px"):
        denoising_metrics({"m1": low["m1"][:50]}, full)
    report = denoising_metrics(low, full, pixel_size=5.0, lowpass_angstrom=40.0)
    assert report.lowpass_period_px == pytest.approx(8.0)


# ------------------------------------------------------------------------------------ files and API


def test_evaluate_denoised_dirs_matches_by_name(tmp_path: Path) -> None:
    clean, full, low, masks = _denoising_case()
    for folder, images in (("den", low), ("ref", full), ("clean", clean), ("mask", masks)):
        for name, image in images.items():
            write_mrc(tmp_path / folder / f"{name}.mrc", image, pixel_size=5.0)
    report = evaluate_denoised_dirs(tmp_path / "den", tmp_path / "ref", tmp_path / "clean", tmp_path / "mask",
                                    lowpass_angstrom=40.0)
    in_memory = denoising_metrics(low, full, clean, masks, pixel_size=5.0, lowpass_angstrom=40.0)
    for key, value in in_memory.mean.items():
        assert report.mean[key] == pytest.approx(value, abs=1e-3)  # MRC stores float32
    assert evaluate(denoised=tmp_path / "den", reference=tmp_path / "ref")["denoising"].mean
    write_mrc(tmp_path / "den" / "m3.mrc", low["m1"], pixel_size=5.0)
    with pytest.raises(UserInputError, match="m3"):
        evaluate_denoised_dirs(tmp_path / "den", tmp_path / "ref")
    with pytest.raises(UserInputError, match="not found"):
        evaluate_denoised_dirs(tmp_path / "nowhere", tmp_path / "ref")


def test_evaluate_pick_files_and_in_memory_api(tmp_path: Path) -> None:
    from cryojoint.io.coords import write_coordinates

    picks, truth, masks = _two_micrograph_case()
    write_coordinates(picks, tmp_path / "picks.star")
    write_coordinates(truth, tmp_path / "truth.star")
    for name, mask in masks.items():
        write_mrc(tmp_path / "masks" / f"{name}.mrc", mask)
    from_files = evaluate_pick_files(tmp_path / "picks.star", tmp_path / "truth.star", 6.0,
                                     mask_dir=tmp_path / "masks")
    in_memory = evaluate(picks=picks, truth=truth, masks=masks, match_radius=6.0)["picking"]
    assert from_files.overall.average_precision == pytest.approx(in_memory.overall.average_precision)
    assert from_files.overall.true_positives == in_memory.overall.true_positives
    assert from_files.overall.edge_recall == pytest.approx(1.0)
    with pytest.raises(UserInputError, match="match radius"):
        evaluate(picks=picks, truth=truth)
    with pytest.raises(UserInputError, match="nothing to evaluate"):
        evaluate()


@pytest.mark.parametrize("factor", [4 / 3, 11 / 8, 2.0])
def test_a_denoised_image_at_the_networks_scale_is_scored_on_the_references_grid(factor: float) -> None:
    """Models fine-tuned from the general model denoise at its scale (often a fractional bin): the image goes back
    onto the full-size grid, in place (a smooth image comes back as it was), and scores as it would at full size."""
    from cryojoint.imaging import bin_image, unbin_image

    rng = np.random.default_rng(3)
    clean = ndimage.gaussian_filter(rng.standard_normal((300, 280)), 5.0)
    clean /= clean.std()
    reference = clean + rng.normal(0, 1.0, clean.shape)
    binned = bin_image(clean, factor)
    back = unbin_image(binned, factor, clean.shape)
    inner = (slice(12, -12), slice(12, -12))
    assert back.shape == clean.shape
    assert np.corrcoef(back[inner].ravel(), clean[inner].ravel())[0, 1] > 0.995  # no shift, no blur to speak of
    scored = denoising_metrics({"m": binned}, {"m": reference}, clean={"m": clean})
    at_full = denoising_metrics({"m": back}, {"m": reference}, clean={"m": clean})
    assert scored.mean["frc_clean"] == pytest.approx(at_full.mean["frc_clean"])
    assert scored.mean["frc_clean"] > 0.95
    with pytest.raises(UserInputError, match="denoised image is"):  # not a bin of the reference: refused
        denoising_metrics({"m": clean[:200, :250]}, {"m": reference})
