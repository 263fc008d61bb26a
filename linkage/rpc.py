"""gRPC plumbing shared by every server: the factory, health, reflection, interceptors.

Servicers stay thin: they translate messages and call domain code. Cross-cutting concerns live
here, once: the caller's identity from its mutual-TLS certificate, request context bound into
structlog, and the translation of domain errors (``linkage.errors``) into a status with an
ErrorInfo. A request that does not parse is INVALID_ARGUMENT, a database that cannot be
reached is UNAVAILABLE (retry later); anything else unexpected becomes INTERNAL without details
(and is logged, scrubbed).

Clients: ``Security.channel`` takes one ``host:port`` or several comma-separated (the replicas of
one system), balanced round robin. Environment (for deployments, unset in tests):
``LINKAGE_TLS_SERVER_NAME`` is the name checked against server certificates (e.g. ``localhost``,
which every leaf of ``linkage.pki`` carries, when servers are reached by service names) on
channels that name no ``server`` identity (one that does checks that identity's name instead);
``LINKAGE_GRPC_LB_POLICY`` (e.g. ``round_robin``) balances a single name that resolves to several
addresses (a headless Kubernetes Service, a Compose service with replicas).
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy import exc as sa_exc

from linkage.errors import (
    Internal,
    InvalidArgument,
    LinkageError,
    Unauthenticated,
    Unavailable,
    to_rpc_status,
)
from linkage.logs import get_logger

log = get_logger(__name__)

# The authenticated caller of the current RPC (certificate common name), set by the interceptor.
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("linkage_caller", default="")
# Metadata key carrying a claimed identity on insecure (debug) channels only.
INSECURE_IDENTITY_KEY = "x-linkage-insecure-identity"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
LIVENESS_SERVICE = "liveness"
"""A health service name that is SERVING from start to shutdown, whatever the database does
(``linkage.health.DatabaseHealth`` moves the others): what a liveness probe asks for."""
TLS_SERVER_NAME_ENV = "LINKAGE_TLS_SERVER_NAME"
LB_POLICY_ENV = "LINKAGE_GRPC_LB_POLICY"
_NAME_OVERRIDE = "grpc.ssl_target_name_override"
# SQLite errors that mean "the database cannot be used right now", not "the statement is wrong".
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database", "disk i/o error")


def caller() -> str:
    """The identity of the caller of the RPC being served."""
    return CALLER.get()


@dataclass(frozen=True, slots=True)
class Security:
    """How a server or client authenticates: mutual TLS from a PKI directory, or insecure.

    ``insecure`` exists only for local debugging; callers then claim an identity in metadata,
    which nothing in production trusts.
    """

    pki_dir: Path | None
    identity: str

    @property
    def insecure(self) -> bool:
        return self.pki_dir is None

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if self.pki_dir is None:
            return None
        from linkage import pki

        return pki.server_credentials(self.pki_dir, self.identity)

    def channel(
        self,
        target: str,
        *,
        server: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> grpc.aio.Channel:
        """An aio channel to ``target`` presenting this identity.

        ``target`` is ``host:port`` or a comma-separated list of them (replicas of one system,
        see ``channel_target``); explicit ``options`` win over the defaults.

        ``server`` is the identity the caller means to reach (``network``, ``platform.sakai``):
        with TLS, the server's certificate must then name it (``pki.server_name``), not merely
        come from the CA. It takes the place of any other name to check (the first host of a
        replica list, ``LINKAGE_TLS_SERVER_NAME``, which would accept every leaf's
        ``localhost``). Without ``server`` any certificate of the CA is accepted.
        """
        target, balancing = channel_target(target)
        opts = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            *balancing,
            *_environment_options(),
        ]
        if server is not None and self.pki_dir is not None:
            from linkage import pki

            opts = [opt for opt in opts if opt[0] != _NAME_OVERRIDE]
            opts.append((_NAME_OVERRIDE, pki.server_name(server)))
        opts.extend(options)
        if self.pki_dir is None:
            interceptor: Any = _InsecureIdentityClientInterceptor(self.identity)
            return grpc.aio.insecure_channel(target, options=opts, interceptors=[interceptor])
        from linkage import pki

        return grpc.aio.secure_channel(
            target, pki.channel_credentials(self.pki_dir, self.identity), options=opts
        )


def channel_target(target: str) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target for ``target`` and the options it needs.

    One address is passed through. Several comma-separated ``ip:port`` addresses (the replicas
    of one system) become one ``ipv4:``/``ipv6:`` target balanced round robin, each call going to
    the next replica that is up; the server certificates are checked against the first host (the
    target of such a list is no host name; ``LINKAGE_TLS_SERVER_NAME`` overrides it). A list must
    name IP addresses: a host name that resolves to several addresses is one target (with
    ``LINKAGE_GRPC_LB_POLICY=round_robin``).
    """
    parts = [part.strip() for part in target.split(",") if part.strip()]
    if len(parts) <= 1:
        return (parts[0] if parts else target), []
    hosts: list[str] = []
    families: set[int] = set()
    for part in parts:
        host, _, port = part.rpartition(":")
        bare = host.removeprefix("[").removesuffix("]")
        try:
            families.add(ipaddress.ip_address(bare).version)
        except ValueError:
            raise ValueError(f"a list of replicas must name IP addresses, not {part!r}") from None
        if not port.isdigit():
            raise ValueError(f"{part!r} is not ip:port")
        hosts.append(bare)
    if len(families) != 1:
        raise ValueError("a list of replicas must not mix IPv4 and IPv6 addresses")
    scheme = "ipv4" if families == {4} else "ipv6"
    return f"{scheme}:{','.join(parts)}", [
        ("grpc.lb_policy_name", "round_robin"),
        (_NAME_OVERRIDE, hosts[0]),
    ]


def _environment_options() -> list[tuple[str, Any]]:
    """Channel options a deployment sets through the environment (none by default)."""
    options: list[tuple[str, Any]] = []
    if name := os.environ.get(TLS_SERVER_NAME_ENV, ""):
        options.append((_NAME_OVERRIDE, name))
    if policy := os.environ.get(LB_POLICY_ENV, ""):
        options.append(("grpc.lb_policy_name", policy))
    return options


def _identity_of(context: grpc.aio.ServicerContext[Any, Any], insecure: bool) -> str:
    if insecure:
        for key, value in context.invocation_metadata() or ():
            if key == INSECURE_IDENTITY_KEY:
                return str(value)
        return ""
    from linkage import pki

    return pki.peer_identity(context) or ""


async def _abort(context: Any, error: LinkageError) -> None:
    # grpc.aio's context has abort_with_status; the published stubs do not declare it.
    await context.abort_with_status(to_rpc_status(error))


class _Unparsed:
    """Stands for a request message that did not parse (the deserializer never raises)."""


_MALFORMED = InvalidArgument("MALFORMED_REQUEST", "the request message does not parse")


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns ``_Unparsed`` instead of raising (grpc would say UNKNOWN)."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return _Unparsed()

    return parse


def _checked_request(request: Any) -> Any:
    """The request, or an iterator of requests, failing with INVALID_ARGUMENT where one did
    not parse (a stream fails at the bad message, as its handler reads it)."""
    if isinstance(request, _Unparsed):
        raise _MALFORMED
    if not hasattr(request, "__aiter__"):
        return request

    async def checked() -> AsyncIterator[Any]:
        async for item in request:
            if isinstance(item, _Unparsed):
                raise _MALFORMED
            yield item

    return checked()


def database_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached or used right now (a retry may
    succeed), as opposed to a statement that is wrong."""
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection became free
        return True
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    if not isinstance(error, sa_exc.OperationalError):
        return False
    if type(error.orig).__module__.startswith("sqlite3"):
        return str(error.orig).lower().startswith(_SQLITE_UNAVAILABLE)
    # PostgreSQL: connection failures, shutdown or termination of the backend, no resources.
    return True


_DATABASE_UNAVAILABLE = Unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry")


def _wrap_unary(
    behavior: Callable[..., Awaitable[Any]], method: str, insecure: bool
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _enter(context, method, insecure)
        try:
            return await behavior(_checked_request(request), context)
        except LinkageError as error:
            await _fail(context, method, error)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await _crashed(context, method, error)
        return None

    return wrapper


def _wrap_stream(
    behavior: Callable[..., AsyncIterator[Any]], method: str, insecure: bool
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _enter(context, method, insecure)
        try:
            async for item in behavior(_checked_request(request), context):
                yield item
        except LinkageError as error:
            await _fail(context, method, error)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await _crashed(context, method, error)

    return wrapper


async def _crashed(
    context: grpc.aio.ServicerContext[Any, Any], method: str, error: Exception
) -> None:
    """An exception no domain code turned into a status: UNAVAILABLE when the database is
    down (the caller may retry), else INTERNAL without details (logged, scrubbed)."""
    if database_unavailable(error):
        log.warning("database_unavailable", method=method, error=type(error).__name__)
        await _abort(context, _DATABASE_UNAVAILABLE)
        return
    log.exception("rpc_crashed", method=method)
    await _abort(context, Internal("INTERNAL", "internal error"))


def _enter(context: grpc.aio.ServicerContext[Any, Any], method: str, insecure: bool) -> None:
    identity = _identity_of(context, insecure)
    CALLER.set(identity)
    structlog.contextvars.bind_contextvars(
        rpc=method, caller=identity, request_id=uuid.uuid4().hex[:12]
    )


async def _fail(
    context: grpc.aio.ServicerContext[Any, Any], method: str, err: LinkageError
) -> None:
    log.info("rpc_failed", method=method, code=err.code.name, reason=err.reason)
    await _abort(context, err)


class ContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates the caller, binds request context, translates domain errors."""

    def __init__(self, *, insecure: bool) -> None:
        self._insecure = insecure

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(_OPEN_METHODS):
            return handler
        parse = _lenient(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, self._insecure),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, self._insecure),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, self._insecure),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method, self._insecure),
            request_deserializer=parse,
            response_serializer=handler.response_serializer,
        )


class _InsecureIdentityClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Debug only: claims an identity in metadata because there is no certificate."""

    def __init__(self, identity: str) -> None:
        self._identity = identity

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        metadata.append((INSECURE_IDENTITY_KEY, self._identity))
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


Registrar = Callable[[grpc.aio.Server], None]


@dataclass
class RunningServer:
    """A started server, the port it bound, and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped package)
    service_names: tuple[str, ...]
    started_at: float

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: report NOT_SERVING, let in-flight calls finish, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(
    registrars: Iterable[tuple[Registrar, str]],
    *,
    security: Security,
    host: str = "127.0.0.1",
    port: int = 0,
) -> RunningServer:
    """Create, bind and start a grpc.aio server with health, reflection and our interceptor.

    ``registrars`` pairs a function that adds a servicer with the service's full name (from its
    descriptor) for health and reflection. Port 0 binds a free port (tests).
    """
    server = grpc.aio.server(
        interceptors=[ContextInterceptor(insecure=security.insecure)],
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    names: list[str] = []
    for register, name in registrars:
        register(server)
        names.append(name)
    health_servicer: Any = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection((*service_names, reflection.SERVICE_NAME), server)
    credentials = security.server_credentials()
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    for name in ("", *names, LIVENESS_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, bound, health_servicer, tuple(names), time.monotonic())


async def wait_for_signal() -> None:
    """Return once SIGTERM or SIGINT arrives (the caller then shuts down gracefully)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting_down")


def require_caller(*allowed_prefixes: str) -> str:
    """The caller's identity if it starts with one of the prefixes; UNAUTHENTICATED if none."""
    identity = caller()
    if not identity:
        raise Unauthenticated("NO_CLIENT_IDENTITY", "a client certificate is required")
    if allowed_prefixes and not identity.startswith(allowed_prefixes):
        from linkage.errors import PermissionDenied

        raise PermissionDenied("CALLER_NOT_ALLOWED", f"{identity} may not call this service")
    return identity
