"""Requester query keys: each tenant's rotating X25519 key that providers seal answers to.

Owns creating, rotating and finding a tenant's query key. The key lives in the database (the
private half sealed at rest with the tenant's data key) so every replica uses and can open the
same keys; it is published as a ``RequesterKey`` signed by the tenant's organization key. A key
is used for new queries for ``ttl`` and stays able to open answers until ``not_after`` (``ttl``
plus ``hold``: how long a held answer may arrive late), after which the purge deletes it.

Must never: hand out a private key outside this process, store one in clear, or seal to or
accept a key past its ``not_after``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from nacl.public import PrivateKey
from sqlalchemy.orm import Session, sessionmaker

from linkage.crypto import key_id
from linkage.v1 import common_pb2, payloads_pb2
from server import repository as repo
from server.models import QueryKeyRow
from server.ports import Clock
from server.tenancy import Tenant, Tenants


def _context(tenant: str, kid: str) -> bytes:
    return f"server.query_key|{tenant}|{kid}".encode()


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@dataclass(frozen=True, slots=True)
class QueryKey:
    """A usable query key: its id, the signed envelope to publish, and the private half."""

    tenant: str
    key_id: str
    envelope: common_pb2.SignedEnvelope
    private_key: PrivateKey
    use_until: datetime
    not_after: datetime


class QueryKeys:
    """Per-tenant query keys, cached in memory and shared through the database."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        tenants: Tenants,
        clock: Clock,
        *,
        ttl: timedelta,
        hold: timedelta,
    ) -> None:
        self._sessions = sessions
        self._tenants = tenants
        self._clock = clock
        self._ttl = ttl
        self._hold = hold
        self._current: dict[str, QueryKey] = {}
        self._by_id: dict[tuple[str, str], QueryKey] = {}

    def current(self, tenant: str) -> QueryKey:
        """The key new queries of ``tenant`` use (blocking on a cache miss: call in a thread
        or accept one short DB round trip per rotation)."""
        now = self._clock()
        cached = self._current.get(tenant)
        if cached is not None and cached.use_until > now:
            return cached
        with repo.tenant_unit_of_work(self._sessions, tenant) as session:
            row = repo.usable_query_key(session, tenant, now)
            if row is None:
                row = self._create(session, self._tenants.get(tenant), now)
            key = self._open(row)
        self._current[tenant] = key
        self._by_id[(tenant, key.key_id)] = key
        return key

    async def current_async(self, tenant: str) -> QueryKey:
        """``current`` without blocking the event loop (the database only on a cache miss)."""
        cached = self._current.get(tenant)
        if cached is not None and cached.use_until > self._clock():
            return cached
        return await asyncio.to_thread(self.current, tenant)

    async def find_async(self, tenant: str, kid: str) -> QueryKey | None:
        """``find`` without blocking the event loop (the database only on a cache miss)."""
        cached = self._by_id.get((tenant, kid))
        if cached is not None:
            return cached if cached.not_after > self._clock() else None
        return await asyncio.to_thread(self.find, tenant, kid)

    def find(self, tenant: str, kid: str) -> QueryKey | None:
        """The key ``kid`` of ``tenant`` if it can still open answers (None otherwise)."""
        now = self._clock()
        key = self._by_id.get((tenant, kid))
        if key is None:
            with repo.tenant_unit_of_work(self._sessions, tenant) as session:
                row = repo.query_key(session, tenant, kid)
                if row is None:
                    return None
                key = self._open(row)
            self._by_id[(tenant, kid)] = key
        return key if key.not_after > now else None

    def _create(self, session: Session, tenant: Tenant, now: datetime) -> QueryKeyRow:
        private = PrivateKey.generate()
        public = bytes(private.public_key)
        kid = key_id(public)
        not_after = now + self._ttl + self._hold
        body = payloads_pb2.RequesterKey(
            organization=tenant.code,
            key_id=kid,
            public_key=public,
            not_after=timestamp(not_after),
        ).SerializeToString()
        envelope = tenant.signer.sign(body)
        row = QueryKeyRow(
            tenant=tenant.code,
            key_id=kid,
            public_key=public,
            private_key=tenant.data_key.encrypt(bytes(private), context=_context(tenant.code, kid)),
            envelope=envelope.SerializeToString(),
            created_at=now,
            use_until=now + self._ttl,
            not_after=not_after,
        )
        repo.add_query_key(session, row)
        return row

    def _open(self, row: QueryKeyRow) -> QueryKey:
        tenant = self._tenants.get(row.tenant)
        secret = tenant.data_key.decrypt(row.private_key, context=_context(row.tenant, row.key_id))
        return QueryKey(
            tenant=row.tenant,
            key_id=row.key_id,
            envelope=common_pb2.SignedEnvelope.FromString(row.envelope),
            private_key=PrivateKey(secret),
            use_until=row.use_until,
            not_after=row.not_after,
        )

    def forget_expired(self) -> None:
        """Drop cached keys past ``not_after`` (after the purge deleted them)."""
        now = self._clock()
        self._by_id = {k: v for k, v in self._by_id.items() if v.not_after > now}
        self._current = {k: v for k, v in self._current.items() if v.use_until > now}
