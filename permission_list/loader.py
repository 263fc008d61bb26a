"""The loader: permission list CSV → validated rows → ``PermissionList``.

Owns reading the dataset and refusing a bad one. Every line is checked against data/SCHEMA.md
(known ids only, dates, statuses, consistency of a law row across its lines, no tuple granted
twice); the first problem is raised as ``PermissionListError(path, line, field, reason)``, and
``validate`` returns all of them for the CLI. ``load_default`` loads the committed dataset
once per process.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Final

from permission_list import vocabulary
from permission_list.checker import PermissionList
from permission_list.model import (
    COLUMNS,
    LIST_SEPARATOR,
    STATUS_ACTIVE,
    STATUS_DELETED,
    PermissionListError,
    Row,
    is_procedure_id,
    procedure_to_label,
)

DEFAULT_PATH: Final = Path(__file__).resolve().parent / "data" / "table2.csv"
VERSION_PREFIX: Final = "table2-2015"

_ISO_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Fields every line of one law row must repeat identically.
_ROW_WIDE: Final = (
    "row_label",
    "status",
    "requesters",
    "requester_text",
    "statute",
    "affair",
    "valid_from",
    "valid_to",
    "basis_until_2024",
    "basis_from_2024",
)


def load_default() -> PermissionList:
    """The committed dataset (permission_list/data/table2.csv), loaded once per process."""
    return _load_default_cached()


@functools.cache
def _load_default_cached() -> PermissionList:
    return load(DEFAULT_PATH)


def load(path: Path) -> PermissionList:
    """Load and validate a permission list CSV; raise PermissionListError on the first bad line."""
    data = _read_bytes(path)
    result = _parse(str(path), data)
    if result.errors:
        raise result.errors[0]
    return PermissionList(result.rows, version_of(data))


def validate(path: Path) -> list[PermissionListError]:
    """Every problem in the file (empty when it is valid)."""
    try:
        data = _read_bytes(path)
    except PermissionListError as exc:
        return [exc]
    return _parse(str(path), data).errors


def version_of(data: bytes) -> str:
    """Stable content id: the same bytes always give the same version, any edit a new one."""
    return f"{VERSION_PREFIX}+sha256:{hashlib.sha256(data).hexdigest()[:12]}"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PermissionListError(str(path), 0, "file", exc.strerror or str(exc)) from exc


# --- parsing -----------------------------------------------------------------------------------


@dataclass
class _Result:
    rows: list[Row] = field(default_factory=list)
    errors: list[PermissionListError] = field(default_factory=list)


@dataclass
class _Context:
    """What later lines are checked against: earlier lines of the same law row, grants so far."""

    path: str
    result: _Result
    # procedure → (its first line, that line's fields, whether that line was free of errors)
    first_line_of: dict[str, tuple[int, dict[str, str], bool]] = field(default_factory=dict)
    last_pair: dict[str, int] = field(default_factory=dict)
    previous_procedure: str = ""
    granted_by: dict[tuple[str, str, str, str], int] = field(default_factory=dict)

    def error(self, line: int, column: str, reason: str) -> None:
        self.result.errors.append(PermissionListError(self.path, line, column, reason))


def _parse(path: str, data: bytes) -> _Result:
    result = _Result()
    context = _Context(path, result)
    try:
        # utf-8-sig: a spreadsheet may add a byte-order mark; it is not part of the header.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        context.error(data.count(b"\n", 0, exc.start) + 1, "file", "not UTF-8 text")
        return result
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        _check_header(next(reader, None), context)
        if result.errors:
            return result
        line = 1
        for record in reader:
            line += 1
            if reader.line_num != line:
                context.error(line, "line", "a quoted field spans several lines")
                line = reader.line_num
                continue
            _parse_line(line, record, context)
    except csv.Error as exc:
        context.error(reader.line_num, "line", f"not valid CSV: {exc}")
    if not result.rows and not result.errors:
        context.error(1, "file", "no rows after the header")
    return result


def _check_header(header: list[str] | None, context: _Context) -> None:
    if header is None:
        context.error(1, "header", "the file is empty")
    elif tuple(header) != COLUMNS:
        context.error(
            1, "header", f"expected columns {','.join(COLUMNS)}; found {','.join(header)}"
        )


def _parse_line(line: int, record: list[str], context: _Context) -> None:
    if not any(record):
        context.error(line, "line", "empty line")
        return
    if len(record) != len(COLUMNS):
        context.error(line, "line", f"expected {len(COLUMNS)} fields, found {len(record)}")
        return
    fields = dict(zip(COLUMNS, record, strict=True))
    before = len(context.result.errors)
    row = _build_row(line, fields, context)
    if row is None:
        return
    clean = len(context.result.errors) == before
    # Placed in its law row even when a field is bad, so later lines are not blamed for it.
    _check_law_row(line, fields, row, clean, context)
    if clean:
        _check_grants(line, row, context)
    if len(context.result.errors) == before:
        context.result.rows.append(row)


def _build_row(line: int, f: dict[str, str], context: _Context) -> Row | None:
    """Check each field on its own and build the Row (None when a field is unusable)."""
    for column, value in f.items():
        if value != value.strip():
            context.error(line, column, "leading or trailing whitespace")
    procedure = f["procedure"]
    if not is_procedure_id(procedure):
        context.error(line, "procedure", f"{procedure!r} is not a procedure id like table2:82")
        return None
    if procedure_to_label(procedure) != f["row_label"]:
        context.error(line, "row_label", f"{f['row_label']!r} is not the label of {procedure}")
    status = f["status"]
    if status not in (STATUS_ACTIVE, STATUS_DELETED):
        context.error(line, "status", f"{status!r} is neither {STATUS_ACTIVE} nor {STATUS_DELETED}")
        return None
    pair = _pair(line, f["pair"], status, context)
    active = status == STATUS_ACTIVE
    requesters = _ids(line, "requesters", f, active, vocabulary.CAPACITIES, context)
    providers = _ids(line, "providers", f, active, vocabulary.CAPACITIES, context)
    items = _ids(line, "items", f, active, vocabulary.ITEMS, context)
    for column in ("requester_text", "statute", "provider_text", "item_text"):
        if bool(f[column]) != active:
            context.error(line, column, "required" if active else "must be empty in a deleted row")
    if not f["affair"]:
        context.error(line, "affair", "required (a deleted row says 削除)")
    valid_from, valid_to = _validity(line, f, active, context)
    for column in ("basis_until_2024", "basis_from_2024"):
        if bool(f[column]) != active:
            context.error(line, column, "required" if active else "must be empty in a deleted row")
    if pair is None:
        return None
    return Row(
        procedure=procedure,
        row_label=f["row_label"],
        pair=pair,
        status=status,
        requesters=requesters,
        requester_text=f["requester_text"],
        statute=f["statute"],
        affair=f["affair"],
        providers=providers,
        provider_text=f["provider_text"],
        items=items,
        item_text=f["item_text"],
        valid_from=valid_from,
        valid_to=valid_to,
        basis_until_2024=f["basis_until_2024"],
        basis_from_2024=f["basis_from_2024"],
        line=line,
    )


def _pair(line: int, text: str, status: str, context: _Context) -> int | None:
    if not text.isdigit() or (len(text) > 1 and text.startswith("0")):
        context.error(line, "pair", f"{text!r} is not a whole number")
        return None
    pair = int(text)
    if status == STATUS_DELETED and pair != 0:
        context.error(line, "pair", "a deleted row has pair 0")
    if status == STATUS_ACTIVE and pair == 0:
        context.error(line, "pair", "pairs are numbered from 1")
    return pair


def _ids(
    line: int,
    column: str,
    f: dict[str, str],
    required: bool,
    known: Mapping[str, object],
    context: _Context,
) -> tuple[str, ...]:
    text = f[column]
    if not text:
        if required:
            context.error(line, column, "required")
        return ()
    if not required:
        context.error(line, column, "must be empty in a deleted row")
        return ()
    ids = tuple(text.split(LIST_SEPARATOR))
    for value in ids:
        if value not in known:
            context.error(line, column, f"{value!r} is not in the vocabulary")
    if len(set(ids)) != len(ids):
        context.error(line, column, "an id is listed twice")
    return ids


def _validity(
    line: int, f: dict[str, str], active: bool, context: _Context
) -> tuple[date | None, date | None]:
    valid_from = _date(line, "valid_from", f["valid_from"], context)
    valid_to = _date(line, "valid_to", f["valid_to"], context)
    if active and not f["valid_from"]:
        context.error(line, "valid_from", "required")
    if not active and (f["valid_from"] or f["valid_to"]):
        context.error(line, "valid_from", "a deleted row has no validity dates")
    if valid_from and valid_to and valid_to < valid_from:
        context.error(line, "valid_to", f"{valid_to} is before valid_from {valid_from}")
    return valid_from, valid_to


def _date(line: int, column: str, text: str, context: _Context) -> date | None:
    if not text:
        return None
    parsed = parse_date(text)
    if parsed is None:
        context.error(line, column, f"{text!r} is not a date (YYYY-MM-DD)")
    return parsed


def parse_date(text: str) -> date | None:
    """A YYYY-MM-DD date, or None. (The CLI uses it too, so --on is spelled like the data.)"""
    # fromisoformat alone accepts 20240527 and week dates; the dataset uses one spelling only.
    if not _ISO_DATE.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _check_law_row(line: int, f: dict[str, str], row: Row, clean: bool, context: _Context) -> None:
    """Lines of one law row are together, numbered 1, 2, … and repeat the row-wide fields."""
    procedure = row.procedure
    first = context.first_line_of.get(procedure)
    if first is None:
        context.first_line_of[procedure] = (line, f, clean)
        if row.pair > 1:
            context.error(line, "pair", f"the first line of {procedure} must be pair 1")
    else:
        first_line, first_fields, first_clean = first
        if context.previous_procedure != procedure:
            context.error(
                line,
                "procedure",
                f"lines of {procedure} must be together (first at line {first_line})",
            )
        expected = context.last_pair.get(procedure, 0) + 1
        if row.pair != expected:
            context.error(
                line, "pair", f"expected pair {expected} of {procedure}, found {row.pair}"
            )
        # A first line with its own errors is no reference: comparing would repeat its error.
        for column in _ROW_WIDE if first_clean else ():
            if f[column] != first_fields[column]:
                context.error(line, column, f"differs from line {first_line} of the same procedure")
    context.last_pair[procedure] = row.pair
    context.previous_procedure = procedure


def _check_grants(line: int, row: Row, context: _Context) -> None:
    """A tuple granted twice would make two rows the reason for one flow: refuse it."""
    for requester in row.requesters:
        for provider in row.providers:
            for item in row.items:
                key = (requester, row.procedure, provider, item)
                earlier = context.granted_by.setdefault(key, line)
                if earlier != line:
                    context.error(
                        line,
                        "items",
                        f"{item} from {provider} is already granted by line {earlier}",
                    )
