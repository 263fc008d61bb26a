"""``linkage serve`` for deployments: replicas on one machine, the probe port, migrations.

``--replicas 3`` starts three processes on consecutive ports sharing one database and writes
their ports once all serve; SIGTERM to the first stops them all. ``--health-port`` answers
plaintext health checks for the mutual-TLS port (what Kubernetes' ``grpc:`` probes need).
``--migrate-only`` migrates and exits; replicas migrating at once do not trip over each other.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from resilience_support import Backend, free_base_port
from sqlalchemy import inspect

from linkage.health import SERVING, check, wait_serving
from linkage.rpc import Security
from simulator.world import SAKAI, WorldConfig, init_pki

REPLICAS = 3
START_LIMIT = 45.0
_INBOUND = "linkage.v1.InboundService"


def _serve_args(root: Path, port: int, *extra: str) -> list[str]:
    return [
        "-m",
        "linkage.cli",
        "serve",
        "server",
        "--data-dir",
        str(root),
        "--pki-dir",
        str(root / "pki"),
        "--network",
        "127.0.0.1:9",  # not needed to serve
        "--tenant",
        "sakai=municipality,medical_insurer",
        "--port",
        str(port),
        *extra,
    ]


@asynccontextmanager
async def _serving(root: Path, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m linkage.cli <args>`` until the block ends, then SIGTERM (30 s to stop)."""
    with (root / "serve.log").open("ab") as log:
        child = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=log, stderr=log)
    try:
        yield child
    finally:
        if child.returncode is None:
            child.terminate()
        await asyncio.wait_for(child.wait(), 30)


@pytest.fixture
async def root(tmp_path: Path) -> Path:
    """A data directory with the PKI of a world of Sakai alone."""
    directory = tmp_path / "world"
    await asyncio.to_thread(init_pki, WorldConfig(root=directory, organizations=[SAKAI]))
    return directory


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_replicas_serve_on_consecutive_ports_and_stop_with_the_first(root: Path) -> None:
    base = free_base_port(REPLICAS)
    port_file = root / "ports"
    admin = Security(root / "pki", "admin")
    command = _serve_args(root, base, "--replicas", str(REPLICAS), "--port-file", str(port_file))
    async with _serving(root, *command) as parent:
        target = ",".join(f"127.0.0.1:{base + k}" for k in range(REPLICAS))
        await wait_serving(admin, target, limit=START_LIMIT)
        for k in range(REPLICAS):
            await wait_serving(admin, f"127.0.0.1:{base + k}", limit=START_LIMIT)
        # Written once every replica serves, which the first learns from their health.
        expected = ",".join(str(base + k) for k in range(REPLICAS))
        await _until(lambda: _text(port_file) == expected)
    assert parent.returncode == 0
    for k in range(REPLICAS):
        with pytest.raises(grpc.aio.AioRpcError) as stopped:
            await check(admin, f"127.0.0.1:{base + k}", deadline=1)
        assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE
    databases = await asyncio.to_thread(lambda: sorted(p.name for p in root.glob("*.sqlite")))
    assert databases == ["platform-municipal.sqlite"]


async def test_the_probe_port_answers_plaintext_health_checks_for_the_tls_port(
    root: Path,
) -> None:
    base = free_base_port(2)
    async with _serving(root, *_serve_args(root, base, "--health-port", str(base + 1))):
        await wait_serving(Security(root / "pki", "admin"), f"127.0.0.1:{base}", limit=45)
        probe = Security(None, "kubelet")  # plaintext, no certificate: what a probe has
        assert await check(probe, f"127.0.0.1:{base + 1}") == SERVING
        assert await check(probe, f"127.0.0.1:{base + 1}", service=_INBOUND) == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await check(probe, f"127.0.0.1:{base + 1}", service="no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError):  # the TLS port itself stays TLS only
            await check(probe, f"127.0.0.1:{base}", deadline=1)


async def test_the_health_command_exits_by_status(root: Path) -> None:
    base = free_base_port(1)
    health = ["-m", "linkage.health", "--pki-dir", str(root / "pki")]
    assert await _exit_status(*health, f"127.0.0.1:{base}", "--timeout", "1") == 2
    async with _serving(root, *_serve_args(root, base)):
        await wait_serving(Security(root / "pki", "admin"), f"127.0.0.1:{base}", limit=45)
        assert await _exit_status(*health, f"127.0.0.1:{base}") == 0
        assert await _exit_status(*health, f"127.0.0.1:{base}", "--service", _INBOUND) == 0
        assert await _exit_status(*health, f"127.0.0.1:{base}", "--service", "x.Y") == 1


async def test_migrate_only_prepares_one_database_for_replicas_started_together(
    backend: Backend,
) -> None:
    await asyncio.to_thread(backend.create, ["platform-municipal"])
    url = backend.url("platform-municipal")
    migrate = _serve_args(backend.root, 0, "--database-url", url, "--migrate-only")
    statuses = await asyncio.gather(*(_exit_status(*migrate) for _ in range(3)))
    assert statuses == [0, 0, 0]
    with backend.engine("platform-municipal") as engine, engine.connect() as connection:
        assert "server_queries" in inspect(connection).get_table_names()


async def _exit_status(*args: str) -> int:
    child = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(child.wait(), 60)


async def _until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait for ``condition`` (checked in a thread: it may read files) for up to ``limit``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await asyncio.to_thread(condition):
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
