"""System management (システム管理機能) of one tenant: statistics from its ledger, purges now.

Owns ``SystemManagement``: counts of access records per event and per data item in a period,
from the tenant's ledger ``server:<code>`` with one GROUP BY over the (ledger, time) index (the
records keep their data items comma-joined, so rows are grouped by the joined text in SQL and
split here: the distinct combinations are few), and the purge of expired data on demand
(``Retention``, the same job the schedule runs).

Must never: read another tenant's ledger, return anything about a person, or import grpc.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from linkage.db import unit_of_work
from linkage.errors import FieldViolation, InvalidArgument
from linkage.records.model import DATA_ITEM_SEPARATOR, to_micros
from linkage.records.models import RECORDS
from server.ports import Clock
from server.records import ledger_of
from server.retention import PurgeReport, Retention


@dataclass(frozen=True, slots=True)
class Count:
    """How many records of ``event`` (naming ``data_item``; "" counts all of the event)."""

    event: str
    data_item: str
    count: int


def event_counts(
    session: Session, ledger: str, start_us: int | None, end_us: int | None
) -> list[tuple[str, str, int]]:
    """(event, joined data items, count) of a ledger's records in [start, end) (None: open)."""
    c = RECORDS.c
    statement = select(c.event, c.data_items, func.count()).where(c.ledger == ledger)
    if start_us is not None:
        statement = statement.where(c.occurred_at_us >= start_us)
    if end_us is not None:
        statement = statement.where(c.occurred_at_us < end_us)
    statement = statement.group_by(c.event, c.data_items)
    return [(str(e), str(items), int(n)) for e, items, n in session.execute(statement)]


def tally(groups: list[tuple[str, str, int]]) -> list[Count]:
    """Per event a total (data item "") and a count per data item, sorted."""
    totals: Counter[str] = Counter()
    per_item: Counter[tuple[str, str]] = Counter()
    for event, joined, count in groups:
        totals[event] += count
        for item in joined.split(DATA_ITEM_SEPARATOR) if joined else ():
            per_item[(event, item)] += count
    rows = [Count(event, "", count) for event, count in totals.items()]
    rows += [Count(event, item, count) for (event, item), count in per_item.items()]
    return sorted(rows, key=lambda row: (row.event, row.data_item))


class SystemManagement:
    """Statistics and purges for the administrators of a platform's tenants."""

    def __init__(self, sessions: sessionmaker[Session], retention: Retention, clock: Clock) -> None:
        self._sessions = sessions
        self._retention = retention
        self._clock = clock

    async def statistics(
        self, tenant: str, start: datetime | None, end: datetime | None
    ) -> list[Count]:
        """Counts in [start, end) (start None: from the beginning; end None: up to now,
        everything recorded so far included)."""
        if start is not None and start >= (end if end is not None else self._clock()):
            raise InvalidArgument(
                "INVALID_PERIOD",
                "start_time must be before end_time",
                violations=(FieldViolation("start_time", "not before the end of the period"),),
            )
        start_us = None if start is None else to_micros(start)
        end_us = None if end is None else to_micros(end)
        return await asyncio.to_thread(self._statistics, tenant, start_us, end_us)

    def _statistics(self, tenant: str, start_us: int | None, end_us: int | None) -> list[Count]:
        with unit_of_work(self._sessions) as session:
            return tally(event_counts(session, ledger_of(tenant), start_us, end_us))

    async def purge_expired(self, tenant: str) -> PurgeReport:
        """Purge the tenant's expired data now."""
        return await asyncio.to_thread(self._retention.purge_expired, self._clock(), tenant)
