"""Starting and stopping the registry stand-in: ``Config``, ``start(config) -> App``.

Owns the wiring of one registry process: the database engine, the blind-index key
(``<data_dir>/registry-index.key``) and the ``registry-records`` checkpoint key ring, the client
of the network, the gRPC server, and the background jobs: the retention of the ``registry``
ledger and the database probe behind the health status. ``App.load_residents`` bulk-loads the
resident file the world harness generates (up to millions of rows, one transaction).

Must never: keep an individual number anywhere but as a blind index, or serve before the
schema and keys are ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from linkage import db
from linkage.atrest import DataKey
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
from linkage.v1 import registry_pb2, registry_pb2_grpc
from simulator.registry import residents
from simulator.registry.network_client import NetworkClient
from simulator.registry.service import ResidentRegistryService

log = get_logger(__name__)

_WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # noqa: S104 (recognized, not bound here)

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["ResidentRegistryService"].full_name
INDEX_KEY_FILE = "registry-index.key"
RECORDS_KEY_RING = "registry-records"


@dataclass
class Config:
    """Everything one registry process needs.

    ``security`` is the registry's own identity (``registry``): it serves with it and calls the
    network at ``network_address`` with it, each call bounded by ``network_deadline`` seconds.
    ``database_connect_timeout`` bounds a PostgreSQL connection attempt (seconds; a
    ``connect_timeout`` in the URL wins); ``database_probe_interval`` is how often the health
    status is brought in line with the database. ``records_retention`` is how long access
    records are kept (seven years), ``records_retention_interval`` how often the expired ones
    are purged behind a signed anchor.
    """

    database_url: str
    security: Security
    data_dir: Path
    network_address: str
    network_deadline: float = 5.0
    host: str = "127.0.0.1"
    port: int = 0
    migrate: bool = True
    clock: Callable[[], datetime] = utc_now
    database_connect_timeout: int | None = db.DEFAULT_CONNECT_TIMEOUT
    database_probe_interval: float = DATABASE_PROBE_INTERVAL
    records_retention: timedelta = DEFAULT_RETENTION
    records_retention_interval: timedelta = DEFAULT_RETENTION_INTERVAL


class App:
    """A running registry."""

    def __init__(
        self,
        *,
        config: Config,
        server: RunningServer,
        engine: Engine,
        sessions: sessionmaker[Session],
        index: DataKey,
        network: NetworkClient,
        records_retention: RetentionJob,
        database_health: DatabaseHealth,
        probe_engine: Engine,
    ) -> None:
        self.config = config
        self.server = server
        self.records_retention = records_retention
        self.database_health = database_health
        self._engine = engine
        self._sessions = sessions
        self._index = index
        self._network = network
        self._probe_engine = probe_engine

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        """Where clients reach it ("host:port"; a wildcard bind is reached on loopback)."""
        host = "127.0.0.1" if self.config.host in _WILDCARD_HOSTS else self.config.host
        return f"{host}:{self.server.port}"

    async def load_residents(self, rows: Iterable[tuple[str, str, str]]) -> int:
        """Upsert (resident_code, individual_number, municipality) rows; returns the count.

        One transaction: a bad row (``ValueError`` naming its position) keeps nothing.
        """
        count = await asyncio.to_thread(residents.load_residents, self._sessions, self._index, rows)
        log.info("residents_loaded", count=count)
        return count

    async def resident_count(self) -> int:
        return await asyncio.to_thread(residents.count_residents, self._sessions)

    async def close(self, grace: float = 2.0) -> None:
        await self.database_health.stop()
        await self.records_retention.stop()
        await self.server.stop(grace)
        await self._network.close()
        self._engine.dispose()
        self._probe_engine.dispose()


async def start(config: Config) -> App:
    """Prepare schema and keys, connect to the network, and start serving."""
    if config.migrate:
        await asyncio.to_thread(db.migrate, config.database_url)
    private_dir(config.data_dir)
    engine = db.make_engine(config.database_url, connect_timeout=config.database_connect_timeout)
    sessions = db.session_factory(engine)
    index = await asyncio.to_thread(DataKey.load_or_create, config.data_dir / INDEX_KEY_FILE)
    ring = await asyncio.to_thread(KeyRing.load_or_create, config.data_dir, RECORDS_KEY_RING)
    records = Ledger(ring.current.signing_key, ring.current.key_id, clock=config.clock)
    network = NetworkClient(
        config.security, config.network_address, deadline=config.network_deadline
    )
    desk = residents.SerialDesk(
        sessions=sessions, index=index, network=network, records=records, clock=config.clock
    )
    service = ResidentRegistryService(desk)
    try:
        server = await start_server(
            [
                (
                    lambda s: registry_pb2_grpc.add_ResidentRegistryServiceServicer_to_server(
                        service, s
                    ),
                    SERVICE_NAME,
                )
            ],
            security=config.security,
            host=config.host,
            port=config.port,
        )
    except BaseException:
        await network.close()
        engine.dispose()
        raise
    probe = db.probe_engine(config.database_url, connect_timeout=config.database_connect_timeout)
    database_health = DatabaseHealth(
        server, lambda: db.ping(probe), interval=config.database_probe_interval
    )
    await database_health.start()
    records_retention = RetentionJob(
        sessions,
        lambda: [residents.LEDGER_ID],
        ring.current.signing_key,
        ring.current.key_id,
        retention=config.records_retention,
        interval=config.records_retention_interval,
        clock=config.clock,
    )
    await records_retention.start()
    log.info("registry_started", port=server.port)
    return App(
        config=config,
        server=server,
        engine=engine,
        sessions=sessions,
        index=index,
        network=network,
        records_retention=records_retention,
        database_health=database_health,
        probe_engine=probe,
    )
