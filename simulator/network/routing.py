"""Routing (経路): permit batches to providers, sealed answers back, late answers onward.

Owns step 2 and the network's half of step 5 of the query path (ARCHITECTURE.md): permits are
grouped per provider into one ``PermitBatch`` (with the requester key envelope and its sha256),
signed once by the network, and sent to the provider platform's ``InboundService`` through a
``Transport`` with a deadline; all providers of a batch are called concurrently. What comes back
is checked only for who signed it (the provider, with a directory key) and then passed on as
the exact bytes received.

Must never: open, parse for content or alter an answer (it cannot decrypt, and must not try),
wait without a deadline, or import grpc (the gRPC transport lives in ``transport``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from linkage import crypto
from linkage.errors import InvalidArgument
from linkage.v1 import common_pb2, payloads_pb2
from simulator.network.directory import OrgEntry
from simulator.network.keystore import PermitKeys
from simulator.network.permits import RequesterKeyInfo

PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"
ANSWER_SIGNATURE_INVALID = "ANSWER_SIGNATURE_INVALID"


class RouteError(Exception):
    """A call to a platform did not succeed. ``unavailable`` means unreachable or too slow."""

    def __init__(self, reason: str, *, unavailable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unavailable = unavailable


class Transport(Protocol):
    """How the network reaches platforms' InboundService (gRPC in production, fakes in tests)."""

    async def provide_answers(
        self, endpoint: str, permit_batch: common_pb2.SignedEnvelope, *, deadline: float
    ) -> common_pb2.SignedEnvelope:
        """ProvideAnswers; raises ``RouteError``."""
        ...

    async def accept_late_answers(
        self, endpoint: str, answer_batch: common_pb2.SignedEnvelope, *, deadline: float
    ) -> int:
        """AcceptLateAnswers; returns how many were accepted; raises ``RouteError``."""
        ...


@dataclass(frozen=True, slots=True)
class RouteResult:
    """What happened to one provider's permit batch."""

    provider: str
    permit_ids: tuple[str, ...]
    answer_batch: common_pb2.SignedEnvelope | None
    failure: str = ""


def batch_id(envelope: common_pb2.SignedEnvelope) -> str:
    """A stable id of a signed answer batch: the same bytes always get the same id."""
    return batch_id_of(envelope.SerializeToString(deterministic=True))


def batch_id_of(serialized: bytes) -> str:
    """``batch_id`` of an envelope already serialized (deterministically): serialize once."""
    return hashlib.sha256(serialized).hexdigest()[:32]


def check_answer_signature(
    envelope: common_pb2.SignedEnvelope, provider: OrgEntry, now: datetime
) -> bytes:
    """The body of an answer batch if ``provider`` signed it; InvalidArgument otherwise."""
    return crypto.open_envelope(
        envelope,
        provider.verify_keys(now),
        expected_signer=provider.code,
        reason=ANSWER_SIGNATURE_INVALID,
    )


class Router:
    """Signs permit batches and sends them; gives back each provider's answer batch or failure."""

    def __init__(
        self,
        transport: Transport,
        permit_keys: PermitKeys,
        *,
        timeout: float,
        refresh: Callable[[str], Awaitable[OrgEntry | None]],
    ) -> None:
        self._transport = transport
        self._keys = permit_keys
        self._timeout = timeout
        # Re-reads an organization past the directory cache: a provider may have rotated its
        # signing key a moment ago on another replica.
        self._refresh = refresh

    def sign_batch(
        self,
        requester_key: RequesterKeyInfo,
        permits: Sequence[payloads_pb2.Permit],
        now: datetime | None = None,
    ) -> common_pb2.SignedEnvelope:
        """One PermitBatch, one network signature (by the key active at ``now``)."""
        batch = payloads_pb2.PermitBatch(
            requester_key=requester_key.envelope,
            requester_key_digest=requester_key.digest,
            permits=permits,
        )
        return self._keys.signer(now).sign(batch.SerializeToString(deterministic=True))

    async def route(
        self,
        requester_key: RequesterKeyInfo,
        groups: Sequence[tuple[OrgEntry, Sequence[payloads_pb2.Permit]]],
        now: datetime,
    ) -> list[RouteResult]:
        """Send every provider its batch concurrently; never raises for one provider's fault."""
        calls = [
            self._route_one(requester_key, provider, permits, now) for provider, permits in groups
        ]
        return list(await asyncio.gather(*calls))

    async def _route_one(
        self,
        requester_key: RequesterKeyInfo,
        provider: OrgEntry,
        permits: Sequence[payloads_pb2.Permit],
        now: datetime,
    ) -> RouteResult:
        permit_ids = tuple(permit.permit_id for permit in permits)
        envelope = self.sign_batch(requester_key, permits, now)
        try:
            # The transport sets the gRPC deadline; wait_for is the backstop for any transport.
            answer = await asyncio.wait_for(
                self._transport.provide_answers(
                    provider.endpoint, envelope, deadline=self._timeout
                ),
                timeout=self._timeout + 1.0,
            )
        except RouteError as failure:
            return RouteResult(provider.code, permit_ids, None, failure.reason)
        except TimeoutError:
            return RouteResult(provider.code, permit_ids, None, PROVIDER_UNAVAILABLE)
        if not await self.signed_by(answer, provider, now):
            return RouteResult(provider.code, permit_ids, None, ANSWER_SIGNATURE_INVALID)
        return RouteResult(provider.code, permit_ids, answer)

    async def signed_by(
        self, envelope: common_pb2.SignedEnvelope, organization: OrgEntry, now: datetime
    ) -> bool:
        """Whether ``organization`` signed ``envelope`` (re-reading its keys once if needed)."""
        try:
            check_answer_signature(envelope, organization, now)
            return True
        except InvalidArgument:
            pass
        fresh = await self._refresh(organization.code)
        if fresh is None:
            return False
        try:
            check_answer_signature(envelope, fresh, now)
            return True
        except InvalidArgument:
            return False

    async def deliver_late(
        self, requester: OrgEntry, answer_batch: common_pb2.SignedEnvelope
    ) -> int:
        """Pass a late answer batch to the requester's platform; raises ``RouteError``."""
        try:
            return await asyncio.wait_for(
                self._transport.accept_late_answers(
                    requester.endpoint, answer_batch, deadline=self._timeout
                ),
                timeout=self._timeout + 1.0,
            )
        except TimeoutError as error:
            raise RouteError("REQUESTER_UNAVAILABLE", unavailable=True) from error
