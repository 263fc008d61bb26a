"""``linkage demo`` end to end: a small world, the JSON summary, the result files, the exit code."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from simulator import demo


def test_the_demo_runs_and_its_counts_add_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.csv"
    code = demo.main(["--residents", "300", "--json", "--quiet", "--out", str(out)])
    summary = json.loads(capsys.readouterr().out)

    assert code == 0
    assert summary["errors"] == 0
    parts = ("provided", "denied", "held_for_review", "no_data", "errors")
    assert sum(summary[k] for k in parts) == summary["queries"] > 0
    # The showcase guarantees each path at any size: a denial, a held query, no-data answers.
    assert summary["denied"] >= 1
    assert summary["held_for_review"] >= 1
    assert summary["no_data"] >= 1
    by_provider = sum(
        n for items in summary["by_provider"].values() for c in items.values() for n in c.values()
    )
    assert by_provider == summary["queries"]
    assert sum(summary["collection"].values()) == summary["insured"]
    review = summary["review"]
    assert review["status_after"] == "QUERY_STATUS_PROVIDED"
    assert review["service"] == "ReviewService"
    assert review["declined"]["status_after"] == "QUERY_STATUS_DECLINED"
    assert review["calls"][1] == "StaffService.ChangePassword"
    assert review["staff_records"]["REVIEW_APPROVED"] == 1
    assert review["staff_records"]["REVIEW_DECLINED"] == 1
    assert review["staff_records_total"] == sum(review["staff_records"].values())
    assert summary["denied_example"]["reason"] == "PROVIDER_NOT_ALLOWED"
    assert {r["place"] for r in summary["journey"]["records"]} == {
        "requester",
        "network",
        "provider",
    }
    # The temporary data directory is gone; the result files are where we asked.
    assert summary["data_dir"] is None
    with out.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["queries"]
    assert {r["outcome"] for r in rows} <= {"provided", "denied", "held_for_review", "no_data"}
    with demo.decisions_path(out).open(encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == summary["insured"]


def test_the_summary_never_shows_a_personal_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulator.population import generate
    from simulator.scenario_plan import with_showcase

    data = tmp_path / "world"
    code = demo.main(
        ["--residents", "40", "--quiet", "--out", str(tmp_path / "r.csv"), "--data-dir", str(data)]
    )
    text = capsys.readouterr().out
    assert code == 0
    population, _ = with_showcase(generate(40, demo.DEFAULT_SEED))
    for person in population.persons:
        for value in (person.individual_number, person.resident_code, person.family_name):
            assert value not in text
    csv_text = (tmp_path / "r.csv").read_text(encoding="utf-8")
    assert not any(p.individual_number in csv_text for p in population.persons)
    assert "data directory kept" in text  # --data-dir is the caller's: never removed


def test_a_data_directory_that_is_not_empty_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "something").write_text("x")
    assert demo.main(["--data-dir", str(tmp_path), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
