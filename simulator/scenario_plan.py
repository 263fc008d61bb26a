"""What each party of the late-stage elderly affairs knows, holds and asks: the scenario's plan.

Owns the pure part of the main job (別表第二 rows 80–83), computed from a :class:`Population`
and the assessment date, with no I/O:

- who each organization's business systems register (with their own address numbers);
- the duplicates (副本) each provider pushes before anyone asks: local tax by the municipality
  that levied it (the one of residence on 1 January), resident records by the municipality of
  residence, pensions by the Japan Pension Service; everything about a person under DV support
  measures carries the auto-response-disabled flag (自動応答不可フラグ);
- the queries of each phase, in the order the law names the parties;
- the decisions on the answers: the regional association's premium (``assess_premiums``) and
  Sakai's collection method (``decide_collections``), and the duplicates they lead to;
- a few hand-built *showcase* households the demo adds to a generated population, so that
  every path (a mover taxed elsewhere, a person without pension, a DV-protected person) shows
  at any size and seed.

Must never: talk to a system (the runner in :mod:`simulator.scenario` does), or put a personal
value into anything meant for a screen: address numbers here are derived from the synthetic
person id, and names, resident codes and individual numbers go only to the registry and the
unified address servers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from enum import StrEnum
from typing import Final

from linkage.v1 import common_pb2
from simulator.eligibility import (
    CollectionDecision,
    Premium,
    amount_per_payment,
    assess_premium,
    decide_collection,
)
from simulator.population import (
    FISCAL_YEAR,
    FISCAL_YEAR_END,
    FISCAL_YEAR_START,
    MAIN_MUNICIPALITY,
    MUNICIPALITIES,
    PENSION_SERVICE,
    TAX_BASE_DATE,
    Household,
    Pension,
    PensionKind,
    Person,
    Population,
    Relationship,
    Sex,
    age_on,
    assess_local_tax,
    insured_late_stage,
    municipality_on,
)
from unified_address.individual_number import complete

# --------------------------------------------------------------------------------------------
# The cast and the law
# --------------------------------------------------------------------------------------------

SAKAI: Final = MAIN_MUNICIPALITY
REGIONAL_ASSOCIATION: Final = "osaka-kouiki"
JPS: Final = PENSION_SERVICE
OTHER_MUNICIPALITIES: Final = tuple(code for code in MUNICIPALITIES if code != SAKAI)

JUKI: Final = "juki"  # 住民基本台帳システム
ZEIMU: Final = "zeimu"  # 税務システム
KOUKI: Final = "kouki"  # 後期高齢者医療システム (Sakai's, and the association's standard system)
NENKIN: Final = "nenkin"  # the Japan Pension Service's pension system

ROW_80: Final = "table2:80"  # the association: benefits and premiums, from municipalities
ROW_82: Final = "table2:82"  # a municipality: premium collection, from JPS and the association
ROW_83: Final = "table2:83"  # the Minister (JPS acting): special collection, from municipalities

LOCAL_TAX: Final = "local_tax"
RESIDENT_RECORD: Final = "resident_record"
PENSION_BENEFIT: Final = "pension_benefit"
PREMIUM: Final = "late_stage_medical_premium"
NOTICE: Final = "special_collection_notice"

ASSESSMENT_DATE: Final = date(2026, 7, 1)
"""The day the annual premium is fixed (本算定): July, once the municipalities have assessed the
fiscal year's local tax (June). Every query asks for data in force on this day, and the insured
persons of the run are those insured and living in Sakai on it."""

SPECIAL_COLLECTION_FIRST_MONTH: Final = 10
"""Withholding decided in the July assessment starts with the October pension payment (the
April–August payments of a new year are provisional collection, 仮徴収, not modelled)."""

_ADDRESS_PREFIX: Final[Mapping[tuple[str, str], str]] = {
    (SAKAI, JUKI): "SKJ",
    (SAKAI, ZEIMU): "SKZ",
    (SAKAI, KOUKI): "SKK",
    ("osaka", JUKI): "OSJ",
    ("osaka", ZEIMU): "OSZ",
    ("toyonaka", JUKI): "TYJ",
    ("toyonaka", ZEIMU): "TYZ",
    ("suita", JUKI): "SUJ",
    ("suita", ZEIMU): "SUZ",
    (REGIONAL_ASSOCIATION, KOUKI): "RAK",
    (JPS, NENKIN): "JPN",
}


def address_number(org: str, system: str, person_id: int) -> str:
    """The person's address number (宛名番号) in one business system.

    Each system numbers people its own way (a prefix of its own here); derived from the
    synthetic person id, so it says nothing about the person and the run stays deterministic.
    """
    return f"{_ADDRESS_PREFIX[org, system]}{person_id:08d}"


class Phase(StrEnum):
    """The query phases, in the order they run."""

    REGIONAL_ASSOCIATION = "regional_association"  # row 80: tax and resident data
    MUNICIPALITY = "municipality"  # row 82: pensions and premiums
    PERMISSION_CHECK = "permission_check"  # row 82 asked of a municipality: must be denied
    PENSION_SERVICE = "pension_service"  # row 83: special collection notices


@dataclass(frozen=True, slots=True)
class PlannedQuery:
    """One query of one business system about one person, for one data item."""

    phase: Phase
    requester: str
    system: str
    procedure: str
    provider: str
    data_item: str
    person_id: int

    @property
    def query_id(self) -> str:
        """Deterministic and unique in the business system: phase, item and person."""
        return f"{self.phase.value}.{self.provider}.{self.data_item}.{self.person_id:08d}"

    @property
    def address_number(self) -> str:
        return address_number(self.requester, self.system, self.person_id)


# --------------------------------------------------------------------------------------------
# Who is concerned
# --------------------------------------------------------------------------------------------


def alive_on(person: Person, on: date) -> bool:
    return person.died_on is None or person.died_on >= on


def insured_persons(population: Population, on: date = ASSESSMENT_DATE) -> tuple[Person, ...]:
    """Insured persons living in Sakai on ``on``: those whose premium Sakai collects."""
    return tuple(
        p
        for p in population.persons
        if insured_late_stage(p, on) and municipality_on(p, on) == SAKAI
    )


@dataclass(frozen=True, slots=True)
class PremiumHousehold:
    """Whose income the per-capita reduction (均等割軽減) of one insured person reads.

    The order (高齢者の医療の確保に関する法律施行令 第18条) adds up the total income of the
    insured persons of the household and of its head (世帯主), whether insured or not.
    """

    head: int
    insured: tuple[int, ...]

    @property
    def income_persons(self) -> tuple[int, ...]:
        return tuple(sorted({self.head, *self.insured}))


def premium_households(
    population: Population, insured: Sequence[Person]
) -> dict[int, PremiumHousehold]:
    """For every insured person, the household as the reduction rule sees it."""
    insured_ids = {p.person_id for p in insured}
    by_household: dict[int, PremiumHousehold] = {}
    result: dict[int, PremiumHousehold] = {}
    for person in insured:
        household = population.household_of(person)
        entry = by_household.get(household.household_id)
        if entry is None:
            members = tuple(m for m in household.members if m in insured_ids)
            entry = by_household[household.household_id] = PremiumHousehold(household.head, members)
        result[person.person_id] = entry
    return result


def pension_service_subjects(
    population: Population, on: date = ASSESSMENT_DATE
) -> tuple[Person, ...]:
    """Pensioners aged 65 or over living in Sakai on ``on``: everyone JPS asks Sakai about.

    JPS does not know who is insured: it asks about every pensioner old enough to be (65+, the
    disability route included); most get NO_DATA, which is the expected answer for them.
    """
    return tuple(
        p
        for p in population.persons
        if p.pension is not None
        and age_on(p, on) >= 65
        and alive_on(p, on)
        and municipality_on(p, on) == SAKAI
    )


# --------------------------------------------------------------------------------------------
# Registrations: each business system registers the people it knows
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistrationBatch:
    """The people one business system registers at its unified address server."""

    org: str
    system: str
    persons: tuple[Person, ...]


def registrations(population: Population, on: date = ASSESSMENT_DATE) -> list[RegistrationBatch]:
    """Every registration of the setup, in a fixed order.

    - Sakai: everyone who lived there in the period in ``juki`` (residents, and those who moved
      out, whose removed record it keeps); those it taxed in ``zeimu``; the insured in ``kouki``.
    - other municipalities: the people they taxed on 1 January (who then moved into Sakai), in
      ``zeimu`` and in ``juki`` (their removed records).
    - JPS: every pensioner. The association: the insured and their household members.
    """
    persons = population.persons
    insured = insured_persons(population, on)
    batches = [
        RegistrationBatch(SAKAI, JUKI, persons),
        RegistrationBatch(
            SAKAI, ZEIMU, tuple(p for p in persons if p.local_tax.levied_by == SAKAI)
        ),
        RegistrationBatch(SAKAI, KOUKI, insured),
    ]
    for org in OTHER_MUNICIPALITIES:
        taxed = tuple(p for p in persons if p.local_tax.levied_by == org)
        if taxed:
            batches += [RegistrationBatch(org, ZEIMU, taxed), RegistrationBatch(org, JUKI, taxed)]
    batches.append(RegistrationBatch(JPS, NENKIN, tuple(p for p in persons if p.pension)))
    batches.append(
        RegistrationBatch(REGIONAL_ASSOCIATION, KOUKI, _with_households(population, insured))
    )
    return batches


def _with_households(population: Population, insured: Sequence[Person]) -> tuple[Person, ...]:
    ids = {m for p in insured for m in population.household_of(p).members}
    return tuple(population.person(i) for i in sorted(ids))


# --------------------------------------------------------------------------------------------
# Duplicates (副本)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedDuplicate:
    """One value one business system pushes about one person."""

    person_id: int
    value: common_pb2.DuplicateValue
    auto_response_disabled: bool


@dataclass(frozen=True, slots=True)
class DuplicateBatch:
    """Everything one business system pushes for one data item."""

    org: str
    system: str
    data_item: str
    rows: tuple[PlannedDuplicate, ...]


def _iso(day: date | None) -> str:
    return "" if day is None else day.isoformat()


def _fiscal_year_value(
    data_item: str, content: common_pb2.DataItemContent, *, until: date | None = None
) -> common_pb2.DuplicateValue:
    """A value in force for the whole fiscal year (or until ``until``, e.g. a death)."""
    end = FISCAL_YEAR_END if until is None else min(until, FISCAL_YEAR_END)
    return common_pb2.DuplicateValue(
        data_item=data_item,
        content=content,
        effective_from=FISCAL_YEAR_START.isoformat(),
        effective_to=end.isoformat(),
    )


def local_tax_value(person: Person) -> common_pb2.DuplicateValue:
    """The FY local tax as the levying municipality holds it (地方税関係情報)."""
    tax = person.local_tax
    content = common_pb2.DataItemContent(
        local_tax=common_pb2.LocalTax(
            fiscal_year=tax.fiscal_year,
            assessing_municipality=tax.levied_by,
            total_income=tax.total_income,
            taxable_income=tax.taxable_income,
            per_capita_levy=tax.per_capita_levy,
            income_levy=tax.income_levy,
            non_taxable=tax.non_taxable,
        )
    )
    # Levied on 1 January residents for the whole year, death or move notwithstanding.
    return _fiscal_year_value(LOCAL_TAX, content)


_PENSION_KINDS: Final = {
    PensionKind.OLD_AGE_BASIC: common_pb2.PENSION_KIND_OLD_AGE_BASIC,
    PensionKind.OLD_AGE_EMPLOYEES: common_pb2.PENSION_KIND_OLD_AGE_EMPLOYEES,
    PensionKind.SURVIVORS: common_pb2.PENSION_KIND_SURVIVORS,
    PensionKind.DISABILITY: common_pb2.PENSION_KIND_DISABILITY,
}


def pension_value(person: Person, pension: Pension) -> common_pb2.DuplicateValue | None:
    """The FY pension (年金給付関係情報); None when the person died before the year began."""
    if person.died_on is not None and person.died_on < FISCAL_YEAR_START:
        return None
    content = common_pb2.DataItemContent(
        pension_benefit=common_pb2.PensionBenefit(
            fiscal_year=FISCAL_YEAR,
            pension_kind=_PENSION_KINDS[pension.kind],
            annual_amount=pension.annual_amount,
            payer=pension.payer,
        )
    )
    return _fiscal_year_value(PENSION_BENEFIT, content, until=person.died_on)


def resident_record_value(
    population: Population, person: Person, municipality: str
) -> common_pb2.DuplicateValue | None:
    """The person's resident record at ``municipality`` for the time they lived there.

    Residence is known from the tax base date on: a mover has a removed record (除票) at the
    former municipality up to the day before the move, and a record at the new one from the
    move; a death closes the record. None when the person never lived there in the period.
    """
    household = population.household_of(person)
    if municipality == person.municipality:
        start = person.moved_in_on or TAX_BASE_DATE
        end = person.died_on
        moved_in, previous = (
            _iso(person.moved_in_on),
            (person.municipality_on_tax_base_date if person.moved_in_on else ""),
        )
    elif municipality == person.municipality_on_tax_base_date and person.moved_in_on:
        start, end = TAX_BASE_DATE, person.moved_in_on - timedelta(days=1)
        moved_in, previous = "", ""
    else:
        return None
    if end is not None and end < start:
        return None
    content = common_pb2.DataItemContent(
        resident_record=common_pb2.ResidentRecord(
            municipality=municipality,
            household_code=f"H{household.household_id:08d}",
            relationship=person.relationship.value,
            household_size=len(household),
            moved_in_on=moved_in,
            previous_municipality=previous,
        )
    )
    return common_pb2.DuplicateValue(
        data_item=RESIDENT_RECORD,
        content=content,
        effective_from=start.isoformat(),
        effective_to=_iso(end),
    )


def setup_duplicates(
    population: Population, batches: Sequence[RegistrationBatch]
) -> list[DuplicateBatch]:
    """The duplicates every provider holds before the first query, for the people it knows."""
    result: list[DuplicateBatch] = []
    for batch in batches:
        rows: list[PlannedDuplicate] = []
        item = ""
        for person in batch.persons:
            value: common_pb2.DuplicateValue | None = None
            if batch.system == ZEIMU:
                item, value = LOCAL_TAX, local_tax_value(person)
            elif batch.system == JUKI:
                item, value = RESIDENT_RECORD, resident_record_value(population, person, batch.org)
            elif batch.system == NENKIN and person.pension is not None:
                item, value = PENSION_BENEFIT, pension_value(person, person.pension)
            if value is not None:
                rows.append(
                    PlannedDuplicate(person.person_id, value, person.auto_response_disabled)
                )
        if rows:
            result.append(DuplicateBatch(batch.org, batch.system, item, tuple(rows)))
    return result


# --------------------------------------------------------------------------------------------
# The queries of each phase
# --------------------------------------------------------------------------------------------


def regional_association_queries(
    population: Population, insured: Sequence[Person], on: date = ASSESSMENT_DATE
) -> list[PlannedQuery]:
    """Row 80: the association asks municipalities about the insured and their households.

    The resident record from the municipality of residence (to confirm the address before
    assessing); the local tax of every person whose income the premium reads, from the
    municipality that levied it: the one of residence on 1 January, which for a mover is the
    former one. The association knows where each person lived from its own eligibility records
    (municipalities report moves to it), so no query waits for another.
    """
    queries: list[PlannedQuery] = []
    households = premium_households(population, insured)
    taxed: set[int] = set()
    for person in insured:
        queries.append(_ra_query(RESIDENT_RECORD, municipality_on(person, on), person.person_id))
        for pid in households[person.person_id].income_persons:
            if pid not in taxed:
                taxed.add(pid)
                levied_by = population.person(pid).local_tax.levied_by
                queries.append(_ra_query(LOCAL_TAX, levied_by, pid))
    return queries


def _ra_query(item: str, provider: str, person_id: int) -> PlannedQuery:
    return PlannedQuery(
        Phase.REGIONAL_ASSOCIATION, REGIONAL_ASSOCIATION, KOUKI, ROW_80, provider, item, person_id
    )


def municipality_queries(insured: Sequence[Person]) -> list[PlannedQuery]:
    """Row 82: Sakai asks JPS for each insured person's pension, the association for the premium."""
    queries: list[PlannedQuery] = []
    for person in insured:
        for provider, item in ((JPS, PENSION_BENEFIT), (REGIONAL_ASSOCIATION, PREMIUM)):
            queries.append(
                PlannedQuery(
                    Phase.MUNICIPALITY, SAKAI, KOUKI, ROW_82, provider, item, person.person_id
                )
            )
    return queries


def permission_check_query(insured: Sequence[Person]) -> PlannedQuery | None:
    """Sakai asking another municipality for local tax under row 82, which the law does not
    allow (row 82 names only JPS and the association as providers): the network must deny it.

    Asked about an insured person Osaka taxed, if there is one (the data exists: only the law
    stands in the way), else about the first insured person.
    """
    if not insured:
        return None
    target = next((p for p in insured if p.local_tax.levied_by == "osaka"), insured[0])
    return PlannedQuery(
        Phase.PERMISSION_CHECK, SAKAI, KOUKI, ROW_82, "osaka", LOCAL_TAX, target.person_id
    )


def pension_service_queries(subjects: Sequence[Person]) -> list[PlannedQuery]:
    """Row 83: JPS, in the Minister's capacity, asks Sakai for special collection notices."""
    return [
        PlannedQuery(Phase.PENSION_SERVICE, JPS, NENKIN, ROW_83, SAKAI, NOTICE, p.person_id)
        for p in subjects
    ]


# --------------------------------------------------------------------------------------------
# Decisions on the answers
# --------------------------------------------------------------------------------------------


class Outcome(StrEnum):
    """How one query ended, as the summary counts it."""

    PROVIDED = "provided"
    DENIED = "denied"
    HELD_FOR_REVIEW = "held_for_review"
    NO_DATA = "no_data"
    ERROR = "error"  # a gRPC failure, or an answer the client cannot use (FAILED, …)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a query returned: the outcome, a reason when not provided, and the values."""

    outcome: Outcome
    reason: str = ""
    values: tuple[common_pb2.DuplicateValue, ...] = ()

    def content(self, data_item: str) -> common_pb2.DataItemContent | None:
        """The content of ``data_item`` when provided (the first value: one is in force)."""
        if self.outcome is not Outcome.PROVIDED:
            return None
        return next((v.content for v in self.values if v.data_item == data_item), None)


AnswerKey = tuple[Phase, str, int]  # (phase, data item, person id)


@dataclass(frozen=True, slots=True)
class Assessment:
    """The association's premium for one insured person, or why there is none yet."""

    person_id: int
    premium: Premium | None
    reason: str = ""


def assess_premiums(
    population: Population,
    insured: Sequence[Person],
    answers: Mapping[AnswerKey, Answer],
) -> dict[int, Assessment]:
    """Assess each insured person's premium from the association's answers (row 80).

    Needs the person's resident record (the address is confirmed) and the local tax of every
    person whose income the reduction reads (the insured of the household and its head). Any
    of them missing — held for review, no data, denied, failed — leaves the premium unassessed
    with the first missing item as the reason: the association's staff follow it up.
    """
    phase = Phase.REGIONAL_ASSOCIATION
    households = premium_households(population, insured)
    result: dict[int, Assessment] = {}
    for person in insured:
        pid = person.person_id
        record = answers.get((phase, RESIDENT_RECORD, pid))
        if record is None or record.outcome is not Outcome.PROVIDED:
            result[pid] = Assessment(pid, None, _missing(RESIDENT_RECORD, record))
            continue
        household = households[pid]
        incomes: dict[int, int] = {}
        missing = ""
        for member in household.income_persons:
            answer = answers.get((phase, LOCAL_TAX, member))
            content = answer.content(LOCAL_TAX) if answer is not None else None
            if content is None:
                missing = _missing(LOCAL_TAX, answer)
                break
            incomes[member] = content.local_tax.total_income
        if missing:
            result[pid] = Assessment(pid, None, missing)
            continue
        premium = assess_premium(
            incomes[pid], sum(incomes.values()), insured_in_household=len(household.insured)
        )
        result[pid] = Assessment(pid, premium)
    return result


def _missing(item: str, answer: Answer | None) -> str:
    outcome = "NOT_ASKED" if answer is None else answer.outcome.name
    return f"{item.upper()}_{outcome}"


def premium_value(premium: Premium) -> common_pb2.DuplicateValue:
    """The association's premium duplicate; the collection method is Sakai's to decide."""
    content = common_pb2.DataItemContent(
        late_stage_medical_premium=common_pb2.LateStageMedicalPremium(
            fiscal_year=FISCAL_YEAR,
            annual_premium=premium.annual,
            collection_method=common_pb2.COLLECTION_METHOD_UNSPECIFIED,
        )
    )
    return _fiscal_year_value(PREMIUM, content)


def premium_duplicates(
    population: Population, assessments: Mapping[int, Assessment]
) -> DuplicateBatch:
    """What the association pushes after assessing: one premium per assessed person."""
    rows = tuple(
        PlannedDuplicate(
            pid,
            premium_value(a.premium),
            population.person(pid).auto_response_disabled,
        )
        for pid, a in sorted(assessments.items())
        if a.premium is not None
    )
    return DuplicateBatch(REGIONAL_ASSOCIATION, KOUKI, PREMIUM, rows)


@dataclass(frozen=True, slots=True)
class Collection:
    """Sakai's decision for one insured person, with the amounts it rests on."""

    person_id: int
    decision: CollectionDecision
    reason: str
    annual_premium: int | None = None
    annual_pension: int | None = None

    @property
    def amount_per_payment(self) -> int | None:
        if self.decision is not CollectionDecision.SPECIAL or self.annual_premium is None:
            return None
        return amount_per_payment(self.annual_premium)


def decide_collections(
    insured: Sequence[Person], answers: Mapping[AnswerKey, Answer]
) -> dict[int, Collection]:
    """Sakai's collection method for each insured person from its row-82 answers.

    No pension on record (NO_DATA) means ordinary collection; a pension answer that did not
    come (held, denied, failed) or a premium not provided leaves the decision to staff
    (UNDECIDED): deciding ORDINARY then would be a guess about someone's pension.
    """
    phase = Phase.MUNICIPALITY
    result: dict[int, Collection] = {}
    for person in insured:
        pid = person.person_id
        premium_answer = answers.get((phase, PREMIUM, pid))
        pension_answer = answers.get((phase, PENSION_BENEFIT, pid))
        premium_content = premium_answer.content(PREMIUM) if premium_answer else None
        premium = (
            None
            if premium_content is None
            else premium_content.late_stage_medical_premium.annual_premium
        )
        if pension_answer is None or pension_answer.outcome not in (
            Outcome.PROVIDED,
            Outcome.NO_DATA,
        ):
            reason = _missing(PENSION_BENEFIT, pension_answer)
            result[pid] = Collection(pid, CollectionDecision.UNDECIDED, reason, premium)
            continue
        pension_content = pension_answer.content(PENSION_BENEFIT)
        pension = None if pension_content is None else pension_content.pension_benefit.annual_amount
        decision = decide_collection(pension, premium)
        result[pid] = Collection(
            pid, decision, _decision_reason(decision, pension, premium_answer), premium, pension
        )
    return result


def _decision_reason(
    decision: CollectionDecision, pension: int | None, premium_answer: Answer | None
) -> str:
    if decision is CollectionDecision.UNDECIDED:
        return _missing(PREMIUM, premium_answer)
    if decision is CollectionDecision.SPECIAL:
        return "PENSION_CARRIES_PREMIUM"
    return "NO_PENSION" if pension is None else "PENSION_TOO_SMALL"


def notice_value(collection: Collection) -> common_pb2.DuplicateValue:
    """The special collection notice Sakai holds for JPS (特別徴収の通知事項)."""
    content = common_pb2.DataItemContent(
        special_collection_notice=common_pb2.SpecialCollectionNotice(
            fiscal_year=FISCAL_YEAR,
            amount_per_payment=collection.amount_per_payment or 0,
            first_month=SPECIAL_COLLECTION_FIRST_MONTH,
            pension_payer=JPS,
        )
    )
    return _fiscal_year_value(NOTICE, content)


def notice_duplicates(
    population: Population, collections: Mapping[int, Collection]
) -> DuplicateBatch:
    """What Sakai pushes after deciding: a notice for each person under special collection."""
    rows = tuple(
        PlannedDuplicate(pid, notice_value(c), population.person(pid).auto_response_disabled)
        for pid, c in sorted(collections.items())
        if c.decision is CollectionDecision.SPECIAL
    )
    return DuplicateBatch(SAKAI, KOUKI, NOTICE, rows)


# --------------------------------------------------------------------------------------------
# Showcase households
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShowcaseMember:
    """A hand-written member of a showcase household (see :data:`SHOWCASE`)."""

    relationship: Relationship
    sex: Sex
    birth_date: date
    income: int = 0
    pension: tuple[PensionKind, int] | None = None


@dataclass(frozen=True, slots=True)
class ShowcaseHousehold:
    """A hand-written household living in Sakai; ``former`` is where it lived on 1 January."""

    label: str
    members: tuple[ShowcaseMember, ...]
    former: str = SAKAI
    moved_in_on: date | None = None
    dv_protected: bool = False


SHOWCASE: Final = (
    # A couple who moved from Toyonaka in March: the husband (77) is insured and taxed by
    # Toyonaka, so the association must ask Toyonaka, not Sakai, for his income.
    ShowcaseHousehold(
        "mover_from_toyonaka",
        (
            ShowcaseMember(
                Relationship.HEAD,
                Sex.MALE,
                date(1949, 5, 10),
                pension=(PensionKind.OLD_AGE_EMPLOYEES, 1_500_000),
            ),
            ShowcaseMember(
                Relationship.SPOUSE,
                Sex.FEMALE,
                date(1953, 8, 2),
                pension=(PensionKind.OLD_AGE_BASIC, 780_000),
            ),
        ),
        former="toyonaka",
        moved_in_on=date(2026, 3, 20),
    ),
    # A woman of 81 under DV support measures: every answer about her waits for review.
    ShowcaseHousehold(
        "dv_protected",
        (
            ShowcaseMember(
                Relationship.HEAD,
                Sex.FEMALE,
                date(1945, 2, 14),
                pension=(PensionKind.OLD_AGE_BASIC, 816_000),
            ),
        ),
        dv_protected=True,
    ),
    # A man of 75 who still works and draws no public pension: ordinary collection.
    ShowcaseHousehold(
        "no_pension",
        (ShowcaseMember(Relationship.HEAD, Sex.MALE, date(1950, 11, 3), 1_200_000),),
    ),
    # A woman of 76 who moved from Osaka City: the permission check asks Osaka about her.
    ShowcaseHousehold(
        "mover_from_osaka",
        (
            ShowcaseMember(
                Relationship.HEAD,
                Sex.FEMALE,
                date(1950, 1, 20),
                pension=(PensionKind.OLD_AGE_BASIC, 700_000),
            ),
        ),
        former="osaka",
        moved_in_on=date(2026, 2, 10),
    ),
)
"""Households the demo adds to every generated population, so that each path of the main job
shows at any size and seed. They are as synthetic as the rest: names are sample words."""

_SHOWCASE_NAME: Final = ("見本", "ミホン")  # "sample"
_SHOWCASE_GIVEN: Final = {Sex.MALE: ("一郎", "イチロウ"), Sex.FEMALE: ("花子", "ハナコ")}
_BORN_BY_FOR_65: Final = date(1961, 1, 1)  # 65 on 31 Dec 2025 in the legal reckoning


def with_showcase(
    population: Population, showcase: Sequence[ShowcaseHousehold] = SHOWCASE
) -> tuple[Population, dict[str, tuple[int, ...]]]:
    """The population with the showcase households appended, and their person ids by label."""
    persons = list(population.persons)
    households = list(population.households)
    labels: dict[str, tuple[int, ...]] = {}
    codes = {p.resident_code for p in persons}
    numbers = {p.individual_number for p in persons}
    for spec in showcase:
        household_id = len(households) + 1
        ids: list[int] = []
        for member in spec.members:
            code = _unused(f"showcase-code:{len(persons)}", codes, lambda n: f"{n % 10**11:011d}")
            number = _unused(
                f"showcase-number:{len(persons)}", numbers, lambda n: complete(f"{n % 10**11:011d}")
            )
            persons.append(
                _showcase_person(spec, member, len(persons) + 1, household_id, code, number)
            )
            ids.append(len(persons))
        households.append(_showcase_household(spec, household_id, ids))
        labels[spec.label] = tuple(ids)
    moved_in = sum(len(s.members) for s in showcase)
    return (
        replace(
            population,
            residents=population.residents + moved_in,
            persons=tuple(persons),
            households=tuple(households),
        ),
        labels,
    )


def _unused(seed: str, taken: set[str], shape: Callable[[int], str]) -> str:
    """A deterministic identifier (keyed by ``seed``) not yet taken; taken from then on."""
    counter = 0
    while True:
        digest = hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        value = shape(int.from_bytes(digest[:8], "big"))
        if value not in taken:
            taken.add(value)
            return value
        counter += 1


def _showcase_person(
    spec: ShowcaseHousehold,
    member: ShowcaseMember,
    person_id: int,
    household_id: int,
    resident_code: str,
    individual_number: str,
) -> Person:
    pension = None
    receipts = 0
    if member.pension is not None:
        kind, amount = member.pension
        taxable = (
            amount if kind in (PensionKind.OLD_AGE_BASIC, PensionKind.OLD_AGE_EMPLOYEES) else 0
        )
        pension = Pension(kind, amount, taxable)
        receipts = taxable  # everyone here was over 65 for the whole income year
    given = _SHOWCASE_GIVEN[member.sex]
    return Person(
        person_id=person_id,
        resident_code=resident_code,
        individual_number=individual_number,
        family_name=_SHOWCASE_NAME[0],
        given_name=given[0],
        family_name_kana=_SHOWCASE_NAME[1],
        given_name_kana=given[1],
        sex=member.sex,
        birth_date=member.birth_date,
        household_id=household_id,
        relationship=member.relationship,
        municipality=SAKAI,
        municipality_on_tax_base_date=spec.former,
        moved_in_on=spec.moved_in_on,
        died_on=None,
        disability_certified=False,
        dv_protected=spec.dv_protected,
        income=member.income,
        pension=pension,
        local_tax=assess_local_tax(
            member.income,
            receipts,
            aged_65_or_over=member.birth_date <= _BORN_BY_FOR_65,
            levied_by=spec.former,
        ),
    )


def _showcase_household(
    spec: ShowcaseHousehold, household_id: int, ids: Iterable[int]
) -> Household:
    members = list(zip(spec.members, ids, strict=True))
    head = next(pid for m, pid in members if m.relationship is Relationship.HEAD)
    spouse = next((pid for m, pid in members if m.relationship is Relationship.SPOUSE), None)
    children = tuple(pid for m, pid in members if m.relationship is Relationship.CHILD)
    others = tuple(
        pid
        for m, pid in members
        if m.relationship not in (Relationship.HEAD, Relationship.SPOUSE, Relationship.CHILD)
    )
    return Household(household_id, SAKAI, head, spouse, children, others)
