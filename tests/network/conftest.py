"""Fixtures for the network's tests: a real NetworkService over gRPC with mutual TLS.

Everything runs in-process on port 0: the network (``simulator.network.app.start``), fake
intermediate-server platforms (``network_support.FakePlatform``) and clients presenting the
certificates of the test PKI. The database is fresh per test and made by the Alembic
migrations (``database_url`` of tests/conftest.py: an SQLite file, or a PostgreSQL schema with
``LINKAGE_TEST_DATABASE=postgresql``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from network_support import Clock, FakePlatform, Net, OrgKeys, Stub

from linkage.pki import init_pki
from linkage.rpc import Security
from linkage.v1 import network_pb2_grpc
from simulator.network import app as network_app

IDENTITIES = (
    "network",
    "registry",
    "admin",
    "org.sakai",
    "org.jps",
    "org.osaka",
    "org.ghost",
    "platform.test",
    "platform.requester",
    "ua.sakai",
    "ua.jps",
)

StartNetwork = Callable[..., Awaitable[network_app.App]]


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local CA with a certificate for every identity the tests present."""
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, IDENTITIES)
    return directory


@pytest.fixture
def clock() -> Clock:
    """The network's clock; starts at the real time, tests may move it."""
    return Clock()


@pytest.fixture
def network_url(database_url: Callable[[str], str]) -> str:
    """A fresh, migrated database for the network on the run's backend (SQLite or PostgreSQL)."""
    return database_url("network")


@pytest.fixture
async def start_network(
    pki_dir: Path, tmp_path: Path, clock: Clock, network_url: str
) -> AsyncIterator[StartNetwork]:
    """Starts a network with ``Config`` overrides (keyword arguments); all are closed after."""
    apps: list[network_app.App] = []

    async def start(**overrides: Any) -> network_app.App:
        config = network_app.Config(
            database_url=network_url,
            security=Security(pki_dir, "network"),
            data_dir=tmp_path / "network-keys",
            migrate=False,
            clock=clock,
            route_timeout=5.0,
        )
        for name, value in overrides.items():
            setattr(config, name, value)
        started = await network_app.start(config)
        apps.append(started)
        return started

    yield start
    for started in apps:
        await started.close(grace=0)


@pytest.fixture
def network_overrides() -> dict[str, Any]:
    """``Config`` overrides of the ``network`` fixture; a test parametrizes it to change them."""
    return {}


@pytest.fixture
async def network(
    start_network: StartNetwork, network_overrides: dict[str, Any]
) -> network_app.App:
    """A network with the committed permission list (and ``network_overrides``)."""
    return await start_network(**network_overrides)


@pytest.fixture
async def connect(pki_dir: Path) -> AsyncIterator[Callable[[str, str], Stub]]:
    """``connect(identity, address)``: a NetworkService stub presenting ``identity``."""
    channels: list[grpc.aio.Channel] = []

    def make(identity: str, address: str) -> Stub:
        channel = Security(pki_dir, identity).channel(address)
        channels.append(channel)
        stub: Stub = network_pb2_grpc.NetworkServiceStub(channel)
        return stub

    yield make
    for channel in channels:
        await channel.close(None)


@pytest.fixture
async def platforms(pki_dir: Path) -> AsyncIterator[list[FakePlatform]]:
    """Fake platforms started by tests; stopped after."""
    started: list[FakePlatform] = []
    yield started
    for platform in started:
        await platform.stop()


@pytest.fixture
async def net(
    network: network_app.App,
    connect: Callable[[str, str], Stub],
    platforms: list[FakePlatform],
    pki_dir: Path,
    clock: Clock,
) -> Net:
    """The network with ``sakai`` (requester) and ``jps`` (provider) registered."""
    keys = {"sakai": OrgKeys("sakai"), "jps": OrgKeys("jps")}

    def network_keys() -> dict[str, bytes]:
        return {k.key_id: k.key for k in network.permit_public_keys()}

    provider = await FakePlatform({"jps": keys["jps"]}, network_keys, clock=clock).start(
        pki_dir, "platform.test"
    )
    requester = await FakePlatform({"sakai": keys["sakai"]}, network_keys, clock=clock).start(
        pki_dir, "platform.requester"
    )
    platforms.extend([provider, requester])
    world = Net(network, connect, provider, requester, {})
    await world.register(keys["sakai"], ["municipality"], requester.address)
    await world.register(keys["jps"], ["pension_service"], provider.address)
    return world
