"""The network's tables (``network_*``) on the project-wide ``linkage.db.Base``.

Owns the schema of the directory (organizations and their signing keys), the code issuance
state (processing serials, issued codes), the permits with the network's disposition of every
query, and the providers' answer batches kept as opaque bytes for idempotent redelivery.

Must never: hold a resident code (serials and codes map to a ``person_key``, a keyed hash the
resident registry cannot reproduce), or a decrypted answer (answer batches are stored exactly as
the provider signed them, never parsed for content).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from linkage.db import Base

CODE_LENGTH = 32  # organization codes: [a-z0-9-], at most 32 characters
ID_LENGTH = 128  # query ids and processing serials


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC instant on every backend.

    SQLite drops the offset of ``DateTime(timezone=True)`` and hands back naive values, which
    then fail comparisons with aware ones; this stores UTC and re-attaches it on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: pass an aware UTC instant")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Organization(Base):
    """One organization in the directory (組織): where its platform is and what it may act as."""

    __tablename__ = "network_organizations"

    code: Mapped[str] = mapped_column(String(CODE_LENGTH), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    capacities: Mapped[list[str]] = mapped_column(JSON)
    endpoint: Mapped[str] = mapped_column(String(300))
    local_government_code: Mapped[str] = mapped_column(String(6), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OrganizationKey(Base):
    """An Ed25519 signing key an organization published; the newest row is the current one.

    A rotation adds a row and sets ``not_after`` on the one it replaces, so envelopes signed
    just before the rotation still verify during the overlap window.
    """

    __tablename__ = "network_organization_keys"
    __table_args__ = (UniqueConstraint("organization", "key_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    organization: Mapped[str] = mapped_column(
        String(CODE_LENGTH), ForeignKey("network_organizations.code"), index=True
    )
    key_id: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ProcessingSerial(Base):
    """A processing serial (処理通番) the registry handed over, already turned into a person key."""

    __tablename__ = "network_processing_serials"

    serial: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    person_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    organization: Mapped[str] = mapped_column(String(CODE_LENGTH))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IssuedCode(Base):
    """A linkage code the network issued: (organization, code) → person key.

    Only issued codes are stored; a provider's code is derived again at translation time, so the
    table never needs a column that would join two organizations' codes.
    """

    __tablename__ = "network_issued_codes"

    organization: Mapped[str] = mapped_column(String(CODE_LENGTH), primary_key=True)
    linkage_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    person_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AnswerBatch(Base):
    """A provider's signed AnswerBatch, kept as the exact serialized SignedEnvelope.

    ``batch_id`` is derived from the signed bytes, so a provider retrying a delivery with the
    same bytes is recognized and nothing is stored twice.
    """

    __tablename__ = "network_answer_batches"

    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    requester: Mapped[str] = mapped_column(String(CODE_LENGTH))
    provider: Mapped[str] = mapped_column(String(CODE_LENGTH))
    kind: Mapped[str] = mapped_column(String(16))  # "answer" (ProvideAnswers) or "late"
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Permit(Base):
    """The network's disposition of one query, keyed by the requester's idempotency key.

    A row exists for every query the network accepted into a batch, permitted or not: a denial
    or failure is stored too, so a retry of the same ``query_id`` gets the same answer and is
    never routed again. ``permit_id`` is set only when a permit was issued.
    """

    __tablename__ = "network_permits"
    __table_args__ = (
        UniqueConstraint("requester", "query_id"),
        Index("ix_network_permits_answer_batch_id", "answer_batch_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    requester: Mapped[str] = mapped_column(String(CODE_LENGTH))
    query_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    request_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    permit_id: Mapped[str | None] = mapped_column(String(32), unique=True, nullable=True)
    provider: Mapped[str] = mapped_column(String(CODE_LENGTH))
    procedure: Mapped[str] = mapped_column(String(64))
    data_items: Mapped[list[str]] = mapped_column(JSON)
    # The subject at the provider (for the network's own records of late deliveries).
    provider_linkage_code: Mapped[str] = mapped_column(String(32), default="")
    status: Mapped[int] = mapped_column(Integer)  # linkage.v1.QueryStatus value
    reason: Mapped[str] = mapped_column(String(64), default="")
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    answer_batch_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("network_answer_batches.batch_id"), nullable=True
    )
    late_answer_batch_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("network_answer_batches.batch_id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
