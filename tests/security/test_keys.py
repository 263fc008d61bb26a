"""Organization key rings: owner-only files, stable key ids, rotation without downtime."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from nacl.exceptions import BadSignatureError
from nacl.public import SealedBox

from linkage.keys import KeyRing, OrgKey, PublicKeys, key_id, read_private_file

NAME = "org.city-13101"


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    """A not-yet-existing directory for key rings."""
    return tmp_path / "keys"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_load_or_create_persists_owner_only(key_dir: Path) -> None:
    ring = KeyRing.load_or_create(key_dir, NAME)
    assert _mode(key_dir) == 0o700
    assert _mode(ring.path) == 0o600
    assert ring.path == key_dir / f"{NAME}.keyring.json"

    again = KeyRing.load_or_create(key_dir, NAME)
    assert again.current.key_id == ring.current.key_id
    assert bytes(again.current.signing_key) == bytes(ring.current.signing_key)
    assert again.previous == ()


def test_key_id_is_sixteen_hex_of_the_public_keys(key_dir: Path) -> None:
    current = KeyRing.load_or_create(key_dir, NAME).current
    public = current.public()
    assert len(current.key_id) == 16
    int(current.key_id, 16)
    assert current.key_id == key_id(public.verify_key, public.encryption_key)


def test_rotation_keeps_previous_key(key_dir: Path) -> None:
    ring = KeyRing.load_or_create(key_dir, NAME)
    old = ring.current
    sealed_to_old = SealedBox(old.encryption_key.public_key).encrypt(b"answer")
    signed_by_old = old.signing_key.sign(b"permit")

    new = ring.rotate()
    assert ring.current is new
    assert new.key_id != old.key_id
    assert [k.key_id for k in ring.previous] == [old.key_id]

    # Anything in flight for the old key still works: no downtime.
    reloaded = KeyRing.load(key_dir, NAME)
    assert [k.key_id for k in reloaded.keys] == [new.key_id, old.key_id]
    still_old = reloaded.get(old.key_id)
    assert SealedBox(still_old.encryption_key).decrypt(sealed_to_old) == b"answer"
    published = {p.key_id: p for p in reloaded.public_keys()}
    assert published[old.key_id].nacl_verify_key().verify(signed_by_old) == b"permit"
    assert list(published) == [new.key_id, old.key_id]


def test_retire_drops_previous_but_never_current(key_dir: Path) -> None:
    ring = KeyRing.load_or_create(key_dir, NAME)
    old = ring.current
    ring.rotate()
    with pytest.raises(ValueError, match="current"):
        ring.retire(ring.current.key_id)
    ring.retire(old.key_id)
    assert ring.previous == ()
    with pytest.raises(KeyError):
        ring.get(old.key_id)
    with pytest.raises(KeyError):
        ring.retire(old.key_id)
    assert KeyRing.load(key_dir, NAME).keys[0].key_id == ring.current.key_id
    assert len(KeyRing.load(key_dir, NAME).keys) == 1


def test_rotation_by_another_process_is_not_lost(key_dir: Path) -> None:
    first = KeyRing.load_or_create(key_dir, NAME)
    second = KeyRing.load(key_dir, NAME)  # a second process holding the same ring
    a = first.rotate()
    b = second.rotate()
    ids = [k.key_id for k in KeyRing.load(key_dir, NAME).keys]
    assert ids[:2] == [b.key_id, a.key_id]
    assert len(ids) == 3


def test_public_keys_round_trip_through_json(key_dir: Path) -> None:
    public = KeyRing.load_or_create(key_dir, NAME).current.public()
    parsed = PublicKeys.from_dict(json.loads(json.dumps(public.to_dict())))
    assert parsed.key_id == public.key_id
    assert parsed.verify_key == public.verify_key
    assert parsed.encryption_key == public.encryption_key
    assert parsed.created_at == public.created_at


def test_public_keys_with_swapped_key_are_rejected(key_dir: Path) -> None:
    public = KeyRing.load_or_create(key_dir, NAME).current.public().to_dict()
    public["encryption_key"] = OrgKey.generate().public().to_dict()["encryption_key"]
    with pytest.raises(ValueError, match="does not match"):
        PublicKeys.from_dict(public)


def test_signature_by_other_key_fails(key_dir: Path) -> None:
    ring = KeyRing.load_or_create(key_dir, NAME)
    signed = OrgKey.generate().signing_key.sign(b"permit")
    with pytest.raises(BadSignatureError):
        ring.current.public().nacl_verify_key().verify(signed)


def test_repr_reveals_no_secret(key_dir: Path) -> None:
    ring = KeyRing.load_or_create(key_dir, NAME)
    seed = bytes(ring.current.signing_key)
    for text in (repr(ring), repr(ring.current), str(ring.current)):
        assert seed.hex() not in text
        assert "signing_key" not in text
        assert "encryption_key" not in text


@pytest.mark.parametrize("name", ["", "../escape", "Org", "a/b", ".hidden", "a" * 65])
def test_invalid_name_is_rejected(key_dir: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid key ring name"):
        KeyRing.load_or_create(key_dir, name)


def test_key_ring_readable_by_others_is_refused(key_dir: Path) -> None:
    ring = KeyRing.load_or_create(key_dir, NAME)
    ring.path.chmod(0o640)
    with pytest.raises(PermissionError):
        KeyRing.load(key_dir, NAME)
    with pytest.raises(PermissionError):
        read_private_file(ring.path)


def test_tampered_key_ring_is_rejected(key_dir: Path) -> None:
    ring = KeyRing.load_or_create(key_dir, NAME)
    document = json.loads(ring.path.read_text())
    document["keys"][0]["key_id"] = "0" * 16
    ring.path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="does not match"):
        KeyRing.load(key_dir, NAME)
