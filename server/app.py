"""Starting and stopping an intermediate server platform: ``Config``, ``start(config) -> App``.

Owns the wiring of one platform process (中間サーバー・プラットフォーム) hosting many tenant
organizations: the database, each tenant's key ring and data key under ``data_dir/keys``, the
platform's record-checkpoint key, the permission list copy, one network channel per tenant (as
``org.<code>``), the domain objects, the gRPC server (``platform.<name>``) with health and
reflection (intermediate server, inbound, staff, review and system management services), and
the background jobs (purge of expired data, redelivery of late answers, retention of the
tenants' access records, the database probe behind the health status). ``App`` also hands the
world harness and tests what they need without gRPC: each tenant's public keys, the domain
handles, and the operator's way to create a staff account (``create_staff_account``).

Must never: start serving before schema and keys are ready, or keep state another replica would
need only in memory (queries, results, keys, nonces, the review queue and staff sessions are in
the database; keys in the shared data directory).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from linkage import db
from linkage.health import DATABASE_PROBE_INTERVAL, DatabaseHealth
from linkage.keys import KeyRing, PublicKeys, private_dir
from linkage.logs import get_logger
from linkage.records.ledger import Ledger
from linkage.records.retention import (
    DEFAULT_RETENTION,
    DEFAULT_RETENTION_INTERVAL,
    RetentionJob,
)
from linkage.rpc import RunningServer, Security, start_server
from linkage.v1 import (
    inbound_pb2,
    inbound_pb2_grpc,
    intermediate_server_pb2,
    review_pb2,
    review_pb2_grpc,
    staff_pb2,
    staff_pb2_grpc,
    system_management_pb2,
    system_management_pb2_grpc,
)
from linkage.v1 import intermediate_server_pb2_grpc as isg
from permission_list import PermissionList
from server.codes import CodeManager
from server.directory import Directory
from server.disclosure import NetworkRecords, PersonDisclosure
from server.duplicates import DuplicateStore
from server.network_client import GrpcNetwork
from server.ports import NetworkPort, system_clock
from server.provision import Provider
from server.queries import Requester
from server.querykeys import QueryKeys
from server.records import Recorder, ledger_of
from server.retention import PurgeReport, Retention
from server.review import Review
from server.service_inbound import InboundServicer
from server.service_intermediate import Domain, IntermediateServerServicer
from server.service_review import ReviewServicer
from server.service_staff import StaffServicer
from server.service_system import SystemManagementServicer
from server.staff import Role, Staff, StaffSettings
from server.system import SystemManagement
from server.tenancy import TenantConfig, Tenants

log = get_logger(__name__)

INTERMEDIATE_SERVICE = intermediate_server_pb2.DESCRIPTOR.services_by_name[
    "IntermediateServerService"
].full_name
INBOUND_SERVICE = inbound_pb2.DESCRIPTOR.services_by_name["InboundService"].full_name
STAFF_SERVICE = staff_pb2.DESCRIPTOR.services_by_name["StaffService"].full_name
REVIEW_SERVICE = review_pb2.DESCRIPTOR.services_by_name["ReviewService"].full_name
SYSTEM_SERVICE = system_management_pb2.DESCRIPTOR.services_by_name[
    "SystemManagementService"
].full_name
RESEND_MARGIN = timedelta(seconds=5)
"""How much longer than ``network_timeout`` a query stays IN_FLIGHT before it is resent."""


@dataclass
class Config:
    """Everything one platform process needs.

    ``security`` is the platform's server identity (``platform.<name>``); its ``pki_dir`` also
    holds each tenant's ``org.<code>`` certificate for calling the network. ``result_retention``
    is how long a query result is kept; ``query_key_ttl`` how long a query key is used before
    rotation (it can still open answers for ``result_retention`` more, the longest a held
    answer is worth waiting for). ``duplicate_retention`` keeps ended or replaced duplicate
    versions that long before the purge deletes them. ``migrate`` runs the Alembic migrations
    at start-up (tests that create tables themselves turn it off). ``network`` replaces the
    gRPC network client (tests with a fake network). ``staff`` sets session lifetimes, the
    sign-in lockout and the password hash cost.

    ``resend_after``: a query still IN_FLIGHT that long after it was sent is sent again when
    it is asked for (its sender died: a replica, or this process before a restart). Sending
    again is safe, since the network answers a repeated query id with its stored disposition
    and answer and never routes it twice, but not earlier than ``network_timeout``: a sender
    still waiting for the network would lose its answer to the resend's not-yet-answered copy.
    None: ``network_timeout`` plus ``RESEND_MARGIN``. ``database_connect_timeout`` bounds a
    PostgreSQL connection attempt (seconds; a ``connect_timeout`` in the URL wins);
    ``database_probe_interval`` is how often the health status is brought in line with the
    database (``linkage.health.DatabaseHealth``). ``records_retention`` is how long access
    records are kept (seven years) and ``records_retention_interval`` how often the expired
    ones are purged behind a signed anchor (``linkage.records.retention.RetentionJob``).
    """

    platform: str
    database_url: str
    security: Security
    data_dir: Path
    network_address: str
    tenants: list[TenantConfig]
    result_retention: timedelta = timedelta(hours=24)
    query_key_ttl: timedelta = timedelta(hours=1)
    purge_interval: timedelta = timedelta(minutes=10)
    duplicate_retention: timedelta = timedelta(days=366)
    redelivery_interval: timedelta = timedelta(seconds=30)
    host: str = "127.0.0.1"
    port: int = 0
    network_timeout: float = 30.0
    query_chunk_size: int = 500
    query_chunks_in_flight: int = 4
    permission_list: PermissionList | None = None
    migrate: bool = True
    clock: Callable[[], datetime] = system_clock
    network: NetworkPort | None = None
    staff: StaffSettings = field(default_factory=StaffSettings)
    resend_after: timedelta | None = None
    database_connect_timeout: int | None = db.DEFAULT_CONNECT_TIMEOUT
    database_probe_interval: float = DATABASE_PROBE_INTERVAL
    records_retention: timedelta = DEFAULT_RETENTION
    records_retention_interval: timedelta = DEFAULT_RETENTION_INTERVAL

    def resend_delay(self) -> timedelta:
        """``resend_after``, or its default; ValueError when it is not above the timeout."""
        timeout = timedelta(seconds=self.network_timeout)
        delay = self.resend_after if self.resend_after is not None else timeout + RESEND_MARGIN
        if delay <= timeout:
            raise ValueError(
                f"resend_after ({delay.total_seconds():g} s) must exceed network_timeout "
                f"({self.network_timeout:g} s): a query would be resent while its sender waits"
            )
        return delay


class App:
    """A running platform and its domain handles."""

    def __init__(
        self,
        *,
        config: Config,
        server: RunningServer,
        engine: Engine,
        sessions: sessionmaker[Session],
        tenants: Tenants,
        network: NetworkPort,
        grpc_network: GrpcNetwork | None,
        domain: Domain,
        provider: Provider,
        review: Review,
        retention: Retention,
        query_keys: QueryKeys,
        directory: Directory,
        staff: Staff,
        system: SystemManagement,
        jobs: list[asyncio.Task[None]],
        records_retention: RetentionJob,
        database_health: DatabaseHealth,
        probe_engine: Engine,
    ) -> None:
        self.config = config
        self.server = server
        self.engine = engine
        self.sessions = sessions
        self.tenants = tenants
        self.network = network
        self.codes = domain.codes
        self.duplicates = domain.duplicates
        self.requester = domain.requester
        self.provider = provider
        self.review = review
        self.retention = retention
        self.query_keys = query_keys
        self.directory = directory
        self.staff = staff
        self.system = system
        self._grpc_network = grpc_network
        self._jobs = jobs
        self.records_retention = records_retention
        self.database_health = database_health
        self._probe_engine = probe_engine

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.server.port}"

    def tenant_public_keys(self, code: str) -> list[PublicKeys]:
        """The tenant's signing keys (current first) to register it in the network directory."""
        return self.tenants.get(code).public_keys()

    async def purge_expired(self, now: datetime | None = None) -> PurgeReport:
        """Run the purge job now (it also runs every ``purge_interval``)."""
        moment = now if now is not None else self.config.clock()
        return await asyncio.to_thread(self.retention.purge_expired, moment)

    async def create_staff_account(
        self,
        tenant: str,
        username: str,
        password: str,
        roles: Iterable[str | Role],
        *,
        must_change: bool = True,
    ) -> str:
        """Create a staff account as the platform operator (bootstrap, world harness, demo).

        ``roles`` by name ("OPERATOR", "REVIEWER", "ADMINISTRATOR"). The account's holder must
        change ``password`` at first sign-in unless ``must_change`` is False. Recorded in the
        tenant's ledger (actor SYSTEM ``operator``). Returns ``organizations/{code}/staff/{name}``;
        raises ``AlreadyExists`` for a taken user name, ``InvalidArgument`` for a bad one, a weak
        password or an unknown role, ``NotFound`` for a tenant not hosted here.
        """
        code = self.tenants.get(tenant).code
        return await asyncio.to_thread(
            self.staff.add_account, code, username, password, roles, must_change=must_change
        )

    async def close(self, grace: float = 2.0) -> None:
        """Stop serving (in-flight calls finish within ``grace``), then release resources."""
        await self.database_health.stop()
        for job in self._jobs:
            job.cancel()
        for job in self._jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job
        await self.records_retention.stop()
        await self.server.stop(grace)
        await self.requester.close()
        if self._grpc_network is not None:
            await self._grpc_network.close()
        self.engine.dispose()
        self._probe_engine.dispose()


async def start(config: Config) -> App:
    """Prepare schema and keys, wire the domain, and start serving."""
    if not config.tenants:
        raise ValueError("a platform hosts at least one tenant")
    resend_after = config.resend_delay()
    if config.migrate:
        await asyncio.to_thread(db.migrate, config.database_url)
    key_dir = private_dir(config.data_dir) / "keys"
    tenants = await asyncio.to_thread(Tenants.load, config.tenants, key_dir)
    records_ring = await asyncio.to_thread(_records_ring, config, key_dir)
    ledger = Ledger(
        records_ring.current.signing_key, records_ring.current.key_id, clock=config.clock
    )
    permissions = config.permission_list
    if permissions is None:
        permissions = await asyncio.to_thread(_default_permission_list)
    engine = db.make_engine(config.database_url, connect_timeout=config.database_connect_timeout)
    sessions = db.session_factory(engine)
    grpc_network: GrpcNetwork | None = None
    network: NetworkPort
    if config.network is not None:
        network = config.network
    else:
        grpc_network = GrpcNetwork(
            config.security.pki_dir,
            config.network_address,
            tenants.codes(),
            timeout=config.network_timeout,
        )
        network = grpc_network
    clock = config.clock
    recorder = Recorder(ledger)
    directory = Directory(network, clock)
    keys = QueryKeys(
        sessions, tenants, clock, ttl=config.query_key_ttl, hold=config.result_retention
    )
    requester = Requester(
        sessions,
        tenants,
        network,
        directory,
        keys,
        recorder,
        clock,
        retention=config.result_retention,
        chunk_size=config.query_chunk_size,
        max_in_flight=config.query_chunks_in_flight,
        resend_after=resend_after,
    )
    domain = Domain(
        tenants=tenants,
        codes=CodeManager(sessions, network, recorder, clock),
        duplicates=DuplicateStore(sessions, recorder, clock),
        requester=requester,
        sessions=sessions,
        recorder=recorder,
        clock=clock,
    )
    provider = Provider(sessions, tenants, directory, permissions, recorder, clock)
    review = Review(sessions, tenants, network, recorder, clock)
    staff = Staff(sessions, recorder, clock, config.staff)
    retention = Retention(
        sessions, keys, duplicate_retention=config.duplicate_retention, staff=staff
    )
    system = SystemManagement(sessions, retention, clock)
    # A test's fake network port has no disclosure: the network is then reported unanswered.
    intermediate = IntermediateServerServicer(
        domain, PersonDisclosure(sessions, network if isinstance(network, NetworkRecords) else None)
    )
    inbound = InboundServicer(provider, requester, sessions=sessions, tenants=tenants)
    staff_servicer = StaffServicer(tenants, staff)
    review_servicer = ReviewServicer(tenants, staff, review)
    system_servicer = SystemManagementServicer(tenants, staff, system)
    try:
        server = await start_server(
            [
                (
                    lambda s: isg.add_IntermediateServerServiceServicer_to_server(intermediate, s),
                    INTERMEDIATE_SERVICE,
                ),
                (
                    lambda s: inbound_pb2_grpc.add_InboundServiceServicer_to_server(inbound, s),
                    INBOUND_SERVICE,
                ),
                (
                    lambda s: staff_pb2_grpc.add_StaffServiceServicer_to_server(staff_servicer, s),
                    STAFF_SERVICE,
                ),
                (
                    lambda s: review_pb2_grpc.add_ReviewServiceServicer_to_server(
                        review_servicer, s
                    ),
                    REVIEW_SERVICE,
                ),
                (
                    lambda s: (
                        system_management_pb2_grpc.add_SystemManagementServiceServicer_to_server(
                            system_servicer, s
                        )
                    ),
                    SYSTEM_SERVICE,
                ),
            ],
            security=config.security,
            host=config.host,
            port=config.port,
        )
    except BaseException:
        if grpc_network is not None:
            await grpc_network.close()
        engine.dispose()
        raise
    probe = db.probe_engine(config.database_url, connect_timeout=config.database_connect_timeout)
    database_health = DatabaseHealth(
        server, lambda: db.ping(probe), interval=config.database_probe_interval
    )
    await database_health.start()
    records_retention = RetentionJob(
        sessions,
        lambda: [ledger_of(code) for code in tenants.codes()],
        records_ring.current.signing_key,
        records_ring.current.key_id,
        retention=config.records_retention,
        interval=config.records_retention_interval,
        clock=clock,
    )
    await records_retention.start()
    jobs = [
        asyncio.create_task(
            _every(
                config.purge_interval, lambda: asyncio.to_thread(retention.purge_expired, clock())
            ),
            name="server-purge",
        ),
        asyncio.create_task(
            _every(config.redelivery_interval, review.redeliver), name="server-redelivery"
        ),
    ]
    log.info(
        "platform_started", platform=config.platform, port=server.port, tenants=tenants.codes()
    )
    return App(
        config=config,
        server=server,
        engine=engine,
        sessions=sessions,
        tenants=tenants,
        network=network,
        grpc_network=grpc_network,
        domain=domain,
        provider=provider,
        review=review,
        retention=retention,
        query_keys=keys,
        directory=directory,
        staff=staff,
        system=system,
        jobs=jobs,
        records_retention=records_retention,
        database_health=database_health,
        probe_engine=probe,
    )


async def _every(interval: timedelta, job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` every ``interval``; a failure is logged and the next run still happens."""
    seconds = interval.total_seconds()
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except Exception:
            log.exception("background_job_failed")


def _default_permission_list() -> PermissionList:
    from permission_list import load_default

    return load_default()


def _records_ring(config: Config, key_dir: Path) -> KeyRing:
    """The platform's key ring for its tenants' ledgers: it signs their checkpoints and the
    anchors of their purged prefixes."""
    return KeyRing.load_or_create(key_dir, f"platform-{config.platform}")
