"""The storing half of a bulk duplicate import: one transaction, chunks straight to the driver.

``bulk_import`` opens the tenant's transaction, checks the import id (idempotency), reads the
newest stored versions the import may supersede and sends them with the driver's value forms to
the producer (``server.duplicates_pipeline``: a forked worker, or inline), then inserts every
chunk of sealed rows as it arrives with one DBAPI ``executemany`` (no ORM object, no per-row
bind processing: the producer already made each value what the driver takes). When the stream
ends it applies what the rows supersede (stored versions by id, rows of this import already
inserted by their unique key), the auto-response flags, the import row and the access record,
and commits. A bad line anywhere, a failed worker or any error rolls the whole transaction
back: nothing is stored.

A unique-key conflict means someone committed first: the same import id (then this is a
repeat) or another import of the same people (then the import runs again on a new snapshot),
as ``DuplicateStore.store_import`` does for the RPC.

Schema note: it relies on the unique key (tenant, unified_number, data_item, version) for the
fixups and on ix_server_duplicates_latest for the snapshot; it needs no other index.

Must never: store part of an import, write a plaintext content, or clear a flag.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from linkage.atrest import DataKey
from linkage.records.model import ActorKind, Outcome, RecordEvent
from server import repository as repo
from server.duplicates_pipeline import (
    CHUNK_ROWS,
    COLUMNS,
    Chunk,
    DbForm,
    Latest,
    Message,
    Setup,
    Summary,
    produce,
)
from server.duplicates_rows import Row
from server.models import ImportRow
from server.records import Recorder, record

ATTEMPTS = 3


class Source(Protocol):
    """Where the sealed rows come from: a forked worker or ``InlineSource``."""

    def send_setup(self, setup: Setup) -> None: ...

    def messages(self) -> Iterator[Message]: ...

    def close(self, *, finished: bool = False) -> None: ...


class InlineSource:
    """The producer run in this process over rows already read and checked."""

    def __init__(self, rows: Sequence[Row], path: str, key: DataKey) -> None:
        self._rows = rows
        self._path = path
        self._key = key
        self._setup: Setup | None = None

    def send_setup(self, setup: Setup) -> None:
        self._setup = setup

    def messages(self) -> Iterator[Message]:
        found = ((index, row) for index, row in enumerate(self._rows))
        return produce(found, self._path, lambda _block: self._setup, lambda _setup: self._key)

    def close(self, *, finished: bool = False) -> None:
        self._setup = None


@dataclass(frozen=True, slots=True)
class BulkResult:
    imported: int
    superseded: int
    already_imported: bool
    errors: tuple[str, ...] = ()
    error_count: int = 0


class _Done(Exception):
    def __init__(self, result: BulkResult) -> None:
        super().__init__("import ended without storing")
        self.result = result


class WorkerFailed(RuntimeError):
    """The producer could not finish (its reason names no personal value)."""


class _Writer:
    """The statements of an import in the connection's dialect, values as its driver takes."""

    def __init__(self, connection: Connection) -> None:
        dialect = connection.dialect
        table = repo.DUPLICATES

        def processor(name: str) -> Callable[[Any], Any] | None:
            return table.c[name].type._cached_bind_processor(dialect)

        self._date = processor("effective_from")
        sample = date(2001, 2, 3)
        self.iso_dates = self._date is not None and self._date(sample) == sample.isoformat()
        self._late_dates = None if self.iso_dates else self._date
        is_latest = processor("is_latest")
        self.true = is_latest(True) if is_latest else True
        self.false = is_latest(False) if is_latest else False
        self._utc = processor("replaced_at")
        # Columns whose value the producer sends as is but this dialect still processes.
        self._residual = [
            (index, proc)
            for index, name in enumerate(COLUMNS[:3])
            if (proc := processor(name)) is not None
        ]
        if self._late_dates is not None:
            self._residual += [(3, self._late_dates), (4, self._late_dates)]
        self._strings = {
            name: processor(name) for name in ("tenant", "import_id", "business_system")
        }
        marker = "?" if dialect.paramstyle == "qmark" else "%s"
        preparer = dialect.identifier_preparer
        name = preparer.format_table(table)

        def quoted(*columns: str) -> list[str]:
            return [preparer.quote(column) for column in columns]

        self.insert = "INSERT INTO {} ({}) VALUES ({})".format(  # noqa: S608 (our schema)
            name, ", ".join(quoted(*COLUMNS)), ", ".join(marker for _ in COLUMNS)
        )
        latest, effective_to, replaced_at = quoted("is_latest", "effective_to", "replaced_at")
        setting = f"SET {latest} = {marker}, {effective_to} = {marker}, {replaced_at} = {marker}"
        self.by_id = "UPDATE {} {} WHERE {} = {} AND {} = {}".format(
            name, setting, *quoted("tenant"), marker, *quoted("id"), marker
        )
        keys = " AND ".join(
            f"{column} = {marker}"
            for column in quoted("tenant", "unified_number", "data_item", "version")
        )
        self.by_key = f"UPDATE {name} {setting} WHERE {keys}"

    def value(self, name: str, value: Any) -> Any:
        proc = self._strings.get(name)
        return proc(value) if proc is not None else value

    def utc(self, value: datetime | None) -> Any:
        return self._utc(value) if self._utc is not None and value is not None else value

    def date_value(self, value: date | None) -> Any:
        if value is None or self._date is None:
            return value
        return self._date(value)

    def form(self, tenant: str, import_id: str, business_system: str, now: datetime) -> DbForm:
        constants = (
            self.value("tenant", tenant),
            self.value("import_id", import_id),
            self.value("business_system", business_system),
            self.utc(now),
        )
        return DbForm(self.iso_dates, self.true, self.false, self.utc(now), constants)

    def insert_rows(self, connection: Connection, chunk: Chunk, form: DbForm) -> None:
        rows = chunk.rows(form)
        if self._residual:
            rows = self._processed(rows)
        connection.exec_driver_sql(self.insert, rows)

    def _processed(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Rows with this dialect's processors applied (once per distinct value) where the
        producer could not give the driver's form itself."""
        lists = [list(row) for row in rows]
        for index, proc in self._residual:
            memo: dict[Any, Any] = {}
            for row in lists:
                value = row[index]
                if value is not None:
                    if value not in memo:
                        memo[value] = proc(value)
                    row[index] = memo[value]
        return [tuple(row) for row in lists]


def latest_of(session: Session, tenant: str, keys: set[tuple[str, str]] | None) -> list[Latest]:
    """The newest stored version of ``keys`` (None: of every key of the tenant, for an import
    read while this runs: one scan of the latest-index beats per-person lookups)."""
    if keys is not None:
        found = repo.latest_versions(session, tenant, keys)
        return [(n, i, row_id, v, s, e) for (n, i), (row_id, v, s, e) in found.items()]
    table = repo.DUPLICATES
    statement = select(
        table.c.unified_number,
        table.c.data_item,
        table.c.id,
        table.c.version,
        table.c.effective_from,
        table.c.effective_to,
    ).where(table.c.tenant == tenant, table.c.is_latest)
    return [tuple(row) for row in session.execute(statement)]


@dataclass(frozen=True, slots=True)
class BulkImport:
    """One tenant's import target: where to store, how to record, whose key seals."""

    sessions: sessionmaker[Session]
    recorder: Recorder
    clock: Callable[[], datetime]
    tenant: str
    key_path: Path
    chunk_rows: int = CHUNK_ROWS

    def run(
        self,
        import_id: str,
        business_system: str,
        open_source: Callable[[], Source],
        *,
        keys: set[tuple[str, str]] | None = None,
        on_rows: Callable[[int], None] = lambda _count: None,
    ) -> BulkResult:
        """Store the import ``open_source()`` produces (a fresh source per attempt)."""
        for attempt in range(ATTEMPTS):
            source = open_source()
            finished = False
            try:
                result = self._attempt(source, import_id, business_system, keys, on_rows)
                finished = True
                return result
            except IntegrityError:
                with repo.tenant_unit_of_work(self.sessions, self.tenant) as session:
                    done = repo.find_import(session, self.tenant, import_id)
                if done is not None:
                    return BulkResult(done.imported, done.superseded, already_imported=True)
                if attempt == ATTEMPTS - 1:
                    raise
            finally:
                source.close(finished=finished)
        raise AssertionError("unreachable")

    def _attempt(
        self,
        source: Source,
        import_id: str,
        business_system: str,
        keys: set[tuple[str, str]] | None,
        on_rows: Callable[[int], None],
    ) -> BulkResult:
        now = self.clock()
        try:
            with repo.tenant_unit_of_work(self.sessions, self.tenant) as session:
                done = repo.find_import(session, self.tenant, import_id)
                connection = session.connection()
                writer = _Writer(connection)
                latest = [] if done is not None else latest_of(session, self.tenant, keys)
                form = writer.form(self.tenant, import_id, business_system, now)
                source.send_setup(
                    Setup(
                        self.tenant,
                        form,
                        latest,
                        str(self.key_path),
                        store=done is None,
                        chunk_rows=self.chunk_rows,
                    )
                )
                del latest
                summary = self._stream(source, connection, writer, form, on_rows)
                if summary.error_count or not summary.imported:
                    raise _Done(BulkResult(0, 0, False, tuple(summary.errors), summary.error_count))
                if done is not None:
                    raise _Done(BulkResult(done.imported, done.superseded, True))
                self._finish(session, connection, writer, summary, import_id, business_system, now)
                return BulkResult(summary.imported, summary.superseded, already_imported=False)
        except _Done as done_:
            return done_.result

    @staticmethod
    def _stream(
        source: Source,
        connection: Connection,
        writer: _Writer,
        form: DbForm,
        on_rows: Callable[[int], None],
    ) -> Summary:
        stored = 0
        collecting = gc.isenabled()
        gc.disable()  # chunks of acyclic tuples: the cyclic collector would only rescan them
        try:
            for kind, payload in source.messages():
                if kind == "rows":
                    writer.insert_rows(connection, payload, form)
                    stored += len(payload)
                    on_rows(stored)
                elif kind == "end":
                    assert isinstance(payload, Summary)
                    return payload
                elif kind == "failed":
                    continue  # a bad line: no more rows come, the summary says why
                else:
                    raise WorkerFailed(str(payload))
        finally:
            if collecting:
                gc.enable()
        raise WorkerFailed("the import stream ended early")

    def _finish(
        self,
        session: Session,
        connection: Connection,
        writer: _Writer,
        summary: Summary,
        import_id: str,
        business_system: str,
        now: datetime,
    ) -> None:
        tenant = writer.value("tenant", self.tenant)
        replaced_at = writer.utc(now)
        if summary.db_changes:
            connection.exec_driver_sql(
                writer.by_id,
                [
                    (
                        writer.false,
                        writer.date_value(closed),
                        replaced_at if replaced else None,
                        tenant,
                        row_id,
                    )
                    for row_id, closed, replaced in summary.db_changes
                ],
            )
        if summary.fixups:
            late = not writer.iso_dates
            connection.exec_driver_sql(
                writer.by_key,
                [
                    (
                        writer.false,
                        writer.date_value(closed) if late else closed,
                        replaced,
                        tenant,
                        number,
                        item,
                        version,
                    )
                    for closed, replaced, number, item, version in summary.fixups
                ],
            )
        repo.set_flags(session, self.tenant, summary.flagged, now)
        repo.add_import(
            session,
            ImportRow(
                tenant=self.tenant,
                import_id=import_id,
                business_system=business_system,
                imported=summary.imported,
                superseded=summary.superseded,
                finished_at=now,
            ),
        )
        self.recorder.append(
            session,
            [
                record(
                    tenant=self.tenant,
                    at=now,
                    event=RecordEvent.DUPLICATES_IMPORTED,
                    outcome=Outcome.OK,
                    actor_kind=ActorKind.BUSINESS_SYSTEM,
                    actor_id=business_system or "unknown",
                    data_items=sorted(summary.data_items),
                    reason="",
                )
            ],
        )
