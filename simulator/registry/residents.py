"""The registry's domain: loading residents, finding one by number, issuing serials.

Owns the bulk load (one transaction, the driver's ``executemany`` in chunks, upsert by resident
code so a reload after moves is safe), the lookup by blind index, and the issuance of a
processing serial: a random serial is handed with the resident code to the network
(``NetworkPort``) and recorded in the ``registry`` ledger. A failed hand-over issues nothing the
caller could use, so retrying is safe; each success is a fresh serial. A caller refused for
asking on another organization's behalf is recorded too (``ACCESS_DENIED``).

Must never: keep or log an individual number, return a resident code to the caller, or import
grpc.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from itertools import islice
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, sessionmaker

from linkage.atrest import DataKey
from linkage.db import unit_of_work
from linkage.errors import Internal, LinkageError, NotFound
from linkage.records.ledger import Ledger
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent
from simulator.registry.models import Resident
from unified_address.individual_number import InvalidIndividualNumberError, validate

LEDGER_ID = "registry"
LOAD_CHUNK = 20_000
SERIAL_BYTES = 18  # 24 URL-safe characters, 144 random bits
SERIAL_ATTEMPTS = 3
RESIDENT_CODE_RE = re.compile(r"[0-9]{11}")
MUNICIPALITY_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class SerialCollisionError(Exception):
    """The network already holds this serial for something else (a new serial is drawn)."""


class NetworkPort(Protocol):
    """How the registry hands a serial to the network (RegisterProcessingSerial)."""

    async def register_serial(self, serial: str, resident_code: str, organization: str) -> None:
        """Raises ``SerialCollisionError`` or a ``LinkageError`` (e.g. Unavailable)."""
        ...


def new_serial() -> str:
    return secrets.token_urlsafe(SERIAL_BYTES)


# --- loading ---------------------------------------------------------------------------------


_COLUMNS = ("resident_code", "number_index", "municipality")


def _rows(index: DataKey, rows: Iterable[tuple[str, str, str]]) -> Iterator[tuple[str, bytes, str]]:
    for position, (resident_code, individual_number, municipality) in enumerate(rows):
        if not RESIDENT_CODE_RE.fullmatch(resident_code):
            raise ValueError(f"row {position}: resident_code must be 11 digits")
        if not MUNICIPALITY_RE.fullmatch(municipality):
            raise ValueError(f"row {position}: municipality must be an organization code")
        try:
            validate(individual_number)
        except InvalidIndividualNumberError as error:
            raise ValueError(f"row {position}: individual_number: {error}") from None
        yield resident_code, index.blind_index(individual_number.encode("ascii")), municipality


def load_residents(
    sessions: sessionmaker[Session], index: DataKey, rows: Iterable[tuple[str, str, str]]
) -> int:
    """Upsert residents in one transaction; returns how many rows were loaded.

    A bad row raises ``ValueError`` naming its position (never its values) and nothing of the
    load is kept.
    """
    count = 0
    prepared = _rows(index, rows)
    with unit_of_work(sessions) as session:
        connection = session.connection()
        sql, positional = _upsert_sql(connection.dialect)
        while chunk := list(islice(prepared, LOAD_CHUNK)):
            # The driver's executemany straight away: a million residents must load in
            # seconds, and SQLAlchemy's per-row parameter processing would double the time.
            params: list[Any] = (
                chunk if positional else [dict(zip(_COLUMNS, r, strict=True)) for r in chunk]
            )
            connection.exec_driver_sql(sql, params)
            count += len(chunk)
    return count


def _upsert_sql(dialect: Dialect) -> tuple[str, bool]:
    """INSERT … ON CONFLICT (resident_code) DO UPDATE (a resident who moved is updated),
    compiled for ``dialect``; and whether it takes positional parameters in column order."""
    module = postgresql if dialect.name == "postgresql" else sqlite
    insert = module.insert(Resident.__table__)
    statement = insert.on_conflict_do_update(
        index_elements=["resident_code"],
        set_={
            "number_index": insert.excluded.number_index,
            "municipality": insert.excluded.municipality,
        },
    )
    compiled = statement.compile(dialect=dialect, column_keys=list(_COLUMNS))
    if compiled.positional and list(compiled.positiontup or ()) != list(_COLUMNS):
        raise RuntimeError("unexpected parameter order in the compiled upsert")
    return str(compiled), compiled.positional


def find_resident_code(sessions: sessionmaker[Session], index: DataKey, number: str) -> str:
    """The resident code of a (validated) individual number, or NOT_FOUND."""
    blind = index.blind_index(number.encode("ascii"))
    with sessions() as session:
        code = session.scalar(select(Resident.resident_code).where(Resident.number_index == blind))
    if code is None:
        raise NotFound("RESIDENT_NOT_FOUND", "no resident has this individual number")
    return code


def count_residents(sessions: sessionmaker[Session]) -> int:
    from sqlalchemy import func

    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Resident)) or 0


# --- issuing serials ---------------------------------------------------------------------------


class SerialDesk:
    """Issues processing serials: lookup, hand-over to the network, record."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        index: DataKey,
        network: NetworkPort,
        records: Ledger,
        clock: Callable[[], datetime],
    ) -> None:
        self._sessions = sessions
        self._index = index
        self._network = network
        self._records = records
        self._clock = clock

    async def issue(self, organization: str, individual_number: str) -> str:
        """A new processing serial for the person, registered at the network."""
        resident_code = await asyncio.to_thread(
            find_resident_code, self._sessions, self._index, individual_number
        )
        try:
            serial = await self._hand_over(resident_code, organization)
        except LinkageError as error:
            await asyncio.to_thread(self._record, organization, resident_code, error.reason)
            raise
        await asyncio.to_thread(self._record, organization, resident_code, "")
        return serial

    async def _hand_over(self, resident_code: str, organization: str) -> str:
        for _ in range(SERIAL_ATTEMPTS):
            serial = new_serial()
            try:
                await self._network.register_serial(serial, resident_code, organization)
            except SerialCollisionError:
                continue  # 144 random bits: only a bug or an attack gets here twice
            return serial
        raise Internal("SERIAL_COLLISION", "could not draw an unused processing serial")

    def record_refusal(self, identity: str, organization: str, reason: str) -> None:
        """Record that ``identity`` was refused asking for ``organization`` (blocking)."""
        record = AccessRecord(
            occurred_at=self._clock(),
            ledger=LEDGER_ID,
            event=RecordEvent.ACCESS_DENIED,
            actor_kind=ActorKind.ORGANIZATION if identity.startswith("ua.") else ActorKind.SYSTEM,
            actor_id=identity,
            requester=organization if MUNICIPALITY_RE.fullmatch(organization) else "",
            outcome=Outcome.DENIED,
            reason=reason,
        )
        with unit_of_work(self._sessions) as session:
            self._records.append_many(session, LEDGER_ID, [record])

    def _record(self, organization: str, resident_code: str, failure: str) -> None:
        record = AccessRecord(
            occurred_at=self._clock(),
            ledger=LEDGER_ID,
            # The serial is the first half of a code issuance (符号要求); the network records
            # the code itself when the organization obtains it.
            event=RecordEvent.FAILED if failure else RecordEvent.CODE_ISSUED,
            actor_kind=ActorKind.ORGANIZATION,
            actor_id=f"ua.{organization}",
            requester=organization,
            subject=resident_code,
            outcome=Outcome.FAILED if failure else Outcome.OK,
            reason=failure,
        )
        with unit_of_work(self._sessions) as session:
            self._records.append_many(session, LEDGER_ID, [record])
