"""Staff operations on name matching (名寄せ): search, manual link, merge, split, undo.

Owns what a staff member may do by hand, each in the caller's transaction, each written to the
link history (``ua_link_changes``) with what it moved so it can be undone exactly, and each
recorded in the ledger (STAFF_OPERATION, once per person touched) under the staff id:

* ``link_manually``: an address number that waits (registered without an individual number)
  is linked, after review, to an existing person or to a new one;
* ``merge(keep, absorb)``: two unified numbers found to be one person become ``keep``;
* ``split``: some address links of a person move to a new unified number;
* ``undo``: the reversal of one of those, refused when later changes depend on it.

Two surfaces call these, each naming the staff member the ``Desk`` records under: staff at
their consoles through ``UnifiedAddressStaffService`` (``unified_address.staff_servicer``;
sign-in, sessions and the VIEWER/OPERATOR role check in ``unified_address.staff_accounts``, which
runs each operation in one transaction with the session check), and the operator's CLI
(``unified_address.cli``) on the database.

Must never: show an individual number (views say only whether one is held), merge two people
holding different individual numbers, move a number between people, or change a link without
a history row and an access record.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from linkage.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from unified_address.audit import Audit
from unified_address.matching import new_unified_number
from unified_address.models import CodeState, LinkChange, LinkOperation, Person, PersonLink
from unified_address.repository import (
    FailurePosition,
    Repository,
    WaitingPosition,
    failure_position,
    waiting_position,
)
from unified_address.vault import NumberVault, parse_individual_number

__all__ = [
    "Desk",
    "LinkView",
    "Page",
    "PersonView",
    "failures",
    "link_manually",
    "merge",
    "search",
    "split",
    "undo",
    "waiting",
]

_Item = TypeVar("_Item")
_Row = TypeVar("_Row")
_Position = TypeVar("_Position")

_STAFF_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class Desk:
    """One staff member at work: the session's repository, the ledger, the time."""

    repo: Repository
    audit: Audit
    staff_id: str
    now: datetime

    def __post_init__(self) -> None:
        if not _STAFF_ID.fullmatch(self.staff_id):
            raise InvalidArgument(
                "INVALID_STAFF_ID",
                "a staff id is 1-64 of a-z, 0-9, '.', '_', '-'",
                violations=(FieldViolation("staff_id", "not a valid staff id"),),
            )

    def record(self, operation: str, subjects: Iterable[str]) -> None:
        self.audit.staff_operation(self.repo.session, self.staff_id, operation, subjects)


@dataclass(frozen=True, slots=True)
class PersonView:
    """A person as staff see them: never the individual number, only whether one is held."""

    unified_number: str
    has_individual_number: bool
    code_state: CodeState
    code_failure_reason: str
    merged_into: str | None
    links: tuple[tuple[str, str], ...]
    history: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Page(Generic[_Item, _Position]):
    """One page of a staff list, oldest first, and the position the next page starts after
    (None: this page is the last)."""

    items: list[_Item]
    next_after: _Position | None


@dataclass(frozen=True, slots=True)
class LinkView:
    """An address link waiting for review."""

    system: str
    address_number: str
    registered_at: datetime


# --- reading -------------------------------------------------------------------------------


def search(
    desk: Desk,
    vault: NumberVault,
    *,
    unified_number: str = "",
    system: str = "",
    address_number: str = "",
    individual_number: str = "",
) -> list[PersonView]:
    """Find a person by unified number, by a system's address number, or by individual number
    (compared by blind index). Every person shown is recorded as seen by this staff member."""
    people: list[Person] = []
    if unified_number:
        people += [p for p in [desk.repo.person(unified_number)] if p is not None]
    if system and address_number:
        link = desk.repo.link(system, address_number)
        if link is not None and link.unified_number is not None:
            people += [p for p in [desk.repo.person(link.unified_number)] if p is not None]
    if individual_number:
        index = vault.index(parse_individual_number(individual_number))
        people += desk.repo.persons_by_index({index}).values()
    unique = {person.unified_number: person for person in people}
    desk.record("SEARCH", unique)
    return [_view(desk.repo, person, with_history=True) for person in unique.values()]


def failures(
    desk: Desk, limit: int = 100, after: FailurePosition | None = None
) -> Page[PersonView, FailurePosition]:
    """Persons whose linkage-code request failed, oldest first, from after ``after``; only the
    page's people are recorded as seen."""
    people, next_after = _page(desk.repo.failures(limit + 1, after), limit, failure_position)
    desk.record("LIST_FAILURES", (p.unified_number for p in people))
    return Page([_view(desk.repo, person) for person in people], next_after)


def waiting(
    desk: Desk, limit: int = 100, after: WaitingPosition | None = None
) -> Page[LinkView, WaitingPosition]:
    """Address numbers waiting for a manual link, oldest first, from after ``after``."""
    links, next_after = _page(desk.repo.waiting_links(limit + 1, after), limit, waiting_position)
    desk.record("LIST_WAITING", ())
    views = [LinkView(link.system, link.address_number, link.registered_at) for link in links]
    return Page(views, next_after)


def _page(
    rows: list[_Row], limit: int, position: Callable[[_Row], _Position]
) -> tuple[list[_Row], _Position | None]:
    """The first ``limit`` of ``rows`` (read with one more, which tells whether a next page
    exists) and the position the next page starts after (None: none)."""
    page = rows[:limit]
    return page, position(page[-1]) if page and len(rows) > limit else None


def _view(repo: Repository, person: Person, *, with_history: bool = False) -> PersonView:
    history = (
        tuple(_describe(change) for change in repo.changes_of(person.unified_number))
        if with_history
        else ()
    )
    return PersonView(
        unified_number=person.unified_number,
        has_individual_number=person.has_individual_number,
        code_state=CodeState(person.code_state),
        code_failure_reason=person.code_failure_reason,
        merged_into=person.merged_into,
        links=tuple((k.system, k.address_number) for k in repo.links_of(person.unified_number)),
        history=history,
    )


def _describe(change: LinkChange) -> str:
    undone = f" (undone by #{change.undone_by})" if change.undone_by else ""
    other = f" {change.other_unified_number}" if change.other_unified_number else ""
    return (
        f"#{change.id} {change.occurred_at:%Y-%m-%dT%H:%M:%SZ} {change.operation} "
        f"{change.unified_number}{other} by {change.staff_id}{undone}"
    )


# --- changing ------------------------------------------------------------------------------


def link_manually(
    desk: Desk,
    system: str,
    address_number: str,
    unified_number: str = "",
    *,
    note: str = "",
) -> tuple[int, str]:
    """Link a waiting address number to ``unified_number``, or to a new person when empty.

    Returns (change id, unified number). FAILED_PRECONDITION if it is already linked (split
    it off instead), NOT_FOUND for an unknown address number or person.
    """
    link = desk.repo.link(system, address_number)
    if link is None:
        raise NotFound("ADDRESS_NUMBER_NOT_FOUND", "no such address number in that system")
    if link.unified_number is not None:
        raise FailedPrecondition("ALREADY_LINKED", "the address number is already linked")
    created = not unified_number
    if created:
        person = _new_person(desk)
    else:
        person = _active_person(desk.repo, unified_number, "unified_number")
    _move([link], person.unified_number, f"staff:{desk.staff_id}", desk.now)
    change = _history(
        desk, LinkOperation.LINK, person.unified_number, None, [link], note, created=created
    )
    desk.record("MANUAL_LINK", [person.unified_number])
    return change.id, person.unified_number


def merge(desk: Desk, keep: str, absorb: str, *, note: str = "") -> int:
    """Fold ``absorb`` into ``keep`` (one person found under two unified numbers).

    Every address link of ``absorb`` moves to ``keep``; ``absorb`` stays, marked merged, so the
    merge can be undone. Refused when both hold individual numbers (they are two people), and
    when only ``absorb`` holds one (merge the other way: numbers never move between people).
    """
    if keep == absorb:
        raise InvalidArgument(
            "SAME_PERSON",
            "cannot merge a person into itself",
            violations=(FieldViolation("absorb", "equals keep"),),
        )
    survivor = _active_person(desk.repo, keep, "keep")
    absorbed = _active_person(desk.repo, absorb, "absorb")
    if survivor.has_individual_number and absorbed.has_individual_number:
        raise FailedPrecondition(
            "DIFFERENT_INDIVIDUAL_NUMBERS", "both hold individual numbers: they are two people"
        )
    if absorbed.has_individual_number:
        raise FailedPrecondition(
            "MERGE_INTO_NUMBER_HOLDER",
            "only the absorbed person holds an individual number: swap keep and absorb",
        )
    links = desk.repo.links_of(absorb)
    _move(links, keep, f"staff:{desk.staff_id}", desk.now)
    absorbed.merged_into = keep
    change = _history(desk, LinkOperation.MERGE, keep, absorb, links, note)
    desk.record("MERGE", [keep, absorb])
    return change.id


def split(
    desk: Desk,
    unified_number: str,
    links: Sequence[tuple[str, str]],
    *,
    note: str = "",
) -> tuple[int, str]:
    """Move the given (system, address number) links of a person to a new unified number.

    The original keeps its individual number and linkage code; the new person has neither
    until a system registers one of its address numbers with a number. Returns (change id,
    new unified number).
    """
    if not links:
        raise InvalidArgument(
            "NO_LINKS", "name at least one link to split off",
            violations=(FieldViolation("links", "empty"),),
        )  # fmt: skip
    _active_person(desk.repo, unified_number, "unified_number")
    current = {(k.system, k.address_number): k for k in desk.repo.links_of(unified_number)}
    missing = [f"{s}:{a}" for s, a in links if (s, a) not in current]
    if missing:
        raise FailedPrecondition(
            "NOT_LINKED_HERE", f"not linked to this person: {', '.join(missing)}"
        )
    moving = [current[key] for key in dict.fromkeys(links)]
    new = _new_person(desk)
    _move(moving, new.unified_number, f"staff:{desk.staff_id}", desk.now)
    change = _history(
        desk, LinkOperation.SPLIT, unified_number, new.unified_number, moving, note, created=True
    )
    desk.record("SPLIT", [unified_number, new.unified_number])
    return change.id, new.unified_number


def undo(desk: Desk, change_id: int, *, note: str = "") -> int:
    """Reverse change ``change_id`` exactly; returns the id of the UNDO change.

    Refused (UNDO_CONFLICT) when a later change that is still in force touches the same
    people, or the links are no longer where the change put them: undo the later one first.
    """
    change = desk.repo.change(change_id)
    if change is None:
        raise NotFound("CHANGE_NOT_FOUND", f"no link change #{change_id}")
    if change.operation == LinkOperation.UNDO:
        raise FailedPrecondition("CANNOT_UNDO_UNDO", "redo the change instead of undoing an undo")
    if change.undone_by is not None:
        raise FailedPrecondition("ALREADY_UNDONE", f"change #{change_id} was undone already")
    _check_latest(desk.repo, change)
    reverse = _REVERSALS[LinkOperation(change.operation)]
    subjects = reverse(desk, change)
    undo_change = _history(
        desk,
        LinkOperation.UNDO,
        change.unified_number,
        change.other_unified_number,
        [],
        note or f"undo #{change.id}",
    )
    undo_change.moved_links = list(change.moved_links)
    undo_change.undoes = change.id
    desk.repo.flush()
    change.undone_by = undo_change.id
    desk.record(f"UNDO_{change.operation}", subjects)
    return undo_change.id


def _check_latest(repo: Repository, change: LinkChange) -> None:
    involved = {change.unified_number, change.other_unified_number} - {None}
    for number in involved:
        assert number is not None
        for later in repo.changes_of(number):
            in_force = later.undone_by is None and later.operation != LinkOperation.UNDO
            if later.id > change.id and in_force:
                raise FailedPrecondition(
                    "UNDO_CONFLICT", f"change #{later.id} depends on it: undo that first"
                )


def _undo_link(desk: Desk, change: LinkChange) -> list[str]:
    links = _links_at(desk.repo, change, change.unified_number)
    for link in links:
        link.unified_number, link.linked_by, link.linked_at = None, "", None
    if change.created_person:
        _retire_created(desk.repo, change.unified_number)
    return [change.unified_number]


def _undo_merge(desk: Desk, change: LinkChange) -> list[str]:
    assert change.other_unified_number is not None
    absorbed = desk.repo.person(change.other_unified_number)
    if absorbed is None or absorbed.merged_into != change.unified_number:
        raise FailedPrecondition("UNDO_CONFLICT", "the absorbed person is no longer merged")
    links = _links_at(desk.repo, change, change.unified_number)
    _move(links, absorbed.unified_number, f"staff:{desk.staff_id}", desk.now)
    absorbed.merged_into = None
    return [change.unified_number, absorbed.unified_number]


def _undo_split(desk: Desk, change: LinkChange) -> list[str]:
    assert change.other_unified_number is not None
    links = _links_at(desk.repo, change, change.other_unified_number)
    _move(links, change.unified_number, f"staff:{desk.staff_id}", desk.now)
    _retire_created(desk.repo, change.other_unified_number)
    return [change.unified_number, change.other_unified_number]


_REVERSALS = {
    LinkOperation.LINK: _undo_link,
    LinkOperation.MERGE: _undo_merge,
    LinkOperation.SPLIT: _undo_split,
}


def _links_at(repo: Repository, change: LinkChange, expected: str) -> list[PersonLink]:
    """The links the change moved, each checked to be still linked to ``expected``."""
    links = []
    for system, address_number in change.moved_links:
        link = repo.link(system, address_number)
        if link is None or link.unified_number != expected:
            raise FailedPrecondition(
                "UNDO_CONFLICT", f"{system}:{address_number} is no longer where #{change.id} put it"
            )
        links.append(link)
    return links


def _retire_created(repo: Repository, unified_number: str) -> None:
    """Remove a person a change created, once nothing refers to it any more."""
    person = repo.person(unified_number)
    if person is None:
        return
    if person.has_individual_number:
        # A system registered a number for it since: it is a person in its own right now.
        raise FailedPrecondition(
            "UNDO_CONFLICT", "the person created by this change holds an individual number now"
        )
    repo.flush()  # the moved links must be written before checking none is left
    if not repo.links_of(unified_number):
        repo.delete_person(person)


# --- helpers -------------------------------------------------------------------------------


def _active_person(repo: Repository, unified_number: str, field: str) -> Person:
    person = repo.person(unified_number)
    if person is None:
        raise NotFound(
            "UNIFIED_NUMBER_NOT_FOUND",
            f"no person with that {field}",
            violations=(FieldViolation(field, "unknown unified number"),),
        )
    if not person.active:
        raise FailedPrecondition(
            "PERSON_MERGED",
            f"that {field} was merged into {person.merged_into}",
            violations=(FieldViolation(field, "merged into another person"),),
        )
    return person


def _new_person(desk: Desk) -> Person:
    person = Person(
        unified_number=new_unified_number(),
        individual_number_token=None,
        individual_number_index=None,
        code_state=CodeState.NOT_REQUESTED,
        code_failure_reason="",
        code_attempts=0,
        created_at=desk.now,
    )
    desk.repo.add(person)
    desk.repo.flush()  # the links about to point at it need the row
    return person


def _move(links: Iterable[PersonLink], unified_number: str, by: str, now: datetime) -> None:
    for link in links:
        link.unified_number, link.linked_by, link.linked_at = unified_number, by, now


def _history(
    desk: Desk,
    operation: LinkOperation,
    unified_number: str,
    other: str | None,
    links: Iterable[PersonLink],
    note: str,
    *,
    created: bool = False,
) -> LinkChange:
    change = LinkChange(
        operation=operation,
        staff_id=desk.staff_id,
        occurred_at=desk.now,
        unified_number=unified_number,
        other_unified_number=other,
        moved_links=[[link.system, link.address_number] for link in links],
        created_person=created,
        note=note[:400],
    )
    desk.repo.add(change)
    desk.repo.flush()  # assigns the id the caller returns
    return change
