"""The loader refuses bad datasets, naming file, line, field and reason."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from permission_list_helpers import CsvRows, index_of

from permission_list import PermissionListError, load, load_default
from permission_list.loader import DEFAULT_PATH, validate
from permission_list.model import COLUMNS

Edit = Callable[[CsvRows], int]  # edits the rows in place, returns the file line expected

COLUMN = {name: i for i, name in enumerate(COLUMNS)}


def set_field(procedure: str, pair: int, column: str, value: str) -> Edit:
    def edit(rows: CsvRows) -> int:
        index = index_of(rows, procedure, pair)
        rows[index][COLUMN[column]] = value
        return index + 1

    return edit


def drop_field(rows: CsvRows) -> int:
    index = index_of(rows, "table2:82", 1)
    rows[index].pop()
    return index + 1


def duplicate_pair_as_next(rows: CsvRows) -> int:
    # table2:83 has one pair; a copy numbered 2 grants the same tuples a second time.
    index = index_of(rows, "table2:83", 1)
    copy = list(rows[index])
    copy[COLUMN["pair"]] = "2"
    rows.insert(index + 1, copy)
    return index + 2


def move_line_away(rows: CsvRows) -> int:
    # Pair 2 of table2:82 moved to the end: its procedure's lines are no longer together.
    rows.append(rows.pop(index_of(rows, "table2:82", 2)))
    return len(rows)


def skip_a_pair_number(rows: CsvRows) -> int:
    index = index_of(rows, "table2:82", 2)
    rows[index][COLUMN["pair"]] = "3"
    return index + 1


BAD_ROWS: dict[str, tuple[Edit, str, str]] = {
    "unknown requester capacity": (
        set_field("table2:82", 1, "requesters", "municipality;city_hall"),
        "requesters",
        "'city_hall' is not in the vocabulary",
    ),
    "unknown provider capacity": (
        set_field("table2:80", 2, "providers", "Municipality"),
        "providers",
        "not in the vocabulary",
    ),
    "unknown item": (
        set_field("table2:82", 1, "items", "pension"),
        "items",
        "'pension' is not in the vocabulary",
    ),
    "empty list element": (
        set_field("table2:82", 1, "items", "pension_benefit;"),
        "items",
        "not in the vocabulary",
    ),
    "id listed twice": (
        set_field("table2:82", 1, "providers", "mhlw;mhlw"),
        "providers",
        "listed twice",
    ),
    "missing items": (set_field("table2:82", 1, "items", ""), "items", "required"),
    "bad date": (set_field("table2:82", 1, "valid_from", "2017/05/30"), "valid_from", "not a date"),
    "impossible date": (
        set_field("table2:82", 1, "valid_from", "2017-02-30"),
        "valid_from",
        "not a date",
    ),
    "end before start": (
        set_field("table2:83", 1, "valid_to", "2016-01-01"),
        "valid_to",
        "before valid_from",
    ),
    "label does not match procedure": (
        set_field("table2:82", 1, "row_label", "八十三"),
        "row_label",
        "not the label of table2:82",
    ),
    "malformed procedure": (
        set_field("table2:82", 1, "procedure", "row82"),
        "procedure",
        "not a procedure id",
    ),
    "unknown status": (set_field("table2:82", 1, "status", "enabled"), "status", "neither"),
    "pair not a number": (set_field("table2:82", 1, "pair", "one"), "pair", "not a whole number"),
    "affair differs within a law row": (
        set_field("table2:82", 2, "affair", "別の事務であって主務省令で定めるもの"),
        "affair",
        "differs from line",
    ),
    "requesters differ within a law row": (
        set_field("table2:82", 2, "requesters", "regional_association"),
        "requesters",
        "differs from line",
    ),
    "deleted row with a requester": (
        set_field("table2:36", 0, "requesters", "municipality"),
        "requesters",
        "must be empty in a deleted row",
    ),
    "missing basis": (
        set_field("table2:82", 1, "basis_from_2024", ""),
        "basis_from_2024",
        "required",
    ),
    "trailing whitespace": (
        set_field("table2:82", 1, "statute", "高齢者の医療の確保に関する法律 "),
        "statute",
        "whitespace",
    ),
    "too few fields": (drop_field, "line", "expected 16 fields, found 15"),
    "tuple granted twice": (duplicate_pair_as_next, "items", "already granted by line"),
    "lines of a procedure apart": (move_line_away, "procedure", "must be together"),
    "pair numbers skip": (skip_a_pair_number, "pair", "expected pair 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_loader_rejects_a_bad_row_naming_file_line_and_field(
    case: str, committed_rows: CsvRows, write_csv: Callable[[CsvRows], Path]
) -> None:
    edit, field, reason = BAD_ROWS[case]
    line = edit(committed_rows)
    path = write_csv(committed_rows)
    with pytest.raises(PermissionListError) as caught:
        load(path)
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), line, field)
    assert reason in error.reason
    assert str(error) == f"{path}:{line}: {field}: {error.reason}"


def test_loader_rejects_a_wrong_header_on_line_1(
    committed_rows: CsvRows, write_csv: Callable[[CsvRows], Path]
) -> None:
    committed_rows[0][COLUMN["items"]] = "data_items"
    path = write_csv(committed_rows)
    with pytest.raises(PermissionListError) as caught:
        load(path)
    assert (caught.value.line, caught.value.field) == (1, "header")


def test_loader_rejects_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(PermissionListError, match=r"empty\.csv:1: header: the file is empty"):
        load(path)


def test_loader_rejects_a_header_without_rows(
    committed_rows: CsvRows, write_csv: Callable[[CsvRows], Path]
) -> None:
    with pytest.raises(PermissionListError, match="no rows after the header"):
        load(write_csv(committed_rows[:1]))


def test_loader_rejects_text_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "sjis.csv"
    path.write_bytes(DEFAULT_PATH.read_text(encoding="utf-8").encode("shift_jis", errors="replace"))
    with pytest.raises(PermissionListError) as caught:
        load(path)
    assert caught.value.field == "file"
    assert caught.value.line >= 2  # the header is ASCII; the first Japanese text is on line 2


def test_loader_rejects_a_missing_file_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(PermissionListError) as caught:
        load(path)
    assert (caught.value.path, caught.value.field) == (str(path), "file")


def test_loader_rejects_a_field_spanning_lines(
    committed_rows: CsvRows, write_csv: Callable[[CsvRows], Path]
) -> None:
    index = index_of(committed_rows, "table2:82", 1)
    committed_rows[index][COLUMN["item_text"]] = "年金給付関係情報\nであって主務省令で定めるもの"
    with pytest.raises(PermissionListError) as caught:
        load(write_csv(committed_rows))
    assert (caught.value.line, caught.value.field) == (index + 1, "line")


def test_validate_reports_every_problem_not_just_the_first(
    committed_rows: CsvRows, write_csv: Callable[[CsvRows], Path]
) -> None:
    set_field("table2:80", 1, "items", "nonsense")(committed_rows)
    set_field("table2:82", 1, "valid_from", "someday")(committed_rows)
    errors = validate(write_csv(committed_rows))
    assert [(e.field, e.line) for e in errors] == [
        ("items", index_of(committed_rows, "table2:80", 1) + 1),
        ("valid_from", index_of(committed_rows, "table2:82", 1) + 1),
    ]


def test_committed_dataset_validates_cleanly() -> None:
    assert validate(DEFAULT_PATH) == []


def test_version_is_a_stable_content_id(tmp_path: Path) -> None:
    copy = tmp_path / "copy.csv"
    shutil.copyfile(DEFAULT_PATH, copy)
    version = load_default().version
    assert re.fullmatch(r"table2-2015\+sha256:[0-9a-f]{12}", version)
    assert load(copy).version == version


def test_version_changes_when_the_data_changes(
    committed_rows: CsvRows, write_csv: Callable[[CsvRows], Path]
) -> None:
    set_field(
        "table2:82", 2, "item_text", "高齢者の医療の確保に関する法律による保険料の徴収に関する情報"
    )(committed_rows)
    assert load(write_csv(committed_rows)).version != load_default().version


def test_load_default_is_loaded_once() -> None:
    assert load_default() is load_default()


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + DEFAULT_PATH.read_bytes())
    assert len(load(path).rows()) == len(load_default().rows())
