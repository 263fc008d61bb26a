"""Converter: 番号法 別表第二 (law text) → the permission list dataset (data/table2.csv).

Owns the reproducible path from the law to the data: it reads the consolidated text of 別表第二
(one table cell per line, ``<cell> |``), splits it into rows (項) and provider pairs, maps every
phrase of the law to ids through the controlled vocabulary, and writes the CSV. Run it with
``python -m permission_list.convert`` to regenerate, ``--check`` to prove the committed CSV is
what the law text gives (exit 1 if not).

It never guesses: a phrase not in the vocabulary, a defined term used before the law defines it,
or a row whose shape is wrong stops the conversion with the row named.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

from permission_list import vocabulary
from permission_list.model import (
    COLUMNS,
    LIST_SEPARATOR,
    STATUS_ACTIVE,
    STATUS_DELETED,
    label_to_procedure,
    order_basis,
    table2_basis,
)

DATA_DIR: Final = Path(__file__).resolve().parent / "data"
DEFAULT_SOURCE: Final = DATA_DIR / "beppyo2-2015.txt"
DEFAULT_OUTPUT: Final = DATA_DIR / "table2.csv"

# The date every row of the 2015 text is taken to be in force from. The text is the table as
# amended by 平成27年法律第65号; which rows were in force on which day before information
# linkage began cannot be checked here, so one date is used for all: 2017-05-30, the day the
# network provisions (情報提供ネットワークシステム) are reported to have taken effect. Trial
# operation started in July 2017 and full operation on 2017-11-13; see data/SCHEMA.md.
VALID_FROM: Final = date(2017, 5, 30)
# No end date: 別表第二 was replaced on 2024-05-27 by 第19条第8号 and its order, which carries
# the same permissions, so rows stay valid; only their basis changes (see model.ORDER_BASIS_FROM).
VALID_TO: Final[date | None] = None

_HEADER_CELLS: Final = ("情報照会者", "事務", "情報提供者", "特定個人情報")
_ROW_START: Final = re.compile(
    r"^([一二三四五六七八九十百]+(?:の[一二三四五六七八九十]+)?)\u3000(.*)$"
)
_SUFFIX: Final = "であって主務省令で定めるもの"
_DEFINITION: Final = re.compile(r"（以下「([^」]+)」という。）$")
_DEFINITION_PAREN: Final = re.compile(r"（[^（）]*をいう。以下同じ。）")
_DELETED: Final = "削除"
_SPLITTERS: Final = ("、", "又は", "若しくは")

# A statute name at the start of an affair: a numbered act (平成八年法律第八十二号) or a name
# ending in 法/法律, followed by what follows a law's name in this table.
_NUMBERED_ACT: Final = re.compile(
    r"^((?:明治|大正|昭和|平成)[一二三四五六七八九十元]+年法律第[一二三四五六七八九十百千]+号)"
)
_STATUTE_FOLLOWERS: Final = ("による", "第", "附則", "の規定", "又は", "その他", "及び")

# Affairs that do not begin with a statute name. Row 87's affair 「中国残留邦人等支援給付等の支給
# に関する事務」 names benefits of this law (its 支援給付), so that is its statute.
_CHINA_RETURNEES_ACT: Final = (
    "中国残留邦人等の円滑な帰国の促進並びに"
    "永住帰国した中国残留邦人等及び特定配偶者の自立の支援に関する法律"
)
_STATUTE_OVERRIDES: Final = {"八十七": _CHINA_RETURNEES_ACT}


class ConversionError(ValueError):
    """The law text does not convert; the message names the row and source line."""


@dataclass(frozen=True, slots=True)
class LawRow:
    """One row (項) of the table as the text gives it: label, source line and its cells."""

    label: str
    line: int
    cells: tuple[str, ...]  # requester, affair, then provider/item pairs


@dataclass(frozen=True, slots=True)
class Record:
    """One output line before it is written (see model.COLUMNS)."""

    procedure: str
    row_label: str
    pair: int
    status: str
    requesters: tuple[str, ...]
    requester_text: str
    statute: str
    affair: str
    providers: tuple[str, ...]
    provider_text: str
    items: tuple[str, ...]
    item_text: str

    def as_csv_row(self) -> list[str]:
        active = self.status == STATUS_ACTIVE
        return [
            self.procedure,
            self.row_label,
            str(self.pair),
            self.status,
            LIST_SEPARATOR.join(self.requesters),
            self.requester_text,
            self.statute,
            self.affair,
            LIST_SEPARATOR.join(self.providers),
            self.provider_text,
            LIST_SEPARATOR.join(self.items),
            self.item_text,
            VALID_FROM.isoformat() if active else "",
            VALID_TO.isoformat() if VALID_TO and active else "",
            table2_basis(self.row_label) if active else "",
            order_basis(self.row_label) if active else "",
        ]


# --- reading the text --------------------------------------------------------------------------


def read_law_rows(text: str) -> list[LawRow]:
    """Split the table text into rows. The first four cells are the column headings."""
    cells = list(_cells(text))
    headings = tuple(cell for _, cell in cells[:4])
    if headings != _HEADER_CELLS:
        raise ConversionError(f"expected the headings {_HEADER_CELLS}, found {headings}")
    rows: list[tuple[str, int, list[str]]] = []
    for line, cell in cells[4:]:
        start = _ROW_START.match(cell)
        if start:
            rows.append((start.group(1), line, [start.group(2)]))
        elif not rows:
            raise ConversionError(f"line {line}: a cell before the first row: {cell!r}")
        else:
            rows[-1][2].append(cell)
    return [LawRow(label, line, tuple(cs)) for label, line, cs in rows]


def _cells(text: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, cell) for every ``<cell> |`` line after the table's title line."""
    lines = text.splitlines()
    if not lines or not lines[0].strip().startswith("別表第二"):
        raise ConversionError("line 1: the text does not start with 別表第二")
    for number, raw in enumerate(lines[1:], start=2):
        stripped = raw.strip()
        if not stripped:
            continue
        if not stripped.endswith("|"):
            raise ConversionError(f"line {number}: not a table cell (no trailing '|'): {raw!r}")
        # str.strip also removes the ideographic space (U+3000) that stands in for empty cells.
        yield number, stripped[:-1].strip()


# --- converting rows ---------------------------------------------------------------------------


class _Terms:
    """The law's defined terms in the order the text defines them."""

    def __init__(self) -> None:
        self.defined: dict[str, str] = {}  # term → label of the row that defines it

    def define(self, term: str, row: LawRow) -> str:
        item_id = vocabulary.ITEM_TERMS.get(term)
        if item_id is None:
            raise _row_error(row, f"the law defines 「{term}」, which the vocabulary lacks")
        self.defined.setdefault(term, row.label)
        return item_id

    def use(self, term: str, row: LawRow) -> str:
        if term not in self.defined:
            raise _row_error(row, f"「{term}」 is used before the law defines it")
        return vocabulary.ITEM_TERMS[term]


def convert_rows(rows: Sequence[LawRow]) -> list[Record]:
    """Turn the law rows into dataset records, checking the row sequence as it goes."""
    terms = _Terms()
    records: list[Record] = []
    seen: set[str] = set()
    for row in rows:
        procedure = _procedure(row)
        if procedure in seen:
            raise _row_error(row, f"row label appears twice ({procedure})")
        seen.add(procedure)
        records.extend(_convert_row(row, procedure, terms))
    return records


def _procedure(row: LawRow) -> str:
    try:
        return label_to_procedure(row.label)
    except ValueError as exc:
        raise _row_error(row, str(exc)) from exc


def _convert_row(row: LawRow, procedure: str, terms: _Terms) -> list[Record]:
    requester_text, *rest = row.cells
    if requester_text == _DELETED:
        if any(rest):
            raise _row_error(row, "a deleted row (削除) has text in its other cells")
        return [
            Record(procedure, row.label, 0, STATUS_DELETED, (), "", "", _DELETED, (), "", (), "")
        ]
    if len(rest) < 3 or len(rest) % 2 != 1:
        raise _row_error(
            row, f"expected an affair and provider/item pairs, found {len(rest)} cells"
        )
    affair, *pair_cells = rest
    requesters = capacities_of(requester_text, row)
    statute = statute_of(affair, row)
    records = []
    for index in range(0, len(pair_cells), 2):
        provider_text, item_text = pair_cells[index], pair_cells[index + 1]
        records.append(
            Record(
                procedure=procedure,
                row_label=row.label,
                pair=index // 2 + 1,
                status=STATUS_ACTIVE,
                requesters=requesters,
                requester_text=requester_text,
                statute=statute,
                affair=affair,
                providers=capacities_of(provider_text, row),
                provider_text=provider_text,
                items=items_of(item_text, row, terms),
                item_text=item_text,
            )
        )
    return records


def capacities_of(text: str, row: LawRow) -> tuple[str, ...]:
    """Map a requester or provider cell to capacity ids, or fail naming the row."""
    whole = vocabulary.CAPACITY_PHRASES.get(text)
    if whole is not None:
        return whole
    if vocabulary.OTHER_PAYER_PATTERN.match(text):
        return ("other_statutory_payer",)
    # 「医療保険者（医療保険各法（…）…をいう。以下同じ。）」: the definition does not change who
    # is named, so it is dropped before splitting (nested parentheses: innermost first).
    bare = text
    while "（" in bare:
        stripped = _DEFINITION_PAREN.sub("", bare)
        if stripped == bare:
            raise _row_error(row, f"unknown organization phrase (parenthesis): 「{text}」")
        bare = stripped
    ids: list[str] = []
    for name in _split(bare):
        capacity = vocabulary.CAPACITY_NAMES.get(name)
        if capacity is None:
            raise _row_error(row, f"unknown organization 「{name}」 in 「{text}」")
        if capacity not in ids:
            ids.append(capacity)
    return tuple(ids)


def _split(text: str) -> list[str]:
    """Split 「A、B若しくはC又はD」 into its names (no name in the vocabulary contains these)."""
    parts = [text]
    for splitter in _SPLITTERS:
        parts = [piece for part in parts for piece in part.split(splitter)]
    return parts


def statute_of(affair: str, row: LawRow) -> str:
    """The law named at the start of the affair, e.g. 高齢者の医療の確保に関する法律."""
    if row.label in _STATUTE_OVERRIDES:
        return _STATUTE_OVERRIDES[row.label]
    numbered = _NUMBERED_ACT.match(affair)
    if numbered:
        return numbered.group(1)
    # The shortest prefix ending in 法 or 法律 that is followed by what follows a law's name.
    # Names may themselves contain による (石綿による…法律), so the shortest match must also end
    # on 法/法律, which 石綿による does not.
    for end in range(1, len(affair)):
        prefix = affair[:end]
        if prefix.endswith(("法", "法律")) and affair.startswith(_STATUTE_FOLLOWERS, end):
            return prefix
    raise _row_error(row, f"no statute at the start of the affair 「{affair}」")


def items_of(text: str, row: LawRow, terms: _Terms) -> tuple[str, ...]:
    """Map an item cell (「A、B又はCであって主務省令で定めるもの」) to category ids."""
    if not text.endswith(_SUFFIX):
        raise _row_error(row, f"item cell does not end with 「{_SUFFIX}」: 「{text}」")
    ids: list[str] = []
    for piece in split_item_phrases(text[: -len(_SUFFIX)]):
        for item_id in _item_ids(piece, row, terms):
            if item_id not in ids:
                ids.append(item_id)
    return tuple(ids)


def split_item_phrases(text: str) -> list[str]:
    """Split an enumeration of items at the top level.

    An item ends with 情報 or with the law's definition of a term (「…（以下「X」という。）」);
    the enumeration joins items with 、 又は 若しくは. Inside an item those words also appear
    (「障害児福祉手当若しくは特別障害者手当」), so a split happens only right after an item's end
    and outside parentheses.
    """
    parts: list[str] = []
    depth = 0
    start = 0
    index = 0
    while index < len(text):
        char = text[index]
        depth += (char == "（") - (char == "）")
        if depth == 0 and _ends_item(text[start : index + 1]):
            splitter = next((s for s in _SPLITTERS if text.startswith(s, index + 1)), None)
            if splitter is not None:
                parts.append(text[start : index + 1])
                start = index + 1 + len(splitter)
                index = start
                continue
        index += 1
    parts.append(text[start:])
    return parts


def _ends_item(head: str) -> bool:
    return head.endswith("情報") or _DEFINITION.search(head) is not None


def _item_ids(piece: str, row: LawRow, terms: _Terms) -> tuple[str, ...]:
    definition = _DEFINITION.search(piece)
    if definition:
        return (terms.define(definition.group(1), row),)
    if piece in vocabulary.ITEM_TERMS:
        return (terms.use(piece, row),)
    mapped = vocabulary.ITEM_PHRASES.get(piece)
    if mapped is not None:
        return mapped
    if vocabulary.OTHER_BENEFIT_PATTERN.match(piece):
        return ("other_statutory_benefit",)
    raise _row_error(row, f"unknown data item phrase 「{piece}」")


def _row_error(row: LawRow, reason: str) -> ConversionError:
    return ConversionError(f"row {row.label} (source line {row.line}): {reason}")


# --- writing -----------------------------------------------------------------------------------


def render_csv(records: Sequence[Record]) -> str:
    """The dataset text: a header and one line per record, LF line ends, every field quoted
    only when needed (the csv module's minimal quoting keeps diffs readable)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record in records:
        writer.writerow(record.as_csv_row())
    return out.getvalue()


def convert_text(text: str) -> str:
    """Law text → dataset text."""
    return render_csv(convert_rows(read_law_rows(text)))


def convert_file(source: Path) -> str:
    return convert_text(source.read_text(encoding="utf-8"))


# --- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m permission_list.convert",
        description="Convert 番号法 別表第二 (law text) into the permission list CSV.",
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="law text file")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="CSV to write")
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the output file differs from what the source gives",
    )
    args = parser.parse_args(argv)
    try:
        produced = convert_file(args.source)
    except (OSError, ConversionError) as exc:
        print(f"convert: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return _check(args.output, produced)
    args.output.write_text(produced, encoding="utf-8", newline="")
    print(f"wrote {args.output} ({produced.count(chr(10)) - 1} rows)")
    return 0


def _check(output: Path, produced: str) -> int:
    try:
        committed = output.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"convert --check: {exc}", file=sys.stderr)
        return 1
    if committed == produced:
        print(f"{output} is up to date")
        return 0
    first = next(
        (
            n
            for n, (a, b) in enumerate(
                zip(committed.splitlines(), produced.splitlines(), strict=False), 1
            )
            if a != b
        ),
        min(committed.count("\n"), produced.count("\n")) + 1,
    )
    print(
        f"convert --check: {output} differs from the converter's output (first at line {first}); "
        "run python -m permission_list.convert",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
