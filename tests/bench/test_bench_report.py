"""The report: met logic both ways, ratios, the tables and results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.floor import FloorResult
from bench.report import (
    FIGURE_KEYS,
    Target,
    figure,
    format_floor_table,
    format_table,
    is_met,
    machine_info,
    write_json,
)


@pytest.mark.parametrize(
    ("value", "bound", "higher_is_better", "met"),
    [
        (0.30, 0.25, True, True),
        (0.25, 0.25, True, True),
        (0.20, 0.25, True, False),
        (2.0, 3.0, False, True),
        (3.0, 3.0, False, True),
        (3.5, 3.0, False, False),
    ],
)
def test_is_met_both_ways(value: float, bound: float, higher_is_better: bool, met: bool) -> None:
    assert is_met(value, bound, higher_is_better) is met


def test_relative_throughput_target_uses_the_ratio() -> None:
    fig = figure("query_throughput", "q/s", Target(0.25), gateway=150.0, floor=500.0)
    assert fig.ratio == pytest.approx(0.3)
    assert fig.met is True
    assert fig.target == "≥ 0.25× floor"

    low = figure("query_throughput", "q/s", Target(0.25), gateway=100.0, floor=500.0)
    assert low.met is False


def test_relative_latency_target_is_lower_is_better() -> None:
    target = Target(3.0, higher_is_better=False)
    assert figure("p50", "ms", target, gateway=6.0, floor=3.0).met is True
    slow = figure("p50", "ms", target, gateway=10.0, floor=3.0)
    assert slow.met is False
    assert slow.higher_is_better is False
    assert slow.target == "≤ 3× floor"


def test_absolute_targets_ignore_the_floor() -> None:
    cli = Target(150, higher_is_better=False, relative=False, unit="ms")
    assert figure("cli_start", "ms", cli, gateway=80.0, floor=None).met is True
    assert figure("cli_start", "ms", cli, gateway=200.0, floor=None).met is False
    checks = Target(1_000_000, relative=False, unit="checks/s")
    fig = figure("permission_checks", "checks/s", checks, gateway=2e6, floor=None)
    assert (fig.ratio, fig.met, fig.target) == (None, True, "≥ 1,000,000 checks/s")


def test_unmeasured_figure_is_not_judged() -> None:
    fig = figure("query_throughput", "q/s", Target(0.25), gateway=None, floor=500.0)
    assert (fig.ratio, fig.met) == (None, None)
    zero_floor = figure("x", "q/s", Target(0.25), gateway=10.0, floor=0.0)
    assert (zero_floor.ratio, zero_floor.met) == (None, None)


def test_json_has_every_key_for_every_figure(tmp_path: Path) -> None:
    figures = [
        figure("a", "q/s", Target(0.5), gateway=10.0, floor=40.0),
        figure("b", "ms", Target(2, higher_is_better=False), gateway=None, floor=3.0),
        figure("c", "ms", Target(150, False, relative=False, unit="ms"), gateway=20.0, floor=None),
    ]
    floor = {"f": FloorResult("f", "calls/s", 40.0, (39.0, 40.0, 41.0), params={"hops": 4})}
    out = tmp_path / "deep" / "results.json"

    write_json(out, figures, floor, extra={"mode": "quick"})

    document = json.loads(out.read_text())
    assert set(document["figures"]) == {"a", "b", "c"}
    for values in document["figures"].values():
        assert set(FIGURE_KEYS) <= set(values)
    assert document["figures"]["a"]["met"] is False
    assert document["figures"]["b"]["met"] is None
    assert document["figures"]["c"]["met"] is True
    assert document["floor"]["f"]["rounds"] == [39.0, 40.0, 41.0]
    assert {"cpu_count", "cpu_model", "python", "date"} <= set(document["machine"])
    assert document["summary"]["not_measured"] == ["b"]
    assert document["extra"] == {"mode": "quick"}


def test_a_reported_figure_is_shown_beside_its_floor_and_never_judged(tmp_path: Path) -> None:
    target = Target.reported(higher_is_better=False)
    fig = figure("p99", "ms", target, gateway=9.0, floor=3.0)
    assert (fig.ratio, fig.met, fig.judged, fig.target) == (
        3.0,
        None,
        False,
        "reported (no target)",
    )
    missed = figure("p50", "ms", Target(1.5, higher_is_better=False), gateway=9.0, floor=3.0)

    document = write_json(tmp_path / "r.json", [fig, missed], {})

    assert document["summary"]["reported_only"] == ["p99"]
    assert document["summary"]["not_measured"] == []
    assert document["summary"]["missed"] == ["p50"]
    assert (document["summary"]["judged"], document["summary"]["met"]) == (1, 0)
    assert "n/a" in format_table([fig])


def test_machine_info_describes_this_machine() -> None:
    info = machine_info()
    assert isinstance(info["cpu_count"], int)
    assert info["cpu_model"]
    assert info["python"].count(".") == 2


def test_tables_list_every_figure_and_floor() -> None:
    figures = [figure("query_throughput", "q/s", Target(0.25), gateway=None, floor=612.0)]
    table = format_table(figures)
    assert "query_throughput" in table
    assert "612" in table
    floor = {"echo_chain_calls_per_s": FloorResult("echo_chain_calls_per_s", "calls/s", 1.0, ())}
    assert "≈610" in format_floor_table(floor, {"echo_chain_calls_per_s": "≈610"})
