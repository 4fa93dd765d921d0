"""The HTML report: every section from a synthetic run folder, partial folders, bad folders, a real browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cryojoint.errors import UserInputError
from cryojoint.evaluation import evaluate_files
from cryojoint.io.coords import make_table, write_coordinates
from cryojoint.io.mrc import write_mrc
from cryojoint.report import MAX_DISPLAY_PX, PANEL_DISPLAY_PX, REPORT_NAME, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG_PATTERN = re.compile(r'<img[^>]*src="data:image/png;base64,([^"]*)"')
SECTION_IDS = ("summary", "micrographs", "scores", "pr-curves", "training", "tables")
DIAMETER_PX = 16.0
THRESHOLD = 0.5
NAMES = ("mic_a", "mic_b")
MAX_PLACEMENT_TRIES = 10_000
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


# ------------------------------------------------------------------------------------------ a synthetic run


def _particle_positions(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """``count`` centres at least 1.5 diameters apart and a diameter from the edges (bounded retries)."""
    positions: list[np.ndarray] = []
    for _ in range(MAX_PLACEMENT_TRIES):
        candidate = rng.uniform(DIAMETER_PX, size - DIAMETER_PX, 2)
        if all(np.hypot(*(candidate - p)) > 1.5 * DIAMETER_PX for p in positions):
            positions.append(candidate)
            if len(positions) == count:
                return np.array(positions)
    raise AssertionError(f"cannot place {count} particles on {size} px: test setup too dense")


def _blobs(size: int, xy: np.ndarray) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    image = np.zeros((size, size))
    for x, y in xy:
        image -= np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * (DIAMETER_PX / 4) ** 2))
    return image


def build_run(root: Path, size: int = 128, per_micrograph: int = 5, seed: int = 0, benchmark: bool = True) -> Path:
    """A run folder as train/predict/evaluate/demo leave it, from hand-made images and picks."""
    import torch

    from cryojoint.checkpoint import save_model
    from cryojoint.config import default_config

    rng = np.random.default_rng(seed)
    run, data = root / "run", root / "data"
    truth_tables, candidate_tables = [], []
    for name in NAMES:
        truth_xy = _particle_positions(rng, size, per_micrograph)
        clean = _blobs(size, truth_xy)
        write_mrc(data / "clean" / f"{name}.mrc", clean, pixel_size=5.0)
        write_mrc(data / "dose_100" / f"{name}.mrc", 100 + 20 * clean + rng.normal(0, 2, clean.shape), 5.0)
        low_dose = 20 + 4 * clean + rng.normal(0, 2, clean.shape)
        write_mrc(data / "dose_020" / f"{name}.mrc", low_dose, 5.0)
        write_mrc(run / "pred" / "denoised" / f"{name}.mrc", ndimage.gaussian_filter(low_dose, 2), 5.0)
        write_mrc(data / "masks" / f"{name}.mrc", np.zeros((size, size), np.float32))
        truth_tables.append(make_table(name, truth_xy[:, 0], truth_xy[:, 1]))
        # All but one particle found (jittered), plus background peaks, some above the cut-off.
        found = truth_xy[:-1] + rng.normal(0, 1.0, truth_xy[:-1].shape)
        false = _particle_positions(rng, size, 3) + DIAMETER_PX / 2
        xy = np.concatenate([found, false])
        scores = np.concatenate([rng.uniform(0.45, 0.95, len(found)), [0.8, 0.3, 0.1]])
        candidates = make_table(name, xy[:, 0], xy[:, 1], scores)
        write_coordinates(candidates, run / "pred" / "candidates" / f"{name}.csv")
        candidate_tables.append(candidates)
    truth = pd.concat(truth_tables, ignore_index=True)
    write_coordinates(truth, run / "test_truth.star")
    all_candidates = pd.concat(candidate_tables, ignore_index=True)
    picks = all_candidates[all_candidates["score"] >= THRESHOLD]
    write_coordinates(picks, run / "pred" / "picks.star")
    (run / "pred" / "predict.json").write_text(json.dumps({
        "threshold": THRESHOLD, "threshold_was_automatic": True, "auto_threshold_top_fraction": 0.25,
        "nms_radius_px_input": DIAMETER_PX / 2, "downsample": 1, "particle_diameter_px_input": DIAMETER_PX,
        "n_micrographs": len(NAMES), "n_picks": len(picks), "failures": {}, "seconds_per_micrograph": 0.4,
        "command_line": "cryojoint predict run/model.pt data/dose_020/*.mrc --out run/pred",
    }))

    config = default_config()
    config.save_yaml(run / "config.yaml")
    meta = {"particle_diameter_px": DIAMETER_PX, "particle_diameter_estimated": True, "expected_particles": 5.0,
            "expected_particles_estimated": False, "downsample": 1, "mode": "joint", "best_step": 300}
    save_model(run / "model.pt", torch.nn.Linear(1, 1), config, meta)
    steps = np.arange(100, 600, 100)
    pd.DataFrame({"step": steps, "lr": 1e-4 * np.ones(5), "seconds": steps * 0.5, "loss": 1.0 / steps * 100,
                  "loss_denoise": -0.5 - steps / 1000, "loss_detect": 0.7 - steps / 2000,
                  "loss_consistency": 0.01 * np.ones(5), "validation_denoise_loss": -0.4 - steps / 1000,
                  "validation_ap": [0.2, 0.4, 0.6, 0.55, 0.5]}).to_csv(run / "metrics.csv", index=False)

    evaluate_files(picks=run / "pred" / "picks.star", truth=run / "test_truth.star", match_radius=DIAMETER_PX / 2,
                   mask_dir=data / "masks", denoised_dir=run / "pred" / "denoised", reference_dir=data / "dose_100",
                   clean_dir=data / "clean", json_path=run / "evaluation.json")
    (run / "sources.json").write_text(json.dumps({
        "data": str(data), "dose": "dose_020", "truth": str(run / "test_truth.star"),
        "reference": str(data / "dose_100"), "clean": str(data / "clean"), "masks": str(data / "masks"),
        "test_micrographs": list(NAMES)}))
    if benchmark:
        recall = np.linspace(0.05, 0.9, 12)
        (run / "benchmark.json").write_text(json.dumps({
            "title": "Synthetic benchmark",
            "tables": {"Picking AP": {"columns": ["dose_010", "dose_020"],
                                      "rows": {"cryojoint": [0.61, 0.7], "topaz": [0.4, None],
                                               "blob picker": {"dose_020": 0.3}}}},
            "pr_curves": {dose: {method: {"precision": list(1 - recall * k), "recall": list(recall)}
                                 for method, k in (("cryojoint", 0.3), ("topaz", 0.6))}
                          for dose in ("dose_010", "dose_020")},
            "notes": ["Topaz trained for 2 epochs."]}))
    return run


# ------------------------------------------------------------------------------------------ helpers


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data, validate=True) for data in IMG_PATTERN.findall(page)]


def _assert_images_decode(page: str) -> int:
    """Every <img> carries base64 PNG data that decodes to a non-empty picture; returns their number."""
    import matplotlib.image

    n_tags = len(re.findall(r"<img\b", page))
    images = _images(page)
    assert len(images) == n_tags, "an <img> without embedded PNG data"
    for png in images:
        assert png.startswith(PNG_SIGNATURE)
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 10 and pixels.shape[1] > 10
        assert pixels.std() > 0  # not a blank picture
    return len(images)


def _section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', page, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


# ------------------------------------------------------------------------------------------ tests


def test_full_run_has_every_section_and_images_decode(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    out = write_report(run)
    assert out == run / REPORT_NAME
    page = out.read_text(encoding="utf-8")
    for section_id in SECTION_IDS:
        _section(page, section_id)
    # 2 micrographs x (row + overlay), histogram, PR curve, benchmark PR curves, training curves.
    assert _assert_images_decode(page) == 2 * len(NAMES) + 4
    assert 'class="warning"' not in page
    assert "Missing:" not in page
    assert "http://" not in page and "https://" not in page  # self-contained
    evaluation = json.loads((run / "evaluation.json").read_text())
    overall = evaluation["picking"]["overall"]
    assert f'{overall["average_precision"]:.3f}' in _section(page, "summary")
    assert "all candidate peaks (AP" not in page  # drawn into the PNG, described in the caption:
    assert "Dashed: every candidate peak" in _section(page, "pr-curves")
    assert "AP, all peaks" in _section(page, "summary")
    assert "estimated from the labels" in page
    assert "automatic: keeps the top 25%" in page
    # The overlay's own matching agrees with the evaluation, micrograph by micrograph.
    for result in evaluation["picking"]["per_micrograph"]:
        expected = f"precision {result['precision']:.3f}, recall {result['recall']:.3f}"
        assert re.search(rf"{result['micrograph']}: \d+ picks on the denoised image — {expected}", page)
    tables = _section(page, "tables")
    assert "PSNR vs clean, outside masks" in tables and "cryojoint" in tables and "blob picker" in tables
    assert "Topaz trained for 2 epochs." in tables
    assert out.stat().st_size < 5_000_000


def test_report_is_deterministic_and_out_path_honoured(tmp_path: Path) -> None:
    run = build_run(tmp_path, benchmark=False)
    first = write_report(run, tmp_path / "elsewhere" / "a.html").read_bytes()
    second = write_report(run, tmp_path / "elsewhere" / "b.html").read_bytes()
    assert first == second
    assert not (run / REPORT_NAME).exists()


@pytest.mark.parametrize("inputs_recorded", [False, True])
def test_a_prediction_folder_shows_what_it_holds_and_not_what_it_never_does(tmp_path: Path,
                                                                           inputs_recorded: bool) -> None:
    """A user's predict folder has no training curves, evaluation or benchmark: those sections are left out instead
    of listed as missing, and the summary says how to score the picks. predict.json names its inputs (since
    session 32): they are shown beside the denoised images; an older record without them still says so."""
    run = build_run(tmp_path, benchmark=False)
    for name in ("metrics.csv", "model.pt", "config.yaml", "evaluation.json", "sources.json"):
        (run / name).unlink()
    record = json.loads((run / "pred" / "predict.json").read_text())
    if inputs_recorded:
        record["micrograph_files"] = {name: str(tmp_path / "data" / "dose_020" / f"{name}.mrc") for name in NAMES}
        record["general_model"] = True
    (run / "pred" / "predict.json").write_text(json.dumps(record))
    page = write_report(run).read_text(encoding="utf-8")
    for section_id in ("summary", "micrographs", "scores"):
        _section(page, section_id)
    for section_id in ("training", "pr-curves", "tables"):
        assert f'<section id="{section_id}">' not in page and f'href="#{section_id}"' not in page
    _assert_images_decode(page)
    assert "cryojoint evaluate --picks" in _section(page, "summary")
    assert "truth unknown" in _section(page, "micrographs")
    assert 'class="warning"' not in page
    assert page.count("picks on the denoised image") >= len(NAMES)
    if inputs_recorded:
        assert "Missing:" not in page
        assert "the shipped general model" in _section(page, "summary")
        assert page.count("input and denoised") == len(NAMES)  # no empty reference panel for real data
    else:
        assert "sources.json" in _section(page, "micrographs") and "model.pt" in _section(page, "summary")


def test_a_scored_prediction_folder_shows_its_scores_and_still_no_training(tmp_path: Path) -> None:
    """The evaluation.json the page suggests adds the scores; it does not make training files or sources due."""
    run = build_run(tmp_path, benchmark=False)
    for name in ("metrics.csv", "model.pt", "config.yaml", "sources.json"):
        (run / name).unlink()
    record = json.loads((run / "pred" / "predict.json").read_text())
    record["micrograph_files"] = {name: str(tmp_path / "data" / "dose_020" / f"{name}.mrc") for name in NAMES}
    record["general_model"] = True
    (run / "pred" / "predict.json").write_text(json.dumps(record))
    page = write_report(run).read_text(encoding="utf-8")
    assert "Picking" in _section(page, "tables") and "AP" in _section(page, "summary")
    assert '<section id="training">' not in page
    assert "Missing:" not in page


def test_a_prediction_folder_reads_the_trained_model_predict_ran(tmp_path: Path) -> None:
    run = build_run(tmp_path, benchmark=False)
    (run / "model.pt").rename(tmp_path / "elsewhere.pt")
    for name in ("metrics.csv", "config.yaml", "evaluation.json", "sources.json"):
        (run / name).unlink()
    record = json.loads((run / "pred" / "predict.json").read_text())
    (run / "pred" / "predict.json").write_text(json.dumps({**record, "model_file": str(tmp_path / "elsewhere.pt")}))
    summary = _section(write_report(run / "pred").read_text(encoding="utf-8"), "summary")
    assert "elsewhere.pt" in summary and "model.pt: mode, particle size" not in summary
    assert "mode</th>" in summary


def test_pred_folder_and_demo_folder_are_accepted(tmp_path: Path) -> None:
    run = build_run(tmp_path, benchmark=False)
    pred_page = write_report(run / "pred", tmp_path / "pred.html").read_text(encoding="utf-8")
    assert "candidate peaks" in pred_page and "Missing:" in pred_page
    demo_page = write_report(tmp_path, tmp_path / "demo.html").read_text(encoding="utf-8")
    assert "Missing:" not in _section(demo_page, "summary")  # found run/ inside the demo folder


def test_damaged_inputs_are_reported_not_raised(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    (run / "metrics.csv").write_text("not,a\nmetrics,file\n")
    (run / "evaluation.json").write_text("{ broken json")
    (run / "model.pt").write_bytes(b"garbage")
    (run / "benchmark.json").write_text(json.dumps({"tables": {"bad": {"rows": []}}, "pr_curves": {"x": 3}}))
    page = write_report(run).read_text(encoding="utf-8")
    _assert_images_decode(page)
    assert page.count("unreadable:") == 3
    assert "Benchmark table 'bad' skipped" in page
    assert 'class="warning"' not in page


def test_empty_missing_or_file_run_folder_is_a_user_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="holds nothing to report on") as info:
        write_report(empty)
    assert str(empty) in str(info.value)
    with pytest.raises(UserInputError, match="run folder not found"):
        write_report(tmp_path / "nope")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        write_report(a_file)
    (empty / "evaluation.json").write_text("[1, 2]")  # present but unusable
    with pytest.raises(UserInputError, match="not a JSON object"):
        write_report(empty)
    assert not (empty / REPORT_NAME).exists()


def test_large_micrographs_are_binned_for_display(tmp_path: Path) -> None:
    size = 2 * MAX_DISPLAY_PX + 10
    run = build_run(tmp_path, size=size, per_micrograph=4, benchmark=False)
    page = write_report(run).read_text(encoding="utf-8")
    import matplotlib.image

    widths = [matplotlib.image.imread(io.BytesIO(png), format="png").shape[1] for png in _images(page)]
    assert max(widths) <= 3 * PANEL_DISPLAY_PX + 60
    assert f"shown binned {int(np.ceil(size / PANEL_DISPLAY_PX))}×" in page
    assert len(page.encode()) < 5_000_000


# ------------------------------------------------------------------------------------------ a real browser


def _chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (im) { return !(im.complete && im.naturalWidth > 0); }).length;
  var out = document.createElement('pre');
  out.id = 'image-check';
  out.textContent = 'IMAGES ' + images.length + ' BROKEN ' + broken;
  document.body.appendChild(out);
});
</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (Debian: apt-get install -y chromium)")
def test_every_image_loads_in_headless_chromium(tmp_path: Path) -> None:
    run = build_run(tmp_path, size=256, per_micrograph=8)
    page = write_report(run).read_text(encoding="utf-8")
    n_images = len(_images(page))
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK_SCRIPT, 1), encoding="utf-8")
    result = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    match = re.search(r"IMAGES (\d+) BROKEN (\d+)", result.stdout)
    assert match, f"chromium printed no result (exit {result.returncode}): {result.stderr[-2000:]}"
    assert int(match.group(1)) == n_images > 0
    assert int(match.group(2)) == 0


def test_summary_names_the_automatic_rule_that_was_used(tmp_path: Path) -> None:
    """The expected-count cut-off is described as such, not as the quantile rule it replaced."""
    run = build_run(tmp_path)
    record_path = run / "pred" / "predict.json"
    record = json.loads(record_path.read_text())
    record.update(auto_threshold_rule="expected-count", auto_threshold_rule_used="expected-count",
                  expected_particles_per_micrograph=169.7)
    record_path.write_text(json.dumps(record))
    summary = _section(write_report(run).read_text(encoding="utf-8"), "summary")
    assert "as many picks as the expected particle density predicts (169.7 per micrograph" in summary
    assert "top 25%" not in summary


def test_summary_says_a_zero_shot_cut_off_may_keep_as_many_as_the_probabilities_sum_to(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    record_path = run / "pred" / "predict.json"
    record = json.loads(record_path.read_text())
    record.update(auto_threshold_rule="expected-count", auto_threshold_rule_used="probability-sum",
                  expected_particles_per_micrograph=None, threshold_was_automatic=True)
    record_path.write_text(json.dumps(record))
    summary = _section(write_report(run).read_text(encoding="utf-8"), "summary")
    assert "keeps the top 25% of all candidate peak scores of the run, or as many as their probabilities sum to" \
        in summary


def test_a_prediction_folder_says_where_its_particle_diameter_came_from(tmp_path: Path) -> None:
    """Without model.pt beside it the record still tells: the general model was told the diameter; a trained model
    used its own (model.pt, not read, says how it got it)."""
    run = build_run(tmp_path, benchmark=False)
    (run / "model.pt").unlink()
    assert "its model.pt, not read here, says whether estimated or given" in _section(
        write_report(run).read_text(encoding="utf-8"), "summary")
    record_path = run / "pred" / "predict.json"
    record_path.write_text(json.dumps({**json.loads(record_path.read_text()), "general_model": True}))
    assert "given with --particle-diameter: the general model bins to it" in _section(
        write_report(run).read_text(encoding="utf-8"), "summary")
