"""Starting and stopping the network: ``Config``, ``start(config) -> App``.

Owns the wiring of one network process: the database engine, the secret keys under
``data_dir`` (code keys, the ``network`` permit key ring, the ``network-records`` checkpoint
key ring), the permission list, the outbound transport, the domain objects, and the gRPC server
(with health and reflection, from ``linkage.rpc.start_server``), and the background jobs: the
retention of the ``network`` ledger and the database probe behind the health status. ``App``
also offers what the world harness needs without going through gRPC: the permit keys, rotating
them, registering an organization.

Must never: keep state another replica would need only in memory (the directory, permits,
answers and records live in the database; keys in the shared data directory), or start serving
before the schema and keys are ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from linkage import db
from linkage.health import DATABASE_PROBE_INTERVAL, DatabaseHealth
from linkage.keys import KeyRing, private_dir
from linkage.logs import get_logger
from linkage.records.ledger import Ledger
from linkage.records.model import utc_now
from linkage.records.retention import (
    DEFAULT_RETENTION,
    DEFAULT_RETENTION_INTERVAL,
    RetentionJob,
)
from linkage.rpc import RunningServer, Security, start_server
from linkage.v1 import common_pb2, network_pb2, network_pb2_grpc
from simulator.network import parse
from simulator.network.codes import CodeDeriver, CodeDesk
from simulator.network.directory import Directory, OrgEntry
from simulator.network.disclosure import PersonRecordsCollector
from simulator.network.keystore import CodeSecrets, PermitKeys
from simulator.network.ledger import LEDGER_ID
from simulator.network.permits import PermissionChecker, PermitIssuer
from simulator.network.queries import QueryDesk
from simulator.network.ratelimit import RateLimit, RateLimiter
from simulator.network.refusals import Refusals
from simulator.network.routing import Router
from simulator.network.service import NetworkService, organization_message, permit_key_message
from simulator.network.transport import DEFAULT_WAIT, GrpcTransport

log = get_logger(__name__)

_WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # noqa: S104 (recognized, not bound here)

SERVICE_NAME = network_pb2.DESCRIPTOR.services_by_name["NetworkService"].full_name
RECORDS_KEY_RING = "network-records"


@dataclass
class Config:
    """Everything one network process needs.

    ``permission_list`` defaults to the committed dataset. ``route_timeout`` is the deadline of
    every outbound call (seconds); ``provider_wait`` how long of it a call waits for a platform
    that is not connected (one restarting) before it fails (``transport``). ``rate_limit`` is
    per caller, in queries (None: no limit).
    A rotated permit key is published at once and signs after ``permit_key_activation`` (longer
    than a platform waits between two refreshes of its key cache); the previous one stays
    published for ``permit_key_overlap``.
    ``migrate`` runs the Alembic migrations at start-up (tests that create tables themselves
    turn it off). ``database_connect_timeout`` bounds a PostgreSQL connection attempt (seconds;
    a ``connect_timeout`` in the URL wins); ``database_probe_interval`` is how often the health
    status is brought in line with the database (``linkage.health.DatabaseHealth``).
    ``records_retention`` is how long access records are kept (seven years) and
    ``records_retention_interval`` how often the expired ones are purged behind a signed anchor.
    """

    database_url: str
    security: Security
    data_dir: Path
    permission_list: PermissionChecker | None = None
    permit_ttl: timedelta = timedelta(minutes=5)
    route_timeout: float = 10.0
    host: str = "127.0.0.1"
    port: int = 0
    serial_ttl: timedelta = timedelta(hours=1)
    key_overlap: timedelta = timedelta(hours=24)
    permit_key_overlap: timedelta = timedelta(hours=1)
    permit_key_activation: timedelta = timedelta(seconds=5)
    rate_limit: RateLimit | None = field(
        default_factory=lambda: RateLimit(per_second=50_000, burst=100_000)
    )
    directory_cache_ttl: float = 5.0
    migrate: bool = True
    clock: Callable[[], datetime] = utc_now
    provider_wait: float = DEFAULT_WAIT
    database_connect_timeout: int | None = db.DEFAULT_CONNECT_TIMEOUT
    database_probe_interval: float = DATABASE_PROBE_INTERVAL
    records_retention: timedelta = DEFAULT_RETENTION
    records_retention_interval: timedelta = DEFAULT_RETENTION_INTERVAL


class App:
    """A running network."""

    def __init__(
        self,
        *,
        config: Config,
        server: RunningServer,
        engine: Engine,
        transport: GrpcTransport,
        directory: Directory,
        permit_keys: PermitKeys,
        permission_list_version: str,
        records_retention: RetentionJob,
        database_health: DatabaseHealth,
        probe_engine: Engine,
    ) -> None:
        self.config = config
        self.server = server
        self.directory = directory
        self.permission_list_version = permission_list_version
        self.records_retention = records_retention
        self.database_health = database_health
        self._engine = engine
        self._transport = transport
        self._permit_keys = permit_keys
        self._probe_engine = probe_engine

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        """Where clients reach it ("host:port"; a wildcard bind is reached on loopback)."""
        host = "127.0.0.1" if self.config.host in _WILDCARD_HOSTS else self.config.host
        return f"{host}:{self.server.port}"

    def permit_public_keys(self) -> list[common_pb2.PublicKey]:
        """The permit-signing keys as GetNetworkKeys publishes them (current first)."""
        return [permit_key_message(k) for k in self._permit_keys.published(self.config.clock())]

    async def rotate_permit_key(self) -> common_pb2.PublicKey:
        """Make and publish a new current permit key; it signs after ``permit_key_activation``,
        the previous one signs until then and stays published for the overlap."""
        key = await asyncio.to_thread(self._permit_keys.rotate, self.config.clock())
        log.info("permit_key_rotated", key_id=key.key_id)
        return permit_key_message(key)

    async def register_organization(
        self, organization: network_pb2.Organization
    ) -> network_pb2.Organization:
        """RegisterOrganization without gRPC (the world harness acts as the operator)."""
        now = self.config.clock()
        request = network_pb2.RegisterOrganizationRequest(organization=organization)
        entry: OrgEntry = parse.registration(request, now)
        stored = await asyncio.to_thread(self.directory.register, entry)
        return organization_message(stored, now)

    async def close(self, grace: float = 2.0) -> None:
        """Stop serving (in-flight calls finish within ``grace``), then release resources."""
        await self.database_health.stop()
        await self.records_retention.stop()
        await self.server.stop(grace)
        await self._transport.close()
        self._engine.dispose()
        self._probe_engine.dispose()


async def start(config: Config) -> App:
    """Prepare schema and keys, wire the domain, and start serving."""
    if config.migrate:
        await asyncio.to_thread(db.migrate, config.database_url)
    private_dir(config.data_dir)
    engine = db.make_engine(config.database_url, connect_timeout=config.database_connect_timeout)
    sessions = db.session_factory(engine)
    checker: PermissionChecker
    if config.permission_list is not None:
        checker = config.permission_list
    else:
        checker = await asyncio.to_thread(_default_permission_list)
    secrets = await asyncio.to_thread(CodeSecrets.load_or_create, config.data_dir)
    permit_keys = await asyncio.to_thread(
        PermitKeys, config.data_dir, config.permit_key_overlap, config.permit_key_activation
    )
    records_ring = await asyncio.to_thread(_records_ring, config)
    records = Ledger(
        records_ring.current.signing_key, records_ring.current.key_id, clock=config.clock
    )
    deriver = CodeDeriver(secrets)
    directory = Directory(
        sessions,
        clock=config.clock,
        key_overlap=config.key_overlap,
        cache_ttl=config.directory_cache_ttl,
    )
    transport = GrpcTransport(config.security, wait=config.provider_wait)

    async def refresh(code: str) -> OrgEntry | None:
        directory.invalidate(code)
        return await asyncio.to_thread(directory.get, code)

    router = Router(transport, permit_keys, timeout=config.route_timeout, refresh=refresh)
    service = NetworkService(
        directory=directory,
        codes=CodeDesk(
            sessions=sessions,
            deriver=deriver,
            records=records,
            clock=config.clock,
            serial_ttl=config.serial_ttl,
        ),
        desk=QueryDesk(
            sessions=sessions,
            directory=directory,
            issuer=PermitIssuer(checker, deriver, config.permit_ttl),
            router=router,
            records=records,
            clock=config.clock,
        ),
        permit_keys=permit_keys,
        permission_list_version=checker.version,
        limiter=RateLimiter(config.rate_limit) if config.rate_limit else None,
        refusals=Refusals(sessions, records, config.clock),
        clock=config.clock,
        collector=PersonRecordsCollector(
            sessions=sessions,
            deriver=deriver,
            directory=directory,
            security=config.security,
            timeout=config.route_timeout,
            records=records,
            clock=config.clock,
        ),
    )
    try:
        server = await start_server(
            [
                (
                    lambda s: network_pb2_grpc.add_NetworkServiceServicer_to_server(service, s),
                    SERVICE_NAME,
                )
            ],
            security=config.security,
            host=config.host,
            port=config.port,
        )
    except BaseException:
        await transport.close()
        engine.dispose()
        raise
    probe = db.probe_engine(config.database_url, connect_timeout=config.database_connect_timeout)
    database_health = DatabaseHealth(
        server, lambda: db.ping(probe), interval=config.database_probe_interval
    )
    await database_health.start()
    records_retention = RetentionJob(
        sessions,
        lambda: [LEDGER_ID],
        records_ring.current.signing_key,
        records_ring.current.key_id,
        retention=config.records_retention,
        interval=config.records_retention_interval,
        clock=config.clock,
    )
    await records_retention.start()
    log.info("network_started", port=server.port, permission_list_version=checker.version)
    return App(
        config=config,
        server=server,
        engine=engine,
        transport=transport,
        directory=directory,
        permit_keys=permit_keys,
        permission_list_version=checker.version,
        records_retention=records_retention,
        database_health=database_health,
        probe_engine=probe,
    )


def _default_permission_list() -> PermissionChecker:
    from permission_list import load_default

    return load_default()


def _records_ring(config: Config) -> KeyRing:
    """The ``network`` ledger's key ring (checkpoints, anchors of purged prefixes): its own,
    apart from the permit keys."""
    return KeyRing.load_or_create(config.data_dir, RECORDS_KEY_RING)
