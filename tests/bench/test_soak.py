"""``linkage soak``: the open-loop schedule on a fake clock, the tally per minute, the memory
verdict, PID discovery by port, and a short real soak of the in-process world."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from bench.floor import RssSampler
from bench.soak import OpenLoop, Outcome, Settings, Tally, listening_pids, memory_report, verdict

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


Coro = Coroutine[Any, Any, None]


class FakeClock:
    """Time moves only when the schedule sleeps; started sends get a few turns each time."""

    def __init__(self, overshoot: dict[int, float] | None = None) -> None:
        self.now = 0.0
        self.sleeps = 0
        self._overshoot = overshoot or {}

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self._overshoot.get(self.sleeps, 0.0)
        self.sleeps += 1
        for _ in range(5):
            await asyncio.sleep(0)


async def test_sends_start_on_schedule_even_when_none_ever_finishes() -> None:
    clock = FakeClock()
    never = asyncio.Event()
    started: list[tuple[int, float, float]] = []

    async def hang() -> None:
        await never.wait()

    def fire(tick: int, due: float) -> Coro:
        started.append((tick, due, clock()))  # when the schedule starts it, not when it runs
        return hang()

    loop = OpenLoop(10, 2.0, 1000, clock=clock, sleep=clock.sleep)
    stats = await loop.run(fire)

    assert (stats.planned, stats.sent, stats.slipped) == (20, 20, 0)
    assert [tick for tick, _, _ in started] == list(range(20))
    for tick, due, at in started:
        assert due == pytest.approx(tick / 10)
        assert at == pytest.approx(due)
    assert loop.in_flight == 20
    assert await loop.drain(0.01) == 20  # nothing finished: all are cancelled
    assert loop.in_flight == 0


async def test_the_cap_skips_sends_as_slips_without_shifting_the_schedule() -> None:
    clock = FakeClock()
    concurrent = peak = 0
    started: list[float] = []

    async def slow(begun: float) -> None:
        nonlocal concurrent, peak
        concurrent += 1
        peak = max(peak, concurrent)
        while clock() < begun + 0.35:  # noqa: ASYNC110 — slower than the rate: the cap bites
            await asyncio.sleep(0)
        concurrent -= 1

    def fire(tick: int, due: float) -> Coro:
        started.append(clock())
        return slow(clock())

    loop = OpenLoop(10, 3.0, 2, clock=clock, sleep=clock.sleep)
    stats = await loop.run(fire)
    clock.now += 1.0  # the last sends finish
    assert await loop.drain(5.0) == 0

    assert stats.planned == 30
    assert stats.slipped > 0
    assert stats.sent + stats.slipped == 30
    assert peak <= 2
    # Every send that did start, started at its own slot of the 10/s grid.
    assert all(round(at * 10, 6) == round(at * 10) for at in started)
    assert stats.slipped_ticks == sorted(set(range(30)) - {round(at * 10) for at in started})


async def test_a_late_wake_up_catches_up_instead_of_stretching_the_schedule() -> None:
    clock = FakeClock(overshoot={3: 0.35})  # the 4th sleep wakes 350 ms late
    started: list[tuple[int, float]] = []

    async def nothing() -> None:
        pass

    def fire(tick: int, due: float) -> Coro:
        started.append((tick, clock()))
        return nothing()

    stats = await OpenLoop(10, 1.0, 100, clock=clock, sleep=clock.sleep).run(fire)

    assert stats.sent == 10
    assert stats.max_lag_s == pytest.approx(0.35)
    # Ticks 4..7 fell due while asleep: they all start at once when the loop wakes up.
    late = [at for tick, at in started if 4 <= tick <= 7]
    assert late == pytest.approx([0.75] * 4)
    assert started[-1][0] == 9
    assert started[-1][1] == pytest.approx(0.9)


def test_outcomes_are_tallied_per_minute_of_the_schedule() -> None:
    tally = Tally(150.0)
    for due, latency in [(1.0, 10.0), (30.0, 20.0), (59.9, 30.0)]:
        tally.add(Outcome(due, latency, status="PROVIDED"))
    tally.add(Outcome(61.0, 40.0, error="UNAVAILABLE"))
    tally.add(Outcome(125.0, 50.0, status="HELD_FOR_REVIEW"))
    tally.add(Outcome(149.0, 60.0, error="FAILED/PERMIT_EXPIRED"))
    tally.slips = [62.0, 63.0]

    rows = tally.rows()

    assert [(r["minute"], r["start_s"], r["end_s"]) for r in rows] == [
        (1, 0.0, 60.0),
        (2, 60.0, 120.0),
        (3, 120.0, 150.0),
    ]
    assert [r["sent"] for r in rows] == [3, 1, 2]
    assert rows[0]["ok"] == {"PROVIDED": 3}
    assert (rows[0]["p50_ms"], rows[0]["p99_ms"]) == (20.0, 30.0)
    assert rows[1]["errors"] == {"UNAVAILABLE": 1}
    assert rows[1]["slipped"] == 2
    assert rows[2]["ok"] == {"HELD_FOR_REVIEW": 1}
    assert rows[2]["errors"] == {"FAILED/PERMIT_EXPIRED": 1}
    overall = tally.overall()
    assert (overall["sent"], overall["error_count"], overall["slipped"]) == (6, 2, 2)
    assert overall["p95_ms"] == 60.0


def _settings() -> Settings:
    return Settings(
        minutes=1.0,
        rate=1.0,
        max_in_flight=1,
        deadline=1.0,
        warmup_seconds=10.0,
        sample_seconds=1.0,
    )


def test_memory_is_flat_within_ten_percent_and_20_mib_after_warm_up() -> None:
    flat_pid, growing_pid = 1, 2
    sampler = RssSampler([flat_pid, growing_pid])
    for second in range(60):
        # Start-up growth before the warm-up ends does not count; noise afterwards neither.
        flat = (100 if second < 10 else 200) * MIB + (second % 3) * MIB
        sampler.samples[flat_pid].append((float(second), flat))
        sampler.samples[growing_pid].append((float(second), (100 + 2 * second) * MIB))
    tally = Tally(60.0)

    memory = memory_report(sampler, {"steady": flat_pid, "leaky": growing_pid}, _settings(), tally)

    steady, leaky = memory["servers"]["steady"], memory["servers"]["leaky"]
    assert steady["flat"] is True
    assert steady["start_mib"] == 100.0
    assert steady["slope_mib_per_min"] == pytest.approx(0.0, abs=2.0)
    assert leaky["flat"] is False
    assert leaky["slope_mib_per_min"] == pytest.approx(120.0)
    assert memory["samples_mib"]["steady"][0] == [0.0, 100.0]
    result = verdict(tally.overall(), memory)
    assert result["pass"] is False
    assert result["reasons"] == ["memory not flat: leaky"]


def test_the_process_listening_on_a_port_is_found() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        assert listening_pids({"me": port}) == {"me": os.getpid()}


def test_a_short_in_process_soak_passes_and_reports_minutes_percentiles_and_memory(
    tmp_path: Path,
) -> None:
    out = tmp_path / "soak.json"
    # A process of its own: the soak configures logging and runs its own event loop.
    done = subprocess.run(
        [
            *(sys.executable, "-m", "linkage.cli", "soak", "--minutes", "0.25", "--rate", "20"),
            *("--in-process", "--residents", "200", "--json", "--out", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    report = json.loads(out.read_text())
    assert printed == report
    assert report["verdict"] == {
        "pass": True,
        "errors": 0,
        "slipped": 0,
        "memory_flat": True,
        "reasons": [],
    }
    assert report["schedule"]["planned"] == report["schedule"]["sent"] == 300
    (minute,) = report["minutes"]
    assert minute["sent"] == 300
    assert minute["ok"] == {"PROVIDED": 300}
    assert minute["errors"] == {}
    assert 0 < minute["p50_ms"] <= minute["p95_ms"] <= minute["p99_ms"]
    assert report["overall"]["p99_ms"] == minute["p99_ms"]
    assert list(report["memory"]["servers"]) == ["in-process"]
    samples = report["memory"]["samples_mib"]["in-process"]
    assert len(samples) >= 10
    assert all(mib > 0 for _, mib in samples)


def test_residents_go_to_the_registry_database_a_running_world_names(
    tmp_path: Path, database_url: Any
) -> None:
    from sqlalchemy import create_engine, text

    from bench.soak import SoakSetupError, load_registry_database

    root = tmp_path / "world"  # a world whose registry keeps no SQLite file here
    rows = [("10000000001", "123456789018", "sakai"), ("10000000002", "234567890121", "sakai")]
    with pytest.raises(SoakSetupError, match="--registry-database-url"):
        load_registry_database(root, rows, must_exist=True)

    url = database_url("registry")  # SQLite elsewhere, or a PostgreSQL schema
    assert load_registry_database(root, rows, must_exist=True, url=url) == 2
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            count = connection.execute(text("SELECT count(*) FROM registry_residents"))
            assert count.scalar_one() == 2
    finally:
        engine.dispose()
    assert not (root / "registry.sqlite").exists()
