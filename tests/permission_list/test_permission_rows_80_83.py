"""Rows 80–83 (the late-stage elderly medical care rows) pinned against the law, by hand.

Each expectation below was written from the row's text (quoted), not from the converter's
output, so a converter change that alters what these rows allow fails here.
"""

# The quoted cells are the law's words, one cell per line, so some lines are long.
# ruff: noqa: E501

from __future__ import annotations

from permission_list import PermissionList

PENSION_PROVIDERS = ("mhlw", "pension_service", "mutual_aid_association")


def tuples_of(permissions: PermissionList, procedure: str) -> set[tuple[str, str, str, str]]:
    return {t for t in permissions.allowed_tuples() if t[1] == procedure}


def test_row_80_regional_association_queries_insurers_and_municipalities(
    permissions: PermissionList,
) -> None:
    # 八十　後期高齢者医療広域連合 |
    # 高齢者の医療の確保に関する法律による後期高齢者医療給付の支給又は保険料の徴収に関する事務であって主務省令で定めるもの |
    # 医療保険者又は後期高齢者医療広域連合 | 医療保険給付関係情報であって主務省令で定めるもの |
    # 市町村長 | 地方税関係情報、住民票関係情報又は介護保険給付等関係情報であって主務省令で定めるもの
    rows = permissions.rows_for("table2:80")
    assert [r.row_label for r in rows] == ["八十", "八十"]
    assert rows[0].requesters == ("regional_association",)
    assert rows[0].statute == "高齢者の医療の確保に関する法律"
    assert rows[0].affair == (
        "高齢者の医療の確保に関する法律による後期高齢者医療給付の支給又は保険料の徴収に関する事務"
        "であって主務省令で定めるもの"
    )
    assert (rows[0].providers, rows[0].items) == (
        ("medical_insurer", "regional_association"),
        ("medical_insurance_benefit",),
    )
    assert (rows[1].providers, rows[1].items) == (
        ("municipality",),
        ("local_tax", "resident_record", "long_term_care_benefit"),
    )
    assert tuples_of(permissions, "table2:80") == {
        ("regional_association", "table2:80", "medical_insurer", "medical_insurance_benefit"),
        ("regional_association", "table2:80", "regional_association", "medical_insurance_benefit"),
        ("regional_association", "table2:80", "municipality", "local_tax"),
        ("regional_association", "table2:80", "municipality", "resident_record"),
        ("regional_association", "table2:80", "municipality", "long_term_care_benefit"),
    }


def test_row_81_regional_association_queries_pensions_and_other_benefit_payers(
    permissions: PermissionList,
) -> None:
    # 八十一　後期高齢者医療広域連合 |
    # 高齢者の医療の確保に関する法律による後期高齢者医療給付の支給に関する事務であって主務省令で定めるもの |
    # 厚生労働大臣若しくは日本年金機構又は共済組合等 | 年金給付関係情報であって主務省令で定めるもの |
    # 高齢者の医療の確保に関する法律第五十七条第一項に規定する他の法令による給付の支給を行うこととされている者 |
    # 高齢者の医療の確保に関する法律第五十七条第一項に規定する他の法令による給付の支給に関する情報であって主務省令で定めるもの
    rows = permissions.rows_for("table2:81")
    assert len(rows) == 2
    assert rows[0].statute == "高齢者の医療の確保に関する法律"
    assert rows[1].provider_text.startswith("高齢者の医療の確保に関する法律第五十七条第一項")
    expected = {
        ("regional_association", "table2:81", p, "pension_benefit") for p in PENSION_PROVIDERS
    }
    expected.add(
        ("regional_association", "table2:81", "other_statutory_payer", "other_statutory_benefit")
    )
    assert tuples_of(permissions, "table2:81") == expected


def test_row_82_municipality_queries_pensions_and_the_regional_association(
    permissions: PermissionList,
) -> None:
    # 八十二　市町村長 |
    # 高齢者の医療の確保に関する法律による保険料の徴収に関する事務であって主務省令で定めるもの |
    # 厚生労働大臣若しくは日本年金機構又は共済組合等 | 年金給付関係情報であって主務省令で定めるもの |
    # 後期高齢者医療広域連合 | 高齢者の医療の確保に関する法律による保険料の徴収に関する情報であって主務省令で定めるもの
    rows = permissions.rows_for("table2:82")
    assert rows[0].requesters == ("municipality",)
    assert rows[0].affair == (
        "高齢者の医療の確保に関する法律による保険料の徴収に関する事務であって主務省令で定めるもの"
    )
    assert rows[0].basis_until_2024 == "番号法 別表第二 第八十二項"
    assert rows[1].items == ("late_stage_medical_premium",)
    expected = {("municipality", "table2:82", p, "pension_benefit") for p in PENSION_PROVIDERS}
    expected.add(
        ("municipality", "table2:82", "regional_association", "late_stage_medical_premium")
    )
    assert tuples_of(permissions, "table2:82") == expected


def test_row_83_minister_or_mutual_aid_query_municipal_special_collection_notices(
    permissions: PermissionList,
) -> None:
    # 八十三　厚生労働大臣又は共済組合等 |
    # 高齢者の医療の確保に関する法律による特別徴収の方法による保険料の徴収又は納入に関する事務であって主務省令で定めるもの |
    # 市町村長 |
    # 高齢者の医療の確保に関する法律第百十条において準用する介護保険法第百三十六条第一項（同法第百四十条第三項において準用する場合を含む。）、
    # 第百三十八条第一項又は第百四十一条第一項の規定により通知することとされている事項に関する情報であって主務省令で定めるもの
    rows = permissions.rows_for("table2:83")
    assert len(rows) == 1
    assert rows[0].requesters == ("mhlw", "mutual_aid_association")
    assert tuples_of(permissions, "table2:83") == {
        ("mhlw", "table2:83", "municipality", "special_collection_notice"),
        ("mutual_aid_association", "table2:83", "municipality", "special_collection_notice"),
    }


def test_row_83_does_not_name_the_pension_service_as_requester(permissions: PermissionList) -> None:
    # The text says 厚生労働大臣又は共済組合等; 日本年金機構 is not among the requesters.
    decision = permissions.check(
        "pension_service", "table2:83", "municipality", "special_collection_notice"
    )
    assert (decision.allowed, decision.reason) == (False, "REQUESTER_NOT_ALLOWED")


def test_row_82_does_not_let_a_municipality_ask_a_pension_provider_for_local_tax(
    permissions: PermissionList,
) -> None:
    decision = permissions.check("municipality", "table2:82", "pension_service", "local_tax")
    assert (decision.allowed, decision.reason) == (False, "ITEM_NOT_ALLOWED")
