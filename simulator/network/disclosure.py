"""A person's access records gathered across the places that keep them (情報提供等記録開示).

Owns ``PersonRecordsCollector``: for a person named by one organization's linkage code, the
network's own records about them, plus the records of every other organization that holds a
code for the person or appears (as requester or provider) in the network's records about them,
asked in parallel through their platforms' ``InboundService.DiscloseOrganizationAccessRecords``
with each organization's own code, every call with a deadline. A place that does not answer in
time, refuses, or has no directory entry is reported as unanswered, never dropped.

The collector sees linkage codes (it derives them, as it does for translation) but hands back
only the record fields: no code, no person key, no data contents.

Must never: ask the asking organization itself (its platform adds its own records), call without
a deadline, or let one slow place hold up the others beyond the deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.errors import NotFound, remote_error
from linkage.rpc import Security
from linkage.v1 import common_pb2, inbound_pb2, inbound_pb2_grpc
from simulator.network import ledger, repository
from simulator.network.codes import CodeDeriver
from simulator.network.directory import Directory, OrgEntry

NETWORK_PLACE = "network"
UNAVAILABLE = "ORGANIZATION_UNAVAILABLE"
NOT_FOUND = "ORGANIZATION_NOT_FOUND"
REFUSED = "ORGANIZATION_ERROR"
DEFAULT_TIMEOUT = 5.0
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
    network_records: list[ledger.DisclosedRecord]
    to_ask: dict[str, str]  # organization → the person's code there
    unknown: list[str]  # organizations the records name that the directory no longer has


def network_entry(record: ledger.DisclosedRecord) -> common_pb2.AccessRecordEntry:
    """A network record as disclosed (the same fields DiscloseNetworkAccessRecords returns)."""
    entry = common_pb2.AccessRecordEntry(
        ledger=ledger.LEDGER_ID,
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


def _order(placed: Placed) -> tuple[int, int, str]:
    stamp = placed.record.occurred_at
    return (stamp.seconds, stamp.nanos, placed.place)


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
    ) -> None:
        self._sessions = sessions
        self._deriver = deriver
        self._directory = directory
        self._security = security
        self._timeout = timeout

    async def collect(
        self, organization: str, code: str, *, deadline: float | None = None
    ) -> Collected:
        """The records about the person ``code`` names at ``organization``; ``deadline`` is the
        seconds left to the caller (each organization gets at most that, minus a margin).

        Raises NotFound (UNKNOWN_LINKAGE_CODE) when the code was not issued to ``organization``.
        """
        organizations = await asyncio.to_thread(self._directory.codes)
        plan = await asyncio.to_thread(self._plan, organization, code, organizations)
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
        records.sort(key=_order)
        return Collected(records, unanswered)

    def _plan(self, organization: str, code: str, organizations: Sequence[str]) -> _Plan:
        """Blocking: the network's records and the organizations to ask, with their codes."""
        with unit_of_work(self._sessions) as session:
            found = repository.person_keys(session, organization, [code])
            if code not in found:
                raise NotFound("UNKNOWN_LINKAGE_CODE", "no such linkage code at this organization")
            codes = self._deriver.codes_everywhere(found[code], organizations)
            records = ledger.records_about(session, list(codes.values()))
            involved = {org for r in records for org in (r.requester, r.provider) if org}
            holding = {org for org, org_code in codes.items() if _issued(session, org, org_code)}
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


def _issued(session: Session, organization: str, code: str) -> bool:
    return code in repository.person_keys(session, organization, [code])
