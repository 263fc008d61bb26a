"""Typed checks of the data a duplicate (副本) carries, and the small parsers they share.

Owns the format check of the duplicate store (情報提供データベース): which data items the store
knows, that a ``DataItemContent`` holds the kind its ``data_item`` names, that dates are ISO
``YYYY-MM-DD``, fiscal years are plausible and amounts are never negative. Every problem becomes
a ``FieldViolation`` whose path names the row and field, e.g.
``records[12].value.content.local_tax.total_income``.

Must never: accept a value it cannot check (an unknown data item is a violation, not a pass),
put a personal value into a violation's text, or import grpc.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import date
from typing import Any

from linkage.errors import FieldViolation
from linkage.v1 import common_pb2

# The data items this store holds, each the name of its field in DataItemContent's oneof.
DATA_ITEMS: frozenset[str] = frozenset(
    f.name for f in common_pb2.DataItemContent.DESCRIPTOR.oneofs_by_name["content"].fields
)
FISCAL_YEAR_MIN = 1989  # 平成元年: no duplicate of the linkage era predates it
FISCAL_YEAR_MAX = 2100
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CODE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_UNIFIED_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_INDIVIDUAL_NUMBER_SHAPE = re.compile(r"[0-9]{12}")


@functools.lru_cache(maxsize=4096)  # a bulk import repeats a handful of dates
def parse_iso_date(text: str) -> date | None:
    """``YYYY-MM-DD`` → date; anything else (including ``20260601``) → None."""
    if _ISO_DATE.fullmatch(text) is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)  # a bulk import repeats a handful of organization codes
def _is_code(value: str) -> bool:
    return _CODE.fullmatch(value) is not None


def unified_number_problem(text: str) -> str | None:
    """Why ``text`` is not a unified number, or None.

    Twelve digits is refused outright: that is the shape of an individual number, which this
    server must never hold even by mistake.
    """
    if _UNIFIED_NUMBER.fullmatch(text) is None:
        return "must be 1..64 characters [A-Za-z0-9-]"
    if _INDIVIDUAL_NUMBER_SHAPE.fullmatch(text):
        return "has the shape of an individual number, which this server never accepts"
    return None


class _Checker:
    """Collects the violations of one content message under a path prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.violations: list[FieldViolation] = []

    def fail(self, name: str, description: str) -> None:
        self.violations.append(FieldViolation(f"{self.prefix}.{name}", description))

    def fiscal_year(self, value: int) -> None:
        if not FISCAL_YEAR_MIN <= value <= FISCAL_YEAR_MAX:
            self.fail("fiscal_year", f"must be between {FISCAL_YEAR_MIN} and {FISCAL_YEAR_MAX}")

    def amount(self, name: str, value: int) -> None:
        if value < 0:
            self.fail(name, "must not be negative")

    def code(self, name: str, value: str, *, optional: bool = False) -> None:
        if optional and not value:
            return
        if not _is_code(value):
            self.fail(name, "must be an organization code [a-z0-9-], at most 32 characters")

    def text(self, name: str, value: str, *, max_length: int = 64) -> None:
        if not value or len(value) > max_length or not value.isprintable():
            self.fail(name, f"must be 1..{max_length} printable characters")

    def iso_date(self, name: str, value: str, *, optional: bool = False) -> None:
        if optional and not value:
            return
        if parse_iso_date(value) is None:
            self.fail(name, "must be a date YYYY-MM-DD")


def _local_tax(c: _Checker, m: common_pb2.LocalTax) -> None:
    c.fiscal_year(m.fiscal_year)
    c.code("assessing_municipality", m.assessing_municipality)
    for name in ("total_income", "taxable_income", "per_capita_levy", "income_levy"):
        c.amount(name, getattr(m, name))
    if 0 <= m.total_income < m.taxable_income:
        c.fail("taxable_income", "must not exceed total_income")


def _resident_record(c: _Checker, m: common_pb2.ResidentRecord) -> None:
    c.code("municipality", m.municipality)
    c.text("household_code", m.household_code)
    c.text("relationship", m.relationship, max_length=32)
    if m.household_size < 1:
        c.fail("household_size", "must be at least 1")
    c.iso_date("moved_in_on", m.moved_in_on, optional=True)
    c.code("previous_municipality", m.previous_municipality, optional=True)


_PENSION_KINDS = frozenset(common_pb2.PensionKind.values()) - {0}
_COLLECTION_METHODS = frozenset(common_pb2.CollectionMethod.values())


def _pension_benefit(c: _Checker, m: common_pb2.PensionBenefit) -> None:
    c.fiscal_year(m.fiscal_year)
    if m.pension_kind not in _PENSION_KINDS:
        c.fail("pension_kind", "must be a known pension kind")
    c.amount("annual_amount", m.annual_amount)
    c.code("payer", m.payer)


def _late_stage_medical_premium(c: _Checker, m: common_pb2.LateStageMedicalPremium) -> None:
    c.fiscal_year(m.fiscal_year)
    c.amount("annual_premium", m.annual_premium)
    # UNSPECIFIED is a documented state ("not decided"); only unknown numbers are refused.
    if m.collection_method not in _COLLECTION_METHODS:
        c.fail("collection_method", "must be a known collection method")


def _special_collection_notice(c: _Checker, m: common_pb2.SpecialCollectionNotice) -> None:
    c.fiscal_year(m.fiscal_year)
    c.amount("amount_per_payment", m.amount_per_payment)
    if not 1 <= m.first_month <= 12:
        c.fail("first_month", "must be a month 1-12")
    c.code("pension_payer", m.pension_payer)


_CHECKS: dict[str, Callable[[_Checker, object], None]] = {
    "local_tax": _local_tax,  # type: ignore[dict-item]
    "resident_record": _resident_record,  # type: ignore[dict-item]
    "pension_benefit": _pension_benefit,  # type: ignore[dict-item]
    "late_stage_medical_premium": _late_stage_medical_premium,  # type: ignore[dict-item]
    "special_collection_notice": _special_collection_notice,  # type: ignore[dict-item]
}
assert set(_CHECKS) == DATA_ITEMS, "every content kind needs its check"


def _year_ok(year: int) -> bool:
    return FISCAL_YEAR_MIN <= year <= FISCAL_YEAR_MAX


def _text_ok(value: str, max_length: int) -> bool:
    return bool(value) and len(value) <= max_length and value.isprintable()


# Quick tests for the bulk path: True only when the check above finds nothing (each is at least
# as strict as its check); False sends the content to the check, which has the last word.
_CLEAN: dict[str, Callable[[Any], bool]] = {
    "local_tax": lambda m: (
        _year_ok(m.fiscal_year)
        and _is_code(m.assessing_municipality)
        and m.total_income >= m.taxable_income >= 0
        and m.per_capita_levy >= 0
        and m.income_levy >= 0
    ),
    "resident_record": lambda m: (
        _is_code(m.municipality)
        and _text_ok(m.household_code, 64)
        and _text_ok(m.relationship, 32)
        and m.household_size >= 1
        and (not m.moved_in_on or parse_iso_date(m.moved_in_on) is not None)
        and (not m.previous_municipality or _is_code(m.previous_municipality))
    ),
    "pension_benefit": lambda m: (
        _year_ok(m.fiscal_year)
        and m.pension_kind in _PENSION_KINDS
        and m.annual_amount >= 0
        and _is_code(m.payer)
    ),
    "late_stage_medical_premium": lambda m: (
        _year_ok(m.fiscal_year)
        and m.annual_premium >= 0
        and m.collection_method in _COLLECTION_METHODS
    ),
    "special_collection_notice": lambda m: (
        _year_ok(m.fiscal_year)
        and m.amount_per_payment >= 0
        and 1 <= m.first_month <= 12
        and _is_code(m.pension_payer)
    ),
}
assert set(_CLEAN) == DATA_ITEMS, "every content kind needs its quick test"


def content_clean(data_item: str, message: object) -> bool:
    """True only when ``typed_content_violations`` finds nothing in ``message`` (a quick test
    for the bulk path; False may still be clean: then ask the checks)."""
    return _CLEAN[data_item](message)


def content_quick_test(data_item: str) -> Callable[[Any], bool]:
    """``content_clean`` of one data item, as a function of the message."""
    return _CLEAN[data_item]


def unified_number_ok(text: str) -> bool:
    """``unified_number_problem(text) is None``, without building a reason."""
    return _UNIFIED_NUMBER.fullmatch(text) is not None and not (len(text) == 12 and text.isdigit())


def content_violations(
    data_item: str, content: common_pb2.DataItemContent, prefix: str
) -> list[FieldViolation]:
    """Violations of ``content`` as the value of ``data_item`` (prefix: ``….value``)."""
    if data_item not in DATA_ITEMS:
        return [FieldViolation(f"{prefix}.data_item", "unknown data item")]
    kind = content.WhichOneof("content")
    if kind is None:
        return [FieldViolation(f"{prefix}.content", f"must hold {data_item}")]
    if kind != data_item:
        return [FieldViolation(f"{prefix}.content", f"holds {kind}, not {data_item}")]
    return typed_content_violations(kind, getattr(content, kind), f"{prefix}.content.{kind}")


def typed_content_violations(data_item: str, message: object, prefix: str) -> list[FieldViolation]:
    """Violations of the typed message of ``data_item`` (a known item) under ``prefix``
    (``….content.local_tax``): the check of ``content_violations`` once the kind is known."""
    if _CLEAN[data_item](message):
        return []
    checker = _Checker(prefix)
    _CHECKS[data_item](checker, message)
    return checker.violations


def value_violations(
    value: common_pb2.DuplicateValue, prefix: str
) -> tuple[list[FieldViolation], date | None, date | None]:
    """Violations of a whole duplicate value, and its parsed period when valid."""
    violations = content_violations(value.data_item, value.content, prefix)
    problems, start, end = period_violations(value.effective_from, value.effective_to, prefix)
    violations.extend(problems)
    return violations, start, end


def period_violations(
    effective_from: str, effective_to: str, prefix: str
) -> tuple[list[FieldViolation], date | None, date | None]:
    """Violations of a value's period (``effective_to`` empty = open), and the parsed dates."""
    violations: list[FieldViolation] = []
    start = parse_iso_date(effective_from)
    if start is None:
        violations.append(FieldViolation(f"{prefix}.effective_from", "must be a date YYYY-MM-DD"))
    end: date | None = None
    if effective_to:
        end = parse_iso_date(effective_to)
        if end is None:
            violations.append(
                FieldViolation(f"{prefix}.effective_to", "must be a date YYYY-MM-DD or empty")
            )
        elif start is not None and end < start:
            violations.append(
                FieldViolation(f"{prefix}.effective_to", "must not be before effective_from")
            )
    return violations, start, end
