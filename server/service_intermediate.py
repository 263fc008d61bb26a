"""``IntermediateServerService``: what the organization's unified address server calls.

Thin servicer (既存システム接続機能): binds the caller's certificate (``ua.<code>``) to the
tenant its request names before anything else (PERMISSION_DENIED otherwise), parses the request
into domain values, calls the domain and builds the response. Errors are raised as
``linkage.errors`` and turned into statuses by ``linkage.rpc``.

A refused tenant check (TENANT_MISMATCH, CALLER_NOT_ALLOWED) is recorded as ACCESS_DENIED in its
own transaction, in the ledger of the tenant the request named if this platform hosts it, else in
the caller's own tenant's ledger (if hosted here), then raised.

Must never: look anything up before the tenant check, hold business logic, or call
``context.abort`` for a domain error.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session, sessionmaker

from linkage.errors import FieldViolation, InvalidArgument, PermissionDenied
from linkage.logs import get_logger
from linkage.records.model import ActorKind, RecordEvent
from linkage.records.model import Outcome as RecordOutcome
from linkage.rpc import caller
from linkage.v1 import intermediate_server_pb2, intermediate_server_pb2_grpc
from server import repository as repo
from server.codes import CodeManager
from server.content import DATA_ITEMS, unified_number_problem
from server.disclosure import PersonDisclosure, disclose_person, entry_of
from server.duplicates import DuplicateStore, ImportBuffer
from server.ports import Clock
from server.queries import Outcome, Requester, Spec, parse_spec
from server.querykeys import timestamp
from server.records import Recorder, record
from server.tenancy import Tenant, Tenants, code_of_parent, require_id, split_child_name

log = get_logger(__name__)

pb = intermediate_server_pb2
SERVICE = "IntermediateServerService"
DEFAULT_WAIT = 30.0  # seconds a SubmitQuery waits without a deadline
MAX_WAIT = 300.0
_SYSTEM_MAX = 128
_DEADLINE_MARGIN = 0.5  # seconds kept back from the caller's deadline to answer it


@dataclass(frozen=True)
class Domain:
    """The domain handles the servicer calls."""

    tenants: Tenants
    codes: CodeManager
    duplicates: DuplicateStore
    requester: Requester
    sessions: sessionmaker[Session]  # for disclosure and refusal records
    recorder: Recorder
    clock: Clock


def result_message(outcome: Outcome) -> pb.QueryResult:
    message = pb.QueryResult(
        name=f"organizations/{outcome.tenant}/queries/{outcome.query_id}",
        query_id=outcome.query_id,
        status=outcome.status,
        reason=outcome.reason,
        values=outcome.values,
        permit_id=outcome.permit_id,
    )
    if outcome.updated_at is not None:
        message.updated_at.CopyFrom(_timestamp(outcome.updated_at))
    if outcome.expires_at is not None:
        message.expires_at.CopyFrom(_timestamp(outcome.expires_at))
    return message


@functools.lru_cache(maxsize=256)
def _timestamp(moment: datetime) -> Timestamp:
    """The results of one batch share their times: convert each once (copied, never mutated)."""
    return timestamp(moment)


def _wait_seconds(context: Any, requested: float | None) -> float:
    """How long to wait: what was asked, bounded by the call's deadline (minus a margin)."""
    remaining = context.time_remaining()
    wait = DEFAULT_WAIT if requested is None else requested
    if remaining is not None:
        wait = min(wait, max(remaining - 0.5, 0.0))
    return max(0.0, min(wait, MAX_WAIT))


def _business_system(value: str) -> str:
    if len(value) > _SYSTEM_MAX or not value.isprintable() or " " in value:
        raise InvalidArgument(
            "INVALID_BUSINESS_SYSTEM",
            "business_system is an id without spaces",
            violations=(FieldViolation("business_system", "malformed id"),),
        )
    return value


class IntermediateServerServicer(intermediate_server_pb2_grpc.IntermediateServerServiceServicer):
    """The thin gRPC edge of code management, the duplicate store and queries."""

    def __init__(self, domain: Domain, disclosure: PersonDisclosure) -> None:
        self._d = domain
        self._disclosure = disclosure

    async def _tenant(self, parent: str, method: str) -> Tenant:
        return await self._bound(code_of_parent(parent), method)

    async def _bound(self, code: str, method: str) -> Tenant:
        """The caller's tenant if it is the one named; a refusal is recorded, then raised."""
        who = caller()
        try:
            return self._d.tenants.for_unified_address(who, code)
        except PermissionDenied as error:
            await self._record_refusal(who, code, method, error)
            raise

    async def _record_refusal(
        self, who: str, named: str, method: str, error: PermissionDenied
    ) -> None:
        tenants = self._d.tenants
        own = who.removeprefix("ua.") if who.startswith("ua.") else ""
        ledger_tenant = named if named in tenants else own if own in tenants else None
        if ledger_tenant is None:
            return  # neither tenant lives here: no ledger of this platform is theirs
        entry = record(
            tenant=ledger_tenant,
            at=self._d.clock(),
            event=RecordEvent.ACCESS_DENIED,
            outcome=RecordOutcome.DENIED,
            actor_kind=ActorKind.ORGANIZATION,
            actor_id=who,
            procedure=f"{SERVICE}.{method}",
            reason=error.reason,
        )

        def append() -> None:
            with repo.tenant_unit_of_work(self._d.sessions, ledger_tenant) as session:
                self._d.recorder.append(session, [entry])

        try:
            await asyncio.to_thread(append)
        except Exception:  # the refusal stands even if its record could not be written
            log.exception("refusal_record_failed", tenant=ledger_tenant, reason=error.reason)

    async def AcquireLinkageCode(  # noqa: N802 (gRPC method name)
        self, request: pb.AcquireLinkageCodeRequest, context: Any
    ) -> pb.AcquireLinkageCodeResponse:
        tenant = await self._tenant(request.parent, "AcquireLinkageCode")
        at = await self._d.codes.acquire(
            tenant, request.unified_number, request.processing_serial, actor=caller()
        )
        return pb.AcquireLinkageCodeResponse(acquired_at=timestamp(at))

    async def ImportDuplicates(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.ImportDuplicatesRequest], context: Any
    ) -> pb.ImportDuplicatesResponse:
        buffer = ImportBuffer()
        first: pb.ImportDuplicatesRequest | None = None
        tenant: Tenant | None = None
        async for chunk in request_iterator:
            if first is None:
                tenant = await self._tenant(chunk.parent, "ImportDuplicates")
                require_id(chunk.import_id, "import_id")
                _business_system(chunk.business_system)
                first = chunk
            elif (chunk.parent, chunk.import_id) != (first.parent, first.import_id):
                raise InvalidArgument(
                    "INCONSISTENT_STREAM",
                    "every chunk must name the same parent and import_id",
                    violations=(FieldViolation("import_id", "differs from the first chunk"),),
                )
            buffer.add(chunk.records)
        if first is None or tenant is None:
            raise InvalidArgument(
                "EMPTY_IMPORT",
                "the stream held no chunk",
                violations=(FieldViolation("records", "no records"),),
            )
        buffer.check()
        result = await asyncio.to_thread(
            self._d.duplicates.store_import,
            tenant,
            first.import_id,
            first.business_system,
            buffer.rows,
        )
        return pb.ImportDuplicatesResponse(
            imported=result.imported,
            superseded=result.superseded,
            already_imported=result.already_imported,
        )

    async def ExportDuplicates(  # noqa: N802 (gRPC method name)
        self, request: pb.ExportDuplicatesRequest, context: Any
    ) -> AsyncIterator[pb.ExportDuplicatesResponse]:
        tenant = await self._tenant(request.parent, "ExportDuplicates")
        pages = self._d.duplicates.export_pages(
            tenant,
            request.data_item,
            request.include_history,
            actor=(ActorKind.ORGANIZATION, caller()),
        )
        while True:
            page = await asyncio.to_thread(next, pages, None)
            if page is None:
                return
            yield pb.ExportDuplicatesResponse(records=page)

    async def SetAutoResponseDisabled(  # noqa: N802 (gRPC method name)
        self, request: pb.SetAutoResponseDisabledRequest, context: Any
    ) -> pb.SetAutoResponseDisabledResponse:
        tenant = await self._tenant(request.parent, "SetAutoResponseDisabled")
        violations = []
        problem = unified_number_problem(request.unified_number)
        if problem is not None:
            violations.append(FieldViolation("unified_number", problem))
        if request.data_item and request.data_item not in DATA_ITEMS:
            violations.append(FieldViolation("data_item", "unknown data item"))
        if violations:
            raise InvalidArgument("INVALID_REQUEST", "bad flag request", violations=violations)
        changed = await asyncio.to_thread(
            self._d.duplicates.set_auto_response_disabled,
            tenant,
            request.unified_number,
            request.data_item,
            request.disabled,
            actor=(ActorKind.ORGANIZATION, caller()),
        )
        return pb.SetAutoResponseDisabledResponse(changed=changed)

    async def SubmitQuery(  # noqa: N802 (gRPC method name)
        self, request: pb.SubmitQueryRequest, context: Any
    ) -> pb.SubmitQueryResponse:
        tenant = await self._tenant(request.parent, "SubmitQuery")
        spec = parse_spec(request.query, "query", self._d.requester.today())
        outcome = await self._d.requester.submit(
            tenant.code, spec, wait=_wait_seconds(context, None)
        )
        return pb.SubmitQueryResponse(result=result_message(outcome))

    async def StreamQueries(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.StreamQueriesRequest], context: Any
    ) -> AsyncIterator[pb.StreamQueriesResponse]:
        first = await anext(request_iterator, None)
        if first is None:
            return
        tenant = await self._tenant(first.parent, "StreamQueries")
        specs = self._specs(first, request_iterator)
        async for outcomes in self._d.requester.stream(tenant.code, specs):
            yield pb.StreamQueriesResponse(results=[result_message(o) for o in outcomes])

    async def _specs(
        self,
        first: pb.StreamQueriesRequest,
        rest: AsyncIterator[pb.StreamQueriesRequest],
    ) -> AsyncIterator[list[Spec]]:
        """Each message's specs, validated whole before any of them is admitted."""
        yield self._parse_message(first)
        async for message in rest:
            if message.parent != first.parent:
                error = PermissionDenied(
                    "TENANT_MISMATCH", "every message of a stream must name the same parent"
                )
                named = code_of_parent(message.parent)
                await self._record_refusal(caller(), named, "StreamQueries", error)
                raise error
            yield self._parse_message(message)

    def _parse_message(self, message: pb.StreamQueriesRequest) -> list[Spec]:
        today = self._d.requester.today()
        specs: list[Spec] = []
        violations: list[FieldViolation] = []
        for index, query in enumerate(message.queries):
            try:
                specs.append(parse_spec(query, f"queries[{index}]", today))
            except InvalidArgument as error:
                violations.extend(error.violations)
        if violations:
            raise InvalidArgument(
                "INVALID_QUERY", f"bad query: {violations[0].field}", violations=violations[:100]
            )
        return specs

    async def GetQueryResult(  # noqa: N802 (gRPC method name)
        self, request: pb.GetQueryResultRequest, context: Any
    ) -> pb.GetQueryResultResponse:
        code, query_id = split_child_name(request.name, "queries")
        tenant = await self._bound(code, "GetQueryResult")
        require_id(query_id, "name")
        requested = request.wait.seconds + request.wait.nanos / 1e9
        if requested < 0:
            raise InvalidArgument(
                "INVALID_WAIT",
                "wait must not be negative",
                violations=(FieldViolation("wait", "negative"),),
            )
        outcome = await self._d.requester.get(
            tenant.code, query_id, wait=_wait_seconds(context, requested)
        )
        return pb.GetQueryResultResponse(result=result_message(outcome))

    async def DiscloseAccessRecords(  # noqa: N802 (gRPC method name)
        self, request: pb.DiscloseAccessRecordsRequest, context: Any
    ) -> pb.DiscloseAccessRecordsResponse:
        tenant = await self._tenant(request.parent, "DiscloseAccessRecords")
        stored = await asyncio.to_thread(
            disclose_person, self._d.sessions, tenant.code, request.unified_number
        )
        return pb.DiscloseAccessRecordsResponse(records=[entry_of(item) for item in stored])

    async def _record_disclosure(self, tenant: str, unified_number: str) -> None:
        """The tenant's record that its caller was shown the person's records (from every
        place), in a transaction of its own; the person is named by the unified number."""
        entry = record(
            tenant=tenant,
            at=self._d.clock(),
            event=RecordEvent.STAFF_OPERATION,
            outcome=RecordOutcome.OK,
            actor_kind=ActorKind.ORGANIZATION,
            actor_id=caller(),
            procedure=f"{SERVICE}.DisclosePersonAccessRecords",
            requester=tenant,
            subject=unified_number,
        )

        def append() -> None:
            with repo.tenant_unit_of_work(self._d.sessions, tenant) as session:
                self._d.recorder.append(session, [entry])

        await asyncio.to_thread(append)

    async def DisclosePersonAccessRecords(  # noqa: N802 (gRPC method name)
        self, request: pb.DisclosePersonAccessRecordsRequest, context: Any
    ) -> pb.DisclosePersonAccessRecordsResponse:
        tenant = await self._tenant(request.parent, "DisclosePersonAccessRecords")
        remaining = context.time_remaining()
        deadline = None if remaining is None else remaining - _DEADLINE_MARGIN
        found = await self._disclosure.disclose(
            tenant.code, request.unified_number, deadline=deadline
        )
        await self._record_disclosure(tenant.code, request.unified_number)
        return pb.DisclosePersonAccessRecordsResponse(
            records=found.records, unanswered=found.unanswered
        )
