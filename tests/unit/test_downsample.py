"""Automatic downsample: micrographs whose particle is wider than the detector's receptive field are binned."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryojoint.config import DataConfig, LossConfig
from cryojoint.data import automatic_downsample, network_factor, prepare_data, resolve_downsample
from cryojoint.errors import UserInputError
from cryojoint.io.mrc import Micrograph
from cryojoint.models.detector import RECEPTIVE_FIELD


def _field(blob_field, diameter: float, seed: int = 0, size: int = 512, pixel_size: float | None = None,
           n: int = 2) -> tuple[list[Micrograph], pd.DataFrame]:
    rng = np.random.default_rng(seed)
    micrographs, rows = [], []
    for index in range(n):
        image, xy = blob_field(rng, (size, size), diameter, "disc", -1.0, noise=2.0)
        name = f"mic_{index}"
        micrographs.append(Micrograph(image.astype(np.float32), pixel_size, name, Path(f"{name}.mrc")))
        rows += [{"micrograph": name, "x": x, "y": y} for x, y in xy]
    return micrographs, pd.DataFrame(rows)


def test_the_limit_is_the_detectors_receptive_field() -> None:
    assert DataConfig().max_network_particle_px == RECEPTIVE_FIELD
    assert DataConfig().downsample is None


@pytest.mark.parametrize(("diameter", "factor"), [(27, 1), (52, 1), (63, 1), (64, 2), (104, 2), (126, 2),
                                                  (127, 3), (200, 4)])
def test_automatic_factor_is_the_smallest_that_fits(diameter: float, factor: int) -> None:
    assert automatic_downsample(diameter, 63.0) == factor
    assert diameter / factor <= 63.0 and (factor == 1 or diameter / (factor - 1) > 63.0)


def test_a_given_factor_stands(blob_field) -> None:
    micrographs, labels = _field(blob_field, 90.0)
    notes: list[str] = []
    factor, diameter = resolve_downsample(micrographs, labels, DataConfig(downsample=1), None, notes)
    assert factor == 1 and diameter == pytest.approx(90.0, rel=0.2)  # measured at the factor given
    assert resolve_downsample(micrographs, labels, DataConfig(downsample=3, particle_diameter_px=90.0), None,
                              notes) == (3, 30.0)
    # a factor given is not explained back to the user; the only note is that these blobs were read at their core
    assert len(notes) == 1 and "read at the core" in notes[0]


def test_a_given_diameter_sets_the_factor(blob_field) -> None:
    micrographs, labels = _field(blob_field, 30.0)
    notes: list[str] = []
    factor, diameter = resolve_downsample(micrographs, labels, DataConfig(particle_diameter_px=130.0), None, notes)
    assert factor == 3 and diameter == pytest.approx(130.0 / 3)
    assert "binned 3x" in notes[0]


def test_small_particles_train_as_before(blob_field) -> None:
    """Below the limit nothing changes: same factor, same measured diameter as with --downsample 1."""
    micrographs, labels = _field(blob_field, 24.0)
    auto = prepare_data(micrographs, labels, DataConfig(), LossConfig())
    fixed = prepare_data(micrographs, labels, DataConfig(downsample=1), LossConfig())
    assert auto.downsample == 1
    assert auto.particle_diameter_px == pytest.approx(fixed.particle_diameter_px, rel=1e-6)
    assert auto.particle_diameter_px == pytest.approx(24.0, rel=0.2)


def test_wide_particles_are_binned_and_measured_at_network_scale(blob_field) -> None:
    micrographs, labels = _field(blob_field, 90.0, size=768)
    prepared = prepare_data(micrographs, labels, DataConfig(), LossConfig())
    assert prepared.downsample == 2
    assert {image.image.shape[0] for image in prepared.train + prepared.validation} == {384}
    assert prepared.particle_diameter_px == pytest.approx(45.0, rel=0.2)
    assert any("binned 2x" in note for note in prepared.notes)


def test_a_fine_pixel_size_is_measured_binned(blob_field, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1.25 Å/px the size is measured on a copy binned 4x to 5 Å/px (CTF fringes dominate finer scales)."""
    import cryojoint.data as data_module

    seen: list[tuple[int, int]] = []
    real = data_module.measure_particle_diameter

    def spy(images, coords, *args, **kwargs):
        seen.append(np.shape(images[0]))
        return real(images, coords, *args, **kwargs)

    monkeypatch.setattr(data_module, "measure_particle_diameter", spy)
    micrographs, labels = _field(blob_field, 100.0, size=1024, pixel_size=1.25, n=1)
    factor, diameter = resolve_downsample(micrographs, labels, DataConfig(), None, [])
    assert seen == [(256, 256)]
    assert factor == 2 and diameter == pytest.approx(50.0, rel=0.2)


def test_the_size_is_read_again_at_the_networks_scale(blob_field, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first reading at full size that calls for binning is replaced by one on the binned micrographs."""
    import cryojoint.data as data_module

    scales: list[int] = []
    real = data_module.measure_particle_diameter

    def underestimate_at_full_size(images, coords, *args, **kwargs):
        scales.append(512 // np.shape(images[0])[0])
        reading = real(images, coords, *args, **kwargs)
        if scales[-1] == 1:  # a CTF fringe misread at fine pixels
            return dataclasses.replace(reading, diameter_px=0.75 * reading.diameter_px)
        return reading

    monkeypatch.setattr(data_module, "measure_particle_diameter", underestimate_at_full_size)
    micrographs, labels = _field(blob_field, 100.0, size=512)
    factor, diameter = resolve_downsample(micrographs, labels, DataConfig(), None, [])
    assert scales == [1, 2]
    assert factor == 2 and diameter == pytest.approx(50.0, rel=0.15)


def test_a_reading_within_the_limit_stands_when_binning_to_the_general_scale(
        blob_field, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fine-tuning bins a 50 px particle to the general model's 36 px; the full-size reading is reliable there and is
    not replaced by one on the binned copy (which could misread it, as on the demo's data)."""
    import cryojoint.data as data_module

    shapes: list[int] = []
    real = data_module.measure_particle_diameter

    def misread_when_binned(images, coords, *args, **kwargs):
        shapes.append(np.shape(images[0])[0])
        reading = real(images, coords, *args, **kwargs)
        return reading if shapes[-1] == 512 else dataclasses.replace(reading, diameter_px=0.7 * reading.diameter_px)

    monkeypatch.setattr(data_module, "measure_particle_diameter", misread_when_binned)
    micrographs, labels = _field(blob_field, 50.0, size=512)
    factor, diameter = resolve_downsample(micrographs, labels, DataConfig(network_particle_px=36.0), None, [])
    assert shapes == [512]
    assert factor > 1.2 and diameter == pytest.approx(36.0, rel=0.15)


def test_a_particle_beyond_the_search_range_is_measured_on_a_binned_copy(blob_field) -> None:
    """No pixel size, a particle wider than the 160 px the size search reaches: bin until it is in range."""
    micrographs, labels = _field(blob_field, 200.0, size=1536, n=2)
    factor, diameter = resolve_downsample(micrographs, labels, DataConfig(), None, [])
    assert factor == 4 and diameter == pytest.approx(50.0, rel=0.25)


def test_picks_on_noise_are_a_user_error() -> None:
    rng = np.random.default_rng(3)
    micrographs = [Micrograph(rng.normal(size=(256, 256)).astype(np.float32), None, "mic", Path("mic.mrc"))]
    labels = pd.DataFrame({"micrograph": "mic", "x": rng.uniform(20, 236, 6), "y": rng.uniform(20, 236, 6)})
    with pytest.raises(UserInputError, match="--particle-diameter"):
        resolve_downsample(micrographs, labels, DataConfig(), None, [])


@pytest.mark.parametrize("config", [DataConfig(), DataConfig(downsample=1)], ids=["automatic", "factor-given"])
def test_a_size_read_at_the_core_is_flagged(blob_field, config: DataConfig) -> None:
    """Blobs without a CTF fringe are read at their core: training says so and how to give the size instead."""
    micrographs, labels = _field(blob_field, 30.0, size=512)
    notes: list[str] = []
    resolve_downsample(micrographs, labels, config, None, notes)
    core_notes = [note for note in notes if "read at the core" in note]
    assert len(core_notes) == 1 and "--particle-diameter 250A" in core_notes[0]


def test_a_size_read_at_the_fringe_is_not_flagged(blob_field, monkeypatch: pytest.MonkeyPatch) -> None:
    import cryojoint.data as data_module

    real = data_module.measure_particle_diameter

    def at_the_fringe(images, coords, *args, **kwargs):
        return dataclasses.replace(real(images, coords, *args, **kwargs), read_at="fringe")

    monkeypatch.setattr(data_module, "measure_particle_diameter", at_the_fringe)
    micrographs, labels = _field(blob_field, 30.0, size=512)
    notes: list[str] = []
    resolve_downsample(micrographs, labels, DataConfig(), None, notes)
    assert notes == []



FINE_TUNING = DataConfig(network_particle_px=36.0)  # as training sets it when it starts from the general model


def test_a_core_reading_defers_to_the_pretrained_models_reading(blob_field) -> None:
    """Fine-tuning: a size read at the core is replaced by the starting model's reading when that is larger."""
    micrographs, labels = _field(blob_field, 30.0, size=512)
    asked: list[tuple[int, float, float]] = []

    def read_size(labelled, blob_px: float, largest_px: float) -> float:
        asked.append((len(labelled), blob_px, largest_px))
        return 54.0

    notes: list[str] = []
    factor, diameter = resolve_downsample(micrographs, labels, FINE_TUNING, None, notes, read_size)
    assert factor == network_factor(54.0, 36.0) == 1.5 and diameter == pytest.approx(36.0)
    (n_labelled, blob_px, largest_px), = asked
    assert n_labelled == 2 and blob_px == pytest.approx(30.0, rel=0.3) and largest_px > blob_px  # spacing bounds it
    assert any("pretrained model scores the labelled picks highest with the particle at 54 px" in n for n in notes)
    assert not any("read at the core of the mean particle of" in n for n in notes)
    assert any("binned 1.5x" in n for n in notes)


@pytest.mark.parametrize("reading", [None, 20.0], ids=["cannot-tell", "smaller"])
def test_the_blob_reading_stands_when_the_model_cannot_improve_on_it(blob_field, reading: float | None) -> None:
    micrographs, labels = _field(blob_field, 30.0, size=512)
    notes: list[str] = []
    expected = resolve_downsample(micrographs, labels, FINE_TUNING, None, [])
    assert resolve_downsample(micrographs, labels, FINE_TUNING, None, notes, lambda *_: reading) == expected
    assert any("read at the core of the mean particle of" in n for n in notes)


@pytest.mark.parametrize("config", [dataclasses.replace(FINE_TUNING, particle_diameter_px=30.0),
                                    dataclasses.replace(FINE_TUNING, downsample=1)], ids=["size-given", "bin-given"])
def test_the_model_is_not_asked_when_the_user_gave_the_size_or_the_bin(blob_field, config: DataConfig) -> None:
    micrographs, labels = _field(blob_field, 30.0, size=512)

    def read_size(*_):
        raise AssertionError("asked")

    resolve_downsample(micrographs, labels, config, None, [], read_size)


def test_the_model_is_not_asked_when_the_fringe_was_read(blob_field, monkeypatch: pytest.MonkeyPatch) -> None:
    import cryojoint.data as data_module

    real = data_module.measure_particle_diameter
    monkeypatch.setattr(data_module, "measure_particle_diameter",
                        lambda *a, **k: dataclasses.replace(real(*a, **k), read_at="fringe"))
    micrographs, labels = _field(blob_field, 30.0, size=512)

    def read_size(*_):
        raise AssertionError("asked")

    resolve_downsample(micrographs, labels, FINE_TUNING, None, [], read_size)


def test_labels_listed_twice_count_once(blob_field) -> None:
    """A label file concatenated with itself would double the estimated density and the targets' mass."""
    import pandas as pd

    micrographs, labels = _field(blob_field, 24.0)
    once = prepare_data(micrographs, labels, DataConfig(), LossConfig())
    twice = prepare_data(micrographs, pd.concat([labels, labels], ignore_index=True), DataConfig(), LossConfig())
    assert twice.expected_particles == pytest.approx(once.expected_particles)
    assert sum(len(im.picks_xy) for im in twice.train + twice.validation) == len(labels)
    assert any(f"{len(labels)} label(s) repeat another pick" in note for note in twice.notes)
    assert not any("repeat another pick" in note for note in once.notes)


def test_labels_on_the_far_edge_pixel_are_taken_and_farther_ones_refused(blob_field) -> None:
    """1-based or pixel-edge tools write the last pixel as x = n: one pixel's grace, moved onto the image, noted."""
    import pandas as pd

    micrographs, labels = _field(blob_field, 24.0)
    size = micrographs[0].shape[1]
    edge = pd.DataFrame({"micrograph": [micrographs[0].name] * 2, "x": [float(size), 100.0], "y": [100.0, -1.0]})
    prepared = prepare_data(micrographs, pd.concat([labels, edge], ignore_index=True), DataConfig(downsample=1),
                            LossConfig())
    assert any("2 label(s) lay up to 1 px beyond the last pixel" in note for note in prepared.notes)
    picks = np.concatenate([im.picks_xy for im in prepared.train + prepared.validation])
    assert picks.min() >= 0 and picks.max() <= size - 1
    beyond = pd.DataFrame({"micrograph": [micrographs[0].name], "x": [size + 1.5], "y": [100.0]})
    with pytest.raises(UserInputError, match="lie outside.*cryojoint convert LABELS NEW --scale F"):
        prepare_data(micrographs, pd.concat([labels, beyond], ignore_index=True), DataConfig(downsample=1),
                     LossConfig())
