"""The real-data step of the benchmark (EMPIAR-10017 from CryoSegNet): centres from masks, labels, binning.

Everything but the last test runs without the snapshot, on synthetic masks drawn like CryoSegNet's.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import real_bgal as rb  # noqa: E402

#: Small discs keep the synthetic masks small; the geometry scales with the radius.
RADIUS = 20
DIAMETER = 2 * RADIUS
CANVAS = 400
#: The brief's tolerance for an extracted centre (px).
CENTRE_TOLERANCE_PX = 2.0


def draw_discs(centres: np.ndarray, shape: tuple[int, int] = (CANVAS, CANVAS), radius: float = RADIUS) -> np.ndarray:
    """Union of filled discs, as ``cv2.circle(..., -1)`` draws them (pixels within ``radius`` of a centre)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for x, y in centres:
        mask |= np.hypot(xx - x, yy - y) <= radius
    return mask


def assert_found(found: np.ndarray, truth: np.ndarray) -> None:
    assert len(found) == len(truth), f"{len(found)} centres for {len(truth)} discs"
    distance, index = cKDTree(found).query(truth)
    assert np.all(distance <= CENTRE_TOLERANCE_PX), distance
    assert len(set(index.tolist())) == len(truth)  # one centre per disc


def test_separate_discs_are_found() -> None:
    truth = np.array([[60, 60], [200, 80], [330, 70], [90, 250], [250, 300], [340, 340]], dtype=float)
    found, rim = rb.disc_centres(draw_discs(truth), RADIUS)
    assert_found(found, truth)
    assert np.all(rim > 0.8)  # whole rims visible


def test_touching_and_overlapping_discs_are_split() -> None:
    """Pairs touching (1 diameter apart) and overlapping (0.6), and a tight triangle where the distance
    transform peaks between the discs, higher than at any of their centres."""
    side = 0.6 * DIAMETER
    triangle = np.array([[280, 280], [280 + side, 280], [280 + side / 2, 280 + side * np.sqrt(3) / 2]])
    truth = np.vstack([
        [[60, 60], [60 + DIAMETER, 60]],                # touching
        [[60, 200], [60 + 0.6 * DIAMETER, 200]],        # overlapping
        [[220, 80], [220 + 0.55 * DIAMETER, 80 + 0.2 * DIAMETER]],
        np.rint(triangle),
    ])
    found, _ = rb.disc_centres(draw_discs(truth), RADIUS)
    assert_found(found, truth)


def test_discs_cut_by_the_border_keep_their_centres() -> None:
    truth = np.array([[8, 150], [200, CANVAS - 6], [CANVAS - 12, 40], [200, 200]], dtype=float)
    found, _ = rb.disc_centres(draw_discs(truth), RADIUS)
    assert_found(found, truth)


def test_jpeg_compressed_mask_gives_the_same_centres() -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    truth = np.array([[60, 60], [60 + 0.7 * DIAMETER, 66], [200, 200], [300, 120], [120, 320], [150, 330]])
    truth = np.vstack([truth, rng.uniform(250, 350, size=(1, 2)).round()])
    buffer = io.BytesIO()
    Image.fromarray((draw_discs(truth) * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=75)
    found, _ = rb.disc_centres(rb.mask_from_jpeg(buffer.getvalue()), RADIUS)
    assert_found(found, truth)


def test_centres_explain_the_mask() -> None:
    truth = np.array([[100, 100], [100 + DIAMETER * 0.8, 100], [300, 300]], dtype=float)
    mask = draw_discs(truth)
    found, _ = rb.disc_centres(mask, RADIUS)
    assert rb.reconstruction_iou(mask, found, RADIUS) > 0.99
    assert rb.reconstruction_iou(mask, found[:1], RADIUS) < 0.5


def test_agreement_counts_both_directions() -> None:
    given = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0]])
    found = np.array([[3.0, 4.0], [100.0, 30.0]])  # 5 px off; 30 px off
    result = rb.agreement(given, found, radius_px=20.0)
    assert result["given_near_found"] == pytest.approx(1 / 3)
    assert result["found_near_given"] == pytest.approx(1 / 2)
    assert result["median_offset_px"] == pytest.approx(5.0)


def test_partial_labels_half_inside_one_region_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1024, size=(700, 2))
    labelled, (x0, y0, side) = rb.partial_labels(xy, (1024, 1024), seed=0, index=3)
    again, region_again = rb.partial_labels(xy, (1024, 1024), seed=0, index=3)
    assert np.array_equal(labelled, again) and region_again == (x0, y0, side)
    assert side == pytest.approx(1024 / 3)
    assert 0 <= x0 <= 1024 - side and 0 <= y0 <= 1024 - side
    inside = (xy[:, 0] >= x0) & (xy[:, 0] < x0 + side) & (xy[:, 1] >= y0) & (xy[:, 1] < y0 + side)
    assert not np.any(labelled & ~inside)  # nothing labelled outside the region
    assert labelled.sum() == round(rb.LABEL_FRACTION * inside.sum())
    other, other_region = rb.partial_labels(xy, (1024, 1024), seed=0, index=4)
    assert other_region != (x0, y0, side)  # each micrograph gets its own region


def test_partial_labels_of_an_empty_region_are_empty() -> None:
    labelled, _ = rb.partial_labels(np.zeros((0, 2)), (1024, 1024), seed=0, index=0)
    assert labelled.shape == (0,)


def test_binning_scales_coordinates_with_the_image() -> None:
    """A bright 4×4 block at full-size pixels 8..11 is binned pixel 2; its centre 9.5 maps to 2.0."""
    image = np.zeros((32, 32), dtype=np.uint8)
    image[8:12, 20:24] = 200  # rows 8..11 (y), columns 20..23 (x)
    centre = np.array([[21.5, 9.5]])  # (x, y)
    binned, xy = rb.bin_micrograph(image, centre, factor=4)
    assert binned.shape == (8, 8) and binned.dtype == np.float32
    row, col = np.unravel_index(np.argmax(binned), binned.shape)
    assert (col, row) == (5, 2)
    assert xy[0] == pytest.approx([col, row])
    assert binned[row, col] == pytest.approx(200.0)
    assert rb.PIXEL_SIZE_ANGSTROM == pytest.approx(7.08)
    assert rb.PARTICLE_DIAMETER_PX == pytest.approx(27.0)


def test_split_is_sorted_first_ten_train() -> None:
    names = [f"{rb.NAME_PREFIX}{i:02d}" for i in range(20)][::-1]
    train, test = rb.split_names(names)
    assert train == sorted(names)[:10] and test == sorted(names)[10:]


def test_missing_snapshot_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(rb.SnapshotMissing, match="--snapshot"):
        rb.find_snapshot(tmp_path)
    code = rb.main(["--snapshot", str(tmp_path / "nowhere"), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "git clone --bare" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_prepare_real_data_from_the_snapshot(tmp_path: Path) -> None:
    """About a minute: decode 40 JPGs of 4096², extract ~13 000 centres, write 20 MRCs."""
    try:
        snapshot = rb.find_snapshot()
    except rb.SnapshotMissing as err:
        pytest.skip(str(err))
    messages: list[str] = []
    folder = rb.prepare(tmp_path, snapshot, log=messages.append)
    facts = json.loads((folder / rb.FACTS_NAME).read_text())
    assert facts["source"]["commit"].startswith(folder.name.rsplit("-", 1)[1])
    measured = facts["centre_extraction"]["agreement_with_given_picks"]
    assert measured["given_near_found"] >= 0.95 and measured["found_near_given"] >= 0.95
    assert all(info["mask_reconstruction_iou"] > 0.99 for info in facts["per_micrograph"].values())
    data = rb.load_prepared(folder)
    assert len(data.train_names) == len(data.test_names) == 10
    assert set(data.train_labels["micrograph"]) <= set(data.train_names)
    assert set(data.test_truth["micrograph"]) == set(data.test_names)
    micrograph = rb.read_micrograph(data.mrcs(data.test_names[:1])[0])
    assert micrograph.shape == (1024, 1024) and micrograph.pixel_size == pytest.approx(7.08, abs=1e-3)
    assert len(list((folder / "figures").glob("*.png"))) == rb.FIGURE_COUNT
    assert not list(tmp_path.glob("data/.*.part"))
    assert rb.prepare(tmp_path, snapshot, log=messages.append) == folder  # idempotent
    assert messages[-1].startswith("already prepared")
