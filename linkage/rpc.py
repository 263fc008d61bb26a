"""gRPC plumbing shared by every server: the factory, health, reflection, interceptors.

Servicers stay thin: they translate messages and call domain code. Cross-cutting concerns live
here, once: the caller's identity from its mutual-TLS certificate, request context bound into
structlog, and the translation of domain errors (``linkage.errors``) into a status with an
ErrorInfo. Unexpected exceptions become INTERNAL without details (and are logged, scrubbed).
"""

from __future__ import annotations

import asyncio
import contextvars
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

from linkage.errors import Internal, LinkageError, Unauthenticated, to_rpc_status
from linkage.logs import get_logger

log = get_logger(__name__)

# The authenticated caller of the current RPC (certificate common name), set by the interceptor.
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("linkage_caller", default="")
# Metadata key carrying a claimed identity on insecure (debug) channels only.
INSECURE_IDENTITY_KEY = "x-linkage-insecure-identity"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


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

    def channel(self, target: str, *, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An aio channel to ``target`` presenting this identity."""
        opts = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            *options,
        ]
        if self.pki_dir is None:
            interceptor: Any = _InsecureIdentityClientInterceptor(self.identity)
            return grpc.aio.insecure_channel(target, options=opts, interceptors=[interceptor])
        from linkage import pki

        return grpc.aio.secure_channel(
            target, pki.channel_credentials(self.pki_dir, self.identity), options=opts
        )


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


def _wrap_unary(
    behavior: Callable[..., Awaitable[Any]], method: str, insecure: bool
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _enter(context, method, insecure)
        try:
            return await behavior(request, context)
        except LinkageError as error:
            await _fail(context, method, error)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("rpc_crashed", method=method)
            await _abort(context, Internal("INTERNAL", "internal error"))
        return None

    return wrapper


def _wrap_stream(
    behavior: Callable[..., AsyncIterator[Any]], method: str, insecure: bool
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _enter(context, method, insecure)
        try:
            async for item in behavior(request, context):
                yield item
        except LinkageError as error:
            await _fail(context, method, error)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("rpc_crashed", method=method)
            await _abort(context, Internal("INTERNAL", "internal error"))

    return wrapper


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
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, self._insecure),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, self._insecure),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, self._insecure),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method, self._insecure),
            request_deserializer=handler.request_deserializer,
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
    for name in ("", *names):
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
