"""``linkage bench``: measure the machine's floor, then every figure against it, and report.

Owns the list of figures (``MEASUREMENTS``), the ``RunContext`` a measurement gets, the two
absolute figures measured here (``cli_start``: wall time of ``linkage --help``;
``permission_checks``: checks/s of the permission list) and the command line.

Registering a gateway measurement: write ``async def run(ctx: RunContext) -> float | None`` and
put it as ``run=`` on its entry in ``MEASUREMENTS`` (or append a new ``Measurement``). It may
start whatever it needs under ``ctx.work_dir`` (a temporary directory), push clean-up onto
``ctx.stack`` and share it through ``ctx.shared`` with later measurements, keep raw values with
``ctx.record``, and read floor values from ``ctx.floor``. Its figure's ``floor`` is the floor
named by ``floor_key``; ``ratio`` and ``met`` are computed from the ``Target``, never typed in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from bench import report
from bench.floor import REFERENCE_2CORE, FloorResult, FloorSettings, cpu_rate, measure_floor
from bench.floor import profiled as _profiled
from bench.report import Figure, Target

__all__ = ["MEASUREMENTS", "Measurement", "RunContext", "collect_figures", "main"]

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results.json"
PROFILE_DIR = BENCH_DIR / "profiles"


@dataclass
class RunContext:
    """What a measurement gets: the mode, the floor measured this run, a place to work."""

    quick: bool
    work_dir: Path
    floor: dict[str, FloorResult]
    settings: FloorSettings
    profile_dir: Path | None = None
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    shared: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self, key: str, value: Any) -> None:
        """Keep a raw value (JSON-serializable) under ``extra`` in results.json."""
        self.extra[key] = value


GatewayRun = Callable[[RunContext], Awaitable[float | None]]


@dataclass(frozen=True, slots=True)
class Measurement:
    """One figure: how to measure it (``run``; ``None`` = not plugged in yet) and its target."""

    name: str
    unit: str
    target: Target
    floor_key: str | None = None
    run: GatewayRun | None = None
    notes: str = ""


# --- the absolute figures measured here -----------------------------------------------------


def _cli_command() -> list[str]:
    script = Path(sys.executable).with_name("linkage")
    return [str(script)] if script.exists() else [sys.executable, "-m", "linkage.cli"]


def _wall_ms(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=30)  # noqa: S603
    return (time.perf_counter() - start) * 1000


async def measure_cli_start(ctx: RunContext) -> float:
    """Median wall time of ``linkage --help`` as a fresh process, after one warm-up run."""
    command = [*_cli_command(), "--help"]
    await asyncio.to_thread(_wall_ms, command)  # warm the page cache and .pyc files
    runs = [await asyncio.to_thread(_wall_ms, command) for _ in range(5 if ctx.quick else 11)]
    ctx.record("cli_start_ms_runs", runs)
    ctx.record("cli_start_command", " ".join([Path(command[0]).name, *command[1:]]))
    return statistics.median(runs)


Tuple4 = tuple[str, str, str, str]


def _check_mix(allowed: list[Tuple4], capacities: list[str], size: int) -> list[Tuple4]:
    """Half allowed tuples, half denied ones (wrong requester, provider or unknown item)."""
    rng = random.Random(0)
    allowed_set = set(allowed)
    mix: list[Tuple4] = []
    while len(mix) < size:
        requester, procedure, provider, item = rng.choice(allowed)
        mix.append((requester, procedure, provider, item))
        denied = rng.choice(
            [
                (rng.choice(capacities), procedure, provider, item),
                (requester, procedure, rng.choice(capacities), item),
                (requester, procedure, provider, "no_such_item"),
            ]
        )
        if denied not in allowed_set:
            mix.append(denied)
    return mix


async def measure_permission_checks(ctx: RunContext) -> float | None:
    """checks/s of ``load_default().check`` over a mix of allowed and denied tuples."""
    try:
        from permission_list import load_default
    except ImportError:
        return None
    permissions = load_default()
    allowed = list(permissions.allowed_tuples())
    capacities = sorted({t[0] for t in allowed} | {t[2] for t in allowed})
    mix = _check_mix(allowed, capacities, 1_000)
    check, day = permissions.check, date.today()
    verdicts = [check(*t, on=day).allowed for t in mix]

    def repeat(n: int) -> None:
        for _ in range(n // len(mix)):
            for requester, procedure, provider, item in mix:
                check(requester, procedure, provider, item, day)

    checks = len(mix) * (300 if ctx.quick else 1_000)
    value, rounds = cpu_rate(repeat, checks, ctx.settings.rounds)
    ctx.record(
        "permission_checks",
        {"rounds": rounds, "tuples": len(mix), "allowed_share": sum(verdicts) / len(verdicts)},
    )
    return value


# --- the figures: the one place to register a measurement -----------------------------------

MEASUREMENTS: list[Measurement] = [
    # Gateway figures: targets proposed here, the run functions are plugged in by the lead.
    Measurement(
        "query_throughput",
        "queries/s",
        Target(0.25),
        "echo_chain_calls_per_s",
        notes="single queries, 64 in flight, over the same hops as the echo chain",
    ),
    Measurement(
        "query_p50_ms",
        "ms",
        Target(3.0, higher_is_better=False),
        "echo_chain_p50_ms",
        notes="one unloaded query end to end",
    ),
    Measurement(
        "query_p99_ms",
        "ms",
        Target(4.0, higher_is_better=False),
        "echo_chain_p99_ms",
        notes="one unloaded query end to end",
    ),
    Measurement(
        "duplicate_import",
        "rows/s",
        Target(0.3),
        "sqlite_insert_rows_per_s",
        notes="bulk import of duplicates (副本), format checks and sealing at rest included",
    ),
    Measurement(
        "access_record_append",
        "records/s",
        Target(0.1),
        "sha256_chain_records_per_s",
        notes="hash-chained access records written to the database",
    ),
    Measurement(
        "answer_sealing",
        "answers/s",
        Target(0.3),
        "box_encrypt_per_s",
        notes="answers sealed and signed per batch by a provider",
    ),
    # Absolute figures, measured now.
    Measurement(
        "cli_start",
        "ms",
        Target(150, higher_is_better=False, relative=False, unit="ms"),
        run=measure_cli_start,
        notes="wall time of `linkage --help`, median of fresh processes",
    ),
    Measurement(
        "permission_checks",
        "checks/s",
        Target(1_000_000, relative=False, unit="checks/s"),
        run=measure_permission_checks,
        notes="mix of allowed and denied tuples, date given",
    ),
]


async def _measure(measurement: Measurement, ctx: RunContext) -> tuple[float | None, str]:
    if measurement.run is None:
        return None, "not plugged in yet"
    with _profiled(ctx.profile_dir, f"figure-{measurement.name}"):
        value = await measurement.run(ctx)
    return value, "" if value is not None else "not measurable yet"


async def collect_figures(
    measurements: list[Measurement], ctx: RunContext, progress: Callable[[str], None]
) -> tuple[list[Figure], list[str]]:
    """Run every measurement (errors become notes, not crashes) and build its figure."""
    figures, errors = [], []
    async with ctx.stack:
        for m in measurements:
            progress(f"figure: {m.name}")
            floor = ctx.floor[m.floor_key].value if m.floor_key in ctx.floor else None
            try:
                gateway, status = await _measure(m, ctx)
            except Exception as exc:  # one failing figure must not hide the others
                gateway, status = None, f"error: {type(exc).__name__}: {exc}"
                errors.append(f"{m.name}: {status}")
            notes = "; ".join(part for part in (m.notes, status) if part)
            figures.append(
                report.figure(m.name, m.unit, m.target, gateway=gateway, floor=floor, notes=notes)
            )
    return figures, errors


# --- command line ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkage bench", description="Measure the gateway against the machine's own floor."
    )
    parser.add_argument("--quick", action="store_true", help="short rounds (well under 2 min)")
    parser.add_argument(
        "--profile", action="store_true", help=f"save cProfile .prof files under {PROFILE_DIR}"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON path")
    parser.add_argument(
        "--hops", type=_positive_int, default=4, help="echo chain depth (default 4)"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="echo floor without mutual TLS (not the fair one)"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a judged target is missed"
    )
    return parser


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _print(
    settings: FloorSettings,
    floor: dict[str, FloorResult],
    figures: list[Figure],
    document: dict[str, Any],
    out: Path,
) -> None:
    transport = document["extra"]["transport"]
    print(f"\nFloor ({transport}, echo chain {settings.hops} hops, median of rounds):")
    print(report.format_floor_table(floor, REFERENCE_2CORE))
    print("\nFigures (ratio = gateway ÷ floor):")
    print(report.format_table(figures))
    if document["extra"]["profiled"]:
        print(f"\nProfiled (cProfile slows what it watches): .prof files in {PROFILE_DIR}")
    print(f"\nCPU during the run: {document['extra']['cpu_during_run']} (steal: other guests)")
    summary = document["summary"]
    print(
        f"{summary['met']} of {summary['judged']} judged targets met; "
        f"{len(summary['not_measured'])} not measured; wrote {out}"
    )


async def _run(args: argparse.Namespace) -> int:
    base = FloorSettings.quick() if args.quick else FloorSettings()
    settings = replace(base, hops=args.hops, mtls=not args.insecure)
    profile_dir = PROFILE_DIR if args.profile else None
    started, counters, loadavg = time.perf_counter(), report.cpu_counters(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="linkage-bench-") as tmp:
        floor = await measure_floor(
            settings, Path(tmp), profile_dir=profile_dir, progress=_progress
        )
        ctx = RunContext(args.quick, Path(tmp), floor, settings, profile_dir)
        figures, errors = await collect_figures(MEASUREMENTS, ctx, _progress)
    extra = {
        "mode": "quick" if args.quick else "full",
        "transport": "mutual TLS" if settings.mtls else "insecure",
        "profiled": profile_dir is not None,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "loadavg_start": [round(value, 2) for value in loadavg],
        "cpu_during_run": report.cpu_usage(counters, report.cpu_counters()),
        **ctx.extra,
    }
    document = report.write_json(args.out, figures, floor, extra=extra)
    _print(settings, floor, figures, document, args.out)
    for error in errors:
        print(f"linkage bench: {error}", file=sys.stderr)
    summary = document["summary"]
    missed = args.check and summary["met"] < summary["judged"]
    return 1 if errors or missed else 0


def main(argv: list[str]) -> int:
    """``linkage bench [--quick] [--profile] [--out PATH] [--hops N] [--insecure] [--check]``."""
    return asyncio.run(_run(_parser().parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
