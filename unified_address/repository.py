"""Repository of the unified address server: the queries and writes on ``ua_*`` tables.

Owns every SQL statement of the server, phrased as domain operations over a ``Session`` the
caller's unit of work controls (it never commits). Lookups take batches, because bulk
registration of a whole municipality must cost a few statements per thousand people, not per
person.

Must never: commit or roll back, decrypt a token, or see an individual number in clear (it is
given sealed tokens and blind indexes only).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import ColumnElement, Table, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from unified_address.models import CodeState, LinkChange, Person, PersonLink, RelayedQuery

__all__ = ["Repository"]

# Keep IN lists well below SQLite's variable limit and PostgreSQL's comfortable range.
_CHUNK = 500
_T = TypeVar("_T")


def _table(mapped: type[Person]) -> Table:
    table = mapped.__table__
    assert isinstance(table, Table)
    return table


# Core table of persons, for executemany updates the ORM would issue one by one.
_PERSONS = _table(Person)


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

    def failures(self, limit: int) -> list[Person]:
        stmt = (
            select(Person)
            .where(Person.code_state == CodeState.FAILED, Person.merged_into.is_(None))
            .order_by(Person.code_requested_at, Person.unified_number)
            .limit(limit)
        )
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

    def links_of(self, unified_number: str) -> list[PersonLink]:
        stmt = (
            select(PersonLink)
            .where(PersonLink.unified_number == unified_number)
            .order_by(PersonLink.system, PersonLink.address_number)
        )
        return list(self.session.scalars(stmt))

    def waiting_links(self, limit: int) -> list[PersonLink]:
        """Address numbers waiting for a manual link, oldest first."""
        stmt = (
            select(PersonLink)
            .where(PersonLink.unified_number.is_(None))
            .order_by(PersonLink.registered_at, PersonLink.system, PersonLink.address_number)
            .limit(limit)
        )
        return list(self.session.scalars(stmt))

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
