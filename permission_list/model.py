"""The permission list's value types: rows, decisions, errors, ids and legal-basis wording.

Owns what the converter, the loader, the checker and the CLI must agree on: the CSV columns,
the procedure id scheme (``table2:82``, ``table2:56-2``), the row label numerals (八十二,
五十六の二), the date the legal basis changed (2024-05-27) and how each basis is written.
Nothing here reads files or decides anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Final

# The columns of permission_list/data/table2.csv, in order (documented in data/SCHEMA.md).
COLUMNS: Final = (
    "procedure",
    "row_label",
    "pair",
    "status",
    "requesters",
    "requester_text",
    "statute",
    "affair",
    "providers",
    "provider_text",
    "items",
    "item_text",
    "valid_from",
    "valid_to",
    "basis_until_2024",
    "basis_from_2024",
)

LIST_SEPARATOR: Final = ";"

STATUS_ACTIVE: Final = "active"
STATUS_DELETED: Final = "deleted"  # the law keeps the row number but the row says 削除

# 番号法 別表第二 was repealed by 令和5年法律第48号; from this day the same permissions stand on
# 番号法第19条第8号 and the order made under it (「…第十九条第八号に基づく利用特定個人情報の
# 提供に関する命令」).
ORDER_BASIS_FROM: Final = date(2024, 5, 27)
TABLE2_BASIS_UNTIL: Final = date(2024, 5, 26)

# The order's article numbers could not be verified, so they are carried as unknown and said so
# in every basis string rather than guessed.
ORDER_ARTICLE_UNKNOWN: Final = "条番号 未確認"

# Decision.reason codes (machine-readable, stable: other packages map them to gRPC errors).
ALLOWED: Final = "ALLOWED"
UNKNOWN_PROCEDURE: Final = "UNKNOWN_PROCEDURE"
REQUESTER_NOT_ALLOWED: Final = "REQUESTER_NOT_ALLOWED"
PROVIDER_NOT_ALLOWED: Final = "PROVIDER_NOT_ALLOWED"
ITEM_NOT_ALLOWED: Final = "ITEM_NOT_ALLOWED"
OUTSIDE_VALIDITY: Final = "OUTSIDE_VALIDITY"
UNKNOWN_CAPACITY: Final = "UNKNOWN_CAPACITY"
UNKNOWN_ITEM: Final = "UNKNOWN_ITEM"

REASONS: Final = frozenset(
    {
        ALLOWED,
        UNKNOWN_PROCEDURE,
        REQUESTER_NOT_ALLOWED,
        PROVIDER_NOT_ALLOWED,
        ITEM_NOT_ALLOWED,
        OUTSIDE_VALIDITY,
        UNKNOWN_CAPACITY,
        UNKNOWN_ITEM,
    }
)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the dataset: one provider pair (情報提供者 and 特定個人情報) of one law row.

    A law row (項) of 別表第二 names its requesters (情報照会者) and affair (事務) once, then
    one or more pairs; every pair becomes one Row, numbered from 1 in the law's order. A deleted
    row (削除) is kept as a single Row with ``pair == 0`` and no capacities, so that every row
    number of the law is accounted for.
    """

    procedure: str  # "table2:82"
    row_label: str  # "八十二" as the law numbers it
    pair: int  # 1.. within the law row; 0 for a deleted row
    status: str  # STATUS_ACTIVE or STATUS_DELETED
    requesters: tuple[str, ...]  # capacity ids (情報照会者)
    requester_text: str  # the law's words for the requesters
    statute: str  # the law the affair is under, e.g. 高齢者の医療の確保に関する法律
    affair: str  # the affair (事務), full text
    providers: tuple[str, ...]  # capacity ids (情報提供者)
    provider_text: str
    items: tuple[str, ...]  # data item category ids (特定個人情報)
    item_text: str
    valid_from: date | None  # None only for a deleted row
    valid_to: date | None  # None: no end date known
    basis_until_2024: str  # basis up to 2024-05-26 (別表第二)
    basis_from_2024: str  # basis from 2024-05-27 (第19条第8号 and its order)
    line: int = 0  # line in the CSV it was loaded from (0 when built in memory)

    @property
    def deleted(self) -> bool:
        return self.status == STATUS_DELETED

    def basis_on(self, day: date) -> str:
        """The legal basis this row stands on at ``day`` (validity is checked elsewhere)."""
        return self.basis_until_2024 if day <= TABLE2_BASIS_UNTIL else self.basis_from_2024


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one permission check; deny-by-default, so ``allowed`` is rarely guessed."""

    allowed: bool
    reason: str  # one of REASONS
    detail: str  # one human sentence
    row: Row | None  # the dataset line that allows (or would allow) the flow
    basis: str  # legal basis in force on the checked date; "" when nothing allows the flow


class PermissionListError(ValueError):
    """A dataset line that cannot be accepted, named by file, line and field."""

    def __init__(self, path: str, line: int, field: str, reason: str) -> None:
        super().__init__(f"{path}:{line}: {field}: {reason}")
        self.path = path
        self.line = line
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[type[PermissionListError], tuple[str, int, str, str]]:
        # Exceptions with a custom __init__ need this to survive pickling (multiprocessing).
        return (type(self), (self.path, self.line, self.field, self.reason))


# --- Japanese numerals of row labels (一 … 百二十, 五十六の二) -------------------------------

_DIGITS: Final = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_LABEL_RE: Final = re.compile(r"^([一二三四五六七八九十百]+)(?:の([一二三四五六七八九十]+))?$")
_PROCEDURE_RE: Final = re.compile(r"^table2:([1-9][0-9]{0,2})(?:-([1-9][0-9]?))?$")
PROCEDURE_PREFIX: Final = "table2:"


def kanji_to_int(text: str) -> int:
    """Read a Japanese numeral below 1000 written the way laws number rows (百二十, 五十六)."""
    total = 0
    current = 0
    for ch in text:
        if ch in _DIGITS:
            if current:
                raise ValueError(f"not a row numeral: {text!r}")
            current = _DIGITS[ch]
        elif ch in ("十", "百"):
            unit = 10 if ch == "十" else 100
            if total % (unit * 10) >= unit:  # 十十, or 十 after 百 was already passed
                raise ValueError(f"not a row numeral: {text!r}")
            total += (current or 1) * unit
            current = 0
        else:
            raise ValueError(f"not a row numeral: {text!r}")
    total += current
    if total == 0:
        raise ValueError(f"not a row numeral: {text!r}")
    return total


def int_to_kanji(value: int) -> str:
    """Write 1..999 as a law numbers rows (百二十, not 一百二十)."""
    if not 0 < value < 1000:
        raise ValueError(f"row number out of range: {value}")
    names = {v: k for k, v in _DIGITS.items()}
    out = []
    for unit, mark in ((100, "百"), (10, "十")):
        digit, value = divmod(value, unit)
        if digit:
            out.append(("" if digit == 1 else names[digit]) + mark)
    if value:
        out.append(names[value])
    return "".join(out)


def label_to_procedure(label: str) -> str:
    """Row label → procedure id: 八十二 → table2:82, 五十六の二 → table2:56-2."""
    m = _LABEL_RE.match(label)
    if m is None:
        raise ValueError(f"not a row label: {label!r}")
    number = str(kanji_to_int(m.group(1)))
    if m.group(2):
        number += f"-{kanji_to_int(m.group(2))}"
    procedure = PROCEDURE_PREFIX + number
    # Only the canonical spelling is a label (十百 or 一百 would otherwise read as a number).
    if procedure_to_label(procedure) != label:
        raise ValueError(f"not a canonical row label: {label!r}")
    return procedure


def procedure_to_label(procedure: str) -> str:
    """Procedure id → row label: table2:56-2 → 五十六の二."""
    m = _PROCEDURE_RE.match(procedure)
    if m is None:
        raise ValueError(f"not a procedure id: {procedure!r}")
    label = int_to_kanji(int(m.group(1)))
    if m.group(2):
        label += "の" + int_to_kanji(int(m.group(2)))
    return label


def is_procedure_id(text: str) -> bool:
    return _PROCEDURE_RE.match(text) is not None


def normalize_procedure(text: str) -> str:
    """Accept what a person types for a row (82, 56-2, table2:82, 八十二) → ``table2:82``."""
    text = text.strip()
    if is_procedure_id(text):
        return text
    if is_procedure_id(PROCEDURE_PREFIX + text):
        return PROCEDURE_PREFIX + text
    return label_to_procedure(text)  # raises ValueError for anything else


def procedure_sort_key(procedure: str) -> tuple[int, int]:
    """Law order: 56 < 56-2 < 57."""
    m = _PROCEDURE_RE.match(procedure)
    if m is None:
        raise ValueError(f"not a procedure id: {procedure!r}")
    return int(m.group(1)), int(m.group(2) or 0)


def table2_basis(label: str) -> str:
    """The basis string up to 2024-05-26, e.g. 番号法 別表第二 第八十二項."""
    return f"番号法 別表第二 第{label}項"


def order_basis(label: str) -> str:
    """The basis string from 2024-05-27; the order's article is unknown and said to be."""
    order = "番号法第19条第8号 及び 同号に基づく命令"
    return f"{order} ({ORDER_ARTICLE_UNKNOWN}; 旧 別表第二 第{label}項)"
