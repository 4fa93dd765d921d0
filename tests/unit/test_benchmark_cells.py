"""A benchmark cell that finds its trained model reuses it: its own, whatever path its record holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.suite import cells  # noqa: E402
from benchmarks.suite.profiles import PROFILES, SCRATCH  # noqa: E402


class _Stop(Exception):
    pass


@pytest.mark.parametrize("recorded", ["other-cell", "missing"])
def test_a_finished_training_is_reused_from_the_cells_own_folder(tmp_path: Path, monkeypatch, recorded: str) -> None:
    """A migration renamed the cells' folders: the record names another cell's model (or none that exists).
    The cell predicts with the model in its own folder and trains nothing."""
    work = tmp_path / "cryojoint-joint-default-scratch"
    own = work / "run" / cells.MODEL_NAME
    own.parent.mkdir(parents=True)
    own.write_bytes(b"model")
    other = tmp_path / "cryojoint-joint-default" / "run" / cells.MODEL_NAME
    other.parent.mkdir(parents=True)
    other.write_bytes(b"another model")
    stale = other if recorded == "other-cell" else tmp_path / "gone" / cells.MODEL_NAME
    (work / "train_result.json").write_text(json.dumps({"ok": True, "model_path": str(stale)}))
    steps = []

    def run_measured(step: str, spec: dict, work_dir: Path, log) -> dict:
        steps.append((step, spec))
        raise _Stop

    monkeypatch.setattr(cells, "_run_measured", run_measured)
    data = SimpleNamespace(test_mrcs=[tmp_path / "mic.mrc"], train_mrcs=[], train_labels_path=tmp_path / "l.star")
    with pytest.raises(_Stop):
        cells.cryojoint_cell(SCRATCH, data, PROFILES["tiny"], work, log=lambda _: None)
    assert [step for step, _ in steps] == ["predict"]
    assert steps[0][1]["model_path"] == str(own)
