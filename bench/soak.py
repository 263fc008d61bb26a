"""``linkage soak``: drive the world at a steady rate for a bounded time; report errors, latency
and the servers' memory over time.

Owns the open-loop schedule (``OpenLoop``), the soak's setup, the query driver, the tally per
minute, the memory verdict, the report (text tables and JSON) and the command line. It also owns
``process_world``, which starts the world as separate ``linkage serve`` processes (the plan of
``linkage world up``) and is reused by the examples' tests.

The load: Sakai's late-stage elderly medical care system (``bs.sakai.kouki``) asks the Japan
Pension Service for ``pension_benefit`` under ``table2:82`` about pensioners of a synthetic
population, each query with a unique id, R queries per second on a fixed schedule.

Open loop: the i-th query is due at ``i / R`` seconds whatever happened to earlier ones. When
``--max-in-flight`` queries are already outstanding at a due time, that query is skipped and
counted as a *slip*; the schedule never shifts, so a slow world cannot slow the offered load
down (no coordinated omission) and the client's own memory stays bounded. A slip fails the
verdict like an error: the world did not sustain the rate.

Worlds it drives:

- ``--world DIR`` with a world running there (``linkage world up --data-dir DIR``): its
  ``world.json``; server PIDs from the manifest's ``pids`` if present, else found by the ports
  the servers listen on (``/proc/net/tcp``);
- ``--world DIR`` with nothing running there, or no option: the soak starts the world itself as
  processes (in DIR, or in a temporary directory removed afterwards) and stops them at the end;
- ``--in-process``: every server in this process (``simulator.world.start_world``); there is one
  PID then, shared with the client, so per-server memory is not measurable.

Loading residents: the registry (the J-LIS stand-in) has no RPC to load residents; loading its
resident file is an operator action at J-LIS. The soak does the same: it writes the residents
into the registry's SQLite database (``DIR/registry.sqlite``, blind-indexed with the registry's
own key ``DIR/keys/registry/registry-index.key``) before the registry process starts when the
soak starts the world, or while it runs for a running world (SQLite in WAL mode: the registry
sees committed rows); a running world on another database (``linkage world up --database-url``)
needs ``--registry-database-url``. In-process it calls ``App.load_residents``. Everything else —
registering people at JPS and Sakai, pushing pensions, the queries — goes over gRPC with mutual
TLS.

Memory: the RSS of every watched process is sampled every few seconds from the start of the
load. After a warm-up (20% of the run, at most 60 s) a server is *flat* when the median of the
last quarter of its samples is at most 10% + 20 MiB above the median of the first quarter; the
least-squares slope (MiB/min) is reported beside it. CPU seconds per process under the load are
reported too (they say where the cost is; latency depends on what else the machine runs).

Verdict and exit status: 0 when there were no errors, no slips and every server stayed flat;
1 otherwise, or when the world could not be set up.

Bounded: the schedule ends after ``--minutes``; in-flight queries get one deadline to finish
and are then cancelled. It only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bench.floor import RssSampler, nearest_rank

if TYPE_CHECKING:
    import grpc.aio

    from linkage.v1 import common_pb2, unified_address_pb2_grpc
    from simulator.population import Person
    from simulator.world_cli import Process

__all__ = [
    "OpenLoop",
    "Outcome",
    "Run",
    "ScheduleStats",
    "Servers",
    "Settings",
    "SoakSetupError",
    "Tally",
    "build_document",
    "cpu_seconds",
    "drive",
    "format_report",
    "free_port_range",
    "in_process_world",
    "listening_pids",
    "load_registry_database",
    "main",
    "memory_report",
    "population",
    "prepare",
    "process_world",
    "running_world",
    "verdict",
    "world_running",
]

LOCALHOST = "127.0.0.1"
MIB = 1024 * 1024
PROCEDURE = "table2:82"
PROVIDER = "jps"
DATA_ITEM = "pension_benefit"
ON_DATE = "2026-06-01"
EFFECTIVE_FROM = "2026-04-01"
# Statuses that are a correct answer for this load: the provider answered, held the answer for
# review (a DV-protected person, 自動応答不可フラグ), holds nothing in force, or has not answered
# by the time QueryPerson returned (shown apart in the table). FAILED, DENIED and the like are
# errors: with this setup the permission list allows every query.
OK_STATUSES = frozenset({"PROVIDED", "NO_DATA", "HELD_FOR_REVIEW", "IN_FLIGHT"})
# Memory is flat when RSS at the end is at most this over RSS after warm-up (per server).
FLAT_RATIO = 0.10
FLAT_SLACK_BYTES = 20 * MIB
# world_cli.plan uses base_port .. base_port + 10 + number of organizations.
PORT_SPAN = 16
SETUP_CONCURRENCY = 8


# --- the open-loop schedule -----------------------------------------------------------------


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Fire = Callable[[int, float], Coroutine[Any, Any, None]]


@dataclass
class ScheduleStats:
    """What the schedule did: sends planned, started and skipped, and how late it woke up."""

    planned: int
    sent: int = 0
    slipped: int = 0
    slipped_ticks: list[int] = field(default_factory=list)
    max_lag_s: float = 0.0
    peak_in_flight: int = 0


class OpenLoop:
    """Starts ``fire(tick, due_s)`` at ``tick / rate`` seconds for every tick before ``seconds``.

    Open loop: a send never waits for an earlier one. When ``max_in_flight`` sends are still
    running at a due time the tick is skipped and counted as a slip; the ticks after it keep
    their own due times. If the loop itself wakes up late, the sends that fell due meanwhile
    start at once (catch up), and the lateness is kept as ``max_lag_s``.
    ``clock``/``sleep`` are injectable so tests can run the schedule on a fake clock.
    """

    def __init__(
        self,
        rate: float,
        seconds: float,
        max_in_flight: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0 or seconds <= 0 or max_in_flight < 1:
            raise ValueError("rate, seconds and max_in_flight must be positive")
        self.rate = rate
        self.seconds = seconds
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._sleep = sleep
        self._in_flight: set[asyncio.Task[None]] = set()
        self.stats = ScheduleStats(planned=self.ticks)

    @property
    def ticks(self) -> int:
        """How many sends fall due before ``seconds`` (tick i is due at i / rate)."""
        return math.ceil(self.seconds * self.rate - 1e-9)

    def due(self, tick: int) -> float:
        return tick / self.rate

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self, fire: Fire) -> ScheduleStats:
        """Run the schedule to its end; sends still running are left to ``drain``."""
        start = self._clock()
        for tick in range(self.ticks):
            due = self.due(tick)
            delay = start + due - self._clock()
            if delay > 0:
                await self._sleep(delay)
            self.stats.max_lag_s = max(self.stats.max_lag_s, self._clock() - start - due)
            if len(self._in_flight) >= self.max_in_flight:
                self.stats.slipped += 1
                self.stats.slipped_ticks.append(tick)
                continue
            task = asyncio.create_task(fire(tick, due))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            self.stats.sent += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, len(self._in_flight))
        return self.stats

    async def drain(self, within: float) -> int:
        """Wait up to ``within`` s for running sends, cancel the rest; returns how many."""
        if not self._in_flight:
            return 0
        _, pending = await asyncio.wait(set(self._in_flight), timeout=within)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)


# --- outcomes, per minute ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One query: when it was due (s from the start), how long it took, and how it ended."""

    due_s: float
    latency_ms: float
    status: str = ""  # an OK status, or empty when the query is an error
    error: str = ""  # the error's reason, or empty


def _percentiles(latencies: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(latencies)
    if not ordered:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(nearest_rank(ordered, 0.50), 2),
        "p95_ms": round(nearest_rank(ordered, 0.95), 2),
        "p99_ms": round(nearest_rank(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2),
    }


@dataclass
class Tally:
    """Every outcome and slip, summarized per minute of the schedule and overall."""

    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    slips: list[float] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def minutes(self) -> int:
        return max(1, math.ceil(self.seconds / 60 - 1e-9))

    def window(self, minute: int) -> tuple[float, float]:
        return minute * 60.0, min((minute + 1) * 60.0, self.seconds)

    def summary(self, outcomes: Sequence[Outcome], slips: int) -> dict[str, Any]:
        ok = Counter(o.status for o in outcomes if not o.error)
        errors = Counter(o.error for o in outcomes if o.error)
        return {
            "sent": len(outcomes),
            "ok": dict(sorted(ok.items())),
            "errors": dict(sorted(errors.items())),
            "error_count": sum(errors.values()),
            "slipped": slips,
            **_percentiles([o.latency_ms for o in outcomes]),
        }

    def minute_of(self, due_s: float) -> int:
        """The minute (0-based) a due time falls in; anything past the end counts in the last."""
        return min(int(due_s // 60), self.minutes() - 1)

    def rows(self) -> list[dict[str, Any]]:
        """One summary per minute (by due time); the last one may be a part minute."""
        outcomes: list[list[Outcome]] = [[] for _ in range(self.minutes())]
        slips = [0] * self.minutes()
        for outcome in self.outcomes:
            outcomes[self.minute_of(outcome.due_s)].append(outcome)
        for due in self.slips:
            slips[self.minute_of(due)] += 1
        rows = []
        for minute, inside in enumerate(outcomes):
            start, end = self.window(minute)
            summary = self.summary(inside, slips[minute])
            rows.append({"minute": minute + 1, "start_s": start, "end_s": end, **summary})
        return rows

    def overall(self) -> dict[str, Any]:
        return self.summary(self.outcomes, len(self.slips))


# --- the world the soak drives ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Servers:
    """A running world: where the unified address servers are, its PKI, the PIDs to watch."""

    mode: str
    root: Path
    pki_dir: Path | None
    unified_address: dict[str, str]  # organization code → host:port
    pids: dict[str, int]  # server name → PID whose RSS is sampled
    note: str = ""

    def channel(self, org: str, system: str) -> grpc.aio.Channel:
        """A channel to ``org``'s unified address server as business system ``system``."""
        from linkage.rpc import Security

        return Security(self.pki_dir, f"bs.{org}.{system}").channel(self.unified_address[org])


ResidentRow = tuple[str, str, str]  # resident code, individual number, municipality


def load_registry_database(
    root: Path, rows: Sequence[ResidentRow], *, must_exist: bool, url: str | None = None
) -> int:
    """Load residents into the registry's database (an operator action): ``url``, or the
    SQLite file under ``root``. The file and the index key are where ``linkage serve registry
    --data-dir root`` keeps them. With ``must_exist`` (a running world) a missing file means
    the registry uses another database, which ``url`` must then name.
    """
    from linkage import db
    from linkage.atrest import DataKey
    from simulator.registry import residents
    from simulator.registry.app import INDEX_KEY_FILE

    path = root / "registry.sqlite"
    if url is None and must_exist and not path.exists():
        raise SoakSetupError(
            f"no registry database at {path}: for a world on another database, name the "
            "registry's with --registry-database-url"
        )
    url = url or db.sqlite_url(path)
    db.migrate(url)
    index = DataKey.load_or_create(root / "keys" / "registry" / INDEX_KEY_FILE)
    engine = db.make_engine(url)
    try:
        return residents.load_residents(db.session_factory(engine), index, rows)
    finally:
        engine.dispose()


class SoakSetupError(Exception):
    """The world could not be prepared for the soak (nothing was measured)."""


@contextlib.asynccontextmanager
async def in_process_world(root: Path, rows: Sequence[ResidentRow]) -> AsyncIterator[Servers]:
    """Every server in this process; one PID (this one) is all there is to sample."""
    from simulator.world import WorldConfig, start_world

    world = await start_world(WorldConfig(root=root))
    try:
        await world.registry.load_residents(rows)
        yield Servers(
            mode="in-process",
            root=root,
            pki_dir=world.config.pki_dir,
            unified_address={code: app.address for code, app in world.unified_address.items()},
            pids={"in-process": os.getpid()},
            note="every server and the soak's client share one process",
        )
    finally:
        await world.close()


def free_port_range(span: int = PORT_SPAN, attempts: int = 50) -> int:
    """A base port such that ``base .. base + span - 1`` are free on 127.0.0.1 right now."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20_000, 40_000)
        if all(_port_free(port) for port in range(base, base + span)):
            return base
    raise SoakSetupError(f"no {span} free consecutive ports found on {LOCALHOST}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOCALHOST, port))
        except OSError:
            return False
        return True


def _previous_base_port(root: Path) -> int | None:
    """The network's port of a world that ran in ``root`` before: its directory (in the network
    database) names the platforms at ports derived from it, so a restart must reuse it."""
    manifest = root / "world.json"
    if not manifest.exists():
        return None
    address: str = json.loads(manifest.read_text())["addresses"]["network"]
    return int(address.rsplit(":", 1)[1])


def _stages(procs: Sequence[Process]) -> list[list[Process]]:
    """Start order: the network; then the registry and the platforms; then unified address
    servers. Each stage starts in parallel once the one before is serving."""
    first = [p for p in procs if p.name == "network"]
    second = [p for p in procs if p.name == "registry" or p.name.startswith("platform-")]
    rest = [p for p in procs if p not in first and p not in second]
    return [first, second, rest]


async def _serving(
    pki_dir: Path | None, proc: Process, child: subprocess.Popen[bytes], logs: Path
) -> None:
    """Wait until ``proc`` is SERVING; fail at once if its process died instead."""
    from linkage.rpc import Security
    from simulator.world_cli import _wait_serving

    waiting = asyncio.create_task(_wait_serving(Security(pki_dir, "admin"), proc.port))
    try:
        while not waiting.done():
            if child.poll() is not None:
                raise SoakSetupError(
                    f"{proc.name} exited with {child.returncode} (see {logs}/{proc.name}.log)"
                )
            await asyncio.wait({waiting}, timeout=0.2)
        waiting.result()
    finally:
        waiting.cancel()


async def _all_serving(
    pki_dir: Path | None,
    stage: Sequence[Process],
    running: dict[str, subprocess.Popen[bytes]],
    logs: Path,
) -> None:
    """Wait for a whole stage; the first failure stops the other waits and is raised alone."""
    try:
        async with asyncio.TaskGroup() as group:
            for proc in stage:
                group.create_task(_serving(pki_dir, proc, running[proc.name], logs))
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None


def _spawn(proc: Process, logs: Path) -> subprocess.Popen[bytes]:
    """Start one ``linkage serve`` process as ``world up`` does (``world_cli._spawn``), but close
    the parent's copy of the log file: the child has its own, and an open file per server would
    leak in a long-lived parent (and warn under pytest)."""
    with (logs / f"{proc.name}.log").open("ab") as log:
        return subprocess.Popen(  # noqa: S603 — our own entry point with our own arguments
            [sys.executable, "-m", "linkage.cli", "serve", *proc.args],
            stdout=log,
            stderr=log,
            env={**os.environ, "LINKAGE_LOG_FORMAT": "json"},
        )


def _stop(children: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every child (they drain in-flight calls), then kill whatever would not stop."""
    children = list(children)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@contextlib.asynccontextmanager
async def process_world(
    root: Path, rows: Sequence[ResidentRow] = (), *, base_port: int | None = None
) -> AsyncIterator[Servers]:
    """The world as ``linkage serve`` processes (``linkage world up``'s plan) in ``root``.

    Residents are loaded into the registry's database before its process starts. Writes
    ``root/world.json`` like ``world up``; every process is stopped on exit.
    """
    from simulator import world_cli
    from simulator.world import WorldConfig, init_pki

    root = await asyncio.to_thread(root.resolve)
    config = WorldConfig(root=root)
    await asyncio.to_thread(init_pki, config)
    await asyncio.to_thread(load_registry_database, root, rows, must_exist=False)
    base = base_port or _previous_base_port(root) or free_port_range()
    procs = world_cli.plan(root, base, insecure=False, database_url=None)
    logs = root / "logs"
    await asyncio.to_thread(logs.mkdir, exist_ok=True)
    running: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for stage in _stages(procs):
            for proc in stage:
                running[proc.name] = _spawn(proc, logs)
            await _all_serving(config.pki_dir, stage, running, logs)
        ports = {p.name: p.port for p in procs}
        await world_cli._register(root, config.pki_dir, base, ports)
        pids = {name: child.pid for name, child in running.items()}
        world_cli._write_manifest(root, config, ports, pids)
        yield Servers(
            mode="processes started by the soak",
            root=root,
            pki_dir=config.pki_dir,
            unified_address=_unified_addresses(root),
            pids=pids,
        )
    finally:
        await asyncio.to_thread(_stop, running.values())


def _unified_addresses(root: Path) -> dict[str, str]:
    manifest = json.loads((root / "world.json").read_text())
    return {org["code"]: org["unified_address"] for org in manifest["organizations"]}


# --- a world someone else started -------------------------------------------------------------


def _listening_inodes() -> dict[int, int]:
    """socket inode → port of every TCP socket listening on this machine (Linux /proc)."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[3] == "0A":  # 0A: LISTEN
                    found[int(parts[9])] = int(parts[1].rsplit(":", 1)[1], 16)
    return found


def listening_pids(ports: dict[str, int]) -> dict[str, int]:
    """PID of the process listening on each named port (only processes we may inspect)."""
    wanted = {port: name for name, port in ports.items()}
    by_inode = {inode: port for inode, port in _listening_inodes().items() if port in wanted}
    pids: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and int(target[8:-1]) in by_inode:
                    pids[wanted[by_inode[int(target[8:-1])]]] = int(proc.name)
    return pids


def _manifest(root: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((root / "world.json").read_text())
    for name, address in manifest["addresses"].items():
        if not address.startswith(f"{LOCALHOST}:"):
            raise SoakSetupError(f"{name} is at {address}: the soak only talks to {LOCALHOST}")
    return manifest


async def world_running(root: Path) -> bool:
    """Whether ``root/world.json`` names a Sakai unified address server that is SERVING."""
    from linkage.rpc import Security
    from simulator.world_cli import _wait_serving

    if not await asyncio.to_thread((root / "world.json").exists):
        return False
    manifest = await asyncio.to_thread(_manifest, root)
    port = int(manifest["addresses"]["ua-sakai"].rsplit(":", 1)[1])
    pki = Path(manifest["pki_dir"]) if manifest["pki_dir"] else None
    try:
        await _wait_serving(Security(pki, "admin"), port, limit=1.0)
    except TimeoutError:
        return False
    return True


@contextlib.asynccontextmanager
async def running_world(
    root: Path, rows: Sequence[ResidentRow], registry_url: str | None = None
) -> AsyncIterator[Servers]:
    """A world ``linkage world up --data-dir root`` is running; it keeps running afterwards.
    ``registry_url``: the registry's database when it is not the SQLite file under ``root``."""
    root = await asyncio.to_thread(root.resolve)
    manifest = await asyncio.to_thread(_manifest, root)
    ports = {name: int(a.rsplit(":", 1)[1]) for name, a in manifest["addresses"].items()}
    # ``pids`` in world.json would be exact; until ``world up`` writes it, the listening ports
    # say which process is which.
    recorded: dict[str, int] = manifest.get("pids") or {}
    pids = recorded or await asyncio.to_thread(listening_pids, ports)
    missing = sorted(set(ports) - set(pids))
    await asyncio.to_thread(load_registry_database, root, rows, must_exist=True, url=registry_url)
    yield Servers(
        mode="running world (linkage world up)",
        root=root,
        pki_dir=Path(manifest["pki_dir"]) if manifest["pki_dir"] else None,
        unified_address=_unified_addresses(root),
        pids={name: int(pid) for name, pid in pids.items()},
        note=f"no PID found for {', '.join(missing)}" if missing else "",
    )


# --- setup: people, codes, pensions -----------------------------------------------------------


def _pension_kind(person: Person) -> common_pb2.PensionKind.ValueType:
    from linkage.v1 import common_pb2
    from simulator.population import PensionKind

    assert person.pension is not None
    return {
        PensionKind.OLD_AGE_BASIC: common_pb2.PENSION_KIND_OLD_AGE_BASIC,
        PensionKind.OLD_AGE_EMPLOYEES: common_pb2.PENSION_KIND_OLD_AGE_EMPLOYEES,
        PensionKind.SURVIVORS: common_pb2.PENSION_KIND_SURVIVORS,
        PensionKind.DISABILITY: common_pb2.PENSION_KIND_DISABILITY,
    }[person.pension.kind]


def population(residents: int, seed: int) -> tuple[list[ResidentRow], list[Person]]:
    """Registry rows for everybody, and the pensioners (the people the soak asks about)."""
    from simulator.population import generate

    people = generate(residents, seed).persons
    rows = [(p.resident_code, p.individual_number, p.municipality) for p in people]
    pensioners = [p for p in people if p.pension is not None]
    if not pensioners:
        raise SoakSetupError(f"no pensioner among {len(people)} people: raise --residents")
    return rows, pensioners


async def _register(
    stub: unified_address_pb2_grpc.UnifiedAddressServiceAsyncStub,
    prefix: str,
    people: Sequence[Person],
    org: str,
) -> None:
    """RegisterPerson for everybody, a few at a time; every one must get a linkage code."""
    from linkage.v1 import unified_address_pb2

    gate = asyncio.Semaphore(SETUP_CONCURRENCY)
    failures: Counter[str] = Counter()

    async def one(person: Person) -> None:
        async with gate:
            reply = await stub.RegisterPerson(
                unified_address_pb2.RegisterPersonRequest(
                    address_number=f"{prefix}{person.resident_code}",
                    individual_number=person.individual_number,
                ),
                timeout=30,
            )
        if reply.code_status != unified_address_pb2.CODE_STATUS_ACQUIRED:
            failures[reply.code_failure_reason or "NO_CODE"] += 1

    await asyncio.gather(*(one(person) for person in people))
    if failures:
        raise SoakSetupError(f"linkage codes not acquired at {org}: {dict(failures)}")


async def _push_pensions(
    stub: unified_address_pb2_grpc.UnifiedAddressServiceAsyncStub,
    people: Sequence[Person],
    key: str,
) -> None:
    from linkage.v1 import common_pb2, unified_address_pb2

    duplicates = [
        unified_address_pb2.AddressedDuplicate(
            address_number=f"N-{p.resident_code}",
            value=common_pb2.DuplicateValue(
                data_item=DATA_ITEM,
                effective_from=EFFECTIVE_FROM,
                content=common_pb2.DataItemContent(
                    pension_benefit=common_pb2.PensionBenefit(
                        fiscal_year=2026,
                        pension_kind=_pension_kind(p),
                        annual_amount=p.pension.annual_amount if p.pension else 0,
                        payer=PROVIDER,
                    )
                ),
            ),
            # DV support measures (自動応答不可フラグ): such answers are held for review.
            auto_response_disabled=p.auto_response_disabled,
        )
        for p in people
    ]
    for start in range(0, len(duplicates), 10_000):
        await stub.PushDuplicates(
            unified_address_pb2.PushDuplicatesRequest(
                import_id=f"soak-pensions-{key}-{start}",
                duplicates=duplicates[start : start + 10_000],
            ),
            timeout=60,
        )


async def prepare(servers: Servers, people: Sequence[Person], key: str) -> list[str]:
    """Register the pensioners at JPS and Sakai and push their pensions at JPS; returns
    Sakai's address numbers of the people to ask about. Safe to repeat on the same world."""
    import grpc

    from linkage.errors import remote_error
    from linkage.v1 import unified_address_pb2_grpc as ua_grpc

    async with servers.channel("jps", "nenkin") as jps, servers.channel("sakai", "kouki") as sakai:
        nenkin = ua_grpc.UnifiedAddressServiceStub(jps)
        try:
            await _register(nenkin, "N-", people, "jps")
            await _push_pensions(nenkin, people, key)
            await _register(ua_grpc.UnifiedAddressServiceStub(sakai), "K-", people, "sakai")
        except grpc.RpcError as error:
            failure = remote_error(error)
            raise SoakSetupError(
                f"setting the world up failed: {failure.code} {failure.reason}: {failure.message}"
            ) from None
    return [f"K-{p.resident_code}" for p in people]


# --- the load ---------------------------------------------------------------------------------


def query_fire(
    stub: unified_address_pb2_grpc.UnifiedAddressServiceAsyncStub,
    address_numbers: Sequence[str],
    run_id: str,
    tally: Tally,
    deadline: float,
) -> Fire:
    """The send of tick i: one QueryPerson with a unique id, its outcome kept in ``tally``."""
    import grpc

    from linkage.errors import remote_error
    from linkage.v1 import common_pb2, unified_address_pb2

    async def fire(tick: int, due: float) -> None:
        request = unified_address_pb2.QueryPersonRequest(
            query_id=f"soak-{run_id}-{tick}",
            procedure=PROCEDURE,
            provider=PROVIDER,
            data_items=[DATA_ITEM],
            address_number=address_numbers[tick % len(address_numbers)],
            on_date=ON_DATE,
        )
        status = error = ""
        started = time.perf_counter()
        try:
            reply = await stub.QueryPerson(request, timeout=deadline)
            name = common_pb2.QueryStatus.Name(reply.result.status).removeprefix("QUERY_STATUS_")
            if name in OK_STATUSES:
                status = name
            else:
                error = f"{name}/{reply.result.reason}" if reply.result.reason else name
        except grpc.RpcError as failure:
            remote = remote_error(failure)
            error = f"{remote.code}/{remote.reason}" if remote.reason else remote.code
        except asyncio.CancelledError:
            error = "ABANDONED"  # still running when the drain gave up on it
            raise
        except Exception as failure:  # a bug in the client is an error of the run, not a crash
            error = type(failure).__name__
        finally:
            latency = (time.perf_counter() - started) * 1000
            tally.add(Outcome(due, latency, status, error))

    return fire


@dataclass(frozen=True, slots=True)
class Settings:
    """How hard and how long to drive, and how to watch memory."""

    minutes: float
    rate: float
    max_in_flight: int
    deadline: float
    warmup_seconds: float
    sample_seconds: float

    @property
    def seconds(self) -> float:
        return self.minutes * 60


async def _ticker(tally: Tally, loop: OpenLoop, progress: Callable[[str], None]) -> None:
    """A line on stderr every minute, so a long soak shows it is alive and how it goes."""
    minute = 0
    while True:
        await asyncio.sleep(60)
        minute += 1
        done = tally.summary(tally.outcomes, len(loop.stats.slipped_ticks))
        progress(
            f"minute {minute}: sent {loop.stats.sent}, errors {done['error_count']}, "
            f"slips {done['slipped']}, in flight {loop.in_flight}, p99 {done['p99_ms']} ms"
        )


def cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds of ``pid`` (default: this process) so far; None if gone."""
    try:
        stat = Path(f"/proc/{pid or 'self'}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may contain spaces): utime and stime are 14 and 15.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_used(before: dict[str, float | None], pids: dict[str, int]) -> dict[str, float | None]:
    used: dict[str, float | None] = {}
    for name, pid in pids.items():
        start, end = before.get(name), cpu_seconds(pid)
        used[name] = None if start is None or end is None else round(end - start, 2)
    return used


@dataclass
class Run:
    """What one soak saw: the outcomes, the schedule, the RSS samples, CPU used per process."""

    tally: Tally
    loop: OpenLoop
    sampler: RssSampler
    abandoned: int
    elapsed_s: float
    cpu_s: dict[str, float | None]
    client_cpu_s: float | None
    loadavg_start: tuple[float, float, float]


async def drive(
    servers: Servers,
    address_numbers: Sequence[str],
    settings: Settings,
    progress: Callable[[str], None],
) -> Run:
    """Run the schedule with RSS sampled throughout, and CPU measured around it."""
    from linkage.v1 import unified_address_pb2_grpc

    tally = Tally(settings.seconds)
    loop = OpenLoop(settings.rate, settings.seconds, settings.max_in_flight)
    async with servers.channel("sakai", "kouki") as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        stub = unified_address_pb2_grpc.UnifiedAddressServiceStub(channel)
        fire = query_fire(stub, address_numbers, secrets.token_hex(4), tally, settings.deadline)
        sampler = RssSampler(list(servers.pids.values()), interval=settings.sample_seconds)
        cpu_before = {name: cpu_seconds(pid) for name, pid in servers.pids.items()}
        client_before, started, loadavg = cpu_seconds(), time.monotonic(), os.getloadavg()
        async with sampler:
            ticker = asyncio.create_task(_ticker(tally, loop, progress))
            try:
                await loop.run(fire)
                abandoned = await loop.drain(settings.deadline + 1)
            finally:
                ticker.cancel()
        client_after = cpu_seconds()
    tally.slips = [loop.due(tick) for tick in loop.stats.slipped_ticks]
    return Run(
        tally=tally,
        loop=loop,
        sampler=sampler,
        abandoned=abandoned,
        elapsed_s=round(time.monotonic() - started, 2),
        cpu_s=_cpu_used(cpu_before, servers.pids),
        client_cpu_s=(
            None
            if client_before is None or client_after is None
            else round(client_after - client_before, 2)
        ),
        loadavg_start=loadavg,
    )


# --- memory -----------------------------------------------------------------------------------


def _slope_per_minute(series: Sequence[tuple[float, int]]) -> float | None:
    """Least-squares slope of RSS over time, MiB per minute."""
    if len(series) < 2:
        return None
    times = [t for t, _ in series]
    mean_t = statistics.fmean(times)
    spread = sum((t - mean_t) ** 2 for t in times)
    if spread == 0:
        return None
    mean_r = statistics.fmean(r for _, r in series)
    slope = sum((t - mean_t) * (r - mean_r) for t, r in series) / spread
    return round(slope * 60 / MIB, 3)


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def _at_minute_ends(series: Sequence[tuple[float, int]], tally: Tally) -> list[float | None]:
    """RSS at the end of each minute: the last sample before it (the last minute: the last)."""
    values: list[float | None] = []
    for minute in range(tally.minutes()):
        _, end = tally.window(minute)
        last = minute == tally.minutes() - 1
        before = [rss for at, rss in series if last or at <= end]
        values.append(_mib(before[-1]) if before else None)
    return values


def _server_memory(sampler: RssSampler, pid: int, warmup: float, tally: Tally) -> dict[str, Any]:
    series = sampler.samples.get(pid, [])
    if not series:
        return {"pid": pid, "flat": False, "note": "no samples (process gone?)"}
    trend = sampler.trend(pid, warmup)
    after = [(at, rss) for at, rss in series if at >= warmup]
    result: dict[str, Any] = {
        "pid": pid,
        "start_mib": _mib(series[0][1]),
        "end_mib": _mib(series[-1][1]),
        "peak_mib": _mib(max(rss for _, rss in series)),
        "per_minute_mib": _at_minute_ends(series, tally),
        "slope_mib_per_min": _slope_per_minute(after),
    }
    if trend is None:
        return {**result, "flat": False, "note": "too few samples after warm-up to judge"}
    limit = trend.early_bytes * (1 + FLAT_RATIO) + FLAT_SLACK_BYTES
    return {
        **result,
        "after_warmup_mib": _mib(trend.early_bytes),
        "late_mib": _mib(trend.late_bytes),
        "limit_mib": _mib(limit),
        "flat": trend.late_bytes <= limit,
    }


def memory_report(
    sampler: RssSampler, pids: dict[str, int], settings: Settings, tally: Tally
) -> dict[str, Any]:
    """Per server: RSS at the start, after warm-up, per minute, at the end; slope; flat?

    Flat: the median of the last quarter of the samples after warm-up is at most 10% + 20 MiB
    over the median of their first quarter.
    """
    return {
        "interval_s": settings.sample_seconds,
        "warmup_s": settings.warmup_seconds,
        "rule": f"late ≤ after_warmup × {1 + FLAT_RATIO:g} + {FLAT_SLACK_BYTES // MIB} MiB",
        "servers": {
            name: _server_memory(sampler, pid, settings.warmup_seconds, tally)
            for name, pid in pids.items()
        },
        "samples_mib": {
            name: [[round(at, 2), _mib(rss)] for at, rss in sampler.samples.get(pid, [])]
            for name, pid in pids.items()
        },
    }


# --- the report -------------------------------------------------------------------------------


def verdict(overall: dict[str, Any], memory: dict[str, Any]) -> dict[str, Any]:
    """Pass when nothing failed, nothing slipped and every server's memory is flat."""
    growing = sorted(name for name, m in memory["servers"].items() if not m["flat"])
    reasons = []
    if overall["error_count"]:
        reasons.append(f"{overall['error_count']} errors")
    if overall["slipped"]:
        reasons.append(f"{overall['slipped']} schedule slips (rate not sustained)")
    if growing:
        reasons.append(f"memory not flat: {', '.join(growing)}")
    return {
        "pass": not reasons,
        "errors": overall["error_count"],
        "slipped": overall["slipped"],
        "memory_flat": not growing,
        "reasons": reasons,
    }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items()) or "—"


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header), *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def traffic_table(document: dict[str, Any]) -> str:
    """One line per minute and one for the whole run."""
    header = ("minute", "sent", "ok", "errors", "slips", "p50 ms", "p95 ms", "p99 ms")
    rows = [
        (
            r["minute"],
            r["sent"],
            _counts(r["ok"]),
            _counts(r["errors"]),
            r["slipped"],
            r["p50_ms"],
            r["p95_ms"],
            r["p99_ms"],
        )
        for r in [*document["minutes"], {**document["overall"], "minute": "all"}]
    ]
    return _table(header, rows)


def memory_table(document: dict[str, Any]) -> str:
    """One line per server: RSS (MiB) at the start, at each minute's end, at the end; slope;
    and the CPU seconds it used under the load."""
    minutes = len(document["minutes"])
    # At most 10 minute columns, evenly spaced, so an hour's soak still fits a terminal.
    shown = sorted(
        {round(i * (minutes - 1) / 9) for i in range(10)} if minutes > 10 else set(range(minutes))
    )
    header = (
        "server",
        "start",
        *(f"m{i + 1}" for i in shown),
        "after warm-up",
        "end",
        "peak",
        "MiB/min",
        "limit",
        "flat",
        "CPU s",
    )
    cpu = document["cpu"]["servers"]
    rows = [
        (
            name,
            m.get("start_mib"),
            *(m.get("per_minute_mib", [None] * minutes)[i] for i in shown),
            m.get("after_warmup_mib"),
            m.get("end_mib"),
            m.get("peak_mib"),
            m.get("slope_mib_per_min"),
            m.get("limit_mib"),
            "yes" if m["flat"] else "NO",
            cpu.get(name),
        )
        for name, m in document["memory"]["servers"].items()
    ]
    return _table(header, rows)


def _head(document: dict[str, Any]) -> str:
    s, world, cpu, machine = (document[k] for k in ("schedule", "world", "cpu", "machine"))
    people = document["population"]
    lines = [
        f"linkage soak: {s['minutes']:g} min at {s['rate']:g}/s against {world['mode']}, "
        f"{len(world['servers'])} process(es) watched; {people['queried']} people asked about, "
        f"{people['people']} in the registry",
        f"schedule: {s['planned']} planned, {s['sent']} sent ({s['sent_per_s']:g}/s), "
        f"{s['slipped']} slipped, {s['abandoned']} abandoned; peak {s['peak_in_flight']} in "
        f"flight (cap {s['max_in_flight']}); scheduler lag ≤ {s['max_lag_ms']:.1f} ms",
        f"machine: {machine['cpus']} CPUs, load average {machine['loadavg_start'][0]:g} → "
        f"{machine['loadavg_end'][0]:g}; the soak's client used {_cell(cpu['client'])} CPU s "
        f"of {cpu['elapsed_s']:g} s",
    ]
    if world["note"]:
        lines.append(f"note: {world['note']}")
    return "\n".join(lines)


def format_report(document: dict[str, Any]) -> str:
    """The report as text: the run, traffic per minute, memory per server, the verdict."""
    memory, v = document["memory"], document["verdict"]
    outcome = "PASS" if v["pass"] else "FAIL: " + "; ".join(v["reasons"])
    return (
        f"{_head(document)}\n\n{traffic_table(document)}\n\n"
        f"RSS MiB, sampled every {memory['interval_s']:g} s (warm-up {memory['warmup_s']:g} s; "
        f"flat: {memory['rule']}); CPU s used under the load:\n{memory_table(document)}\n\n"
        f"verdict: {outcome} ({v['errors']} errors, {v['slipped']} slips, memory "
        f"{'flat' if v['memory_flat'] else 'NOT flat'})"
    )


def build_document(
    *, servers: Servers, settings: Settings, run: Run, people: int, queried: int
) -> dict[str, Any]:
    """The whole report as one JSON-serializable document."""
    tally, stats = run.tally, run.loop.stats
    overall = tally.overall()
    memory = memory_report(run.sampler, servers.pids, settings, tally)
    return {
        "world": {
            "mode": servers.mode,
            "root": str(servers.root),
            "servers": servers.pids,
            "note": servers.note,
        },
        "population": {"people": people, "queried": queried},
        "load": {
            "procedure": PROCEDURE,
            "provider": PROVIDER,
            "data_item": DATA_ITEM,
            "requester": "bs.sakai.kouki",
            "on_date": ON_DATE,
        },
        "schedule": {
            "minutes": settings.minutes,
            "rate": settings.rate,
            "planned": stats.planned,
            "sent": stats.sent,
            "slipped": stats.slipped,
            "sent_per_s": round(stats.sent / settings.seconds, 2),
            "abandoned": run.abandoned,
            "max_in_flight": settings.max_in_flight,
            "peak_in_flight": stats.peak_in_flight,
            "max_lag_ms": round(stats.max_lag_s * 1000, 2),
            "deadline_s": settings.deadline,
        },
        "minutes": tally.rows(),
        "overall": overall,
        "memory": memory,
        # CPU seconds each process used while the load ran (elapsed_s: schedule + drain); on a
        # small machine the client's share matters too, it runs on the same cores.
        "cpu": {"elapsed_s": run.elapsed_s, "servers": run.cpu_s, "client": run.client_cpu_s},
        # Other work on the machine competes for the same cores: latency is only comparable
        # between runs with a similar load average.
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in run.loadavg_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "verdict": verdict(overall, memory),
    }


# --- command line -----------------------------------------------------------------------------


Number = TypeVar("Number", int, float)


def _positive(kind: Callable[[str], Number]) -> Callable[[str], Number]:
    """An argparse type: ``kind`` of the text, refused unless above zero."""

    def parse(text: str) -> Number:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be positive")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkage soak",
        description="Drive the world at a steady rate for a bounded time; report errors, "
        "latency and the servers' memory. Exit 0 when nothing failed and memory stayed flat.",
    )
    parser.add_argument(
        "--minutes", type=_positive(float), default=1.0, help="how long to drive; 0.2 is fine (1)"
    )
    parser.add_argument("--rate", type=_positive(float), default=20.0, help="queries/s (20)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--world",
        type=Path,
        metavar="DIR",
        help="a world run by `linkage world up --data-dir DIR`; started here as processes if "
        "none runs there (default: processes in a temporary directory)",
    )
    where.add_argument(
        "--in-process", action="store_true", help="every server in this process (one RSS)"
    )
    parser.add_argument(
        "--residents",
        type=_positive(int),
        default=300,
        help="population size (300); pensioners are asked about",
    )
    parser.add_argument("--seed", type=int, default=2026, help="population seed (2026)")
    parser.add_argument(
        "--max-in-flight",
        type=_positive(int),
        help="cap on outstanding queries; a due query past it is a slip (2 s' worth, ≥ 32)",
    )
    parser.add_argument("--deadline", type=_positive(float), default=10.0, help="per query, s (10)")
    parser.add_argument("--warmup-seconds", type=float, help="default 20%% of the run, ≤ 60")
    parser.add_argument(
        "--sample-seconds",
        type=_positive(float),
        help="RSS sampling interval, s (2; less on short runs)",
    )
    parser.add_argument("--base-port", type=int, help="first port of a world started here")
    parser.add_argument(
        "--registry-database-url",
        help="a running world's registry database, when not its SQLite file (PostgreSQL, say)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    seconds = args.minutes * 60
    return Settings(
        minutes=args.minutes,
        rate=args.rate,
        # Two seconds' worth of queries: far beyond any healthy latency, yet bounded.
        max_in_flight=args.max_in_flight or max(32, math.ceil(args.rate * 2)),
        deadline=args.deadline,
        warmup_seconds=(
            args.warmup_seconds if args.warmup_seconds is not None else min(60.0, seconds * 0.2)
        ),
        # Every few seconds; more often on a short soak so the verdict has samples to judge.
        sample_seconds=args.sample_seconds or min(2.0, max(0.25, seconds / 40)),
    )


@contextlib.asynccontextmanager
async def _world(args: argparse.Namespace, rows: Sequence[ResidentRow]) -> AsyncIterator[Servers]:
    if args.world is not None and await world_running(args.world):
        async with running_world(args.world, rows, args.registry_database_url) as servers:
            yield servers
    elif args.registry_database_url:
        raise SoakSetupError(
            "--registry-database-url is for a world already running (linkage world up "
            "--database-url): the worlds started here keep SQLite files"
        )
    elif args.world is not None:
        async with process_world(args.world, rows, base_port=args.base_port) as servers:
            yield servers
    else:
        with tempfile.TemporaryDirectory(prefix="linkage-soak-") as tmp:
            if args.in_process:
                async with in_process_world(Path(tmp), rows) as servers:
                    yield servers
            else:
                async with process_world(Path(tmp), rows, base_port=args.base_port) as servers:
                    yield servers


def _progress(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Set the world up, drive it, and build the report document."""
    settings = settings_from(args)
    rows, pensioners = population(args.residents, args.seed)
    _progress(f"population: {len(rows)} people, {len(pensioners)} pensioners")
    async with _world(args, rows) as servers:
        _progress(f"world: {servers.mode}, {len(servers.pids)} process(es) to watch")
        targets = await prepare(servers, pensioners, f"{args.seed}-{args.residents}")
        _progress(f"prepared; driving {settings.rate:g}/s for {settings.minutes:g} min")
        run = await drive(servers, targets, settings, _progress)
    return build_document(
        servers=servers, settings=settings, run=run, people=len(rows), queried=len(targets)
    )


def main(argv: list[str]) -> int:
    """``linkage soak --minutes M --rate R [--world DIR | --in-process] ...``; 0 on a pass."""
    args = _parser().parse_args(argv)
    from linkage import logs

    # In-process servers log here too: warnings only, and to stderr so --json stays parseable.
    logs.configure(level=os.environ.get("LINKAGE_LOG_LEVEL", "WARNING"))
    try:
        document = asyncio.run(soak(args))
    except SoakSetupError as error:
        print(f"linkage soak: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text if args.json else format_report(document))
    return 0 if document["verdict"]["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
