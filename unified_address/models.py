"""Tables of the unified address server (``ua_*``) on the project-wide ``linkage.db.Base``.

Owns the storage shape of name matching (名寄せ): people by unified number with their sealed
individual number and its blind index, each business system's address numbers and the person
they are linked to, the history of staff link operations (so each is reversible), and the
queries relayed for business systems (so a result read can be recorded against its subject),
and the staff who work on it: accounts, sessions and failed sign-ins (``staff_accounts``).

Must never: hold an individual number in clear (only ``DataKey`` tokens and keyed blind
indexes), nor hold anything of another organization: one unified address server serves one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, LargeBinary, String
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from linkage.db import Base

__all__ = [
    "CodeState",
    "LinkChange",
    "LinkOperation",
    "Person",
    "PersonLink",
    "RelayedQuery",
    "StaffAccount",
    "StaffSession",
    "StaffSignInFailure",
    "UTCDateTime",
]

UNIFIED_NUMBER_LENGTH = 15


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (naive) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        utc = value.astimezone(UTC)
        # SQLite keeps no offset: store naive UTC so text order is time order.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class CodeState(StrEnum):
    """Where a person's linkage-code request (符号要求) stands, as stored."""

    NOT_REQUESTED = "NOT_REQUESTED"  # no individual number known: nothing to ask with
    PENDING = "PENDING"  # a request is in flight (stale ones are retried after a crash)
    ACQUIRED = "ACQUIRED"
    FAILED = "FAILED"


class LinkOperation(StrEnum):
    """A staff change to name matching, kept in ``ua_link_changes``."""

    LINK = "LINK"  # a waiting address number linked by hand (to a person or a new one)
    MERGE = "MERGE"  # two unified numbers found to be one person
    SPLIT = "SPLIT"  # some links of a unified number moved to a new one
    UNDO = "UNDO"  # the reversal of an earlier change


class Person(Base):
    """One person of the organization: one unified number (団体内統合宛名番号)."""

    __tablename__ = "ua_persons"

    unified_number: Mapped[str] = mapped_column(String(UNIFIED_NUMBER_LENGTH), primary_key=True)
    # DataKey token of the individual number, bound to "<org>|<unified_number>".
    individual_number_token: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Keyed HMAC of the individual number: equality lookup without decrypting every row.
    # Unique: one individual number belongs to one active person (NULLs do not collide).
    individual_number_index: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    code_state: Mapped[CodeState] = mapped_column(String(16), default=CodeState.NOT_REQUESTED)
    code_failure_reason: Mapped[str] = mapped_column(String(160), default="")
    code_attempts: Mapped[int] = mapped_column(default=0)
    code_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    code_acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set when a staff merge folded this person into another; such a row is kept (for undo)
    # but no longer active.
    merged_into: Mapped[str | None] = mapped_column(String(UNIFIED_NUMBER_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_ua_persons_code_state", "code_state"),)

    @property
    def has_individual_number(self) -> bool:
        return self.individual_number_index is not None

    @property
    def active(self) -> bool:
        return self.merged_into is None


class PersonLink(Base):
    """A business system's address number (宛名番号) and the person it is linked to.

    ``unified_number`` is NULL while the address number waits for a reviewed manual link (the
    system registered it without an individual number).
    """

    __tablename__ = "ua_address_links"

    system: Mapped[str] = mapped_column(String(32), primary_key=True)
    address_number: Mapped[str] = mapped_column(String(64), primary_key=True)
    unified_number: Mapped[str | None] = mapped_column(
        String(UNIFIED_NUMBER_LENGTH), ForeignKey("ua_persons.unified_number"), index=True
    )
    # "individual_number" (automatic) or "staff:<id>" (manual), for review and audit.
    linked_by: Mapped[str] = mapped_column(String(80), default="")
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    linked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LinkChange(Base):
    """One staff change to name matching, with what it moved, so it can be undone exactly."""

    __tablename__ = "ua_link_changes"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    operation: Mapped[LinkOperation] = mapped_column(String(8))
    staff_id: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # LINK: the person linked to; MERGE: the survivor; SPLIT: the original; UNDO: as undone.
    unified_number: Mapped[str] = mapped_column(String(UNIFIED_NUMBER_LENGTH), index=True)
    # MERGE: the absorbed person; SPLIT: the new person; LINK: unset.
    other_unified_number: Mapped[str | None] = mapped_column(String(UNIFIED_NUMBER_LENGTH))
    # The links moved, as [system, address_number] pairs.
    moved_links: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    # LINK only: whether the person was created by this link (undo then retires it).
    created_person: Mapped[bool] = mapped_column(default=False)
    note: Mapped[str] = mapped_column(String(400), default="")
    undoes: Mapped[int | None] = mapped_column(ForeignKey("ua_link_changes.id"))
    undone_by: Mapped[int | None] = mapped_column(ForeignKey("ua_link_changes.id"))


class RelayedQuery(Base):
    """A query relayed for a business system: who asked about whom, by the system's query id."""

    __tablename__ = "ua_queries"

    system: Mapped[str] = mapped_column(String(32), primary_key=True)
    query_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    unified_number: Mapped[str] = mapped_column(String(UNIFIED_NUMBER_LENGTH))
    procedure: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(64))
    data_items: Mapped[list[str]] = mapped_column(JSON)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StaffAccount(Base):
    """A staff member of the unified address server: one person per user name (no shared
    accounts). ``password_hash`` is ``linkage.staffauth``'s stored form (scrypt, parameters
    included); ``roles`` the granted roles joined by ","; ``must_change_password`` is set for an
    initial password and cleared by ChangePassword."""

    __tablename__ = "ua_staff_accounts"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    roles: Mapped[str] = mapped_column(String(64))
    must_change_password: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(128))
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StaffSession(Base):
    """A signed-in staff session, found by the sha256 of its token (the token is never stored).

    It ends at ``expires_at`` (absolute) or after the idle timeout since ``last_used_at``,
    whichever comes first; replicas share it through the database.
    """

    __tablename__ = "ua_staff_sessions"

    token_sha256: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class StaffSignInFailure(Base):
    """Recent failed sign-ins for a user name, whether or not an account has it (so the lockout
    tells nobody which names exist)."""

    __tablename__ = "ua_staff_sign_in_failures"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
