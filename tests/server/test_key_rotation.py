"""Rotating a tenant's signing key: published at the network first, then current everywhere the
platform signs; a rotation cut short is finished with the same key. The operator command over a
running world: tests/test_key_rotation_end_to_end.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkage.errors import Unavailable
from linkage.keys import KeyRing, PublicKeys
from server.key_rotation import rotate_signing_key
from server.tenancy import Tenant


def _ring(tmp_path: Path) -> KeyRing:
    return KeyRing.load_or_create(tmp_path / "keys", "org-sakai")


def test_the_new_key_is_published_before_anything_can_sign_with_it(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    serving = KeyRing.load(tmp_path / "keys", "org-sakai")  # as a running server holds it
    before = ring.current.key_id
    published: list[PublicKeys] = []

    def publish(key: PublicKeys) -> None:
        assert serving.refresh().current.key_id == before  # not current anywhere yet
        published.append(key)

    rotation = rotate_signing_key(ring, publish)

    assert [key.key_id for key in published] == [rotation.key_id]
    assert rotation.previous_key_id == before
    assert not rotation.resumed
    assert [key.key_id for key in serving.refresh().keys] == [rotation.key_id, before]
    assert not ring.pending_path.exists()


def test_a_rotation_the_network_refused_changes_nothing_and_the_retry_uses_the_same_key(
    tmp_path: Path,
) -> None:
    ring = _ring(tmp_path)
    before = ring.current.key_id
    ring_bytes = ring.path.read_bytes()
    offered: list[str] = []

    def unreachable(key: PublicKeys) -> None:
        offered.append(key.key_id)
        raise Unavailable("NETWORK_UNAVAILABLE", "the network could not be reached")

    with pytest.raises(Unavailable):
        rotate_signing_key(ring, unreachable)
    assert ring.path.read_bytes() == ring_bytes
    assert KeyRing.load(tmp_path / "keys", "org-sakai").current.key_id == before
    assert ring.pending_path.stat().st_mode & 0o777 == 0o600  # a private key: owner only

    rotation = rotate_signing_key(ring, lambda key: offered.append(key.key_id))

    assert offered == [rotation.key_id, rotation.key_id]  # the one pending key, twice
    assert rotation.resumed
    assert KeyRing.load(tmp_path / "keys", "org-sakai").current.key_id == rotation.key_id


def test_a_tenant_signs_with_a_key_another_process_rotated(tmp_path: Path) -> None:
    from linkage.atrest import DataKey

    tenant = Tenant("sakai", ["municipality"], _ring(tmp_path), DataKey.generate())
    before = tenant.signer.key_id
    rotation = rotate_signing_key(_ring(tmp_path), lambda key: None)  # another ring object
    assert before == rotation.previous_key_id
    assert tenant.signer.key_id == rotation.key_id
    assert [key.key_id for key in tenant.public_keys()] == [rotation.key_id, before]


def test_a_run_cut_short_after_the_ring_was_written_reports_the_key_it_replaced(
    tmp_path: Path,
) -> None:
    ring = _ring(tmp_path)
    before = ring.current.key_id
    with ring.locked():  # the first run: published and written, killed before the cleanup
        new = ring.pending()
        pending_bytes = ring.pending_path.read_bytes()
        ring.promote(new)
    ring.pending_path.write_bytes(pending_bytes)
    ring.pending_path.chmod(0o600)

    rotation = rotate_signing_key(ring, lambda key: None)

    assert (rotation.key_id, rotation.previous_key_id) == (new.key_id, before)
    assert [key.key_id for key in ring.refresh().keys] == [new.key_id, before]
    assert not ring.pending_path.exists()


def test_a_ring_file_that_cannot_be_read_leaves_the_loaded_keys_signing(tmp_path: Path) -> None:
    from linkage.atrest import DataKey

    tenant = Tenant("sakai", ["municipality"], _ring(tmp_path), DataKey.generate())
    before = tenant.signer.key_id
    rotate_signing_key(_ring(tmp_path), lambda key: None)
    tenant.keyring.path.chmod(0o644)  # readable by others: refused as a key file

    assert tenant.signer.key_id == before
    tenant.keyring.path.chmod(0o600)
    assert tenant.signer.key_id != before  # read once it is readable again
