"""NetworkService: the gRPC edge of the Information Provision Network, kept thin.

Owns, per RPC: rate admission (charged to every authenticated caller first, so refused calls
count too), who may call it (checked before anything is read, AIP-131: ``admin`` registers,
``registry`` hands over serials, an organization acts only as ``org.<its code>``, anyone
authenticated reads the directory), request parsing (``parse``), one call into the domain, the
response message, and handing every refusal worth it to ``refusals`` for the ledger. Domain
errors become statuses in ``linkage.rpc.ContextInterceptor``.

Must never: decide policy here, block the event loop (database work goes to a thread), return a
resident code, or return one organization's linkage code to another.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeAlias, TypeVar

import grpc

from linkage.errors import FailedPrecondition, LinkageError, NotFound, PermissionDenied
from linkage.rpc import caller, require_caller
from linkage.v1 import common_pb2, network_pb2, network_pb2_grpc
from simulator.network import parse
from simulator.network.codes import CodeDesk
from simulator.network.directory import Directory, OrgEntry, SigningKey
from simulator.network.disclosure import PersonRecordsCollector
from simulator.network.keystore import PermitKeys, PublishedKey
from simulator.network.ledger import LEDGER_ID, DisclosedRecord
from simulator.network.queries import QueryDesk
from simulator.network.ratelimit import RateLimiter
from simulator.network.refusals import Refusals, worth_recording

Context = grpc.aio.ServicerContext[object, object]
ADMIN = "admin"
REGISTRY = "registry"
ORG_PREFIX = "org."
_DEADLINE_MARGIN = 0.5  # seconds kept back from the caller's deadline to build the answer

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Method: TypeAlias = Callable[["NetworkService", _Request, Context], Awaitable[_Response]]


def _records_refusals(
    organization_field: str = "",
) -> Callable[[_Method[_Request, _Response]], _Method[_Request, _Response]]:
    """Decorates an RPC: a refusal worth recording (``refusals.worth_recording``) is appended
    to the ledger before it is raised, naming the organization in the request's field
    ``organization_field`` (a dotted path; a resource name counts as its code)."""

    def decorate(method: _Method[_Request, _Response]) -> _Method[_Request, _Response]:
        @functools.wraps(method)
        async def run(self: NetworkService, request: _Request, context: Context) -> _Response:
            try:
                return await method(self, request, context)
            except LinkageError as error:
                if worth_recording(error):
                    named = _field(request, organization_field)
                    await asyncio.to_thread(self._refusals.record, caller(), named, error)
                raise

        return run

    return decorate


def _field(message: object, path: str) -> str:
    """The text at ``path`` in ``message`` (unchecked: ``refusals`` keeps only a valid code)."""
    value: object = message
    for name in path.split(".") if path else ():
        value = getattr(value, name, "")
    return str(value).removeprefix("organizations/") if path else ""


class NetworkService(network_pb2_grpc.NetworkServiceServicer):
    """Every RPC of network.proto; see each method for its rules."""

    def __init__(
        self,
        *,
        directory: Directory,
        codes: CodeDesk,
        desk: QueryDesk,
        permit_keys: PermitKeys,
        permission_list_version: str,
        limiter: RateLimiter | None,
        refusals: Refusals,
        clock: Callable[[], datetime],
        collector: PersonRecordsCollector | None = None,
    ) -> None:
        self._directory = directory
        self._codes = codes
        self._desk = desk
        self._permit_keys = permit_keys
        self._version = permission_list_version
        self._limiter = limiter
        self._refusals = refusals
        self._clock = clock
        self._collector = collector

    # --- who may call -------------------------------------------------------------------------

    def _admit(self, identity: str, cost: int = 1) -> None:
        if self._limiter is not None:
            self._limiter.admit(identity, cost)

    def _as(self, expected: str, cost: int = 1) -> str:
        identity = self._anyone(cost)
        if identity != expected:
            raise PermissionDenied("CALLER_NOT_ALLOWED", f"{identity} may not call this method")
        return identity

    def _as_org(self, code: str, path: str, cost: int = 1) -> str:
        """The caller must be ``org.<code>`` for the organization the request names."""
        identity = self._anyone(cost)
        if not code:
            raise parse.invalid(path, "is required")
        if identity != ORG_PREFIX + code:
            raise PermissionDenied(
                "NOT_THIS_ORGANIZATION", f"{identity} may not act as organization {code!r}"
            )
        return code

    def _anyone(self, cost: int = 1) -> str:
        """Any authenticated caller, admitted by the rate limiter (refused calls pay too: a
        flood of refusals is bounded like any other, and so are their records)."""
        identity = require_caller()
        self._admit(identity, cost)
        return identity

    # --- directory ------------------------------------------------------------------------------

    @_records_refusals("organization.code")
    async def RegisterOrganization(  # noqa: N802 (gRPC method name)
        self, request: network_pb2.RegisterOrganizationRequest, context: Context
    ) -> network_pb2.RegisterOrganizationResponse:
        self._as(ADMIN)
        entry = parse.registration(request, self._clock())
        stored = await asyncio.to_thread(self._directory.register, entry)
        return network_pb2.RegisterOrganizationResponse(organization=self._org(stored))

    @_records_refusals()
    async def GetOrganization(  # noqa: N802 (gRPC method name)
        self, request: network_pb2.GetOrganizationRequest, context: Context
    ) -> network_pb2.GetOrganizationResponse:
        self._anyone()
        code = parse.resource_name(request.name)
        entry = await asyncio.to_thread(self._directory.get, code)
        if entry is None:
            raise NotFound("ORGANIZATION_NOT_FOUND", f"organization {code!r} is not registered")
        return network_pb2.GetOrganizationResponse(organization=self._org(entry))

    @_records_refusals()
    async def ListOrganizations(  # noqa: N802 (gRPC method name)
        self, request: network_pb2.ListOrganizationsRequest, context: Context
    ) -> network_pb2.ListOrganizationsResponse:
        self._anyone()
        after, size = parse.page(request)
        # One extra row tells whether another page exists without a count query.
        entries = await asyncio.to_thread(self._directory.page, after=after, limit=size + 1)
        response = network_pb2.ListOrganizationsResponse(
            organizations=[self._org(e) for e in entries[:size]]
        )
        if len(entries) > size:
            response.next_page_token = parse.page_token(entries[size - 1].code)
        return response

    @_records_refusals("name")
    async def RotateOrganizationKeys(  # noqa: N802 (gRPC method name)
        self, request: network_pb2.RotateOrganizationKeysRequest, context: Context
    ) -> network_pb2.RotateOrganizationKeysResponse:
        code = parse.resource_name(request.name)
        self._as_org(code, "name")
        key = parse.rotation(request, self._clock())
        entry = await asyncio.to_thread(self._directory.rotate, code, key)
        return network_pb2.RotateOrganizationKeysResponse(organization=self._org(entry))

    @_records_refusals()
    async def GetNetworkKeys(  # noqa: N802 (gRPC method name)
        self, request: network_pb2.GetNetworkKeysRequest, context: Context
    ) -> network_pb2.GetNetworkKeysResponse:
        self._anyone()
        keys = self._permit_keys.published(self._clock())
        return network_pb2.GetNetworkKeysResponse(
            permit_keys=[permit_key_message(k) for k in keys],
            permission_list_version=self._version,
        )

    # --- codes ------------------------------------------------------------------------------------

    @_records_refusals("organization")
    async def RegisterProcessingSerial(  # noqa: N802 (gRPC method name)
        self, request: network_pb2.RegisterProcessingSerialRequest, context: Context
    ) -> network_pb2.RegisterProcessingSerialResponse:
        self._as(REGISTRY)
        serial, resident_code, organization = parse.serial_registration(request)
        expires_at = await asyncio.to_thread(
            self._codes.register_serial, serial, resident_code, organization
        )
        response = network_pb2.RegisterProcessingSerialResponse()
        response.expires_at.FromDatetime(expires_at)
        return response

    @_records_refusals("organization")
    async def ObtainLinkageCode(  # noqa: N802 (gRPC method name)
        self, request: network_pb2.ObtainLinkageCodeRequest, context: Context
    ) -> network_pb2.ObtainLinkageCodeResponse:
        organization = self._as_org(request.organization, "organization")
        serial = parse.serial(request.processing_serial)
        code = await asyncio.to_thread(self._codes.obtain, organization, serial)
        return network_pb2.ObtainLinkageCodeResponse(linkage_code=code)

    # --- queries ---------------------------------------------------------------------------------

    @_records_refusals("requester")
    async def SubmitQueries(  # noqa: N802 (gRPC method name)
        self, request: network_pb2.SubmitQueriesRequest, context: Context
    ) -> network_pb2.SubmitQueriesResponse:
        self._as_org(request.requester, "requester", cost=max(1, len(request.queries)))
        batch = parse.submission(request)
        result = await self._desk.submit(batch)
        return network_pb2.SubmitQueriesResponse(
            dispositions=[
                network_pb2.QueryDisposition(
                    query_id=d.query_id, permit_id=d.permit_id, status=d.status, reason=d.reason
                )
                for d in result.dispositions
            ],
            answer_batches=result.answer_batches,
        )

    @_records_refusals("answer_batch.signer")
    async def DeliverLateAnswers(  # noqa: N802 (gRPC method name)
        self, request: network_pb2.DeliverLateAnswersRequest, context: Context
    ) -> network_pb2.DeliverLateAnswersResponse:
        identity = self._anyone()
        if not identity.startswith(ORG_PREFIX):
            raise PermissionDenied("CALLER_NOT_ALLOWED", f"{identity} may not deliver answers")
        envelope = parse.late_answers(request)
        delivered = await self._desk.deliver_late(identity.removeprefix(ORG_PREFIX), envelope)
        return network_pb2.DeliverLateAnswersResponse(delivered=delivered)

    @_records_refusals("organization")
    async def DiscloseNetworkAccessRecords(  # noqa: N802 (gRPC method name)
        self, request: network_pb2.DiscloseNetworkAccessRecordsRequest, context: Context
    ) -> network_pb2.DiscloseNetworkAccessRecordsResponse:
        organization = self._as_org(request.organization, "organization")
        code = parse.linkage_code(request.linkage_code)
        organizations = await asyncio.to_thread(self._directory.codes)
        records = await asyncio.to_thread(self._codes.disclose, organization, code, organizations)
        return network_pb2.DiscloseNetworkAccessRecordsResponse(
            records=[_disclosed(record) for record in records]
        )

    @_records_refusals("organization")
    async def CollectPersonAccessRecords(  # noqa: N802 (gRPC method name)
        self, request: network_pb2.CollectPersonAccessRecordsRequest, context: Context
    ) -> network_pb2.CollectPersonAccessRecordsResponse:
        organization = self._as_org(request.organization, "organization")
        code = parse.linkage_code(request.linkage_code)
        if self._collector is None:
            raise FailedPrecondition(
                "DISCLOSURE_NOT_CONFIGURED", "this network cannot reach the organizations"
            )
        remaining = context.time_remaining()
        deadline = None if remaining is None else remaining - _DEADLINE_MARGIN

        def admit(asked: int) -> None:
            # The call paid 1 on the way in; each organization it has the network ask costs 1.
            self._admit(ORG_PREFIX + organization, asked)

        collected = await self._collector.collect(
            organization, code, deadline=deadline, admit=admit
        )
        return network_pb2.CollectPersonAccessRecordsResponse(
            records=[
                network_pb2.PlacedAccessRecord(place=p.place, record=p.record)
                for p in collected.records
            ],
            unanswered=[
                network_pb2.UnansweredPlace(place=place, reason=reason)
                for place, reason in collected.unanswered
            ],
        )

    # --- messages ------------------------------------------------------------------------------

    def _org(self, entry: OrgEntry) -> network_pb2.Organization:
        return organization_message(entry, self._clock())


def organization_message(entry: OrgEntry, now: datetime) -> network_pb2.Organization:
    """The directory entry as published: keys past their window are left out."""
    return network_pb2.Organization(
        name=f"organizations/{entry.code}",
        code=entry.code,
        display_name=entry.display_name,
        capacities=entry.capacities,
        endpoint=entry.endpoint,
        signing_keys=[_signing_key_message(k) for k in entry.published_keys(now)],
        local_government_code=entry.local_government_code,
    )


def _signing_key_message(key: SigningKey) -> common_pb2.PublicKey:
    message = common_pb2.PublicKey(key_id=key.key_id, key=key.public_key)
    message.not_before.FromDatetime(key.not_before)
    if key.not_after is not None:
        message.not_after.FromDatetime(key.not_after)
    return message


def permit_key_message(key: PublishedKey) -> common_pb2.PublicKey:
    message = common_pb2.PublicKey(key_id=key.key_id, key=key.public_key)
    message.not_before.FromDatetime(key.not_before)
    if key.not_after is not None:
        message.not_after.FromDatetime(key.not_after)
    return message


def _disclosed(record: DisclosedRecord) -> common_pb2.AccessRecordEntry:
    entry = common_pb2.AccessRecordEntry(
        ledger=LEDGER_ID,
        event=record.event,
        requester=record.requester,
        provider=record.provider,
        procedure=record.procedure,
        data_items=record.data_items,
        outcome=record.outcome,
        reason=record.reason,
        actor=record.actor,
    )
    entry.occurred_at.FromDatetime(record.occurred_at)
    return entry
