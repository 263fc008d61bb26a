"""The duplicate store (情報提供データベース): import, versions, export, flags, in-force lookup.

Owns: validating an import as it streams in (``ImportBuffer``: compact rows, violations named by
global row index), storing a whole import in one transaction with versions (a new value of a
person's data item supersedes the old: history is kept, the version goes up by one, and the old
value's open or overlapping period is closed at the day before the new one starts, or the old
value is replaced outright when the new one starts no later), idempotency by import id, the
auto-response-disabled flags, export for reconciliation, and finding the value in force on a
date for provision.

Contents are sealed at rest with the tenant's ``DataKey``; the context names tenant, person,
item and version, so a token moved to another row does not open.

Must never: store any row of an import that has a bad row, keep a plaintext content in the
database, clear a flag on import (only ``set_auto_response_disabled`` clears), or import grpc.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from linkage.atrest import DataKey
from linkage.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted
from linkage.records.model import AccessRecord, ActorKind, Outcome, RecordEvent
from linkage.v1 import common_pb2, intermediate_server_pb2
from server import repository as repo
from server.content import DATA_ITEMS, unified_number_problem, value_violations
from server.duplicates_pipeline import content_context
from server.models import ImportRow
from server.ports import Clock
from server.records import Recorder, record
from server.tenancy import Tenant

MAX_CHUNK_RECORDS = 10_000
MAX_IMPORT_RECORDS = 5_000_000
MAX_VIOLATIONS = 100  # enough to fix a file; more would only flood the caller
EXPORT_PAGE = 1000


@dataclass(slots=True)
class StagedRow:
    """One validated record of an import, kept compact until the whole import is checked."""

    unified_number: str
    data_item: str
    effective_from: date
    effective_to: date | None
    content: bytes  # serialized DataItemContent, plaintext only in memory
    auto_response_disabled: bool


@dataclass(frozen=True, slots=True)
class ImportResult:
    imported: int
    superseded: int
    already_imported: bool


class ImportBuffer:
    """Collects an import chunk by chunk, validating each record as it arrives.

    Row indexes are global over the whole stream, so a violation names the row the sender
    counts (``records[10012].value.effective_from``).
    """

    def __init__(self, *, max_rows: int = MAX_IMPORT_RECORDS) -> None:
        self.rows: list[StagedRow] = []
        self.violations: list[FieldViolation] = []
        self.count = 0
        self._max_rows = max_rows

    def add(self, records: Sequence[intermediate_server_pb2.DuplicateRecord]) -> None:
        if len(records) > MAX_CHUNK_RECORDS:
            raise ResourceExhausted(
                "CHUNK_TOO_LARGE", f"a chunk holds at most {MAX_CHUNK_RECORDS} records"
            )
        if self.count + len(records) > self._max_rows:
            raise ResourceExhausted(
                "IMPORT_TOO_LARGE", f"an import holds at most {self._max_rows} records"
            )
        for record_ in records:
            self._add_one(record_, self.count)
            self.count += 1

    def _add_one(self, item: intermediate_server_pb2.DuplicateRecord, index: int) -> None:
        prefix = f"records[{index}]"
        number = item.unified_number
        value = item.value
        problems: list[FieldViolation] = []
        number_problem = unified_number_problem(number)
        if number_problem is not None:
            problems.append(FieldViolation(f"{prefix}.unified_number", number_problem))
        value_problems, start, end = value_violations(value, f"{prefix}.value")
        problems.extend(value_problems)
        if problems:
            room = MAX_VIOLATIONS - len(self.violations)
            self.violations.extend(problems[: max(room, 0)])
            return
        if self.violations:
            return  # the import fails anyway: stop spending memory on good rows
        assert start is not None
        self.rows.append(
            StagedRow(
                number,
                value.data_item,
                start,
                end,
                value.content.SerializeToString(),
                item.auto_response_disabled,
            )
        )

    def check(self) -> None:
        """Raise INVALID_ARGUMENT naming every bad row and field (up to a limit)."""
        if self.violations:
            first = self.violations[0]
            raise InvalidArgument(
                "INVALID_DUPLICATE",
                f"{len(self.violations)} bad field(s), first {first.field}: {first.description}",
                violations=tuple(self.violations),
            )
        if not self.rows and self.count == 0:
            raise InvalidArgument(
                "EMPTY_IMPORT",
                "an import needs at least one record",
                violations=(FieldViolation("records", "no records in the stream"),),
            )


@dataclass(frozen=True, slots=True)
class InForce:
    """The value of one data item in force on a date."""

    data_item: str
    version: int
    effective_from: date
    effective_to: date | None
    content: common_pb2.DataItemContent

    def to_value(self) -> common_pb2.DuplicateValue:
        return common_pb2.DuplicateValue(
            data_item=self.data_item,
            content=self.content,
            effective_from=self.effective_from.isoformat(),
            effective_to=self.effective_to.isoformat() if self.effective_to else "",
            version=self.version,
        )


def pick_in_force(
    versions: Iterable[tuple[int, date, date | None, bytes]], on: date
) -> tuple[int, date, date | None, bytes] | None:
    """The highest version whose period contains ``on`` (a correction beats the original)."""
    best: tuple[int, date, date | None, bytes] | None = None
    for version in versions:
        _, start, end, _ = version
        if start <= on and (end is None or on <= end) and (best is None or version[0] > best[0]):
            best = version
    return best


def open_content(
    key: DataKey, tenant: str, unified_number: str, data_item: str, version: int, token: bytes
) -> common_pb2.DataItemContent:
    plaintext = key.decrypt(
        token, context=content_context(tenant, unified_number, data_item, version)
    )
    return common_pb2.DataItemContent.FromString(plaintext)


def lookup_in_force(
    session: Session, tenant: Tenant, wanted: Sequence[tuple[str, Sequence[str], date]]
) -> list[list[InForce]]:
    """For each (unified_number, items, date): the values in force, decrypted, in item order.

    One query per ``repo.CHUNK`` people whatever the number of permits: this runs per batch.
    """
    items = {item for _, wanted_items, _ in wanted for item in wanted_items}
    versions = repo.in_force(session, tenant.code, (number for number, _, _ in wanted), items)
    found: list[list[InForce]] = []
    for number, wanted_items, on in wanted:
        values: list[InForce] = []
        for item in wanted_items:
            best = pick_in_force(versions.get((number, item), ()), on)
            if best is None:
                continue
            version, start, end, token = best
            content = open_content(tenant.data_key, tenant.code, number, item, version, token)
            values.append(InForce(item, version, start, end, content))
        found.append(values)
    return found


class DuplicateStore:
    """Imports, exports and flags of one platform's tenants."""

    def __init__(self, sessions: sessionmaker[Session], recorder: Recorder, clock: Clock) -> None:
        self._sessions = sessions
        self._recorder = recorder
        self._clock = clock

    # --- import ----------------------------------------------------------------------------

    def store_import(
        self, tenant: Tenant, import_id: str, business_system: str, rows: Sequence[StagedRow]
    ) -> ImportResult:
        """Store a validated import in one transaction (blocking: run it in a thread).

        A unique-key conflict means someone committed first: the same import id (then this is
        a repeat) or another import of the same people (then versions are worked out again).
        """
        for attempt in range(3):
            try:
                with repo.tenant_unit_of_work(self._sessions, tenant.code) as session:
                    done = repo.find_import(session, tenant.code, import_id)
                    if done is not None:
                        return ImportResult(done.imported, done.superseded, already_imported=True)
                    return self._store(session, tenant, import_id, business_system, rows)
            except IntegrityError:
                with repo.tenant_unit_of_work(self._sessions, tenant.code) as session:
                    done = repo.find_import(session, tenant.code, import_id)
                if done is not None:
                    return ImportResult(done.imported, done.superseded, already_imported=True)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _store(
        self,
        session: Session,
        tenant: Tenant,
        import_id: str,
        business_system: str,
        rows: Sequence[StagedRow],
    ) -> ImportResult:
        now = self._clock()
        keys = {(row.unified_number, row.data_item) for row in rows}
        latest = repo.latest_versions(session, tenant.code, keys)
        plan = _VersionPlan(latest, now)
        for row in rows:
            plan.add(row)
        seal = tenant.data_key.encrypt
        code = tenant.code
        closed_to, replaced_new, latest_new = plan.closed_to, plan.replaced_new, plan.latest_new
        inserts = [
            (
                row.unified_number,
                row.data_item,
                version,
                row.effective_from,
                closed_to.get(index, row.effective_to),
                seal(
                    row.content,
                    context=content_context(code, row.unified_number, row.data_item, version),
                ),
                index in latest_new,
                replaced_new.get(index),
            )
            for index, (row, version) in enumerate(zip(rows, plan.versions, strict=True))
        ]
        constants = {
            "tenant": code,
            "import_id": import_id,
            "business_system": business_system,
            "created_at": now,
        }
        repo.supersede(session, tenant.code, plan.existing_changes())
        repo.insert_duplicates(session, inserts, constants)
        flagged = {(r.unified_number, r.data_item) for r in rows if r.auto_response_disabled}
        repo.set_flags(session, tenant.code, flagged, now)
        repo.add_import(
            session,
            ImportRow(
                tenant=tenant.code,
                import_id=import_id,
                business_system=business_system,
                imported=len(rows),
                superseded=plan.superseded,
                finished_at=now,
            ),
        )
        self._recorder.append(
            session,
            [
                record(
                    tenant=tenant.code,
                    at=now,
                    event=RecordEvent.DUPLICATES_IMPORTED,
                    outcome=Outcome.OK,
                    actor_kind=ActorKind.BUSINESS_SYSTEM,
                    actor_id=business_system or "unknown",
                    data_items=sorted({row.data_item for row in rows}),
                    reason="",
                )
            ],
        )
        return ImportResult(len(rows), plan.superseded, already_imported=False)

    # --- export ----------------------------------------------------------------------------

    def export_pages(
        self,
        tenant: Tenant,
        data_item: str,
        include_history: bool,
        *,
        actor: tuple[ActorKind, str],
    ) -> Iterator[list[intermediate_server_pb2.DuplicateRecord]]:
        """Pages of the tenant's duplicates, decrypted (blocking generator: one tx per page).
        Each page is read in the transaction that records it: a DUPLICATES_EXPORTED record per
        person in it, naming ``actor`` and the person's items, so a person's disclosure shows
        who took their data out in plaintext."""
        if data_item and data_item not in DATA_ITEMS:
            raise InvalidArgument(
                "UNKNOWN_DATA_ITEM",
                "unknown data item",
                violations=(FieldViolation("data_item", "unknown data item"),),
            )
        after = 0
        while True:
            with repo.tenant_unit_of_work(self._sessions, tenant.code) as session:
                rows = repo.duplicates_page(
                    session,
                    tenant.code,
                    after_id=after,
                    limit=EXPORT_PAGE,
                    data_item=data_item,
                    include_history=include_history,
                )
                flags = repo.flags_of(session, tenant.code, {row.unified_number for row in rows})
                if rows:
                    self._recorder.append(
                        session, _export_records(tenant, rows, actor, self._clock())
                    )
            if not rows:
                return
            after = rows[-1].id
            yield [_exported(tenant, row, flags) for row in rows]

    # --- flags -----------------------------------------------------------------------------

    def set_auto_response_disabled(
        self,
        tenant: Tenant,
        unified_number: str,
        data_item: str,
        disabled: bool,
        *,
        actor: tuple[ActorKind, str],
    ) -> int:
        """Set or clear flags of a person (one item, or all the person's items when empty);
        how many changed. Every request is an AUTO_RESPONSE_FLAG_CHANGED record (reason SET or
        CLEARED, the item or none for all), changed or not: who lifted a hold matters."""
        now = self._clock()
        with repo.tenant_unit_of_work(self._sessions, tenant.code) as session:
            if not repo.person_known(session, tenant.code, unified_number):
                raise NotFound("PERSON_NOT_FOUND", "no such person in this organization")
            if not disabled:
                changed = repo.clear_flags(session, tenant.code, unified_number, data_item)
            else:
                items = (
                    [data_item]
                    if data_item
                    else repo.items_of_person(session, tenant.code, unified_number)
                )
                pairs = ((unified_number, item) for item in items)
                changed = repo.set_flags(session, tenant.code, pairs, now)
            kind, actor_id = actor
            entry = record(
                tenant=tenant.code,
                at=now,
                event=RecordEvent.AUTO_RESPONSE_FLAG_CHANGED,
                outcome=Outcome.OK,
                actor_kind=kind,
                actor_id=actor_id,
                data_items=[data_item] if data_item else [],
                subject=unified_number,
                reason="SET" if disabled else "CLEARED",
            )
            self._recorder.append(session, [entry])
            return changed


class _VersionPlan:
    """Assigns versions to an import's rows and works out what each supersedes.

    Rows of one (person, item) within the import supersede each other in stream order, so the
    plan tracks the newest version per key, whether it is already stored or new in this import.
    """

    def __init__(
        self, latest: dict[tuple[str, str], tuple[int, int, date, date | None]], now: datetime
    ) -> None:
        self._now = now
        # key → ("db", row id) or ("new", index), with version, start and (possibly closed) end.
        self._head: dict[tuple[str, str], tuple[str, int, int, date, date | None]] = {
            key: ("db", row_id, version, start, end)
            for key, (row_id, version, start, end) in latest.items()
        }
        self._db_changes: dict[int, dict[str, Any]] = {}
        self.versions: list[int] = []
        self.closed_to: dict[int, date] = {}
        self.replaced_new: dict[int, datetime] = {}
        self.latest_new: set[int] = set()
        self.superseded = 0

    def add(self, row: StagedRow) -> None:
        index = len(self.versions)
        key = (row.unified_number, row.data_item)
        head = self._head.get(key)
        version = 1
        if head is not None:
            kind, ident, head_version, start, end = head
            version = head_version + 1
            self._supersede(kind, ident, start, end, row.effective_from)
        self.versions.append(version)
        self.latest_new.add(index)
        self._head[key] = ("new", index, version, row.effective_from, row.effective_to)

    def _supersede(self, kind: str, ident: int, start: date, end: date | None, new: date) -> None:
        replaced_at: datetime | None = None
        closed: date | None = end
        if new <= start:
            replaced_at = self._now  # the new value covers the old one's whole period
            self.superseded += 1
        elif end is None or end >= new:
            closed = new - timedelta(days=1)
            self.superseded += 1
        if kind == "db":
            self._db_changes[ident] = {
                "b_id": ident,
                "v_effective_to": closed,
                "v_replaced_at": replaced_at,
            }
        else:
            self.latest_new.discard(ident)
            if closed is not None:
                self.closed_to[ident] = closed
            if replaced_at is not None:
                self.replaced_new[ident] = replaced_at

    def existing_changes(self) -> list[dict[str, Any]]:
        return list(self._db_changes.values())


def _export_records(
    tenant: Tenant, rows: Sequence[Any], actor: tuple[ActorKind, str], at: datetime
) -> list[AccessRecord]:
    """One DUPLICATES_EXPORTED record per person of a page, with the items taken out."""
    items: dict[str, set[str]] = {}
    for row in rows:
        items.setdefault(row.unified_number, set()).add(row.data_item)
    kind, actor_id = actor
    return [
        record(
            tenant=tenant.code,
            at=at,
            event=RecordEvent.DUPLICATES_EXPORTED,
            outcome=Outcome.OK,
            actor_kind=kind,
            actor_id=actor_id,
            data_items=sorted(person_items),
            subject=unified_number,
        )
        for unified_number, person_items in items.items()
    ]


def _exported(
    tenant: Tenant, row: Any, flags: set[tuple[str, str]]
) -> intermediate_server_pb2.DuplicateRecord:
    content = open_content(
        tenant.data_key, tenant.code, row.unified_number, row.data_item, row.version, row.content
    )
    return intermediate_server_pb2.DuplicateRecord(
        unified_number=row.unified_number,
        value=common_pb2.DuplicateValue(
            data_item=row.data_item,
            content=content,
            effective_from=row.effective_from.isoformat(),
            effective_to=row.effective_to.isoformat() if row.effective_to else "",
            version=row.version,
        ),
        auto_response_disabled=(row.unified_number, row.data_item) in flags,
    )
