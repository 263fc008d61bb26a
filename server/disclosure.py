"""Disclosure of access records about one person (情報提供等記録開示, マイナポータル-style).

Owns three reads, each confined to one tenant's ledger (``server:<tenant>``):

- ``disclose_person``: the tenant's records about a person named by unified number (the
  records whose subject is that number or the tenant's linkage code for the person);
- ``disclose_code``: the same, the person named by the tenant's linkage code (what the network
  asks a provider for, ``InboundService.DiscloseOrganizationAccessRecords``);
- ``PersonDisclosure``: the person-level view: the tenant's own records plus what the network
  collects from itself and every other organization (``NetworkService.
  CollectPersonAccessRecords``), each record tagged with its place; a place that did not answer
  is listed, never silently left out.

A record kept by another place than the asking tenant (what the network asks a provider for,
and everything the network hands back) goes out without its ledger and with only the kind of
actor ("staff", "business_system", "organization"...), never the actor's id (staff user names,
business system ids); what the person needs stays: when, who asked whom, procedure, data
items, outcome, reason.

Must never: return a record of another tenant's ledger, accept an individual number, hand
out anything but the record fields (no data contents, no linkage code, no unified number), or
another place's actor id or ledger.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session, sessionmaker

from linkage.errors import FieldViolation, InvalidArgument, LinkageError
from linkage.logs import get_logger
from linkage.records.disclosure import NETWORK_PLACE, StoredRecord, disclose, placed_order
from linkage.records.model import ActorKind
from linkage.v1 import common_pb2, network_pb2
from server import repository as repo
from server.content import unified_number_problem
from server.records import ledger_of

log = get_logger(__name__)

NO_LINKAGE_CODE = "NO_LINKAGE_CODE"
NETWORK_NOT_CONFIGURED = "NETWORK_NOT_CONFIGURED"
DEFAULT_TIMEOUT = 10.0
"""Seconds the network has to collect, when the caller's own deadline leaves more."""
ACTOR_KINDS = frozenset(kind.value.lower() for kind in ActorKind)
"""How another place's record names who acted: the kind, never the id."""


@runtime_checkable
class NetworkRecords(Protocol):
    """The network's CollectPersonAccessRecords, called as ``org.<tenant>``."""

    async def collect(
        self, tenant: str, linkage_code: str, *, seconds: float
    ) -> network_pb2.CollectPersonAccessRecordsResponse:
        """Waits at most ``seconds``; raises ``LinkageError`` (``Unavailable`` when the network
        cannot be reached or did not answer in time)."""
        ...


def _check_unified_number(unified_number: str) -> None:
    problem = unified_number_problem(unified_number)
    if problem is not None:
        raise InvalidArgument(
            "INVALID_UNIFIED_NUMBER",
            problem,
            violations=(FieldViolation("unified_number", problem),),
        )


def _own(
    sessions: sessionmaker[Session], tenant: str, unified_number: str
) -> tuple[list[StoredRecord], str | None]:
    """The tenant's records about the person and its linkage code for them (if any)."""
    _check_unified_number(unified_number)
    with repo.tenant_unit_of_work(sessions, tenant) as session:
        subjects = {unified_number}
        code = repo.code_of(session, tenant, unified_number)
        if code is not None:
            subjects.add(code.linkage_code)
        found = disclose(session, subjects, ledgers=[ledger_of(tenant)])
        return found, None if code is None else code.linkage_code


def disclose_person(
    sessions: sessionmaker[Session], tenant: str, unified_number: str
) -> list[StoredRecord]:
    """The tenant's records about the person (blocking: run it in a thread)."""
    return _own(sessions, tenant, unified_number)[0]


def disclose_code(
    sessions: sessionmaker[Session], tenant: str, linkage_code: str
) -> list[StoredRecord]:
    """The tenant's records about the person its linkage code ``linkage_code`` names: by the
    code, and by the unified number it is stored against (if the tenant acquired it). A code
    the tenant never acquired still finds the records it was named in (a NO_DATA answer).
    Blocking: run it in a thread."""
    if not linkage_code:
        raise InvalidArgument(
            "INVALID_LINKAGE_CODE",
            "linkage_code is required",
            violations=(FieldViolation("linkage_code", "is required"),),
        )
    with repo.tenant_unit_of_work(sessions, tenant) as session:
        subjects = {linkage_code}
        number = repo.unified_number_of_code(session, tenant, linkage_code)
        if number:
            subjects.add(number)
        return disclose(session, subjects, ledgers=[ledger_of(tenant)])


def entry_of(stored: StoredRecord, *, own: bool = True) -> common_pb2.AccessRecordEntry:
    """A stored record as disclosed: the record fields, without its subject. Not ``own`` (the
    record goes to another place's caller): without its ledger, and only the kind of actor."""
    r = stored.record
    stamp = Timestamp()
    stamp.FromDatetime(r.occurred_at)
    return common_pb2.AccessRecordEntry(
        occurred_at=stamp,
        ledger=r.ledger if own else "",
        event=r.event.value,
        requester=r.requester,
        provider=r.provider,
        procedure=r.procedure,
        data_items=r.data_items,
        outcome=r.outcome.value,
        reason=r.reason,
        actor=r.actor_id if own else r.actor_kind.value.lower(),
    )


def from_elsewhere(placed: network_pb2.PlacedAccessRecord) -> network_pb2.PlacedAccessRecord:
    """Another place's record as the tenant's caller gets it, whatever the place sent: no
    ledger, and an actor only if it is a kind of actor (never an id)."""
    record = common_pb2.AccessRecordEntry()
    record.CopyFrom(placed.record)
    record.ledger = ""
    if record.actor not in ACTOR_KINDS:
        record.actor = ""
    return network_pb2.PlacedAccessRecord(place=placed.place, record=record)


@dataclass(frozen=True, slots=True)
class PersonRecords:
    """A person's records from every place that answered, oldest first, and those that did not."""

    records: list[network_pb2.PlacedAccessRecord]
    unanswered: list[network_pb2.UnansweredPlace]


class PersonDisclosure:
    """The person-level disclosure a tenant's caller asks for."""

    def __init__(self, sessions: sessionmaker[Session], network: NetworkRecords | None) -> None:
        self._sessions = sessions
        self._network = network

    async def disclose(
        self, tenant: str, unified_number: str, *, deadline: float | None = None
    ) -> PersonRecords:
        """The tenant's records and the network's collection; ``deadline`` is the seconds left
        to the caller (the network gets at most that)."""
        own, code = await asyncio.to_thread(_own, self._sessions, tenant, unified_number)
        records = [network_pb2.PlacedAccessRecord(place=tenant, record=entry_of(s)) for s in own]
        unanswered: list[network_pb2.UnansweredPlace] = []
        if code is None:
            unanswered.append(
                network_pb2.UnansweredPlace(place=NETWORK_PLACE, reason=NO_LINKAGE_CODE)
            )
        elif self._network is None:
            unanswered.append(
                network_pb2.UnansweredPlace(place=NETWORK_PLACE, reason=NETWORK_NOT_CONFIGURED)
            )
        else:
            timeout = DEFAULT_TIMEOUT if deadline is None else min(DEFAULT_TIMEOUT, deadline)
            try:
                collected = await self._network.collect(tenant, code, seconds=max(0.1, timeout))
            except LinkageError as error:
                log.warning("disclosure_network_unanswered", tenant=tenant, reason=error.reason)
                unanswered.append(
                    network_pb2.UnansweredPlace(place=NETWORK_PLACE, reason=error.reason)
                )
            else:
                # The network never speaks for this tenant: its own ledger was read just now.
                records += [from_elsewhere(p) for p in collected.records if p.place != tenant]
                unanswered += list(collected.unanswered)
        records.sort(key=placed_order)
        return PersonRecords(records, unanswered)
