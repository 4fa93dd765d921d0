"""``evaluate`` measures every method with the same yardstick: the default match radius comes from the truth
(the particle size ``cryojoint simulate`` records beside it), never from the scored method's own estimate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cryojoint import cli
from cryojoint.errors import UserInputError
from cryojoint.evaluation import evaluate, evaluate_files, resolve_match_radius
from cryojoint.io.coords import make_table, write_coordinates

TRUE_DIAMETER_PX = 22.264  # as simulation.yaml rounds it
TRUE_RADIUS_PX = TRUE_DIAMETER_PX / 2
OFFSET_PX = 15.0  # every pick is this far from its particle: a match only for a radius >= 15


def _dataset(tmp_path: Path) -> Path:
    """A folder laid out as ``cryojoint simulate`` writes it: truth.star and simulation.yaml side by side."""
    data = tmp_path / "data"
    xs = np.array([100.0, 300.0, 500.0, 700.0])
    write_coordinates(make_table("mic_0000", xs, np.full(4, 200.0)), data / "truth.star")
    (data / "simulation.yaml").write_text(yaml.safe_dump({"config": {"seed": 1},
                                                          "particle_diameter_px": TRUE_DIAMETER_PX}))
    return data


def _picks_with_claimed_size(folder: Path, claimed_diameter_px: float) -> Path:
    """The same picks from some method whose predict.json claims its own particle size estimate."""
    xs = np.array([100.0, 300.0, 500.0, 700.0]) + OFFSET_PX
    path = folder / "picks.star"
    write_coordinates(make_table("mic_0000", xs, np.full(4, 200.0), score=[4.0, 3.0, 2.0, 1.0]), path)
    (folder / "predict.json").write_text(json.dumps({"particle_diameter_px_input": claimed_diameter_px}))
    return path


def test_every_method_gets_the_truths_radius_whatever_it_claims(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    over = _picks_with_claimed_size(tmp_path / "over", claimed_diameter_px=40.0)  # radius 20 would match all
    under = _picks_with_claimed_size(tmp_path / "under", claimed_diameter_px=12.0)
    reports = [evaluate_files(picks=p, truth=data / "truth.star", json_path=p.parent / "eval.json")["picking"]
               for p in (over, under)]
    for report in reports:
        assert report.match_radius == pytest.approx(TRUE_RADIUS_PX)
        assert report.match_radius_source == f"truth: particle radius from {data / 'simulation.yaml'}"
        assert report.overall.true_positives == 0  # 15 px off is beyond the true radius for everyone
    assert reports[0].overall.average_precision == reports[1].overall.average_precision
    for picks in (over, under):
        payload = json.loads((picks.parent / "eval.json").read_text())
        assert payload["match_radius_px"] == pytest.approx(TRUE_RADIUS_PX)
        assert payload["match_radius_source"].endswith("simulation.yaml")
        assert payload["picking"]["match_radius_source"] == payload["match_radius_source"]


def test_a_given_radius_wins_and_says_so(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    picks = _picks_with_claimed_size(tmp_path / "m", claimed_diameter_px=12.0)
    report = evaluate_files(picks=picks, truth=data / "truth.star", match_radius=16.0)["picking"]
    assert (report.match_radius, report.match_radius_source) == (16.0, "given")
    assert report.overall.true_positives == 4
    assert report.describe_match_radius() == "match radius 16 px (given)"
    assert "match radius 16 px (given)" in str(report.to_rich_table().title)


def test_without_a_known_true_size_the_radius_is_required(tmp_path: Path) -> None:
    truth = tmp_path / "truth.star"
    write_coordinates(make_table("mic_0000", [100.0], [200.0]), truth)
    picks = _picks_with_claimed_size(tmp_path / "m", claimed_diameter_px=40.0)  # its own claim is not enough
    with pytest.raises(UserInputError) as raised:
        evaluate_files(picks=picks, truth=truth)
    assert raised.value.source == str(truth)
    assert "--match-radius" in raised.value.problem and "simulation.yaml" in raised.value.problem


def test_the_python_api_uses_the_same_default(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    picks = _picks_with_claimed_size(tmp_path / "m", claimed_diameter_px=40.0)
    report = evaluate(picks=picks, truth=data / "truth.star")["picking"]
    assert report.match_radius == pytest.approx(TRUE_RADIUS_PX)
    with pytest.raises(UserInputError, match="match radius"):
        evaluate(picks=make_table("mic_0000", [1.0], [1.0]), truth=make_table("mic_0000", [1.0], [1.0]))


def test_truth_folder_finds_the_record_in_it_or_beside_it(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    folder = data / "truth_csv"
    write_coordinates(make_table("mic_0000", [100.0], [200.0]), folder / "mic_0000.csv")
    assert resolve_match_radius(None, folder)[0] == pytest.approx(TRUE_RADIUS_PX)
    assert resolve_match_radius(None, [data / "truth.star"])[0] == pytest.approx(TRUE_RADIUS_PX)


def test_a_record_without_a_usable_size_is_ignored(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    (data / "simulation.yaml").write_text("particle_diameter_px: -3\n")
    with pytest.raises(UserInputError, match="no particle size known"):
        resolve_match_radius(None, data / "truth.star")


def _run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["cryojoint", *args])
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    captured = capsys.readouterr()
    return int(stopped.value.code or 0), captured.out, captured.err


def test_cli_prints_the_radius_and_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    data = _dataset(tmp_path)
    picks = _picks_with_claimed_size(tmp_path / "m", claimed_diameter_px=40.0)
    code, out, err = _run_cli(["evaluate", "--picks", str(picks), "--truth", str(data / "truth.star")],
                              monkeypatch, capsys)
    assert code == 0, err
    line = f"match radius {TRUE_RADIUS_PX:g} px (truth: particle radius from {data / 'simulation.yaml'})"
    assert line in out.splitlines()
    assert f"Picking: {line}" in " ".join(out.split())  # the table title


def test_cli_without_a_known_true_size_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys) -> None:
    truth = tmp_path / "truth.star"
    write_coordinates(make_table("mic_0000", [100.0], [200.0]), truth)
    picks = _picks_with_claimed_size(tmp_path / "m", claimed_diameter_px=40.0)
    code, _, err = _run_cli(["evaluate", "--picks", str(picks), "--truth", str(truth)], monkeypatch, capsys)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"error: {truth}: ")
    assert "--match-radius" in err
