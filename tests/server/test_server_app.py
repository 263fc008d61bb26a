"""Starting a platform: migrations, keys per tenant, health, public keys, restart."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_support import ALPHA

from linkage.db import sqlite_url
from linkage.keys import KeyRing
from linkage.rpc import Security
from server import app as server_app
from server.tenancy import TenantConfig


def _config(pki_dir: Path, tmp_path: Path, url: str = "") -> server_app.Config:
    return server_app.Config(
        platform="alpha",
        database_url=url or sqlite_url(tmp_path / "platform.sqlite"),
        security=Security(pki_dir, "platform.alpha"),
        data_dir=tmp_path / "platform-alpha",
        network_address="127.0.0.1:1",  # never called here
        tenants=[TenantConfig(code, caps) for code, caps in ALPHA.items()],
    )


async def test_start_migrates_serves_health_and_keeps_keys(pki_dir: Path, tmp_path: Path) -> None:
    config = _config(pki_dir, tmp_path)
    app = await server_app.start(config)
    try:
        channel = Security(pki_dir, "ua.sakai").channel(app.address)
        async with channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", server_app.INTERMEDIATE_SERVICE, server_app.INBOUND_SERVICE):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        first = [k.key_id for k in app.tenant_public_keys("sakai")]
        assert first != [k.key_id for k in app.tenant_public_keys("jps")]
        ring = KeyRing.load(config.data_dir / "keys", "org-sakai")
        assert first == [ring.current.key_id]
    finally:
        await app.close(grace=0)
    again = await server_app.start(_config(pki_dir, tmp_path))  # same data dir: same keys
    try:
        assert [k.key_id for k in again.tenant_public_keys("sakai")] == first
    finally:
        await again.close(grace=0)


async def test_a_platform_needs_a_tenant(pki_dir: Path, tmp_path: Path) -> None:
    config = _config(pki_dir, tmp_path)
    config.tenants = []
    with pytest.raises(ValueError, match="at least one tenant"):
        await server_app.start(config)


async def test_plaintext_callers_are_refused(pki_dir: Path, tmp_path: Path) -> None:
    app = await server_app.start(_config(pki_dir, tmp_path))
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
    finally:
        await app.close(grace=0)
