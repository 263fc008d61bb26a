"""Late-stage elderly medical care (後期高齢者医療) decisions, as plain functions.

The eligibility clients of the world use these after their queries come back: the regional
association (広域連合) assesses each insured person's premium from local tax data (別表第二
第八十項), and Sakai City (市町村長, 第八十二項) decides how it is collected from pension data
and the assessed premium. Every rule is stated with its simplification so a test can recompute
it by hand.

The rates are illustrative constants of the order an Osaka-sized association uses, not an
authoritative tariff: the simulation needs realistic shapes, not real money.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# 保険料率 (illustrative): per-capita part (均等割額) and income part (所得割率), annual cap.
PER_CAPITA_PREMIUM = 54_124
INCOME_RATE_BASIS_POINTS = 1112  # 11.12 %, kept in integers so yen never round through floats
PREMIUM_CAP = 800_000
# 基礎控除 used for the income basis of the income part (旧ただし書き所得).
BASIC_DEDUCTION = 430_000
# Reduction of the per-capita part for low-income households (均等割軽減), by household total
# income of the insured persons and the head: 7割 / 5割 / 2割. The thresholds follow the shape of
# 高齢者の医療の確保に関する法律施行令 第18条 (430,000 + an amount per insured person).
REDUCTION_70_LIMIT = 430_000
REDUCTION_50_PER_PERSON = 295_000
REDUCTION_20_PER_PERSON = 545_000
# Special collection (特別徴収) applies when the annual pension is at least 180,000 yen and the
# premium (with the long-term care premium, estimated here) is at most half of it
# (高齢者の医療の確保に関する法律 第107条, 同施行令 第22条・第23条).
SPECIAL_COLLECTION_MIN_PENSION = 180_000
ESTIMATED_CARE_PREMIUM = 80_000
PAYMENTS_PER_YEAR = 6  # pensions are paid every two months


class CollectionDecision(StrEnum):
    """What Sakai decides for one insured person."""

    SPECIAL = "special"  # 特別徴収: withheld from the pension
    ORDINARY = "ordinary"  # 普通徴収: paid by the person
    UNDECIDED = "undecided"  # data missing, held or denied: decided by staff later


@dataclass(frozen=True, slots=True)
class Premium:
    """An assessed annual premium and how it was reached."""

    annual: int
    per_capita: int
    income_part: int
    reduction_percent: int


def reduction_percent(household_income: int, insured_in_household: int) -> int:
    """The per-capita reduction (0, 20, 50 or 70 percent) for a household's total income."""
    if household_income <= REDUCTION_70_LIMIT:
        return 70
    if household_income <= REDUCTION_70_LIMIT + REDUCTION_50_PER_PERSON * insured_in_household:
        return 50
    if household_income <= REDUCTION_70_LIMIT + REDUCTION_20_PER_PERSON * insured_in_household:
        return 20
    return 0


def assess_premium(total_income: int, household_income: int, insured_in_household: int) -> Premium:
    """The annual premium of one insured person (rounded down to 100 yen, capped)."""
    percent = reduction_percent(household_income, insured_in_household)
    per_capita = PER_CAPITA_PREMIUM * (100 - percent) // 100
    income_part = max(0, total_income - BASIC_DEDUCTION) * INCOME_RATE_BASIS_POINTS // 10_000
    annual = min(PREMIUM_CAP, (per_capita + income_part) // 100 * 100)
    return Premium(annual, per_capita, income_part, percent)


def decide_collection(annual_pension: int | None, annual_premium: int | None) -> CollectionDecision:
    """Special collection when the pension is large enough to carry the premiums, else ordinary.

    Missing pension data (NO_DATA: no public pension) means ordinary collection; a missing
    premium (not yet assessed, held or denied) leaves the decision to staff.
    """
    if annual_premium is None:
        return CollectionDecision.UNDECIDED
    if annual_pension is None or annual_pension < SPECIAL_COLLECTION_MIN_PENSION:
        return CollectionDecision.ORDINARY
    if annual_premium + ESTIMATED_CARE_PREMIUM > annual_pension // 2:
        return CollectionDecision.ORDINARY
    return CollectionDecision.SPECIAL


def amount_per_payment(annual_premium: int) -> int:
    """The premium withheld at each bimonthly pension payment (rounded down to 100 yen)."""
    return annual_premium // PAYMENTS_PER_YEAR // 100 * 100
