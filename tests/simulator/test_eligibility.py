"""The late-stage premium and collection rules, recomputed by hand from the stated rates."""

from __future__ import annotations

from simulator.eligibility import (
    CollectionDecision,
    amount_per_payment,
    assess_premium,
    decide_collection,
    reduction_percent,
)


def test_a_middle_income_single_person_pays_the_full_per_capita_part_plus_the_income_part() -> None:
    # 1,500,000 > 430,000 + 545,000 → no reduction; per capita 54,124;
    # income part (1,500,000 − 430,000) × 11.12 % = 118,984; 173,108 → 173,100 (100-yen floor).
    premium = assess_premium(1_500_000, household_income=1_500_000, insured_in_household=1)
    assert (premium.reduction_percent, premium.per_capita, premium.income_part) == (
        0,
        54_124,
        118_984,
    )
    assert premium.annual == 173_100


def test_a_household_without_income_gets_the_seventy_percent_reduction() -> None:
    # 0 ≤ 430,000 → 70 % off: 54,124 × 30 % = 16,237.2 → 16,237; no income part → 16,200.
    premium = assess_premium(0, household_income=0, insured_in_household=1)
    assert (premium.reduction_percent, premium.per_capita, premium.annual) == (70, 16_237, 16_200)


def test_a_low_income_household_gets_half_off_the_per_capita_part() -> None:
    # 600,000 ≤ 430,000 + 295,000 → 50 %: 27,062; income part 170,000 × 11.12 % = 18,904;
    # 45,966 → 45,900.
    premium = assess_premium(600_000, household_income=600_000, insured_in_household=1)
    assert (premium.reduction_percent, premium.annual) == (50, 45_900)


def test_the_reduction_thresholds_grow_with_the_insured_persons_of_the_household() -> None:
    # Two insured: 50 % up to 430,000 + 2 × 295,000 = 1,020,000; 20 % up to 1,520,000.
    assert reduction_percent(1_020_000, 2) == 50
    assert reduction_percent(1_020_001, 2) == 20
    assert reduction_percent(1_520_000, 2) == 20
    assert reduction_percent(1_520_001, 2) == 0


def test_the_premium_is_capped() -> None:
    assert (
        assess_premium(10_000_000, household_income=10_000_000, insured_in_household=1).annual
        == 800_000
    )


def test_collection_is_special_when_the_pension_carries_both_premiums() -> None:
    # 173,100 + 80,000 (estimated care premium) = 253,100 ≤ 1,200,000 / 2.
    assert decide_collection(1_200_000, 173_100) is CollectionDecision.SPECIAL


def test_collection_is_ordinary_below_the_pension_floor_or_when_premiums_exceed_half() -> None:
    assert decide_collection(170_000, 16_200) is CollectionDecision.ORDINARY  # < 180,000
    assert decide_collection(400_000, 173_100) is CollectionDecision.ORDINARY  # 253,100 > 200,000
    assert decide_collection(None, 16_200) is CollectionDecision.ORDINARY  # no public pension


def test_without_a_premium_the_decision_is_left_to_staff() -> None:
    assert decide_collection(1_200_000, None) is CollectionDecision.UNDECIDED


def test_the_amount_per_payment_is_a_sixth_rounded_down_to_hundreds() -> None:
    assert amount_per_payment(173_100) == 28_800  # 28,850 → 28,800
