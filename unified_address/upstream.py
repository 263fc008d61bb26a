"""gRPC clients of the upstream systems, implementing ``unified_address.ports``.

Owns the wire side of the ports: the resident registry (``IssueProcessingSerial``) and the
organization's tenant at the intermediate server (``AcquireLinkageCode``, ``ImportDuplicates``,
``SubmitQuery``, ``StreamQueries``, ``GetQueryResult``), all as ``ua.<org>`` over mutual TLS,
each call with a deadline (a batch stream: the caller's, if any). A failed call becomes the
``LinkageError`` subclass of its status code carrying the upstream's reason and field
violations, so the domain sees one error type and a business system sees the upstream's own
reason.

Must never: put an individual number in any message but ``IssueProcessingSerialRequest``, or
let a transport error escape as anything but a ``LinkageError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf import duration_pb2

from linkage import errors
from linkage.v1 import (
    intermediate_server_pb2,
    intermediate_server_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from unified_address.audit import upper_snake
from unified_address.ports import DuplicateRow, ImportOutcome, QueryRequest

__all__ = ["GrpcIntermediateServer", "GrpcRegistry", "translate"]

# One ImportDuplicates chunk may hold at most this many records (the contract's limit).
IMPORT_CHUNK = 10_000

_BY_CODE: dict[str, type[errors.LinkageError]] = {
    "INVALID_ARGUMENT": errors.InvalidArgument,
    "NOT_FOUND": errors.NotFound,
    "ALREADY_EXISTS": errors.AlreadyExists,
    "PERMISSION_DENIED": errors.PermissionDenied,
    "UNAUTHENTICATED": errors.Unauthenticated,
    "FAILED_PRECONDITION": errors.FailedPrecondition,
    "RESOURCE_EXHAUSTED": errors.ResourceExhausted,
    "DEADLINE_EXCEEDED": errors.DeadlineExceeded,
    "INTERNAL": errors.Internal,
}


def translate(error: grpc.RpcError, upstream: str) -> errors.LinkageError:
    """The domain error for a failed upstream call: same code (UNAVAILABLE for anything
    unexpected: a retry is the only sensible reaction), the upstream's reason or the code name."""
    remote = errors.remote_error(error)
    kind = _BY_CODE.get(remote.code, errors.Unavailable)
    return kind(
        upper_snake(remote.reason) or remote.code,
        f"{upstream}: {remote.message}" if remote.message else f"{upstream} failed",
        metadata={**remote.metadata, "upstream": upstream},
        violations=remote.violations,
    )


def _spec(query: QueryRequest) -> intermediate_server_pb2.QuerySpec:
    return intermediate_server_pb2.QuerySpec(
        query_id=query.query_id,
        requester_capacity=query.requester_capacity,
        procedure=query.procedure,
        provider=query.provider,
        data_items=query.data_items,
        unified_number=query.unified_number,
        on_date=query.on_date,
        business_system=query.business_system,
    )


_MAX_TEMPLATES = 1024


def _fill_spec(
    spec: intermediate_server_pb2.QuerySpec,
    query: QueryRequest,
    shared: dict[tuple[str, str, str, tuple[str, ...], str, str], Any],
) -> None:
    """``_spec`` into an empty ``spec``: the fields queries of a stream have in common are
    copied from a template (one copy beats setting them one by one), then the query's own."""
    group = (
        query.requester_capacity,
        query.procedure,
        query.provider,
        query.data_items,
        query.on_date,
        query.business_system,
    )
    template = shared.get(group)
    if template is None:
        template = shared[group] = intermediate_server_pb2.QuerySpec(
            requester_capacity=query.requester_capacity,
            procedure=query.procedure,
            provider=query.provider,
            data_items=query.data_items,
            on_date=query.on_date,
            business_system=query.business_system,
        )
    spec.CopyFrom(template)
    spec.query_id = query.query_id
    spec.unified_number = query.unified_number


class GrpcRegistry:
    """``SerialIssuer`` over gRPC: the resident registry, called as ``ua.<org>``."""

    def __init__(self, channel: grpc.aio.Channel, organization: str, timeout: float) -> None:
        self._stub = registry_pb2_grpc.ResidentRegistryServiceStub(channel)
        self._organization = organization
        self._timeout = timeout

    async def issue_processing_serial(self, individual_number: str) -> str:
        request = registry_pb2.IssueProcessingSerialRequest(
            organization=self._organization, individual_number=individual_number
        )
        try:
            response = await self._stub.IssueProcessingSerial(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise translate(error, "registry") from None
        return response.processing_serial


class GrpcIntermediateServer:
    """``IntermediateServer`` over gRPC: this organization's tenant, as ``ua.<org>``."""

    def __init__(self, channel: grpc.aio.Channel, organization: str, timeout: float) -> None:
        self._stub = intermediate_server_pb2_grpc.IntermediateServerServiceStub(channel)
        self._parent = f"organizations/{organization}"
        self._timeout = timeout

    async def acquire_linkage_code(self, unified_number: str, processing_serial: str) -> None:
        request = intermediate_server_pb2.AcquireLinkageCodeRequest(
            parent=self._parent, unified_number=unified_number, processing_serial=processing_serial
        )
        try:
            await self._stub.AcquireLinkageCode(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise translate(error, "intermediate server") from None

    async def import_duplicates(
        self, import_id: str, business_system: str, rows: Sequence[DuplicateRow]
    ) -> ImportOutcome:
        async def chunks() -> AsyncIterator[intermediate_server_pb2.ImportDuplicatesRequest]:
            for start in range(0, max(len(rows), 1), IMPORT_CHUNK):
                yield intermediate_server_pb2.ImportDuplicatesRequest(
                    parent=self._parent,
                    import_id=import_id,
                    business_system=business_system,
                    records=[
                        intermediate_server_pb2.DuplicateRecord(
                            unified_number=row.unified_number,
                            value=row.value,
                            auto_response_disabled=row.auto_response_disabled,
                        )
                        for row in rows[start : start + IMPORT_CHUNK]
                    ],
                )

        try:
            response = await self._stub.ImportDuplicates(chunks(), timeout=self._timeout)
        except grpc.RpcError as error:
            raise translate(error, "intermediate server") from None
        return ImportOutcome(response.imported, response.already_imported)

    async def submit_query(self, query: QueryRequest) -> intermediate_server_pb2.QueryResult:
        request = intermediate_server_pb2.SubmitQueryRequest(
            parent=self._parent, query=_spec(query)
        )
        try:
            response = await self._stub.SubmitQuery(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise translate(error, "intermediate server") from None
        return response.result

    async def stream_queries(
        self, batches: AsyncIterator[Sequence[QueryRequest]], deadline: float | None = None
    ) -> AsyncIterator[list[intermediate_server_pb2.QueryResult]]:
        """``StreamQueries``: no deadline of its own (a batch runs as long as it needs) unless
        ``deadline`` (seconds) is given, say the business system's own."""

        async def requests() -> AsyncIterator[intermediate_server_pb2.StreamQueriesRequest]:
            # Templates of the fields the stream's queries share (see ``_fill_spec``).
            shared: dict[tuple[str, str, str, tuple[str, ...], str, str], Any] = {}
            async for batch in batches:
                request = intermediate_server_pb2.StreamQueriesRequest(parent=self._parent)
                add = request.queries.add
                if len(shared) > _MAX_TEMPLATES:
                    shared.clear()
                for query in batch:
                    _fill_spec(add(), query, shared)
                yield request

        call = self._stub.StreamQueries(requests(), timeout=deadline)
        try:
            async for response in call:
                yield list(response.results)
        except grpc.RpcError as error:
            raise translate(error, "intermediate server") from None
        finally:
            call.cancel()  # the consumer stopped early: end the upstream call too (no-op if done)

    async def get_query_result(
        self, query_id: str, wait_seconds: float
    ) -> intermediate_server_pb2.QueryResult:
        wait = duration_pb2.Duration()
        wait.FromNanoseconds(int(wait_seconds * 1e9))
        request = intermediate_server_pb2.GetQueryResultRequest(
            name=f"{self._parent}/queries/{query_id}", wait=wait
        )
        try:
            # The server may hold the call for the whole wait: the deadline must cover it.
            response = await self._stub.GetQueryResult(
                request, timeout=self._timeout + wait_seconds
            )
        except grpc.RpcError as error:
            raise translate(error, "intermediate server") from None
        return response.result
