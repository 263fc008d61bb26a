"""Starting and stopping one unified address server (統合利用番号連携サーバー).

Owns ``Config`` (what an operator or the world harness sets) and ``start``: it brings the schema
to head, opens the organization's data key and ledger key ring from ``data_dir``, connects to
the intermediate server and the resident registry as ``ua.<org>``, and serves
``UnifiedAddressService`` for business systems and ``UnifiedAddressStaffService`` for staff
consoles (with health and reflection, the health following the database) on ``host:port``;
it also runs the records retention job
(``linkage.records.retention.RetentionJob``: the seven-year purge of the ledger ``ua:<org>``,
every ``records_retention_interval``; ``None`` turns it off). ``App`` is the running server:
``.address``, ``.port``, ``.staff`` (accounts, for the harness), ``close()``, and
``register_many`` for bulk loads.

Must never: start under an identity other than ``ua.<org>``, or keep state in memory that
another replica would need (it is all in the database; key files are shared on disk).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc.aio
from sqlalchemy.engine import Engine

from linkage import db
from linkage.db import make_engine, migrate, session_factory
from linkage.health import DATABASE_PROBE_INTERVAL, DatabaseHealth
from linkage.keys import KeyRing, private_dir
from linkage.logs import get_logger
from linkage.records.ledger import Ledger
from linkage.records.retention import DEFAULT_RETENTION_INTERVAL, RetentionJob
from linkage.rpc import RunningServer, Security, start_server
from linkage.v1 import (
    unified_address_pb2,
    unified_address_pb2_grpc,
    unified_address_staff_pb2,
    unified_address_staff_pb2_grpc,
)
from unified_address import registration
from unified_address.audit import Actor, Audit
from unified_address.matching import Registration
from unified_address.runtime import Runtime
from unified_address.scope import BusinessSystemScope, ScopeRegistry
from unified_address.servicer import UnifiedAddressServicer
from unified_address.staff_accounts import StaffAccounts, StaffSettings
from unified_address.staff_servicer import UnifiedAddressStaffServicer
from unified_address.upstream import GrpcIntermediateServer, GrpcRegistry
from unified_address.vault import NumberVault

__all__ = ["App", "BusinessSystemScope", "Config", "open_keys", "start"]

log = get_logger(__name__)
SERVICE_NAME = unified_address_pb2.DESCRIPTOR.services_by_name["UnifiedAddressService"].full_name
STAFF_SERVICE_NAME = unified_address_staff_pb2.DESCRIPTOR.services_by_name[
    "UnifiedAddressStaffService"
].full_name


@dataclass(frozen=True)
class Config:
    """One organization's unified address server.

    ``security.identity`` must be ``ua.<organization>``: it is both the server certificate and
    the client identity toward the registry and the intermediate server. ``data_dir`` holds
    the data key of individual numbers and the key ring that signs the ledger's checkpoints.
    ``migrate`` brings the database to the newest schema at start (tests that build the schema
    themselves turn it off). ``staff`` sets session lifetimes, lockout, the password hash
    cost of the staff service and how often its ended sessions and stale failed sign-ins are
    purged (``staff.purge_interval``, a background task stopped by ``close``);
    ``records_retention_interval`` how often expired records are purged (``None``: never, for
    tests that count records). ``database_connect_timeout`` bounds
    a PostgreSQL connection attempt (seconds); ``database_probe_interval`` is how often the
    health status is brought in line with the database (NOT_SERVING while it does not answer).
    """

    organization: str
    database_url: str
    security: Security
    data_dir: Path
    server_address: str
    registry_address: str
    business_systems: Sequence[BusinessSystemScope] = ()
    host: str = "127.0.0.1"
    port: int = 0
    migrate: bool = True
    code_request_concurrency: int = 16
    upstream_timeout: float = 30.0
    server_identity: str = ""  # e.g. "platform.municipal": its certificate must name it
    staff: StaffSettings = field(default_factory=StaffSettings)
    records_retention_interval: timedelta | None = DEFAULT_RETENTION_INTERVAL
    database_connect_timeout: int | None = db.DEFAULT_CONNECT_TIMEOUT
    database_probe_interval: float = DATABASE_PROBE_INTERVAL

    def __post_init__(self) -> None:
        if self.security.identity != f"ua.{self.organization}":
            raise ValueError(f"identity {self.security.identity!r} is not ua.{self.organization}")
        systems = [scope.system for scope in self.business_systems]
        if len(systems) != len(set(systems)):
            raise ValueError("business systems must be configured once each")


class App:
    """A running unified address server."""

    def __init__(
        self,
        runtime: Runtime,
        server: RunningServer,
        channels: Sequence[grpc.aio.Channel],
        engine: Engine,
        staff: StaffAccounts,
        retention: RetentionJob | None = None,
        health: tuple[DatabaseHealth, Engine] | None = None,
    ) -> None:
        self.runtime = runtime
        self.staff = staff
        self._server = server
        self._channels = channels
        self._engine = engine
        self.retention = retention
        self._health = health

    @property
    def address(self) -> str:
        return self._server.address

    @property
    def port(self) -> int:
        return self._server.port

    async def register_many(
        self,
        system: str,
        rows: Sequence[Registration],
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> registration.RegistrationSummary:
        """Bulk registration for the world harness, as business system ``system``."""
        if system not in self.runtime.scopes:
            raise ValueError(f"{system} is not a configured business system")
        actor = Actor.business_system(self.runtime.scopes.identity_of(system))
        return await registration.register_many(
            self.runtime, system, rows, actor=actor, progress=progress
        )

    async def close(self, grace: float = 5.0) -> None:
        """Stop serving (in-flight calls finish), then close the upstream channels."""
        await self.staff.stop_purge()
        if self.retention is not None:
            await self.retention.stop()
        if self._health is not None:
            database_health, probe = self._health
            await database_health.stop()
            probe.dispose()
        await self._server.stop(grace)
        for channel in self._channels:
            await channel.close(None)
        self._engine.dispose()


def open_keys(data_dir: Path, organization: str) -> tuple[NumberVault, Audit]:
    """The organization's number vault and ledger writer from the key files in ``data_dir``
    (created on first use): the server and the staff CLI must open the very same ones."""
    vault, audit, _ = _open_keys(data_dir, organization)
    return vault, audit


def _open_keys(data_dir: Path, organization: str) -> tuple[NumberVault, Audit, KeyRing]:
    private_dir(data_dir)
    keyring = KeyRing.load_or_create(data_dir / "keys", f"ua.{organization}")
    ledger = Ledger(keyring.current.signing_key, keyring.current.key_id)
    return NumberVault.open_dir(data_dir, organization), Audit(organization, ledger), keyring


async def start(config: Config) -> App:
    """Open storage and keys, connect upstream, and serve; see ``Config``."""
    vault, audit, keyring = await asyncio.to_thread(
        _open_keys, config.data_dir, config.organization
    )
    if config.migrate:
        await asyncio.to_thread(migrate, config.database_url)
    engine = make_engine(config.database_url, connect_timeout=config.database_connect_timeout)
    server_channel = config.security.channel(
        config.server_address, server=config.server_identity or None
    )
    registry_channel = config.security.channel(config.registry_address, server="registry")
    runtime = Runtime(
        organization=config.organization,
        sessions=session_factory(engine),
        vault=vault,
        audit=audit,
        scopes=ScopeRegistry(config.organization, config.business_systems),
        registry=GrpcRegistry(registry_channel, config.organization, config.upstream_timeout),
        server=GrpcIntermediateServer(server_channel, config.organization, config.upstream_timeout),
        code_concurrency=config.code_request_concurrency,
    )
    servicer = UnifiedAddressServicer(runtime)
    staff = StaffAccounts(runtime.sessions, audit, runtime.clock, config.staff)
    staff_servicer = UnifiedAddressStaffServicer(runtime, staff)

    def register(server: grpc.aio.Server) -> None:
        unified_address_pb2_grpc.add_UnifiedAddressServiceServicer_to_server(servicer, server)

    def register_staff(server: grpc.aio.Server) -> None:
        unified_address_staff_pb2_grpc.add_UnifiedAddressStaffServiceServicer_to_server(
            staff_servicer, server
        )

    retention = None
    if config.records_retention_interval is not None:
        retention = RetentionJob(
            runtime.sessions,
            lambda: [audit.ledger_id],
            keyring.current.signing_key,
            keyring.current.key_id,
            interval=config.records_retention_interval,
            clock=runtime.clock,
        )
    try:
        running = await start_server(
            [(register, SERVICE_NAME), (register_staff, STAFF_SERVICE_NAME)],
            security=config.security,
            host=config.host,
            port=config.port,
        )
        if retention is not None:
            await retention.start()
        if config.staff.purge_interval is not None:
            staff.start_purge()
        probe = db.probe_engine(
            config.database_url, connect_timeout=config.database_connect_timeout
        )
        database_health = DatabaseHealth(
            running, lambda: db.ping(probe), interval=config.database_probe_interval
        )
        await database_health.start()
    except BaseException:
        await staff.stop_purge()
        await server_channel.close(None)
        await registry_channel.close(None)
        engine.dispose()
        raise
    log.info(
        "unified_address_started",
        organization=config.organization,
        port=running.port,
        business_systems=sorted(runtime.scopes.systems),
    )
    return App(
        runtime,
        running,
        (server_channel, registry_channel),
        engine,
        staff,
        retention,
        (database_health, probe),
    )
