"""The network's secret keys on disk, permit key rotation, and the token bucket."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from linkage.errors import ResourceExhausted
from simulator.network.keystore import CODE_KEY_FILE, PERSON_KEY_FILE, CodeSecrets, PermitKeys
from simulator.network.ratelimit import RateLimit, RateLimited, RateLimiter


def test_code_keys_are_owner_only_files_that_survive_a_restart(tmp_path: Path) -> None:
    first = CodeSecrets.load_or_create(tmp_path / "keys")
    again = CodeSecrets.load_or_create(tmp_path / "keys")
    assert (again.k_person, again.k_code) == (first.k_person, first.k_code)
    assert first.k_person != first.k_code
    for name in (PERSON_KEY_FILE, CODE_KEY_FILE):
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600
    assert first.k_person.hex() not in repr(first)


def test_a_code_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    CodeSecrets.load_or_create(tmp_path)
    (tmp_path / CODE_KEY_FILE).chmod(0o644)
    with pytest.raises(PermissionError):
        CodeSecrets.load_or_create(tmp_path)


def test_a_rotated_permit_key_stays_published_for_the_overlap_then_is_retired(
    tmp_path: Path,
) -> None:
    overlap = timedelta(minutes=10)
    keys = PermitKeys(tmp_path, overlap)
    now = datetime.now(UTC)
    [old] = keys.published(now)
    new = keys.rotate(now)
    assert [k.key_id for k in keys.published(now)] == [new.key_id, old.key_id]
    assert keys.signer().key_id == new.key_id
    later = now + overlap + timedelta(seconds=5)
    assert [k.key_id for k in keys.published(later)] == [new.key_id]
    newest = keys.rotate(later)
    assert keys.published(later)[0].key_id == newest.key_id
    # The generation whose window ended is gone from the ring on disk, not only unpublished.
    on_disk = [k.key_id for k in PermitKeys(tmp_path, overlap).published(now - timedelta(days=1))]
    assert newest.key_id in on_disk
    assert old.key_id not in on_disk


def test_a_rotated_permit_key_is_published_at_once_but_signs_only_after_its_activation(
    tmp_path: Path,
) -> None:
    keys = PermitKeys(tmp_path, timedelta(hours=1), activation=timedelta(seconds=5))
    now = datetime.now(UTC)
    [old] = keys.published(now)
    assert keys.signer(now).key_id == old.key_id  # a fresh ring's only key signs at once
    new = keys.rotate(now)
    assert [k.key_id for k in keys.published(now)] == [new.key_id, old.key_id]
    assert keys.signer(now + timedelta(seconds=4)).key_id == old.key_id
    assert keys.signer(now + timedelta(seconds=6)).key_id == new.key_id
    with pytest.raises(ValueError, match="overlap"):
        PermitKeys(tmp_path, timedelta(seconds=5), activation=timedelta(seconds=5))


def test_another_replica_sees_a_rotation_through_the_shared_directory(tmp_path: Path) -> None:
    one, two = PermitKeys(tmp_path, timedelta(hours=1)), PermitKeys(tmp_path, timedelta(hours=1))
    rotated = one.rotate(datetime.now(UTC))
    assert two.signer().key_id == rotated.key_id


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_refills_at_its_rate_and_caps_at_its_burst() -> None:
    time = FakeTime()
    limiter = RateLimiter(RateLimit(per_second=10, burst=20), clock=time)
    limiter.admit("org.sakai", 20)
    with pytest.raises(ResourceExhausted) as raised:
        limiter.admit("org.sakai", 1)
    assert raised.value.reason == "RATE_LIMITED"
    assert raised.value.metadata["retryAfterMs"] == "100"
    time.now += 0.5
    limiter.admit("org.sakai", 5)
    time.now += 3600
    limiter.admit("org.sakai", 20)  # refilled to the burst, not beyond
    with pytest.raises(ResourceExhausted):
        limiter.admit("org.sakai", 1)


def test_a_batch_larger_than_the_burst_passes_an_idle_bucket() -> None:
    limiter = RateLimiter(RateLimit(per_second=100, burst=1000), clock=FakeTime())
    limiter.admit("org.sakai", 5000)
    with pytest.raises(ResourceExhausted):
        limiter.admit("org.sakai", 1)


def test_only_the_first_refusal_of_a_flood_is_marked_first() -> None:
    time = FakeTime()
    limiter = RateLimiter(RateLimit(per_second=1, burst=1), clock=time)
    limiter.admit("org.sakai")
    firsts = []
    for _ in range(3):
        with pytest.raises(RateLimited) as raised:
            limiter.admit("org.sakai")
        firsts.append(raised.value.first)
    time.now += 1
    limiter.admit("org.sakai")  # admitted again: the episode is over
    with pytest.raises(RateLimited) as raised:
        limiter.admit("org.sakai")
    assert [*firsts, raised.value.first] == [True, False, False, True]
