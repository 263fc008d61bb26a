"""Row labels, procedure ids and the legal-basis wording."""

from __future__ import annotations

import pickle

import pytest

from permission_list.model import (
    PermissionListError,
    int_to_kanji,
    kanji_to_int,
    label_to_procedure,
    normalize_procedure,
    order_basis,
    procedure_sort_key,
    procedure_to_label,
    table2_basis,
)


@pytest.mark.parametrize(
    ("label", "number"),
    [
        ("一", 1),
        ("十", 10),
        ("十一", 11),
        ("二十", 20),
        ("五十六", 56),
        ("百", 100),
        ("百二十", 120),
    ],
)
def test_row_numerals_read_as_the_law_writes_them(label: str, number: int) -> None:
    assert kanji_to_int(label) == number
    assert int_to_kanji(number) == label


def test_every_number_below_1000_round_trips() -> None:
    assert all(kanji_to_int(int_to_kanji(n)) == n for n in range(1, 1000))


def test_a_sub_row_has_its_own_procedure_id() -> None:
    assert label_to_procedure("五十六の二") == "table2:56-2"
    assert procedure_to_label("table2:56-2") == "五十六の二"


@pytest.mark.parametrize("label", ["", "八十二項", "一百", "十十", "零", "八十二の"])
def test_a_non_canonical_label_is_refused(label: str) -> None:
    with pytest.raises(ValueError, match=r"row (label|numeral)"):
        label_to_procedure(label)


@pytest.mark.parametrize("text", ["82", "table2:82", " 82 ", "八十二"])
def test_what_people_type_for_a_row_normalizes(text: str) -> None:
    assert normalize_procedure(text) == "table2:82"


def test_procedures_sort_in_law_order() -> None:
    ids = ["table2:57", "table2:56-2", "table2:100", "table2:56"]
    assert sorted(ids, key=procedure_sort_key) == [
        "table2:56",
        "table2:56-2",
        "table2:57",
        "table2:100",
    ]


def test_basis_wording_cites_the_row_and_marks_the_order_unverified() -> None:
    assert table2_basis("八十二") == "番号法 別表第二 第八十二項"
    assert order_basis("八十二") == (
        "番号法第19条第8号 及び 同号に基づく命令 (条番号 未確認; 旧 別表第二 第八十二項)"
    )


def test_permission_list_error_names_file_line_field_and_survives_pickling() -> None:
    error = PermissionListError("t.csv", 7, "items", "'x' is not in the vocabulary")
    assert str(error) == "t.csv:7: items: 'x' is not in the vocabulary"
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, round-tripped
    assert (copy.path, copy.line, copy.field, copy.reason) == ("t.csv", 7, "items", error.reason)
