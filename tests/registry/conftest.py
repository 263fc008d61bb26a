"""Fixtures for the registry stand-in's tests: a real network and registry over mutual TLS.

The registry hands serials to a real network (``simulator.network.app``), so these fixtures
start both in-process on port 0, each on a fresh database made by the Alembic migrations
(``database_url`` of tests/conftest.py: SQLite, or PostgreSQL with
``LINKAGE_TEST_DATABASE=postgresql``). The network's test
helpers live in ``tests/network/network_support.py`` and are put on the import path here.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "network"))

from network_support import OrgKeys, organization

from linkage.pki import init_pki
from linkage.rpc import Security
from linkage.v1 import network_pb2_grpc, registry_pb2_grpc
from simulator.network import app as network_app
from simulator.registry import app as registry_app

IDENTITIES = ("network", "registry", "admin", "org.sakai", "org.jps", "ua.sakai", "ua.jps")
StartRegistry = Callable[..., Awaitable[registry_app.App]]


@pytest.fixture(scope="session")
def registry_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local CA with the identities of the network, the registry and two organizations."""
    directory = tmp_path_factory.mktemp("registry-pki")
    init_pki(directory, IDENTITIES)
    return directory


@pytest.fixture
async def network(
    registry_pki: Path, tmp_path: Path, database_url: Callable[[str], str]
) -> AsyncIterator[network_app.App]:
    """A network with ``sakai`` registered (``jps`` is not)."""
    app = await network_app.start(
        network_app.Config(
            database_url=database_url("network"),
            security=Security(registry_pki, "network"),
            data_dir=tmp_path / "network-keys",
            migrate=False,
        )
    )
    await app.register_organization(organization(OrgKeys("sakai"), ["municipality"], "127.0.0.1:1"))
    yield app
    await app.close(grace=0)


@pytest.fixture
def registry_url(database_url: Callable[[str], str]) -> str:
    """A fresh, migrated database for the registry."""
    return database_url("registry")


@pytest.fixture
async def start_registry(
    registry_pki: Path, tmp_path: Path, registry_url: str, network: network_app.App
) -> AsyncIterator[StartRegistry]:
    """Starts a registry talking to ``network`` (``Config`` overrides as keywords)."""
    apps: list[registry_app.App] = []

    async def start(**overrides: Any) -> registry_app.App:
        config = registry_app.Config(
            database_url=registry_url,
            security=Security(registry_pki, "registry"),
            data_dir=tmp_path / "registry-keys",
            network_address=network.address,
            migrate=False,
        )
        for name, value in overrides.items():
            setattr(config, name, value)
        started = await registry_app.start(config)
        apps.append(started)
        return started

    yield start
    for started in apps:
        await started.close(grace=0)


@pytest.fixture
async def registry(start_registry: StartRegistry) -> registry_app.App:
    """The registry with the default configuration."""
    return await start_registry()


@pytest.fixture
async def channels(registry_pki: Path) -> AsyncIterator[Callable[[str, str], grpc.aio.Channel]]:
    """``channels(identity, address)``: a channel presenting ``identity``, closed after."""
    opened: list[grpc.aio.Channel] = []

    def make(identity: str, address: str) -> grpc.aio.Channel:
        channel = Security(registry_pki, identity).channel(address)
        opened.append(channel)
        return channel

    yield make
    for channel in opened:
        await channel.close(None)


@pytest.fixture
def registry_stub(
    registry: registry_app.App, channels: Callable[[str, str], grpc.aio.Channel]
) -> Callable[[str], Any]:
    """``registry_stub(identity)``: a ResidentRegistryService stub presenting ``identity``."""
    return lambda identity: registry_pb2_grpc.ResidentRegistryServiceStub(
        channels(identity, registry.address)
    )


@pytest.fixture
def network_stub(
    network: network_app.App, channels: Callable[[str, str], grpc.aio.Channel]
) -> Callable[[str], Any]:
    """``network_stub(identity)``: a NetworkService stub presenting ``identity``."""
    return lambda identity: network_pb2_grpc.NetworkServiceStub(channels(identity, network.address))
