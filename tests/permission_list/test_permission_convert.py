"""The converter: law text → dataset, reproducibly, and failing loudly on what it cannot map."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from permission_list import PermissionList
from permission_list.convert import (
    DEFAULT_OUTPUT,
    DEFAULT_SOURCE,
    ConversionError,
    LawRow,
    convert_file,
    convert_text,
    main,
    split_item_phrases,
    statute_of,
)
from permission_list.model import label_to_procedure

SHARED_LAW_TEXT = Path("/work/shared/law/beppyo2-2015.txt")

HEADER = (
    "別表第二\u3000（第十九条、第二十一条関係） \n"
    " 情報照会者 | \n 事務 | \n 情報提供者 | \n 特定個人情報 | \n"
)


def law_text(*cells: str) -> str:
    return HEADER + "".join(f" {cell} | \n" for cell in cells)


def test_converter_reproduces_the_committed_dataset_exactly() -> None:
    assert convert_file(DEFAULT_SOURCE) == DEFAULT_OUTPUT.read_text(encoding="utf-8")


def test_check_passes_on_the_committed_dataset() -> None:
    assert main(["--check"]) == 0


def test_check_exits_nonzero_when_the_csv_differs(tmp_path: Path) -> None:
    stale = tmp_path / "table2.csv"
    stale.write_text(
        DEFAULT_OUTPUT.read_text(encoding="utf-8").replace("pension_benefit", "local_tax", 1),
        encoding="utf-8",
    )
    assert main(["--check", "--output", str(stale)]) == 1


def test_check_exits_nonzero_when_the_csv_is_missing(tmp_path: Path) -> None:
    assert main(["--check", "--output", str(tmp_path / "absent.csv")]) == 1


def test_converter_writes_the_output_it_checks(tmp_path: Path) -> None:
    output = tmp_path / "out.csv"
    assert main(["--output", str(output)]) == 0
    assert output.read_bytes() == DEFAULT_OUTPUT.read_bytes()


@pytest.mark.skipif(not SHARED_LAW_TEXT.exists(), reason="the shared law folder is not mounted")
def test_committed_source_is_the_shared_law_text() -> None:
    assert DEFAULT_SOURCE.read_bytes() == SHARED_LAW_TEXT.read_bytes()


def test_every_row_of_the_law_text_is_in_the_dataset(permissions: PermissionList) -> None:
    # Read the row labels straight from the text, independently of the converter's parser.
    text = DEFAULT_SOURCE.read_text(encoding="utf-8")
    labels = re.findall(
        r"^ ([一二三四五六七八九十百]+(?:の[一二三四五六七八九十]+)?)\u3000", text, re.M
    )
    assert len(labels) == 121
    assert "五十六の二" in labels
    procedures = permissions.procedures()
    assert len(procedures) == 121
    assert set(procedures) == {label_to_procedure(label) for label in labels}
    assert {row.row_label for row in permissions.rows()} == set(labels)


def test_deleted_row_36_is_kept_without_permissions(permissions: PermissionList) -> None:
    (row,) = permissions.rows_for("table2:36")
    assert (row.status, row.pair, row.affair) == ("deleted", 0, "削除")
    assert row.requesters == row.providers == row.items == ()
    assert not [t for t in permissions.allowed_tuples() if t[1] == "table2:36"]


def test_dataset_size_is_stable(permissions: PermissionList) -> None:
    assert len(permissions.rows()) == 260
    assert sum(1 for _ in permissions.allowed_tuples()) == 667


def test_fixed_pairs_normalize_as_the_brief_requires(permissions: PermissionList) -> None:
    by_text = {row.provider_text: row.providers for row in permissions.rows()}
    assert by_text["厚生労働大臣若しくは日本年金機構又は共済組合等"] == (
        "mhlw",
        "pension_service",
        "mutual_aid_association",
    )
    assert by_text["医療保険者又は後期高齢者医療広域連合"] == (
        "medical_insurer",
        "regional_association",
    )


def test_every_row_has_a_statute_that_the_affair_names(permissions: PermissionList) -> None:
    for row in permissions.rows():
        if row.deleted or row.procedure == "table2:87":
            continue
        assert row.affair.startswith(row.statute), row.procedure
    assert permissions.rows_for("table2:87")[0].statute.startswith("中国残留邦人等の円滑な帰国")


def test_unknown_organization_fails_naming_the_row() -> None:
    text = law_text(
        "一\u3000架空の大臣",
        "地方税法による地方税の賦課徴収に関する事務であって主務省令で定めるもの",
        "市町村長",
        "住民基本台帳法第七条第四号に規定する事項（以下「住民票関係情報」という。）であって主務省令で定めるもの",
    )
    with pytest.raises(ConversionError, match=r"row 一 .*unknown organization 「架空の大臣」"):
        convert_text(text)


def test_unknown_item_phrase_fails_naming_the_row() -> None:
    text = law_text(
        "二\u3000市町村長",
        "地方税法による地方税の賦課徴収に関する事務であって主務省令で定めるもの",
        "市町村長",
        "架空の情報であって主務省令で定めるもの",
    )
    with pytest.raises(ConversionError, match=r"row 二 .*unknown data item phrase 「架空の情報」"):
        convert_text(text)


def test_a_defined_term_used_before_its_definition_fails() -> None:
    text = law_text(
        "一\u3000市町村長",
        "地方税法による地方税の賦課徴収に関する事務であって主務省令で定めるもの",
        "市町村長",
        "地方税関係情報であって主務省令で定めるもの",
    )
    with pytest.raises(ConversionError, match="used before the law defines it"):
        convert_text(text)


def test_a_row_with_a_provider_but_no_item_fails() -> None:
    text = law_text(
        "一\u3000市町村長",
        "地方税法による地方税の賦課徴収に関する事務であって主務省令で定めるもの",
        "市町村長",
    )
    with pytest.raises(
        ConversionError, match=r"row 一 .*expected an affair and provider/item pairs"
    ):
        convert_text(text)


def test_a_repeated_row_label_fails() -> None:
    row = (
        "一\u3000市町村長",
        "地方税法による地方税の賦課徴収に関する事務であって主務省令で定めるもの",
        "市町村長",
        "住民基本台帳法第七条第四号に規定する事項（以下「住民票関係情報」という。）であって主務省令で定めるもの",
    )
    with pytest.raises(ConversionError, match="appears twice"):
        convert_text(law_text(*row, *row))


def test_a_minimal_table_converts_to_one_line() -> None:
    text = law_text(
        "一\u3000市町村長",
        "地方税法による地方税の賦課徴収に関する事務であって主務省令で定めるもの",
        "市町村長",
        "住民基本台帳法第七条第四号に規定する事項（以下「住民票関係情報」という。）であって主務省令で定めるもの",
    )
    header, line = convert_text(text).splitlines()
    assert header.startswith("procedure,row_label,pair,status,requesters")
    assert line.startswith("table2:1,一,1,active,municipality,市町村長,地方税法,")
    assert ",municipality,市町村長,resident_record," in line


def test_item_enumerations_split_only_between_items() -> None:
    # Row 26: 若しくは and 、 inside one item must not split it.
    assert split_item_phrases(
        "生活保護関係情報、児童扶養手当関係情報又は母子及び父子並びに寡婦福祉法による給付金、"
        "特別児童扶養手当等の支給に関する法律による障害児福祉手当、特別障害者手当若しくは"
        "昭和六十年法律第三十四号附則第九十七条第一項の福祉手当の支給に関する情報"
    ) == [
        "生活保護関係情報",
        "児童扶養手当関係情報",
        "母子及び父子並びに寡婦福祉法による給付金、特別児童扶養手当等の支給に関する法律による"
        "障害児福祉手当、特別障害者手当若しくは昭和六十年法律第三十四号附則第九十七条第一項の"
        "福祉手当の支給に関する情報",
    ]


@pytest.mark.parametrize(
    ("affair", "statute"),
    [
        (
            "石綿による健康被害の救済に関する法律による特別遺族給付金の支給に関する事務",
            "石綿による健康被害の救済に関する法律",
        ),
        ("健康保険法第五条第二項の規定により厚生労働大臣が行うこととされた事務", "健康保険法"),
        ("地方税法その他の地方税に関する法律及びこれらの法律に基づく条例による事務", "地方税法"),
        (
            "国家公務員共済組合法又は国家公務員共済組合法の長期給付に関する施行法による事務",
            "国家公務員共済組合法",
        ),
        (
            "昭和六十年法律第三十四号附則第八十七条第二項の規定により支給する事務",
            "昭和六十年法律第三十四号",
        ),
    ],
)
def test_statute_is_the_law_named_at_the_start_of_the_affair(affair: str, statute: str) -> None:
    assert statute_of(affair, LawRow("一", 1, ())) == statute


def test_an_affair_without_a_statute_fails() -> None:
    with pytest.raises(ConversionError, match="no statute"):
        statute_of("何かに関する事務", LawRow("一", 1, ()))
