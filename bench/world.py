"""The world the benchmark measures: every system as its own ``linkage serve`` process.

Owns starting the world as ``linkage world up`` does (``simulator.world_cli.plan`` on a free
port range, mutual TLS, an SQLite file per component under a temporary directory), stopping
it, and preparing the people the measurements ask about:

- residents: the registry (the J-LIS stand-in) has no RPC to load residents; loading its
  resident file is an operator action at J-LIS. The bench does the same: it writes them into
  the registry's SQLite file (blind-indexed with the registry's own index key, where ``linkage
  serve registry`` keeps both) before the registry process starts;
- everything else over gRPC as the business systems would: ``RegisterPerson`` at JPS
  (``bs.jps.nenkin``) and Sakai (``bs.sakai.kouki``) for every person (each acquires a linkage
  code through registry → network → intermediate server), and ``PushDuplicates`` of pensions
  for the first half of them at JPS, in chunks.

Everything talks only to 127.0.0.1; every process started is stopped (SIGTERM, then kill).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc.aio

    from linkage.v1 import common_pb2
    from simulator.world_cli import Process

__all__ = [
    "DATA_ITEM",
    "ON_DATE",
    "PROCEDURE",
    "PROVIDER",
    "BenchWorld",
    "People",
    "WorldSetupError",
    "free_port_range",
    "start_world",
]

LOCALHOST = "127.0.0.1"
PROCEDURE = "table2:82"
PROVIDER = "jps"
DATA_ITEM = "pension_benefit"
ON_DATE = "2026-06-01"
PORT_SPAN = 16  # world_cli.plan uses base .. base + 10 + number of organizations
SETUP_CONCURRENCY = 16
PUSH_CHUNK = 10_000


class WorldSetupError(Exception):
    """The world could not be started or prepared; nothing was measured on it."""


@dataclass(frozen=True, slots=True)
class People:
    """The people of the run: Sakai's address numbers, and who has a pension at JPS."""

    count: int
    with_pension: int

    def address(self, index: int) -> str:
        return f"K-{index % self.count}"

    def has_pension(self, index: int) -> bool:
        return index % self.count < self.with_pension

    def individual_number(self, index: int) -> str:
        from unified_address.individual_number import complete

        return complete(f"{10_000_000_000 + index * 7_919:011d}")

    def residents(self) -> list[tuple[str, str, str]]:
        return [(f"{i + 1:011d}", self.individual_number(i), "sakai") for i in range(self.count)]


@dataclass
class BenchWorld:
    """A running world of processes: where things are, and their PIDs."""

    root: Path
    pki_dir: Path
    addresses: dict[str, str]  # process name → host:port
    pids: dict[str, int]  # process name → PID
    _children: list[subprocess.Popen[bytes]]
    sakai_unified: dict[int, str] = field(default_factory=dict)  # person → Sakai's number

    def channel(self, identity: str, process: str) -> grpc.aio.Channel:
        """A channel to ``process`` presenting ``identity`` (a business system, say)."""
        from linkage.rpc import Security

        return Security(self.pki_dir, identity).channel(self.addresses[process])

    def url(self, component: str) -> str:
        """The SQLite database of a component (``network``, ``platform-jps``, ``ua-sakai``)."""
        from linkage import db

        return db.sqlite_url(self.root / f"{component}.sqlite")

    def stop(self) -> None:
        """SIGTERM every process (they drain in-flight calls), then kill what would not stop."""
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self._children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


# --- processes ---------------------------------------------------------------------------------


def free_port_range(span: int = PORT_SPAN, attempts: int = 50) -> int:
    """A base port such that ``base .. base + span - 1`` are free on 127.0.0.1 right now."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20_000, 40_000)
        if all(_port_free(port) for port in range(base, base + span)):
            return base
    raise WorldSetupError(f"no {span} free consecutive ports on {LOCALHOST}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOCALHOST, port))
        except OSError:
            return False
        return True


def _stages(procs: Sequence[Process]) -> list[list[Process]]:
    """Network; then registry and platforms; then unified address servers (each stage in
    parallel once the one before is serving)."""
    first = [p for p in procs if p.name == "network"]
    second = [p for p in procs if p.name == "registry" or p.name.startswith("platform-")]
    return [first, second, [p for p in procs if p not in first and p not in second]]


async def _serving(pki_dir: Path, proc: Process, child: subprocess.Popen[bytes]) -> None:
    """Wait until ``proc`` is SERVING; fail at once if it died instead."""
    from linkage.rpc import Security
    from simulator.world_cli import _wait_serving

    waiting = asyncio.create_task(_wait_serving(Security(pki_dir, "admin"), proc.port, 60.0))
    try:
        while not waiting.done():
            if child.poll() is not None:
                raise WorldSetupError(f"{proc.name} exited with {child.returncode}")
            await asyncio.wait({waiting}, timeout=0.2)
        waiting.result()
    finally:
        waiting.cancel()


def _load_registry(root: Path, rows: Sequence[tuple[str, str, str]]) -> None:
    """Residents into the registry's SQLite file, where ``linkage serve registry`` finds it."""
    from linkage import db
    from linkage.atrest import DataKey
    from linkage.keys import private_dir
    from simulator.registry import residents
    from simulator.registry.app import INDEX_KEY_FILE

    url = db.sqlite_url(root / "registry.sqlite")
    db.migrate(url)
    index = DataKey.load_or_create(private_dir(root / "keys" / "registry") / INDEX_KEY_FILE)
    engine = db.make_engine(url)
    try:
        residents.load_residents(db.session_factory(engine), index, rows)
    finally:
        engine.dispose()


async def _start_processes(root: Path, people: People) -> BenchWorld:
    from simulator import world_cli
    from simulator.world import WorldConfig, init_pki

    config = WorldConfig(root=root)
    await asyncio.to_thread(init_pki, config)
    await asyncio.to_thread(_load_registry, root, people.residents())
    base = free_port_range()
    procs = world_cli.plan(root, base, insecure=False, database_url=None)
    logs = root / "logs"
    await asyncio.to_thread(logs.mkdir, exist_ok=True)
    assert config.pki_dir is not None
    world = BenchWorld(root, config.pki_dir, {}, {}, [])
    try:
        for stage in _stages(procs):
            started = {}
            for proc in stage:
                started[proc.name] = child = world_cli._spawn(proc, logs)
                world._children.append(child)
                world.pids[proc.name] = child.pid
                world.addresses[proc.name] = f"{LOCALHOST}:{proc.port}"
            await _all_serving(config.pki_dir, stage, started)
        ports = {p.name: p.port for p in procs}
        await world_cli._register(root, config.pki_dir, base, ports)
        world_cli._write_manifest(root, config, ports, dict(world.pids))
    except BaseException:
        await asyncio.to_thread(world.stop)
        raise
    return world


async def _all_serving(
    pki_dir: Path, stage: Sequence[Process], started: dict[str, subprocess.Popen[bytes]]
) -> None:
    try:
        async with asyncio.TaskGroup() as group:
            for proc in stage:
                group.create_task(_serving(pki_dir, proc, started[proc.name]))
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None


# --- people, codes, pensions -------------------------------------------------------------------


def _pension(people: People, index: int) -> Any:
    from linkage.v1 import common_pb2, unified_address_pb2

    return unified_address_pb2.AddressedDuplicate(
        address_number=f"N-{index}",
        value=common_pb2.DuplicateValue(
            data_item=DATA_ITEM,
            effective_from="2026-04-01",
            content=common_pb2.DataItemContent(
                pension_benefit=common_pb2.PensionBenefit(
                    fiscal_year=2026,
                    pension_kind=_kind(index),
                    annual_amount=600_000 + index,
                    payer=PROVIDER,
                )
            ),
        ),
    )


def _kind(index: int) -> common_pb2.PensionKind.ValueType:
    from linkage.v1 import common_pb2

    kinds = (common_pb2.PENSION_KIND_OLD_AGE_BASIC, common_pb2.PENSION_KIND_OLD_AGE_EMPLOYEES)
    return kinds[index % 2]


async def _register(
    world: BenchWorld, org: str, system: str, prefix: str, people: People
) -> dict[int, str]:
    """RegisterPerson for everybody, a few at a time; every one must acquire a linkage code.
    Returns each person's unified number at ``org``."""
    from linkage.v1 import unified_address_pb2, unified_address_pb2_grpc

    gate = asyncio.Semaphore(SETUP_CONCURRENCY)
    failures: Counter[str] = Counter()
    unified: dict[int, str] = {}
    async with world.channel(f"bs.{org}.{system}", f"ua-{org}") as channel:
        stub = unified_address_pb2_grpc.UnifiedAddressServiceStub(channel)

        async def one(index: int) -> None:
            request = unified_address_pb2.RegisterPersonRequest(
                address_number=f"{prefix}{index}",
                individual_number=people.individual_number(index),
            )
            async with gate:
                reply = await stub.RegisterPerson(request, timeout=60)
            unified[index] = reply.unified_number
            if reply.code_status != unified_address_pb2.CODE_STATUS_ACQUIRED:
                failures[reply.code_failure_reason or "NO_CODE"] += 1

        await asyncio.gather(*(one(index) for index in range(people.count)))
    if failures:
        raise WorldSetupError(f"linkage codes not acquired at {org}: {dict(failures)}")
    return unified


async def _push_pensions(world: BenchWorld, people: People) -> None:
    from linkage.v1 import unified_address_pb2, unified_address_pb2_grpc

    rows = [_pension(people, index) for index in range(people.with_pension)]
    async with world.channel("bs.jps.nenkin", "ua-jps") as channel:
        stub = unified_address_pb2_grpc.UnifiedAddressServiceStub(channel)
        for start in range(0, len(rows), PUSH_CHUNK):
            await stub.PushDuplicates(
                unified_address_pb2.PushDuplicatesRequest(
                    import_id=f"bench-pensions-{start}", duplicates=rows[start : start + PUSH_CHUNK]
                ),
                timeout=120,
            )


@contextlib.asynccontextmanager
async def start_world(root: Path, people: People) -> AsyncIterator[BenchWorld]:
    """The world as processes in ``root``, with ``people`` registered at JPS and Sakai and the
    pensions of the first ``people.with_pension`` pushed at JPS; stopped on exit."""
    root = await asyncio.to_thread(root.resolve)
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    world = await _start_processes(root, people)
    try:

        async def provider_side() -> None:
            await _register(world, "jps", "nenkin", "N-", people)
            await _push_pensions(world, people)

        _, world.sakai_unified = await asyncio.gather(
            provider_side(), _register(world, "sakai", "kouki", "K-", people)
        )
        yield world
    finally:
        await asyncio.to_thread(world.stop)
