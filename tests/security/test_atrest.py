"""At-rest encryption: round trip, binding to its row, tamper evidence, blind index."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from linkage.atrest import DataKey, DataKeyRing, DecryptionError, token_key_id

NUMBER = b"123456789018"
ROW = b"ua.individual_number:row-1"


@pytest.fixture
def key() -> DataKey:
    """A fresh in-memory data key."""
    return DataKey.generate()


def test_round_trip(key: DataKey) -> None:
    token = key.encrypt(NUMBER, context=ROW)
    assert NUMBER not in token
    assert key.decrypt(token, context=ROW) == NUMBER
    assert key.decrypt(key.encrypt(b"", context=ROW), context=ROW) == b""


def test_same_plaintext_gives_different_tokens(key: DataKey) -> None:
    assert key.encrypt(NUMBER, context=ROW) != key.encrypt(NUMBER, context=ROW)


def test_token_layout(key: DataKey) -> None:
    token = key.encrypt(NUMBER, context=ROW)
    assert token[0] == 1
    assert token_key_id(token) == key.key_id
    assert len(token) == 1 + 8 + 12 + len(NUMBER) + 16


@pytest.mark.parametrize(
    "other", [b"ua.individual_number:row-2", b"ua.individual_number:row-1 ", b"tenant-b:row-1"]
)
def test_wrong_context_fails(key: DataKey, other: bytes) -> None:
    token = key.encrypt(NUMBER, context=ROW)
    with pytest.raises(DecryptionError):
        key.decrypt(token, context=other)


def test_every_bit_flip_fails(key: DataKey) -> None:
    token = key.encrypt(NUMBER, context=ROW)
    for bit in range(len(token) * 8):
        flipped = bytearray(token)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionError):
            key.decrypt(bytes(flipped), context=ROW)


@pytest.mark.parametrize("cut", [0, 1, 9, 21, 36])
def test_truncated_token_fails(key: DataKey, cut: int) -> None:
    token = key.encrypt(b"", context=ROW)  # 37 bytes: the shortest valid token
    with pytest.raises(DecryptionError):
        key.decrypt(token[:cut], context=ROW)


def test_other_key_fails(key: DataKey) -> None:
    token = key.encrypt(NUMBER, context=ROW)
    with pytest.raises(DecryptionError, match="sealed with key"):
        DataKey.generate().decrypt(token, context=ROW)


def test_empty_context_is_refused(key: DataKey) -> None:
    with pytest.raises(ValueError, match="context"):
        key.encrypt(NUMBER, context=b"")


def test_blind_index_is_deterministic_and_key_dependent(key: DataKey) -> None:
    index = key.blind_index(NUMBER)
    assert len(index) == 32
    assert key.blind_index(NUMBER) == index
    assert DataKey(bytes(32)).blind_index(NUMBER) == DataKey(bytes(32)).blind_index(NUMBER)
    assert key.blind_index(b"123456789026") != index
    assert DataKey.generate().blind_index(NUMBER) != index
    assert NUMBER not in index


def test_load_or_create_persists_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "ua.datakey"
    key = DataKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_bytes()) == 32
    again = DataKey.load_or_create(path)
    assert again.key_id == key.key_id
    assert again.decrypt(key.encrypt(NUMBER, context=ROW), context=ROW) == NUMBER
    assert again.blind_index(NUMBER) == key.blind_index(NUMBER)


def test_key_file_of_wrong_length_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "short.datakey"
    path.write_bytes(b"x" * 16)
    path.chmod(0o600)
    with pytest.raises(ValueError, match="32 bytes"):
        DataKey.load_or_create(path)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ua.datakey"
    DataKey.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        DataKey.load_or_create(path)


def test_repr_reveals_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "ua.datakey"
    key = DataKey.load_or_create(path)
    secret = path.read_bytes()
    assert secret.hex() not in repr(key)
    assert secret.hex() not in repr(DataKeyRing(key))


def test_ring_opens_old_tokens_and_seals_with_current() -> None:
    old, new = DataKey.generate(), DataKey.generate()
    old_token = old.encrypt(NUMBER, context=ROW)
    ring = DataKeyRing(new, [old])
    assert ring.decrypt(old_token, context=ROW) == NUMBER
    assert ring.needs_reencryption(old_token)
    fresh = ring.encrypt(NUMBER, context=ROW)
    assert token_key_id(fresh) == new.key_id
    assert not ring.needs_reencryption(fresh)
    assert ring.blind_index(NUMBER) == new.blind_index(NUMBER)
    with pytest.raises(DecryptionError, match="unknown key"):
        DataKeyRing(new).decrypt(old_token, context=ROW)


def test_thousands_of_operations_per_second(key: DataKey) -> None:
    count = 5000
    start = time.perf_counter()
    for i in range(count):
        context = b"row-%d" % i
        token = key.encrypt(NUMBER, context=context)
        assert key.decrypt(token, context=context) == NUMBER
        key.blind_index(NUMBER)
    elapsed = time.perf_counter() - start
    # Generous bound (a loaded CI machine); typical is well under 0.1 s.
    assert elapsed < 2.5, f"{count} round trips took {elapsed:.2f}s"
