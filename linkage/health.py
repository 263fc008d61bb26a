"""``linkage health HOST:PORT``: ask a server's gRPC health service whether it is SERVING.

Owns the health probe every deployment needs: the command a container healthcheck runs
(``grpc_health_probe`` is not on PyPI, and our servers require a client certificate, which
probes made for plaintext servers cannot present) and the plaintext *probe port*
(``serve_probe``): a second listener that answers only ``grpc.health.v1.Health/Check`` by asking
the real, mutual-TLS port over loopback, for probes that cannot do mutual TLS (Kubernetes'
native ``grpc:`` probes). The probe port reports what the real port would: NOT_SERVING while it
drains, UNKNOWN-service NOT_FOUND for a service it does not serve, and NOT_SERVING when the real
port does not answer.

Exit status of the command: 0 SERVING; 1 reachable but not SERVING (or the service is unknown);
2 unreachable or failed (no answer within the timeout, TLS refused, bad arguments).

Must never: expose anything but the health status on the plaintext port, or wait without a
deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from linkage.rpc import Security

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
EXIT_SERVING, EXIT_NOT_SERVING, EXIT_UNREACHABLE = 0, 1, 2
DEFAULT_TIMEOUT = 3.0


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
