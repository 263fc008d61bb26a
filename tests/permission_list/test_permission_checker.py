"""The checker: deny-by-default, reason codes, legal basis by date, speed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from datetime import date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from permission_list import Decision, PermissionList
from permission_list.vocabulary import CAPACITIES, ITEMS

ACCEPTANCE = ("municipality", "table2:82", "pension_service", "pension_benefit")

# 2017-05-30: the day this dataset takes every 2015 row to be in force from (see SCHEMA.md).
FIRST_DAY = date(2017, 5, 30)


def test_acceptance_tuple_is_allowed(permissions: PermissionList) -> None:
    decision = permissions.check(*ACCEPTANCE, on=date(2023, 4, 1))
    assert decision.allowed
    assert decision.reason == "ALLOWED"
    assert decision.row is not None
    assert (decision.row.procedure, decision.row.pair) == ("table2:82", 1)
    assert decision.basis == "番号法 別表第二 第八十二項"


def test_basis_is_table2_up_to_2024_05_26(permissions: PermissionList) -> None:
    decision = permissions.check(*ACCEPTANCE, on=date(2024, 5, 26))
    assert decision.allowed
    assert decision.basis == "番号法 別表第二 第八十二項"


def test_basis_is_article_19_item_8_and_its_order_from_2024_05_27(
    permissions: PermissionList,
) -> None:
    decision = permissions.check(*ACCEPTANCE, on=date(2024, 5, 27))
    assert decision.allowed
    assert decision.basis.startswith("番号法第19条第8号 及び 同号に基づく命令")
    # The order's article numbers are unverified: the basis must say so, never invent one.
    assert "条番号 未確認" in decision.basis
    assert "旧 別表第二 第八十二項" in decision.basis


def test_a_date_before_the_first_day_is_outside_validity(permissions: PermissionList) -> None:
    before = permissions.check(*ACCEPTANCE, on=date(2017, 5, 29))
    assert (before.allowed, before.reason, before.basis) == (False, "OUTSIDE_VALIDITY", "")
    assert before.row is not None
    assert before.row.procedure == "table2:82"
    assert permissions.check(*ACCEPTANCE, on=FIRST_DAY).allowed
    # 2015-10-05, when numbers were first assigned, is before information linkage began.
    assert permissions.check(*ACCEPTANCE, on=date(2015, 10, 5)).reason == "OUTSIDE_VALIDITY"


def test_default_date_is_today(permissions: PermissionList) -> None:
    decision = permissions.check(*ACCEPTANCE)
    assert decision.allowed
    assert decision.row is not None
    assert decision.basis == decision.row.basis_on(date.today())


def test_a_datetime_is_read_as_its_date(permissions: PermissionList) -> None:
    decision = permissions.check(*ACCEPTANCE, on=datetime(2024, 5, 26, 23, 59))
    assert decision.basis == "番号法 別表第二 第八十二項"


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (("city_hall", "table2:82", "pension_service", "pension_benefit"), "UNKNOWN_CAPACITY"),
        (("municipality", "table2:82", "jps", "pension_benefit"), "UNKNOWN_CAPACITY"),
        (("municipality", "table2:82", "pension_service", "pension"), "UNKNOWN_ITEM"),
        (("municipality", "table2:999", "pension_service", "pension_benefit"), "UNKNOWN_PROCEDURE"),
        (("municipality", "82", "pension_service", "pension_benefit"), "UNKNOWN_PROCEDURE"),
        (("municipality", "table2:80", "municipality", "local_tax"), "REQUESTER_NOT_ALLOWED"),
        (
            ("regional_association", "table2:80", "pension_service", "pension_benefit"),
            "PROVIDER_NOT_ALLOWED",
        ),
        (("municipality", "table2:82", "pension_service", "local_tax"), "ITEM_NOT_ALLOWED"),
        (
            ("municipality", "table2:82", "regional_association", "pension_benefit"),
            "ITEM_NOT_ALLOWED",
        ),
        (("municipality", "table2:36", "municipality", "local_tax"), "REQUESTER_NOT_ALLOWED"),
    ],
)
def test_denials_carry_the_first_failing_reason(
    permissions: PermissionList, query: tuple[str, str, str, str], reason: str
) -> None:
    decision = permissions.check(*query, on=date(2023, 4, 1))
    assert (decision.allowed, decision.reason, decision.row, decision.basis) == (
        False,
        reason,
        None,
        "",
    )
    assert decision.detail.endswith(".")


@pytest.mark.parametrize(
    "query",
    [
        ("", "", "", ""),
        ("Municipality", "table2:82", "pension_service", "pension_benefit"),
        ("municipality", "TABLE2:82", "pension_service", "pension_benefit"),
        ("municipality", "table2:82 ", "pension_service", "pension_benefit"),
        ("municipality", "table2:82", "pension_service", "pension_benefit;local_tax"),
        # the reverse direction of an allowed flow is not allowed
        ("pension_service", "table2:82", "municipality", "pension_benefit"),
    ],
)
def test_anything_not_granted_is_denied(
    permissions: PermissionList, query: tuple[str, str, str, str]
) -> None:
    assert not permissions.check(*query, on=date(2023, 4, 1)).allowed


@settings(max_examples=300, deadline=None)
@given(
    requester=st.sampled_from(sorted(CAPACITIES)),
    provider=st.sampled_from(sorted(CAPACITIES)),
    item=st.sampled_from(sorted(ITEMS)),
    procedure=st.sampled_from([f"table2:{n}" for n in range(78, 86)]),
)
def test_check_allows_exactly_the_granted_tuples(
    requester: str, provider: str, item: str, procedure: str
) -> None:
    from permission_list import load_default

    permissions = load_default()
    granted = (requester, procedure, provider, item) in set(permissions.allowed_tuples())
    assert (
        permissions.check(requester, procedure, provider, item, on=date(2023, 4, 1)).allowed
        is granted
    )


def test_every_granted_tuple_is_allowed_in_both_basis_eras(permissions: PermissionList) -> None:
    for values in permissions.allowed_tuples():
        before, after = (
            permissions.check(*values, on=d) for d in (date(2024, 5, 26), date(2024, 5, 27))
        )
        assert before.allowed, values
        assert after.allowed, values
        assert "別表第二" in before.basis
        assert "第19条第8号" in after.basis


def test_decisions_are_immutable(permissions: PermissionList) -> None:
    decision = permissions.check(*ACCEPTANCE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.allowed = False  # type: ignore[misc]
    assert not hasattr(Decision(False, "ITEM_NOT_ALLOWED", "x.", None, ""), "__dict__")


def test_listing_methods_agree_with_the_rows(permissions: PermissionList) -> None:
    assert permissions.procedures()[:3] == ["table2:1", "table2:2", "table2:3"]
    assert (
        permissions.procedures().index("table2:56-2")
        == permissions.procedures().index("table2:56") + 1
    )
    assert {"municipality", "regional_association", "pension_service"} <= set(
        permissions.capacities()
    )
    assert {"local_tax", "pension_benefit", "special_collection_notice"} <= set(permissions.items())
    assert permissions.rows_for("table2:999") == ()


def test_allowed_checks_are_fast(permissions: PermissionList) -> None:
    # The target is ≥ 1,000,000 checks/s; this guards against an order-of-magnitude regression
    # with room for slow CI machines.
    check, day, count = permissions.check, date(2023, 4, 1), 200_000
    started = time.perf_counter()
    for _ in range(count):
        check(*ACCEPTANCE, on=day)
    assert count / (time.perf_counter() - started) > 100_000


def test_importing_the_package_loads_no_data_and_no_heavy_modules() -> None:
    code = (
        "import sys, permission_list; "
        "heavy = [m for m in ('grpc', 'sqlalchemy', 'csv', 'permission_list.checker') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
