"""The benchmark's tables over training seeds, from fabricated cells (nothing is trained or simulated)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import run as bench  # noqa: E402
from benchmarks.suite.cells import replicate_id, split_replicate_id  # noqa: E402

AP_TITLE = "Picking: average precision (AP)"
JOINT = "cryojoint joint (default)"


def _ok(ap: float, best_f1: float = 0.5, **picking: Any) -> dict[str, Any]:
    return {"status": "ok", "picking": {"average_precision": ap, "best_f1": best_f1, **picking}}


def _tiny_specs(seeds: list[int]) -> tuple[bench.Profile, list[bench.MethodSpec]]:
    profile = bench.PROFILES["tiny"]
    specs = bench.method_specs(profile)
    return profile, specs + bench.seed_replicates(specs, seeds)


def _row(lines: list[str], label: str) -> str:
    """The first markdown table line of ``label`` (the AP table comes first)."""
    return next(line for line in lines if line.startswith(f"| {label} |"))


def test_profiles_default_to_three_seeds_except_the_ci_sizes() -> None:
    assert bench.PROFILES["standard"].seeds == (0, 1, 2)
    assert bench.PROFILES["full"].seeds == (0, 1, 2)
    assert bench.PROFILES["tiny"].seeds == (bench.TRAIN_SEED,)
    assert bench.PROFILES["quick"].seeds == (bench.TRAIN_SEED,)


@given(row=st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True), seed=st.integers(0, 10_000))
def test_a_replicate_cell_id_gives_back_its_row_and_seed(row: str, seed: int) -> None:
    assume(split_replicate_id(row) == (row, bench.TRAIN_SEED))  # a row id that itself ends in -seedN is no row id
    assert split_replicate_id(replicate_id(row, seed)) == (row, seed)


def test_every_replicate_the_benchmark_makes_parses_back_to_its_row() -> None:
    _, specs = _tiny_specs([1, 2])
    for spec in specs:
        assert split_replicate_id(spec.method_id) == (spec.row_id, spec.seed)


def test_seeds_option_replaces_the_profile_list_and_always_keeps_seed_zero() -> None:
    standard, quick = bench.PROFILES["standard"], bench.PROFILES["quick"]
    assert bench.resolve_seeds(standard, None) == (0, 1, 2)
    assert bench.resolve_seeds(standard, []) == (0, 1, 2)
    assert bench.resolve_seeds(standard, [0]) == (0,)
    assert bench.resolve_seeds(standard, [3]) == (0, 3)
    assert bench.resolve_seeds(quick, None) == (0,)
    assert bench.resolve_seeds(quick, [2, 1]) == (0, 1, 2)
    with pytest.raises(SystemExit, match="seed -1 is negative"):
        bench.resolve_seeds(quick, [-1])


def test_every_seed_zero_cell_runs_before_any_other_seed() -> None:
    profile = bench.PROFILES["standard"]
    specs = bench.method_specs(profile)
    specs += bench.seed_replicates(specs, bench.resolve_seeds(profile, None))
    order = bench._run_order(profile, specs, profile.doses)
    seeds = [spec.seed for _, _, spec in order]
    assert seeds == sorted(seeds)
    assert seeds.count(1) == seeds.count(2) == sum(spec.trains for spec in bench.method_specs(profile)) * 3
    main_trained = {s.method_id for s in specs if s.trains and not s.is_replicate}
    assert {spec.row_id for spec in specs if spec.is_replicate} == main_trained  # Topaz's picker too
    assert "topaz-picker" in main_trained


def test_main_table_shows_the_mean_over_three_seeds_and_the_spread_its_sample_sd() -> None:
    profile, specs = _tiny_specs([1, 2])
    cells = {f"ribosome/020/{row}": _ok(ap) for row, ap in (
        ("cryojoint-joint-default", 0.5), ("cryojoint-joint-default-seed1", 0.6),
        ("cryojoint-joint-default-seed2", 0.7), ("floor-blob", 0.3))}
    lines, tables = bench.build_tables(profile, specs, ["020"], cells)
    assert _row(lines, JOINT) == "| cryojoint joint (default) | 0.600 |"
    assert _row(lines, "floor: LoG blob picker") == "| floor: LoG blob picker | 0.300 |"  # no seeds: one value
    assert any("mean over training seeds 0, 1, 2" in line for line in lines)
    ap = tables[AP_TITLE]
    assert ap["rows"][JOINT] == [pytest.approx(0.6)]
    assert ap["rows"]["floor: LoG blob picker"] == [0.3]
    assert "mean over the training seeds" in ap["caption"]
    summary = ap["by_seed"][JOINT][0]
    assert summary["per_seed"] == {"0": 0.5, "1": 0.6, "2": 0.7}
    assert summary["n"] == 3
    assert summary["mean"] == pytest.approx(0.6) and summary["sd"] == pytest.approx(0.1)
    assert "floor: LoG blob picker" not in ap["by_seed"]

    spread, spread_tables = bench.spread_lines(profile, specs, ["020"], cells)
    assert "| cryojoint joint (default) | 0.600 ± 0.100 (3) |" in spread
    assert spread_tables["AP, mean over seeds"]["rows"][JOINT] == [pytest.approx(0.6)]


def test_row_with_fewer_finished_seeds_shows_their_mean_and_count() -> None:
    profile, specs = _tiny_specs([1, 2])
    cells = {
        "ribosome/020/cryojoint-joint-default": _ok(0.5), "ribosome/020/cryojoint-joint-default-seed1": _ok(0.7),
        "ribosome/020/cryojoint-joint-default-seed2": {"status": "failed", "reason": "RuntimeError: out of memory"},
        "ribosome/020/topaz-picker": _ok(0.42),  # seeds 1 and 2 still pending
    }
    lines, tables = bench.build_tables(profile, specs, ["020"], cells)
    assert _row(lines, JOINT) == "| cryojoint joint (default) | 0.600 (n=2) |"
    topaz = next(spec.label for spec in specs if spec.row_id == "topaz-picker")
    assert _row(lines, topaz) == f"| {topaz} | 0.420 (n=1) |"
    ap = tables[AP_TITLE]
    assert ap["rows"][topaz] == [0.42]
    assert ap["by_seed"][topaz][0] == {"per_seed": {"0": 0.42}, "n": 1, "mean": 0.42, "sd": None}
    spread, _ = bench.spread_lines(profile, specs, ["020"], cells)
    assert f"| {topaz} | 0.420 (1) |" in spread
    assert "| cryojoint joint (default) | 0.600 ± 0.141 (2) |" in spread


def test_trained_row_without_a_number_says_why() -> None:
    profile, specs = _tiny_specs([1])
    cells = {"ribosome/020/cryojoint-joint-default-seed1": {"status": "failed", "reason": "ValueError: no peaks"}}
    lines, tables = bench.build_tables(profile, specs, ["020"], cells)
    assert _row(lines, JOINT) == "| cryojoint joint (default) | failed: ValueError: no peaks |"
    topaz = next(spec.label for spec in specs if spec.row_id == "topaz-picker")
    assert _row(lines, topaz) == f"| {topaz} | pending |"
    assert tables[AP_TITLE]["rows"][JOINT] == [None]


def test_one_seed_tables_are_plain_values() -> None:
    profile, specs = _tiny_specs([])
    cells = {"ribosome/020/cryojoint-joint-default": _ok(0.5)}
    lines, tables = bench.build_tables(profile, specs, ["020"], cells)
    assert _row(lines, JOINT) == "| cryojoint joint (default) | 0.500 |"
    assert tables[AP_TITLE]["rows"][JOINT] == [0.5]
    assert bench.spread_lines(profile, specs, ["020"], cells) == ([], {})


def test_outputs_hold_per_seed_values_and_the_report_renders(tmp_path: Path) -> None:
    profile, specs = _tiny_specs([1, 2])
    curve = {"precision": [1.0, 0.8, 0.6], "recall": [0.1, 0.5, 0.7]}
    cells = {f"ribosome/020/{row}": _ok(ap, curve=curve) for row, ap in (
        ("cryojoint-joint-default", 0.5), ("cryojoint-joint-default-seed1", 0.6),
        ("cryojoint-joint-default-seed2", 0.7))}
    run_facts = {"date": "2026-01-01", "command": "test", "machine": {}, "doses": {}}
    paths = bench.write_outputs(profile, specs, ["020"], cells, tmp_path, "t", run_facts, write_html=True)

    saved = json.loads(paths["json"].read_text())
    assert saved["tables"][AP_TITLE]["by_seed"][JOINT][0]["per_seed"] == {"0": 0.5, "1": 0.6, "2": 0.7}
    assert set(saved["cells"]) == set(cells)
    benchmark = json.loads(paths["benchmark_json"].read_text())
    assert benchmark["tables"][AP_TITLE]["rows"][JOINT] == [pytest.approx(0.6)]
    assert list(benchmark["pr_curves"]["20%"]) == [f"{JOINT}, seed 0"]  # the curve is one run, not the mean
    markdown = paths["markdown"].read_text()
    assert "| cryojoint joint (default) | 0.600 |" in markdown
    assert "## Spread over training seeds" in markdown
    assert "html" in paths, (tmp_path / "t" / "report_error.txt").read_text()
    page = paths["html"].read_text()
    assert "0.600" in page and "mean over the training seeds" in page
