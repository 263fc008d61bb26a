"""``InboundService``: what the network calls (データ送受信機能).

Thin servicer: the caller must be the network itself (certificate ``network``), checked before
anything is read; then the permit batch goes to the provider domain, and late answers to the
requester domain.

Must never: accept a call from anyone but the network, or hold business logic.
"""

from __future__ import annotations

from typing import Any

from linkage.errors import PermissionDenied
from linkage.rpc import require_caller
from linkage.v1 import inbound_pb2, inbound_pb2_grpc
from server.provision import Provider
from server.queries import Requester

NETWORK_IDENTITY = "network"


def _require_network() -> None:
    if require_caller() != NETWORK_IDENTITY:
        raise PermissionDenied("CALLER_NOT_NETWORK", "only the network may call this service")


class InboundServicer(inbound_pb2_grpc.InboundServiceServicer):
    """The network's way in: permit batches to answer, late answers to accept."""

    def __init__(self, provider: Provider, requester: Requester) -> None:
        self._provider = provider
        self._requester = requester

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
