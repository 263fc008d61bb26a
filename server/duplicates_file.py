"""The duplicate file format (JSON lines) for bulk import, export and reconciliation.

One duplicate per line; blank lines and lines starting with ``#`` are skipped::

    {"unified_number": "U0000001", "data_item": "local_tax",
     "effective_from": "2026-06-01", "effective_to": "",
     "auto_response_disabled": false,
     "content": {"fiscal_year": 2026, "assessing_municipality": "sakai",
                 "total_income": 2400000, "taxable_income": 1300000,
                 "per_capita_levy": 5000, "income_levy": 130000}}

``content`` holds the fields of the typed message named by ``data_item`` (``LocalTax``,
``ResidentRecord``, ``PensionBenefit``, ``LateStageMedicalPremium``,
``SpecialCollectionNotice`` in ``proto/linkage/v1/common.proto``), in their proto JSON form
(enums by name, e.g. ``"pension_kind": "PENSION_KIND_OLD_AGE_BASIC"``). ``effective_to``,
``auto_response_disabled`` may be left out; an export adds ``"version"``, which an import ignores.

Owns reading a file into ``DuplicateRecord`` messages (each with its line number, so errors read
``FILE:LINE: field: reason``) and writing records back in the same format.

Must never: accept a key it does not know (a typo must not silently drop a field), or echo a
personal value in an error message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format

from linkage.v1 import common_pb2, intermediate_server_pb2
from server.content import DATA_ITEMS

KEYS = frozenset(
    {
        "unified_number",
        "data_item",
        "effective_from",
        "effective_to",
        "auto_response_disabled",
        "content",
        "version",
    }
)
_CONTENT_TYPES = {
    field.name: field.message_type
    for field in common_pb2.DataItemContent.DESCRIPTOR.oneofs_by_name["content"].fields
}


@dataclass(frozen=True, slots=True)
class LineError:
    """One bad line: ``FILE:LINE: field: reason``."""

    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.reason}"


def _record(data: Any) -> tuple[intermediate_server_pb2.DuplicateRecord | None, str, str]:
    """A record from one parsed line, or (None, field, reason)."""
    if not isinstance(data, dict):
        return None, "line", "must be a JSON object"
    unknown = sorted(set(data) - KEYS)
    if unknown:
        return None, unknown[0], "unknown field"
    for key in ("unified_number", "data_item", "effective_from", "effective_to"):
        if not isinstance(data.get(key, ""), str):
            return None, key, "must be a string"
    if not isinstance(data.get("auto_response_disabled", False), bool):
        return None, "auto_response_disabled", "must be true or false"
    item = data.get("data_item", "")
    if item not in DATA_ITEMS:
        return None, "data_item", "unknown data item"
    content = data.get("content")
    if not isinstance(content, dict):
        return None, "content", "must be a JSON object"
    typed = common_pb2.DataItemContent()
    try:
        json_format.ParseDict(content, getattr(typed, item))
    except json_format.ParseError as error:
        # The parser's message names the field, never the value of a valid one.
        return None, f"content.{item}", str(error).split("\n")[0][:200]
    except (SystemError, UnicodeError, ValueError, TypeError):
        # The parser itself tripped (an enum name with a lone surrogate does that to upb).
        return None, f"content.{item}", "holds a value that is not valid text"
    for key in ("unified_number", "effective_from", "effective_to"):
        if not _encodable(data.get(key, "")):
            return None, key, "must be valid text (UTF-8)"
    record = intermediate_server_pb2.DuplicateRecord(
        unified_number=data.get("unified_number", ""),
        value=common_pb2.DuplicateValue(
            data_item=item,
            content=typed,
            effective_from=data.get("effective_from", ""),
            effective_to=data.get("effective_to", ""),
        ),
        auto_response_disabled=data.get("auto_response_disabled", False),
    )
    return record, "", ""


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON can spell but UTF-8 cannot
        return False
    return True


def read_records(
    handle: TextIO, path: str
) -> Iterator[tuple[int, intermediate_server_pb2.DuplicateRecord | LineError]]:
    """(line number, record or error) for every record line of the file."""
    for number, text in enumerate(handle, start=1):
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as error:
            yield number, LineError(path, number, "line", f"not JSON ({error.msg})")
            continue
        record, field_name, reason = _record(data)
        yield number, record if record is not None else LineError(path, number, field_name, reason)


def record_dict(record: intermediate_server_pb2.DuplicateRecord) -> dict[str, Any]:
    """The file form of a record (with its version, as an export writes it)."""
    value = record.value
    kind = value.content.WhichOneof("content") or value.data_item
    content = json_format.MessageToDict(
        getattr(value.content, kind), preserving_proto_field_name=True
    )
    return {
        "unified_number": record.unified_number,
        "data_item": value.data_item,
        "effective_from": value.effective_from,
        "effective_to": value.effective_to,
        "auto_response_disabled": record.auto_response_disabled,
        "version": value.version,
        "content": content,
    }


def write_records(
    handle: TextIO, records: Iterable[intermediate_server_pb2.DuplicateRecord]
) -> int:
    count = 0
    for record in records:
        handle.write(json.dumps(record_dict(record), ensure_ascii=False, sort_keys=True) + "\n")
        count += 1
    return count


def open_text(path: Path) -> TextIO:
    return path.open("r", encoding="utf-8")
