"""The gRPC face of the unified address server: ``UnifiedAddressService``, kept thin.

Owns the translation between the contract's messages and the domain: each method authorizes
the caller (``relay.authorize``, by certificate identity), parses its request into domain values
(raising ``InvalidArgument`` with field violations), calls one domain function and builds the
response. Domain errors become statuses in ``linkage.rpc.ContextInterceptor``.

Must never: hold business rules, call ``context.abort`` for a domain error, or echo an
individual number back in any message or error.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from datetime import date
from typing import Any

import grpc.aio

from linkage.errors import FieldViolation, InvalidArgument, ResourceExhausted
from linkage.rpc import caller
from linkage.v1 import unified_address_pb2, unified_address_pb2_grpc
from unified_address import batch, registration, relay
from unified_address.matching import Registration
from unified_address.models import CodeState
from unified_address.runtime import Runtime
from unified_address.vault import parse_individual_number

__all__ = ["UnifiedAddressServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

MAX_PUSH_ROWS = 10_000
MAX_RETRY_LIMIT = 10_000
DEFAULT_RETRY_LIMIT = 1000
MAX_WAIT_SECONDS = 300.0
# Ids become "<system>:<id>" at the intermediate server, whose ids are at most 128 characters.
_LOCAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,94}")
_ADDRESS_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ORGANIZATION = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

_CODE_STATUS = {
    CodeState.NOT_REQUESTED: unified_address_pb2.CODE_STATUS_NOT_REQUESTED,
    # In flight for a concurrent call: no code yet, as far as this caller can act on.
    CodeState.PENDING: unified_address_pb2.CODE_STATUS_NOT_REQUESTED,
    CodeState.ACQUIRED: unified_address_pb2.CODE_STATUS_ACQUIRED,
    CodeState.FAILED: unified_address_pb2.CODE_STATUS_FAILED,
}


class _Violations:
    """Collects every bad field of a request, so the caller learns them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def check(self, ok: bool, field: str, description: str) -> None:
        if not ok:
            self.items.append(FieldViolation(field, description))

    def raise_if_any(self, reason: str = "INVALID_REQUEST") -> None:
        if self.items:
            first = self.items[0]
            raise InvalidArgument(
                reason, f"{first.field}: {first.description}", violations=tuple(self.items)
            )


def _check_id(v: _Violations, pattern: re.Pattern[str], value: str, field: str) -> None:
    v.check(pattern.fullmatch(value) is not None, field, f"must match {pattern.pattern}")


def _check_items(v: _Violations, items: Iterable[str], field: str) -> tuple[str, ...]:
    values = tuple(items)
    v.check(bool(values), field, "name at least one data item")
    for position, item in enumerate(values):
        _check_id(v, _TOKEN, item, f"{field}[{position}]")
    return values


def _person_query(
    request: unified_address_pb2.QueryPersonRequest, reason: str = "INVALID_REQUEST"
) -> relay.PersonQuery:
    """The query of a ``QueryPersonRequest``; INVALID_ARGUMENT naming every bad field."""
    v = _Violations()
    _check_id(v, _LOCAL_ID, request.query_id, "query_id")
    _check_id(v, _TOKEN, request.procedure, "procedure")
    _check_id(v, _ORGANIZATION, request.provider, "provider")
    items = _check_items(v, request.data_items, "data_items")
    _check_id(v, _ADDRESS_NUMBER, request.address_number, "address_number")
    _check_date(v, request.on_date, "on_date")
    v.raise_if_any(reason)
    return relay.PersonQuery(
        query_id=request.query_id,
        procedure=request.procedure,
        provider=request.provider,
        data_items=items,
        address_number=request.address_number,
        on_date=request.on_date,
    )


def _incoming(request: unified_address_pb2.QueryPersonRequest) -> batch.Incoming:
    """A query of a batch: one that fails its field checks is answered FAILED, not raised."""
    try:
        return _person_query(request, batch.INVALID_QUERY)
    except InvalidArgument as error:
        return batch.Rejected(request.query_id, error.reason)


async def _batches(
    requests: AsyncIterator[unified_address_pb2.StreamPersonQueriesRequest],
) -> AsyncIterator[list[batch.Incoming]]:
    async for message in requests:
        if len(message.queries) > batch.MAX_QUERIES_PER_MESSAGE:
            raise ResourceExhausted(
                "MESSAGE_TOO_LARGE",
                f"a message holds at most {batch.MAX_QUERIES_PER_MESSAGE} queries",
            )
        yield [_incoming(query) for query in message.queries]


def _check_date(v: _Violations, value: str, field: str) -> None:
    if not value:
        return
    try:
        ok = len(value) == 10 and date.fromisoformat(value) is not None
    except ValueError:
        ok = False
    v.check(ok, field, "must be YYYY-MM-DD or empty")


class UnifiedAddressServicer(unified_address_pb2_grpc.UnifiedAddressServiceServicer):
    """``UnifiedAddressService`` over one organization's ``Runtime``."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def RegisterPerson(  # noqa: N802 - the gRPC method name
        self, request: unified_address_pb2.RegisterPersonRequest, context: Context
    ) -> unified_address_pb2.RegisterPersonResponse:
        scope = await relay.authorize(self._runtime, caller())
        v = _Violations()
        _check_id(v, _ADDRESS_NUMBER, request.address_number, "address_number")
        v.raise_if_any()
        number = request.individual_number
        if number:
            number = parse_individual_number(number)
        row = Registration(request.address_number, number)
        result = await registration.register_person(self._runtime, scope.system, row)
        return unified_address_pb2.RegisterPersonResponse(
            unified_number=result.unified_number,
            code_status=_CODE_STATUS[result.code_state],
            code_failure_reason=result.code_failure_reason,
        )

    async def RetryCodeRequests(  # noqa: N802 - the gRPC method name
        self, request: unified_address_pb2.RetryCodeRequestsRequest, context: Context
    ) -> unified_address_pb2.RetryCodeRequestsResponse:
        scope = await relay.authorize(self._runtime, caller())
        v = _Violations()
        v.check(0 <= request.limit <= MAX_RETRY_LIMIT, "limit", f"must be 0..{MAX_RETRY_LIMIT}")
        v.raise_if_any()
        actor = relay.actor_of(self._runtime, scope)
        summary = await registration.retry_code_requests(
            self._runtime, actor, request.limit or DEFAULT_RETRY_LIMIT
        )
        return unified_address_pb2.RetryCodeRequestsResponse(
            acquired=summary.acquired, failed=summary.failed
        )

    async def PushDuplicates(  # noqa: N802 - the gRPC method name
        self, request: unified_address_pb2.PushDuplicatesRequest, context: Context
    ) -> unified_address_pb2.PushDuplicatesResponse:
        scope = await relay.authorize(self._runtime, caller())
        v = _Violations()
        _check_id(v, _LOCAL_ID, request.import_id, "import_id")
        count = len(request.duplicates)
        v.check(0 < count <= MAX_PUSH_ROWS, "duplicates", f"must hold 1..{MAX_PUSH_ROWS} rows")
        for position, row in enumerate(request.duplicates):
            field = f"duplicates[{position}]"
            _check_id(v, _ADDRESS_NUMBER, row.address_number, f"{field}.address_number")
            _check_id(v, _TOKEN, row.value.data_item, f"{field}.value.data_item")
            if len(v.items) >= relay.MAX_NAMED_ROWS:
                break
        v.raise_if_any()
        rows = [
            relay.AddressedRow(row.address_number, row.value, row.auto_response_disabled)
            for row in request.duplicates
        ]
        outcome = await relay.push_duplicates(self._runtime, scope, request.import_id, rows)
        return unified_address_pb2.PushDuplicatesResponse(
            imported=outcome.imported, already_imported=outcome.already_imported
        )

    async def QueryPerson(  # noqa: N802 - the gRPC method name
        self, request: unified_address_pb2.QueryPersonRequest, context: Context
    ) -> unified_address_pb2.QueryPersonResponse:
        scope = await relay.authorize(self._runtime, caller())
        result = await relay.query_person(self._runtime, scope, _person_query(request))
        return unified_address_pb2.QueryPersonResponse(result=result)

    async def StreamPersonQueries(  # noqa: N802 - the gRPC method name
        self,
        request_iterator: AsyncIterator[unified_address_pb2.StreamPersonQueriesRequest],
        context: Context,
    ) -> AsyncIterator[unified_address_pb2.StreamPersonQueriesResponse]:
        scope = await relay.authorize(self._runtime, caller())
        results = batch.stream_person_queries(
            self._runtime, scope, _batches(request_iterator), deadline=context.time_remaining()
        )
        async for chunk in results:
            yield unified_address_pb2.StreamPersonQueriesResponse(results=chunk)

    async def GetPersonQueryResult(  # noqa: N802 - the gRPC method name
        self, request: unified_address_pb2.GetPersonQueryResultRequest, context: Context
    ) -> unified_address_pb2.GetPersonQueryResultResponse:
        scope = await relay.authorize(self._runtime, caller())
        v = _Violations()
        _check_id(v, _LOCAL_ID, request.query_id, "query_id")
        # Not ToTimedelta(): a hostile Duration of 2**63 seconds would overflow it (INTERNAL).
        wait = request.wait.seconds + request.wait.nanos / 1e9
        v.check(0 <= wait <= MAX_WAIT_SECONDS, "wait", f"must be 0..{MAX_WAIT_SECONDS:g} seconds")
        v.raise_if_any()
        result = await relay.get_query_result(self._runtime, scope, request.query_id, wait)
        return unified_address_pb2.GetPersonQueryResultResponse(result=result)
