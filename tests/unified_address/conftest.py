"""Fixtures of the unified address tests: a PKI, a database, fake upstreams, the server, clients.

Everything runs over real gRPC with mutual TLS on 127.0.0.1 port 0: the unified address server
as ``ua.sakai``, a fake resident registry (``registry``) and a fake intermediate server
(``platform.test``), and business-system clients (``bs.sakai.<system>``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc.aio
import pytest
from ua_fakes import FakeIntermediateServer, FakeRegistry, Served, serve
from ua_support import IDENTITIES, ORG, SCOPES, Stub

from linkage import pki
from linkage.rpc import Security
from linkage.v1 import intermediate_server_pb2_grpc, registry_pb2_grpc, unified_address_pb2_grpc
from tests.conftest import DatabaseUrl
from unified_address.app import App, Config, start


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA with every identity the tests use (issuing is the slow part: do it once)."""
    directory = tmp_path_factory.mktemp("pki")
    pki.init_pki(directory, IDENTITIES)
    return directory


@pytest.fixture
def database_url(database_url: DatabaseUrl) -> str:
    """A fresh, migrated database of the unified address server on the run's backend."""
    return database_url("ua")


@pytest.fixture
async def registry(pki_dir: Path) -> AsyncIterator[tuple[FakeRegistry, Served]]:
    """The fake resident registry, serving as ``registry``."""
    fake = FakeRegistry(ORG)
    served = await serve(
        pki_dir,
        "registry",
        lambda s: registry_pb2_grpc.add_ResidentRegistryServiceServicer_to_server(fake, s),
    )
    yield fake, served
    await served.server.stop(None)


@pytest.fixture
async def intermediate(pki_dir: Path) -> AsyncIterator[tuple[FakeIntermediateServer, Served]]:
    """The fake intermediate server (tenant ``sakai``), serving as ``platform.test``."""
    fake = FakeIntermediateServer(ORG)
    served = await serve(
        pki_dir,
        "platform.test",
        lambda s: intermediate_server_pb2_grpc.add_IntermediateServerServiceServicer_to_server(
            fake, s
        ),
    )
    yield fake, served
    await served.server.stop(None)


@pytest.fixture
def config(
    pki_dir: Path,
    tmp_path: Path,
    database_url: str,
    registry: tuple[FakeRegistry, Served],
    intermediate: tuple[FakeIntermediateServer, Served],
) -> Config:
    """The unified address server's configuration, pointing at the fakes."""
    return Config(
        organization=ORG,
        database_url=database_url,
        security=Security(pki_dir, f"ua.{ORG}"),
        data_dir=tmp_path / "data",
        server_address=intermediate[1].address,
        registry_address=registry[1].address,
        business_systems=SCOPES,
        migrate=False,
        code_request_concurrency=4,
        # Off: tests count records; test_ua_staff_rpc starts one server with it on.
        records_retention_interval=None,
    )


@pytest.fixture
async def ua(config: Config) -> AsyncIterator[App]:
    """The running unified address server."""
    app = await start(config)
    yield app
    await app.close(grace=0)


@pytest.fixture
async def connect(pki_dir: Path, ua: App) -> AsyncIterator[Callable[[str], Awaitable[Stub]]]:
    """``await connect("bs.sakai.kokuho")``: a client stub presenting that identity."""
    channels: list[grpc.aio.Channel] = []

    async def open_stub(identity: str) -> Stub:
        channel = Security(pki_dir, identity).channel(ua.address)
        channels.append(channel)
        return unified_address_pb2_grpc.UnifiedAddressServiceStub(channel)

    yield open_stub
    for channel in channels:
        await channel.close(None)
