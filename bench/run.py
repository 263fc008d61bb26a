"""``linkage bench``: measure the machine's floor, then every figure against it, and report.

Owns the list of figures (``MEASUREMENTS``, with issue 10's targets; a figure the issue sets no
target for is reported, never judged), the ``RunContext`` a measurement gets, the two absolute
figures measured here (``cli_start``: wall time of ``linkage --help``; ``permission_checks``:
checks/s of the permission list) and the command line. The gateway figures live in
``bench.gateway`` (the world as processes: batch queries, latency, server memory) and
``bench.storage`` (duplicate import, record verification).

Registering a gateway measurement: write ``async def run(ctx: RunContext) -> float | None`` and
put it as ``run=`` on its entry in ``MEASUREMENTS`` (or append a new ``Measurement``). It may
start whatever it needs under ``ctx.work_dir`` (a temporary directory), push clean-up onto
``ctx.stack`` and share it through ``ctx.shared`` with later measurements, keep raw values with
``ctx.record``, and read floor values from ``ctx.floor`` (or add the floor of its own data
there: the figure's floor is read after its run). Its figure's ``floor`` is the floor named by
``floor_key``; ``ratio`` and ``met`` are computed from the ``Target``, never typed in.

``--profile`` keeps cProfile files of this process per figure, py-spy recordings of the servers
a query passes through (when py-spy is installed: the ``dev`` extra) and a cProfile of the
import process, and writes their hot spots to ``profiles/hotspots.txt``.
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

from bench import gateway, hotspots, report, storage
from bench.floor import REFERENCE_2CORE, FloorResult, FloorSettings, cpu_rate, measure_floor
from bench.floor import profiled as _profiled
from bench.report import Figure, Target

__all__ = ["MEASUREMENTS", "Measurement", "RunContext", "collect_figures", "from_shared", "main"]

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


def from_shared(key: str) -> GatewayRun:
    """A ``run`` returning what an earlier measurement left in ``ctx.shared[key]`` (one
    measurement often yields several figures: p50 and p99, a rate and its absolute target)."""

    async def run(ctx: RunContext) -> float | None:
        value = ctx.shared.get(key)
        return None if value is None else float(value)

    return run


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

MIB_UNIT = "MiB"
# Targets are issue 10's; a figure the issue sets no target for is reported, never judged.
MEASUREMENTS: list[Measurement] = [
    Measurement(
        "batch_queries",
        "queries/s",
        Target(2.0),
        "echo_one_hop_calls_per_s",
        run=gateway.measure_batch,
        notes="StreamPersonQueries bs.sakai.kouki → jps pension_benefit (table2:82), end to end "
        "to the decrypted result, records committed at requester, network and provider",
    ),
    Measurement(
        "batch_queries_absolute",
        "queries/s",
        Target(5_000, relative=False, unit="queries/s"),
        run=from_shared("batch_rate"),
        notes="the same figure against the absolute target (2 cores)",
    ),
    Measurement(
        "query_p50_ms",
        "ms",
        Target(1.5, higher_is_better=False),
        "echo_chain_p50_ms",
        run=gateway.measure_latency,
        notes="QueryPerson unloaded, one at a time; floor: bare echo chain of the same 4 hops",
    ),
    Measurement(
        "query_p99_ms",
        "ms",
        Target.reported(higher_is_better=False),
        "echo_chain_p99_ms",
        run=from_shared("p99_ms"),
        notes="QueryPerson unloaded",
    ),
    Measurement(
        "query_p50_ms_half_load",
        "ms",
        Target.reported(higher_is_better=False),
        "echo_chain_p50_ms",
        run=from_shared("loaded_p50_ms"),
        notes="QueryPerson while a batch stream runs at 50% of the batch maximum",
    ),
    Measurement(
        "query_p99_ms_half_load",
        "ms",
        Target.reported(higher_is_better=False),
        "echo_chain_p99_ms",
        run=from_shared("loaded_p99_ms"),
        notes="QueryPerson while a batch stream runs at 50% of the batch maximum",
    ),
    Measurement(
        "server_rss_growth",
        MIB_UNIT,
        Target(10, higher_is_better=False, relative=False, unit=MIB_UNIT),
        run=from_shared("rss_growth_mib"),
        notes="worst server: median RSS of the last quarter of the batch rounds minus the "
        "first quarter, after warm-up (no growth = met)",
    ),
    Measurement(
        "server_peak_rss",
        MIB_UNIT,
        Target.reported(higher_is_better=False),
        run=from_shared("rss_peak_mib"),
        notes="largest VmHWM of any server process during the batch run",
    ),
    Measurement(
        "duplicate_import",
        "rows/s",
        Target(0.7),
        storage.IMPORT_FLOOR_KEY,
        run=storage.measure_duplicate_import,
        notes="`linkage duplicates import FILE` (format checks, sealing, one transaction); "
        "floor: sqlite3 executemany of the same stored rows into the same table",
    ),
    Measurement(
        "duplicate_import_1m_seconds",
        "s",
        Target(20, higher_is_better=False, relative=False, unit="s"),
        run=from_shared("import_seconds_per_million"),
        notes="seconds per 1,000,000 rows (a quick run scales the per-row part of 50,000)",
    ),
    Measurement(
        "record_verification",
        "records/s",
        Target(0.5),
        storage.VERIFY_FLOOR_KEY,
        run=storage.measure_verification,
        notes="linkage.records.verify, signatures checked, of the ledgers this run filled; "
        "floor: bare sha256 chain over the same entry bytes",
    ),
    Measurement(
        "permission_checks",
        "checks/s",
        Target(1_000_000, relative=False, unit="checks/s"),
        run=measure_permission_checks,
        notes="mix of allowed and denied tuples, date given",
    ),
    Measurement(
        "cli_start",
        "ms",
        Target(150, higher_is_better=False, relative=False, unit="ms"),
        run=measure_cli_start,
        notes="wall time of `linkage --help`, median of fresh processes",
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
            started = time.perf_counter()
            try:
                value, status = await _measure(m, ctx)
            except Exception as exc:  # one failing figure must not hide the others
                value, status = None, f"error: {type(exc).__name__}: {exc}"
                errors.append(f"{m.name}: {status}")
            ctx.extra.setdefault("figure_seconds", {})[m.name] = round(
                time.perf_counter() - started, 1
            )
            # Read after the run: a measurement may add the floor of its own data.
            floor = ctx.floor[m.floor_key].value if m.floor_key in ctx.floor else None
            notes = "; ".join(part for part in (m.notes, status) if part)
            figures.append(
                report.figure(m.name, m.unit, m.target, gateway=value, floor=floor, notes=notes)
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
        print(
            f"\nProfiled (profilers slow what they watch): files in {PROFILE_DIR}, "
            f"hot spots in {PROFILE_DIR / 'hotspots.txt'}"
        )
    print(f"\nCPU during the run: {document['extra']['cpu_during_run']} (steal: other guests)")
    load, cpus = document["extra"]["loadavg_start"][0], os.cpu_count() or 1
    if load > cpus / 2:
        print(
            f"WARNING: load average {load:.1f} on {cpus} CPUs at the start: other work shared "
            "the machine, so the figures understate the gateway (and the floor)"
        )
    summary = document["summary"]
    print(
        f"{summary['met']} of {summary['judged']} judged targets met; "
        f"{len(summary['not_measured'])} not measured; wrote {out}"
    )


def _clear_profiles(directory: Path) -> None:
    """Profiles of an earlier run would mix into this run's hot spots."""
    if directory.is_dir():
        for path in [*directory.glob("*.prof"), *directory.glob("pyspy-*.txt")]:
            path.unlink()


async def _run(args: argparse.Namespace) -> int:
    base = FloorSettings.quick() if args.quick else FloorSettings()
    settings = replace(base, hops=args.hops, mtls=not args.insecure)
    profile_dir = PROFILE_DIR if args.profile else None
    if profile_dir is not None:
        _clear_profiles(profile_dir)
    started, counters, loadavg = time.perf_counter(), report.cpu_counters(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="linkage-bench-") as tmp:
        floor = await measure_floor(
            settings, Path(tmp), profile_dir=profile_dir, progress=_progress
        )
        ctx = RunContext(args.quick, Path(tmp), floor, settings, profile_dir)
        ctx.record("floor_seconds", round(time.perf_counter() - started, 1))
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
    if profile_dir is not None:
        hotspots.summarize(profile_dir)
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
