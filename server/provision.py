"""Provision (情報提供): a provider tenant answers a batch of permits from the network.

Owns step 3 of the query path: verify the network's signature over the permit batch, the
requester key envelope and its digest; then, per permit, that it is for a tenant here, not
expired, checked against a permission list version we know, allowed by our own copy of the list
for a capacity the tenant holds, and not replayed (nonce stored in the database); find the
person by our own linkage code and the duplicates in force on the permit's date; hold the answer
for review when the auto-response-disabled flag is set; otherwise seal it to the requester key.
Used nonces, held provisions and access records commit in one transaction before the answer
leaves; the whole batch is sealed with one key agreement and signed once.

Must never: answer a permit it could not verify, read or seal data of another tenant, let a
nonce be used twice, send a value in clear, or import grpc.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from linkage import crypto
from linkage.errors import InvalidArgument, ResourceExhausted
from linkage.logs import get_logger
from linkage.records.model import AccessRecord, ActorKind
from linkage.v1 import common_pb2, payloads_pb2
from permission_list import PermissionList
from server import repository as repo
from server.content import parse_iso_date
from server.directory import NETWORK, Directory
from server.duplicates import lookup_in_force
from server.ports import Clock
from server.querykeys import timestamp
from server.records import PROVIDER_EVENTS, Recorder, Status, record
from server.tenancy import Tenant, Tenants

log = get_logger(__name__)
QS = common_pb2.QueryStatus
PENDING = common_pb2.QUERY_STATUS_UNSPECIFIED  # not decided yet (never sent)
MAX_PERMITS = 5000
NONCE_BYTES = 16
_SAFE_SUBJECT = re.compile(r"[A-Za-z0-9._:-]{1,64}")
HELD = "HELD"


@dataclass(frozen=True, slots=True)
class RequesterKeyInfo:
    """A verified requester key: who it belongs to and what to seal to."""

    organization: str
    key_id: str
    public_key: bytes
    not_after: datetime
    envelope: common_pb2.SignedEnvelope


@dataclass(slots=True)
class Verdict:
    """What becomes of one permit."""

    permit: payloads_pb2.Permit
    status: Status = PENDING
    reason: str = ""
    on_date: date | None = None
    unified_number: str = ""
    values: list[common_pb2.DuplicateValue] = field(default_factory=list)

    def decide(self, status: Status, reason: str = "") -> None:
        self.status, self.reason = status, reason


def parse(message: type[Message], body: bytes, reason: str) -> Message:
    try:
        return message.FromString(body)
    except DecodeError as error:
        raise InvalidArgument(reason, f"{message.DESCRIPTOR.name} does not parse") from error


async def verify_requester_key(
    directory: Directory, envelope: common_pb2.SignedEnvelope, now: datetime
) -> RequesterKeyInfo:
    """The requester key in ``envelope`` if its organization signed it and it is still valid."""
    signer = envelope.signer
    body = await directory.open(envelope, signer, reason="REQUESTER_KEY_SIGNATURE_INVALID")
    key = parse(payloads_pb2.RequesterKey, body, "REQUESTER_KEY_MALFORMED")
    assert isinstance(key, payloads_pb2.RequesterKey)
    if (
        key.organization != signer
        or len(key.public_key) != 32
        or crypto.key_id(key.public_key) != key.key_id
        or not key.HasField("not_after")
    ):
        raise InvalidArgument("REQUESTER_KEY_INVALID", "the requester key does not hold together")
    not_after = key.not_after.ToDatetime(now.tzinfo)
    if not_after <= now:
        raise InvalidArgument("REQUESTER_KEY_EXPIRED", "the requester key can no longer be used")
    return RequesterKeyInfo(signer, key.key_id, key.public_key, not_after, envelope)


class Provider:
    """The provider side of the platform: answers permit batches for its tenants."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        tenants: Tenants,
        directory: Directory,
        permission_list: PermissionList,
        recorder: Recorder,
        clock: Clock,
    ) -> None:
        self._sessions = sessions
        self._tenants = tenants
        self._directory = directory
        self._permissions = permission_list
        self._recorder = recorder
        self._clock = clock

    async def provide(self, envelope: common_pb2.SignedEnvelope) -> common_pb2.SignedEnvelope:
        """Answer a signed permit batch with a signed answer batch."""
        now = self._clock()
        batch = await self._open_batch(envelope)
        key = await verify_requester_key(self._directory, batch.requester_key, now)
        tenant = self._provider_tenant(batch)
        sealer = crypto.BatchSealer(key.public_key)
        memo: dict[Any, tuple[Status, str]] = {}
        verdicts = [self._precheck(tenant, key, permit, now, memo) for permit in batch.permits]
        verdicts = await asyncio.to_thread(self._decide_and_commit, tenant, key, verdicts, now)
        return self._answer(tenant, key, sealer, verdicts, now)

    async def _open_batch(self, envelope: common_pb2.SignedEnvelope) -> payloads_pb2.PermitBatch:
        body = await self._directory.open(
            envelope, NETWORK, reason="PERMIT_BATCH_SIGNATURE_INVALID"
        )
        batch = parse(payloads_pb2.PermitBatch, body, "PERMIT_BATCH_MALFORMED")
        assert isinstance(batch, payloads_pb2.PermitBatch)
        if not batch.permits:
            raise InvalidArgument("EMPTY_PERMIT_BATCH", "the batch holds no permit")
        if len(batch.permits) > MAX_PERMITS:
            raise ResourceExhausted("PERMIT_BATCH_TOO_LARGE", f"at most {MAX_PERMITS} permits")
        if crypto.digest(batch.requester_key.body) != batch.requester_key_digest:
            # The network signed a digest of a different key: someone swapped the key.
            raise InvalidArgument(
                "REQUESTER_KEY_DIGEST_MISMATCH", "the requester key is not the one permitted"
            )
        return batch

    def _provider_tenant(self, batch: payloads_pb2.PermitBatch) -> Tenant:
        providers = {permit.provider for permit in batch.permits}
        if len(providers) != 1:
            raise InvalidArgument("MIXED_PROVIDERS", "a permit batch is for one provider")
        return self._tenants.get(providers.pop())

    def _precheck(
        self,
        tenant: Tenant,
        key: RequesterKeyInfo,
        permit: payloads_pb2.Permit,
        now: datetime,
        memo: dict[Any, tuple[Status, str]] | None = None,
    ) -> Verdict:
        """The checks that need no database, in the order of the wire contract.

        ``memo`` (one per batch) keeps the own permission check of each distinct
        (capacities, procedure, items, date): a batch repeats a handful of them.
        """
        verdict = Verdict(permit)
        failed = common_pb2.QUERY_STATUS_FAILED
        on = _iso_date(permit.on_date)
        items = tuple(permit.data_items)
        requester = permit.requester
        if (
            not permit.permit_id
            or not permit.query_id
            or on is None
            or len(permit.nonce) != NONCE_BYTES
            or not items
            or len(set(items)) != len(items)
            or not permit.HasField("expires_at")
        ):
            verdict.decide(failed, "PERMIT_MALFORMED")
        elif requester != key.organization:
            verdict.decide(failed, "REQUESTER_KEY_MISMATCH")
        elif permit.route != requester:
            # The answer goes back along the route: it must lead to the requester.
            verdict.decide(failed, "ROUTE_MISMATCH")
        elif _expired(permit.expires_at, now):
            verdict.decide(failed, "PERMIT_EXPIRED")
        elif permit.permission_list_version != self._permissions.version:
            verdict.decide(failed, "UNKNOWN_PERMISSION_LIST_VERSION")
        else:
            verdict.on_date = on
            group = (
                permit.requester_capacity,
                permit.procedure,
                permit.provider_capacity,
                items,
                on,
            )
            decided = None if memo is None else memo.get(group)
            if decided is None:
                self._own_permission_check(tenant, verdict, on)
                if memo is not None:
                    memo[group] = (verdict.status, verdict.reason)
            elif decided[0] != PENDING:
                verdict.decide(*decided)
        return verdict

    def _own_permission_check(self, tenant: Tenant, verdict: Verdict, on: date) -> None:
        permit = verdict.permit
        if permit.provider_capacity not in tenant.capacities:
            verdict.decide(common_pb2.QUERY_STATUS_DENIED, "PROVIDER_CAPACITY_NOT_HELD")
            return
        for item in permit.data_items:
            decision = self._permissions.check(
                permit.requester_capacity, permit.procedure, permit.provider_capacity, item, on
            )
            if not decision.allowed:
                verdict.decide(common_pb2.QUERY_STATUS_DENIED, decision.reason)
                return

    def _decide_and_commit(
        self, tenant: Tenant, key: RequesterKeyInfo, prechecked: list[Verdict], now: datetime
    ) -> list[Verdict]:
        """The database part, in one transaction; retried once if a replica raced us on a
        nonce (the retry then sees it as used)."""
        for attempt in (1, 2):
            verdicts = [replace(v, values=list(v.values)) for v in prechecked]
            try:
                with repo.tenant_unit_of_work(self._sessions, tenant.code) as session:
                    self._decide(session, tenant, key, verdicts, now)
                return verdicts
            except IntegrityError:
                if attempt == 2:
                    raise
                log.info("nonce_race_retry", tenant=tenant.code)
        raise AssertionError("unreachable")

    def _decide(
        self,
        session: Session,
        tenant: Tenant,
        key: RequesterKeyInfo,
        verdicts: list[Verdict],
        now: datetime,
    ) -> None:
        pending = self._consume_nonces(session, tenant, verdicts)
        numbers = repo.unified_numbers_by_code(
            session, tenant.code, (v.permit.provider_linkage_code for v in pending)
        )
        known: list[Verdict] = []
        for verdict in pending:
            number = numbers.get(verdict.permit.provider_linkage_code)
            if number is None:
                verdict.decide(common_pb2.QUERY_STATUS_NO_DATA, "UNKNOWN_PERSON")
            else:
                verdict.unified_number = number
                known.append(verdict)
        self._find_values(session, tenant, known)
        self._hold(session, tenant, key, verdicts, now)
        self._recorder.append(session, [self._record(tenant, v, now) for v in verdicts])

    def _consume_nonces(
        self, session: Session, tenant: Tenant, verdicts: list[Verdict]
    ) -> list[Verdict]:
        """Mark replays (in the database or twice in this batch) and store the fresh nonces."""
        candidates = [v for v in verdicts if v.status == PENDING]
        used = repo.used_nonces(session, tenant.code, (v.permit.nonce for v in candidates))
        fresh: list[Verdict] = []
        for verdict in candidates:
            nonce = verdict.permit.nonce
            if nonce in used:
                verdict.decide(common_pb2.QUERY_STATUS_FAILED, "PERMIT_REPLAYED")
                continue
            used.add(nonce)
            fresh.append(verdict)
        tz = self._clock().tzinfo
        # The permits of a batch share their expiry: convert each distinct one once.
        expiries: dict[tuple[int, int], datetime] = {}
        rows = []
        for v in fresh:
            stamp = v.permit.expires_at
            moment = expiries.get((stamp.seconds, stamp.nanos))
            if moment is None:
                moment = expiries[(stamp.seconds, stamp.nanos)] = stamp.ToDatetime(tz)
            rows.append((v.permit.nonce, v.permit.permit_id, moment))
        repo.add_nonces(session, tenant.code, rows)
        return fresh

    def _find_values(self, session: Session, tenant: Tenant, known: list[Verdict]) -> None:
        wanted = [(v.unified_number, list(v.permit.data_items), v.on_date) for v in known]
        found = lookup_in_force(session, tenant, wanted)  # type: ignore[arg-type]
        flags = repo.flags_of(session, tenant.code, {v.unified_number for v in known})
        for verdict, values in zip(known, found, strict=True):
            if not values:
                verdict.decide(common_pb2.QUERY_STATUS_NO_DATA, "NO_DUPLICATE_IN_FORCE")
                continue
            verdict.values = [value.to_value() for value in values]
            if any((verdict.unified_number, value.data_item) in flags for value in values):
                verdict.decide(common_pb2.QUERY_STATUS_HELD_FOR_REVIEW, "AUTO_RESPONSE_DISABLED")
            else:
                verdict.decide(common_pb2.QUERY_STATUS_PROVIDED)

    def _hold(
        self,
        session: Session,
        tenant: Tenant,
        key: RequesterKeyInfo,
        verdicts: Sequence[Verdict],
        now: datetime,
    ) -> None:
        held = [v for v in verdicts if v.status == common_pb2.QUERY_STATUS_HELD_FOR_REVIEW]
        requester_key = key.envelope.SerializeToString()
        repo.add_held(
            session,
            [
                {
                    "tenant": tenant.code,
                    "permit_id": v.permit.permit_id,
                    "permit": v.permit.SerializeToString(),
                    "requester_key": requester_key,
                    "unified_number": v.unified_number,
                    "held_at": now,
                    "seal_deadline": key.not_after,
                    "state": HELD,
                    "decided_by": "",
                    "decided_at": None,
                    "decision_reason": "",
                    "answer_batch": None,
                    "delivered": False,
                    "delivery_attempts": 0,
                }
                for v in held
            ],
        )
        for verdict in held:
            verdict.values = []  # nothing leaves before a reviewer approves

    def _record(self, tenant: Tenant, verdict: Verdict, now: datetime) -> AccessRecord:
        permit = verdict.permit
        event, outcome = PROVIDER_EVENTS[verdict.status]
        code = permit.provider_linkage_code
        subject = verdict.unified_number or (code if _SAFE_SUBJECT.fullmatch(code) else "")
        provided = [value.data_item for value in verdict.values]
        return record(
            tenant=tenant.code,
            at=now,
            event=event,
            outcome=outcome,
            actor_kind=ActorKind.ORGANIZATION,
            actor_id=_safe(permit.requester),
            procedure=_safe(permit.procedure),
            requester=_safe(permit.requester),
            provider=tenant.code,
            data_items=provided or [i for i in permit.data_items if _safe(i) and "," not in i],
            subject=subject,
            permit_id=_safe(permit.permit_id),
            query_id=_safe(permit.query_id),
            reason=verdict.reason,
        )

    def _answer(
        self,
        tenant: Tenant,
        key: RequesterKeyInfo,
        sealer: crypto.BatchSealer,
        verdicts: Sequence[Verdict],
        now: datetime,
    ) -> common_pb2.SignedEnvelope:
        answers = [answer_of(v.permit, v.status, v.reason, v.values, sealer) for v in verdicts]
        return sign_answers(tenant, key.organization, key.key_id, sealer, answers, now)


def answer_of(
    permit: payloads_pb2.Permit,
    status: Status,
    reason: str,
    values: Sequence[common_pb2.DuplicateValue],
    sealer: crypto.BatchSealer,
) -> payloads_pb2.Answer:
    """One answer; only PROVIDED carries a sealed content (with the permit id inside)."""
    answer = payloads_pb2.Answer(
        permit_id=permit.permit_id, query_id=permit.query_id, status=status, reason=reason
    )
    if status == common_pb2.QUERY_STATUS_PROVIDED:
        content = payloads_pb2.SealedContent(permit_id=permit.permit_id, values=values)
        answer.nonce, answer.ciphertext = sealer.seal(content.SerializeToString())
        answer.data_items.extend(value.data_item for value in values)
    return answer


def sign_answers(
    tenant: Tenant,
    requester: str,
    requester_key_id: str,
    sealer: crypto.BatchSealer,
    answers: Sequence[payloads_pb2.Answer],
    now: datetime,
) -> common_pb2.SignedEnvelope:
    """The answer batch, signed once by the provider tenant."""
    batch = payloads_pb2.AnswerBatch(
        provider=tenant.code,
        requester=requester,
        requester_key_id=requester_key_id,
        ephemeral_public_key=sealer.ephemeral_public_key,
        answers=answers,
        answered_at=timestamp(now),
    )
    return tenant.signer.sign(batch.SerializeToString())


@functools.lru_cache(maxsize=1024)
def _iso_date(text: str) -> date | None:
    """``parse_iso_date``, once per distinct text (a batch shares a handful of dates)."""
    return parse_iso_date(text)


def _expired(stamp: Timestamp, now: datetime) -> bool:
    """``stamp <= now``, compared as integers (no datetime made per permit)."""
    delta = now - _EPOCH
    now_seconds = delta.days * 86_400 + delta.seconds
    return (stamp.seconds, stamp.nanos) <= (now_seconds, delta.microseconds * 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _safe(text: str) -> str:
    """A permit field fit for a record (the network signed it, but records refuse controls)."""
    return text if text.isprintable() and len(text) <= 128 else ""
