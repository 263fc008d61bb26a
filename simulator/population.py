"""The synthetic population: Sakai City's residents as the late-stage elderly affairs see them.

Owns: the deterministic generation of people (人), households (世帯), the municipalities they
live in, their birth dates, moves, deaths, prior-year income (所得), FY2026 local tax (住民税),
public pensions (公的年金) and DV support measures (DV等支援措置); plus the two small rules the
rest of the simulation leans on: who is insured under late-stage elderly medical care
(:func:`insured_late_stage`) and how the local tax is assessed (:func:`assess_local_tax`).

Must never:

- contain or produce real personal data. Names are built from kanji/kana parts written below;
  resident codes are random digits; individual numbers are keyed hashes of those. Any
  resemblance to a real person is chance.
- be non-deterministic. The same ``residents`` and ``seed`` give byte-identical output on any
  machine (CPython's ``random.Random`` with an int or str seed is stable across platforms and
  versions since 3.2; nothing here depends on hash randomisation, set order or the clock).
- hand out an individual number anywhere but to the registry and unified address stand-ins
  that issue and hold them: this module makes them, it does not log or print them.

The simulated period runs from the day after the tax base date (2026-01-02) to the end of
fiscal year 2026 (2027-03-31): every move and death happens in it. Everybody was born on or
before the tax base date, so everybody has an FY2026 local tax record.

Scale: ``generate(1_000_000)`` takes about 20 seconds and under 600 MB (peak RSS of the whole
process, measured on a 2-core machine with CPython 3.11). Records are slotted frozen
dataclasses; repeated values (dates, names, tax records, pensions) are shared objects rather
than copies; the cyclic garbage collector is paused while the records pile up.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import hashlib
import itertools
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Final, NamedTuple

from unified_address.individual_number import complete

# --------------------------------------------------------------------------------------------
# Calendar
# --------------------------------------------------------------------------------------------

FISCAL_YEAR: Final = 2026
"""The fiscal year (年度) simulated: April 2026 to March 2027."""
FISCAL_YEAR_START: Final = date(2026, 4, 1)
FISCAL_YEAR_END: Final = date(2027, 3, 31)
TAX_BASE_DATE: Final = date(2026, 1, 1)
"""賦課期日: FY2026 住民税 is levied by the municipality where the person lived on this day:
the taxpayer is an individual with an address there, i.e. in its resident register (地方税法
第24条 (道府県民税), 第294条 (市町村民税)), judged on 1 January (賦課期日, 第39条 / 第318条)."""
INCOME_YEAR: Final = 2025
"""The calendar year whose income the FY2026 local tax is assessed on (前年所得)."""
PERIOD_START: Final = TAX_BASE_DATE + timedelta(days=1)
"""First day on which moves and deaths happen."""
PERIOD_END: Final = FISCAL_YEAR_END
"""Last day on which moves and deaths happen."""
AGE_REFERENCE_DATE: Final = FISCAL_YEAR_START
"""The age pyramid is the population's ages on this day."""

# --------------------------------------------------------------------------------------------
# Organizations
# --------------------------------------------------------------------------------------------

PENSION_SERVICE: Final = "jps"
"""Org code of the Japan Pension Service (日本年金機構), the payer of every public pension here."""
MAIN_MUNICIPALITY: Final = "sakai"


@dataclass(slots=True, frozen=True)
class Municipality:
    """A municipality (市町村): a short org code and its local government code (団体コード).

    ``designated_city`` (政令指定都市) changes how the 10% income levy is split: 8% municipal
    and 2% prefectural instead of 6% and 4% (地方税法 第314条の3第1項, 第35条第1項, since
    FY2018). The total is the same either way.
    """

    org_code: str
    local_government_code: str
    name: str
    name_kana: str
    prefecture_code: str
    prefecture: str
    designated_city: bool


MUNICIPALITIES: Final[Mapping[str, Municipality]] = MappingProxyType(
    {
        m.org_code: m
        for m in (
            Municipality("sakai", "271403", "堺市", "サカイシ", "27", "大阪府", True),
            Municipality("osaka", "271004", "大阪市", "オオサカシ", "27", "大阪府", True),
            Municipality("toyonaka", "272035", "豊中市", "トヨナカシ", "27", "大阪府", False),
            Municipality("suita", "272051", "吹田市", "スイタシ", "27", "大阪府", False),
        )
    }
)
"""Every municipality in the simulation, by org code. All are in Osaka prefecture, so all their
residents belong to the same regional association (大阪府後期高齢者医療広域連合)."""

REGIONAL_ASSOCIATION_PREFECTURE: Final = "27"
"""The prefecture whose regional association insures the population (大阪府)."""

# Where people who move into Sakai come from, and where leavers go (weights: Osaka City
# dominates because it is the big neighbour).
_OTHER_MUNICIPALITIES: Final = ("osaka", "toyonaka", "suita")
_OTHER_MUNICIPALITY_CUM_WEIGHTS: Final = (0.64, 0.82, 1.0)

# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


class Sex(StrEnum):
    """性別 as recorded in the resident register."""

    MALE = "male"
    FEMALE = "female"


class Relationship(StrEnum):
    """続柄: the person's relationship to the head of the household."""

    HEAD = "head"  # 世帯主
    SPOUSE = "spouse"  # 妻 / 夫
    CHILD = "child"  # 子
    PARENT = "parent"  # 父 / 母 (of the head)
    OTHER = "other"  # その他 (siblings, in-laws, lodgers)

    @property
    def japanese(self) -> str:
        return _RELATIONSHIP_JA[self]


_RELATIONSHIP_JA: Final = {
    Relationship.HEAD: "世帯主",
    Relationship.SPOUSE: "配偶者",
    Relationship.CHILD: "子",
    Relationship.PARENT: "親",
    Relationship.OTHER: "その他",
}


class PensionKind(StrEnum):
    """The main public pension a person receives from the Japan Pension Service."""

    OLD_AGE_BASIC = "old_age_basic"  # 老齢基礎年金 only
    OLD_AGE_EMPLOYEES = "old_age_employees"  # 老齢基礎年金 + 老齢厚生年金
    SURVIVORS = "survivors"  # 遺族厚生年金 (with the person's own 老齢基礎年金 when 65+)
    DISABILITY = "disability"  # 障害基礎年金 (+ 障害厚生年金)


@dataclass(slots=True, frozen=True)
class Pension:
    """A public pension for FY2026: what the Japan Pension Service pays a year.

    ``taxable_amount`` is the part that is 公的年金等の収入 for tax: survivors' and disability
    pensions are not taxable (国民年金法 第25条, 厚生年金保険法 第41条第2項), old-age ones are.
    """

    kind: PensionKind
    annual_amount: int
    taxable_amount: int
    payer: str = PENSION_SERVICE


@dataclass(slots=True, frozen=True)
class LocalTax:
    """An FY2026 individual inhabitant tax assessment (個人住民税), see :func:`assess_local_tax`.

    ``levied_by`` is the org code of the municipality of residence on :data:`TAX_BASE_DATE`,
    which assesses and collects both the municipal and the prefectural part.
    """

    fiscal_year: int
    levied_by: str
    total_income: int  # 合計所得金額: other income + pension income
    pension_income: int  # 公的年金等に係る雑所得: taxable pension minus the pension deduction
    taxable_income: int  # 課税標準: total income minus the basic deduction, floor 1,000 yen
    non_taxable: bool  # 非課税: neither levy is charged
    per_capita_levy: int  # 均等割 (municipal + prefectural + 森林環境税)
    municipal_income_levy: int  # 市町村民税所得割
    prefectural_income_levy: int  # 道府県民税所得割

    @property
    def income_levy(self) -> int:
        """所得割, municipal and prefectural together."""
        return self.municipal_income_levy + self.prefectural_income_levy

    @property
    def total(self) -> int:
        """The annual amount assessed."""
        return self.per_capita_levy + self.income_levy


@dataclass(slots=True, frozen=True)
class Person:
    """One person in the resident records (住民票), current or removed (除票: moved out, died).

    ``municipality`` is where the person lives now (or lived last, if they died);
    ``municipality_on_tax_base_date`` where they lived on :data:`TAX_BASE_DATE`, which is who
    levies their FY2026 local tax. ``moved_in_on`` is the day they moved into
    ``municipality`` when that happened in the simulated period, else ``None``; the two
    municipalities differ exactly when it is set. ``income`` is the prior calendar year's
    所得 other than public pensions (給与所得 etc., after the employment-income deduction).
    """

    person_id: int
    resident_code: str
    individual_number: str
    family_name: str
    given_name: str
    family_name_kana: str
    given_name_kana: str
    sex: Sex
    birth_date: date
    household_id: int
    relationship: Relationship
    municipality: str
    municipality_on_tax_base_date: str
    moved_in_on: date | None
    died_on: date | None
    disability_certified: bool
    dv_protected: bool
    income: int
    pension: Pension | None
    local_tax: LocalTax

    @property
    def auto_response_disabled(self) -> bool:
        """自動応答不可フラグ: set for everyone under DV support measures, so no provider ever
        answers a query about them without staff review."""
        return self.dv_protected


@dataclass(slots=True, frozen=True)
class Household:
    """A household (世帯) by person ids; ``others`` are parents, siblings and the like."""

    household_id: int
    municipality: str
    head: int
    spouse: int | None
    children: tuple[int, ...]
    others: tuple[int, ...]

    @property
    def members(self) -> tuple[int, ...]:
        spouse = () if self.spouse is None else (self.spouse,)
        return (self.head, *spouse, *self.children, *self.others)

    def __len__(self) -> int:
        return len(self.members)


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------


def age_on(person: Person, on: date) -> int:
    """Completed years of age on ``on``, the age going up on the birthday itself.

    This is the reckoning under which late-stage elderly insurance starts on the 75th
    birthday. (Under 年齢計算ニ関スル法律 a person reaches an age at the end of the day before
    the birthday; where a rule needs that, ask for the age on the next day.) Someone born on
    29 February has their birthday on 1 March in common years.
    """
    return _age(person.birth_date, on)


def _age(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def municipality_on(person: Person, on: date) -> str:
    """The org code of the municipality the person lived in on ``on``.

    Before ``moved_in_on`` that is the tax-base-date municipality (moves before the tax base
    date are not modelled, so earlier days answer the same).
    """
    if person.moved_in_on is not None and on < person.moved_in_on:
        return person.municipality_on_tax_base_date
    return person.municipality


def insured_late_stage(person: Person, on: date) -> bool:
    """Whether the person is insured under late-stage elderly medical care (後期高齢者医療被保険者).

    高齢者の医療の確保に関する法律 第50条: a person with an address in the regional
    association's area who is (1) aged 75 or over, or (2) aged 65 to 74 and certified by the
    association as having a certain disability (一定の障害の認定, 施行令別表), which the person
    applied for (here: ``disability_certified``). Not insured if on welfare (第51条; not
    modelled). Insurance ends the day after death (第53条: 死亡した日の翌日), so the date of
    death is still an insured day.
    """
    if person.birth_date > on:
        return False
    if person.died_on is not None and on > person.died_on:
        return False
    home = MUNICIPALITIES[municipality_on(person, on)]
    if home.prefecture_code != REGIONAL_ASSOCIATION_PREFECTURE:
        return False
    age = age_on(person, on)
    return age >= 75 or (age >= 65 and person.disability_certified)


BASIC_DEDUCTION: Final = 430_000
"""基礎控除 of the inhabitant tax (地方税法 第314条の2第2項), for total income up to 24 million."""
NON_TAXABLE_LIMIT: Final = 450_000
"""Total income at or below which neither levy is charged: 350,000 × (0 dependants + 1) +
100,000, the 1級地 limit for a person without dependants (地方税法 第295条第3項, 施行令第47条の3;
附則第3条の3 for the income levy; Sakai, Osaka, Toyonaka and Suita are all 1級地)."""
PER_CAPITA_MUNICIPAL: Final = 3_000  # 市町村民税均等割 (地方税法 第310条)
PER_CAPITA_PREFECTURAL: Final = 1_000  # 道府県民税均等割 (地方税法 第38条)
FOREST_ENVIRONMENT_TAX: Final = 1_000  # 森林環境税, collected with the per-capita levy since FY2024
INCOME_LEVY_RATE_PERCENT: Final = 10  # municipal + prefectural, see Municipality.designated_city


def public_pension_deduction(receipts: int, aged_65_or_over: bool) -> int:
    """公的年金等控除 (所得税法 第35条第4項, applied to inhabitant tax by 地方税法 第313条).

    The table for people whose other income is at most 10 million yen (the 10/20 million
    reductions above that are not modelled). Never more than the receipts.
    """
    if receipts <= (3_300_000 if aged_65_or_over else 1_300_000):
        deduction = 1_100_000 if aged_65_or_over else 600_000
    elif receipts <= 4_100_000:
        deduction = receipts * 25 // 100 + 275_000
    elif receipts <= 7_700_000:
        deduction = receipts * 15 // 100 + 685_000
    elif receipts <= 10_000_000:
        deduction = receipts * 5 // 100 + 1_455_000
    else:
        deduction = 1_955_000
    return min(deduction, receipts)


def assess_local_tax(
    income: int, pension_receipts: int, *, aged_65_or_over: bool, levied_by: str
) -> LocalTax:
    """The FY2026 inhabitant tax of one person: a simplified but complete, stated rule.

    1. pension income = taxable pension receipts − :func:`public_pension_deduction` (≥ 0);
    2. total income (合計所得金額) = ``income`` + pension income;
    3. non-taxable (非課税) when total income ≤ :data:`NON_TAXABLE_LIMIT` (450,000): all zero;
    4. taxable income = total income − basic deduction 430,000, rounded down to 1,000 yen
       (地方税法 第20条の4の2第1項);
    5. income levy = 10% of taxable income: 6% municipal + 4% prefectural, or 8% + 2% in a
       designated city; each rounded down to 100 yen (同条第3項);
    6. per-capita levy = 3,000 municipal + 1,000 prefectural + 1,000 森林環境税 = 5,000.

    Not modelled: deductions other than the basic one (social insurance, dependants,
    medical), the adjustment deduction (調整控除), tax credits, and the wider non-taxable
    limits for minors, widows and the disabled. ``aged_65_or_over`` is the age on 31 December
    of the income year under 年齢計算ニ関スル法律 (see :func:`age_on`).
    """
    pension_income = max(
        0, pension_receipts - public_pension_deduction(pension_receipts, aged_65_or_over)
    )
    total_income = income + pension_income
    if total_income <= NON_TAXABLE_LIMIT:
        return LocalTax(FISCAL_YEAR, levied_by, total_income, pension_income, 0, True, 0, 0, 0)
    taxable_income = max(0, total_income - BASIC_DEDUCTION) // 1000 * 1000
    municipal_percent = 8 if MUNICIPALITIES[levied_by].designated_city else 6
    prefectural_percent = INCOME_LEVY_RATE_PERCENT - municipal_percent
    return LocalTax(
        fiscal_year=FISCAL_YEAR,
        levied_by=levied_by,
        total_income=total_income,
        pension_income=pension_income,
        taxable_income=taxable_income,
        non_taxable=False,
        per_capita_levy=PER_CAPITA_MUNICIPAL + PER_CAPITA_PREFECTURAL + FOREST_ENVIRONMENT_TAX,
        municipal_income_levy=taxable_income * municipal_percent // 100 // 100 * 100,
        prefectural_income_levy=taxable_income * prefectural_percent // 100 // 100 * 100,
    )


# --------------------------------------------------------------------------------------------
# The population and its look-ups
# --------------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Population:
    """A generated population: every person and household, in id order (ids start at 1).

    ``residents`` people live in Sakai now; ``persons`` also holds the people who moved out of
    Sakai to a neighbour during the simulated period (Sakai still levies their FY2026 tax).
    Equality compares the generated data; the look-up indexes are built on first use.
    """

    seed: int
    residents: int
    persons: tuple[Person, ...]
    households: tuple[Household, ...]
    municipalities: Mapping[str, Municipality] = field(
        default_factory=lambda: MUNICIPALITIES, compare=False
    )
    _by_resident_code: dict[str, Person] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _by_individual_number: dict[str, Person] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __len__(self) -> int:
        return len(self.persons)

    def person(self, person_id: int) -> Person:
        """The person with this id; :class:`KeyError` if there is none."""
        if not 1 <= person_id <= len(self.persons):
            raise KeyError(person_id)
        return self.persons[person_id - 1]

    def household(self, household_id: int) -> Household:
        """The household with this id; :class:`KeyError` if there is none."""
        if not 1 <= household_id <= len(self.households):
            raise KeyError(household_id)
        return self.households[household_id - 1]

    def household_of(self, person: Person) -> Household:
        return self.households[person.household_id - 1]

    def members(self, household: Household | int) -> tuple[Person, ...]:
        """The people of a household, head first."""
        if isinstance(household, int):
            household = self.household(household)
        return tuple(self.persons[i - 1] for i in household.members)

    def by_resident_code(self, resident_code: str) -> Person | None:
        if not self._by_resident_code:
            self._by_resident_code.update((p.resident_code, p) for p in self.persons)
        return self._by_resident_code.get(resident_code)

    def by_individual_number(self, individual_number: str) -> Person | None:
        if not self._by_individual_number:
            self._by_individual_number.update((p.individual_number, p) for p in self.persons)
        return self._by_individual_number.get(individual_number)

    def residents_of(self, org_code: str) -> Iterator[Person]:
        """People whose current (or last, if dead) municipality is ``org_code``."""
        return (p for p in self.persons if p.municipality == org_code)

    def taxed_by(self, org_code: str) -> Iterator[Person]:
        """People whose FY2026 local tax ``org_code`` levies (its residents on 1 January)."""
        return (p for p in self.persons if p.local_tax.levied_by == org_code)

    def insured(self, on: date) -> Iterator[Person]:
        """People insured under late-stage elderly medical care on ``on``."""
        return (p for p in self.persons if insured_late_stage(p, on))

    def fingerprint(self) -> str:
        """SHA-256 over the canonical text of every record: equal iff byte-identical output."""
        digest = hashlib.sha256(f"{self.seed}:{self.residents}\n".encode())
        for person in self.persons:
            digest.update(repr(person).encode())
        for household in self.households:
            digest.update(repr(household).encode())
        return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Generation parameters (shares are calibrated so that the tests' tolerances hold)
# --------------------------------------------------------------------------------------------

# Population by five-year age band (0-4 … 100-104), percent: the shape of a large Kansai city
# in 2026 (baby-boomers at 75-79, second boomers at 50-54, few children). The household mix
# below decides the final shares; this only shapes ages within the ranges each role allows.
_AGE_BAND_PERCENT: Final = (
    3.5, 4.0, 4.3, 4.5, 5.1, 5.1, 5.1, 5.7, 6.2, 7.0, 7.6,
    6.6, 5.8, 5.6, 6.4, 6.8, 5.0, 3.5, 1.6, 0.5, 0.1,
)  # fmt: skip
_MAX_AGE: Final = 5 * len(_AGE_BAND_PERCENT) - 1
_AGE_CUM: Final = tuple(
    itertools.accumulate(_AGE_BAND_PERCENT[a // 5] / 5 for a in range(_MAX_AGE + 1))
)

DISABILITY_SHARE_65_74: Final = 0.015
"""Share of 65-74-year-olds certified with a disability who joined late-stage insurance."""

# Annual death rates by five-year band from 65 (rough Japanese life-table values, both sexes);
# the simulated period is 15 months long, hence the factor.
_DEATH_RATE_FROM_65: Final = (0.010, 0.016, 0.027, 0.047, 0.090, 0.170, 0.300, 0.450)
_PERIOD_YEARS: Final = (PERIOD_END - TAX_BASE_DATE).days / 365.25

# Prior-year income (所得) by age: upper age, then (share with income, median yen, log sigma)
# for men and for women. Lognormal, because earnings are.
_INCOME_BY_AGE: Final = (
    (14, (0.0, 0, 0.0), (0.0, 0, 0.0)),
    (19, (0.10, 250_000, 0.5), (0.10, 250_000, 0.5)),
    (29, (0.80, 2_400_000, 0.45), (0.75, 1_900_000, 0.45)),
    (39, (0.90, 3_200_000, 0.5), (0.65, 1_600_000, 0.6)),
    (49, (0.90, 3_800_000, 0.55), (0.70, 1_400_000, 0.65)),
    (59, (0.88, 4_000_000, 0.6), (0.68, 1_300_000, 0.65)),
    (64, (0.75, 2_600_000, 0.6), (0.50, 1_000_000, 0.6)),
    (69, (0.50, 1_600_000, 0.7), (0.33, 800_000, 0.7)),
    (74, (0.33, 1_200_000, 0.7), (0.20, 600_000, 0.7)),
    (_MAX_AGE, (0.10, 1_000_000, 0.8), (0.06, 600_000, 0.8)),
)
_MAX_INCOME: Final = 50_000_000

FULL_BASIC_PENSION: Final = 816_000
"""A full old-age basic pension a year (the FY2024 amount, 令和6年度; later revisions are not
modelled): 480 months of contributions. Disability basic pension grade 2 is the same, grade 1
is 1.25 times (国民年金法 第27条, 第33条)."""
_NO_PENSION_SHARE: Final = 0.03  # 65+ with no public pension (too few months, or deferring)

# Out-movers: people who lived in Sakai on 1 January and moved to a neighbour since.
DEFAULT_MOVED_OUT_SHARE: Final = 0.01


class _Kind(Enum):
    """Household types (世帯の家族類型), roughly as the census counts them in a big city."""

    SINGLE = "single"
    SINGLE_ELDERLY = "single_elderly"
    COUPLE = "couple"
    ELDERLY_COUPLE = "elderly_couple"
    COUPLE_WITH_CHILDREN = "couple_with_children"
    SINGLE_PARENT = "single_parent"
    ELDERLY_WITH_CHILD = "elderly_with_child"
    THREE_GENERATIONS = "three_generations"
    OTHER = "other"


@dataclass(slots=True, frozen=True)
class _KindParameters:
    share: float  # of households
    move_in: float  # chance the household moved into Sakai during the period
    dv: float  # chance the household is under DV support measures


_KINDS: Final = {
    _Kind.SINGLE: _KindParameters(0.185, 0.070, 0.0060),
    _Kind.SINGLE_ELDERLY: _KindParameters(0.170, 0.010, 0.0030),
    _Kind.COUPLE: _KindParameters(0.070, 0.050, 0.0012),
    _Kind.ELDERLY_COUPLE: _KindParameters(0.150, 0.010, 0.0012),
    _Kind.COUPLE_WITH_CHILDREN: _KindParameters(0.200, 0.030, 0.0020),
    _Kind.SINGLE_PARENT: _KindParameters(0.045, 0.040, 0.0400),
    _Kind.ELDERLY_WITH_CHILD: _KindParameters(0.085, 0.012, 0.0050),
    _Kind.THREE_GENERATIONS: _KindParameters(0.055, 0.010, 0.0012),
    _Kind.OTHER: _KindParameters(0.040, 0.030, 0.0040),
}
_KIND_ORDER: Final = tuple(_KINDS)
_KIND_CUM: Final = tuple(itertools.accumulate(_KINDS[k].share for k in _KIND_ORDER))


# --------------------------------------------------------------------------------------------
# Names: built from parts, never taken from real people
# --------------------------------------------------------------------------------------------


def _parts(text: str) -> tuple[tuple[str, str], ...]:
    """Parse ``kanji=reading`` tokens separated by white space."""
    return tuple((kanji, reading) for kanji, _, reading in (t.partition("=") for t in text.split()))


def _weighted_parts(text: str) -> tuple[tuple[str, str, int], ...]:
    """Parse ``kanji=reading*weight`` tokens separated by white space."""
    weighted = []
    for kanji, reading_and_weight in _parts(text):
        reading, _, weight = reading_and_weight.partition("*")
        weighted.append((kanji, reading, int(weight)))
    return tuple(weighted)


# (kanji, reading in hiragana). Family names are a first part and a second part; a second part
# may appear twice, voiced and unvoiced (連濁), so 山田 is sometimes やまだ, sometimes やまた.
_FAMILY_FIRST: Final = _parts(
    """
    山=やま 田=た 中=なか 川=かわ 小=こ 大=おお
    高=たか 石=いし 松=まつ 竹=たけ 森=もり 林=はやし
    池=いけ 岡=おか 西=にし 東=ひがし 北=きた
    南=みなみ 上=うえ 下=しも 前=まえ 宮=みや 島=しま
    吉=よし 藤=ふじ 長=なが 平=ひら 福=ふく 今=いま
    新=にい 白=しら 黒=くろ 青=あお 金=かね 岩=いわ
    浅=あさ 広=ひろ 清=きよ 秋=あき 春=はる 梅=うめ
    桜=さくら 若=わか 古=ふる 杉=すぎ 村=むら 野=の
    坂=さか 原=はら 谷=たに
    """
)
_FAMILY_SECOND: Final = _parts(
    """
    田=た 田=だ 山=やま 川=かわ 川=がわ 本=もと
    村=むら 野=の 原=はら 木=き 井=い 口=ぐち
    島=しま 島=じま 沢=さわ 沢=ざわ 崎=さき 崎=ざき
    岡=おか 橋=はし 橋=ばし 森=もり 尾=お 部=べ
    浦=うら 瀬=せ 谷=たに 坂=さか 江=え 内=うち
    城=しろ 宮=みや 畑=はた 浜=はま 松=まつ 辺=べ
    """
)

# Given names: a stem and a suffix, by sex and by era (born before 1970, or later), with weights
# on the suffixes so that, say, 〜子 dominates among older women as it does in reality.
_MALE_STEMS_OLDER: Final = _parts(
    """
    正=まさ 和=かず 幸=ゆき 秀=ひで 義=よし 信=のぶ
    勝=かつ 隆=たか 武=たけ 英=ひで 清=きよ 光=みつ
    博=ひろ 俊=とし 達=たつ 康=やす 昭=あき 忠=ただ
    良=よし 弘=ひろ 茂=しげ 敏=とし 重=しげ 国=くに
    """
)
_MALE_SUFFIXES_OLDER: Final = _weighted_parts(
    """
    夫=お*3 雄=お*3 男=お*2 一=かず*1
    治=はる*1 彦=ひこ*1 之=ゆき*1 一郎=いちろう*1
    次=じ*1
    """
)
_MALE_STEMS_YOUNGER: Final = _parts(
    """
    翔=しょう 大=だい 悠=ゆう 健=けん 拓=たく 陽=よう
    蓮=れん 颯=そう 優=ゆう 和=かず 直=なお 祐=ゆう
    将=しょう 亮=りょう 航=こう 智=とも 啓=けい
    誠=せい
    """
)
_MALE_SUFFIXES_YOUNGER: Final = _weighted_parts(
    """
    太=た*3 斗=と*2 人=と*2 輝=き*1 也=や*2
    介=すけ*2 平=へい*1 樹=き*2 真=ま*1
    吾=ご*1
    """
)
_FEMALE_STEMS_OLDER: Final = _parts(
    """
    幸=さち 和=かず 恵=けい 洋=よう 京=きょう 節=せつ
    久=ひさ 文=ふみ 春=はる 千=ち 喜=き 順=じゅん
    信=のぶ 静=しず 敏=とし 光=みつ 典=のり 悦=えつ
    美智=みち 紀=のり 孝=たか 清=きよ 照=てる 澄=すみ
    """
)
_FEMALE_SUFFIXES_OLDER: Final = _weighted_parts(
    """
    子=こ*12 代=よ*2 江=え*2 枝=え*1 美=み*1
    """
)
_FEMALE_STEMS_YOUNGER: Final = _parts(
    """
    美=み 結=ゆ 愛=あい 咲=さ 莉=り 彩=あや 優=ゆう
    心=ここ 陽=ひ 真=ま 由=ゆ 友=とも 杏=あん
    琴=こと 紗=さ 春=はる 千=ち 智=ち
    """
)
_FEMALE_SUFFIXES_YOUNGER: Final = _weighted_parts(
    """
    美=み*2 香=か*2 奈=な*2 花=か*2 菜=な*1
    衣=い*1 希=き*1 乃=の*1 音=ね*1 子=こ*1
    里=り*1 佳=か*1
    """
)
_ERA_BOUNDARY_YEAR: Final = 1970


def _katakana(hiragana: str) -> str:
    """Readings are written in hiragana and recorded in katakana, as resident records do."""
    return "".join(chr(ord(c) + 0x60) if "ぁ" <= c <= "ゖ" else c for c in hiragana)


@dataclass(slots=True, frozen=True)
class _NameTable:
    """Names (kanji, katakana) with cumulative weights, sampled by bisection."""

    names: tuple[tuple[str, str], ...]
    cum_weights: tuple[float, ...]

    def pick(self, rng: random.Random) -> tuple[str, str]:
        u = rng.random() * self.cum_weights[-1]
        return self.names[bisect.bisect_right(self.cum_weights, u)]


def _family_name_table() -> _NameTable:
    names = [
        (a + b, _katakana(ra + rb)) for a, ra in _FAMILY_FIRST for b, rb in _FAMILY_SECOND if a != b
    ]
    # A fixed (seed-independent) Zipf-like frequency, so a few names are common and most rare,
    # as in any real register; the shuffle keeps frequency from following list order.
    random.Random("family-name-frequency").shuffle(names)
    weights = (1.0 / (rank + 10) ** 0.9 for rank in range(len(names)))
    return _NameTable(tuple(names), tuple(itertools.accumulate(weights)))


def _given_name_table(
    stems: Sequence[tuple[str, str]], suffixes: Sequence[tuple[str, str, int]]
) -> _NameTable:
    names = [
        (stem + suffix, _katakana(stem_kana + suffix_kana), float(weight))
        for stem, stem_kana in stems
        for suffix, suffix_kana, weight in suffixes
        if not stem.endswith(suffix)
    ]
    return _NameTable(
        tuple((kanji, kana) for kanji, kana, _ in names),
        tuple(itertools.accumulate(weight for _, _, weight in names)),
    )


_FAMILY_NAMES: Final = _family_name_table()
_GIVEN_NAMES: Final = {
    (Sex.MALE, True): _given_name_table(_MALE_STEMS_OLDER, _MALE_SUFFIXES_OLDER),
    (Sex.MALE, False): _given_name_table(_MALE_STEMS_YOUNGER, _MALE_SUFFIXES_YOUNGER),
    (Sex.FEMALE, True): _given_name_table(_FEMALE_STEMS_OLDER, _FEMALE_SUFFIXES_OLDER),
    (Sex.FEMALE, False): _given_name_table(_FEMALE_STEMS_YOUNGER, _FEMALE_SUFFIXES_YOUNGER),
}


# --------------------------------------------------------------------------------------------
# Household plans: who lives together, by role, sex and age
# --------------------------------------------------------------------------------------------


class _Member(NamedTuple):  # a tuple, not a dataclass: millions are made and thrown away
    relationship: Relationship
    sex: Sex
    age: int  # on AGE_REFERENCE_DATE
    own_family_name: bool = False  # a different family name from the head's (in-laws, lodgers)
    widowed: bool = False  # makes a survivors' pension likely


def _sample_age(rng: random.Random, lo: int, hi: int) -> int:
    """An age in [lo, hi] drawn from the age pyramid restricted to that range."""
    lo, hi = max(lo, 0), min(hi, _MAX_AGE)
    if hi <= lo:
        return lo
    base = _AGE_CUM[lo - 1] if lo else 0.0
    u = base + rng.random() * (_AGE_CUM[hi] - base)
    return min(bisect.bisect_right(_AGE_CUM, u, lo, hi + 1), hi)


def _clamp_age(age: int, lo: int) -> int:
    return max(lo, min(age, _MAX_AGE))


def _sex(rng: random.Random, male_share: float) -> Sex:
    return Sex.MALE if rng.random() < male_share else Sex.FEMALE


def _partner(rng: random.Random, head: _Member, min_age: int) -> _Member:
    # Husbands are on average a couple of years older than wives.
    gap = rng.randint(-2, 5)
    age = head.age - gap if head.sex is Sex.MALE else head.age + gap
    sex = Sex.FEMALE if head.sex is Sex.MALE else Sex.MALE
    return _Member(Relationship.SPOUSE, sex, _clamp_age(age, min_age))


def _children(rng: random.Random, mother_age: int, count: int) -> list[_Member]:
    # Children living at home: born when the mother was 20 to 43, and at most 34 years old.
    lo, hi = max(0, mother_age - 43), min(mother_age - 20, 34)
    return [
        _Member(Relationship.CHILD, _sex(rng, 0.51), _sample_age(rng, lo, max(lo, hi)))
        for _ in range(count)
    ]


def _mother_age(members: Sequence[_Member]) -> int:
    return next((m.age for m in members if m.sex is Sex.FEMALE), members[0].age)


def _child_count(rng: random.Random) -> int:
    u = rng.random()
    return 1 if u < 0.40 else 2 if u < 0.85 else 3


def _plan_single(rng: random.Random) -> list[_Member]:
    return [_Member(Relationship.HEAD, _sex(rng, 0.55), _sample_age(rng, 20, 64))]


def _plan_single_elderly(rng: random.Random) -> list[_Member]:
    # Women outlive men: two in three elderly people living alone are women, most widowed.
    sex = _sex(rng, 0.34)
    widowed = rng.random() < (0.75 if sex is Sex.FEMALE else 0.5)
    return [_Member(Relationship.HEAD, sex, _sample_age(rng, 65, _MAX_AGE), widowed=widowed)]


def _plan_couple(rng: random.Random) -> list[_Member]:
    head = _Member(Relationship.HEAD, _sex(rng, 0.9), _sample_age(rng, 25, 64))
    return [head, _partner(rng, head, 20)]


def _plan_elderly_couple(rng: random.Random) -> list[_Member]:
    head = _Member(Relationship.HEAD, _sex(rng, 0.92), _sample_age(rng, 65, 99))
    return [head, _partner(rng, head, 58)]


def _plan_couple_with_children(rng: random.Random) -> list[_Member]:
    head = _Member(Relationship.HEAD, _sex(rng, 0.9), _sample_age(rng, 27, 62))
    couple = [head, _partner(rng, head, 22)]
    return couple + _children(rng, _mother_age(couple), _child_count(rng))


def _plan_single_parent(rng: random.Random) -> list[_Member]:
    head = _Member(Relationship.HEAD, _sex(rng, 0.15), _sample_age(rng, 25, 59))
    return [head, *_children(rng, head.age, 1 if rng.random() < 0.6 else 2)]


def _plan_elderly_with_child(rng: random.Random) -> list[_Member]:
    # A widowed parent and a grown-up child (often unmarried) who lives with them.
    sex = _sex(rng, 0.3)
    head = _Member(Relationship.HEAD, sex, _sample_age(rng, 65, 99), widowed=rng.random() < 0.8)
    children = [
        _Member(Relationship.CHILD, _sex(rng, 0.55), _clamp_age(head.age - rng.randint(24, 38), 20))
        for _ in range(1 if rng.random() < 0.85 else 2)
    ]
    return [head, *children]


def _plan_three_generations(rng: random.Random) -> list[_Member]:
    head = _Member(Relationship.HEAD, _sex(rng, 0.9), _sample_age(rng, 33, 60))
    couple = [head, _partner(rng, head, 25)]
    members = couple + _children(rng, _mother_age(couple), _child_count(rng))
    # One in four times the parents are the spouse's, with their own family name.
    in_laws = rng.random() < 0.25
    elder = _clamp_age(head.age + rng.randint(24, 36), 58)
    if rng.random() < 0.4:
        younger = _clamp_age(elder - rng.randint(0, 5), 58)
        members.append(_Member(Relationship.PARENT, Sex.MALE, elder, in_laws))
        members.append(_Member(Relationship.PARENT, Sex.FEMALE, younger, in_laws))
    else:
        sex = _sex(rng, 0.25)
        members.append(_Member(Relationship.PARENT, sex, elder, in_laws, widowed=True))
    return members


def _plan_other(rng: random.Random) -> list[_Member]:
    # Siblings or unrelated people sharing a home.
    head = _Member(Relationship.HEAD, _sex(rng, 0.5), _sample_age(rng, 20, 85))
    other_age = _clamp_age(head.age + rng.randint(-8, 8), 18)
    other = _Member(Relationship.OTHER, _sex(rng, 0.5), other_age, rng.random() < 0.5)
    return [head, other]


_PLANNERS: Final[Mapping[_Kind, Callable[[random.Random], list[_Member]]]] = {
    _Kind.SINGLE: _plan_single,
    _Kind.SINGLE_ELDERLY: _plan_single_elderly,
    _Kind.COUPLE: _plan_couple,
    _Kind.ELDERLY_COUPLE: _plan_elderly_couple,
    _Kind.COUPLE_WITH_CHILDREN: _plan_couple_with_children,
    _Kind.SINGLE_PARENT: _plan_single_parent,
    _Kind.ELDERLY_WITH_CHILD: _plan_elderly_with_child,
    _Kind.THREE_GENERATIONS: _plan_three_generations,
    _Kind.OTHER: _plan_other,
}


# --------------------------------------------------------------------------------------------
# Building the records
# --------------------------------------------------------------------------------------------

_DISABILITY_PENSION_SHARE_20_64: Final = 0.012
_INDIVIDUAL_NUMBER_SPACE: Final = 10**11
_RESIDENT_CODE_SPACE: Final = 10**11


def _birth_ordinal_range(age: int) -> tuple[int, int]:
    """Birth days (as ordinals) that give exactly ``age`` on AGE_REFERENCE_DATE, none after
    TAX_BASE_DATE (everyone has a 1 January address, hence a tax record)."""
    ref = AGE_REFERENCE_DATE
    first = date(ref.year - age - 1, ref.month, ref.day) + timedelta(days=1)
    last = min(date(ref.year - age, ref.month, ref.day), TAX_BASE_DATE)
    return first.toordinal(), last.toordinal()


# 65 or over on 31 December of the income year in the legal reckoning (see age_on): born on or
# before 1 January 1961.
_BORN_BY_FOR_65_IN_INCOME_YEAR: Final = date(INCOME_YEAR + 1 - 65, 1, 1)
_BIRTH_ORDINALS: Final = tuple(_birth_ordinal_range(age) for age in range(_MAX_AGE + 1))
_INCOME_PARAMETERS: Final = tuple(
    next((male, female) for top, male, female in _INCOME_BY_AGE if age <= top)
    for age in range(_MAX_AGE + 1)
)


def _pension_receipts_in_income_year(pension: Pension | None, birth: date) -> int:
    """Taxable pension received in INCOME_YEAR: an old-age pension is paid from the month after
    the 65th birthday (国民年金法 第18条第1項), so the first year counts only those months."""
    if pension is None or pension.taxable_amount == 0:
        return 0
    year_65 = birth.year + 65
    months = 12 if year_65 < INCOME_YEAR else 0 if year_65 > INCOME_YEAR else 12 - birth.month
    return pension.taxable_amount * months // 12


class _Builder:
    """Turns household plans into records. Holds the random streams, the uniqueness sets and
    the caches that let a million people share their dates, tax records and pensions."""

    def __init__(self, seed: int) -> None:
        # Separate streams, so that (say) a new household type does not reshuffle every
        # resident code. String seeds go through SHA-512 in CPython: stable everywhere.
        self.rng = random.Random(f"population:{seed}")
        self.identity_rng = random.Random(f"resident-codes:{seed}")
        self.number_key = hashlib.sha256(f"individual-numbers:{seed}".encode()).digest()
        self.persons: list[Person] = []
        self.households: list[Household] = []
        self._resident_codes: set[str] = set()
        self._individual_numbers: set[str] = set()
        self._dates: dict[int, date] = {}
        self._taxes: dict[tuple[int, int, bool, str], LocalTax] = {}
        self._pensions: dict[tuple[PensionKind, int, int], Pension] = {}

    # -- households ------------------------------------------------------------------------

    def fill(self, count: int, *, moved_out: bool) -> None:
        """Add households until ``count`` more people exist (the last one may be cut short).

        Sakai's residents (``moved_out`` false), some of whom moved in from a neighbour during
        the period; or people who moved out of Sakai to a neighbour (``moved_out`` true).
        """
        rng = self.rng
        remaining = count
        while remaining > 0:
            kind = _KIND_ORDER[bisect.bisect_right(_KIND_CUM, rng.random() * _KIND_CUM[-1])]
            parameters = _KINDS[kind]
            plan = _PLANNERS[kind](rng)[:remaining]
            municipality = former = MAIN_MUNICIPALITY
            moved_in_on = None
            if moved_out:
                municipality = self.other_municipality()
                moved_in_on = self.day_between(PERIOD_START, PERIOD_END)
            elif rng.random() < parameters.move_in:
                former = self.other_municipality()
                moved_in_on = self.day_between(PERIOD_START, PERIOD_END)
            dv = rng.random() < parameters.dv
            self.add_household(plan, municipality, former, moved_in_on, dv)
            remaining -= len(plan)

    def add_household(
        self,
        plan: Sequence[_Member],
        municipality: str,
        former: str,
        moved_in_on: date | None,
        dv: bool,
    ) -> None:
        household_id = len(self.households) + 1
        family_name = _FAMILY_NAMES.pick(self.rng)
        spouse: int | None = None
        children: list[int] = []
        others: list[int] = []
        for member in plan:
            name = _FAMILY_NAMES.pick(self.rng) if member.own_family_name else family_name
            person = self.person(member, household_id, name, municipality, former, moved_in_on, dv)
            self.persons.append(person)
            if member.relationship is Relationship.SPOUSE:
                spouse = person.person_id
            elif member.relationship is Relationship.CHILD:
                children.append(person.person_id)
            elif member.relationship is not Relationship.HEAD:
                others.append(person.person_id)
        # Every plan starts with its head, and a cut-short plan keeps at least that one.
        head = self.persons[-len(plan)].person_id
        household = Household(
            household_id, municipality, head, spouse, tuple(children), tuple(others)
        )
        self.households.append(household)

    def other_municipality(self) -> str:
        u = self.rng.random()
        return _OTHER_MUNICIPALITIES[bisect.bisect_right(_OTHER_MUNICIPALITY_CUM_WEIGHTS, u)]

    # -- people ----------------------------------------------------------------------------

    def person(
        self,
        member: _Member,
        household_id: int,
        family_name: tuple[str, str],
        municipality: str,
        former: str,
        moved_in_on: date | None,
        dv: bool,
    ) -> Person:
        rng = self.rng
        birth = self.day(rng.randint(*_BIRTH_ORDINALS[member.age]))
        given_name = _GIVEN_NAMES[member.sex, birth.year < _ERA_BOUNDARY_YEAR].pick(rng)
        disability = 65 <= member.age <= 74 and rng.random() < DISABILITY_SHARE_65_74
        pension = self.pension(member, disability)
        income = self.income(member)
        aged_65 = birth <= _BORN_BY_FOR_65_IN_INCOME_YEAR
        receipts = _pension_receipts_in_income_year(pension, birth)
        resident_code = self.resident_code()
        return Person(
            person_id=len(self.persons) + 1,
            resident_code=resident_code,
            individual_number=self.individual_number(resident_code),
            family_name=family_name[0],
            given_name=given_name[0],
            family_name_kana=family_name[1],
            given_name_kana=given_name[1],
            sex=member.sex,
            birth_date=birth,
            household_id=household_id,
            relationship=member.relationship,
            municipality=municipality,
            municipality_on_tax_base_date=former,
            moved_in_on=moved_in_on,
            died_on=self.death(member.age, moved_in_on),
            disability_certified=disability,
            dv_protected=dv,
            income=income,
            pension=pension,
            local_tax=self.local_tax(income, receipts, aged_65, former),
        )

    def resident_code(self) -> str:
        while True:
            code = f"{self.identity_rng.randrange(_RESIDENT_CODE_SPACE):011d}"
            if code not in self._resident_codes:
                self._resident_codes.add(code)
                return code

    def individual_number(self, resident_code: str) -> str:
        """Derived from the resident code by a keyed hash, as the real number is generated
        from it (番号法 第8条第2項): deterministic, yet without the seed one cannot be turned
        into the other. A collision (rare: ~n²/2·10⁻¹¹) re-hashes with a counter."""
        attempt = 0
        while True:
            message = resident_code if attempt == 0 else f"{resident_code}:{attempt}"
            digest = hashlib.blake2b(message.encode(), key=self.number_key, digest_size=8)
            first_eleven = int.from_bytes(digest.digest(), "big") % _INDIVIDUAL_NUMBER_SPACE
            number = complete(f"{first_eleven:011d}")
            if number not in self._individual_numbers:
                self._individual_numbers.add(number)
                return number
            attempt += 1

    def death(self, age: int, moved_in_on: date | None) -> date | None:
        if age < 65:
            return None
        annual = _DEATH_RATE_FROM_65[min((age - 65) // 5, len(_DEATH_RATE_FROM_65) - 1)]
        if self.rng.random() >= annual * _PERIOD_YEARS:
            return None
        # Died in Sakai after moving in (or in the new municipality after moving out).
        first = PERIOD_START if moved_in_on is None else moved_in_on + timedelta(days=1)
        return self.day_between(min(first, PERIOD_END), PERIOD_END)

    def income(self, member: _Member) -> int:
        male, female = _INCOME_PARAMETERS[member.age]
        share, median, sigma = male if member.sex is Sex.MALE else female
        if self.rng.random() >= share:
            return 0
        value = median * math.exp(sigma * self.rng.gauss(0.0, 1.0))
        return min(int(value), _MAX_INCOME) // 1000 * 1000

    # -- pensions --------------------------------------------------------------------------

    def pension(self, member: _Member, disability: bool) -> Pension | None:
        rng = self.rng
        if member.age < 65:
            if member.age >= 20 and rng.random() < _DISABILITY_PENSION_SHARE_20_64:
                return self.disability_pension()
            return None
        if rng.random() < _NO_PENSION_SHARE:
            return None
        if disability and rng.random() < 0.6:
            return self.disability_pension()
        basic = self.basic_pension()
        if member.widowed and member.sex is Sex.FEMALE and rng.random() < 0.7:
            # A widow's own basic pension plus three quarters of her husband's employees'
            # pension (遺族厚生年金); only the basic part is taxable.
            survivors = self.amount(650_000, 0.4, 1_600_000)
            return self.pension_record(PensionKind.SURVIVORS, basic + survivors, basic)
        share, median = (0.72, 1_050_000) if member.sex is Sex.MALE else (0.42, 450_000)
        if rng.random() < share:
            total = basic + self.amount(median, 0.45, 3_000_000)
            return self.pension_record(PensionKind.OLD_AGE_EMPLOYEES, total, total)
        return self.pension_record(PensionKind.OLD_AGE_BASIC, basic, basic)

    def basic_pension(self) -> int:
        # Most people have the full 480 months; many have gaps; a few barely qualify (120).
        u = self.rng.random()
        months = (
            480
            if u < 0.72
            else self.rng.randint(300, 479)
            if u < 0.94
            else self.rng.randint(120, 299)
        )
        return FULL_BASIC_PENSION * months // 480 // 100 * 100

    def disability_pension(self) -> Pension:
        grade_one = self.rng.random() < 0.3
        total = FULL_BASIC_PENSION * 5 // 4 if grade_one else FULL_BASIC_PENSION
        if self.rng.random() < 0.4:  # 障害厚生年金 on top for former employees
            total += self.amount(600_000, 0.4, 1_500_000)
        return self.pension_record(PensionKind.DISABILITY, total, 0)

    def amount(self, median: int, sigma: float, cap: int) -> int:
        """A lognormal yen amount, rounded down to 100 yen."""
        value = median * math.exp(sigma * self.rng.gauss(0.0, 1.0))
        return min(int(value), cap) // 100 * 100

    def pension_record(self, kind: PensionKind, annual: int, taxable: int) -> Pension:
        key = (kind, annual, taxable)
        pension = self._pensions.get(key)
        if pension is None:
            pension = self._pensions[key] = Pension(kind, annual, taxable)
        return pension

    # -- shared values ---------------------------------------------------------------------

    def local_tax(self, income: int, receipts: int, aged_65: bool, levied_by: str) -> LocalTax:
        key = (income, receipts, aged_65, levied_by)
        tax = self._taxes.get(key)
        if tax is None:
            tax = assess_local_tax(income, receipts, aged_65_or_over=aged_65, levied_by=levied_by)
            self._taxes[key] = tax
        return tax

    def day(self, ordinal: int) -> date:
        value = self._dates.get(ordinal)
        if value is None:
            value = self._dates[ordinal] = date.fromordinal(ordinal)
        return value

    def day_between(self, first: date, last: date) -> date:
        return self.day(self.rng.randint(first.toordinal(), last.toordinal()))


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while records pile up, then restore it.

    The records form no cycles, but every new container counts towards the collector's
    thresholds, and the full collections that millions of them trigger cost about 40% of the
    generation time. The previous state is restored even on error.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def generate(
    residents: int, seed: int = 2026, *, moved_out_share: float = DEFAULT_MOVED_OUT_SHARE
) -> Population:
    """Generate ``residents`` people living in Sakai, plus ``moved_out_share × residents``
    people who lived in Sakai on 1 January and have since moved to a neighbour.

    Deterministic: the same arguments give an equal population (and equal
    :meth:`Population.fingerprint`) on every run and machine.
    """
    if residents < 0:
        raise ValueError("residents must not be negative")
    if not 0.0 <= moved_out_share <= 1.0:
        raise ValueError("moved_out_share must be between 0 and 1")
    builder = _Builder(seed)
    with _cyclic_gc_paused():
        builder.fill(residents, moved_out=False)
        builder.fill(round(residents * moved_out_share), moved_out=True)
    return Population(
        seed=seed,
        residents=residents,
        persons=tuple(builder.persons),
        households=tuple(builder.households),
    )
