"""Name matching (名寄せ): one unified number per person across business systems.

Owns the automatic rule: an address number (宛名番号) registered with an individual number is
linked to the person holding that number (found by blind index), or to a new person with a
fresh random 15-digit unified number; one registered without a number waits for a staff member
(``unified_address.staff``). It works on a batch of rows with a constant number of statements,
so registering a whole municipality costs a few statements per thousand people.

Must never: link an address number that is already linked to someone else (a conflict is
reported, not resolved), keep an individual number anywhere but sealed in the person's row, or
talk to another system (code requests follow in ``unified_address.codes``, after the commit).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from unified_address.models import CodeState, Person, PersonLink
from unified_address.repository import Repository
from unified_address.vault import NumberVault

__all__ = [
    "ADDRESS_NUMBER_LINKED_ELSEWHERE",
    "MatchKind",
    "MatchResult",
    "Registration",
    "match",
    "new_unified_number",
]

ADDRESS_NUMBER_LINKED_ELSEWHERE = "ADDRESS_NUMBER_LINKED_ELSEWHERE"
AUTOMATIC = "individual_number"
_FIRST_15_DIGIT = 10**14


def new_unified_number() -> str:
    """A random 15-digit unified number (no leading zero). Unguessable, so a number seen in
    one place says nothing about who else exists; uniqueness is the primary key's job."""
    return str(_FIRST_15_DIGIT + secrets.randbelow(9 * _FIRST_15_DIGIT))


@dataclass(frozen=True, slots=True)
class Registration:
    """One row from a business system: an address number and, if it has one, the individual
    number (already validated: ``vault.parse_individual_number``)."""

    address_number: str
    individual_number: str = ""

    def __repr__(self) -> str:  # the default repr would print the number
        return f"Registration(address_number={self.address_number!r})"


class MatchKind(StrEnum):
    """What matching did with one row."""

    NEW = "NEW"  # a new person was created
    MATCHED = "MATCHED"  # linked to the person already holding the individual number
    ATTACHED = "ATTACHED"  # the number was added to the (manually linked) person
    EXISTING = "EXISTING"  # already linked: nothing changed
    WAITING = "WAITING"  # no number: waits for a manual link
    CONFLICT = "CONFLICT"  # the address number is linked to someone else


@dataclass(frozen=True, slots=True)
class MatchResult:
    """The outcome for one row; ``needs_code`` when a linkage-code request must follow."""

    address_number: str
    kind: MatchKind
    unified_number: str = ""
    code_state: CodeState = CodeState.NOT_REQUESTED
    code_failure_reason: str = ""

    @property
    def needs_code(self) -> bool:
        return self.kind in (MatchKind.NEW, MatchKind.ATTACHED)


class _Batch:
    """Matching state of one batch: what is stored, plus what this batch has added."""

    def __init__(
        self, repo: Repository, vault: NumberVault, system: str, rows: Sequence[Registration]
    ) -> None:
        self.repo, self.vault, self.system = repo, vault, system
        self.links = repo.links(system, {row.address_number for row in rows})
        self.index_of = {
            row.individual_number: vault.index(row.individual_number)
            for row in rows
            if row.individual_number
        }
        self.by_index = repo.persons_by_index(set(self.index_of.values()))
        self.by_number = repo.persons(
            {link.unified_number for link in self.links.values() if link.unified_number}
        )
        self.by_number.update((p.unified_number, p) for p in self.by_index.values())


def match(
    repo: Repository,
    vault: NumberVault,
    system: str,
    rows: Sequence[Registration],
    now: datetime,
) -> list[MatchResult]:
    """Link each row's address number in ``system``; one result per row, in order.

    New persons and attached numbers are left in state PENDING: the caller requests their codes
    right after committing (a crash in between leaves them PENDING, which the retry picks up).
    """
    batch = _Batch(repo, vault, system, rows)
    results = [_match_one(batch, row, now) for row in rows]
    repo.flush()
    return results


def _match_one(batch: _Batch, row: Registration, now: datetime) -> MatchResult:
    link = batch.links.get(row.address_number)
    if not row.individual_number:
        if link is None:
            link = _add_link(batch, row.address_number, None, now)
        if link.unified_number is None:
            return MatchResult(row.address_number, MatchKind.WAITING)
        return _result(row, MatchKind.EXISTING, batch.by_number[link.unified_number])
    index = batch.index_of[row.individual_number]
    holder = batch.by_index.get(index)
    if link is not None and link.unified_number is not None:
        return _match_linked(batch, row, link.unified_number, holder, index, now)
    kind = MatchKind.MATCHED
    if holder is None:
        holder = _add_person(batch, row.individual_number, index, now)
        kind = MatchKind.NEW
    if link is None:
        _add_link(batch, row.address_number, holder.unified_number, now)
    else:  # it was waiting for a manual link: the number settles it
        link.unified_number, link.linked_by, link.linked_at = holder.unified_number, AUTOMATIC, now
    return _result(row, kind, holder)


def _match_linked(
    batch: _Batch,
    row: Registration,
    linked_to: str,
    holder: Person | None,
    index: bytes,
    now: datetime,
) -> MatchResult:
    """A row whose address number is already linked: the same person, or a conflict."""
    person = batch.by_number[linked_to]
    if holder is not None:
        kind = MatchKind.EXISTING if holder.unified_number == linked_to else MatchKind.CONFLICT
        return _result(row, kind, person)
    if person.has_individual_number:  # linked to a person holding a different number
        return _result(row, MatchKind.CONFLICT, person)
    # Linked by hand before the number was known: the person now gets it.
    person.individual_number_token = batch.vault.seal(linked_to, row.individual_number)
    person.individual_number_index = index
    person.code_state = CodeState.PENDING
    person.code_requested_at = now
    batch.by_index[index] = person
    return _result(row, MatchKind.ATTACHED, person)


def _result(row: Registration, kind: MatchKind, person: Person) -> MatchResult:
    if kind is MatchKind.CONFLICT:  # never reveal who holds the address number
        return MatchResult(row.address_number, kind)
    return MatchResult(
        row.address_number,
        kind,
        person.unified_number,
        CodeState(person.code_state),
        person.code_failure_reason,
    )


def _add_person(batch: _Batch, individual_number: str, index: bytes, now: datetime) -> Person:
    unified_number = new_unified_number()
    person = Person(
        unified_number=unified_number,
        individual_number_token=batch.vault.seal(unified_number, individual_number),
        individual_number_index=index,
        code_state=CodeState.PENDING,
        code_failure_reason="",
        code_attempts=0,
        code_requested_at=now,
        created_at=now,
    )
    batch.repo.add(person)
    batch.by_index[index] = person
    batch.by_number[unified_number] = person
    return person


def _add_link(
    batch: _Batch, address_number: str, unified_number: str | None, now: datetime
) -> PersonLink:
    link = PersonLink(
        system=batch.system,
        address_number=address_number,
        unified_number=unified_number,
        linked_by=AUTOMATIC if unified_number else "",
        registered_at=now,
        linked_at=now if unified_number else None,
    )
    batch.repo.add(link)
    batch.links[address_number] = link
    return link
