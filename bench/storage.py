"""The gateway's storage figures: bulk duplicate import and access-record verification.

Owns two measurements, each with the floor it is divided by measured here on the same data:

- ``measure_duplicate_import``: ``linkage duplicates import FILE`` (the server's own import
  path: every line parsed and format-checked, contents sealed at rest, versions worked out, one
  transaction) as a fresh process against a migrated platform database, wall time of the whole
  command (start-up, the forked reader and sealer, the inserts, the commit); rows/s; the CPU
  time of the command and its worker is recorded beside it. Floor: raw ``sqlite3``
  ``executemany`` of exactly the rows the import stored, into the same table and indexes
  (``bench.floor.sqlite_copy_floor``). Also the seconds a million rows take (measured in a
  full run; in a quick one, the command's fixed cost, measured on a one-row import, plus the
  rest scaled from the rows imported).
- ``measure_verification``: ``linkage.records.verify`` (signatures checked) of the ledgers the
  run filled: ``network``, ``server:sakai``, ``server:jps``, ``ua:sakai``; records/s over all of
  them. Floor: a bare sha256 chain over the same entry bytes, read from the same databases.
  Without a world (it failed to start) it falls back to ``linkage.records.bench.measure`` on a
  scratch ledger, and says so.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.floor import FloorResult, cpu_seconds, sha256_chain_floor, sqlite_copy_floor
from bench.report import cpu_counters, cpu_usage

if TYPE_CHECKING:
    from nacl.signing import VerifyKey

    from bench.run import RunContext
    from bench.world import BenchWorld

__all__ = [
    "IMPORT_FLOOR_KEY",
    "VERIFY_FLOOR_KEY",
    "duplicate_file",
    "measure_duplicate_import",
    "measure_verification",
]

IMPORT_FLOOR_KEY = "sqlite_same_rows_per_s"
VERIFY_FLOOR_KEY = "sha256_same_records_per_s"
FULL_ROWS = 1_000_000
QUICK_ROWS = 50_000
TENANT = "jps"
# The template of one line of the import file (server/duplicates_file.py): a pension.
_LINE = (
    '{{"unified_number": "U{number:014d}", "data_item": "pension_benefit", '
    '"effective_from": "2026-04-01", "auto_response_disabled": {flag}, '
    '"content": {{"fiscal_year": 2026, "pension_kind": "{kind}", '
    '"annual_amount": {amount}, "payer": "jps"}}}}\n'
)
_KINDS = ("PENSION_KIND_OLD_AGE_BASIC", "PENSION_KIND_OLD_AGE_EMPLOYEES")


# --- duplicate import ----------------------------------------------------------------------------


def duplicate_file(path: Path, rows: int) -> Path:
    """A JSON-lines import file of ``rows`` pensions, one person each (no supersession)."""
    with path.open("w", encoding="utf-8") as handle:
        for index in range(rows):
            handle.write(
                _LINE.format(
                    number=index,
                    flag="true" if index % 100 == 0 else "false",
                    kind=_KINDS[index % 2],
                    amount=600_000 + index % 900_000,
                )
            )
    return path


def _prepare_platform(directory: Path, rows: int) -> Path:
    """A migrated platform database ``server.sqlite`` in ``directory`` and the import file."""
    from linkage import db

    directory.mkdir(parents=True, exist_ok=True)
    db.migrate(db.sqlite_url(directory / "server.sqlite"))
    path = duplicate_file(directory / "duplicates.jsonl", rows)
    # On disk before the clock starts: a file an operator imports was written long before, and
    # the kernel writing this one back meanwhile took seconds of the import's time.
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
    return path


def _import_command(file: Path, directory: Path, profile: Path | None) -> list[str]:
    wrapper = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    return [
        sys.executable,
        *wrapper,
        "-m",
        "linkage.cli",
        "duplicates",
        "import",
        str(file),
        "--tenant",
        TENANT,
        "--data-dir",
        str(directory),
        "--platform",
        TENANT,
        "--import-id",
        "bench-import",
    ]


def _run_import(command: list[str]) -> tuple[float, str, float]:
    """(wall seconds, the CLI's last line, CPU seconds of the command and its worker)."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True)  # noqa: S603
        try:
            # wait4: the rusage of this child and of the children it reaped (the import's
            # worker), so the record shows how much CPU the figure had to share.
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        stderr = errors.read()
    if process.returncode != 0:
        raise RuntimeError(f"duplicates import exited {process.returncode}: {stderr[-500:]}")
    return elapsed, stderr.strip().splitlines()[-1], usage.ru_utime + usage.ru_stime


class _OtherWork:
    """The machine's CPU use, and the world's servers', from now until ``done``."""

    def __init__(self, ctx: RunContext) -> None:
        world: BenchWorld | None = ctx.shared.get("world")
        self._pids = {} if world is None else dict(world.pids)
        self._counters = cpu_counters()
        self._servers = self._server_cpu()

    def _server_cpu(self) -> float:
        total = 0.0
        for pid in self._pids.values():
            try:
                total += cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                continue
        return total

    def done(self) -> dict[str, Any]:
        usage = cpu_usage(self._counters, cpu_counters())
        return {**usage, "world_servers_cpu_s": round(self._server_cpu() - self._servers, 2)}


async def measure_duplicate_import(ctx: RunContext) -> float:
    """rows/s of ``linkage duplicates import`` (see the module); adds its floor to the run."""
    rows = QUICK_ROWS if ctx.quick else FULL_ROWS
    directory = ctx.work_dir / "duplicates"
    file = await asyncio.to_thread(_prepare_platform, directory, rows)
    profile = None if ctx.profile_dir is None else ctx.profile_dir / "duplicates-import.prof"
    command = _import_command(file, directory, profile)
    others = _OtherWork(ctx)
    elapsed, summary, cpu = await asyncio.to_thread(_run_import, command)
    besides = others.done()
    floor = await asyncio.to_thread(
        sqlite_copy_floor,
        directory / "server.sqlite",
        "server_duplicates",
        directory / "floor",
        rounds=ctx.settings.rounds,
    )
    ctx.floor[IMPORT_FLOOR_KEY] = floor
    fixed = None if rows == FULL_ROWS else await asyncio.to_thread(_fixed_seconds, directory)
    ctx.shared["import_seconds_per_million"] = million_seconds(elapsed, rows, fixed or 0.0)
    ctx.record(
        "duplicate_import",
        {
            "rows": rows,
            "file_bytes": file.stat().st_size,
            "wall_s": round(elapsed, 2),
            # main + worker process: above wall_s means both cores worked; a wall far above
            # cpu_s / 2 means the machine was busy with something else.
            "cpu_s": round(cpu, 2),
            "command": "linkage duplicates import FILE --tenant jps (fresh process)",
            "cli_summary": summary,
            # What else ran meanwhile: the machine's busy share (the import alone keeps it
            # near cpu_s / wall_s / cores) and the CPU the idle world's servers took.
            "machine_during_import": besides,
            "scaled_to_1m": rows != FULL_ROWS,
            # A quick run scales only the per-row part: start-up and commit once, not 20 times.
            "fixed_s_of_the_command": None if fixed is None else round(fixed, 2),
            "profiled_with_cprofile": profile is not None,
        },
    )
    return rows / elapsed


def million_seconds(elapsed: float, rows: int, fixed: float) -> float:
    """Seconds a million rows take, from ``elapsed`` for ``rows``: the command's ``fixed``
    cost (start-up, opening the store, the commit of an empty import) once, the rest per row."""
    fixed = min(fixed, elapsed)
    return fixed + (elapsed - fixed) * 1_000_000 / rows


def _fixed_seconds(directory: Path) -> float:
    """Wall seconds of the same command importing one row into a fresh platform."""
    tiny = directory / "fixed"
    _prepare_platform(tiny, 1)
    elapsed, _, _ = _run_import(_import_command(tiny / "duplicates.jsonl", tiny, None))
    return elapsed


# --- record verification -------------------------------------------------------------------------


def _ledgers(world: BenchWorld) -> list[tuple[str, str, Path, str]]:
    """(component, ledger id, key directory, key ring name) of the ledgers a query fills."""
    from simulator.network.app import RECORDS_KEY_RING

    keys = world.root / "keys"
    return [
        ("network", "network", keys / "network", RECORDS_KEY_RING),
        (
            "platform-municipal",
            "server:sakai",
            keys / "platform-municipal" / "keys",
            "platform-municipal",
        ),
        ("platform-jps", "server:jps", keys / "platform-jps" / "keys", "platform-jps"),
        ("ua-sakai", "ua:sakai", keys / "ua-sakai" / "keys", "ua.sakai"),
    ]


def _verify_keys(directory: Path, name: str) -> dict[str, VerifyKey]:
    from linkage.keys import KeyRing

    ring = KeyRing.load(directory, name)
    return {key.key_id: key.nacl_verify_key() for key in ring.public_keys()}


def _entry_bytes(engine: Any, ledger_id: str) -> list[bytes]:
    from sqlalchemy import select

    from linkage.records.models import RECORDS, entry_bytes_sql

    with engine.connect() as connection:
        query = (
            select(entry_bytes_sql(connection.dialect.name))
            .where(RECORDS.c.ledger == ledger_id)
            .order_by(RECORDS.c.seq)
        )
        return [bytes(body) for (body,) in connection.execute(query)]


def _verify_one(
    url: str, ledger_id: str, keys: dict[str, VerifyKey]
) -> tuple[int, float, list[bytes]]:
    """(records checked, seconds, entry bytes) of one ledger; raises if it is not intact."""
    from linkage import db
    from linkage.records.verify import verify

    engine = db.make_engine(url)
    try:
        started = time.perf_counter()
        report = verify(engine, ledger_id, keys)
        elapsed = time.perf_counter() - started
        if not report.ok or not report.signatures_checked:
            raise RuntimeError(report.describe())
        return report.records_checked, elapsed, _entry_bytes(engine, ledger_id)
    finally:
        engine.dispose()


def _verify_world(
    world: BenchWorld, rounds: int
) -> tuple[int, list[float], list[bytes], dict[str, int]]:
    """``rounds`` verifications of every ledger: records, seconds per round, all entry bytes."""
    per_ledger: dict[str, int] = {}
    seconds: list[float] = []
    bodies: list[bytes] = []
    for round_ in range(rounds):
        total = 0.0
        for component, ledger_id, key_dir, ring in _ledgers(world):
            keys = _verify_keys(key_dir, ring)
            checked, elapsed, entries = _verify_one(world.url(component), ledger_id, keys)
            total += elapsed
            per_ledger[ledger_id] = checked
            if round_ == 0:
                bodies.extend(entries)
        seconds.append(total)
    return sum(per_ledger.values()), seconds, bodies, per_ledger


async def measure_verification(ctx: RunContext) -> float:
    """records/s of verification over the run's ledgers (see the module); adds its floor."""
    world: BenchWorld | None = ctx.shared.get("world")
    if world is None:
        return await _scratch_verification(ctx)
    # Blocking on purpose: nothing else runs now, and cProfile sees only this thread.
    rounds = 1 if ctx.quick else ctx.settings.rounds
    records, seconds, bodies, per_ledger = _verify_world(world, rounds)
    floor = sha256_chain_floor(bodies, rounds=ctx.settings.rounds, key=VERIFY_FLOOR_KEY)
    ctx.floor[VERIFY_FLOOR_KEY] = floor
    ctx.record(
        "record_verification",
        {
            "source": "ledgers filled by this run",
            "records": per_ledger,
            "round_seconds": [round(s, 3) for s in seconds],
            "signatures_checked": True,
        },
    )
    return records / statistics.median(seconds)


async def _scratch_verification(ctx: RunContext) -> float:
    """No world to read: ``linkage.records.bench.measure`` on a scratch ledger instead."""
    from linkage.records.bench import measure

    result = await measure(ctx.work_dir / "ledger", records=20_000 if ctx.quick else 100_000)
    value = result.bare_chain_per_s  # its own bare chain over the same entry bytes
    ctx.floor[VERIFY_FLOOR_KEY] = FloorResult(
        VERIFY_FLOOR_KEY, "records/s", value, (value,), params={"source": "scratch ledger"}
    )
    ctx.record("record_verification", {"source": "scratch ledger (no world this run)"})
    return result.verify_per_s
