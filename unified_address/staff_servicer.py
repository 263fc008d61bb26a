"""``UnifiedAddressStaffService``: staff work on name matching over gRPC, kept thin.

Owns the translation between the contract and ``unified_address.staff_accounts`` (sessions and
roles) and ``unified_address.staff`` (the operations): each method checks that the caller is
the organization's staff console (certificate), reads the session token from the metadata
``authorization: Bearer <token>``, parses the request (``InvalidArgument`` with field
violations) and runs one domain operation at the staff member's desk. Domain errors become
statuses in ``linkage.rpc.ContextInterceptor``.

Must never: check a session or a role itself (``StaffAccounts`` does, and records the refusal),
log a password or a token, or put an individual number in any message (views carry only
``has_individual_number``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from linkage.errors import FieldViolation, InvalidArgument, LinkageError
from linkage.records.model import from_micros, to_micros
from linkage.rpc import caller
from linkage.v1 import unified_address_staff_pb2 as pb
from linkage.v1 import unified_address_staff_pb2_grpc as pb_grpc
from unified_address import registration, staff
from unified_address.audit import Actor
from unified_address.models import CodeState
from unified_address.repository import FailurePosition, WaitingPosition
from unified_address.runtime import Runtime
from unified_address.staff_accounts import READ_ROLES, WRITE_ROLES, Role, StaffAccounts
from unified_address.vault import parse_individual_number

__all__ = ["UnifiedAddressStaffServicer", "bearer_token"]

Context = grpc.aio.ServicerContext[Any, Any]
_T = TypeVar("_T")

SERVICE = "UnifiedAddressStaffService"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN = 512  # characters; the tokens made here are well under 200
DEFAULT_RETRY_LIMIT = 1000
MAX_RETRY_LIMIT = 10_000
MAX_NOTE = 400
MAX_SPLIT_LINKS = 1000
_BEARER = "bearer "
_UNIFIED_NUMBER = re.compile(r"[0-9]{15}")
_FAILURES, _WAITING = "failures", "waiting"  # which list a page token belongs to
_SYSTEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_ADDRESS_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_PROTO_OF_ROLE = {
    Role.VIEWER: pb.UNIFIED_ADDRESS_STAFF_ROLE_VIEWER,
    Role.OPERATOR: pb.UNIFIED_ADDRESS_STAFF_ROLE_OPERATOR,
}
_CODE_STATE = {
    CodeState.NOT_REQUESTED: pb.LINKAGE_CODE_STATE_NOT_REQUESTED,
    CodeState.PENDING: pb.LINKAGE_CODE_STATE_PENDING,
    CodeState.ACQUIRED: pb.LINKAGE_CODE_STATE_ACQUIRED,
    CodeState.FAILED: pb.LINKAGE_CODE_STATE_FAILED,
}


def bearer_token(context: Any) -> str:
    """The session token of ``authorization: Bearer <token>``; "" when there is none."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            if value[: len(_BEARER)].lower() == _BEARER:
                return value[len(_BEARER) :].strip()
            return ""
    return ""


class _Violations:
    """Collects every bad field of a request, so the caller learns them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def check(self, ok: bool, field: str, description: str) -> None:
        if not ok:
            self.items.append(FieldViolation(field, description))

    def match(self, pattern: re.Pattern[str], value: str, field: str) -> None:
        self.check(pattern.fullmatch(value) is not None, field, f"must match {pattern.pattern}")

    def note(self, value: str, field: str = "note") -> None:
        self.check(len(value) <= MAX_NOTE and value.isprintable(), field, "printable, <= 400")

    def individual_number(self, value: str) -> None:
        """Length, digits and check digit; the description never holds the value."""
        try:
            parse_individual_number(value)
        except InvalidArgument as error:
            self.items.extend(error.violations)

    def link(self, link: pb.AddressLink, field: str) -> None:
        self.match(_SYSTEM, link.system, f"{field}.system")
        self.match(_ADDRESS_NUMBER, link.address_number, f"{field}.address_number")

    def raise_if_any(self) -> None:
        if self.items:
            first = self.items[0]
            raise InvalidArgument(
                "INVALID_REQUEST", f"{first.field}: {first.description}", violations=self.items
            )


def _page_token(kind: str, position: FailurePosition | WaitingPosition | None) -> str:
    """An opaque token for the page after ``position`` of the list ``kind`` (empty: none)."""
    if position is None:
        return ""
    at, *keys = position
    raw = json.dumps([kind, to_micros(at), *keys], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii")


def _failures_after(token: str) -> FailurePosition | None:
    found = _position(_FAILURES, token, (_UNIFIED_NUMBER,))
    return None if found is None else (found[0], found[1])


def _waiting_after(token: str) -> WaitingPosition | None:
    found = _position(_WAITING, token, (_SYSTEM, _ADDRESS_NUMBER))
    return None if found is None else (found[0], found[1], found[2])


def _position(kind: str, token: str, keys: tuple[re.Pattern[str], ...]) -> list[Any] | None:
    """The position a token of the list ``kind`` names: [time, *keys]; INVALID_ARGUMENT when
    it was not made here for this list (empty: the first page)."""
    if not token:
        return None
    try:
        if len(token) > MAX_PAGE_TOKEN:
            raise ValueError("longer than any token this service makes")
        decoded = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        ok = (
            isinstance(decoded, list)
            and len(decoded) == 2 + len(keys)
            and decoded[0] == kind
            and type(decoded[1]) is int
            and all(
                type(v) is str and p.fullmatch(v) for p, v in zip(keys, decoded[2:], strict=True)
            )
        )
        if ok:
            return [from_micros(decoded[1]), *decoded[2:]]
    except (ValueError, UnicodeError, OverflowError, RecursionError):  # binascii.Error: Value
        pass
    raise InvalidArgument(
        "INVALID_PAGE_TOKEN",
        "page_token: not a token this list returned",
        violations=(FieldViolation("page_token", "not a token this list returned"),),
    )


def _page_size(value: int) -> int:
    v = _Violations()
    v.check(0 <= value <= MAX_PAGE_SIZE, "page_size", f"must be 0..{MAX_PAGE_SIZE}")
    v.raise_if_any()
    return value or DEFAULT_PAGE_SIZE


def _person(view: staff.PersonView) -> pb.StaffPersonView:
    return pb.StaffPersonView(
        unified_number=view.unified_number,
        has_individual_number=view.has_individual_number,
        code_state=_CODE_STATE[view.code_state],
        code_failure_reason=view.code_failure_reason,
        merged_into=view.merged_into or "",
        links=[pb.AddressLink(system=s, address_number=a) for s, a in view.links],
        history=list(view.history),
    )


def _timestamp(moment: Any) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class UnifiedAddressStaffServicer(pb_grpc.UnifiedAddressStaffServiceServicer):
    """``UnifiedAddressStaffService`` over one organization's ``Runtime`` and staff."""

    def __init__(self, runtime: Runtime, accounts: StaffAccounts) -> None:
        self._runtime = runtime
        self._accounts = accounts

    async def _console(self, rpc: str) -> None:
        """Refuse (and record) any caller but the staff console: before the request is even
        parsed, so a malformed request from anyone else is a recorded refusal too."""
        await self._accounts.check_console(caller(), f"{SERVICE}.{rpc}")

    async def _desk(
        self,
        context: Context,
        rpc: str,
        allowed: frozenset[Role],
        fn: Callable[[staff.Desk], _T],
    ) -> _T:
        """``fn`` at the staff member's desk (the caller checked the console first)."""
        operation = f"{SERVICE}.{rpc}"
        return await self._accounts.at_desk(bearer_token(context), operation, allowed, fn)

    async def SignIn(  # noqa: N802 - the gRPC method name
        self, request: pb.UnifiedAddressStaffServiceSignInRequest, context: Context
    ) -> pb.UnifiedAddressStaffServiceSignInResponse:
        await self._console("SignIn")
        signed = await self._accounts.sign_in(request.username, request.password)
        return pb.UnifiedAddressStaffServiceSignInResponse(
            session_token=signed.token,
            expires_at=_timestamp(signed.expires_at),
            password_change_required=signed.password_change_required,
            roles=[_PROTO_OF_ROLE[role] for role in signed.roles],
        )

    async def SignOut(  # noqa: N802 - the gRPC method name
        self, request: pb.UnifiedAddressStaffServiceSignOutRequest, context: Context
    ) -> pb.UnifiedAddressStaffServiceSignOutResponse:
        await self._console("SignOut")
        await self._accounts.sign_out(bearer_token(context))
        return pb.UnifiedAddressStaffServiceSignOutResponse()

    async def ChangePassword(  # noqa: N802 - the gRPC method name
        self, request: pb.UnifiedAddressStaffServiceChangePasswordRequest, context: Context
    ) -> pb.UnifiedAddressStaffServiceChangePasswordResponse:
        await self._console("ChangePassword")
        await self._accounts.change_password(
            bearer_token(context), request.current_password, request.new_password
        )
        return pb.UnifiedAddressStaffServiceChangePasswordResponse()

    async def SearchPersons(  # noqa: N802 - the gRPC method name
        self, request: pb.SearchPersonsRequest, context: Context
    ) -> pb.SearchPersonsResponse:
        await self._console("SearchPersons")
        v = _Violations()
        by_address = request.HasField("address")
        if request.unified_number:
            v.match(_UNIFIED_NUMBER, request.unified_number, "unified_number")
        if by_address:
            v.link(request.address, "address")
        if request.individual_number:
            v.individual_number(request.individual_number)
        given = request.unified_number or by_address or request.individual_number
        v.check(bool(given), "unified_number", "or address, or individual_number")
        v.raise_if_any()
        found = await self._desk(
            context,
            "SearchPersons",
            READ_ROLES,
            lambda desk: staff.search(
                desk,
                self._runtime.vault,
                unified_number=request.unified_number,
                system=request.address.system,
                address_number=request.address.address_number,
                individual_number=request.individual_number,
            ),
        )
        return pb.SearchPersonsResponse(persons=[_person(view) for view in found])

    async def ListCodeRequestFailures(  # noqa: N802 - the gRPC method name
        self, request: pb.ListCodeRequestFailuresRequest, context: Context
    ) -> pb.ListCodeRequestFailuresResponse:
        await self._console("ListCodeRequestFailures")
        size = _page_size(request.page_size)
        after = _failures_after(request.page_token)
        found = await self._desk(
            context,
            "ListCodeRequestFailures",
            READ_ROLES,
            lambda desk: staff.failures(desk, size, after),
        )
        return pb.ListCodeRequestFailuresResponse(
            persons=[_person(view) for view in found.items],
            next_page_token=_page_token(_FAILURES, found.next_after),
        )

    async def ListWaitingAddressNumbers(  # noqa: N802 - the gRPC method name
        self, request: pb.ListWaitingAddressNumbersRequest, context: Context
    ) -> pb.ListWaitingAddressNumbersResponse:
        await self._console("ListWaitingAddressNumbers")
        size = _page_size(request.page_size)
        after = _waiting_after(request.page_token)
        found = await self._desk(
            context,
            "ListWaitingAddressNumbers",
            READ_ROLES,
            lambda desk: staff.waiting(desk, size, after),
        )
        return pb.ListWaitingAddressNumbersResponse(
            waiting=[
                pb.WaitingAddressNumber(
                    link=pb.AddressLink(system=w.system, address_number=w.address_number),
                    registered_at=_timestamp(w.registered_at),
                )
                for w in found.items
            ],
            next_page_token=_page_token(_WAITING, found.next_after),
        )

    async def RetryFailedCodeRequests(  # noqa: N802 - the gRPC method name
        self, request: pb.RetryFailedCodeRequestsRequest, context: Context
    ) -> pb.RetryFailedCodeRequestsResponse:
        await self._console("RetryFailedCodeRequests")
        v = _Violations()
        v.check(0 <= request.limit <= MAX_RETRY_LIMIT, "limit", f"must be 0..{MAX_RETRY_LIMIT}")
        v.raise_if_any()
        operation = f"{SERVICE}.RetryFailedCodeRequests"
        member = await self._accounts.authorize(bearer_token(context), operation, WRITE_ROLES)
        try:
            summary = await registration.retry_code_requests(
                self._runtime, Actor.staff(member.username), request.limit or DEFAULT_RETRY_LIMIT
            )
        except LinkageError as error:  # recorded as FAILED, as at the desk
            await self._accounts.record_outcome(member, operation, error)
            raise
        await self._accounts.record_outcome(member, operation)
        return pb.RetryFailedCodeRequestsResponse(acquired=summary.acquired, failed=summary.failed)

    async def LinkAddressNumber(  # noqa: N802 - the gRPC method name
        self, request: pb.LinkAddressNumberRequest, context: Context
    ) -> pb.LinkAddressNumberResponse:
        await self._console("LinkAddressNumber")
        v = _Violations()
        v.link(request.address, "address")
        if request.unified_number:
            v.match(_UNIFIED_NUMBER, request.unified_number, "unified_number")
        v.note(request.note)
        v.raise_if_any()
        change, number = await self._desk(
            context,
            "LinkAddressNumber",
            WRITE_ROLES,
            lambda desk: staff.link_manually(
                desk,
                request.address.system,
                request.address.address_number,
                request.unified_number,
                note=request.note,
            ),
        )
        return pb.LinkAddressNumberResponse(change_id=change, unified_number=number)

    async def MergePersons(  # noqa: N802 - the gRPC method name
        self, request: pb.MergePersonsRequest, context: Context
    ) -> pb.MergePersonsResponse:
        await self._console("MergePersons")
        v = _Violations()
        v.match(_UNIFIED_NUMBER, request.keep_unified_number, "keep_unified_number")
        v.match(_UNIFIED_NUMBER, request.absorb_unified_number, "absorb_unified_number")
        v.note(request.note)
        v.raise_if_any()
        change = await self._desk(
            context,
            "MergePersons",
            WRITE_ROLES,
            lambda desk: staff.merge(
                desk, request.keep_unified_number, request.absorb_unified_number, note=request.note
            ),
        )
        return pb.MergePersonsResponse(change_id=change)

    async def SplitPerson(  # noqa: N802 - the gRPC method name
        self, request: pb.SplitPersonRequest, context: Context
    ) -> pb.SplitPersonResponse:
        await self._console("SplitPerson")
        v = _Violations()
        v.match(_UNIFIED_NUMBER, request.unified_number, "unified_number")
        count = len(request.links)
        v.check(0 < count <= MAX_SPLIT_LINKS, "links", f"must name 1..{MAX_SPLIT_LINKS} links")
        for position, link in enumerate(request.links[:MAX_SPLIT_LINKS]):
            v.link(link, f"links[{position}]")
        v.note(request.note)
        v.raise_if_any()
        pairs = [(link.system, link.address_number) for link in request.links]
        change, number = await self._desk(
            context,
            "SplitPerson",
            WRITE_ROLES,
            lambda desk: staff.split(desk, request.unified_number, pairs, note=request.note),
        )
        return pb.SplitPersonResponse(change_id=change, new_unified_number=number)

    async def UndoLinkChange(  # noqa: N802 - the gRPC method name
        self, request: pb.UndoLinkChangeRequest, context: Context
    ) -> pb.UndoLinkChangeResponse:
        await self._console("UndoLinkChange")
        v = _Violations()
        v.check(request.change_id > 0, "change_id", "must be positive")
        v.note(request.note)
        v.raise_if_any()
        change = await self._desk(
            context,
            "UndoLinkChange",
            WRITE_ROLES,
            lambda desk: staff.undo(desk, request.change_id, note=request.note),
        )
        return pb.UndoLinkChangeResponse(change_id=change)
