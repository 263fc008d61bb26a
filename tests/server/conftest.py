"""Fixtures for the intermediate server's tests: real gRPC with mutual TLS, in-process.

The world of a test is a real network (``simulator.network.app``) and intermediate server
platforms (``server.app``), each on port 0 with its own fresh database made by the Alembic
migrations (``database_url`` of tests/conftest.py: an SQLite file, or a PostgreSQL schema with
``LINKAGE_TEST_DATABASE=postgresql``), all sharing one settable ``Clock``. (``world`` here
overrides the suite-wide fixture of the same name: these tests need no registry or unified
address server.) Organizations:

- platform ``alpha`` hosts ``sakai`` (a municipality) and ``jps`` (the Japan Pension Service);
- platform ``beta`` hosts ``osaka`` (the late-stage elderly medical care regional association).

So sakai → jps is a query within one platform and osaka → sakai one across platforms.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from server_support import ALPHA, BETA, Clock, World

from linkage.pki import init_pki
from linkage.rpc import Security
from simulator.network import app as network_app

IDENTITIES = (
    "network",
    "registry",
    "admin",
    "platform.alpha",
    "platform.beta",
    "platform.gamma",
    "org.sakai",
    "org.jps",
    "org.osaka",
    "org.kobe",
    "ua.sakai",
    "ua.jps",
    "ua.osaka",
    "ua.kobe",
    "bs.sakai.tax",
    "staff-console.sakai",
    "staff-console.jps",
    "staff-console.osaka",
)


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local CA with a certificate for every identity the tests present."""
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, IDENTITIES)
    return directory


@pytest.fixture
def clock() -> Clock:
    """The clock of the network and every platform; starts at the real time."""
    return Clock()


@pytest.fixture
async def bare_world(
    pki_dir: Path, tmp_path: Path, clock: Clock, database_url: Callable[[str], str]
) -> AsyncIterator[World]:
    """A running network with no platform yet (tests start their own)."""
    network = await network_app.start(
        network_app.Config(
            database_url=database_url("network"),
            security=Security(pki_dir, "network"),
            data_dir=tmp_path / "network-keys",
            migrate=False,
            clock=clock,
            route_timeout=10.0,
        )
    )
    world = World(pki_dir, tmp_path, clock, network, database_url)
    try:
        yield world
    finally:
        await world.close()
        await network.close(grace=0)


@pytest.fixture
async def world(bare_world: World) -> World:
    """The network with platforms alpha (sakai, jps) and beta (osaka) registered."""
    await bare_world.start_platform("alpha", ALPHA)
    await bare_world.start_platform("beta", BETA)
    return bare_world
