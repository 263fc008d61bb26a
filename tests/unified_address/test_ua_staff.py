"""Staff operations on name matching: manual link, merge, split, undo, and the CLI over them."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import update
from ua_support import ORG, individual_numbers, read_records

from linkage.db import make_engine, session_factory, unit_of_work
from linkage.errors import FailedPrecondition, InvalidArgument, LinkageError, NotFound
from unified_address import cli, staff
from unified_address.app import open_keys
from unified_address.matching import MatchResult, Registration, match
from unified_address.models import CodeState, LinkChange, Person
from unified_address.repository import Repository

T = TypeVar("T")


class Office:
    """The unified address database with staff desks on it, no servers (domain level)."""

    def __init__(self, database_url: str, data_dir: Path) -> None:
        self.database_url = database_url
        self.data_dir = data_dir
        self.vault, self.audit = open_keys(data_dir, ORG)
        self.engine = make_engine(database_url)
        self.sessions = session_factory(self.engine)

    def register(self, system: str, address: str, number: str = "") -> MatchResult:
        now = datetime.now(UTC)
        with unit_of_work(self.sessions) as session:
            (result,) = match(
                Repository(session), self.vault, system, [Registration(address, number)], now
            )
        return result

    def at_desk(self, fn: Callable[[staff.Desk], T], staff_id: str = "tanaka") -> T:
        with unit_of_work(self.sessions) as session:
            return fn(staff.Desk(Repository(session), self.audit, staff_id, datetime.now(UTC)))

    def person(self, unified_number: str) -> staff.PersonView:
        (view,) = self.at_desk(lambda d: staff.search(d, self.vault, unified_number=unified_number))
        return view

    def linked_to(self, system: str, address: str) -> str | None:
        with unit_of_work(self.sessions) as session:
            link = Repository(session).link(system, address)
            assert link is not None
            return link.unified_number


@pytest.fixture
def office(database_url: str, tmp_path: Path) -> Iterator[Office]:
    """A database and key files as the server would have them; staff work on it directly."""
    office = Office(database_url, tmp_path / "data")
    yield office
    office.engine.dispose()


# --- paged lists ---------------------------------------------------------------------------


def _pages(fetch: Callable[[Any], staff.Page[T, Any]]) -> list[list[T]]:
    pages: list[list[T]] = []
    after = None
    while True:
        page = fetch(after)
        pages.append(page.items)
        if page.next_after is None:
            return pages
        after = page.next_after


def test_waiting_address_numbers_page_through_ties_once_each_in_order(office: Office) -> None:
    now = datetime.now(UTC)  # one registration batch: every link has the same time
    addresses = [f"J-{n}" for n in (5, 1, 7, 3, 2, 6, 4)]
    with unit_of_work(office.sessions) as session:
        match(Repository(session), office.vault, "juki", [Registration(a) for a in addresses], now)

    pages = _pages(lambda after: office.at_desk(lambda d: staff.waiting(d, 3, after)))

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [w.address_number for page in pages for w in page] == sorted(addresses)


def test_failed_code_requests_page_through_ties_once_each_in_order(office: Office) -> None:
    numbers = individual_numbers(5, seed=73)
    people = [
        office.register("kokuho", f"K-{n}", number).unified_number
        for n, number in enumerate(numbers)
    ]
    now = datetime.now(UTC)
    with unit_of_work(office.sessions) as session:
        repo = Repository(session)
        repo.claim_code_requests(people, now, stale_before=now)  # one request time for all
        repo.record_code_results([(p, CodeState.FAILED, "REGISTRY_DOWN") for p in people], now)
        # A row without a request time (never written so, but pages must not loop or skip it).
        session.execute(
            update(Person).where(Person.unified_number == people[2]).values(code_requested_at=None)
        )

    pages = _pages(lambda after: office.at_desk(lambda d: staff.failures(d, 2, after)))

    assert [len(page) for page in pages] == [2, 2, 1]
    seen = [v.unified_number for page in pages for v in page]
    assert seen == [people[2], *sorted(set(people) - {people[2]})]


# --- manual link ---------------------------------------------------------------------------


def test_a_waiting_address_number_is_linked_by_hand_to_an_existing_person(office: Office) -> None:
    (number,) = individual_numbers(1, seed=71)
    person = office.register("kokuho", "K-1", number)
    assert office.register("juki", "J-1").kind == "WAITING"
    assert [w.address_number for w in office.at_desk(staff.waiting).items] == ["J-1"]
    change, unified = office.at_desk(
        lambda d: staff.link_manually(d, "juki", "J-1", person.unified_number, note="checked")
    )
    assert unified == person.unified_number
    assert office.linked_to("juki", "J-1") == person.unified_number
    assert office.at_desk(staff.waiting).items == []
    assert office.person(unified).links == (("juki", "J-1"), ("kokuho", "K-1"))
    record = [r for r in read_records(office.database_url) if r.reason == "MANUAL_LINK"]
    assert [(r.actor_kind, r.actor_id, r.subject) for r in record] == [("STAFF", "tanaka", unified)]
    assert change > 0


def test_a_manual_link_can_create_a_new_person(office: Office) -> None:
    office.register("juki", "J-1")
    _, unified = office.at_desk(lambda d: staff.link_manually(d, "juki", "J-1"))
    view = office.person(unified)
    assert len(unified) == 15
    assert (view.has_individual_number, view.code_state) == (False, CodeState.NOT_REQUESTED)


def test_an_already_linked_address_number_cannot_be_linked_by_hand(office: Office) -> None:
    (number,) = individual_numbers(1, seed=73)
    office.register("kokuho", "K-1", number)
    with pytest.raises(FailedPrecondition) as caught:
        office.at_desk(lambda d: staff.link_manually(d, "kokuho", "K-1"))
    assert caught.value.reason == "ALREADY_LINKED"
    with pytest.raises(NotFound):
        office.at_desk(lambda d: staff.link_manually(d, "kokuho", "K-404"))


def test_a_manual_link_is_undone_back_to_waiting_and_a_created_person_retired(
    office: Office,
) -> None:
    office.register("juki", "J-1")
    change, unified = office.at_desk(lambda d: staff.link_manually(d, "juki", "J-1"))
    office.at_desk(lambda d: staff.undo(d, change))
    assert office.linked_to("juki", "J-1") is None
    assert office.at_desk(lambda d: staff.search(d, office.vault, unified_number=unified)) == []


def test_a_number_sent_later_settles_on_the_manually_linked_person(office: Office) -> None:
    (number,) = individual_numbers(1, seed=75)
    office.register("juki", "J-1")
    _, unified = office.at_desk(lambda d: staff.link_manually(d, "juki", "J-1"))
    result = office.register("juki", "J-1", number)
    assert (result.kind, result.unified_number) == ("ATTACHED", unified)
    assert result.needs_code  # the person now has a number: a code request follows
    assert office.person(unified).has_individual_number


# --- merge ---------------------------------------------------------------------------------


def _two_records_of_one_person(office: Office) -> tuple[str, str]:
    """A person known by number (K-1), and the same person linked by hand as another (J-1)."""
    (number,) = individual_numbers(1, seed=77)
    keep = office.register("kokuho", "K-1", number).unified_number
    office.register("juki", "J-1")
    _, absorb = office.at_desk(lambda d: staff.link_manually(d, "juki", "J-1"))
    return keep, absorb


def test_merge_folds_one_unified_number_into_the_other(office: Office) -> None:
    keep, absorb = _two_records_of_one_person(office)
    office.at_desk(lambda d: staff.merge(d, keep, absorb, note="same birth date and address"))
    assert office.linked_to("juki", "J-1") == keep
    assert office.person(absorb).merged_into == keep
    assert office.person(keep).links == (("juki", "J-1"), ("kokuho", "K-1"))
    merged = [r for r in read_records(office.database_url) if r.reason == "MERGE"]
    assert sorted(r.subject for r in merged) == sorted([keep, absorb])


def test_merge_is_undone_exactly(office: Office) -> None:
    keep, absorb = _two_records_of_one_person(office)
    change = office.at_desk(lambda d: staff.merge(d, keep, absorb))
    undo = office.at_desk(lambda d: staff.undo(d, change, note="wrong person"))
    assert office.linked_to("juki", "J-1") == absorb
    assert office.person(absorb).merged_into is None
    assert office.person(keep).links == (("kokuho", "K-1"),)
    with unit_of_work(office.sessions) as session:
        original = session.get(LinkChange, change)
        assert original is not None
        assert original.undone_by == undo
    with pytest.raises(FailedPrecondition) as caught:
        office.at_desk(lambda d: staff.undo(d, change))
    assert caught.value.reason == "ALREADY_UNDONE"
    with pytest.raises(FailedPrecondition) as caught:
        office.at_desk(lambda d: staff.undo(d, undo))
    assert caught.value.reason == "CANNOT_UNDO_UNDO"


def test_merge_refuses_two_people_with_different_individual_numbers(office: Office) -> None:
    first, second = individual_numbers(2, seed=79)
    a = office.register("kokuho", "K-1", first).unified_number
    b = office.register("kokuho", "K-2", second).unified_number
    with pytest.raises(FailedPrecondition) as caught:
        office.at_desk(lambda d: staff.merge(d, a, b))
    assert caught.value.reason == "DIFFERENT_INDIVIDUAL_NUMBERS"


def test_merge_never_moves_an_individual_number_between_people(office: Office) -> None:
    keep, absorb = _two_records_of_one_person(office)
    with pytest.raises(FailedPrecondition) as caught:  # absorbing the number holder
        office.at_desk(lambda d: staff.merge(d, absorb, keep))
    assert caught.value.reason == "MERGE_INTO_NUMBER_HOLDER"
    with pytest.raises(InvalidArgument):
        office.at_desk(lambda d: staff.merge(d, keep, keep))


def test_a_merged_person_cannot_be_merged_or_linked_again(office: Office) -> None:
    keep, absorb = _two_records_of_one_person(office)
    office.at_desk(lambda d: staff.merge(d, keep, absorb))
    office.register("juki", "J-2")
    with pytest.raises(FailedPrecondition) as caught:
        office.at_desk(lambda d: staff.link_manually(d, "juki", "J-2", absorb))
    assert caught.value.reason == "PERSON_MERGED"


# --- split ---------------------------------------------------------------------------------


def test_split_moves_links_to_a_new_person_and_undo_restores_them(office: Office) -> None:
    (number,) = individual_numbers(1, seed=83)
    original = office.register("kokuho", "K-1", number).unified_number
    office.register("juki", "J-1")
    office.at_desk(lambda d: staff.link_manually(d, "juki", "J-1", original))
    change, new = office.at_desk(lambda d: staff.split(d, original, [("juki", "J-1")]))
    assert office.linked_to("juki", "J-1") == new
    assert office.person(original).has_individual_number  # the number stays with the original
    assert not office.person(new).has_individual_number
    office.at_desk(lambda d: staff.undo(d, change))
    assert office.linked_to("juki", "J-1") == original
    assert office.at_desk(lambda d: staff.search(d, office.vault, unified_number=new)) == []


def test_split_refuses_links_that_are_not_the_persons(office: Office) -> None:
    (number,) = individual_numbers(1, seed=85)
    original = office.register("kokuho", "K-1", number).unified_number
    with pytest.raises(FailedPrecondition) as caught:
        office.at_desk(lambda d: staff.split(d, original, [("juki", "J-9")]))
    assert caught.value.reason == "NOT_LINKED_HERE"


def test_undo_is_refused_while_a_later_change_depends_on_it(office: Office) -> None:
    keep, absorb = _two_records_of_one_person(office)
    merged = office.at_desk(lambda d: staff.merge(d, keep, absorb))
    split, _ = office.at_desk(lambda d: staff.split(d, keep, [("juki", "J-1")]))
    with pytest.raises(FailedPrecondition) as caught:
        office.at_desk(lambda d: staff.undo(d, merged))
    assert caught.value.reason == "UNDO_CONFLICT"
    office.at_desk(lambda d: staff.undo(d, split))
    office.at_desk(lambda d: staff.undo(d, merged))  # now it can
    assert office.linked_to("juki", "J-1") == absorb


def test_every_change_is_in_the_history_shown_to_staff(office: Office) -> None:
    keep, absorb = _two_records_of_one_person(office)
    change = office.at_desk(lambda d: staff.merge(d, keep, absorb), staff_id="sato")
    office.at_desk(lambda d: staff.undo(d, change), staff_id="suzuki")
    history = office.person(keep).history
    assert [line.split()[2] for line in history] == ["MERGE", "UNDO"]
    assert "by sato" in history[0]
    assert "undone by" in history[0]
    assert "by suzuki" in history[1]


def test_search_by_individual_number_finds_the_person_and_never_shows_the_number(
    office: Office,
) -> None:
    (number,) = individual_numbers(1, seed=87)
    person = office.register("kokuho", "K-1", number)
    (view,) = office.at_desk(lambda d: staff.search(d, office.vault, individual_number=number))
    assert view.unified_number == person.unified_number
    assert number not in repr(view)
    searched = [r for r in read_records(office.database_url) if r.reason == "SEARCH"]
    assert [r.subject for r in searched] == [person.unified_number]


def test_a_staff_id_is_required_to_be_well_formed(office: Office) -> None:
    with pytest.raises(LinkageError):
        office.at_desk(staff.waiting, staff_id="")
    with pytest.raises(LinkageError):
        office.at_desk(staff.waiting, staff_id="a\nb")


# --- the CLI -------------------------------------------------------------------------------


def _cli(office: Office, *args: str) -> list[str]:
    return [
        "--database-url",
        office.database_url,
        "--organization",
        ORG,
        "--data-dir",
        str(office.data_dir),
        "--staff",
        "yamada",
        *args,
    ]


def test_cli_links_merges_splits_and_undoes_with_each_step_recorded(
    office: Office, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (number,) = individual_numbers(1, seed=89)
    keep = office.register("kokuho", "K-1", number).unified_number
    office.register("juki", "J-1")
    office.register("juki", "J-2")

    assert cli.main(_cli(office, "waiting")) == 0
    assert "juki:J-1" in capsys.readouterr().out
    assert cli.main(_cli(office, "link", "juki:J-1")) == 0
    absorb = capsys.readouterr().out.split()[-1]
    assert cli.main(_cli(office, "merge", keep, absorb)) == 0
    merge_change = capsys.readouterr().out.split()[1].strip("#:")
    assert office.linked_to("juki", "J-1") == keep
    assert cli.main(_cli(office, "undo", merge_change)) == 0
    assert office.linked_to("juki", "J-1") == absorb
    assert cli.main(_cli(office, "link", "juki:J-2", "--to", keep)) == 0
    assert cli.main(_cli(office, "split", keep, "juki:J-2")) == 0
    assert office.linked_to("juki", "J-2") not in (keep, None)

    monkeypatch.setattr("sys.stdin", io.StringIO(number + "\n"))
    assert cli.main(_cli(office, "search", "--individual-number-stdin")) == 0
    shown = capsys.readouterr().out
    assert keep in shown
    assert "individual-number=held" in shown
    assert number not in shown

    reasons = [r.reason for r in read_records(office.database_url) if r.actor_id == "yamada"]
    assert reasons[:1] == ["LIST_WAITING"]
    assert {"MANUAL_LINK", "MERGE", "UNDO_MERGE", "SPLIT", "SEARCH"} <= set(reasons)


def test_cli_reports_a_refused_operation_with_its_reason(
    office: Office, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_cli(office, "merge", "100000000000001", "100000000000002")) == 1
    assert "UNIFIED_NUMBER_NOT_FOUND" in capsys.readouterr().err


def test_cli_lists_failed_code_requests(office: Office, capsys: pytest.CaptureFixture[str]) -> None:
    (number,) = individual_numbers(1, seed=91)
    unified = office.register("kokuho", "K-1", number).unified_number
    with unit_of_work(office.sessions) as session:
        Repository(session).record_code_results(
            [(unified, CodeState.FAILED, "REGISTRY_UNAVAILABLE")], datetime.now(UTC)
        )
    assert cli.main(_cli(office, "failures")) == 0
    out = capsys.readouterr().out
    assert unified in out
    assert "REGISTRY_UNAVAILABLE" in out
