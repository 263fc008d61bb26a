"""Permits (情報提供許可証): the permission check and the issuance of one permit per query.

Owns step 1 of the query path (ARCHITECTURE.md) after the batch-level checks: per query, the
provider must be known (else ``FAILED``/``PROVIDER_NOT_FOUND``), some capacity of the provider
must be allowed every item asked for (else ``DENIED`` with the checker's reason), the
requester's code must be one the network issued (else ``FAILED``/``UNKNOWN_LINKAGE_CODE``);
then the code is translated and a ``Permit`` made (5-minute expiry by default, 16-byte random
nonce, the permission list version, the route back). Also verifies the requester key envelope.

Pure decisions: no database, no network, no grpc. The caller persists and routes.
Must never: issue a permit the permission list does not allow, put the requester's code into a
permit (only the provider-side code travels), or accept a requester key its owner did not sign.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from linkage import crypto
from linkage.errors import FieldViolation, InvalidArgument
from linkage.v1 import common_pb2, payloads_pb2
from simulator.network.codes import CodeDeriver
from simulator.network.directory import OrgEntry

NONCE_BYTES = 16
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
FAILED = common_pb2.QUERY_STATUS_FAILED
DENIED = common_pb2.QUERY_STATUS_DENIED
IN_FLIGHT = common_pb2.QUERY_STATUS_IN_FLIGHT

PROVIDER_NOT_FOUND = "PROVIDER_NOT_FOUND"
UNKNOWN_LINKAGE_CODE = "UNKNOWN_LINKAGE_CODE"
PROVIDER_NOT_ALLOWED = "PROVIDER_NOT_ALLOWED"

# When no capacity of the provider allows a query, the reason reported is the one that got
# furthest through the checker's order (a row for the provider exists but not for the item is
# more telling than "this capacity is not a provider of the procedure at all").
_DENIAL_RANK = {"PROVIDER_NOT_ALLOWED": 1, "ITEM_NOT_ALLOWED": 2, "OUTSIDE_VALIDITY": 3}


class Decision(Protocol):
    """What the permission list answers (``permission_list.Decision`` fits)."""

    @property
    def allowed(self) -> bool: ...

    @property
    def reason(self) -> str: ...


class PermissionChecker(Protocol):
    """The permission list as the network uses it (``permission_list.PermissionList`` fits)."""

    @property
    def version(self) -> str: ...

    def check(
        self,
        requester_capacity: str,
        procedure: str,
        provider_capacity: str,
        item: str,
        on: date | None = None,
    ) -> Decision: ...


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """One query of a batch, validated."""

    query_id: str
    procedure: str
    provider: str
    data_items: tuple[str, ...]
    linkage_code: str
    on_date: date

    def digest(self) -> bytes:
        """Fingerprint of the query's content: a retry must ask exactly the same thing."""
        text = "\x1f".join(
            (
                self.procedure,
                self.provider,
                ",".join(self.data_items),
                self.linkage_code,
                self.on_date.isoformat(),
            )
        )
        return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class RequesterKeyInfo:
    """A verified requester key envelope and the digest every permit batch binds."""

    envelope: common_pb2.SignedEnvelope
    key_id: str
    digest: bytes


def verify_requester_key(
    envelope: common_pb2.SignedEnvelope, requester: OrgEntry, now: datetime
) -> RequesterKeyInfo:
    """Check the RequesterKey envelope: signed by the requester with a directory key, naming the
    requester, a well-formed X25519 key with a matching id, not expired."""
    try:
        body = crypto.open_envelope(
            envelope,
            requester.verify_keys(now),
            expected_signer=requester.code,
            reason="BAD_REQUESTER_KEY",
        )
    except InvalidArgument as error:
        raise _bad_key(error.message) from error
    try:
        key = payloads_pb2.RequesterKey.FromString(body)
    except DecodeError as error:
        raise _bad_key("requester key body is not a RequesterKey") from error
    if key.organization != requester.code:
        raise _bad_key("requester key names another organization")
    if len(key.public_key) != 32 or not _KEY_ID_RE.fullmatch(key.key_id):
        raise _bad_key("requester key is not a 32-byte X25519 key with a 16-hex-digit id")
    if not key.HasField("not_after") or key.not_after.ToDatetime(now.tzinfo) <= now:
        raise _bad_key("requester key has expired", reason="REQUESTER_KEY_EXPIRED")
    return RequesterKeyInfo(envelope, key.key_id, crypto.digest(envelope.body))


def _bad_key(message: str, *, reason: str = "BAD_REQUESTER_KEY") -> InvalidArgument:
    return InvalidArgument(reason, message, violations=[FieldViolation("requester_key", message)])


@dataclass(frozen=True, slots=True)
class Verdict:
    """The network's decision on one new query: a permit, or a status with a reason."""

    query: QueryRequest
    status: common_pb2.QueryStatus.ValueType
    reason: str = ""
    permit: payloads_pb2.Permit | None = None
    expires_at: datetime | None = None


class PermitIssuer:
    """Decides each new query of a batch and makes the permits."""

    def __init__(self, checker: PermissionChecker, deriver: CodeDeriver, ttl: timedelta) -> None:
        self._checker = checker
        self._deriver = deriver
        self._ttl = ttl

    @property
    def permission_list_version(self) -> str:
        return self._checker.version

    def decide(
        self,
        *,
        requester: str,
        requester_capacity: str,
        queries: Sequence[QueryRequest],
        providers: Mapping[str, OrgEntry | None],
        person_keys: Mapping[str, bytes],
        now: datetime,
    ) -> list[Verdict]:
        """One outcome per query, in order. ``person_keys`` maps the requester's codes."""
        grants: dict[tuple[str, str, tuple[str, ...], date], _Grant] = {}
        verdicts: list[Verdict] = []
        append = verdicts.append
        expires_at = now + self._ttl
        # Two Timestamps per batch, copied into every permit: cheaper than converting per permit.
        stamps = (_timestamp(now), _timestamp(expires_at))
        # The randomness of every permit (a 16-byte id and a 16-byte nonce) in one draw from
        # the operating system's CSPRNG: the same source as ``secrets``, one call per batch.
        entropy = os.urandom(2 * NONCE_BYTES * len(queries))
        offset = 0
        linkage_code = self._deriver.linkage_code
        new_permit = payloads_pb2.Permit
        for query in queries:
            provider = providers.get(query.provider)
            if provider is None:
                append(Verdict(query, FAILED, PROVIDER_NOT_FOUND))
                continue
            key = (query.procedure, query.provider, query.data_items, query.on_date)
            grant = grants.get(key)
            if grant is None:
                grant = grants[key] = self._grant_of(
                    requester, requester_capacity, query, provider, stamps
                )
            if grant.template is None:
                append(Verdict(query, DENIED, grant.reason))
                continue
            person_key = person_keys.get(query.linkage_code)
            if person_key is None:
                append(Verdict(query, FAILED, UNKNOWN_LINKAGE_CODE))
                continue
            # Every field the (requester, provider, procedure, items, date) group shares comes
            # from one template; only the id, query, code and nonce are the permit's own.
            permit = new_permit()
            permit.CopyFrom(grant.template)
            permit.permit_id = entropy[offset : offset + NONCE_BYTES].hex()
            permit.nonce = entropy[offset + NONCE_BYTES : offset + 2 * NONCE_BYTES]
            offset += 2 * NONCE_BYTES
            permit.query_id = query.query_id
            permit.provider_linkage_code = linkage_code(person_key, query.provider)
            append(Verdict(query, IN_FLIGHT, "", permit, expires_at))
        return verdicts

    def _grant_of(
        self,
        requester: str,
        requester_capacity: str,
        query: QueryRequest,
        provider: OrgEntry,
        stamps: tuple[Timestamp, Timestamp],
    ) -> _Grant:
        """The decision for one (procedure, provider, items, date) and, when allowed, the
        permit fields every query of that group shares."""
        capacity, reason = self._grant(requester_capacity, query, provider)
        if capacity is None:
            return _Grant(None, reason)
        template = payloads_pb2.Permit(
            requester=requester,
            requester_capacity=requester_capacity,
            provider=query.provider,
            provider_capacity=capacity,
            procedure=query.procedure,
            data_items=query.data_items,
            on_date=query.on_date.isoformat(),
            permission_list_version=self._checker.version,
            route=requester,
            issued_at=stamps[0],
            expires_at=stamps[1],
        )
        return _Grant(template, "")

    def _grant(
        self, requester_capacity: str, query: QueryRequest, provider: OrgEntry
    ) -> tuple[str | None, str]:
        """(the provider capacity that allows every item, "") or (None, the denial reason)."""
        best_reason, best_rank = PROVIDER_NOT_ALLOWED, -1
        for capacity in provider.capacities:
            denial = ""
            for item in query.data_items:
                decision = self._checker.check(
                    requester_capacity, query.procedure, capacity, item, query.on_date
                )
                if not decision.allowed:
                    denial = decision.reason
                    break
            if not denial:
                return capacity, ""
            rank = _DENIAL_RANK.get(denial, 0)
            if rank > best_rank:
                best_reason, best_rank = denial, rank
        return None, best_reason


@dataclass(frozen=True, slots=True)
class _Grant:
    """One group's decision: the permit template when allowed, else the denial reason."""

    template: payloads_pb2.Permit | None
    reason: str


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
