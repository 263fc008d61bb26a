"""The intermediate server's tables (``server_*``), every one keyed by ``tenant``.

Owns the schema of: linkage codes (符号管理), duplicates (副本) and their auto-response flags,
imports (idempotency), requester query keys, queries and their results, used permit nonces,
held provisions (the review queue), and staff accounts, sessions and failed sign-ins.

Must never: hold an individual number or a resident code; hold personal data in clear (contents,
values and private keys are ``linkage.atrest`` tokens); have a table without a ``tenant`` column;
hold a password or a session token (only a scrypt hash and a sha256).
Access records live in ``linkage.records`` (ledger ``server:<org>``), not here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from linkage.db import Base

TENANT = 32  # organization code length ([a-z0-9-], at most 32)
ID = 128  # query ids, import ids, permit ids
NUMBER = 64  # unified numbers and linkage codes
ITEM = 64  # data item ids
USERNAME = 64  # staff user names


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend (SQLite drops the zone, PostgreSQL keeps it).

    Stored as naive UTC and handed back aware, so comparisons with ``datetime.now(UTC)`` never
    mix naive and aware values.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)  # type: ignore[no-any-return]

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


class LinkageCodeRow(Base):
    """One person's linkage code (符号) at one tenant: unique both ways within the tenant."""

    __tablename__ = "server_linkage_codes"
    __table_args__ = (UniqueConstraint("tenant", "linkage_code"),)

    tenant: Mapped[str] = mapped_column(String(TENANT), primary_key=True)
    unified_number: Mapped[str] = mapped_column(String(NUMBER), primary_key=True)
    linkage_code: Mapped[str] = mapped_column(String(NUMBER))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DuplicateRow(Base):
    """One version of one data item of one person (副本), its content sealed at rest.

    ``is_latest`` marks the newest version of (tenant, unified_number, data_item), so an import
    finds what it supersedes without scanning history. ``replaced_at`` is set when a newer
    version replaced this one entirely (same or earlier start); a version whose period was only
    closed (``effective_to`` set) stays in force for that period.
    """

    __tablename__ = "server_duplicates"
    __table_args__ = (
        UniqueConstraint("tenant", "unified_number", "data_item", "version"),
        Index("ix_server_duplicates_latest", "tenant", "is_latest", "data_item"),
        Index("ix_server_duplicates_effective_to", "effective_to"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(TENANT))
    unified_number: Mapped[str] = mapped_column(String(NUMBER))
    data_item: Mapped[str] = mapped_column(String(ITEM))
    version: Mapped[int] = mapped_column(Integer)
    effective_from: Mapped[date] = mapped_column(Date)
    effective_to: Mapped[date | None] = mapped_column(Date, nullable=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)  # atrest token of DataItemContent
    is_latest: Mapped[bool] = mapped_column(Boolean)
    replaced_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    import_id: Mapped[str] = mapped_column(String(ID))
    business_system: Mapped[str] = mapped_column(String(ID))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AutoResponseFlagRow(Base):
    """The auto-response-disabled flag (自動応答不可フラグ) of a person's data item.

    Kept apart from the versions so a routine re-import never clears a flag a staff member set
    (for example for a person under DV support measures): only SetAutoResponseDisabled clears.
    """

    __tablename__ = "server_auto_response_flags"

    tenant: Mapped[str] = mapped_column(String(TENANT), primary_key=True)
    unified_number: Mapped[str] = mapped_column(String(NUMBER), primary_key=True)
    data_item: Mapped[str] = mapped_column(String(ITEM), primary_key=True)
    set_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ImportRow(Base):
    """A finished duplicate import, for idempotency by (tenant, import_id)."""

    __tablename__ = "server_imports"

    tenant: Mapped[str] = mapped_column(String(TENANT), primary_key=True)
    import_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    business_system: Mapped[str] = mapped_column(String(ID))
    imported: Mapped[int] = mapped_column(Integer)
    superseded: Mapped[int] = mapped_column(Integer)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime())


class QueryKeyRow(Base):
    """A requester tenant's X25519 query key; the database holds it so replicas share it.

    ``use_until`` ends its use for new queries (rotation); ``not_after`` ends sealing to it
    (held answers) and is when the private half is purged.
    """

    __tablename__ = "server_query_keys"

    tenant: Mapped[str] = mapped_column(String(TENANT), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    private_key: Mapped[bytes] = mapped_column(LargeBinary)  # atrest token
    envelope: Mapped[bytes] = mapped_column(LargeBinary)  # serialized signed RequesterKey
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    use_until: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class QueryRow(Base):
    """One query of a requester tenant and, once answered, its result (values sealed at rest)."""

    __tablename__ = "server_queries"
    __table_args__ = (
        Index("ix_server_queries_permit", "tenant", "permit_id"),
        Index("ix_server_queries_expires_at", "expires_at"),
    )

    tenant: Mapped[str] = mapped_column(String(TENANT), primary_key=True)
    query_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    # What was asked: a retry must ask the same (sha256 of the canonical spec).
    spec_digest: Mapped[bytes] = mapped_column(LargeBinary)
    requester_capacity: Mapped[str] = mapped_column(String(ITEM))
    procedure: Mapped[str] = mapped_column(String(ITEM))
    provider: Mapped[str] = mapped_column(String(TENANT))
    data_items: Mapped[str] = mapped_column(String(1024))  # space-separated ids
    unified_number: Mapped[str] = mapped_column(String(NUMBER))
    on_date: Mapped[date] = mapped_column(Date)
    business_system: Mapped[str] = mapped_column(String(ID))
    status: Mapped[int] = mapped_column(Integer)  # linkage.v1.QueryStatus
    reason: Mapped[str] = mapped_column(String(ITEM))
    permit_id: Mapped[str] = mapped_column(String(ID))
    requester_key_id: Mapped[str] = mapped_column(String(32))
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # atrest token
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PermitNonceRow(Base):
    """A permit nonce a provider tenant has used: a second use is a replay."""

    __tablename__ = "server_permit_nonces"

    tenant: Mapped[str] = mapped_column(String(TENANT), primary_key=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    permit_id: Mapped[str] = mapped_column(String(ID))
    # After the permit expires it cannot be presented at all, so the nonce can be purged.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class HeldProvisionRow(Base):
    """A provision held for staff review (自動応答不可), with what is needed to answer late.

    ``state`` moves HELD → APPROVED or DECLINED once; ``answer_batch`` keeps the signed late
    answer so a failed delivery is retried with exactly the same bytes.
    """

    __tablename__ = "server_held_provisions"
    __table_args__ = (Index("ix_server_held_provisions_state", "tenant", "state", "held_at"),)

    tenant: Mapped[str] = mapped_column(String(TENANT), primary_key=True)
    permit_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    permit: Mapped[bytes] = mapped_column(LargeBinary)  # serialized linkage.v1.Permit
    requester_key: Mapped[bytes] = mapped_column(LargeBinary)  # serialized SignedEnvelope
    unified_number: Mapped[str] = mapped_column(String(NUMBER))
    held_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seal_deadline: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16))
    decided_by: Mapped[str] = mapped_column(String(ID), default="")
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    decision_reason: Mapped[str] = mapped_column(String(ITEM), default="")
    answer_batch: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)


class StaffAccountRow(Base):
    """A staff member's account at a tenant: one person per user name (no shared accounts).

    ``password_hash`` is ``linkage.staffauth``' stored form (scrypt, parameters included);
    ``roles`` the granted roles joined by ","; ``must_change_password`` is set for an initial
    password and cleared by ChangePassword.
    """

    __tablename__ = "server_staff_accounts"

    tenant: Mapped[str] = mapped_column(String(TENANT), primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    roles: Mapped[str] = mapped_column(String(ITEM))
    must_change_password: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(ID))
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StaffSessionRow(Base):
    """A signed-in staff session, found by the sha256 of its token (the token is never stored).

    It ends at ``expires_at`` (absolute) or after the idle timeout since ``last_used_at``,
    whichever comes first; replicas share it through the database.
    """

    __tablename__ = "server_staff_sessions"
    __table_args__ = (Index("ix_server_staff_sessions_user", "tenant", "username"),)

    token_sha256: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(TENANT))
    username: Mapped[str] = mapped_column(String(USERNAME))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class StaffSignInFailureRow(Base):
    """Recent failed sign-ins for a user name, whether or not an account has it.

    Keyed by the name tried, so an unknown user name is locked out exactly like a known one and
    the lockout tells nobody which names exist.
    """

    __tablename__ = "server_staff_sign_in_failures"

    tenant: Mapped[str] = mapped_column(String(TENANT), primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
