"""The fast reader of a duplicate file (JSON lines): lines → checked, serialized rows.

The bulk import (``linkage duplicates import``) reads millions of lines; building each
``DuplicateRecord`` through ``json_format.ParseDict`` and checking it field by field through the
proto costs more than storing it. This reader takes the common shape of a line (the keys of
``server/duplicates_file.py``, content fields by their proto names with exactly the JSON type
the field needs: integers in range, strings, booleans, enums by name) straight into the typed
message, checks it with the same checks as the server's import (``server.content``), and
serializes it. Any line outside that shape (camelCase names, numbers as strings, nulls, an
unknown key or enum, a wrong type) goes through the reference reader
(``duplicates_file._record``, i.e. ``ParseDict``), so what is accepted and every error message
are the reference's own: the fast path only decides sooner.

Each row: ``(unified_number, data_item, effective_from, effective_to, content, flag)``, with
``content`` the serialized ``DataItemContent`` (plaintext, in memory only). Each error:
``FILE:LINE: field: reason``, several per line when several fields are bad.

Must never: accept a line the reference reader refuses, put a personal value into an error, or
import SQLAlchemy (it runs in the import's worker process, which must start fast).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import date
from typing import Any

from linkage.errors import FieldViolation
from linkage.v1 import common_pb2, intermediate_server_pb2
from server.content import (
    DATA_ITEMS,
    content_quick_test,
    parse_iso_date,
    unified_number_ok,
    unified_number_problem,
    value_violations,
)
from server.duplicates_file import KEYS, LineError, _record
from server.duplicates_pipeline import shard_of

# (unified_number, data_item, effective_from, effective_to, serialized content, flag)
Row = tuple[str, str, date, date | None, bytes, bool]

# A line's person without decoding it, for a line with no backslash (so no escape: every quote
# delimits a string and every key is spelled as it reads): the text of its one
# "unified_number" key. Counting excludes a repeated key (JSON keeps the last).
_NUMBER_KEY = '"unified_number"'
_NUMBER = re.compile(r'"unified_number"\s*:\s*"([^"]*)"')
_PLAIN = frozenset({int, str, bool})  # JSON values the typed constructor checks like ParseDict
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # json.loads, minus layers


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Item:
    """One data item's fast path: its message class and oneof tag."""

    __slots__ = ("booleans", "clean", "message", "tag")

    def __init__(self, name: str) -> None:
        oneof = common_pb2.DataItemContent.DESCRIPTOR.fields_by_name[name]
        assert oneof.message_type is not None
        self.message: Callable[..., Any] = getattr(common_pb2, oneof.message_type.name)
        # The constructor takes a number for a bool field; the reference only true or false.
        self.booleans = tuple(
            field.name for field in oneof.message_type.fields if field.type == field.TYPE_BOOL
        )
        # DataItemContent holds exactly this one field: its wire form is tag, length, message.
        self.tag = _varint((oneof.number << 3) | 2)
        self.clean = content_quick_test(name)


_ITEMS = {name: _Item(name) for name in DATA_ITEMS}
_SMALL = [bytes((size,)) for size in range(128)]  # the varint of a length below 128


def _typed(item: _Item, content: dict[str, Any]) -> Any:
    """The typed message of ``content`` (not empty, values ``_PLAIN``: the caller checks) when
    it has the fast shape, else None.

    The message's constructor refuses (TypeError, ValueError) an unknown or camelCase key, a
    string or boolean for a number, a number for a string, an unknown enum name, a number out of
    range, a lone surrogate: then the reference decides. What it would take but the reference
    treats otherwise is kept out before: null (the reference clears the field), floats,
    nested values, a number for a bool, and an empty content (which sets no kind at all).
    """
    for name in item.booleans:
        if name in content and type(content[name]) is not bool:
            return None
    try:
        return item.message(**content)
    except (TypeError, ValueError):
        return None


def _reason_field(violation: FieldViolation) -> str:
    return violation.field.removeprefix("value.")


def _errors(path: str, number: int, violations: Iterable[FieldViolation]) -> list[LineError]:
    return [LineError(path, number, _reason_field(v), v.description) for v in violations]


def _fast(data: Any) -> Row | None:
    """The row of a good line of the fast shape; None to ask the reference (which also
    reports every bad line: errors are rare, and then exactly the reference's)."""
    if type(data) is not dict or not KEYS.issuperset(data):
        return None
    get = data.get
    number_text = get("unified_number", "")
    item_name = get("data_item", "")
    effective_from = get("effective_from", "")
    effective_to = get("effective_to", "")
    flag = get("auto_response_disabled", False)
    content = get("content")
    item = _ITEMS.get(item_name) if type(item_name) is str else None
    if (
        item is None
        or type(number_text) is not str
        or type(effective_from) is not str
        or type(effective_to) is not str
        or type(flag) is not bool
        or type(content) is not dict
        or not content
        or not _PLAIN.issuperset(map(type, content.values()))
    ):
        return None
    message = _typed(item, content)
    if message is None:
        return None
    start = parse_iso_date(effective_from)
    end = parse_iso_date(effective_to) if effective_to else None
    if (
        start is None
        or (effective_to and (end is None or end < start))
        or not item.clean(message)
        or not unified_number_ok(number_text)
    ):
        return None  # a bad line: the reference names every problem, exactly as ever
    body = message.SerializeToString()
    size = len(body)
    return (
        number_text,
        item_name,
        start,
        end,
        item.tag + (_SMALL[size] if size < 128 else _varint(size)) + body,
        flag,
    )


def _reference(data: Any, path: str, number: int) -> Row | list[LineError]:
    """The row (or the errors) of a line as the reference reader and the server see it."""
    record, field_name, reason = _record(data)
    if record is None:
        return [LineError(path, number, field_name, reason)]
    return record_row(record, path, number)


def record_row(
    record: intermediate_server_pb2.DuplicateRecord, path: str, number: int
) -> Row | list[LineError]:
    """A parsed record checked as the server's import checks it (``ImportBuffer``)."""
    value = record.value
    violations, start, end = value_violations(value, "value")
    problem = unified_number_problem(record.unified_number)
    if problem is not None or violations:
        bad = [FieldViolation("unified_number", problem)] if problem is not None else []
        return _errors(path, number, [*bad, *violations])
    assert start is not None
    return (
        record.unified_number,
        value.data_item,
        start,
        end,
        value.content.SerializeToString(),
        record.auto_response_disabled,
    )


def _decoded(stripped: str) -> Any:
    """The JSON value of a whole line, or raise ``json.JSONDecodeError`` (as ``json.loads``)."""
    try:
        data, end = _scan(stripped, 0)
    except (StopIteration, ValueError):
        return json.loads(stripped)  # raises with the reference message
    if end != len(stripped):
        return json.loads(stripped)
    return data


def parse_line(text: str, path: str, number: int) -> Row | list[LineError] | None:
    """One line: a row, its errors, or None for a blank or ``#`` comment line."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        data = _decoded(stripped)
    except json.JSONDecodeError as error:
        return [LineError(path, number, "line", f"not JSON ({error.msg})")]
    found = _fast(data)
    return found if found is not None else _reference(data, path, number)


def _line_shard(stripped: str, shards: int) -> int | None:
    """The owner of a line, read cheaply from its text; None when only decoding can tell."""
    if "\\" in stripped or stripped.count(_NUMBER_KEY) != 1:
        return None
    found = _NUMBER.search(stripped)
    return None if found is None else shard_of(found.group(1), shards)


def read_rows(
    handle: Iterable[str], path: str, *, start: int = 1, shard: int = 0, shards: int = 1
) -> Iterator[tuple[int, Row | list[LineError]]]:
    """(line number, row or errors) of every record line of the file, or of the lines worker
    ``shard`` of ``shards`` owns: the rows of the people ``shard_of`` gives it, and each bad
    line exactly once (by its person when the text names one plainly, else by line number).
    """
    for number, text in enumerate(handle, start=start):
        stripped = text.strip()
        if not stripped or stripped[0] == "#":
            continue
        owner = shard if shards == 1 else _line_shard(stripped, shards)
        if owner is not None and owner != shard:
            continue
        try:
            data = _decoded(stripped)
        except json.JSONDecodeError as error:
            found: Row | list[LineError] = [
                LineError(path, number, "line", f"not JSON ({error.msg})")
            ]
        else:
            row = _fast(data)
            found = row if row is not None else _reference(data, path, number)
        if owner is None:  # decoded by every worker: keep it only in its owner
            owner = number % shards if isinstance(found, list) else shard_of(found[0], shards)
            if owner != shard:
                continue
        yield number, found
