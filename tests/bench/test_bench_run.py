"""``linkage bench``: registering measurements, the absolute figures and the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import run
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
    assert ctx.extra == {"seen_floor": 500.0}
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


def test_every_registered_figure_names_a_floor_the_floor_measures() -> None:
    floor_keys = {
        "echo_chain_calls_per_s",
        "echo_chain_p50_ms",
        "echo_chain_p99_ms",
        "sqlite_insert_rows_per_s",
        "sha256_chain_records_per_s",
        "box_encrypt_per_s",
    }
    names = [m.name for m in run.MEASUREMENTS]
    assert len(names) == len(set(names))
    assert {m.floor_key for m in run.MEASUREMENTS} - {None} <= floor_keys
    assert {"cli_start", "permission_checks"} <= set(names)


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
