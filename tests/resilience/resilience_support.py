"""Helpers of the resilience tests: process worlds on either backend, people, batches, checks.

A test here starts real ``linkage serve`` processes (``simulator.world_cli.ProcessWorld``) on an
SQLite file or a PostgreSQL schema per component, acts as the unified address servers itself
(``ua.<code>``: processing serials from the registry, linkage codes and duplicates at the
platform, batch queries) so that it chooses the unified numbers, and checks what must hold
after any fault: every ledger verifies, nothing was provided twice, nothing half imported.
Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from sqlalchemy import Engine, create_engine, text

from linkage import db
from linkage.keys import KeyRing
from linkage.records.verify import VerifyReport, ledger_ids, verify
from linkage.rpc import Security
from linkage.v1 import (
    common_pb2,
    intermediate_server_pb2,
    intermediate_server_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from simulator.world import PENSION_SERVICE, SAKAI, OrganizationSpec, WorldConfig, init_pki
from simulator.world_cli import ProcessWorld, Replicas, plan, port_span
from unified_address.individual_number import complete

POSTGRES_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ORGS: tuple[OrganizationSpec, ...] = (SAKAI, PENSION_SERVICE)
PROCEDURE = "table2:82"
ITEM = "pension_benefit"
ON_DATE = "2026-06-01"
CALL_TIMEOUT = 30.0
SETUP_CONCURRENCY = 16
QS = common_pb2.QueryStatus
T = TypeVar("T")


def postgres_reachable() -> bool:
    """Whether the PostgreSQL of the test suite answers on 127.0.0.1:5432."""
    engine = create_engine(POSTGRES_BASE, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


@dataclass
class Backend:
    """Where the components of one test keep their data: SQLite files or PostgreSQL schemas."""

    name: str
    root: Path
    prefix: str = field(default_factory=lambda: f"r{uuid.uuid4().hex[:8]}_")
    schemas: list[str] = field(default_factory=list)
    host_port: str = "127.0.0.1:5432"  # a proxy in front of PostgreSQL changes it

    @property
    def template(self) -> str | None:
        """The ``--database-url`` template of ``world_cli.plan`` (None: SQLite files)."""
        if self.name == "sqlite":
            return None
        return self.url("{component}")

    def url(self, component: str) -> str:
        if self.name == "sqlite":
            return db.sqlite_url(self.root / f"{component}.sqlite")
        # A quoted schema name: component names have hyphens (platform-municipal).
        schema = f"{self.prefix}{component}"
        return f"postgresql+psycopg://postgres@{self.host_port}/test?options=-csearch_path%3D%22{schema}%22"

    def direct_url(self, component: str) -> str:
        """The URL without any proxy: what the test itself reads through."""
        return self.url(component).replace(self.host_port, "127.0.0.1:5432")

    def create(self, components: Sequence[str]) -> None:
        """Create the PostgreSQL schemas (SQLite files appear by themselves)."""
        if self.name == "sqlite":
            return
        engine = create_engine(POSTGRES_BASE)
        try:
            with engine.begin() as connection:
                for component in components:
                    schema = f"{self.prefix}{component}"
                    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                    self.schemas.append(schema)
        finally:
            engine.dispose()

    def drop(self) -> None:
        if not self.schemas:
            return
        engine = create_engine(POSTGRES_BASE)
        try:
            with engine.begin() as connection:
                for schema in self.schemas:
                    connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            engine.dispose()

    @contextlib.contextmanager
    def engine(self, component: str) -> Iterator[Engine]:
        engine = db.make_engine(self.direct_url(component))
        try:
            yield engine
        finally:
            engine.dispose()


def free_base_port(span: int) -> int:
    from bench.soak import free_port_range

    return free_port_range(span)


@contextlib.asynccontextmanager
async def process_world(
    backend: Backend,
    *,
    organizations: Sequence[OrganizationSpec] = ORGS,
    replicas: Replicas = 1,
    extra_args: dict[str, list[str]] | None = None,
    base_port: int | None = None,
) -> AsyncIterator[ProcessWorld]:
    """The world of ``organizations`` as processes (no unified address servers), started and
    registered; every process is stopped afterwards. The network listens on ``base_port``
    (default: a free range), so a proxy can be put in front of it before the world starts."""
    root = backend.root
    config = WorldConfig(root=root, organizations=organizations)
    await asyncio.to_thread(init_pki, config)
    base = base_port or free_base_port(port_span(organizations, replicas))
    procs = plan(
        root,
        base,
        False,
        backend.template,
        organizations=organizations,
        replicas=replicas,
        unified_address=False,
        extra_args=extra_args,
    )
    await asyncio.to_thread(backend.create, sorted({p.component for p in procs}))
    async with ProcessWorld(root, procs, config.pki_dir) as world:
        await world.start()
        await world.register(organizations)
        yield world


# --- acting as the unified address servers ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    """A resident known to the requester and the provider under unified numbers we choose."""

    resident_code: str
    individual_number: str

    def number_at(self, org: str) -> str:
        return f"U-{org}-{self.resident_code}"


def people(count: int, offset: int = 0) -> list[Person]:
    """``count`` residents (resident codes and individual numbers made from ``offset`` on)."""
    first = offset
    return [
        Person(f"{70_000_000_000 + n:011d}", complete(f"{40_000_000_000 + n:011d}"))
        for n in range(first, first + count)
    ]


def load_residents(
    backend: Backend, persons: Sequence[Person], municipality: str = "sakai"
) -> None:
    """The registry's resident file (an operator action at J-LIS, straight into its database)."""
    from linkage.atrest import DataKey
    from linkage.keys import private_dir
    from simulator.registry import residents
    from simulator.registry.app import INDEX_KEY_FILE

    index = DataKey.load_or_create(private_dir(backend.root / "keys" / "registry") / INDEX_KEY_FILE)
    with backend.engine("registry") as engine:
        rows = [(p.resident_code, p.individual_number, municipality) for p in persons]
        residents.load_residents(db.session_factory(engine), index, rows)


class UnifiedAddress:
    """The test in the role of ``ua.<org>``: stubs to the registry and the platform replicas."""

    def __init__(self, world: ProcessWorld, org: str, platform_target: str) -> None:
        security = Security(world.pki_dir, f"ua.{org}")
        self.org = org
        self.parent = f"organizations/{org}"
        self._channels = [
            security.channel(world.address("registry")),
            security.channel(platform_target),
        ]
        self.registry = registry_pb2_grpc.ResidentRegistryServiceStub(self._channels[0])
        self.platform = intermediate_server_pb2_grpc.IntermediateServerServiceStub(
            self._channels[1]
        )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)

    async def acquire_codes(self, persons: Sequence[Person]) -> None:
        """Each person gets a linkage code here (processing serial, then AcquireLinkageCode)."""
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def one(person: Person) -> None:
            async with gate:
                serial = await self.registry.IssueProcessingSerial(
                    registry_pb2.IssueProcessingSerialRequest(
                        organization=self.org, individual_number=person.individual_number
                    ),
                    timeout=CALL_TIMEOUT,
                )
                await self.platform.AcquireLinkageCode(
                    intermediate_server_pb2.AcquireLinkageCodeRequest(
                        parent=self.parent,
                        unified_number=person.number_at(self.org),
                        processing_serial=serial.processing_serial,
                    ),
                    timeout=CALL_TIMEOUT,
                )

        await asyncio.gather(*(one(person) for person in persons))

    def import_requests(
        self, import_id: str, persons: Sequence[Person], chunk: int = 1000, held: int = 0
    ) -> list[intermediate_server_pb2.ImportDuplicatesRequest]:
        """An import of each person's pension, in chunks; the first ``held`` are flagged
        auto-response-disabled (their answers wait for review)."""
        records = [
            intermediate_server_pb2.DuplicateRecord(
                unified_number=person.number_at(self.org),
                value=pension(index),
                auto_response_disabled=index < held,
            )
            for index, person in enumerate(persons)
        ]
        return [
            intermediate_server_pb2.ImportDuplicatesRequest(
                parent=self.parent,
                import_id=import_id,
                business_system="nenkin",
                records=records[start : start + chunk],
            )
            for start in range(0, len(records), chunk)
        ]

    async def import_pensions(
        self, import_id: str, persons: Sequence[Person], held: int = 0
    ) -> intermediate_server_pb2.ImportDuplicatesResponse:
        requests = self.import_requests(import_id, persons, held=held)
        return await self.platform.ImportDuplicates(iter(requests), timeout=CALL_TIMEOUT)

    def specs(
        self, persons: Sequence[Person], provider: str, run: str
    ) -> list[intermediate_server_pb2.QuerySpec]:
        return [
            intermediate_server_pb2.QuerySpec(
                query_id=f"{run}-{index}",
                requester_capacity="municipality",
                procedure=PROCEDURE,
                provider=provider,
                data_items=[ITEM],
                unified_number=person.number_at(self.org),
                on_date=ON_DATE,
                business_system="kouki",
            )
            for index, person in enumerate(persons)
        ]

    async def stream(
        self, specs: Sequence[intermediate_server_pb2.QuerySpec], chunk: int = 50
    ) -> dict[str, intermediate_server_pb2.QueryResult]:
        """A batch query (StreamQueries): every spec's last reported result, by query id."""
        requests = [
            intermediate_server_pb2.StreamQueriesRequest(
                parent=self.parent, queries=specs[start : start + chunk]
            )
            for start in range(0, len(specs), chunk)
        ]
        results: dict[str, intermediate_server_pb2.QueryResult] = {}
        call = self.platform.StreamQueries(iter(requests), timeout=CALL_TIMEOUT + 30)
        async for reply in call:
            for result in reply.results:
                results[result.query_id] = result
        return results


async def prepare(
    world: ProcessWorld, backend: Backend, count: int, held: int = 0
) -> tuple[UnifiedAddress, UnifiedAddress]:
    """Sakai and JPS (as their unified address servers) know ``count`` people; JPS holds a
    pension for each, the first ``held`` flagged auto-response-disabled. Returns (sakai, jps);
    close them."""
    persons = people(count)
    await asyncio.to_thread(load_residents, backend, persons)
    sakai = UnifiedAddress(world, "sakai", world.address("platform-municipal"))
    jps = UnifiedAddress(world, "jps", world.address("platform-jps"))
    await asyncio.gather(sakai.acquire_codes(persons), jps.acquire_codes(persons))
    await jps.import_pensions("pensions-2026", persons, held=held)
    return sakai, jps


@dataclass
class PacedStream:
    """StreamQueries, one message at a time: message k+1 leaves once every query of message k
    has a result (so each message is its own network call). After ``pause_after`` messages it
    sets ``paused`` and waits for ``resume`` (a test kills a platform meanwhile)."""

    ua: UnifiedAddress
    specs: Sequence[intermediate_server_pb2.QuerySpec]
    per_message: int
    pause_after: int | None = None
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    results: dict[str, intermediate_server_pb2.QueryResult] = field(default_factory=dict)
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def _requests(self) -> AsyncIterator[intermediate_server_pb2.StreamQueriesRequest]:
        for k, start in enumerate(range(0, len(self.specs), self.per_message)):
            if k == self.pause_after:
                self.paused.set()
                await self.resume.wait()
            message = self.specs[start : start + self.per_message]
            yield intermediate_server_pb2.StreamQueriesRequest(
                parent=self.ua.parent, queries=message
            )
            while not {spec.query_id for spec in message} <= self.results.keys():
                self._progress.clear()
                await self._progress.wait()

    async def run(self) -> grpc.aio.AioRpcError | None:
        """The whole stream; the error that ended it, if any (results are in ``results``)."""
        call = self.ua.platform.StreamQueries(self._requests(), timeout=120)
        try:
            async for reply in call:
                for result in reply.results:
                    self.results[result.query_id] = result
                self._progress.set()
        except grpc.aio.AioRpcError as error:
            return error
        return None


def pension(index: int) -> common_pb2.DuplicateValue:
    return common_pb2.DuplicateValue(
        data_item=ITEM,
        effective_from="2026-04-01",
        content=common_pb2.DataItemContent(
            pension_benefit=common_pb2.PensionBenefit(
                fiscal_year=2026,
                pension_kind=common_pb2.PENSION_KIND_OLD_AGE_BASIC,
                annual_amount=600_000 + index,
                payer="jps",
            )
        ),
    )


async def retrying(
    call: Callable[[], Awaitable[T]], *, limit: float = 30.0, first: float = 0.1
) -> tuple[T, int]:
    """``call()`` again while it fails with UNAVAILABLE, backing off exponentially (x2 from
    ``first``, at most 2 s between tries) for up to ``limit`` seconds; the result and how many
    tries failed. What a careful client does while a dependency comes back."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    delay = first
    failures = 0
    while True:
        try:
            return await call(), failures
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or loop.time() + delay > deadline:
                raise
        failures += 1
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def summary(results: dict[str, intermediate_server_pb2.QueryResult]) -> Counter[str]:
    """How many results of each status (and reason): ``PROVIDED``, ``FAILED/REASON``..."""
    return Counter(
        f"{status_name(r.status)}/{r.reason}" if r.reason else status_name(r.status)
        for r in results.values()
    )


def status_name(status: int) -> str:
    return QS.Name(status).removeprefix("QUERY_STATUS_")  # type: ignore[arg-type]


def is_unavailable(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAVAILABLE


# --- what must hold after any fault ----------------------------------------------------------


def platform_verify_keys(root: Path, platform: str) -> dict[str, Any]:
    """The keys a platform signs its ledgers' checkpoints with."""
    ring = KeyRing.load(root / "keys" / f"platform-{platform}" / "keys", f"platform-{platform}")
    return {key.key_id: key.signing_key.verify_key for key in ring.keys}


def verify_ledgers(
    backend: Backend, component: str, keys: dict[str, Any] | None
) -> list[VerifyReport]:
    """Every ledger of one component's database, verified (chain, checkpoints, head)."""
    with backend.engine(component) as engine:
        return [verify(engine, ledger, keys, workers=1) for ledger in ledger_ids(engine)]


def broken_ledgers(backend: Backend, platforms: Sequence[str]) -> list[str]:
    """What does not verify in the network's and each platform's ledgers ([] when all do)."""
    problems: list[str] = []
    reports = verify_ledgers(backend, "network", None)
    for platform in platforms:
        keys = platform_verify_keys(backend.root, platform)
        reports += verify_ledgers(backend, f"platform-{platform}", keys)
    problems += [report.describe() for report in reports if not report.ok]
    if not reports:
        problems.append("no ledger at all")
    return problems


def scalar_rows(backend: Backend, component: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with backend.engine(component) as engine, engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql), params)]


def provided_twice(backend: Backend, provider: str) -> list[tuple[Any, ...]]:
    """Query ids the provider's ledger shows PROVIDED more than once."""
    return scalar_rows(
        backend,
        f"platform-{provider}",
        "SELECT query_id, count(*) FROM access_records WHERE ledger = :ledger "
        "AND event = 'PROVIDED' GROUP BY query_id HAVING count(*) > 1",
        ledger=f"server:{provider}",
    )


def provided_count(backend: Backend, provider: str, prefix: str) -> int:
    (count,) = scalar_rows(
        backend,
        f"platform-{provider}",
        "SELECT count(*) FROM access_records WHERE ledger = :ledger AND event = 'PROVIDED' "
        "AND query_id LIKE :prefix",
        ledger=f"server:{provider}",
        prefix=f"{prefix}%",
    )[0]
    return int(count)


def permits_per_query(backend: Backend, requester: str, prefix: str) -> dict[str, int]:
    """How many dispositions the network holds per query id of ``requester``."""
    rows = scalar_rows(
        backend,
        "network",
        "SELECT query_id, count(*) FROM network_permits WHERE requester = :requester "
        "AND query_id LIKE :prefix GROUP BY query_id",
        requester=requester,
        prefix=f"{prefix}%",
    )
    return {str(query_id): int(count) for query_id, count in rows}


def stored_statuses(
    backend: Backend, tenant: str, platform: str, prefix: str
) -> dict[str, tuple[str, str]]:
    """Each stored query of ``tenant`` at its platform: (status name, reason)."""
    rows = scalar_rows(
        backend,
        f"platform-{platform}",
        "SELECT query_id, status, reason FROM server_queries WHERE tenant = :tenant "
        "AND query_id LIKE :prefix",
        tenant=tenant,
        prefix=f"{prefix}%",
    )
    return {str(qid): (status_name(int(status)), str(reason)) for qid, status, reason in rows}
