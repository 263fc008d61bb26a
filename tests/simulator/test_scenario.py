"""The main job's decisions on a small hand-built population, run through the real world.

Seven people in five households, each chosen for one path of rows 80–83. Every expected value
below is worked out by hand from the rules (``simulator.eligibility``, the permission list's
rows 80–83) in the comments beside it, never copied from the program's output. The world and
the scenario run once for the module; the tests read the result.

The assessment date is 2026-07-01, so ages are counted on that day.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from simulator.eligibility import CollectionDecision
from simulator.population import (
    FISCAL_YEAR,
    Household,
    LocalTax,
    Pension,
    PensionKind,
    Person,
    Population,
    Relationship,
    Sex,
)
from simulator.scenario import Scenario, ScenarioResult
from simulator.scenario_plan import (
    LOCAL_TAX,
    NOTICE,
    PENSION_BENEFIT,
    PREMIUM,
    RESIDENT_RECORD,
    SHOWCASE,
    Outcome,
    Phase,
    PlannedQuery,
    insured_persons,
    registrations,
    resident_record_value,
    setup_duplicates,
    with_showcase,
)
from simulator.scenario_review import (
    ConsoleReviewer,
    Denial,
    Journey,
    ReviewReport,
    explain_denial,
    review_held,
    trace_journey,
)
from unified_address.individual_number import complete, validate

# Person ids (the tuple index + 1).
A, B, C, D, E, F, G = range(1, 8)


def _tax(levied_by: str, total_income: int, taxable_income: int = 0) -> LocalTax:
    """A local tax record; only ``total_income`` matters to the premium. Non-taxable when the
    total income is at most 450,000 (the population's rule), else a plain 10 % split 8/2 in a
    designated city — the levy amounts are not read by the scenario."""
    non_taxable = total_income <= 450_000
    return LocalTax(
        fiscal_year=FISCAL_YEAR,
        levied_by=levied_by,
        total_income=total_income,
        pension_income=0,
        taxable_income=0 if non_taxable else taxable_income,
        non_taxable=non_taxable,
        per_capita_levy=0 if non_taxable else 5_000,
        municipal_income_levy=0 if non_taxable else taxable_income * 8 // 100,
        prefectural_income_levy=0 if non_taxable else taxable_income * 2 // 100,
    )


def _person(
    person_id: int,
    household_id: int,
    relationship: Relationship,
    sex: Sex,
    born: date,
    tax: LocalTax,
    *,
    pension: Pension | None = None,
    income: int = 0,
    former: str = "sakai",
    moved_in_on: date | None = None,
    dv: bool = False,
) -> Person:
    return Person(
        person_id=person_id,
        resident_code=f"{10_000_000_000 + person_id:011d}",
        individual_number=complete(f"{70_000_000_000 + person_id:011d}"),
        family_name="試験",
        given_name="太郎",
        family_name_kana="シケン",
        given_name_kana="タロウ",
        sex=sex,
        birth_date=born,
        household_id=household_id,
        relationship=relationship,
        municipality="sakai",
        municipality_on_tax_base_date=former,
        moved_in_on=moved_in_on,
        died_on=None,
        disability_certified=False,
        dv_protected=dv,
        income=income,
        pension=pension,
        local_tax=tax,
    )


HEAD, SPOUSE, PARENT = Relationship.HEAD, Relationship.SPOUSE, Relationship.PARENT
BASIC, EMPLOYEES = PensionKind.OLD_AGE_BASIC, PensionKind.OLD_AGE_EMPLOYEES

PERSONS = (
    # A, 76, moved from Toyonaka on 15 February: Toyonaka levied his FY2026 tax (he lived there
    # on 1 January). Pension 1,200,000 − pension deduction 1,100,000 (65+) = 100,000 total income.
    _person(A, 1, HEAD, Sex.MALE, date(1950, 3, 10), _tax("toyonaka", 100_000),
            pension=Pension(EMPLOYEES, 1_200_000, 1_200_000), former="toyonaka",
            moved_in_on=date(2026, 2, 15)),
    # B, 76, still working (income 2,000,000), no public pension; C, his wife, 71: not insured.
    _person(B, 2, HEAD, Sex.MALE, date(1949, 9, 1), _tax("sakai", 2_000_000, 1_570_000),
            income=2_000_000),
    _person(C, 2, SPOUSE, Sex.FEMALE, date(1955, 4, 4), _tax("sakai", 0),
            pension=Pension(BASIC, 600_000, 600_000)),
    # D, 81, under DV support measures: every value about her is pushed auto-response-disabled.
    _person(D, 3, HEAD, Sex.FEMALE, date(1944, 12, 12), _tax("sakai", 0),
            pension=Pension(BASIC, 800_000, 800_000), dv=True),
    # E, 51, head of household, income 5,000,000, not insured; F, his mother, 80, insured,
    # basic pension 780,000 (below the deduction: total income 0).
    _person(E, 4, HEAD, Sex.MALE, date(1975, 1, 1), _tax("sakai", 5_000_000, 4_570_000),
            income=5_000_000),
    _person(F, 4, PARENT, Sex.FEMALE, date(1946, 6, 6), _tax("sakai", 0),
            pension=Pension(BASIC, 780_000, 780_000)),
    # G, 78, a small pension of 150,000 (few contribution months), no other income.
    _person(G, 5, HEAD, Sex.MALE, date(1948, 2, 2), _tax("sakai", 0),
            pension=Pension(BASIC, 150_000, 150_000)),
)  # fmt: skip
HOUSEHOLDS = (
    Household(1, "sakai", A, None, (), ()),
    Household(2, "sakai", B, C, (), ()),
    Household(3, "sakai", D, None, (), ()),
    Household(4, "sakai", E, None, (), (F,)),
    Household(5, "sakai", G, None, (), ()),
)
POPULATION = Population(seed=0, residents=7, persons=PERSONS, households=HOUSEHOLDS)
ON = date(2026, 7, 1)


@dataclass
class Run:
    result: ScenarioResult
    review: ReviewReport | None
    journey: Journey
    denial: Denial | None

    def outcome(self, phase: Phase, item: str, person: int) -> tuple[str, Outcome]:
        found = self.result.outcome_of(phase, item, person)
        assert found is not None, (phase, item, person)
        return found.query.provider, found.answer.outcome


async def _run(root: Path) -> Run:
    from simulator.world import WorldConfig, start_world

    world = await start_world(WorldConfig(root=root))
    try:
        scenario = Scenario(world, POPULATION, on=ON, concurrency=8)
        result = await scenario.run()
        reviewer = ConsoleReviewer(world, "sakai")
        await reviewer.enrol()
        review = await review_held(scenario, reviewer)
        journey = await trace_journey(scenario, A)
        return Run(result, review, journey, explain_denial(scenario))
    finally:
        await world.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return asyncio.run(_run(tmp_path_factory.mktemp("scenario")))


RA, SK, JP = Phase.REGIONAL_ASSOCIATION, Phase.MUNICIPALITY, Phase.PENSION_SERVICE


# --- the plan (no world) -----------------------------------------------------------------------


def test_the_insured_are_those_75_or_over_living_in_sakai() -> None:
    # A 76, B 76, D 81, F 80, G 78 are 75+; C is 71 and E 51, neither certified disabled.
    assert [p.person_id for p in insured_persons(POPULATION, ON)] == [A, B, D, F, G]


def test_each_business_system_registers_only_the_people_it_knows() -> None:
    batches = {
        (b.org, b.system): [p.person_id for p in b.persons] for b in registrations(POPULATION, ON)
    }
    # Toyonaka taxed only A (he lived there on 1 January); it keeps his removed record too.
    assert batches["toyonaka", "zeimu"] == batches["toyonaka", "juki"] == [A]
    # Osaka and Suita taxed nobody here: they register nobody.
    assert ("osaka", "zeimu") not in batches
    assert ("suita", "juki") not in batches
    # Sakai taxed everyone but A; its resident system knows all seven.
    assert batches["sakai", "zeimu"] == [B, C, D, E, F, G]
    assert batches["sakai", "juki"] == [A, B, C, D, E, F, G]
    assert batches["sakai", "kouki"] == [A, B, D, F, G]
    # JPS knows its pensioners (not B or E); the association the insured and their households.
    assert batches["jps", "nenkin"] == [A, C, D, F, G]
    assert batches["osaka-kouiki", "kouki"] == [A, B, C, D, E, F, G]


def test_only_the_dv_protected_persons_values_are_pushed_auto_response_disabled() -> None:
    flagged = {
        (batch.org, row.person_id)
        for batch in setup_duplicates(POPULATION, registrations(POPULATION, ON))
        for row in batch.rows
        if row.auto_response_disabled
    }
    # D's resident record and tax at Sakai, her pension at JPS; nobody else's.
    assert flagged == {("sakai", D), ("jps", D)}


def test_a_mover_has_a_removed_record_before_the_move_and_a_new_one_from_it() -> None:
    sakai = resident_record_value(POPULATION, PERSONS[A - 1], "sakai")
    toyonaka = resident_record_value(POPULATION, PERSONS[A - 1], "toyonaka")
    assert sakai is not None
    assert toyonaka is not None
    assert (sakai.effective_from, sakai.effective_to) == ("2026-02-15", "")
    assert sakai.content.resident_record.previous_municipality == "toyonaka"
    # Residence is known from the tax base date: Toyonaka's record ends the day before the move.
    assert (toyonaka.effective_from, toyonaka.effective_to) == ("2026-01-01", "2026-02-14")


def test_query_ids_are_deterministic_and_unique_in_each_business_system() -> None:
    q = PlannedQuery(RA, "osaka-kouiki", "kouki", "table2:80", "toyonaka", LOCAL_TAX, A)
    assert q.query_id == "regional_association.toyonaka.local_tax.00000001"
    assert q.address_number == "RAK00000001"


def test_the_showcase_adds_valid_distinct_people_to_a_population() -> None:
    bigger, labels = with_showcase(POPULATION)
    assert len(bigger) == len(POPULATION) + sum(len(h.members) for h in SHOWCASE)
    numbers = [p.individual_number for p in bigger.persons]
    assert len(set(numbers)) == len(numbers)
    assert all(validate(n) for n in numbers)
    assert len({p.resident_code for p in bigger.persons}) == len(bigger)
    (head, _spouse) = labels["mover_from_toyonaka"]
    assert bigger.person(head).local_tax.levied_by == "toyonaka"


# --- the run -----------------------------------------------------------------------------------


def test_the_association_asks_the_former_municipality_for_a_movers_tax(run: Run) -> None:
    # A lived in Toyonaka on 1 January: row 80 lets the association ask a municipality, and
    # Toyonaka holds his tax → PROVIDED by toyonaka. His resident record comes from Sakai.
    assert run.outcome(RA, LOCAL_TAX, A) == ("toyonaka", Outcome.PROVIDED)
    assert run.outcome(RA, RESIDENT_RECORD, A) == ("sakai", Outcome.PROVIDED)


def test_the_movers_premium_and_special_collection(run: Run) -> None:
    # Household income = A's 100,000 (he is the head and the only insured) ≤ 430,000 → 70 %
    # off the per-capita part: 54,124 × 30 % = 16,237; income part max(0, 100,000 − 430,000)
    # = 0; 16,237 floored to 100 yen = 16,200.
    premium = run.result.assessments[A].premium
    assert premium is not None
    assert (premium.reduction_percent, premium.annual) == (70, 16_200)
    # Sakai: pension PROVIDED by JPS; 1,200,000 ≥ 180,000 and 16,200 + 80,000 = 96,200 ≤
    # 600,000 (half the pension) → SPECIAL; 16,200 / 6 = 2,700 a payment.
    assert run.outcome(SK, PENSION_BENEFIT, A) == ("jps", Outcome.PROVIDED)
    assert run.outcome(SK, PREMIUM, A) == ("osaka-kouiki", Outcome.PROVIDED)
    collection = run.result.collections[A]
    assert collection.decision is CollectionDecision.SPECIAL
    assert collection.amount_per_payment == 2_700
    # JPS then finds Sakai's notice for him (row 83).
    assert run.outcome(JP, NOTICE, A) == ("sakai", Outcome.PROVIDED)


def test_a_person_without_pension_pays_by_ordinary_collection(run: Run) -> None:
    # B has no pension, so JPS never registered him: NO_DATA → ORDINARY.
    assert run.outcome(SK, PENSION_BENEFIT, B) == ("jps", Outcome.NO_DATA)
    assert run.result.collections[B].decision is CollectionDecision.ORDINARY
    assert run.result.collections[B].reason == "NO_PENSION"
    # His premium: household income 2,000,000 (head, only insured) > 430,000 + 545,000 →
    # no reduction: 54,124 + (2,000,000 − 430,000) × 11.12 % = 54,124 + 174,584 = 228,708
    # → 228,700.
    premium = run.result.assessments[B].premium
    assert premium is not None
    assert premium.annual == 228_700
    # C (71, not insured, not the head) is never asked about by the association.
    assert run.result.outcome_of(RA, LOCAL_TAX, C) is None


def test_the_head_counts_for_the_reduction_even_when_not_insured(run: Run) -> None:
    # F's household income reads F (insured, 0) and the head E (5,000,000): 5,000,000 >
    # 430,000 + 545,000 × 1 → no reduction; F's own income part is 0 → 54,124 → 54,100.
    assert run.outcome(RA, LOCAL_TAX, E) == ("sakai", Outcome.PROVIDED)
    premium = run.result.assessments[F].premium
    assert premium is not None
    assert (premium.reduction_percent, premium.annual) == (0, 54_100)
    # Pension 780,000: 54,100 + 80,000 = 134,100 ≤ 390,000 → SPECIAL, 54,100 / 6 → 9,000.
    assert run.result.collections[F].decision is CollectionDecision.SPECIAL
    assert run.result.collections[F].amount_per_payment == 9_000


def test_a_pension_too_small_to_carry_the_premium_means_ordinary_collection(run: Run) -> None:
    # G: 150,000 < 180,000 → ORDINARY, though the pension is PROVIDED.
    assert run.outcome(SK, PENSION_BENEFIT, G) == ("jps", Outcome.PROVIDED)
    assert run.result.collections[G].decision is CollectionDecision.ORDINARY
    assert run.result.collections[G].reason == "PENSION_TOO_SMALL"
    # No notice for him, so JPS's row-83 query finds none.
    assert run.outcome(JP, NOTICE, G) == ("sakai", Outcome.NO_DATA)


def test_a_dv_protected_person_is_held_for_review_and_left_undecided(run: Run) -> None:
    # Every value about D carries the flag: Sakai holds her records, JPS her pension.
    assert run.outcome(RA, RESIDENT_RECORD, D) == ("sakai", Outcome.HELD_FOR_REVIEW)
    assert run.outcome(RA, LOCAL_TAX, D) == ("sakai", Outcome.HELD_FOR_REVIEW)
    assert run.outcome(SK, PENSION_BENEFIT, D) == ("jps", Outcome.HELD_FOR_REVIEW)
    # So no premium is assessed (the association has none to provide) and Sakai cannot decide.
    assert run.result.assessments[D].premium is None
    assert run.outcome(SK, PREMIUM, D) == ("osaka-kouiki", Outcome.NO_DATA)
    assert run.result.collections[D].decision is CollectionDecision.UNDECIDED


def test_sakai_may_not_ask_a_municipality_for_local_tax_under_row_82(run: Run) -> None:
    # Row 82 names JPS (and the Minister, mutual aid associations) for pensions and the
    # association for premiums: a municipality is no provider under it → DENIED by the network.
    assert run.denial is not None
    assert (run.denial.query.provider, run.denial.query.data_item) == ("osaka", LOCAL_TAX)
    assert run.denial.reason == "PROVIDER_NOT_ALLOWED"
    assert ("regional_association", PREMIUM) in run.denial.allowed_for_procedure


def test_the_counts_add_up(run: Run) -> None:
    # Association: 5 resident records + tax of A B D E F G = 11; Sakai: 5 × 2 = 10, plus the
    # one denied probe; JPS: pensioners 65+ in Sakai A C D F G = 5. Total 27.
    # Provided: 9 (association: all but D's two) + 7 (Sakai: pensions A F G, premiums A B F G)
    # + 2 (notices A F) = 18; held: D × 3; denied: 1; no data: B's pension, D's premium, the
    # notices of C D G = 5.
    tally = run.result.tally().as_dict()
    assert tally == {
        "provided": 18,
        "denied": 1,
        "held_for_review": 3,
        "no_data": 5,
        "error": 0,
    }
    assert run.result.tally().queries == 27


def test_the_review_releases_one_held_answer_to_the_requester(run: Run) -> None:
    # Sakai holds two provisions for D (resident record and tax, asked by the association);
    # Sakai's reviewer approves one over ReviewService, and the association reads it PROVIDED.
    review = run.review
    assert review is not None
    assert (review.query.provider, review.query.person_id) == ("sakai", D)
    assert review.queue_length == 2
    assert review.delivered
    assert review.status_after == "QUERY_STATUS_PROVIDED"
    assert review.items_after == (review.query.data_item,)


def test_the_other_held_provision_is_declined_and_the_requester_sees_declined(run: Run) -> None:
    review = run.review
    assert review is not None
    assert review.declined is not None
    declined = review.declined
    assert (declined.query.provider, declined.query.person_id) == ("sakai", D)
    assert declined.permit_id != review.permit_id
    assert declined.decision == "declined"
    assert declined.delivered
    assert declined.status_after == "QUERY_STATUS_DECLINED"
    assert declined.items_after == ()
    # The held query outcomes the two reviews settled cover both of Sakai's held items.
    assert {review.query.data_item, declined.query.data_item} == {RESIDENT_RECORD, LOCAL_TAX}


def test_the_review_goes_through_the_staff_console_and_is_in_sakais_ledger(run: Run) -> None:
    review = run.review
    assert review is not None
    assert review.account == "organizations/sakai/staff/sato.h"
    assert "ReviewService" in review.via
    # A new account must change its initial password before anything else.
    assert review.calls == (
        "StaffService.SignIn",
        "StaffService.ChangePassword",
        "StaffService.SignIn",
        "ReviewService.ListHeldProvisions",
        "ReviewService.ApproveHeldProvision",
        "ReviewService.DeclineHeldProvision",
        "StaffService.SignOut",
    )
    assert review.ledger == "server:sakai"
    records = review.staff_records
    assert records.get("STAFF_SIGNED_IN") == 2
    assert records.get("STAFF_SIGNED_OUT") == 1
    assert records.get("REVIEW_APPROVED") == 1
    assert records.get("REVIEW_DECLINED") == 1
    # ChangePassword, List, Approve and Decline are each an operation of the reviewer.
    assert records.get("STAFF_OPERATION", 0) >= 4


def test_the_journey_shows_codes_queries_and_records_at_three_places(run: Run) -> None:
    journey = run.journey
    # A is known to Sakai, Toyonaka, JPS and the association: a code at each.
    assert {c.org for c in journey.codes} == {"sakai", "toyonaka", "jps", "osaka-kouiki"}
    assert all(c.unified_number.startswith("~") for c in journey.codes)  # masked
    assert journey.decision == "special"
    places = {r.place for r in journey.records}
    assert places == {"requester", "network", "provider"}
    assert all(r.subject.startswith("~") for r in journey.records)
