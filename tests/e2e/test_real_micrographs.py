"""Real full-size exposures through the CLI: train on hand picks, then ``predict --downsample`` (no truth).

The two micrographs of the ``mrcfile`` 1.5.4 source archive (uint16, 3838×3710 and 4096²) are what a
facility hands the tool, unlike the simulated and pre-binned data of the other tests. They are fetched from
PyPI once into ``benchmarks/.cache/real-mrcfile`` (as ``benchmarks/real_mrcfile.py`` does; never committed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cryojoint.io.coords import read_coordinates
from cryojoint.io.mrc import read_micrograph

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.real_mrcfile import CACHE, DOWNSAMPLE, LABELS, TRAIN_MICROGRAPH, fetch_micrographs  # noqa: E402

#: A small network and a few steps: what is tested is the path of full-size raw input, not what is learned.
SMALL_NETWORK_YAML = (
    "model:\n  unet_encoder_channels: 8\n  unet_decoder_channels: 16\n  unet_depth: 3\n"
    "  detector_channels: [8, 16, 16]\n"
    "train:\n  eval_every: 10\n  checkpoint_every: 10\n"
)


def cryojoint(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cryojoint.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=1200)


@pytest.fixture(scope="module")
def mrcfile_micrographs() -> Path:
    try:
        folder, _ = fetch_micrographs(CACHE)
    except (subprocess.CalledProcessError, OSError) as err:  # no package index reachable
        pytest.skip(f"could not fetch the mrcfile example micrographs: {err}")
    return folder


@pytest.mark.slow
def test_train_on_hand_picks_and_predict_full_size_raw_micrographs(tmp_path: Path, mrcfile_micrographs: Path) -> None:
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_NETWORK_YAML)
    run = tmp_path / "run"
    factor = DOWNSAMPLE[TRAIN_MICROGRAPH]
    done = cryojoint("train", str(mrcfile_micrographs / TRAIN_MICROGRAPH), "--labels", str(LABELS), "--out",
                     str(run), "--downsample", str(factor), "--steps", "20", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    for name, factor in DOWNSAMPLE.items():
        source = read_micrograph(mrcfile_micrographs / name)
        out = tmp_path / f"pred-{Path(name).stem}"
        done = cryojoint("predict", str(run / "model.pt"), str(mrcfile_micrographs / name), "--out", str(out),
                         "--downsample", str(factor), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        record = json.loads((out / "predict.json").read_text())
        assert record["downsample"] == factor and record["failures"] == {}
        # The denoised image is the binned micrograph (remainder rows/columns dropped), at the binned pixel size.
        denoised = read_micrograph(out / "denoised" / name)
        assert denoised.shape == (source.shape[0] // factor, source.shape[1] // factor)
        assert denoised.pixel_size == pytest.approx(source.pixel_size * factor, rel=1e-3)
        # Picks come back in the full-size micrograph's pixels.
        picks = read_coordinates(out / "picks.star")
        assert len(picks) > 0
        assert picks["x"].between(0, source.shape[1] - 1).all() and picks["y"].between(0, source.shape[0] - 1).all()
        assert picks["x"].max() > source.shape[1] / 2 and picks["y"].max() > source.shape[0] / 2


def test_fetch_only_prints_the_folder_of_the_exposures_and_nothing_else(mrcfile_micrographs: Path) -> None:
    """What `cryojoint pretrain --real` is given in docs/general-model.md: `M=$(python -m benchmarks.real_mrcfile
    --fetch-only)`; log lines must not reach stdout, or the folder would be wrong."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.real_mrcfile", "--fetch-only", "--cache", str(CACHE)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == mrcfile_micrographs
    assert {p.name for p in mrcfile_micrographs.glob("*.mrc")} >= set(DOWNSAMPLE)
