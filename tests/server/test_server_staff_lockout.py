"""The intermediate server's staff sign-in lockout under parallel guesses (職員認証).

Each attempt is counted before its password hash is checked, so however many guesses arrive at
once no more than ``max_failed_sign_ins`` are evaluated, and the right password among them gets
no session once the limit is passed; on SQLite, or PostgreSQL with
``LINKAGE_TEST_DATABASE=postgresql``.
"""

from __future__ import annotations

import asyncio

import pytest
from server_support import PASSWORD, World

from linkage.errors import LinkageError
from server.staff import SignedIn


async def test_parallel_guesses_evaluate_at_most_the_limit(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha = world.platforms["alpha"]
    await alpha.create_staff_account("sakai", "suzuki.m", PASSWORD, ["OPERATOR"], must_change=False)
    staff = alpha.staff
    limit = staff.settings.max_failed_sign_ins
    guesses = [f"wrong guess number {i}" for i in range(20)] + [PASSWORD]
    done = 0
    evaluated: list[str] = []
    check = staff._hasher.check

    async def counted(password: str, stored: str | None) -> bool:
        # Hold every evaluation until the attempts beyond the limit have been answered, so the
        # right password cannot slip through before they arrive (whatever the order).
        evaluated.append(password)
        for _ in range(200):
            if done >= len(guesses) - limit:
                break
            await asyncio.sleep(0.01)
        return await check(password, stored)

    monkeypatch.setattr(staff._hasher, "check", counted)

    async def attempt(password: str) -> SignedIn | LinkageError:
        nonlocal done
        try:
            return await staff.sign_in("sakai", "suzuki.m", password)
        except LinkageError as error:
            return error
        finally:
            done += 1

    results = await asyncio.gather(*(attempt(g) for g in guesses))

    assert len(evaluated) <= limit
    assert not [r for r in results if isinstance(r, SignedIn)]
    locked = [r for r in results if isinstance(r, LinkageError) and r.reason == "SIGN_IN_LOCKED"]
    assert len(locked) >= len(guesses) - limit
    with pytest.raises(LinkageError) as after:
        await staff.sign_in("sakai", "suzuki.m", PASSWORD)
    assert after.value.reason == "SIGN_IN_LOCKED"
    assert world.count("alpha", "server_staff_sessions") == 0
