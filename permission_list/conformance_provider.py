"""The conformance kit's fake provider: a real ``InboundService`` that records every permit.

Owns the provider side of a run. Every test organization the kit registers names this server as
its endpoint, so every permit the network issues arrives here. Per ``ProvideAnswers`` call it
checks what any provider must (the caller is ``network``; the batch's network signature with a
key from ``GetNetworkKeys``, re-fetched once on an unknown key id; the requester key digest;
one provider per batch, one of ours), records each permit with what was wrong with its batch,
and answers ``NO_DATA`` for every permit in an ``AnswerBatch`` signed by the provider
organization, so a conforming network completes the query normally. A batch that does not
verify is refused as the contract says (INVALID_ARGUMENT), and its permits are still recorded:
a permit the network should never have issued is a miss whether or not it was signed well.

Must never: answer with data (it has none), or drop a permit it received from the record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from google.protobuf.message import DecodeError

from linkage import crypto
from linkage.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from linkage.rpc import RunningServer, Security, caller, start_server
from linkage.v1 import common_pb2, inbound_pb2, inbound_pb2_grpc, payloads_pb2
from permission_list.conformance_report import ReceivedPermit

NETWORK = "network"
NO_DATA_REASON = "UNKNOWN_PERSON"
SERVICE_NAME = inbound_pb2.DESCRIPTOR.services_by_name["InboundService"].full_name

Context = grpc.aio.ServicerContext[object, object]
KeyFetcher = Callable[[], Awaitable[Mapping[str, bytes]]]


class NetworkKeys:
    """The network's permit-signing keys (key id → raw Ed25519 key), fetched on demand."""

    def __init__(self, fetch: KeyFetcher) -> None:
        self._fetch = fetch
        self._keys: Mapping[str, bytes] = {}
        self._lock = asyncio.Lock()

    async def get(self, key_id: str) -> Mapping[str, bytes]:
        """The known keys, refreshed first when ``key_id`` is not among them."""
        if key_id not in self._keys:
            async with self._lock:
                if key_id not in self._keys:
                    self._keys = dict(await self._fetch())
        return self._keys


@dataclass
class Recorder:
    """Everything the fake provider saw."""

    permits: list[ReceivedPermit] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    batches: int = 0


class FakeProvider(inbound_pb2_grpc.InboundServiceServicer):
    """Answers NO_DATA for every permit and remembers them; see the module docstring."""

    def __init__(self, signers: Mapping[str, crypto.Signer], network_keys: NetworkKeys) -> None:
        self._signers = signers  # organization code → its signer
        self._network_keys = network_keys
        self.record = Recorder()

    async def ProvideAnswers(  # noqa: N802 (gRPC method name)
        self, request: inbound_pb2.ProvideAnswersRequest, context: Context
    ) -> inbound_pb2.ProvideAnswersResponse:
        self.record.batches += 1
        identity = caller()
        if identity != NETWORK:
            self._problem(f"ProvideAnswers called by {identity or 'nobody'!r}, not {NETWORK!r}")
            raise PermissionDenied("CALLER_NOT_ALLOWED", f"{identity} is not the network")
        envelope = request.permit_batch
        batch = _permit_batch(envelope.body)
        if batch is None:
            self._problem("a permit batch body is not a PermitBatch")
            raise InvalidArgument("MALFORMED_PERMIT_BATCH", "the body is not a PermitBatch")
        problem = await self._verify(envelope, batch)
        for permit in batch.permits:
            self.record.permits.append(_received(permit, problem))
        if problem:
            raise InvalidArgument("BAD_PERMIT_BATCH", problem)
        signer = self._provider_signer(batch)
        try:
            answer = _answers(batch, signer)
        except InvalidArgument as error:
            self._problem(f"cannot answer a permit batch: {error.message}")
            raise
        return inbound_pb2.ProvideAnswersResponse(answer_batch=answer)

    async def AcceptLateAnswers(  # noqa: N802 (gRPC method name)
        self, request: inbound_pb2.AcceptLateAnswersRequest, context: Context
    ) -> inbound_pb2.AcceptLateAnswersResponse:
        self._problem("AcceptLateAnswers was called, but the kit never holds an answer")
        raise FailedPrecondition("NO_LATE_ANSWERS_EXPECTED", "the conformance kit holds nothing")

    async def DiscloseOrganizationAccessRecords(  # noqa: N802 (gRPC method name)
        self, request: inbound_pb2.DiscloseOrganizationAccessRecordsRequest, context: Context
    ) -> inbound_pb2.DiscloseOrganizationAccessRecordsResponse:
        # The kit's test organizations keep no access records: a disclosure finds none.
        return inbound_pb2.DiscloseOrganizationAccessRecordsResponse()

    async def _verify(
        self, envelope: common_pb2.SignedEnvelope, batch: payloads_pb2.PermitBatch
    ) -> str:
        """What is wrong with a batch ("" when nothing): signature, then requester key digest."""
        keys = await self._network_keys.get(envelope.key_id)
        try:
            crypto.open_envelope(envelope, keys, expected_signer=NETWORK)
        except InvalidArgument as error:
            return f"network signature: {error.message}"
        if batch.requester_key_digest != crypto.digest(batch.requester_key.body):
            return "requester_key_digest is not sha256 of the requester key"
        if not batch.permits:
            return "the batch holds no permits"
        return ""

    def _provider_signer(self, batch: payloads_pb2.PermitBatch) -> crypto.Signer:
        providers = {permit.provider for permit in batch.permits}
        if len(providers) != 1:
            self._problem(f"one permit batch names several providers: {sorted(providers)}")
            raise InvalidArgument("MIXED_PROVIDERS", "a permit batch is for one provider")
        (provider,) = providers
        signer = self._signers.get(provider)
        if signer is None:
            self._problem(f"a permit batch for {provider!r}, which the kit did not register")
            raise NotFound("PROVIDER_NOT_HOSTED", "provider not hosted here")
        return signer

    def _problem(self, text: str) -> None:
        if text not in self.record.problems:
            self.record.problems.append(text)


def _permit_batch(body: bytes) -> payloads_pb2.PermitBatch | None:
    try:
        return payloads_pb2.PermitBatch.FromString(body)
    except DecodeError:
        return None


def _received(permit: payloads_pb2.Permit, problem: str) -> ReceivedPermit:
    return ReceivedPermit(
        query_id=permit.query_id,
        permit_id=permit.permit_id,
        requester=permit.requester,
        requester_capacity=permit.requester_capacity,
        provider=permit.provider,
        provider_capacity=permit.provider_capacity,
        procedure=permit.procedure,
        data_items=tuple(permit.data_items),
        on_date=permit.on_date,
        provider_linkage_code=permit.provider_linkage_code,
        permission_list_version=permit.permission_list_version,
        batch_problem=problem,
    )


def _answers(batch: payloads_pb2.PermitBatch, signer: crypto.Signer) -> common_pb2.SignedEnvelope:
    """NO_DATA for every permit, signed by the provider (sealed to nothing: no data)."""
    try:
        key = payloads_pb2.RequesterKey.FromString(batch.requester_key.body)
    except DecodeError as error:
        raise InvalidArgument("BAD_REQUESTER_KEY", "the requester key is unreadable") from error
    answer = payloads_pb2.AnswerBatch(
        provider=signer.holder,
        requester=batch.permits[0].requester,
        requester_key_id=key.key_id,
        ephemeral_public_key=crypto.BatchSealer(key.public_key).ephemeral_public_key,
        answers=[
            payloads_pb2.Answer(
                permit_id=permit.permit_id,
                query_id=permit.query_id,
                status=common_pb2.QUERY_STATUS_NO_DATA,
                reason=NO_DATA_REASON,
            )
            for permit in batch.permits
        ],
    )
    answer.answered_at.FromDatetime(datetime.now(UTC))
    return signer.sign(answer.SerializeToString(deterministic=True))


async def serve(provider: FakeProvider, security: Security, host: str, port: int) -> RunningServer:
    """Start the fake provider's gRPC server (health and reflection included)."""
    return await start_server(
        [
            (
                lambda s: inbound_pb2_grpc.add_InboundServiceServicer_to_server(provider, s),
                SERVICE_NAME,
            )
        ],
        security=security,
        host=host,
        port=port,
    )
