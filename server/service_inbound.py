"""``InboundService``: what the network calls (データ送受信機能).

Thin servicer: the caller must be the network itself (certificate ``network``), checked before
anything is read; then the permit batch goes to the provider domain, late answers to the
requester domain, and a disclosure request to ``server.disclosure`` (one hosted tenant's records
about the person its linkage code names).

Must never: accept a call from anyone but the network, or hold business logic.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from linkage.codes import LINKAGE_CODE_RE
from linkage.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from linkage.rpc import require_caller
from linkage.v1 import inbound_pb2, inbound_pb2_grpc
from server.disclosure import disclose_code, entry_of
from server.provision import Provider
from server.queries import Requester
from server.tenancy import Tenants, valid_code

NETWORK_IDENTITY = "network"


def _require_network() -> None:
    if require_caller() != NETWORK_IDENTITY:
        raise PermissionDenied("CALLER_NOT_NETWORK", "only the network may call this service")


class InboundServicer(inbound_pb2_grpc.InboundServiceServicer):
    """The network's way in: permit batches to answer, late answers to accept."""

    def __init__(
        self,
        provider: Provider,
        requester: Requester,
        *,
        sessions: sessionmaker[Session],
        tenants: Tenants,
    ) -> None:
        self._provider = provider
        self._requester = requester
        self._sessions = sessions
        self._tenants = tenants

    async def ProvideAnswers(  # noqa: N802 (gRPC method name)
        self, request: inbound_pb2.ProvideAnswersRequest, context: Any
    ) -> inbound_pb2.ProvideAnswersResponse:
        _require_network()
        answer_batch = await self._provider.provide(request.permit_batch)
        return inbound_pb2.ProvideAnswersResponse(answer_batch=answer_batch)

    async def AcceptLateAnswers(  # noqa: N802 (gRPC method name)
        self, request: inbound_pb2.AcceptLateAnswersRequest, context: Any
    ) -> inbound_pb2.AcceptLateAnswersResponse:
        _require_network()
        accepted = await self._requester.accept_late(request.answer_batch)
        return inbound_pb2.AcceptLateAnswersResponse(accepted=accepted)

    async def DiscloseOrganizationAccessRecords(  # noqa: N802 (gRPC method name)
        self, request: inbound_pb2.DiscloseOrganizationAccessRecordsRequest, context: Any
    ) -> inbound_pb2.DiscloseOrganizationAccessRecordsResponse:
        _require_network()
        violations = []
        if not valid_code(request.organization):
            violations.append(FieldViolation("organization", "must be an organization code"))
        if not LINKAGE_CODE_RE.fullmatch(request.linkage_code):
            violations.append(FieldViolation("linkage_code", "must be a 20-character code"))
        if violations:
            raise InvalidArgument(
                "INVALID_REQUEST", "bad disclosure request", violations=violations
            )
        if request.organization not in self._tenants:
            raise NotFound("ORGANIZATION_NOT_HOSTED", "the organization is not hosted here")
        stored = await asyncio.to_thread(
            disclose_code, self._sessions, request.organization, request.linkage_code
        )
        return inbound_pb2.DiscloseOrganizationAccessRecordsResponse(
            # The network's caller is another organization: no ledger, no actor id.
            records=[entry_of(item, own=False) for item in stored]
        )
