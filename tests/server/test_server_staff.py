"""Staff authentication and authorization over real gRPC with mutual TLS (職員認証・権限管理).

Staff consoles call as ``staff-console.<code>``; sessions travel as ``authorization: Bearer``.
Covers sign-in and sign-out, indistinguishable unknown users and wrong passwords, lockout, the
forced change of an initial password, idle and absolute expiry, roles on every RPC, sessions
bound to their tenant's consoles, no shared accounts, the operator's bootstrap command, and an
access record for everything.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import grpc
import pytest
from server_support import PASSWORD, World, bearer, remote
from sqlalchemy import text

from linkage.errors import RemoteError, remote_error
from linkage.staffauth import ScryptParams, hash_password, needs_rehash, verify_password
from linkage.v1 import review_pb2, staff_pb2, system_management_pb2
from server import cli_staff

pb = staff_pb2
NEW_PASSWORD = "a different passphrase"


def _denials(world: World, code: str, reason: str) -> list[dict[str, Any]]:
    return world.records(code, event="ACCESS_DENIED", reason=reason)


# --- signing in and out -------------------------------------------------------------------------


async def test_sign_in_and_sign_out(world: World) -> None:
    alpha = world.platforms["alpha"]
    await alpha.create_staff_account("sakai", "tanaka.h", PASSWORD, ["REVIEWER"], must_change=False)
    signed = await world.sign_in("sakai", "tanaka.h")
    assert signed.session_token
    assert not signed.password_change_required
    assert list(signed.roles) == [pb.STAFF_ROLE_REVIEWER]
    assert signed.expires_at.ToDatetime().timestamp() == pytest.approx(
        (world.clock() + timedelta(hours=8)).timestamp(), abs=1
    )
    [entry] = world.records("sakai", event="STAFF_SIGNED_IN")
    assert (entry["actor_kind"], entry["actor_id"], entry["outcome"]) == ("STAFF", "tanaka.h", "OK")
    # The database holds the token's sha256 only, never the token or the password.
    with world.engines["alpha"].connect() as connection:
        digests = connection.execute(text("SELECT token_sha256 FROM server_staff_sessions"))
        assert [bytes(d) for (d,) in digests] == [
            hashlib.sha256(signed.session_token.encode()).digest()
        ]
        stored = connection.execute(text("SELECT password_hash FROM server_staff_accounts"))
        [(hashed,)] = list(stored)
    assert hashed.startswith("scrypt$16384$8$1$")
    assert PASSWORD not in hashed

    console = world.console("sakai")
    listing = review_pb2.ListHeldProvisionsRequest(parent="organizations/sakai")
    await console.review.ListHeldProvisions(listing, metadata=bearer(signed.session_token))
    await console.staff.SignOut(pb.SignOutRequest(), metadata=bearer(signed.session_token))
    error = await remote(
        console.review.ListHeldProvisions(listing, metadata=bearer(signed.session_token))
    )
    assert (error.code, error.reason) == ("UNAUTHENTICATED", "INVALID_SESSION")
    [out] = world.records("sakai", event="STAFF_SIGNED_OUT")
    assert (out["actor_id"], out["procedure"]) == ("tanaka.h", "StaffService.SignOut")
    assert world.count("alpha", "server_staff_sessions") == 0


async def test_without_a_session_every_call_is_unauthenticated(world: World) -> None:
    console = world.console("sakai")
    calls: list[Awaitable[Any]] = [
        console.staff.SignOut(pb.SignOutRequest()),
        console.staff.ChangePassword(
            pb.ChangePasswordRequest(current_password=PASSWORD, new_password=NEW_PASSWORD)
        ),
        console.review.ListHeldProvisions(
            review_pb2.ListHeldProvisionsRequest(parent="organizations/sakai"),
            metadata=(("authorization", "Basic dXNlcjpwYXNz"),),
        ),
        console.system.PurgeExpired(
            system_management_pb2.PurgeExpiredRequest(parent="organizations/sakai"),
            metadata=bearer("not-a-session"),
        ),
    ]
    reasons = [(e.code, e.reason) for e in [await remote(call) for call in calls]]
    assert reasons == [
        ("UNAUTHENTICATED", "NO_SESSION"),
        ("UNAUTHENTICATED", "NO_SESSION"),
        ("UNAUTHENTICATED", "NO_SESSION"),
        ("UNAUTHENTICATED", "INVALID_SESSION"),
    ]
    assert len(world.records("sakai", event="ACCESS_DENIED")) == 4


async def _timed(call: Awaitable[Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    error = await remote(call)
    return time.perf_counter() - start, error


async def test_unknown_user_and_wrong_password_look_the_same(world: World) -> None:
    alpha = world.platforms["alpha"]
    await alpha.create_staff_account("sakai", "sato.k", PASSWORD, ["OPERATOR"], must_change=False)
    wrong: list[float] = []
    unknown: list[float] = []
    errors = []
    for attempt in range(4):  # below the lockout (5)
        seconds, error = await _timed(world.sign_in("sakai", "sato.k", f"wrong-{attempt}-pass"))
        wrong.append(seconds)
        errors.append(error)
        seconds, error = await _timed(world.sign_in("sakai", f"nobody{attempt}", PASSWORD))
        unknown.append(seconds)
        errors.append(error)
    assert {(e.code, e.reason, e.message) for e in errors} == {
        ("UNAUTHENTICATED", "INVALID_CREDENTIALS", "unknown user name or wrong password")
    }
    # An unknown user costs a dummy hash of the same parameters: no fast path to time. (The
    # fastest of each is compared: load on the machine only ever adds time.)
    assert min(unknown) > 0.5 * min(wrong)
    denials = _denials(world, "sakai", "INVALID_CREDENTIALS")
    assert sorted(d["actor_id"] for d in denials) == [
        "nobody0",
        "nobody1",
        "nobody2",
        "nobody3",
        *["sato.k"] * 4,
    ]
    assert {d["procedure"] for d in denials} == {"StaffService.SignIn"}


async def test_lockout_after_repeated_failures(world: World) -> None:
    alpha = world.platforms["alpha"]
    await alpha.create_staff_account("sakai", "suzuki.m", PASSWORD, ["OPERATOR"], must_change=False)
    for name in ("suzuki.m", "ghost.user"):  # known and unknown user names lock alike
        for attempt in range(5):
            error = await remote(world.sign_in("sakai", name, f"guess-number-{attempt}"))
            assert error.reason == "INVALID_CREDENTIALS"
        locked = await remote(world.sign_in("sakai", name, PASSWORD))
        assert (locked.code, locked.reason) == ("RESOURCE_EXHAUSTED", "SIGN_IN_LOCKED")
        assert int(locked.metadata["retryAfterSeconds"]) == 15 * 60
    assert len(_denials(world, "sakai", "SIGN_IN_LOCKED")) == 2
    # Another tenant's user of the same name is not affected.
    await alpha.create_staff_account("jps", "suzuki.m", PASSWORD, ["OPERATOR"], must_change=False)
    assert (await world.sign_in("jps", "suzuki.m")).session_token
    world.clock.advance(timedelta(minutes=15, seconds=1))
    assert (await world.sign_in("sakai", "suzuki.m")).session_token
    # Success forgets the failures: four more failures do not lock.
    for attempt in range(4):
        await remote(world.sign_in("sakai", "suzuki.m", f"again-wrong-{attempt}"))
    assert (await world.sign_in("sakai", "suzuki.m")).session_token


# --- the initial password -----------------------------------------------------------------------


async def test_initial_password_must_be_changed_first(world: World) -> None:
    alpha = world.platforms["alpha"]
    await alpha.create_staff_account("sakai", "ito.y", PASSWORD, ["REVIEWER", "ADMINISTRATOR"])
    signed = await world.sign_in("sakai", "ito.y")
    assert signed.password_change_required
    token = signed.session_token
    console = world.console("sakai")
    blocked: list[Awaitable[Any]] = [
        console.review.ListHeldProvisions(
            review_pb2.ListHeldProvisionsRequest(parent="organizations/sakai"),
            metadata=bearer(token),
        ),
        console.system.GetStatistics(
            system_management_pb2.GetStatisticsRequest(parent="organizations/sakai"),
            metadata=bearer(token),
        ),
        console.staff.CreateStaffAccount(
            pb.CreateStaffAccountRequest(
                parent="organizations/sakai",
                username="kato.r",
                initial_password=PASSWORD,
                roles=[pb.STAFF_ROLE_OPERATOR],
            ),
            metadata=bearer(token),
        ),
    ]
    for call in blocked:
        error = await remote(call)
        assert (error.code, error.reason) == ("PERMISSION_DENIED", "PASSWORD_CHANGE_REQUIRED")
    assert len(_denials(world, "sakai", "PASSWORD_CHANGE_REQUIRED")) == 3

    async def change(current: str, new: str) -> Any:
        return await console.staff.ChangePassword(
            pb.ChangePasswordRequest(current_password=current, new_password=new),
            metadata=bearer(token),
        )

    before = world.table_counts("alpha")
    weak = await remote(change(PASSWORD, "short"))
    assert (weak.code, weak.reason) == ("INVALID_ARGUMENT", "WEAK_PASSWORD")
    assert [v.field for v in weak.violations] == ["new_password"]
    same = await remote(change(PASSWORD, PASSWORD))
    assert (same.code, same.reason) == ("INVALID_ARGUMENT", "SAME_PASSWORD")
    named = await remote(change(PASSWORD, "ito.y-is-my-password"))
    assert named.reason == "WEAK_PASSWORD"
    assert world.table_counts("alpha") == before  # bad input: nothing written
    wrong = await remote(change("not the password", NEW_PASSWORD))
    assert (wrong.code, wrong.reason) == ("UNAUTHENTICATED", "INVALID_CREDENTIALS")

    other = (await world.sign_in("sakai", "ito.y")).session_token  # a second session
    await change(PASSWORD, NEW_PASSWORD)
    await console.review.ListHeldProvisions(
        review_pb2.ListHeldProvisionsRequest(parent="organizations/sakai"),
        metadata=bearer(token),
    )
    ended = await remote(console.staff.SignOut(pb.SignOutRequest(), metadata=bearer(other)))
    assert ended.reason == "INVALID_SESSION"  # a password change ends the other sessions
    old = await remote(world.sign_in("sakai", "ito.y", PASSWORD))
    assert old.reason == "INVALID_CREDENTIALS"
    again = await world.sign_in("sakai", "ito.y", NEW_PASSWORD)
    assert not again.password_change_required
    [changed] = world.records("sakai", procedure="StaffService.ChangePassword", outcome="OK")
    assert (changed["event"], changed["actor_id"]) == ("STAFF_OPERATION", "ito.y")


# --- sessions expire ----------------------------------------------------------------------------


async def test_sessions_expire_when_idle_and_at_their_end(world: World) -> None:
    token = await world.signed_in("sakai", "yamada.t", "REVIEWER")
    console = world.console("sakai")
    request = review_pb2.ListHeldProvisionsRequest(parent="organizations/sakai")
    # In use every 25 minutes, the session lives until its absolute end (8 hours).
    for _ in range(19):
        world.clock.advance(timedelta(minutes=25))
        await console.review.ListHeldProvisions(request, metadata=bearer(token))
    world.clock.advance(timedelta(minutes=25))  # 8h20m after sign-in
    error = await remote(console.review.ListHeldProvisions(request, metadata=bearer(token)))
    assert (error.code, error.reason) == ("UNAUTHENTICATED", "SESSION_EXPIRED")

    idle = (await world.sign_in("sakai", "yamada.t")).session_token
    world.clock.advance(timedelta(minutes=30))
    error = await remote(console.review.ListHeldProvisions(request, metadata=bearer(idle)))
    assert (error.code, error.reason) == ("UNAUTHENTICATED", "SESSION_EXPIRED")
    assert len(_denials(world, "sakai", "SESSION_EXPIRED")) == 2
    # The purge deletes ended sessions.
    assert world.count("alpha", "server_staff_sessions") == 2
    report = await world.platforms["alpha"].purge_expired()
    assert report.staff_sessions_deleted == 2
    assert world.count("alpha", "server_staff_sessions") == 0


# --- roles --------------------------------------------------------------------------------------


def _role_calls(console: Any, token: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Every RPC that needs a role, by name (each a fresh call)."""
    meta = bearer(token)
    parent = "organizations/sakai"
    held = f"{parent}/heldProvisions/p-1"
    return {
        "CreateStaffAccount": lambda: console.staff.CreateStaffAccount(
            pb.CreateStaffAccountRequest(
                parent=parent,
                username="new.person",
                initial_password=PASSWORD,
                roles=[pb.STAFF_ROLE_OPERATOR],
            ),
            metadata=meta,
        ),
        "ListHeldProvisions": lambda: console.review.ListHeldProvisions(
            review_pb2.ListHeldProvisionsRequest(parent=parent), metadata=meta
        ),
        "ApproveHeldProvision": lambda: console.review.ApproveHeldProvision(
            review_pb2.ApproveHeldProvisionRequest(name=held), metadata=meta
        ),
        "DeclineHeldProvision": lambda: console.review.DeclineHeldProvision(
            review_pb2.DeclineHeldProvisionRequest(name=held, reason="DV_SUPPORT_MEASURE"),
            metadata=meta,
        ),
        "GetStatistics": lambda: console.system.GetStatistics(
            system_management_pb2.GetStatisticsRequest(parent=parent), metadata=meta
        ),
        "PurgeExpired": lambda: console.system.PurgeExpired(
            system_management_pb2.PurgeExpiredRequest(parent=parent), metadata=meta
        ),
    }


REVIEW_RPCS = {"ListHeldProvisions", "ApproveHeldProvision", "DeclineHeldProvision"}
ADMIN_RPCS = {"CreateStaffAccount", "GetStatistics", "PurgeExpired"}


@pytest.mark.parametrize(
    ("role", "allowed"),
    [("OPERATOR", set()), ("REVIEWER", REVIEW_RPCS), ("ADMINISTRATOR", ADMIN_RPCS)],
)
async def test_each_role_reaches_only_its_rpcs(world: World, role: str, allowed: set[str]) -> None:
    token = await world.signed_in("sakai", f"{role.lower()}.person", role)
    calls = _role_calls(world.console("sakai"), token)
    for name, call in calls.items():
        failure = await _outcome(call())
        if name in allowed:  # past the role check (it may still fail later, e.g. NOT_FOUND)
            assert failure is None or failure.code != "PERMISSION_DENIED", name
        else:
            assert failure is not None, name
            assert (failure.code, failure.reason) == ("PERMISSION_DENIED", "ROLE_REQUIRED"), name
    denied = _denials(world, "sakai", "ROLE_REQUIRED")
    assert len(denied) == len(calls) - len(allowed)
    assert {d["actor_id"] for d in denied} <= {f"{role.lower()}.person"}


async def _outcome(call: Awaitable[Any]) -> RemoteError | None:
    """None when the call succeeded, else its error."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return remote_error(error)
    return None


async def test_a_session_works_only_at_its_own_tenants_consoles(world: World) -> None:
    token = await world.signed_in("sakai", "kimura.s", "REVIEWER", "ADMINISTRATOR")
    before = world.records("sakai")
    # jps's console (same platform) presenting sakai's session, naming jps or sakai: refused.
    jps = world.console("jps")
    for parent in ("organizations/jps", "organizations/sakai"):
        error = await remote(
            jps.review.ListHeldProvisions(
                review_pb2.ListHeldProvisionsRequest(parent=parent), metadata=bearer(token)
            )
        )
        assert (error.code, error.reason) == ("PERMISSION_DENIED", "TENANT_MISMATCH")
    error = await remote(jps.staff.SignOut(pb.SignOutRequest(), metadata=bearer(token)))
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "TENANT_MISMATCH")
    # Both organizations' ledgers keep the refusals of the session presented at jps.
    assert len(_denials(world, "sakai", "TENANT_MISMATCH")) == 2
    assert len(_denials(world, "jps", "TENANT_MISMATCH")) == 2
    # Accounts are per tenant: sakai's user cannot sign in at jps.
    wrong_tenant = await remote(world.sign_in("jps", "kimura.s"))
    assert wrong_tenant.reason == "INVALID_CREDENTIALS"
    # Only staff consoles may call; sign-in names the console's own tenant.
    other = world.console("sakai", identity="ua.sakai")
    error = await remote(
        other.staff.SignIn(
            pb.SignInRequest(parent="organizations/sakai", username="kimura.s", password=PASSWORD)
        )
    )
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED")
    error = await remote(
        jps.staff.SignIn(
            pb.SignInRequest(parent="organizations/sakai", username="kimura.s", password=PASSWORD)
        )
    )
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "TENANT_MISMATCH")
    # The session itself still works at home.
    await world.console("sakai").review.ListHeldProvisions(
        review_pb2.ListHeldProvisionsRequest(parent="organizations/sakai"),
        metadata=bearer(token),
    )
    assert len(world.records("sakai")) > len(before)


# --- accounts -----------------------------------------------------------------------------------


async def test_administrator_creates_personal_accounts_only(world: World) -> None:
    token = await world.signed_in("sakai", "nakamura.a", "ADMINISTRATOR")
    staff = world.console("sakai").staff

    async def create(username: str, roles: list[Any], password: str = PASSWORD) -> Any:
        return await staff.CreateStaffAccount(
            pb.CreateStaffAccountRequest(
                parent="organizations/sakai",
                username=username,
                initial_password=password,
                roles=roles,
            ),
            metadata=bearer(token),
        )

    created = await create("kobayashi.e", [pb.STAFF_ROLE_REVIEWER, pb.STAFF_ROLE_OPERATOR])
    assert created.name == "organizations/sakai/staff/kobayashi.e"
    first = await world.sign_in("sakai", "kobayashi.e")
    assert first.password_change_required
    assert set(first.roles) == {pb.STAFF_ROLE_REVIEWER, pb.STAFF_ROLE_OPERATOR}
    made = world.records("sakai", procedure="StaffService.CreateStaffAccount", outcome="OK")
    assert [(m["actor_kind"], m["actor_id"]) for m in made] == [
        ("SYSTEM", "operator"),  # nakamura.a, made by the platform operator
        ("STAFF", "nakamura.a"),  # kobayashi.e, made by nakamura.a
    ]

    duplicate = await remote(create("kobayashi.e", [pb.STAFF_ROLE_OPERATOR]))
    assert (duplicate.code, duplicate.reason) == ("ALREADY_EXISTS", "STAFF_ACCOUNT_EXISTS")
    assert world.records("sakai", reason="STAFF_ACCOUNT_EXISTS")[0]["outcome"] == "FAILED"

    before = world.table_counts("alpha")
    bad: dict[str, list[Any]] = {
        "admin": [pb.STAFF_ROLE_OPERATOR],  # a post, not a person
        "staff01": [pb.STAFF_ROLE_OPERATOR],
        "reviewer-2": [pb.STAFF_ROLE_OPERATOR],
        "sakai": [pb.STAFF_ROLE_OPERATOR],  # the organization itself
        "Kobayashi": [pb.STAFF_ROLE_OPERATOR],
        "with space": [pb.STAFF_ROLE_OPERATOR],
        "x" * 65: [pb.STAFF_ROLE_OPERATOR],
        "": [pb.STAFF_ROLE_OPERATOR],
    }
    for username, roles in bad.items():
        error = await remote(create(username, roles))
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_USERNAME"), username
        assert error.violations[0].field == "username"
    no_roles: list[list[Any]] = [[], [pb.STAFF_ROLE_UNSPECIFIED], [99]]
    for roles in no_roles:
        error = await remote(create("mori.k", roles))
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_ROLE")
    weak = await remote(create("mori.k", [pb.STAFF_ROLE_OPERATOR], password="aaaaaaaaaaaa"))
    assert (weak.code, weak.reason) == ("INVALID_ARGUMENT", "WEAK_PASSWORD")
    assert world.table_counts("alpha") == before  # bad input: nothing written, not even a record


async def test_bad_sign_in_input_is_invalid_argument_and_writes_nothing(world: World) -> None:
    before = world.table_counts("alpha")
    for username, password in [("", PASSWORD), ("Upper", PASSWORD), ("ok.name", "")]:
        error = await remote(world.sign_in("sakai", username, password))
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_CREDENTIALS_FORMAT")
        assert error.violations
    assert world.table_counts("alpha") == before


async def test_raised_hash_parameters_apply_at_the_next_sign_in(world: World) -> None:
    alpha = world.platforms["alpha"]
    await alpha.create_staff_account("sakai", "abe.n", PASSWORD, ["OPERATOR"], must_change=False)
    alpha.staff.settings = replace(alpha.staff.settings, password_params=ScryptParams(n=2**15))
    await world.sign_in("sakai", "abe.n")
    with world.engines["alpha"].connect() as connection:
        stored = connection.execute(text("SELECT password_hash FROM server_staff_accounts"))
        [(hashed,)] = list(stored)
    assert hashed.startswith("scrypt$32768$8$1$")
    assert (await world.sign_in("sakai", "abe.n")).session_token


def test_password_hashes_keep_their_parameters() -> None:
    cheap = ScryptParams(n=2**10)
    stored = hash_password("ｐａｓｓｗｏｒｄ-ﾊﾟｽ", cheap)
    assert verify_password("ｐａｓｓｗｏｒｄ-ﾊﾟｽ", stored)
    assert not verify_password("ｐａｓｓｗｏｒｄ-ﾊﾟｽ!", stored)
    assert needs_rehash(stored, ScryptParams())
    assert not needs_rehash(stored, cheap)
    assert stored != hash_password("ｐａｓｓｗｏｒｄ-ﾊﾟｽ", cheap)  # salted
    # A tampered row never verifies and never allocates without bound.
    assert not verify_password("x", "scrypt$1073741824$8$1$AAAA$AAAA")
    assert not verify_password("x", "md5$abc")


# --- the operator's bootstrap command -------------------------------------------------------------


async def test_operator_command_creates_the_first_administrator(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    alpha = world.platforms["alpha"]
    args = [
        "create-admin",
        "--database-url",
        alpha.config.database_url,
        "--tenant",
        "sakai",
        "--username",
        "watanabe.j",
        "--data-dir",
        str(alpha.config.data_dir),
        "--platform",
        "alpha",
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli_staff.main(args) == cli_staff.EXIT_OK
    assert PASSWORD not in capsys.readouterr().out
    signed = await world.sign_in("sakai", "watanabe.j")
    assert signed.password_change_required
    assert list(signed.roles) == [pb.STAFF_ROLE_ADMINISTRATOR]
    [made] = world.records("sakai", procedure="linkage staff create-admin")
    assert (made["actor_kind"], made["actor_id"]) == ("SYSTEM", "operator")

    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli_staff.main(args) == cli_staff.EXIT_EXISTS
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli_staff.main(args) == cli_staff.EXIT_USAGE
    assert "WEAK_PASSWORD" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli_staff.main(args) == cli_staff.EXIT_USAGE
