"""Rotation of a tenant's organization signing key (署名鍵の更新), published before it is used.

Owns ``rotate_signing_key``: under the key ring's lock it takes the ring's pending next key
generation (made once and kept on disk), has it published as the tenant's current key in the
network's directory, and only then makes it current in the ring. The platform's running
servers sign with it from their next signature on (``Tenant.signer`` re-reads a ring whose file
changed); the network keeps the previous key valid for its overlap window (24 hours by default),
so envelopes signed just before still verify.

The order is what makes it safe: a key is in the directory before anything is signed with it
(a receiver that meets its id for the first time refreshes its cache), and a rotation cut short
(the process killed, the network unreachable) is finished with the same pending key when run
again (the network's rotation is idempotent for a key it already holds), so the directory never
names a key that no ring holds and a retry never rotates twice.

A publication whose answer was lost (a timeout) may have reached the network: the network then
already counts down the previous key's overlap window while the ring still signs with it, so a
rotation that did not finish must be run again soon, not left (``linkage keys`` says so). The
ring's directory lock is held through the network call (at most its timeout): a platform
starting meanwhile waits for it.

Must never: make a key current that the network has not accepted, or print or log private key
material (only key ids leave this module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from linkage.keys import KeyRing, PublicKeys

__all__ = ["Rotation", "rotate_signing_key"]


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation did: the key now current, the one it replaced, and whether it finished
    a rotation an earlier run had started."""

    key_id: str
    previous_key_id: str
    resumed: bool


def rotate_signing_key(ring: KeyRing, publish: Callable[[PublicKeys], object]) -> Rotation:
    """Rotate ``ring`` (see the module): ``publish`` puts the new public keys in the network's
    directory and raises if it could not; then the ring is left as it was, but for the pending
    key the next run publishes again."""
    with ring.locked():
        keys = ring.refresh().keys
        resumed = ring.pending_path.exists()
        new = ring.pending()
        # A run cut short after the ring was written but before the pending file was removed
        # finds its key current already: the key it replaced is the one after it.
        previous = keys[1] if keys[0].key_id == new.key_id and len(keys) > 1 else keys[0]
        publish(new.public())
        ring.promote(new)
    return Rotation(key_id=new.key_id, previous_key_id=previous.key_id, resumed=resumed)
