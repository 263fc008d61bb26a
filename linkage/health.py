"""``linkage health HOST:PORT``: ask a server's gRPC health service whether it is SERVING.

Owns the health probe every deployment needs: the command a container healthcheck runs
(``grpc_health_probe`` is not on PyPI, and our servers require a client certificate, which
probes made for plaintext servers cannot present) and the plaintext *probe port*
(``serve_probe``): a second listener that answers only ``grpc.health.v1.Health/Check`` by asking
the real, mutual-TLS port over loopback, for probes that cannot do mutual TLS (Kubernetes'
native ``grpc:`` probes). The probe port reports what the real port would: NOT_SERVING while it
drains, UNKNOWN-service NOT_FOUND for a service it does not serve, and NOT_SERVING when the real
port does not answer.

Readiness follows the database: ``DatabaseHealth`` (started by every app) runs a cheap probe
(``SELECT 1`` on a connection of its own) every few seconds and reports the server, and each of
its services, NOT_SERVING while the database does not answer and SERVING once it does again,
so a readiness probe takes the replica out of rotation during a database outage and back after
it, without a restart. The service name ``liveness`` (``linkage.rpc.LIVENESS_SERVICE``) stays
SERVING until shutdown whatever the database does: a liveness probe asks for it, so a database
outage never gets a server restarted.

Exit status of the command: 0 SERVING; 1 reachable but not SERVING (or the service is unknown);
2 unreachable or failed (no answer within the timeout, TLS refused, bad arguments).

Must never: expose anything but the health status on the plaintext port, or wait without a
deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from linkage.logs import get_logger
from linkage.rpc import RunningServer, Security

log = get_logger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
EXIT_SERVING, EXIT_NOT_SERVING, EXIT_UNREACHABLE = 0, 1, 2
DEFAULT_TIMEOUT = 3.0
DATABASE_PROBE_INTERVAL = 5.0
"""Seconds between two database probes (a readiness probe asks every 5 to 10 s)."""
DATABASE_PROBE_TIMEOUT = 3.0
"""Seconds a database probe may take before the database counts as unreachable."""


async def check(
    security: Security, target: str, *, service: str = "", deadline: float = DEFAULT_TIMEOUT
) -> int:
    """The health status (``HealthCheckResponse.ServingStatus``) of ``service`` at ``target``.

    Raises ``grpc.aio.AioRpcError`` when the server does not answer (NOT_FOUND: it does not
    serve ``service``).
    """
    async with security.channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=deadline)
        return int(reply.status)


async def wait_serving(
    security: Security, target: str, *, limit: float, service: str = "", interval: float = 0.1
) -> None:
    """Return once ``target`` reports SERVING; ``TimeoutError`` after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        remaining = deadline - loop.time()
        try:
            status = await check(
                security, target, service=service, deadline=max(0.2, min(1.0, remaining))
            )
            if status == SERVING:
                return
        except grpc.aio.AioRpcError:
            pass  # not up yet: ask again until the deadline
        if loop.time() + interval > deadline:
            raise TimeoutError(f"{target} not SERVING after {limit:.0f} s")
        await asyncio.sleep(interval)


class _ProbeHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Answers Check by asking the real port; Watch and List stay unimplemented."""

    def __init__(self, security: Security, target: str, answer_within: float) -> None:
        self._channel = security.channel(target)
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self._answer_within = answer_within

    async def Check(  # noqa: N802 — the gRPC method name
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        try:
            return await self._stub.Check(request, timeout=self._answer_within)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
            return health_pb2.HealthCheckResponse(status=NOT_SERVING)

    async def close(self) -> None:
        await self._channel.close(None)


class ProbeServer:
    """A plaintext listener that serves only the health of the real (mutual-TLS) port."""

    def __init__(self, server: grpc.aio.Server, servicer: _ProbeHealth, port: int) -> None:
        self._server = server
        self._servicer = servicer
        self.port = port

    async def stop(self, grace: float = 1.0) -> None:
        await self._server.stop(grace)
        await self._servicer.close()


async def serve_probe(
    security: Security,
    target: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    answer_within: float = 1.0,
) -> ProbeServer:
    """Start the plaintext probe port for the server at ``target`` (reached as ``security``);
    a check the real port does not answer within ``answer_within`` seconds is NOT_SERVING."""
    servicer = _ProbeHealth(security, target, answer_within)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        await servicer.close()
        raise OSError(f"could not bind the probe port {host}:{port}")
    await server.start()
    return ProbeServer(server, servicer, bound)


class DatabaseHealth:
    """Keeps a server's health status in step with its database.

    ``check`` is a blocking probe (``linkage.db.ping`` of a probe engine) that raises when the
    database does not answer; it runs in a worker thread every ``interval`` seconds, the first
    time at ``start``. A probe that raises, or takes longer than ``timeout``, makes the server
    (service "") and each of its services NOT_SERVING; the next probe that succeeds makes them
    SERVING again. A probe still running at the next tick counts as a failure and is not
    started twice. ``stop`` before the server stops (it then reports NOT_SERVING for good).
    """

    def __init__(
        self,
        server: RunningServer,
        check: Callable[[], object],
        *,
        interval: float = DATABASE_PROBE_INTERVAL,
        timeout: float = DATABASE_PROBE_TIMEOUT,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        self._server = server
        self._check = check
        self._interval = interval
        self._timeout = timeout
        self._probe: asyncio.Future[object] | None = None
        self._task: asyncio.Task[None] | None = None
        self.reachable = True  # the server starts SERVING: its start-up used the database

    async def start(self) -> None:
        """Probe now, then every ``interval`` seconds (a second start does nothing)."""
        if self._task is None or self._task.done():
            await self.probe_once()
            self._task = asyncio.create_task(self._run(), name="database-health")

    async def stop(self) -> None:
        """Stop probing; a probe in progress may finish (up to ``timeout``) first, so none runs
        once this returns (the app disposes of the probe's engine next)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._probe is not None and not self._probe.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._probe), self._timeout)

    async def probe_once(self) -> bool:
        """Probe the database now and report the outcome; whether it answered."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(asyncio.to_thread(self._check))
            self._probe.add_done_callback(_retrieve)
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), self._timeout)
            reachable = True
        except Exception as error:  # the probe failed or timed out: unreachable
            reachable = False
            problem = type(error).__name__
        if reachable != self.reachable:
            if reachable:
                log.info("database_reachable")
            else:
                log.warning("database_unreachable", error=problem)
        self.reachable = reachable
        status = SERVING if reachable else NOT_SERVING
        for name in ("", *self._server.service_names):
            await self._server.health.set(name, status)
        return reachable

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe_once()


def _retrieve(probe: asyncio.Future[object]) -> None:
    """Take the outcome of a probe nobody awaited any more (it outlived its timeout)."""
    if not probe.cancelled():
        probe.exception()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linkage health", description=__doc__.split("\n")[0])
    parser.add_argument("target", help="host:port of the server (or a comma-separated list)")
    parser.add_argument("--service", default="", help="a service name; empty: the whole server")
    parser.add_argument(
        "--pki-dir",
        type=Path,
        default=Path(os.environ.get("LINKAGE_PKI_DIR", "data/pki")),
        help="PKI directory with ca.pem and the identity's certificate",
    )
    parser.add_argument(
        "--identity",
        default=os.environ.get("LINKAGE_HEALTH_IDENTITY", "admin"),
        help="client certificate to present (any identity of the PKI will do)",
    )
    parser.add_argument("--insecure", action="store_true", help="plaintext (probe port, debug)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds")
    return parser


def main(argv: list[str]) -> int:
    """``linkage health``: print the status and exit 0 (SERVING), 1 (not) or 2 (unreachable)."""
    args = _parser().parse_args(argv)
    security = Security(None if args.insecure else args.pki_dir, args.identity)
    try:
        status = asyncio.run(
            check(security, args.target, service=args.service, deadline=args.timeout)
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            print(f"{args.target}: SERVICE_UNKNOWN {args.service}", file=sys.stderr)
            return EXIT_NOT_SERVING
        print(f"{args.target}: UNREACHABLE {error.code().name}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (OSError, ValueError) as error:
        print(f"linkage health: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"{args.target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    return EXIT_SERVING if status == SERVING else EXIT_NOT_SERVING


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
