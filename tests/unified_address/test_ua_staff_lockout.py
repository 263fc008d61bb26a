"""The unified address server's staff sign-in lockout under parallel guesses, and the purge of
ended sessions and stale failure rows; on SQLite, or PostgreSQL with
``LINKAGE_TEST_DATABASE=postgresql``.

Each attempt is counted before its password hash is checked, so however many guesses arrive at
once no more than ``max_failed_sign_ins`` are evaluated, and the right password among them gets
no session once the limit is passed.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from linkage import db
from linkage.errors import LinkageError
from linkage.records.ledger import Ledger
from linkage.staffauth import ScryptParams
from unified_address.audit import Audit
from unified_address.models import StaffSession, StaffSignInFailure
from unified_address.staff_accounts import SignedIn, StaffAccounts, StaffSettings

BACKEND = os.environ.get("LINKAGE_TEST_DATABASE", "sqlite")
POSTGRES_BASE = os.environ.get(
    "LINKAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PASSWORD = "correct horse battery"
LIMIT = 3
SETTINGS = StaffSettings(max_failed_sign_ins=LIMIT, password_params=ScryptParams(n=2**10))


@pytest.fixture
def migrated_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on the run's backend."""
    if BACKEND != "postgresql":
        url = db.sqlite_url(tmp_path / "ua.sqlite")
        db.migrate(url)
        yield url
        return
    schema = f"t_{uuid.uuid4().hex[:12]}_ua_lockout"
    admin = create_engine(POSTGRES_BASE)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = f"{POSTGRES_BASE}?options=-csearch_path%3D{schema}"
        db.migrate(url)
        yield url
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 4, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def accounts(migrated_url: str, clock: Clock) -> Iterator[StaffAccounts]:
    engine = db.make_engine(migrated_url)
    audit = Audit("sakai", Ledger(SigningKey.generate(), "k1"))
    staff = StaffAccounts(db.session_factory(engine), audit, clock, SETTINGS)
    staff.add_account("tanaka", PASSWORD, ["VIEWER"], must_change=False)
    yield staff
    engine.dispose()


async def test_parallel_guesses_evaluate_at_most_the_limit(
    accounts: StaffAccounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    guesses = [f"wrong guess number {i}" for i in range(20)] + [PASSWORD]
    done = 0
    evaluated: list[str] = []
    check = accounts._hasher.check

    async def counted(password: str, stored: str | None) -> bool:
        # Hold every evaluation until the attempts beyond the limit have been answered, so the
        # right password cannot slip through before they arrive (whatever the order).
        evaluated.append(password)
        for _ in range(200):
            if done >= len(guesses) - LIMIT:
                break
            await asyncio.sleep(0.01)
        return await check(password, stored)

    monkeypatch.setattr(accounts._hasher, "check", counted)

    async def attempt(password: str) -> SignedIn | LinkageError:
        nonlocal done
        try:
            return await accounts.sign_in("tanaka", password)
        except LinkageError as error:
            return error
        finally:
            done += 1

    results = await asyncio.gather(*(attempt(g) for g in guesses))

    assert len(evaluated) <= LIMIT
    assert not [r for r in results if isinstance(r, SignedIn)]
    locked = [r for r in results if isinstance(r, LinkageError) and r.reason == "SIGN_IN_LOCKED"]
    assert len(locked) >= len(guesses) - LIMIT
    with pytest.raises(LinkageError) as after:
        await accounts.sign_in("tanaka", PASSWORD)
    assert after.value.reason == "SIGN_IN_LOCKED"


async def test_sequential_failures_lock_and_the_lock_ends(
    accounts: StaffAccounts, clock: Clock
) -> None:
    for _ in range(LIMIT - 1):
        with pytest.raises(LinkageError):
            await accounts.sign_in("tanaka", "wrong password here")
    # Below the limit the right password still signs in, and resets the count.
    await accounts.sign_in("tanaka", PASSWORD)
    for _ in range(LIMIT):
        with pytest.raises(LinkageError) as wrong:
            await accounts.sign_in("tanaka", "wrong password here")
        assert wrong.value.reason == "INVALID_CREDENTIALS"
    with pytest.raises(LinkageError) as locked:
        await accounts.sign_in("tanaka", PASSWORD)
    assert locked.value.reason == "SIGN_IN_LOCKED"

    clock.now += SETTINGS.lockout + timedelta(seconds=1)
    assert (await accounts.sign_in("tanaka", PASSWORD)).token


async def test_purge_removes_ended_sessions_and_stale_failures(
    accounts: StaffAccounts, clock: Clock
) -> None:
    ended = await accounts.sign_in("tanaka", PASSWORD)
    with pytest.raises(LinkageError):
        await accounts.sign_in("someone-else", "wrong password here")
    clock.now += SETTINGS.session_lifetime + timedelta(seconds=1)
    live = await accounts.sign_in("tanaka", PASSWORD)
    with pytest.raises(LinkageError):
        await accounts.sign_in("recent-guess", "wrong password here")

    assert await accounts.purge_now() == (1, 1)

    def remaining(session: Session) -> tuple[int, list[str]]:
        sessions = session.scalar(select(func.count()).select_from(StaffSession))
        names = session.scalars(select(StaffSignInFailure.username)).all()
        return int(sessions or 0), list(names)

    assert accounts._transaction(remaining) == (1, ["recent-guess"])
    assert ended.token != live.token


async def test_the_app_purges_periodically(accounts: StaffAccounts, clock: Clock) -> None:
    with pytest.raises(LinkageError):
        await accounts.sign_in("someone-else", "wrong password here")
    clock.now += SETTINGS.lockout + timedelta(seconds=1)
    job = accounts.start_purge(interval=0.01)
    try:
        for _ in range(300):
            rows = accounts._transaction(
                lambda s: s.scalar(select(func.count()).select_from(StaffSignInFailure))
            )
            if rows == 0:
                break
            await asyncio.sleep(0.01)
        assert rows == 0
    finally:
        await accounts.stop_purge()
    assert job.done()
