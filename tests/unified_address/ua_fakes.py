"""Small fake upstream servers for the unified address tests, over real gRPC with mutual TLS.

``FakeRegistry`` implements ``ResidentRegistryService`` and ``FakeIntermediateServer``
implements ``IntermediateServerService`` just far enough for the unified address server to be
exercised end to end: identity checks as the architecture states them, idempotency where the
contract promises it, and a queue of failures to inject (``fail_next``). Every server started by
``serve`` records every request byte it receives (``ByteRecorder``), before any parsing, so a test
can assert what never crossed the wire.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2

from linkage import pki
from linkage.errors import FailedPrecondition, LinkageError, NotFound, PermissionDenied
from linkage.rpc import ContextInterceptor, caller
from linkage.v1 import (
    common_pb2,
    intermediate_server_pb2,
    intermediate_server_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from unified_address.individual_number import is_valid

Context = grpc.aio.ServicerContext[Any, Any]


class ByteRecorder(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Keeps every raw request message and the invocation metadata of every call."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.methods: list[str] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        self.methods.append(details.method)  # type: ignore[attr-defined]
        for key, value in details.invocation_metadata or ():  # type: ignore[attr-defined]
            raw = value if isinstance(value, bytes) else str(value).encode()
            self.messages.append(key.encode() + b"=" + raw)
        deserialize = handler.request_deserializer

        def recording(raw: bytes) -> Any:
            self.messages.append(bytes(raw))
            return deserialize(raw)

        return handler._replace(request_deserializer=recording)


@dataclass
class Served:
    """A running fake: its address, the servicer, and the bytes it received."""

    server: grpc.aio.Server
    port: int
    recorder: ByteRecorder

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def serve(pki_dir: Path, identity: str, add: Callable[[grpc.aio.Server], None]) -> Served:
    """Start an mTLS server like ``linkage.rpc.start_server`` does, plus a byte recorder."""
    recorder = ByteRecorder()
    server = grpc.aio.server(interceptors=[recorder, ContextInterceptor(insecure=False)])
    add(server)
    port = server.add_secure_port("127.0.0.1:0", pki.server_credentials(pki_dir, identity))
    await server.start()
    return Served(server, port, recorder)


class _Failures:
    """Errors to raise on the next calls, in order (then calls succeed)."""

    def __init__(self) -> None:
        self.queue: list[LinkageError] = []

    def fail_next(self, *errors: LinkageError) -> None:
        self.queue.extend(errors)

    def maybe_raise(self) -> None:
        if self.queue:
            raise self.queue.pop(0)


class FakeRegistry(registry_pb2_grpc.ResidentRegistryServiceServicer):
    """Issues a fresh serial per call for any valid individual number; checks the caller."""

    def __init__(self, organization: str) -> None:
        self.organization = organization
        self.failures = _Failures()
        self.numbers_seen: list[str] = []
        self._serials = itertools.count(1)

    async def IssueProcessingSerial(  # noqa: N802 - the gRPC method name
        self, request: registry_pb2.IssueProcessingSerialRequest, context: Context
    ) -> registry_pb2.IssueProcessingSerialResponse:
        if caller() != f"ua.{request.organization}" or request.organization != self.organization:
            raise PermissionDenied("ORGANIZATION_MISMATCH", "not the caller's organization")
        self.numbers_seen.append(request.individual_number)
        self.failures.maybe_raise()
        if not is_valid(request.individual_number):
            raise NotFound("RESIDENT_NOT_FOUND", "no such resident")
        return registry_pb2.IssueProcessingSerialResponse(
            processing_serial=f"serial-{next(self._serials)}"
        )


@dataclass
class FakeIntermediateServer(intermediate_server_pb2_grpc.IntermediateServerServiceServicer):
    """One tenant's side of the intermediate server, in memory."""

    organization: str
    failures: _Failures = field(default_factory=_Failures)
    codes: dict[str, str] = field(default_factory=dict)  # unified number -> serial
    imports: dict[str, list[intermediate_server_pb2.ImportDuplicatesRequest]] = field(
        default_factory=dict
    )
    queries: dict[str, intermediate_server_pb2.QuerySpec] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    delay: float = 0.0

    @property
    def parent(self) -> str:
        return f"organizations/{self.organization}"

    def _check(self, parent: str) -> None:
        if caller() != f"ua.{self.organization}" or parent != self.parent:
            raise PermissionDenied("TENANT_MISMATCH", "parent is not the caller's organization")

    async def AcquireLinkageCode(  # noqa: N802 - the gRPC method name
        self, request: intermediate_server_pb2.AcquireLinkageCodeRequest, context: Context
    ) -> intermediate_server_pb2.AcquireLinkageCodeResponse:
        self._check(request.parent)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.failures.maybe_raise()
            self.codes.setdefault(request.unified_number, request.processing_serial)
        finally:
            self.in_flight -= 1
        return intermediate_server_pb2.AcquireLinkageCodeResponse(
            acquired_at=timestamp_pb2.Timestamp(seconds=1_750_000_000)
        )

    async def ImportDuplicates(  # noqa: N802 - the gRPC method name
        self,
        request_iterator: AsyncIterator[intermediate_server_pb2.ImportDuplicatesRequest],
        context: Context,
    ) -> intermediate_server_pb2.ImportDuplicatesResponse:
        chunks = [chunk async for chunk in request_iterator]
        for chunk in chunks:
            self._check(chunk.parent)
        self.failures.maybe_raise()
        import_id = chunks[0].import_id
        if import_id in self.imports:
            return intermediate_server_pb2.ImportDuplicatesResponse(already_imported=True)
        self.imports[import_id] = chunks
        count = sum(len(chunk.records) for chunk in chunks)
        return intermediate_server_pb2.ImportDuplicatesResponse(imported=count)

    def _result(
        self, spec: intermediate_server_pb2.QuerySpec
    ) -> intermediate_server_pb2.QueryResult:
        return intermediate_server_pb2.QueryResult(
            name=f"{self.parent}/queries/{spec.query_id}",
            query_id=spec.query_id,
            status=common_pb2.QUERY_STATUS_PROVIDED,
            permit_id="permit-1",
            values=[
                common_pb2.DuplicateValue(
                    data_item=item,
                    content=common_pb2.DataItemContent(
                        local_tax=common_pb2.LocalTax(fiscal_year=2026, total_income=1_200_000)
                    ),
                    effective_from="2026-04-01",
                    version=1,
                )
                for item in spec.data_items
            ],
        )

    async def SubmitQuery(  # noqa: N802 - the gRPC method name
        self, request: intermediate_server_pb2.SubmitQueryRequest, context: Context
    ) -> intermediate_server_pb2.SubmitQueryResponse:
        self._check(request.parent)
        self.failures.maybe_raise()
        if request.query.unified_number not in self.codes:
            raise FailedPrecondition("NO_LINKAGE_CODE", "no linkage code for the person")
        spec = self.queries.setdefault(request.query.query_id, request.query)
        return intermediate_server_pb2.SubmitQueryResponse(result=self._result(spec))

    async def GetQueryResult(  # noqa: N802 - the gRPC method name
        self, request: intermediate_server_pb2.GetQueryResultRequest, context: Context
    ) -> intermediate_server_pb2.GetQueryResultResponse:
        parent, _, query_id = request.name.partition("/queries/")
        self._check(parent)
        spec = self.queries.get(query_id)
        if spec is None:
            raise NotFound("QUERY_NOT_FOUND", "no such query")
        return intermediate_server_pb2.GetQueryResultResponse(result=self._result(spec))


class RecordingProxy(grpc.GenericRpcHandler):
    """A byte-forwarding proxy for the unary and client-streaming methods of a real server.

    Sits between the unified address server and the real intermediate server, so the real
    server needs no test hook: it records each request message as raw bytes (never parsed,
    so nothing is missed) and forwards it unchanged over its own channel, returning the
    upstream's response or status (with its error details) unchanged.
    """

    def __init__(self, upstream: grpc.aio.Channel, streaming: frozenset[str]) -> None:
        self._upstream = upstream
        self._streaming = streaming  # full method names whose requests are streamed
        self.messages: list[bytes] = []
        self.methods: list[str] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        if method in self._streaming:
            return grpc.stream_unary_rpc_method_handler(self._stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    def _unary(self, method: str) -> Callable[[bytes, Context], Awaitable[bytes]]:
        async def forward(request: bytes, context: Context) -> bytes:
            self.methods.append(method)
            self.messages.append(request)
            call = self._upstream.unary_unary(method)
            try:
                response: bytes = await call(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                await context.abort(
                    error.code(), error.details() or "", tuple(error.trailing_metadata() or ())
                )
                raise
            return response

        return forward

    def _stream(self, method: str) -> Callable[[AsyncIterator[bytes], Context], Awaitable[bytes]]:
        async def forward(requests: AsyncIterator[bytes], context: Context) -> bytes:
            self.methods.append(method)
            chunks = [chunk async for chunk in requests]
            self.messages.extend(chunks)

            async def replay() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    yield chunk

            call = self._upstream.stream_unary(method)
            try:
                response: bytes = await call(replay(), timeout=60)
            except grpc.aio.AioRpcError as error:
                await context.abort(
                    error.code(), error.details() or "", tuple(error.trailing_metadata() or ())
                )
                raise
            return response

        return forward


async def serve_proxy(
    pki_dir: Path, identity: str, proxy: RecordingProxy
) -> tuple[grpc.aio.Server, int]:
    """Serve ``proxy`` under the certificate ``identity`` (that of the server it stands for)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((proxy,))
    port = server.add_secure_port("127.0.0.1:0", pki.server_credentials(pki_dir, identity))
    await server.start()
    return server, port
