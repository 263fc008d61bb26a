"""UnifiedAddressStaffService: staff sessions, roles and recorded access, over real mTLS gRPC.

Staff sign in from the organization's staff console (``staff-console.sakai``); a VIEWER may
search and list, an OPERATOR may also link, merge, split, undo and retry. Every access, reads
included, and every refusal is a record in ``ua:sakai`` under the staff member's user name;
no response carries an individual number.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest
from structlog.testing import capture_logs
from ua_support import ORG, Stub, individual_numbers, read_records

from linkage.errors import RemoteError, Unavailable, remote_error
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent
from linkage.rpc import Security
from linkage.staffauth import ScryptParams
from linkage.v1 import (
    unified_address_pb2,
    unified_address_pb2_grpc,
    unified_address_staff_pb2,
    unified_address_staff_pb2_grpc,
)
from unified_address import cli, registration
from unified_address.app import App, Config, start
from unified_address.staff_accounts import StaffSettings

if TYPE_CHECKING:
    from linkage.v1.unified_address_staff_pb2_grpc import (
        UnifiedAddressStaffServiceAsyncStub as StaffStub,
    )
else:
    StaffStub = Any

pb = unified_address_staff_pb2
PASSWORD = "correct horse battery"
CONSOLE = f"staff-console.{ORG}"
FAST_HASH = StaffSettings(password_params=ScryptParams(n=2**10))
MERGE = "UnifiedAddressStaffService.MergePersons"


@pytest.fixture
async def app(config: Config) -> AsyncIterator[App]:
    """The unified address server with two staff: ``tanaka`` (VIEWER), ``suzuki`` (OPERATOR)."""
    running = await start(dataclasses.replace(config, staff=FAST_HASH))
    running.staff.add_account("tanaka", PASSWORD, ["VIEWER"], must_change=False)
    running.staff.add_account("suzuki", PASSWORD, ["OPERATOR"], must_change=False)
    yield running
    await running.close(grace=0)


@pytest.fixture
async def channels(pki_dir: Path, app: App) -> AsyncIterator[Callable[[str], grpc.aio.Channel]]:
    """``channels(identity)``: an mTLS channel to the server presenting that certificate."""
    opened: list[grpc.aio.Channel] = []

    def open_channel(identity: str) -> grpc.aio.Channel:
        channel = Security(pki_dir, identity).channel(app.address)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        await channel.close(None)


@pytest.fixture
def console(channels: Callable[[str], grpc.aio.Channel]) -> StaffStub:
    """A staff console's stub of UnifiedAddressStaffService."""
    return unified_address_staff_pb2_grpc.UnifiedAddressStaffServiceStub(channels(CONSOLE))


@pytest.fixture
def system(channels: Callable[[str], grpc.aio.Channel]) -> Callable[[str], Stub]:
    """``system("kokuho")``: that business system's stub of UnifiedAddressService."""

    def stub(name: str) -> Stub:
        return unified_address_pb2_grpc.UnifiedAddressServiceStub(channels(f"bs.{ORG}.{name}"))

    return stub


SignIn = Callable[[str], Awaitable[tuple[tuple[str, str], ...]]]


@pytest.fixture
def sign_in(console: StaffStub) -> SignIn:
    """``await sign_in("tanaka")``: the call metadata carrying a fresh session of that user."""

    async def signed(username: str) -> tuple[tuple[str, str], ...]:
        response = await console.SignIn(
            pb.UnifiedAddressStaffServiceSignInRequest(username=username, password=PASSWORD)
        )
        return (("authorization", f"Bearer {response.session_token}"),)

    return signed


async def failure(call: Awaitable[object]) -> RemoteError:
    with pytest.raises(grpc.RpcError) as raised:
        await call
    return remote_error(raised.value)


def staff_records(config: Config) -> list[AccessRecord]:
    return [r for r in read_records(config.database_url) if r.actor_kind == ActorKind.STAFF]


async def two_people(
    system: Callable[[str], Stub], console: StaffStub, operator: Any
) -> tuple[str, str]:
    """Person A (kokuho K-1, with an individual number) and person B (juki J-1, linked by hand
    to a new person: no number): one person found under two unified numbers."""
    (number,) = individual_numbers(1, seed=91)
    a = await system("kokuho").RegisterPerson(
        unified_address_pb2.RegisterPersonRequest(address_number="K-1", individual_number=number)
    )
    await system("juki").RegisterPerson(
        unified_address_pb2.RegisterPersonRequest(address_number="J-1")
    )
    linked = await console.LinkAddressNumber(
        pb.LinkAddressNumberRequest(
            address=pb.AddressLink(system="juki", address_number="J-1"), note="new person"
        ),
        metadata=operator,
    )
    return a.unified_number, linked.unified_number


async def person(console: StaffStub, metadata: Any, unified_number: str) -> pb.StaffPersonView:
    found = await console.SearchPersons(
        pb.SearchPersonsRequest(unified_number=unified_number), metadata=metadata
    )
    (view,) = found.persons
    return view


# --- reading ---------------------------------------------------------------------------------


async def test_a_viewer_searches_by_address_number_and_the_search_is_recorded_as_theirs(
    app: App, config: Config, console: StaffStub, system: Callable[[str], Stub], sign_in: SignIn
) -> None:
    (number,) = individual_numbers(1, seed=81)
    registered = await system("kokuho").RegisterPerson(
        unified_address_pb2.RegisterPersonRequest(address_number="K-7", individual_number=number)
    )
    viewer = await sign_in("tanaka")

    found = await console.SearchPersons(
        pb.SearchPersonsRequest(address=pb.AddressLink(system="kokuho", address_number="K-7")),
        metadata=viewer,
    )

    (view,) = found.persons
    assert view.unified_number == registered.unified_number
    assert view.has_individual_number
    assert view.code_state == pb.LINKAGE_CODE_STATE_ACQUIRED
    assert [(k.system, k.address_number) for k in view.links] == [("kokuho", "K-7")]
    records = staff_records(config)
    assert [(r.event, r.actor_id) for r in records] == [
        (RecordEvent.STAFF_SIGNED_IN, "tanaka"),
        (RecordEvent.STAFF_OPERATION, "tanaka"),
    ]
    assert records[-1].reason == "SEARCH"
    assert records[-1].subject == registered.unified_number


async def test_listing_waiting_address_numbers_is_an_access_recorded_for_the_viewer(
    app: App, config: Config, console: StaffStub, system: Callable[[str], Stub], sign_in: SignIn
) -> None:
    await system("juki").RegisterPerson(
        unified_address_pb2.RegisterPersonRequest(address_number="J-9")
    )
    viewer = await sign_in("tanaka")
    listed = await console.ListWaitingAddressNumbers(
        pb.ListWaitingAddressNumbersRequest(), metadata=viewer
    )
    assert [(w.link.system, w.link.address_number) for w in listed.waiting] == [("juki", "J-9")]
    last = staff_records(config)[-1]
    assert (last.actor_id, last.event, last.reason) == (
        "tanaka",
        RecordEvent.STAFF_OPERATION,
        "LIST_WAITING",
    )


# --- roles -----------------------------------------------------------------------------------


async def test_a_viewer_may_not_merge_and_the_refusal_is_recorded_with_nothing_changed(
    app: App, config: Config, console: StaffStub, system: Callable[[str], Stub], sign_in: SignIn
) -> None:
    operator = await sign_in("suzuki")
    keep, absorb = await two_people(system, console, operator)
    viewer = await sign_in("tanaka")
    before = len(read_records(config.database_url))

    error = await failure(
        console.MergePersons(
            pb.MergePersonsRequest(keep_unified_number=keep, absorb_unified_number=absorb),
            metadata=viewer,
        )
    )

    assert (error.code, error.reason) == ("PERMISSION_DENIED", "ROLE_REQUIRED")
    (denied,) = read_records(config.database_url)[before:]
    assert (denied.event, denied.outcome, denied.actor_kind, denied.actor_id) == (
        RecordEvent.ACCESS_DENIED,
        Outcome.DENIED,
        ActorKind.STAFF,
        "tanaka",
    )
    assert (denied.procedure, denied.reason) == (MERGE, "ROLE_REQUIRED")
    absorbed = await person(console, viewer, absorb)
    assert absorbed.merged_into == ""
    assert [(k.system, k.address_number) for k in absorbed.links] == [("juki", "J-1")]


async def test_an_operator_merges_two_unified_numbers_and_undoes_the_merge(
    app: App, config: Config, console: StaffStub, system: Callable[[str], Stub], sign_in: SignIn
) -> None:
    operator = await sign_in("suzuki")
    keep, absorb = await two_people(system, console, operator)

    merged = await console.MergePersons(
        pb.MergePersonsRequest(
            keep_unified_number=keep, absorb_unified_number=absorb, note="same person"
        ),
        metadata=operator,
    )
    survivor = await person(console, operator, keep)
    assert {(k.system, k.address_number) for k in survivor.links} == {
        ("juki", "J-1"),
        ("kokuho", "K-1"),
    }
    assert (await person(console, operator, absorb)).merged_into == keep
    merge_records = [r for r in staff_records(config) if r.reason == "MERGE"]
    assert {(r.actor_id, r.subject) for r in merge_records} == {
        ("suzuki", keep),
        ("suzuki", absorb),
    }

    await console.UndoLinkChange(
        pb.UndoLinkChangeRequest(change_id=merged.change_id), metadata=operator
    )

    restored = await person(console, operator, absorb)
    assert restored.merged_into == ""
    assert [(k.system, k.address_number) for k in restored.links] == [("juki", "J-1")]
    assert [
        (k.system, k.address_number) for k in (await person(console, operator, keep)).links
    ] == [("kokuho", "K-1")]
    assert any(r.reason == "UNDO_MERGE" for r in staff_records(config))


async def test_an_operator_splits_links_off_to_a_new_person_and_undoes_the_split(
    config: Config, console: StaffStub, system: Callable[[str], Stub], sign_in: SignIn
) -> None:
    operator = await sign_in("suzuki")
    keep, absorb = await two_people(system, console, operator)
    await console.MergePersons(
        pb.MergePersonsRequest(keep_unified_number=keep, absorb_unified_number=absorb),
        metadata=operator,
    )

    split = await console.SplitPerson(
        pb.SplitPersonRequest(
            unified_number=keep,
            links=[pb.AddressLink(system="juki", address_number="J-1")],
            note="two people after all",
        ),
        metadata=operator,
    )

    assert split.new_unified_number not in ("", keep, absorb)
    moved = await person(console, operator, split.new_unified_number)
    assert [(k.system, k.address_number) for k in moved.links] == [("juki", "J-1")]
    assert not moved.has_individual_number
    assert [
        (k.system, k.address_number) for k in (await person(console, operator, keep)).links
    ] == [("kokuho", "K-1")]
    assert any(r.reason == "SPLIT" for r in staff_records(config))

    await console.UndoLinkChange(
        pb.UndoLinkChangeRequest(change_id=split.change_id), metadata=operator
    )
    rejoined = await person(console, operator, keep)
    assert {(k.system, k.address_number) for k in rejoined.links} == {
        ("juki", "J-1"),
        ("kokuho", "K-1"),
    }


async def test_a_refused_operation_is_recorded_as_failed_and_changes_nothing(
    app: App, config: Config, console: StaffStub, system: Callable[[str], Stub], sign_in: SignIn
) -> None:
    operator = await sign_in("suzuki")
    keep, absorb = await two_people(system, console, operator)
    error = await failure(  # numbers never move between people: merge the other way
        console.MergePersons(
            pb.MergePersonsRequest(keep_unified_number=absorb, absorb_unified_number=keep),
            metadata=operator,
        )
    )
    assert (error.code, error.reason) == ("FAILED_PRECONDITION", "MERGE_INTO_NUMBER_HOLDER")
    last = read_records(config.database_url)[-1]
    assert (last.event, last.outcome, last.actor_id, last.procedure, last.reason) == (
        RecordEvent.STAFF_OPERATION,
        Outcome.FAILED,
        "suzuki",
        MERGE,
        "MERGE_INTO_NUMBER_HOLDER",
    )
    assert (await person(console, operator, keep)).merged_into == ""


# --- sessions and callers --------------------------------------------------------------------


async def test_a_call_without_a_session_or_with_an_unknown_one_is_unauthenticated_and_recorded(
    app: App, config: Config, console: StaffStub
) -> None:
    request = pb.ListCodeRequestFailuresRequest()
    missing = await failure(console.ListCodeRequestFailures(request))
    unknown = await failure(
        console.ListCodeRequestFailures(request, metadata=(("authorization", "Bearer nope"),))
    )
    assert (missing.code, missing.reason) == ("UNAUTHENTICATED", "NO_SESSION")
    assert (unknown.code, unknown.reason) == ("UNAUTHENTICATED", "INVALID_SESSION")
    denials = [r for r in read_records(config.database_url) if r.event == RecordEvent.ACCESS_DENIED]
    assert [r.reason for r in denials] == ["NO_SESSION", "INVALID_SESSION"]
    assert all(r.procedure.endswith(".ListCodeRequestFailures") for r in denials)


async def test_a_signed_out_session_no_longer_works(console: StaffStub, sign_in: SignIn) -> None:
    viewer = await sign_in("tanaka")
    await console.SignOut(pb.UnifiedAddressStaffServiceSignOutRequest(), metadata=viewer)
    error = await failure(
        console.ListWaitingAddressNumbers(pb.ListWaitingAddressNumbersRequest(), metadata=viewer)
    )
    assert (error.code, error.reason) == ("UNAUTHENTICATED", "INVALID_SESSION")


async def test_a_wrong_password_and_an_unknown_user_name_fail_alike(console: StaffStub) -> None:
    errors = [
        await failure(
            console.SignIn(
                pb.UnifiedAddressStaffServiceSignInRequest(username=name, password="wrong-" * 3)
            )
        )
        for name in ("tanaka", "nobody")
    ]
    assert {(e.code, e.reason, e.message) for e in errors} == {
        ("UNAUTHENTICATED", "INVALID_CREDENTIALS", "unknown user name or wrong password")
    }


async def test_repeated_wrong_passwords_lock_the_user_name(console: StaffStub) -> None:
    wrong = pb.UnifiedAddressStaffServiceSignInRequest(username="tanaka", password="x" * 12)
    for _ in range(FAST_HASH.max_failed_sign_ins):
        await failure(console.SignIn(wrong))
    right = pb.UnifiedAddressStaffServiceSignInRequest(username="tanaka", password=PASSWORD)
    error = await failure(console.SignIn(right))
    assert (error.code, error.reason) == ("RESOURCE_EXHAUSTED", "SIGN_IN_LOCKED")


async def test_an_initial_password_must_be_changed_before_any_operation(
    app: App, console: StaffStub, sign_in: SignIn
) -> None:
    app.staff.add_account("sato", PASSWORD, ["VIEWER"])  # must change by default
    session = await sign_in("sato")
    request = pb.ListWaitingAddressNumbersRequest()
    error = await failure(console.ListWaitingAddressNumbers(request, metadata=session))
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "PASSWORD_CHANGE_REQUIRED")

    await console.ChangePassword(
        pb.UnifiedAddressStaffServiceChangePasswordRequest(
            current_password=PASSWORD, new_password="a new and long passphrase"
        ),
        metadata=session,
    )

    assert (await console.ListWaitingAddressNumbers(request, metadata=session)).waiting == []


async def test_a_business_system_certificate_may_not_use_the_staff_service(
    app: App, config: Config, channels: Callable[[str], grpc.aio.Channel]
) -> None:
    stub = unified_address_staff_pb2_grpc.UnifiedAddressStaffServiceStub(
        channels(f"bs.{ORG}.kokuho")
    )
    error = await failure(
        stub.SignIn(
            pb.UnifiedAddressStaffServiceSignInRequest(username="tanaka", password=PASSWORD)
        )
    )
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED")
    last = read_records(config.database_url)[-1]
    assert (last.event, last.actor_id) == (RecordEvent.ACCESS_DENIED, f"bs.{ORG}.kokuho")


async def test_a_malformed_request_from_a_business_system_is_a_recorded_refusal(
    app: App, config: Config, channels: Callable[[str], grpc.aio.Channel]
) -> None:
    stub = unified_address_staff_pb2_grpc.UnifiedAddressStaffServiceStub(
        channels(f"bs.{ORG}.kokuho")
    )
    malformed = pb.SearchPersonsRequest(unified_number="not-a-number")
    error = await failure(stub.SearchPersons(malformed))
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED")
    last = read_records(config.database_url)[-1]
    assert (last.event, last.actor_id, last.procedure) == (
        RecordEvent.ACCESS_DENIED,
        f"bs.{ORG}.kokuho",
        "UnifiedAddressStaffService.SearchPersons",
    )


async def test_the_waiting_list_pages_with_tokens_that_fit_only_their_own_list(
    app: App, console: StaffStub, system: Callable[[str], Stub], sign_in: SignIn
) -> None:
    for address in ("J-1", "J-2", "J-3"):
        await system("juki").RegisterPerson(
            unified_address_pb2.RegisterPersonRequest(address_number=address)
        )
    viewer = await sign_in("tanaka")

    first = await console.ListWaitingAddressNumbers(
        pb.ListWaitingAddressNumbersRequest(page_size=2), metadata=viewer
    )
    last = await console.ListWaitingAddressNumbers(
        pb.ListWaitingAddressNumbersRequest(page_size=2, page_token=first.next_page_token),
        metadata=viewer,
    )

    seen = [w.link.address_number for page in (first, last) for w in page.waiting]
    assert seen == ["J-1", "J-2", "J-3"]
    assert first.next_page_token
    assert not last.next_page_token
    nested = base64.urlsafe_b64encode(b"[" * 300).decode()  # deep nesting, still short
    for token in (first.next_page_token, "bm90IGEgdG9rZW4", "%%%", "A" * 600, nested):
        error = await failure(
            console.ListCodeRequestFailures(
                pb.ListCodeRequestFailuresRequest(page_token=token), metadata=viewer
            )
        )
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_PAGE_TOKEN")
        assert [v.field for v in error.violations] == ["page_token"]


# --- code requests ---------------------------------------------------------------------------


async def test_failed_code_requests_page_with_the_token_each_page_returns(
    app: App,
    console: StaffStub,
    system: Callable[[str], Stub],
    sign_in: SignIn,
    registry: Any,
) -> None:
    down = Unavailable("REGISTRY_DOWN", "down for maintenance")
    registry[0].failures.fail_next(down, down, down)
    people = []
    for n, number in enumerate(individual_numbers(3, seed=97)):
        registered = await system("kokuho").RegisterPerson(
            unified_address_pb2.RegisterPersonRequest(
                address_number=f"K-{n}", individual_number=number
            )
        )
        people.append(registered.unified_number)
    viewer = await sign_in("tanaka")

    first = await console.ListCodeRequestFailures(
        pb.ListCodeRequestFailuresRequest(page_size=2), metadata=viewer
    )
    last = await console.ListCodeRequestFailures(
        pb.ListCodeRequestFailuresRequest(page_size=2, page_token=first.next_page_token),
        metadata=viewer,
    )

    assert [len(first.persons), len(last.persons)] == [2, 1]
    assert [p.unified_number for page in (first, last) for p in page.persons] == people
    assert first.next_page_token
    assert not last.next_page_token


async def test_an_operator_retries_a_failed_code_request_a_viewer_may_not(
    app: App,
    console: StaffStub,
    system: Callable[[str], Stub],
    sign_in: SignIn,
    registry: Any,
) -> None:
    registry[0].failures.fail_next(Unavailable("REGISTRY_DOWN", "down for maintenance"))
    (number,) = individual_numbers(1, seed=93)
    registered = await system("kokuho").RegisterPerson(
        unified_address_pb2.RegisterPersonRequest(address_number="K-3", individual_number=number)
    )
    viewer, operator = await sign_in("tanaka"), await sign_in("suzuki")
    failed = await console.ListCodeRequestFailures(
        pb.ListCodeRequestFailuresRequest(), metadata=viewer
    )
    assert [p.unified_number for p in failed.persons] == [registered.unified_number]
    assert failed.persons[0].code_state == pb.LINKAGE_CODE_STATE_FAILED

    denied = await failure(
        console.RetryFailedCodeRequests(pb.RetryFailedCodeRequestsRequest(), metadata=viewer)
    )
    retried = await console.RetryFailedCodeRequests(
        pb.RetryFailedCodeRequestsRequest(), metadata=operator
    )

    assert denied.reason == "ROLE_REQUIRED"
    assert (retried.acquired, retried.failed) == (1, 0)
    view = await person(console, viewer, registered.unified_number)
    assert view.code_state == pb.LINKAGE_CODE_STATE_ACQUIRED


async def test_a_failed_retry_is_recorded_as_failed_not_ok(
    app: App, config: Config, console: StaffStub, sign_in: SignIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object, **_kwargs: object) -> object:
        raise Unavailable("REGISTRY_DOWN", "down for maintenance")

    monkeypatch.setattr(registration, "retry_code_requests", broken)
    operator = await sign_in("suzuki")
    error = await failure(
        console.RetryFailedCodeRequests(pb.RetryFailedCodeRequestsRequest(), metadata=operator)
    )
    assert error.reason == "REGISTRY_DOWN"
    retries = [
        (r.event, r.outcome, r.reason)
        for r in staff_records(config)
        if r.procedure == "UnifiedAddressStaffService.RetryFailedCodeRequests"
    ]
    assert retries == [(RecordEvent.STAFF_OPERATION, Outcome.FAILED, "REGISTRY_DOWN")]


# --- no individual number --------------------------------------------------------------------


async def test_no_staff_response_carries_an_individual_number(
    app: App, console: StaffStub, system: Callable[[str], Stub], sign_in: SignIn
) -> None:
    operator = await sign_in("suzuki")
    keep, absorb = await two_people(system, console, operator)
    (number,) = individual_numbers(1, seed=91)  # the one two_people registered
    responses: list[Any] = [
        await console.SearchPersons(
            pb.SearchPersonsRequest(
                unified_number=keep, address=pb.AddressLink(system="juki", address_number="J-1")
            ),
            metadata=operator,
        ),
        await console.ListCodeRequestFailures(
            pb.ListCodeRequestFailuresRequest(), metadata=operator
        ),
        await console.ListWaitingAddressNumbers(
            pb.ListWaitingAddressNumbersRequest(), metadata=operator
        ),
        await console.MergePersons(
            pb.MergePersonsRequest(keep_unified_number=keep, absorb_unified_number=absorb),
            metadata=operator,
        ),
        await console.SearchPersons(
            pb.SearchPersonsRequest(unified_number=keep), metadata=operator
        ),
    ]
    assert len(responses[0].persons) == 2
    assert responses[-1].persons[0].has_individual_number
    for response in responses:
        assert number.encode() not in response.SerializeToString()
        assert number not in str(response)


async def test_a_viewer_finds_a_person_by_individual_number_and_the_record_names_only_the_person(
    app: App,
    config: Config,
    console: StaffStub,
    system: Callable[[str], Stub],
    sign_in: SignIn,
) -> None:
    holder, other = individual_numbers(2, seed=95)
    registered = await system("kokuho").RegisterPerson(
        unified_address_pb2.RegisterPersonRequest(address_number="K-9", individual_number=holder)
    )
    viewer = await sign_in("tanaka")

    found = await console.SearchPersons(
        pb.SearchPersonsRequest(individual_number=holder), metadata=viewer
    )
    nobody = await console.SearchPersons(
        pb.SearchPersonsRequest(individual_number=other), metadata=viewer
    )

    assert [view.unified_number for view in found.persons] == [registered.unified_number]
    assert found.persons[0].has_individual_number
    assert not nobody.persons
    searches = [r for r in staff_records(config) if r.reason == "SEARCH"]
    assert [(r.actor_id, r.subject) for r in searches] == [
        ("tanaka", registered.unified_number),
        ("tanaka", ""),
    ]
    for number in (holder, other):
        assert number.encode() not in found.SerializeToString()
        assert all(number not in str(r) for r in read_records(config.database_url))


async def test_a_search_by_a_mistyped_individual_number_names_the_field_not_the_value(
    app: App, console: StaffStub, sign_in: SignIn, capfd: pytest.CaptureFixture[str]
) -> None:
    (number,) = individual_numbers(1, seed=96)
    mistyped = number[:-1] + str((int(number[-1]) + 1) % 10)  # the check digit is wrong
    viewer = await sign_in("tanaka")

    with capture_logs() as logs:  # the server runs in this process: its events land here
        error = await failure(
            console.SearchPersons(
                pb.SearchPersonsRequest(individual_number=mistyped), metadata=viewer
            )
        )

    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_REQUEST")
    assert [v.field for v in error.violations] == ["individual_number"]
    assert mistyped not in error.message
    assert all(mistyped not in v.description for v in error.violations)
    # Where the events land depends on whether structlog cached its loggers before this test:
    # in ``capture_logs``, or rendered to the captured output. The check reads both.
    logged = repr(logs) + "".join(capfd.readouterr())
    assert "rpc_failed" in logged
    assert "INVALID_REQUEST" in logged
    assert mistyped not in logged


# --- operator commands and the retention job -------------------------------------------------


async def test_the_cli_adds_an_account_that_can_sign_in_once_its_password_is_changed(
    app: App, config: Config, console: StaffStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = [
        "--database-url",
        config.database_url,
        "--organization",
        ORG,
        "--data-dir",
        str(config.data_dir),
        "staff",
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main([*base, "add", "--username", "yamada", "--role", "VIEWER"]) == 0
    assert cli.main([*base, "grant", "--username", "yamada", "--role", "OPERATOR"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main([*base, "add", "--username", "yamada", "--role", "VIEWER"]) == 1  # taken

    signed = await console.SignIn(
        pb.UnifiedAddressStaffServiceSignInRequest(username="yamada", password=PASSWORD)
    )
    assert signed.password_change_required
    assert list(signed.roles) == [pb.UNIFIED_ADDRESS_STAFF_ROLE_OPERATOR]
    created = [r for r in read_records(config.database_url) if r.actor_kind == ActorKind.SYSTEM]
    assert [r.procedure for r in created][-2:] == ["linkage ua staff add", "linkage ua staff grant"]


async def test_the_server_runs_the_records_retention_job_when_configured(config: Config) -> None:
    running = await start(dataclasses.replace(config, records_retention_interval=None))
    assert running.retention is None
    await running.close(grace=0)
    running = await start(
        dataclasses.replace(config, records_retention_interval=timedelta(hours=1))
    )
    try:
        assert running.retention is not None
        assert await running.retention.run_once() == {f"ua:{ORG}": 0}
    finally:
        await running.close(grace=0)
