"""benchmarks/ab_inference.py: variants parse through the config's own typing; tables give mean ± sd per row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import ab_inference  # noqa: E402


def test_a_variant_names_predict_settings_with_typed_values() -> None:
    assert ab_inference.parse_variant("base=") == ("base", {})
    name, overrides = ab_inference.parse_variant("fast=window_stride_fraction=0.75,context=whole-image")
    assert name == "fast" and overrides == {"window_stride_fraction": 0.75, "context": "whole-image"}
    with pytest.raises(SystemExit, match="unknown predict setting 'stride'"):
        ab_inference.parse_variant("bad=stride=1")


def test_tables_average_each_row_over_its_seeds_only(tmp_path: Path) -> None:
    def scores(ap: float) -> dict[str, float]:
        return {"average_precision": ap, "best_f1": ap - 0.1, "seconds_per_micrograph": 10.0}

    results = {"cryojoint-joint-default": {"v": scores(0.9)}, "cryojoint-joint-default-seed1": {"v": scores(0.8)},
               "cryojoint-detect-only-default": {"v": scores(0.5)}}
    meta = {"profile": "standard", "dose": "010", "started": "now", "git": "abc", "variants": {"v": {}}}
    ab_inference.write_tables(tmp_path / "ab", meta, results)
    markdown = (tmp_path / "ab.md").read_text()
    assert "| **cryojoint-joint-default: mean ± sd (2 seeds)** | 0.850 ± 0.071 |" in markdown
    assert "detect-only-default: mean" not in markdown  # one seed: no spread to report
    assert json.loads((tmp_path / "ab.json").read_text())["results"] == results
