"""The unified address server against the real systems: registry, network, intermediate server.

The world harness runs the real network, registry and platforms; a unified address server for
Sakai is started on a migrated database and reaches the real intermediate server through a
byte-recording proxy, so the test sees every byte the intermediate server receives from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc.aio
import pytest
from ua_fakes import RecordingProxy, serve_proxy
from ua_support import individual_numbers

from linkage.db import sqlite_url
from linkage.rpc import Security
from linkage.v1 import common_pb2, intermediate_server_pb2, unified_address_pb2_grpc
from linkage.v1 import unified_address_pb2 as ua_pb2
from simulator.world import PENSION_SERVICE, SAKAI, World, WorldConfig, start_world
from unified_address.app import App, Config, start
from unified_address.matching import Registration

PEOPLE = 40
_SERVICE = intermediate_server_pb2.DESCRIPTOR.services_by_name["IntermediateServerService"]
STREAMING = frozenset(
    f"/{_SERVICE.full_name}/{m.name}" for m in _SERVICE.methods if m.client_streaming
)


@dataclass
class Stage:
    """The real world, Sakai's unified address server behind the proxy, and the numbers."""

    world: World
    ua: App
    proxy: RecordingProxy
    numbers: list[str]
    pki_dir: Path


@pytest.fixture
async def stage(tmp_path: Path) -> AsyncIterator[Stage]:
    """The world with Sakai and the pension service; residents loaded; a proxied UA for Sakai."""
    world = await start_world(
        WorldConfig(root=tmp_path / "world", organizations=(SAKAI, PENSION_SERVICE))
    )
    pki_dir = world.config.pki_dir
    assert pki_dir is not None
    numbers = individual_numbers(PEOPLE, seed=97)
    await world.registry.load_residents(
        (f"{i + 1:011d}", number, "sakai") for i, number in enumerate(numbers)
    )
    platform = world.platform_of("sakai")
    upstream = Security(pki_dir, "ua.sakai").channel(platform.address)
    proxy = RecordingProxy(upstream, STREAMING)
    proxy_server, proxy_port = await serve_proxy(pki_dir, "platform.municipal", proxy)
    ua = await start(
        Config(
            organization="sakai",
            database_url=sqlite_url(tmp_path / "ua-under-test.sqlite"),
            security=Security(pki_dir, "ua.sakai"),
            data_dir=tmp_path / "ua-data",
            server_address=f"127.0.0.1:{proxy_port}",
            registry_address=world.registry.address,
            business_systems=[system.scope() for system in SAKAI.systems],
        )
    )
    try:
        yield Stage(world, ua, proxy, numbers, pki_dir)
    finally:
        await ua.close(grace=0)
        await proxy_server.stop(None)
        await upstream.close(None)
        await world.close()


def _tax(address: str) -> ua_pb2.AddressedDuplicate:
    return ua_pb2.AddressedDuplicate(
        address_number=address,
        value=common_pb2.DuplicateValue(
            data_item="local_tax",
            content=common_pb2.DataItemContent(
                local_tax=common_pb2.LocalTax(
                    fiscal_year=2026,
                    assessing_municipality="sakai",
                    total_income=2_000_000,
                    taxable_income=1_000_000,
                )
            ),
            effective_from="2026-04-01",
        ),
    )


async def test_against_the_real_servers_codes_are_acquired_and_no_number_leaves_for_the_server(
    stage: Stage,
) -> None:
    numbers, half = stage.numbers, PEOPLE // 2
    channels = [
        Security(stage.pki_dir, f"bs.sakai.{s}").channel(stage.ua.address)
        for s in ("zeimu", "kouki")
    ]
    zeimu, kouki = (unified_address_pb2_grpc.UnifiedAddressServiceStub(c) for c in channels)
    try:
        unified = {}
        for i, number in enumerate(numbers[:half]):
            response = await zeimu.RegisterPerson(
                ua_pb2.RegisterPersonRequest(address_number=f"Z-{i}", individual_number=number)
            )
            assert response.code_status == ua_pb2.CODE_STATUS_ACQUIRED, response
            unified[f"Z-{i}"] = response.unified_number
        summary = await stage.ua.register_many(
            "kouki", [Registration(f"K-{i}", n) for i, n in enumerate(numbers)]
        )
        assert (summary.acquired, summary.failed) == (PEOPLE, 0)
        assert all(summary.results[i].unified_number == unified[f"Z-{i}"] for i in range(half))
        pushed = await zeimu.PushDuplicates(
            ua_pb2.PushDuplicatesRequest(
                import_id="fy2026", duplicates=[_tax(f"Z-{i}") for i in range(half)]
            )
        )
        assert pushed.imported == half
        for i in range(4):
            queried = await kouki.QueryPerson(
                ua_pb2.QueryPersonRequest(
                    query_id=f"q{i}",
                    procedure="table2:82",
                    provider="jps",
                    data_items=["pension_benefit"],
                    address_number=f"K-{i}",
                )
            )
            assert queried.result.query_id == f"q{i}"
            read = await kouki.GetPersonQueryResult(
                ua_pb2.GetPersonQueryResultRequest(query_id=f"q{i}")
            )
            assert read.result.status == queried.result.status
    finally:
        for channel in channels:
            await channel.close(None)

    received = stage.proxy.messages
    methods = {m.rsplit("/", 1)[-1] for m in stage.proxy.methods}
    assert methods == {"AcquireLinkageCode", "ImportDuplicates", "SubmitQuery", "GetQueryResult"}
    leaked = [n for n in numbers if any(n.encode() in blob for blob in received)]
    assert leaked == []
    # The capture is real: every unified number did cross the proxy.
    assert all(any(u.encode() in blob for blob in received) for u in unified.values())


async def test_the_migrated_schema_serves_health(stage: Stage) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel: grpc.aio.Channel = Security(stage.pki_dir, "bs.sakai.zeimu").channel(stage.ua.address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(
            health_pb2.HealthCheckRequest(service="linkage.v1.UnifiedAddressService")
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close(None)
