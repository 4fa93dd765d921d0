"""The general model's reading of the particle size: the bin at which the labelled picks score highest."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cryojoint import load_model
from cryojoint.io.mrc import Micrograph
from cryojoint.simulation import SimulationConfig, simulate
from cryojoint.size_reading import MIN_SCAN_LABELS, _crop_around, _refined_diameter, read_size_with_model


@pytest.fixture(scope="module")
def general():
    return load_model("general")


def test_the_vertex_of_a_symmetric_peak_is_its_middle() -> None:
    scanned = [(40.0, 1.1, -1.5), (50.0, 1.4, -1.0), (62.5, 1.7, -1.5)]  # equal steps in log-diameter
    assert _refined_diameter(scanned, 1) == pytest.approx(50.0)


def test_the_vertex_leans_to_the_higher_neighbour_but_no_further_than_half_way() -> None:
    scanned = [(40.0, 1.1, -2.0), (50.0, 1.4, -1.0), (62.5, 1.7, -1.2)]
    refined = _refined_diameter(scanned, 1)
    assert 50.0 < refined <= math.sqrt(50.0 * 62.5) + 1e-9
    # a best scale at either end of the scan is taken as it is
    assert _refined_diameter(scanned, 0) == 40.0 and _refined_diameter(scanned, 2) == 62.5


def test_crops_keep_the_picks_and_their_margin_inside_the_micrograph() -> None:
    micrograph = Micrograph(np.zeros((300, 400), np.float32), 5.0, "mic")
    crop, xy = _crop_around(micrograph, np.array([[100.0, 50.0], [150.0, 80.0]]), 40.0)
    assert crop.shape == (80 + 40 - 10 + 1, 150 + 40 - 60 + 1) and crop.pixel_size == 5.0  # rows 10-120, cols 60-190
    np.testing.assert_allclose(xy, [[40.0, 40.0], [90.0, 70.0]])


def test_too_few_picks_or_a_single_bin_cannot_be_read(general) -> None:
    micrograph = Micrograph(np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32), None, "mic")
    few = np.random.default_rng(1).uniform(40, 216, (MIN_SCAN_LABELS - 1, 2))
    assert read_size_with_model(general, [(micrograph, few)], 40.0) is None
    enough = np.random.default_rng(1).uniform(40, 216, (MIN_SCAN_LABELS, 2))
    # every diameter scanned (12-24 px) is below the model's particle size: all unbinned, one pass, nothing to compare
    assert read_size_with_model(general, [(micrograph, enough)], 12.0) is None
    # a bound from the picks' spacing at the reading itself leaves no range
    assert read_size_with_model(general, [(micrograph, enough)], 40.0, largest_px=40.0) is None


@pytest.mark.slow
def test_a_ribosome_read_at_its_core_is_read_near_its_size_by_the_model(general) -> None:
    """Labelled ribosomes (52 px) at 20 % dose, told the core's size (35 px, as the blob reading finds it on 4 of 6
    draws at 10 % dose): the general model scores the picks highest near the true size."""
    data = simulate(config=SimulationConfig.for_preset("ribosome", seed=3, n_micrographs=2, size_px=(768, 768)))
    labelled = [(m, data.truth.loc[data.truth["micrograph"] == m.name, ["x", "y"]].to_numpy(float)[:40])
                for m in data.micrographs["dose_020"]]
    reading = read_size_with_model(general, labelled, 35.0, particle_contrast="dark")
    assert reading is not None and len(reading.scanned) >= 4
    assert 0.8 * data.particle_diameter_px < reading.diameter_px < 1.2 * data.particle_diameter_px
    assert reading.scanned[0][0] == 35.0  # the unbinned pass stands for the blob reading
