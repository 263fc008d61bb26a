"""``linkage bench``: registering measurements, the absolute figures and the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import run, storage
from bench.floor import FloorResult, FloorSettings
from bench.report import Target
from bench.run import Measurement, RunContext, collect_figures


def _context(tmp_path: Path, floor: dict[str, FloorResult] | None = None) -> RunContext:
    settings = FloorSettings.quick()
    return RunContext(True, tmp_path, floor or {}, settings)


def _floor(value: float) -> dict[str, FloorResult]:
    return {"chain": FloorResult("chain", "calls/s", value, (value,))}


async def test_a_registered_gateway_measurement_is_divided_by_its_floor(tmp_path: Path) -> None:
    async def gateway(ctx: RunContext) -> float:
        ctx.record("seen_floor", ctx.floor["chain"].value)
        return 300.0

    measurements = [
        Measurement("plugged", "q/s", Target(0.5), "chain", run=gateway),
        Measurement("empty", "q/s", Target(0.5), "chain"),
    ]
    ctx = _context(tmp_path, _floor(500.0))

    figures, errors = await collect_figures(measurements, ctx, lambda _: None)

    plugged, empty = figures
    assert (plugged.gateway, plugged.floor, plugged.met) == (300.0, 500.0, True)
    assert plugged.ratio == pytest.approx(0.6)
    assert (empty.gateway, empty.floor, empty.met) == (None, 500.0, None)
    assert "not plugged in" in empty.notes
    assert ctx.extra["seen_floor"] == 500.0
    assert errors == []


async def test_a_failing_measurement_is_reported_not_raised(tmp_path: Path) -> None:
    async def broken(ctx: RunContext) -> float:
        raise RuntimeError("world did not start")

    closed: list[bool] = []

    async def opens_something(ctx: RunContext) -> float:
        ctx.stack.callback(closed.append, True)
        return 1.0

    measurements = [
        Measurement("opens", "q/s", Target(0.5), run=opens_something),
        Measurement("broken", "q/s", Target(0.5), "chain", run=broken),
    ]
    figures, errors = await collect_figures(measurements, _context(tmp_path), lambda _: None)

    assert figures[1].met is None
    assert "world did not start" in figures[1].notes
    assert errors == ["broken: error: RuntimeError: world did not start"]
    assert closed == [True]


async def test_absolute_figures_measure_something(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    assert 0 < await run.measure_cli_start(ctx) < 10_000
    assert len(ctx.extra["cli_start_ms_runs"]) == 5
    checks = await run.measure_permission_checks(ctx)
    assert checks is None or checks > 0
    if checks is not None:
        assert 0.3 < ctx.extra["permission_checks"]["allowed_share"] < 0.7


def test_every_registered_figure_names_a_floor_the_floor_or_its_measurement_measures() -> None:
    floor_keys = {
        "echo_one_hop_calls_per_s",
        "echo_chain_calls_per_s",
        "echo_chain_p50_ms",
        "echo_chain_p99_ms",
        "sqlite_insert_rows_per_s",
        "sha256_chain_records_per_s",
        "box_encrypt_per_s",
    }
    measured_with_their_data = {storage.IMPORT_FLOOR_KEY, storage.VERIFY_FLOOR_KEY}
    names = [m.name for m in run.MEASUREMENTS]
    assert len(names) == len(set(names))
    assert {m.floor_key for m in run.MEASUREMENTS} - {None} <= floor_keys | measured_with_their_data
    assert all(m.run is not None for m in run.MEASUREMENTS)
    assert {"cli_start", "permission_checks", "batch_queries", "duplicate_import"} <= set(names)


def test_issue_10_targets_are_the_registered_ones() -> None:
    targets = {m.name: m.target.describe() for m in run.MEASUREMENTS}
    assert targets["batch_queries"] == "≥ 2× floor"
    assert targets["batch_queries_absolute"] == "≥ 5,000 queries/s"
    assert targets["query_p50_ms"] == "≤ 1.5× floor"
    assert targets["duplicate_import"] == "≥ 0.7× floor"
    assert targets["duplicate_import_1m_seconds"] == "≤ 20 s"
    assert targets["record_verification"] == "≥ 0.5× floor"
    assert targets["permission_checks"] == "≥ 1,000,000 checks/s"
    assert targets["cli_start"] == "≤ 150 ms"


async def test_a_measurement_may_add_the_floor_of_its_own_data(tmp_path: Path) -> None:
    async def own_floor(ctx: RunContext) -> float:
        ctx.floor["same_rows"] = FloorResult("same_rows", "rows/s", 1000.0, (1000.0,))
        return 800.0

    shared = run.from_shared("rate")

    async def leaves_a_rate(ctx: RunContext) -> float:
        ctx.shared["rate"] = 42.0
        return 1.0

    measurements = [
        Measurement("import", "rows/s", Target(0.7), "same_rows", run=own_floor),
        Measurement("first", "q/s", Target(1, relative=False), run=leaves_a_rate),
        Measurement("second", "q/s", Target(50, relative=False), run=shared),
        Measurement("never_left", "q/s", Target(1, relative=False), run=run.from_shared("nope")),
    ]
    ctx = _context(tmp_path)

    figures, errors = await collect_figures(measurements, ctx, lambda _: None)

    assert (figures[0].floor, figures[0].met) == (1000.0, True)
    assert (figures[2].gateway, figures[2].met) == (42.0, False)
    assert figures[3].met is None
    assert "not measurable yet" in figures[3].notes
    assert errors == []
    assert set(ctx.extra["figure_seconds"]) == {"import", "first", "second", "never_left"}


def test_main_writes_results_and_prints_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, Any] = {}

    async def fake_floor(settings: FloorSettings, work_dir: Path, **_: Any) -> dict[str, Any]:
        seen["settings"] = settings
        return _floor(400.0)

    async def gateway(ctx: RunContext) -> float:
        return 100.0

    monkeypatch.setattr(run, "measure_floor", fake_floor)
    monkeypatch.setattr(
        run, "MEASUREMENTS", [Measurement("q", "q/s", Target(0.5), "chain", run=gateway)]
    )
    out = tmp_path / "results.json"

    assert run.main(["--quick", "--hops", "3", "--out", str(out)]) == 0
    assert run.main(["--quick", "--out", str(out), "--check"]) == 1  # 0.25 < 0.5: missed

    assert seen["settings"].hops == 4
    assert seen["settings"].mtls is True
    document = json.loads(out.read_text())
    assert document["figures"]["q"]["ratio"] == 0.25
    assert document["figures"]["q"]["met"] is False
    assert document["extra"]["mode"] == "quick"
    assert "0 of 1 judged targets met" in capsys.readouterr().out


def test_a_quick_import_scales_only_its_per_row_part_to_a_million() -> None:
    from bench.storage import million_seconds

    # 50,000 rows in 1.5 s, of which 0.5 s is the command's start-up and commit.
    assert million_seconds(1.5, 50_000, 0.5) == pytest.approx(0.5 + 1.0 * 20)
    assert million_seconds(10.0, 1_000_000, 0.0) == 10.0
    assert million_seconds(1.0, 50_000, 3.0) == 1.0  # a fixed part above the whole is noise
