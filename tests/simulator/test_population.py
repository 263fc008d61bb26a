"""The synthetic population: determinism, sizes, shares, identifiers, moves, tax and insurance.

Generating a million people is too slow for CI; it is measured by hand (see the module
docstring of simulator.population). The shares are checked on 50,000 residents, where the
household-level randomness (moves, DV measures) is small enough for tight tolerances.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import date

import pytest

from simulator import population as pop
from simulator.population import (
    FISCAL_YEAR_START,
    PENSION_SERVICE,
    PERIOD_END,
    PERIOD_START,
    TAX_BASE_DATE,
    LocalTax,
    PensionKind,
    Person,
    Population,
    Relationship,
    age_on,
    assess_local_tax,
    generate,
    insured_late_stage,
    municipality_on,
)
from unified_address.individual_number import is_valid

RESIDENTS = 50_000


@pytest.fixture(scope="module")
def population() -> Population:
    return generate(RESIDENTS, seed=2026)


@pytest.fixture(scope="module")
def sakai(population: Population) -> list[Person]:
    return list(population.residents_of("sakai"))


def _share(selected: int, total: int) -> float:
    return selected / total


# -- determinism and size ---------------------------------------------------------------------


def test_same_seed_gives_byte_identical_population() -> None:
    first, second = generate(3_000, seed=7), generate(3_000, seed=7)
    assert first == second
    assert first.fingerprint() == second.fingerprint()
    assert [repr(p) for p in first.persons] == [repr(p) for p in second.persons]


def test_different_seed_gives_different_population() -> None:
    first, second = generate(3_000, seed=7), generate(3_000, seed=8)
    assert first != second
    assert first.fingerprint() != second.fingerprint()
    assert {p.resident_code for p in first.persons}.isdisjoint(
        p.resident_code for p in second.persons
    )


@pytest.mark.parametrize("residents", [0, 1, 2, 7, 1_000, 12_345])
def test_sizes(residents: int) -> None:
    population = generate(residents, seed=1)
    assert sum(1 for _ in population.residents_of("sakai")) == residents
    assert population.residents == residents
    moved_out = [p for p in population.persons if p.municipality != "sakai"]
    assert len(moved_out) == round(residents * pop.DEFAULT_MOVED_OUT_SHARE)
    assert [p.person_id for p in population.persons] == list(range(1, len(population) + 1))
    ids = [h.household_id for h in population.households]
    assert ids == list(range(1, len(ids) + 1))


def test_no_moved_out_people_on_request() -> None:
    population = generate(2_000, seed=3, moved_out_share=0.0)
    assert len(population) == 2_000
    assert all(p.municipality == "sakai" for p in population.persons)


@pytest.mark.parametrize(("residents", "share"), [(-1, 0.01), (10, -0.1), (10, 1.5)])
def test_rejects_bad_arguments(residents: int, share: float) -> None:
    with pytest.raises(ValueError, match="must"):
        generate(residents, moved_out_share=share)


# -- households -------------------------------------------------------------------------------


def test_households_and_people_agree(population: Population) -> None:
    seen: list[int] = []
    for household in population.households:
        members = population.members(household)
        assert members[0].person_id == household.head
        assert members[0].relationship is Relationship.HEAD
        assert all(p.household_id == household.household_id for p in members)
        assert all(p.municipality == household.municipality for p in members)
        assert [p.relationship for p in members[1:]].count(Relationship.HEAD) == 0
        if household.spouse is not None:
            assert population.person(household.spouse).relationship is Relationship.SPOUSE
        assert all(
            population.person(c).relationship is Relationship.CHILD for c in household.children
        )
        seen.extend(household.members)
    assert sorted(seen) == list(range(1, len(population) + 1))


def test_household_sizes_are_realistic(population: Population) -> None:
    sizes = Counter(len(h) for h in population.households)
    households = len(population.households)
    assert 2.0 <= len(population) / households <= 2.5  # a big Japanese city: about 2.2
    assert 0.30 <= sizes[1] / households <= 0.42  # one-person households
    assert max(sizes) <= 8


def test_elderly_couples_and_single_elderly_are_common(population: Population) -> None:
    ref = FISCAL_YEAR_START
    single_elderly = elderly_couples = 0
    for household in population.households:
        members = population.members(household)
        if all(age_on(p, ref) >= 65 for p in members):
            single_elderly += len(members) == 1
            elderly_couples += len(members) == 2 and household.spouse is not None
    households = len(population.households)
    assert 0.12 <= single_elderly / households <= 0.22
    assert 0.08 <= elderly_couples / households <= 0.18


def test_family_name_is_mostly_shared_in_a_household(population: Population) -> None:
    shared = total = 0
    for household in population.households:
        members = population.members(household)
        shared += sum(p.family_name == members[0].family_name for p in members)
        total += len(members)
    assert shared / total >= 0.95


def test_names_are_kanji_and_katakana(population: Population) -> None:
    for person in population.persons[:2_000]:
        assert person.family_name
        assert person.given_name
        for kana in (person.family_name_kana, person.given_name_kana):
            assert all("ァ" <= c <= "ヶ" or c == "ー" for c in kana), kana
        assert not any("ぁ" <= c <= "ヶ" for c in person.family_name + person.given_name)


# -- shares -----------------------------------------------------------------------------------


def test_age_pyramid(sakai: list[Person]) -> None:
    ages = [age_on(p, FISCAL_YEAR_START) for p in sakai]
    n = len(ages)
    assert 0.155 <= _share(sum(a >= 75 for a in ages), n) <= 0.185
    assert 0.105 <= _share(sum(65 <= a < 75 for a in ages), n) <= 0.135
    assert 0.10 <= _share(sum(a < 15 for a in ages), n) <= 0.14
    assert max(ages) <= 104
    assert all(p.birth_date <= TAX_BASE_DATE for p in sakai)


def test_disability_certification_share(sakai: list[Person]) -> None:
    ages = {p.person_id: age_on(p, FISCAL_YEAR_START) for p in sakai}
    young_old = [p for p in sakai if 65 <= ages[p.person_id] <= 74]
    certified = sum(p.disability_certified for p in young_old)
    assert 0.01 <= _share(certified, len(young_old)) <= 0.02
    # Only 65-74-year-olds are certified: at 75 everyone is insured anyway.
    assert all(65 <= ages[p.person_id] <= 74 for p in sakai if p.disability_certified)


def test_dv_share_and_auto_response_flag(sakai: list[Person]) -> None:
    protected = [p for p in sakai if p.dv_protected]
    assert 0.0025 <= _share(len(protected), len(sakai)) <= 0.0065  # ~0.45%, household-level
    assert all(p.auto_response_disabled for p in protected)
    assert not any(p.auto_response_disabled for p in sakai if not p.dv_protected)


def test_movers_share(sakai: list[Person]) -> None:
    movers = sum(p.moved_in_on is not None for p in sakai)
    assert 0.02 <= _share(movers, len(sakai)) <= 0.04


def test_deaths_are_elderly_and_in_the_period(population: Population) -> None:
    dead = [p for p in population.persons if p.died_on is not None]
    elderly = [p for p in population.persons if age_on(p, FISCAL_YEAR_START) >= 65]
    assert 0.02 <= _share(len(dead), len(elderly)) <= 0.10
    for person in dead:
        assert person.died_on is not None
        assert age_on(person, FISCAL_YEAR_START) >= 65
        assert PERIOD_START <= person.died_on <= PERIOD_END
        if person.moved_in_on is not None:
            assert person.died_on > person.moved_in_on


def test_most_elderly_have_a_pension_from_the_pension_service(sakai: list[Person]) -> None:
    elderly = [p for p in sakai if age_on(p, FISCAL_YEAR_START) >= 65]
    pensions = [p.pension for p in elderly if p.pension is not None]
    assert _share(len(pensions), len(elderly)) >= 0.95
    kinds = Counter(p.kind for p in pensions)
    assert set(kinds) == set(PensionKind)
    assert kinds[PensionKind.OLD_AGE_EMPLOYEES] > kinds[PensionKind.OLD_AGE_BASIC] / 2
    for pension in pensions:
        assert pension.payer == PENSION_SERVICE
        assert 0 < pension.annual_amount <= 5_000_000
        if pension.kind is PensionKind.OLD_AGE_BASIC:
            assert pension.annual_amount <= pop.FULL_BASIC_PENSION
        if pension.kind in (PensionKind.OLD_AGE_BASIC, PensionKind.OLD_AGE_EMPLOYEES):
            assert pension.taxable_amount == pension.annual_amount
        elif pension.kind is PensionKind.DISABILITY:
            assert pension.taxable_amount == 0
        else:
            assert pension.taxable_amount < pension.annual_amount


# -- identifiers ------------------------------------------------------------------------------


def test_individual_numbers_are_valid_and_unique(population: Population) -> None:
    numbers = [p.individual_number for p in population.persons]
    assert all(is_valid(n) for n in numbers)
    assert len(set(numbers)) == len(numbers)


def test_resident_codes_are_eleven_digits_and_unique(population: Population) -> None:
    codes = [p.resident_code for p in population.persons]
    assert all(len(c) == 11 and c.isascii() and c.isdigit() for c in codes)
    assert len(set(codes)) == len(codes)


def test_individual_number_is_not_the_resident_code(population: Population) -> None:
    assert not any(p.individual_number[:11] == p.resident_code for p in population.persons)


def test_lookups(population: Population) -> None:
    person = population.persons[12_345]
    assert population.person(person.person_id) is person
    assert population.by_resident_code(person.resident_code) is person
    assert population.by_individual_number(person.individual_number) is person
    assert population.by_resident_code("00000000000x") is None
    assert person in population.members(person.household_id)
    assert population.household_of(person).household_id == person.household_id
    with pytest.raises(KeyError):
        population.person(0)
    with pytest.raises(KeyError):
        population.household(len(population.households) + 1)


def test_municipalities() -> None:
    codes = {m.org_code: m.local_government_code for m in pop.MUNICIPALITIES.values()}
    assert codes == {
        "sakai": "271403",
        "osaka": "271004",
        "toyonaka": "272035",
        "suita": "272051",
    }


# -- moves and the 1 January rule -------------------------------------------------------------


def test_movers_are_taxed_by_their_former_municipality(population: Population) -> None:
    movers = [p for p in population.persons if p.moved_in_on is not None]
    assert {p.municipality_on_tax_base_date for p in movers if p.municipality == "sakai"} == {
        "osaka",
        "toyonaka",
        "suita",
    }
    for person in movers:
        assert person.moved_in_on is not None
        assert PERIOD_START <= person.moved_in_on <= PERIOD_END
        assert person.municipality_on_tax_base_date != person.municipality
        assert person.local_tax.levied_by == person.municipality_on_tax_base_date
        assert municipality_on(person, TAX_BASE_DATE) == person.municipality_on_tax_base_date
        assert municipality_on(person, person.moved_in_on) == person.municipality


def test_people_who_moved_out_are_still_taxed_by_sakai(population: Population) -> None:
    moved_out = [p for p in population.persons if p.municipality != "sakai"]
    assert moved_out
    assert all(p.moved_in_on is not None for p in moved_out)
    assert {p.local_tax.levied_by for p in moved_out} == {"sakai"}


def test_people_who_did_not_move_are_taxed_where_they_live(population: Population) -> None:
    stayers = [p for p in population.persons if p.moved_in_on is None]
    assert all(p.municipality_on_tax_base_date == p.municipality for p in stayers)
    assert all(p.local_tax.levied_by == p.municipality for p in stayers)


# -- the local tax rule -----------------------------------------------------------------------


def test_local_tax_by_hand_employee_in_a_non_designated_city() -> None:
    # 3,000,000 income, no pension: taxable 3,000,000 - 430,000 = 2,570,000;
    # municipal 6% = 154,200; prefectural 4% = 102,800; per capita 3,000 + 1,000 + 1,000.
    tax = assess_local_tax(3_000_000, 0, aged_65_or_over=False, levied_by="toyonaka")
    assert (tax.total_income, tax.taxable_income) == (3_000_000, 2_570_000)
    assert (tax.municipal_income_levy, tax.prefectural_income_levy) == (154_200, 102_800)
    assert (tax.per_capita_levy, tax.total, tax.non_taxable) == (5_000, 262_000, False)
    assert (tax.levied_by, tax.fiscal_year) == ("toyonaka", 2026)


def test_local_tax_by_hand_same_income_in_sakai_splits_8_2() -> None:
    # A designated city: municipal 8% of 2,570,000 = 205,600; prefectural 2% = 51,400.
    tax = assess_local_tax(3_000_000, 0, aged_65_or_over=False, levied_by="sakai")
    assert (tax.municipal_income_levy, tax.prefectural_income_levy) == (205_600, 51_400)
    assert tax.total == 262_000


def test_local_tax_by_hand_pensioner() -> None:
    # Pension 2,000,000 at 65+: deduction 1,100,000, pension income 900,000 = total income;
    # taxable 900,000 - 430,000 = 470,000; 8% = 37,600; 2% = 9,400; + 5,000 = 52,000.
    tax = assess_local_tax(0, 2_000_000, aged_65_or_over=True, levied_by="sakai")
    assert (tax.pension_income, tax.total_income, tax.taxable_income) == (900_000, 900_000, 470_000)
    assert (tax.municipal_income_levy, tax.prefectural_income_levy) == (37_600, 9_400)
    assert tax.total == 52_000


def test_local_tax_by_hand_large_pension_and_rounding() -> None:
    # Pension 3,600,000 at 65+: deduction 3,600,000 x 25% + 275,000 = 1,175,000, pension
    # income 2,425,000; total 2,425,000 + 1,234,567 = 3,659,567; taxable 3,229,567 -> 3,229,000
    # (1,000-yen floor); 6% = 193,740 -> 193,700; 4% = 129,160 -> 129,100 (100-yen floors);
    # total 193,700 + 129,100 + 5,000 = 327,800.
    tax = assess_local_tax(1_234_567, 3_600_000, aged_65_or_over=True, levied_by="suita")
    assert tax.pension_income == 2_425_000
    assert (tax.total_income, tax.taxable_income) == (3_659_567, 3_229_000)
    assert (tax.municipal_income_levy, tax.prefectural_income_levy) == (193_700, 129_100)
    assert tax.total == 327_800


def test_local_tax_non_taxable_threshold() -> None:
    # Pension 1,500,000 at 65+: pension income 400,000 <= 450,000: non-taxable.
    assert assess_local_tax(0, 1_500_000, aged_65_or_over=True, levied_by="sakai").non_taxable
    # Under 65 the same pension leaves 1,500,000 - 600,000 = 900,000: taxable.
    assert not assess_local_tax(0, 1_500_000, aged_65_or_over=False, levied_by="sakai").non_taxable
    at_limit = assess_local_tax(450_000, 0, aged_65_or_over=False, levied_by="osaka")
    assert (at_limit.non_taxable, at_limit.total, at_limit.taxable_income) == (True, 0, 0)
    # 451,000: taxable 21,000; 8% = 1,680 -> 1,600; 2% = 420 -> 400; + 5,000 = 7,000.
    above = assess_local_tax(451_000, 0, aged_65_or_over=False, levied_by="osaka")
    assert (above.non_taxable, above.taxable_income, above.total) == (False, 21_000, 7_000)


def test_generated_tax_follows_the_rule(population: Population) -> None:
    # People who were 65 for the whole income year received their full taxable pension in it;
    # people under 60 have no taxable pension at all (a disability pension is not taxable).
    checked = 0
    for person in population.persons:
        age = age_on(person, date(2025, 1, 1))
        if age >= 66 or age < 60:
            receipts = person.pension.taxable_amount if person.pension and age >= 66 else 0
            expected = assess_local_tax(
                person.income,
                receipts,
                aged_65_or_over=age >= 66,
                levied_by=person.municipality_on_tax_base_date,
            )
            assert person.local_tax == expected
            checked += 1
    assert checked > len(population) * 0.8


def test_share_of_non_taxable_elderly_is_large(sakai: list[Person]) -> None:
    taxes: list[LocalTax] = [p.local_tax for p in sakai if age_on(p, FISCAL_YEAR_START) >= 75]
    assert 0.5 <= _share(sum(t.non_taxable for t in taxes), len(taxes)) <= 0.85


# -- age and late-stage insurance ------------------------------------------------------------


def _someone(population: Population, **changes: object) -> Person:
    base = next(p for p in population.persons if p.moved_in_on is None and p.died_on is None)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_age_goes_up_on_the_birthday(population: Population) -> None:
    person = _someone(population, birth_date=date(1951, 7, 15))
    assert age_on(person, date(2026, 7, 14)) == 74
    assert age_on(person, date(2026, 7, 15)) == 75
    leapling = _someone(population, birth_date=date(1952, 2, 29))
    assert age_on(leapling, date(2027, 2, 28)) == 74
    assert age_on(leapling, date(2027, 3, 1)) == 75


def test_insured_from_the_75th_birthday(population: Population) -> None:
    person = _someone(population, birth_date=date(1951, 7, 15), disability_certified=False)
    assert not insured_late_stage(person, date(2026, 7, 14))
    assert insured_late_stage(person, date(2026, 7, 15))


def test_insured_65_to_74_only_with_certified_disability(population: Population) -> None:
    certified = _someone(population, birth_date=date(1956, 5, 1), disability_certified=True)
    assert insured_late_stage(certified, date(2026, 7, 1))  # aged 70
    assert not insured_late_stage(
        dataclasses.replace(certified, disability_certified=False), date(2026, 7, 1)
    )
    young = dataclasses.replace(certified, birth_date=date(1962, 5, 1))  # aged 64
    assert not insured_late_stage(young, date(2026, 7, 1))


def test_insurance_ends_the_day_after_death(population: Population) -> None:
    person = _someone(population, birth_date=date(1940, 1, 1), died_on=date(2026, 9, 30))
    assert insured_late_stage(person, date(2026, 9, 30))
    assert not insured_late_stage(person, date(2026, 10, 1))


def test_insured_count_matches_ages(population: Population, sakai: list[Person]) -> None:
    on = date(2026, 7, 1)
    insured = list(population.insured(on))
    assert all(age_on(p, on) >= 65 for p in insured)
    share = _share(sum(p.municipality == "sakai" for p in insured), len(sakai))
    assert 0.15 <= share <= 0.19
