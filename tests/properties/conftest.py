"""The world the property tests attack: real ``linkage serve`` processes, started once.

One world per session (network, registry, the platforms of Sakai and JPS, their unified
address servers) on the run's backend: SQLite files, or PostgreSQL schemas with
``LINKAGE_TEST_DATABASE=postgresql``. Which system serves which service is asked of the servers
themselves (gRPC reflection), so a service added later is attacked as soon as it is served.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from properties_support import HostileWorld, RowCounts
from sqlalchemy import create_engine, text

from linkage import db
from simulator.world import PENSION_SERVICE, SAKAI, WorldConfig, init_pki
from simulator.world_cli import ProcessWorld, plan, port_span

ORGS = (SAKAI, PENSION_SERVICE)
POSTGRES_BASE = os.environ.get(
    "LINKAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKEND = os.environ.get("LINKAGE_TEST_DATABASE", "sqlite")
# Where each service is attacked when several systems serve it: Sakai's side.
PREFERRED = ("platform-municipal", "ua-sakai", "network", "registry")
_OPEN = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


def _services(hostile: HostileWorld, address: str) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(hostile.channel("admin", address))
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(iter(stub.ServerReflectionInfo(iter([ask]), timeout=10)))
    return [s.name for s in reply.list_services_response.service if s.name not in _OPEN]


def _schema_url(schema: str) -> str:
    return f"{POSTGRES_BASE}?options=-csearch_path%3D%22{schema}%22"


def _create_schemas(prefix: str, components: list[str]) -> None:
    engine = create_engine(POSTGRES_BASE)
    try:
        with engine.begin() as connection:
            for component in components:
                connection.execute(text(f'CREATE SCHEMA "{prefix}{component}"'))
    finally:
        engine.dispose()


def _drop_schemas(prefix: str, components: list[str]) -> None:
    engine = create_engine(POSTGRES_BASE)
    try:
        with engine.begin() as connection:
            for component in components:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{prefix}{component}" CASCADE'))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def hostile_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileWorld]:
    """The world as processes for the whole session; stopped (and its schemas dropped) after."""
    from bench.soak import free_port_range

    root = tmp_path_factory.mktemp("hostile") / "world"
    config = WorldConfig(root=root, organizations=ORGS)
    init_pki(config)
    prefix = f"h{uuid.uuid4().hex[:8]}_"
    template = _schema_url(f"{prefix}{{component}}") if BACKEND == "postgresql" else None
    procs = plan(root, free_port_range(port_span(ORGS)), False, template, organizations=ORGS)
    components = sorted({p.component for p in procs})
    if template is not None:
        _create_schemas(prefix, components)
    assert config.pki_dir is not None
    world = ProcessWorld(root, procs, config.pki_dir)
    urls = {
        c: _schema_url(f"{prefix}{c}") if template else db.sqlite_url(root / f"{c}.sqlite")
        for c in components
    }
    hostile = HostileWorld(world, config.pki_dir, {}, RowCounts(urls))
    try:
        asyncio.run(_start(world))
        for name in sorted(world.children, key=lambda n: (n not in PREFERRED, n)):
            for service in _services(hostile, world.address(name)):
                hostile.served.setdefault(service, world.address(name))
        yield hostile
    finally:
        hostile.close()
        asyncio.run(world.close())
        if template is not None:
            _drop_schemas(prefix, components)


async def _start(world: ProcessWorld) -> None:
    await world.start()
    await world.register(ORGS)
