"""Shared values and helpers of the unified address tests (imported by name: keep it unique)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

import linkage.records.models
from linkage.db import make_engine
from linkage.records.model import AccessRecord, from_micros
from unified_address.individual_number import complete
from unified_address.scope import BusinessSystemScope

ORG = "sakai"
SCOPES = (
    # 国民健康保険: asks for local tax under row 82-ish, pushes local tax.
    BusinessSystemScope(
        system="kokuho",
        capacity="municipality",
        query_procedures=frozenset({"table2:82"}),
        query_items=frozenset({"local_tax"}),
        push_items=frozenset({"local_tax"}),
    ),
    # 後期高齢者医療: asks for pensions, pushes premiums.
    BusinessSystemScope(
        system="koki",
        capacity="municipality",
        query_procedures=frozenset({"table2:80"}),
        query_items=frozenset({"pension_benefit"}),
        push_items=frozenset({"late_stage_medical_premium"}),
    ),
    # 住民記録: registers people and pushes resident records; queries nothing.
    BusinessSystemScope(
        system="juki",
        capacity="municipality",
        push_items=frozenset({"resident_record"}),
    ),
)
IDENTITIES = (
    f"ua.{ORG}",
    "platform.test",
    "registry",
    *(f"bs.{ORG}.{scope.system}" for scope in SCOPES),
    f"bs.{ORG}.rogue",  # a certificate from the CA, but not a configured system
    "bs.osaka.kokuho",  # another organization's business system
    f"staff-console.{ORG}",  # the organization's staff consoles (UnifiedAddressStaffService)
)

if TYPE_CHECKING:
    from linkage.v1.unified_address_pb2_grpc import UnifiedAddressServiceAsyncStub as Stub
else:
    Stub = Any  # the async stub type exists only for type checkers


def individual_numbers(count: int, seed: int = 7, *, nonzero_check: bool = False) -> list[str]:
    """``count`` distinct valid individual numbers, deterministic from ``seed``."""
    rng = random.Random(seed)
    found: dict[str, None] = {}
    while len(found) < count:
        number = complete(f"{rng.randrange(10**10, 10**11):011d}")
        if not (nonzero_check and number.endswith("0")):
            found[number] = None
    return list(found)


def read_records(database_url: str) -> list[AccessRecord]:
    """Every record of the ledger ``ua:sakai``, in chain order."""
    row = linkage.records.models.AccessRecordRow
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(row).where(row.ledger == f"ua:{ORG}").order_by(row.seq)
            ).all()
    finally:
        engine.dispose()
    return [
        AccessRecord(
            occurred_at=from_micros(r.occurred_at_us),
            ledger=r.ledger,
            event=r.event,
            actor_kind=r.actor_kind,
            actor_id=r.actor_id,
            outcome=r.outcome,
            procedure=r.procedure,
            requester=r.requester,
            provider=r.provider,
            data_items=tuple(filter(None, r.data_items.split(","))),
            subject=r.subject,
            permit_id=r.permit_id,
            query_id=r.query_id,
            reason=r.reason,
        )
        for r in rows
    ]
