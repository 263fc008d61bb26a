"""Repository of the unified address server: the queries and writes on ``ua_*`` tables.

Owns every SQL statement of the server, phrased as domain operations over a ``Session`` the
caller's unit of work controls (it never commits). Lookups take batches, because bulk
registration of a whole municipality must cost a few statements per thousand people, not per
person.

Must never: commit or roll back, decrypt a token, or see an individual number in clear (it is
given sealed tokens and blind indexes only).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from linkage import sqlfast
from unified_address.models import (
    CodeState,
    LinkChange,
    Person,
    PersonLink,
    RelayedQuery,
    UTCDateTime,
)

# Where a page of a staff list ends: the sort key of its last row (the next page starts after).
FailurePosition = tuple[datetime, str]  # (code_requested_at, or NEVER if none; unified_number)
NEVER = datetime(1970, 1, 1, tzinfo=UTC)
WaitingPosition = tuple[datetime, str, str]  # (registered_at, system, address_number)


def failure_position(person: Person) -> FailurePosition:
    """``person``'s place in ``Repository.failures``' order (the key its keyset compares)."""
    return person.code_requested_at or NEVER, person.unified_number


def waiting_position(link: PersonLink) -> WaitingPosition:
    """``link``'s place in ``Repository.waiting_links``' order."""
    return link.registered_at, link.system, link.address_number


__all__ = ["Repository"]

# Keep IN lists well below SQLite's variable limit and PostgreSQL's comfortable range.
_CHUNK = 500
_T = TypeVar("_T")


def _table(mapped: type[Person | PersonLink | RelayedQuery]) -> Table:
    table = mapped.__table__
    assert isinstance(table, Table)
    return table


# Core tables, for executemany writes and lean reads the ORM would do object by object.
_PERSONS = _table(Person)
_LINKS = _table(PersonLink)
_QUERIES = _table(RelayedQuery)

# What a query needs to know of its subject: unified number (None: awaits a manual link) and
# the person's linkage-code state (None: no such person row).
Subject = tuple[str | None, CodeState | None]
# A relayed query: query id, unified number, procedure, provider, data items.
RelayedRow = tuple[str, str, str, str, tuple[str, ...]]


def _chunks(values: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


class Repository:
    """Persons, address links, link history and relayed queries in one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # --- persons ---------------------------------------------------------------------------

    def person(self, unified_number: str) -> Person | None:
        return self.session.get(Person, unified_number)

    def persons(self, unified_numbers: Collection[str]) -> dict[str, Person]:
        found: dict[str, Person] = {}
        for chunk in _chunks(sorted(unified_numbers)):
            rows = self.session.scalars(select(Person).where(Person.unified_number.in_(chunk)))
            found.update((p.unified_number, p) for p in rows)
        return found

    def persons_by_index(self, indexes: Collection[bytes]) -> dict[bytes, Person]:
        """Persons holding these blind indexes of individual numbers."""
        found: dict[bytes, Person] = {}
        for chunk in _chunks(sorted(indexes)):
            stmt = select(Person).where(Person.individual_number_index.in_(chunk))
            for person in self.session.scalars(stmt):
                assert person.individual_number_index is not None
                found[person.individual_number_index] = person
        return found

    def existing_unified_numbers(self, candidates: Collection[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(sorted(candidates)):
            stmt = select(Person.unified_number).where(Person.unified_number.in_(chunk))
            found.update(self.session.scalars(stmt))
        return found

    def add(self, row: Person | PersonLink | LinkChange | RelayedQuery) -> None:
        self.session.add(row)

    def add_all(self, rows: Iterable[Person | PersonLink | LinkChange | RelayedQuery]) -> None:
        self.session.add_all(rows)

    def delete_person(self, person: Person) -> None:
        self.session.delete(person)

    def flush(self) -> None:
        self.session.flush()

    # --- linkage-code state ----------------------------------------------------------------

    def claim_code_requests(
        self, unified_numbers: Collection[str], now: datetime, stale_before: datetime
    ) -> list[tuple[str, bytes]]:
        """Mark these persons PENDING if still retryable; the (unified number, sealed number)
        of each one claimed. A replica that claimed one a moment ago keeps it."""
        claimed: list[tuple[str, bytes]] = []
        for chunk in _chunks(sorted(unified_numbers)):
            stmt = (
                update(Person)
                .where(Person.unified_number.in_(chunk), *_retryable(stale_before))
                .values(code_state=CodeState.PENDING, code_requested_at=now)
                .returning(Person.unified_number, Person.individual_number_token)
                .execution_options(synchronize_session=False)
            )
            for unified_number, token in self.session.execute(stmt):
                if token is not None:
                    claimed.append((unified_number, token))
        return claimed

    def retry_candidates(self, limit: int, stale_before: datetime) -> list[str]:
        """Persons whose code request failed, or was left in flight before ``stale_before``
        (a crash between the request and its result), oldest first."""
        stmt = (
            select(Person.unified_number)
            .where(*_retryable(stale_before))
            .order_by(Person.code_requested_at, Person.unified_number)
            .limit(limit)
        )
        return list(self.session.scalars(stmt))

    def record_code_results(
        self, outcomes: Sequence[tuple[str, CodeState, str]], now: datetime
    ) -> None:
        """Store (unified number, ACQUIRED or FAILED, reason) outcomes: one executemany per
        state, since a statement per person dominated bulk registration."""
        for state in (CodeState.ACQUIRED, CodeState.FAILED):
            rows = [{"b_number": n, "b_reason": r} for n, s, r in outcomes if s is state]
            if not rows:
                continue
            values: dict[str, object] = {
                "code_state": state,
                "code_failure_reason": bindparam("b_reason"),
                "code_attempts": _PERSONS.c.code_attempts + 1,
            }
            if state is CodeState.ACQUIRED:
                values["code_acquired_at"] = now
            stmt = (
                update(_PERSONS)
                .where(_PERSONS.c.unified_number == bindparam("b_number"))
                .values(values)
            )
            self.session.execute(stmt, rows)

    def failures(self, limit: int, after: FailurePosition | None = None) -> list[Person]:
        """Persons whose code request failed, oldest request first, after a keyset position."""
        # A failed request always has its time; coalesce keeps a row without one in the same
        # place on SQLite and PostgreSQL (which sort NULL at opposite ends) and in the keyset.
        requested = func.coalesce(Person.code_requested_at, literal(NEVER, UTCDateTime()))
        stmt = select(Person).where(
            Person.code_state == CodeState.FAILED, Person.merged_into.is_(None)
        )
        if after is not None:
            stmt = stmt.where(tuple_(requested, Person.unified_number) > tuple_(*after))
        stmt = stmt.order_by(requested, Person.unified_number).limit(limit)
        return list(self.session.scalars(stmt))

    # --- address links ---------------------------------------------------------------------

    def link(self, system: str, address_number: str) -> PersonLink | None:
        return self.session.get(PersonLink, (system, address_number))

    def links(self, system: str, address_numbers: Collection[str]) -> dict[str, PersonLink]:
        found: dict[str, PersonLink] = {}
        for chunk in _chunks(sorted(address_numbers)):
            stmt = select(PersonLink).where(
                PersonLink.system == system, PersonLink.address_number.in_(chunk)
            )
            found.update((link.address_number, link) for link in self.session.scalars(stmt))
        return found

    def subjects(self, system: str, address_numbers: Collection[str]) -> dict[str, Subject]:
        """Each known address number's (unified number, code state): two driver-level reads
        (links, then their persons' states), as every query, single or in a batch, asks."""
        links = sqlfast.select_in(
            self.session,
            _LINKS,
            ("address_number", "unified_number"),
            (("system", system),),
            "address_number",
            sorted(address_numbers),
        )
        linked = sorted({number for _, number in links if number is not None})
        states: dict[str, str] = {}
        if linked:
            columns = ("unified_number", "code_state")
            read = sqlfast.select_in(self.session, _PERSONS, columns, (), "unified_number", linked)
            states.update(read)
        found: dict[str, Subject] = {}
        for address_number, unified_number in links:
            state = None if unified_number is None else states.get(unified_number)
            found[address_number] = (unified_number, None if state is None else CodeState(state))
        return found

    def links_of(self, unified_number: str) -> list[PersonLink]:
        stmt = (
            select(PersonLink)
            .where(PersonLink.unified_number == unified_number)
            .order_by(PersonLink.system, PersonLink.address_number)
        )
        return list(self.session.scalars(stmt))

    def waiting_links(self, limit: int, after: WaitingPosition | None = None) -> list[PersonLink]:
        """Address numbers waiting for a manual link, oldest first, after a keyset position."""
        key = tuple_(PersonLink.registered_at, PersonLink.system, PersonLink.address_number)
        stmt = select(PersonLink).where(PersonLink.unified_number.is_(None))
        if after is not None:
            stmt = stmt.where(key > tuple_(*after))
        stmt = stmt.order_by(PersonLink.registered_at, PersonLink.system, PersonLink.address_number)
        return list(self.session.scalars(stmt.limit(limit)))

    # --- link history ----------------------------------------------------------------------

    def change(self, change_id: int) -> LinkChange | None:
        return self.session.get(LinkChange, change_id)

    def changes_of(self, unified_number: str) -> list[LinkChange]:
        stmt = (
            select(LinkChange)
            .where(
                or_(
                    LinkChange.unified_number == unified_number,
                    LinkChange.other_unified_number == unified_number,
                )
            )
            .order_by(LinkChange.id)
        )
        return list(self.session.scalars(stmt))

    # --- relayed queries -------------------------------------------------------------------

    def relayed_query(self, system: str, query_id: str) -> RelayedQuery | None:
        return self.session.get(RelayedQuery, (system, query_id))

    def relayed_query_ids(self, system: str, query_ids: Collection[str]) -> set[str]:
        """Which of these query ids of ``system`` are already relayed."""
        where = (("system", system),)
        ids = sorted(query_ids)
        rows = sqlfast.select_in(self.session, _QUERIES, ("query_id",), where, "query_id", ids)
        return {query_id for (query_id,) in rows}

    def add_relayed_queries(
        self, system: str, submitted_at: datetime, rows: Sequence[RelayedRow]
    ) -> None:
        """Insert relayed queries of ``system`` submitted at one moment, in one executemany
        through the driver: the batch path writes thousands per second, and ORM objects or
        SQLAlchemy's per-row parameter processing cost more than the insert itself. Values are
        converted to their stored form once per distinct value (data items as the JSON text
        SQLAlchemy's default serializer writes, which both backends cast to JSON)."""
        if not rows:
            return
        connection = sqlfast.connection(self.session)
        dialect = connection.dialect
        stamp = sqlfast.bind_processor(_QUERIES, "submitted_at", dialect)
        at = submitted_at if stamp is None else stamp(submitted_at)
        items: dict[tuple[str, ...], str] = {}
        params = []
        for query_id, unified_number, procedure, provider, data_items in rows:
            stored = items.get(data_items)
            if stored is None:
                stored = items[data_items] = json.dumps(list(data_items))
            params.append((system, query_id, unified_number, procedure, provider, stored, at))
        sql, positions = sqlfast.compiled_insert(_QUERIES, _RELAYED_COLUMNS, dialect)
        connection.exec_driver_sql(sql, sqlfast.driver_rows(_RELAYED_COLUMNS, positions, params))


_RELAYED_COLUMNS = (
    "system",
    "query_id",
    "unified_number",
    "procedure",
    "provider",
    "data_items",
    "submitted_at",
)


def _retryable(stale_before: datetime) -> tuple[ColumnElement[bool], ...]:
    """Active persons with a number whose request failed or was abandoned in flight."""
    return (
        Person.merged_into.is_(None),
        Person.individual_number_index.is_not(None),
        or_(
            Person.code_state == CodeState.FAILED,
            and_(Person.code_state == CodeState.PENDING, Person.code_requested_at < stale_before),
        ),
    )
