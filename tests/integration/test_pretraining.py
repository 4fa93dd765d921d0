"""`cryojoint pretrain`: the corpus is deterministic, at the general model's scale, apart from the benchmark's data,
and a (tiny) pretraining run writes a general model that predicts by name and records how it was made."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cryojoint.config import GENERAL_PARTICLE_PX
from cryojoint.pretraining import CORPUS_SEED_BASE, CorpusConfig, build_corpus, corpus_seed, pretrain

TINY = CorpusConfig(structures=("ruvb", "ribosome"), pixel_sizes_per_structure=1, micrographs_per_simulation=2,
                    size_px=256, particle_diameter_range_px=(24.0, 60.0))


@pytest.fixture(scope="module")
def tiny_corpus():  # noqa: ANN201
    return build_corpus(TINY, progress=False)


def test_corpus_is_at_the_general_scale_with_labels_inside(tiny_corpus) -> None:  # noqa: ANN001
    assert len(tiny_corpus.micrographs) == 4
    assert (tiny_corpus.particle_diameters_px <= GENERAL_PARTICLE_PX * 1.07).all()
    for micrograph in tiny_corpus.micrographs:
        rows = tiny_corpus.labels[tiny_corpus.labels["micrograph"] == micrograph.name]
        assert len(rows) > 0
        ny, nx = micrograph.shape
        assert rows["x"].between(0, nx - 1).all() and rows["y"].between(0, ny - 1).all()
    assert {entry["structure"] for entry in tiny_corpus.manifest} == {"ruvb", "ribosome"}


def test_corpus_spans_sparse_to_packed_fields() -> None:
    import math

    packed = CorpusConfig(structures=("ruvb",), pixel_sizes_per_structure=3, micrographs_per_simulation=1,
                          size_px=256, particle_diameter_range_px=(20.0, 30.0),
                          particle_area_fraction_range=(0.05, 0.35))
    corpus = build_corpus(packed, progress=False)
    for entry, micrograph in zip(corpus.manifest, corpus.micrographs, strict=True):
        particles = len(corpus.labels[corpus.labels["micrograph"] == micrograph.name])
        covered = particles * math.pi * entry["network_particle_px"] ** 2 / 4 / micrograph.data.size
        assert 0.05 * 0.6 <= entry["particle_area_fraction_asked"] * 0.6 <= covered  # edges and bins lose a few
        assert covered <= entry["particle_area_fraction_asked"] * 1.5


def test_corpus_is_deterministic(tiny_corpus) -> None:  # noqa: ANN001
    again = build_corpus(TINY, progress=False)
    for first, second in zip(tiny_corpus.micrographs, again.micrographs, strict=True):
        np.testing.assert_array_equal(first.data, second.data)
    assert again.manifest == tiny_corpus.manifest


def test_corpus_seeds_are_apart_from_the_benchmarks(tiny_corpus) -> None:  # noqa: ANN001
    from benchmarks.suite.datasets import DATASET_SEED

    seeds = {entry["simulation_seed"] for entry in tiny_corpus.manifest} | {corpus_seed(TINY)}
    assert min(seeds) >= CORPUS_SEED_BASE > DATASET_SEED + 1000


def test_real_micrographs_join_the_corpus_for_the_denoiser_at_user_pixel_sizes(tmp_path: Path) -> None:
    import dataclasses
    import hashlib

    from cryojoint.errors import UserInputError
    from cryojoint.io.mrc import write_mrc

    counts = np.random.default_rng(7).poisson(12.0, (768, 770)).astype(np.float32)
    exposure = write_mrc(tmp_path / "exposure.mrc", counts, pixel_size=1.0)
    config = dataclasses.replace(TINY, structures=("ruvb",), real_micrographs=(str(exposure),))
    corpus = build_corpus(config, progress=False)
    real = [entry for entry in corpus.manifest if entry.get("source") == "real"]
    assert [entry["bin_factor"] for entry in real] == [3, 6]  # 3 and 6 Å/px from 1 Å/px
    assert corpus.denoiser_only == ["real-exposure-bin3", "real-exposure-bin6"]
    assert {m.name: m.shape for m in corpus.micrographs}["real-exposure-bin3"] == (256, 256)
    assert real[0]["sha256"] == hashlib.sha256(exposure.read_bytes()).hexdigest()
    assert not corpus.labels["micrograph"].isin(corpus.denoiser_only).any()
    assert len(corpus.particle_diameters_px) == len(corpus.simulated) == 2  # the simulated ones only

    path = pretrain(tmp_path / "general", steps=2, corpus_config=config, threads=1, progress=False)
    meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
    recorded = meta["pretraining"]["corpus"]
    assert [entry["micrograph"] for entry in recorded["real_micrographs"]] == corpus.denoiser_only
    # the command names every command-line option that differs from its default (size_px and the diameter range
    # have none: they are in the recorded corpus config)
    assert meta["command_line"] == (f"cryojoint pretrain --out {tmp_path / 'general'} --steps 2 "
                                    f"--simulations-per-structure 1 --micrographs-per-simulation 2 --structures ruvb "
                                    f"--real {exposure}")
    timing = meta["pretraining"]
    assert 0 < timing["corpus_seconds"] and 0 < timing["training_seconds"] < timing["invocation_wall_seconds"]
    # the real micrographs reached training as denoiser-only: pi as without them, not as for labelless micrographs
    from cryojoint.data import prepare_data
    from cryojoint.pretraining import pretraining_config

    settings = pretraining_config(corpus, 2)
    scored = prepare_data(corpus.micrographs, corpus.labels, settings.data, settings.loss,
                          denoiser_only=corpus.denoiser_only)
    counted = prepare_data(corpus.micrographs, corpus.labels, settings.data, settings.loss)
    assert meta["pi"] == pytest.approx(scored.pi) and counted.pi != pytest.approx(scored.pi)

    with pytest.raises(UserInputError, match="corpus differs"):  # resuming with other real files
        pretrain(tmp_path / "general", steps=2, corpus_config=dataclasses.replace(config, real_micrographs=()),
                 threads=1, progress=False, resume=True)
    with pytest.raises(UserInputError, match="given 2 times; give each micrograph once"):
        build_corpus(dataclasses.replace(config, real_micrographs=(str(exposure), str(exposure))), progress=False)

    no_pixel_size = write_mrc(tmp_path / "bare.mrc", counts)
    with pytest.raises(UserInputError, match="bare.mrc.*pixel size"):
        build_corpus(dataclasses.replace(config, real_micrographs=(str(no_pixel_size),)), progress=False)


def test_pretraining_writes_a_general_model_that_records_its_making(tmp_path: Path) -> None:
    path = pretrain(tmp_path / "general", steps=4, corpus_config=TINY, threads=1, progress=False)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = payload["meta"]
    assert meta["general"] and meta["general_particle_px"] == GENERAL_PARTICLE_PX
    assert meta["pretraining"]["steps"] == 4 and meta["pretraining"]["corpus"]["micrographs"] == 4
    assert meta["expected_particles"] is None
    manifest = json.loads((tmp_path / "general" / "corpus.json").read_text())
    assert len(manifest["micrographs"]) == 4

    from cryojoint.checkpoint import load_model
    from cryojoint.prediction import predict

    model = load_model(path)
    image = np.random.default_rng(0).poisson(20.0, (192, 200)).astype(np.float32)
    result = predict(model, image, particle_diameter_px=54.0)
    assert result.micrographs[0].denoised.shape == (128, 133)  # binned 1.5x to the general model's scale
    picks = result.picks
    assert picks.empty or (picks["x"].between(0, 199).all() and picks["y"].between(0, 191).all())


def test_the_recorded_pretraining_command_names_seeds_and_corpus_options(tmp_path: Path) -> None:
    import dataclasses

    from cryojoint.pretraining import CorpusConfig, pretrain_command_line

    assert pretrain_command_line(tmp_path, 10, 0, CorpusConfig()) == f"cryojoint pretrain --out {tmp_path} --steps 10"
    config = dataclasses.replace(CorpusConfig(), seed=3, real_micrographs=("a b.mrc",))
    assert pretrain_command_line(tmp_path, 10, 1, config) == (
        f"cryojoint pretrain --out {tmp_path} --steps 10 --seed 1 --corpus-seed 3 --real 'a b.mrc'")

