"""Cached public keys from the network directory: permit keys and organization signing keys.

Owns the verification of envelopes signed by the network (permit batches) and by other
organizations (requester keys, answer batches) with keys read from the network and cached,
refreshed when an envelope names a key id the cache does not know (rotation) or the cache is
older than its time to live. Concurrent misses for one owner share one fetch; a miss within
``min_refresh`` of the last fetch waits out the rest of that interval before fetching.

Must never: accept a key whose ``not_after`` has passed, trust a key that did not come from the
network, or fetch per envelope (that would be one round trip per query).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import timedelta

from linkage.crypto import open_envelope
from linkage.errors import NotFound
from linkage.v1 import common_pb2
from server.ports import Clock, NetworkPort

NETWORK = "network"


@dataclass(frozen=True, slots=True)
class _Entry:
    keys: dict[str, bytes]
    fetched_at: float
    extra: str = ""
    # Real (monotonic) time of the fetch, for the refetch rate limit: the injected clock may be
    # frozen or moved in tests, and waiting out the limit must end.
    fetched_mono: float = field(default_factory=time.monotonic)


class Directory:
    """Key cache over a ``NetworkPort``."""

    def __init__(
        self,
        network: NetworkPort,
        clock: Clock,
        *,
        ttl: timedelta = timedelta(minutes=5),
        min_refresh: timedelta = timedelta(seconds=1),
    ) -> None:
        self._network = network
        self._clock = clock
        self._ttl = ttl.total_seconds()
        self._min_refresh = min_refresh.total_seconds()
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _now(self) -> float:
        return self._clock().timestamp()

    def _live(self, keys: list[common_pb2.PublicKey]) -> dict[str, bytes]:
        now = self._clock()
        return {
            key.key_id: key.key
            for key in keys
            if not key.HasField("not_after") or key.not_after.ToDatetime(now.tzinfo) > now
        }

    async def _fetch(self, owner: str) -> _Entry:
        if owner == NETWORK:
            response = await self._network.network_keys()
            return _Entry(
                self._live(list(response.permit_keys)),
                self._now(),
                response.permission_list_version,
            )
        try:
            organization = await self._network.organization(owner)
        except NotFound:
            return _Entry({}, self._now())
        return _Entry(self._live(list(organization.signing_keys)), self._now())

    async def keys(self, owner: str, wanted_key_id: str = "") -> dict[str, bytes]:
        """Live keys of ``owner`` ("network" or an organization code), refreshed if needed."""
        entry = self._entries.get(owner)
        if self._fresh(entry, wanted_key_id):
            assert entry is not None
            return entry.keys
        lock = self._locks.setdefault(owner, asyncio.Lock())
        async with lock:
            entry = self._entries.get(owner)  # another waiter may have refreshed it
            if self._fresh(entry, wanted_key_id):
                assert entry is not None
                return entry.keys
            if entry is not None:
                # An unknown key id (a just-rotated key) must not turn into a fetch storm, nor be
                # answered from the stale cache: wait out the rest of the refresh interval (under
                # the lock, so concurrent misses share the one fetch after it), then fetch.
                wait = self._min_refresh - (time.monotonic() - entry.fetched_mono)
                if wait > 0:
                    await asyncio.sleep(wait)
            entry = await self._fetch(owner)
            self._entries[owner] = entry
            return entry.keys

    def _fresh(self, entry: _Entry | None, wanted_key_id: str) -> bool:
        if entry is None or self._now() - entry.fetched_at >= self._ttl:
            return False
        return not wanted_key_id or wanted_key_id in entry.keys

    async def open(self, envelope: common_pb2.SignedEnvelope, signer: str, *, reason: str) -> bytes:
        """The body of ``envelope`` if ``signer`` signed it with a current directory key."""
        keys = await self.keys(signer, envelope.key_id)
        return open_envelope(envelope, keys, expected_signer=signer, reason=reason)

    async def permission_list_version(self) -> str:
        """The version of the permission list the network checks against."""
        await self.keys(NETWORK)
        return self._entries[NETWORK].extra

    def forget(self, owner: str) -> None:
        """Drop the cache of ``owner`` (after a directory change the caller knows of)."""
        self._entries.pop(owner, None)
