"""A person's access records gathered across the places that keep them (情報提供等記録開示).

Owns ``PersonRecordsCollector``: for a person named by one organization's linkage code, the
network's own records about them, plus the records of every other organization that holds a
code for the person or appears (as requester or provider) in the network's records about them,
asked in parallel through their platforms' ``InboundService.DiscloseOrganizationAccessRecords``
with each organization's own code, every call with a deadline. A place that does not answer in
time, refuses, or has no directory entry is reported as unanswered, never dropped.

The collector sees linkage codes (it derives them, as it does for translation) but hands back
only the record fields: no code, no person key, no data contents; and of a record kept by
another place than the asking organization, not who acted (its staff user names, business
system ids: only the kind of actor) nor its ledger. Which organizations hold a code for the
person is one chunked look-up of the derived (organization, code) pairs on the issued codes'
primary key, matched in Python. Every collection is recorded in the network's own ledger
(``STAFF_OPERATION`` by the asking organization, subject its code for the person), and the
caller is charged once per organization asked (``admit``) before any is asked.

Must never: ask the asking organization itself (its platform adds its own records), call without
a deadline, or let one slow place hold up the others beyond the deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

import grpc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.errors import NotFound, remote_error
from linkage.records.disclosure import NETWORK_PLACE, StoredRecord, disclose, placed_order
from linkage.records.ledger import Ledger
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent, utc_now
from linkage.rpc import Security
from linkage.v1 import common_pb2, inbound_pb2, inbound_pb2_grpc
from simulator.network import ledger, repository
from simulator.network.codes import CodeDeriver
from simulator.network.directory import Directory, OrgEntry
from simulator.network.models import IssuedCode, Organization

UNAVAILABLE = "ORGANIZATION_UNAVAILABLE"
NOT_FOUND = "ORGANIZATION_NOT_FOUND"
REFUSED = "ORGANIZATION_ERROR"
DEFAULT_TIMEOUT = 5.0
PROCEDURE = "NetworkService.CollectPersonAccessRecords"
"""The procedure of the network's record of a collection."""
_PAIRS_PER_QUERY = 400
"""Organizations per look-up of issued codes (two bound parameters each)."""
"""Seconds each organization has to answer when the caller's own deadline leaves more."""

_UNREACHABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True, slots=True)
class Placed:
    """One disclosed record and the place that kept it (an organization code or "network")."""

    place: str
    record: common_pb2.AccessRecordEntry


@dataclass(frozen=True, slots=True)
class Collected:
    """Every record gathered, oldest first, and the places that did not answer (place, reason)."""

    records: list[Placed]
    unanswered: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class _Plan:
    network_records: list[StoredRecord]
    to_ask: dict[str, str]  # organization → the person's code there
    unknown: list[str]  # organizations the records name that the directory no longer has


def actor_kind_name(kind: ActorKind) -> str:
    """The kind of actor as another place's record discloses it ("staff", "organization"...)."""
    return kind.value.lower()


def network_entry(stored: StoredRecord) -> common_pb2.AccessRecordEntry:
    """A network record as disclosed to an organization's caller: the record fields, the kind
    of actor but not its id, no ledger (the place says where it was kept)."""
    record = stored.record
    entry = common_pb2.AccessRecordEntry(
        event=record.event.value,
        requester=record.requester,
        provider=record.provider,
        procedure=record.procedure,
        data_items=record.data_items,
        outcome=record.outcome.value,
        reason=record.reason,
        actor=actor_kind_name(record.actor_kind),
    )
    entry.occurred_at.FromDatetime(record.occurred_at)
    return entry


def collection_record(organization: str, code: str, at: datetime) -> AccessRecord:
    """The network's record that ``organization`` had the person's records collected."""
    return AccessRecord(
        occurred_at=at,
        ledger=ledger.LEDGER_ID,
        event=RecordEvent.STAFF_OPERATION,
        actor_kind=ActorKind.ORGANIZATION,
        actor_id=organization,
        requester=organization,
        procedure=PROCEDURE,
        subject=code,
        outcome=Outcome.OK,
    )


def organization_codes(session: Session) -> list[str]:
    """Every registered organization's code (the code column only)."""
    return list(session.scalars(select(Organization.code)))


def holders(session: Session, codes: Mapping[str, str]) -> set[str]:
    """The organizations among ``codes`` (organization → the person's derived code there) that
    were issued that code: chunked look-ups on the issued codes' key, matched in Python."""
    pairs = sorted(codes.items())
    found: set[str] = set()
    for start in range(0, len(pairs), _PAIRS_PER_QUERY):
        chunk = pairs[start : start + _PAIRS_PER_QUERY]
        stmt = select(IssuedCode.organization, IssuedCode.linkage_code).where(
            IssuedCode.organization.in_([org for org, _ in chunk]),
            IssuedCode.linkage_code.in_([code for _, code in chunk]),
        )
        found.update(org for org, code in session.execute(stmt) if codes.get(org) == code)
    return found


class PersonRecordsCollector:
    """Gathers a person's records from the network's ledger and the other organizations."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        deriver: CodeDeriver,
        directory: Directory,
        security: Security,
        timeout: float = DEFAULT_TIMEOUT,
        records: Ledger | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._sessions = sessions
        self._deriver = deriver
        self._directory = directory
        self._security = security
        self._timeout = timeout
        self._records = records
        self._clock = clock

    async def collect(
        self,
        organization: str,
        code: str,
        *,
        deadline: float | None = None,
        admit: Callable[[int], None] | None = None,
    ) -> Collected:
        """The records about the person ``code`` names at ``organization``; ``deadline`` is the
        seconds left to the caller (each organization gets at most that, minus a margin);
        ``admit`` is charged the number of organizations to ask before any is asked (it raises
        to refuse).

        Raises NotFound (UNKNOWN_LINKAGE_CODE) when the code was not issued to ``organization``.
        """
        plan = await asyncio.to_thread(self._plan, organization, code)
        if admit is not None and plan.to_ask:
            admit(len(plan.to_ask))
        if self._records is not None:
            await asyncio.to_thread(self._record, organization, code)
        limit = self._timeout if deadline is None else max(0.1, min(self._timeout, deadline))
        asked = sorted(plan.to_ask.items())
        entries = await asyncio.to_thread(self._directory.get_many, [org for org, _ in asked])
        # Disclosure is rare: its channels live for one collection (one per endpoint, as several
        # organizations may share a platform) and are closed before answering.
        channels: dict[str, grpc.aio.Channel] = {}
        try:
            answers = await asyncio.gather(
                *(
                    self._ask(channels, entries.get(org), org, org_code, limit)
                    for org, org_code in asked
                )
            )
        finally:
            await asyncio.gather(*(channel.close(None) for channel in channels.values()))
        records = [Placed(NETWORK_PLACE, network_entry(r)) for r in plan.network_records]
        unanswered = [(org, NOT_FOUND) for org in plan.unknown]
        for (org, _), answer in zip(asked, answers, strict=True):
            if isinstance(answer, str):
                unanswered.append((org, answer))
            else:
                records.extend(Placed(org, entry) for entry in answer)
        records.sort(key=placed_order)
        return Collected(records, unanswered)

    def _record(self, organization: str, code: str) -> None:
        """Blocking: the network's record of this collection, in a transaction of its own."""
        assert self._records is not None
        with unit_of_work(self._sessions) as session:
            self._records.append_many(
                session, ledger.LEDGER_ID, [collection_record(organization, code, self._clock())]
            )

    def _plan(self, organization: str, code: str) -> _Plan:
        """Blocking: the network's records and the organizations to ask, with their codes."""
        with unit_of_work(self._sessions) as session:
            found = repository.person_keys(session, organization, [code])
            if code not in found:
                raise NotFound("UNKNOWN_LINKAGE_CODE", "no such linkage code at this organization")
            # A record's subject may be a provider's code that was derived, never issued: the
            # records are searched by the person's code at every organization (HMACs, no I/O).
            codes = self._deriver.codes_everywhere(found[code], organization_codes(session))
            records = _records_about(session, codes.values())
            involved = {org for s in records for org in (s.record.requester, s.record.provider)}
            holding = holders(session, codes)
        involved.discard("")
        wanted = (involved | holding) - {organization}
        return _Plan(
            network_records=records,
            to_ask={org: codes[org] for org in wanted if org in codes},
            unknown=sorted(wanted - codes.keys()),
        )

    async def _ask(
        self,
        channels: dict[str, grpc.aio.Channel],
        entry: OrgEntry | None,
        organization: str,
        code: str,
        limit: float,
    ) -> list[common_pb2.AccessRecordEntry] | str:
        """The organization's records, or the reason it gave none."""
        if entry is None or not entry.endpoint:
            return NOT_FOUND
        channel = channels.get(entry.endpoint)
        if channel is None:
            channel = channels[entry.endpoint] = self._security.channel(entry.endpoint)
        stub = inbound_pb2_grpc.InboundServiceStub(channel)
        request = inbound_pb2.DiscloseOrganizationAccessRecordsRequest(
            organization=organization, linkage_code=code
        )
        try:
            # wait_for is the backstop should a call outlive its gRPC deadline.
            response = await asyncio.wait_for(
                stub.DiscloseOrganizationAccessRecords(request, timeout=limit), limit + 1.0
            )
        except TimeoutError:
            return UNAVAILABLE
        except grpc.aio.AioRpcError as error:
            if error.code() in _UNREACHABLE:
                return UNAVAILABLE
            return remote_error(error).reason or REFUSED
        return list(response.records)


def _records_about(session: Session, subjects: Collection[str]) -> list[StoredRecord]:
    """The network ledger's records whose subject is one of ``subjects``, oldest first."""
    return disclose(session, subjects, ledgers=[ledger.LEDGER_ID]) if subjects else []
