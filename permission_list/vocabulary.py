"""The controlled vocabulary: organization capacities and data item categories, with Japanese.

Owns the ids the rest of the project uses for 情報照会者/情報提供者 (capacities: roles an
organization acts in, e.g. ``municipality`` = 市町村長) and for 特定個人情報 (data item
categories, e.g. ``local_tax`` = 地方税関係情報), and the table of the law's phrases that map to
them. The converter uses the phrase tables; the loader and checker use only the id tables.

Rules (see data/SCHEMA.md): an id never changes meaning; a phrase of the law maps only through
these tables or the two documented patterns, and anything else makes the converter fail.
Ids marked FIXED are relied on by other packages.
"""

# The law's phrases are matched exactly and reviewed against the text side by side, so they stay
# on one line each even where that is wider than the project's limit.
# ruff: noqa: E501

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Capacity:
    """A role an organization acts in when it queries or provides (e.g. 市町村長)."""

    id: str
    label: str  # Japanese, as the law writes it
    english: str


@dataclass(frozen=True, slots=True)
class ItemCategory:
    """A category of 特定個人情報; ``label`` is the law's defined term where it has one."""

    id: str
    label: str
    english: str
    defined_term: bool = False  # True when the law defines it with 「以下「…」という。」


def _capacities(*entries: tuple[str, str, str]) -> dict[str, Capacity]:
    return {cid: Capacity(cid, label, english) for cid, label, english in entries}


def _items(*entries: tuple[str, str, str]) -> dict[str, ItemCategory]:
    return {iid: ItemCategory(iid, label, english) for iid, label, english in entries}


CAPACITIES: Final[dict[str, Capacity]] = _capacities(
    # FIXED ids
    ("municipality", "市町村長", "mayor of a municipality (city, town, village, special ward)"),
    (
        "regional_association",
        "後期高齢者医療広域連合",
        "late-stage elderly medical care regional association",
    ),
    ("mhlw", "厚生労働大臣", "Minister of Health, Labour and Welfare"),
    ("pension_service", "日本年金機構", "Japan Pension Service"),
    ("mutual_aid_association", "共済組合等", "mutual aid associations (as the law groups them)"),
    ("medical_insurer", "医療保険者", "medical insurer under the medical insurance acts"),
    # national government
    ("mext", "文部科学大臣", "Minister of Education, Culture, Sports, Science and Technology"),
    # prefectures and cities
    ("prefectural_governor", "都道府県知事", "prefectural governor"),
    (
        "prefectural_governor_etc",
        "都道府県知事等",
        "prefectural governor etc. (welfare-office authorities, a term the law defines elsewhere)",
    ),
    ("prefectural_board_of_education", "都道府県教育委員会", "prefectural board of education"),
    ("municipal_board_of_education", "市町村教育委員会", "municipal board of education"),
    ("hiroshima_city_mayor", "広島市長", "mayor of Hiroshima City"),
    ("nagasaki_city_mayor", "長崎市長", "mayor of Nagasaki City"),
    (
        "health_center_city_mayor",
        "保健所を設置する市の長",
        "mayor of a city with a public health center",
    ),
    (
        "child_allowance_public_employer",
        "児童手当法第十七条第一項の表の下欄に掲げる者",
        "public employers paying child allowance to their own staff",
    ),
    # medical insurance
    (
        "japan_health_insurance_association",
        "全国健康保険協会",
        "Japan Health Insurance Association",
    ),
    ("health_insurance_society", "健康保険組合", "health insurance society"),
    ("national_health_insurance_society", "国民健康保険組合", "national health insurance society"),
    # mutual aid and pensions
    (
        "private_school_mutual_aid_corporation",
        "日本私立学校振興・共済事業団",
        "Promotion and Mutual Aid Corporation for Private Schools",
    ),
    (
        "national_public_servant_mutual_aid_association",
        "国家公務員共済組合",
        "national public servants' mutual aid association",
    ),
    (
        "national_public_servant_mutual_aid_federation",
        "国家公務員共済組合連合会",
        "federation of national public servants' mutual aid associations",
    ),
    (
        "local_public_servant_mutual_aid_association",
        "地方公務員共済組合",
        "local public servants' mutual aid association",
    ),
    (
        "municipal_staff_mutual_aid_federation",
        "全国市町村職員共済組合連合会",
        "national federation of municipal staff mutual aid associations",
    ),
    (
        "agricultural_mutual_aid_association",
        "農林漁業団体職員共済組合",
        "agriculture, forestry and fishery organization staff mutual aid association",
    ),
    ("national_pension_fund", "国民年金基金", "national pension fund"),
    ("national_pension_fund_federation", "国民年金基金連合会", "National Pension Fund Association"),
    ("farmers_pension_fund", "独立行政法人農業者年金基金", "Farmers' Pension Fund"),
    ("coal_mining_pension_fund", "石炭鉱業年金基金", "coal mining pension fund"),
    ("pension_fund_association", "企業年金連合会", "Pension Fund Association (corporate pensions)"),
    (
        "defined_benefit_plan_sponsor",
        "確定給付企業年金法第二十九条第一項に規定する事業主等",
        "defined-benefit corporate pension plan sponsor",
    ),
    (
        "defined_contribution_plan_employer",
        "確定拠出年金法第三条第三項第一号に規定する事業主",
        "employer of a corporate defined-contribution plan",
    ),
    (
        "surviving_mutual_aid_association_1996",
        "平成八年法律第八十二号附則第三十二条第二項に規定する存続組合",
        "surviving mutual aid association under the 1996 act",
    ),
    (
        "designated_fund_1996",
        "平成八年法律第八十二号附則第四十八条第一項に規定する指定基金",
        "designated fund under the 1996 act",
    ),
    (
        "surviving_mutual_aid_society_2011",
        "平成二十三年法律第五十六号附則第二十三条第一項第三号に規定する存続共済会",
        "surviving mutual aid society under the 2011 act",
    ),
    (
        "surviving_employees_pension_fund",
        "平成二十五年法律第六十三号附則第三条第十一号に規定する存続厚生年金基金",
        "surviving employees' pension fund under the 2013 act",
    ),
    (
        "surviving_pension_fund_federation",
        "平成二十五年法律第六十三号附則第三条第十三号に規定する存続連合会",
        "surviving federation under the 2013 act",
    ),
    # compensation, welfare, education
    (
        "local_public_servant_accident_compensation_fund",
        "地方公務員災害補償基金",
        "Local Public Officers' Accident Compensation Fund",
    ),
    ("social_welfare_council", "社会福祉協議会", "council of social welfare"),
    ("japan_sport_council", "独立行政法人日本スポーツ振興センター", "Japan Sport Council"),
    ("pmda", "独立行政法人医薬品医療機器総合機構", "Pharmaceuticals and Medical Devices Agency"),
    (
        "japan_student_services_organization",
        "独立行政法人日本学生支援機構",
        "Japan Student Services Organization",
    ),
    # payers the law names by what they pay, not by who they are (exact words kept in provider_text)
    (
        "other_statutory_payer",
        "他の法令による給付の支給を行うこととされている者",
        "whoever pays a benefit under another law that the affair's law names",
    ),
    (
        "public_pension_payer",
        "国民年金法その他の法令による年金である給付の支給を行うこととされている者",
        "whoever pays a public pension under the National Pension Act or another law",
    ),
)

ITEMS: Final[dict[str, ItemCategory]] = _items(
    # FIXED ids
    (
        "medical_insurance_benefit",
        "医療保険給付関係情報",
        "medical insurance benefits and premiums",
    ),
    ("local_tax", "地方税関係情報", "local tax amounts and their basis"),
    ("resident_record", "住民票関係情報", "resident record entries (住民基本台帳法第七条第四号)"),
    (
        "long_term_care_benefit",
        "介護保険給付等関係情報",
        "long-term care insurance benefits, support projects, premiums",
    ),
    ("pension_benefit", "年金給付関係情報", "public pension benefits and premiums"),
    (
        "late_stage_medical_premium",
        "高齢者の医療の確保に関する法律による保険料の徴収に関する情報",
        "late-stage elderly medical care premium collection",
    ),
    (
        "special_collection_notice",
        "高齢者の医療の確保に関する法律第百十条において準用する介護保険法第百三十六条第一項等の規定により通知することとされている事項に関する情報",
        "special collection (pension deduction) notices for late-stage elderly medical premiums",
    ),
    # the law's other defined terms
    (
        "workers_accident_compensation",
        "労働者災害補償関係情報",
        "workers' accident compensation benefits",
    ),
    ("public_assistance", "生活保護関係情報", "public assistance and self-reliance benefit"),
    (
        "china_returnee_support",
        "中国残留邦人等支援給付等関係情報",
        "support benefits for Japanese left behind in China",
    ),
    ("child_rearing_allowance", "児童扶養手当関係情報", "child-rearing allowance"),
    (
        "disability_status",
        "障害者関係情報",
        "disability certificates and intellectual disability status",
    ),
    (
        "special_child_rearing_allowance",
        "特別児童扶養手当関係情報",
        "special child-rearing allowance",
    ),
    (
        "war_victims_relief",
        "戦傷病者戦没者遺族等援護関係情報",
        "relief for war invalids and bereaved families",
    ),
    ("employment_insurance_benefit", "失業等給付関係情報", "employment insurance benefits"),
    ("asbestos_relief", "石綿健康被害救済給付等関係情報", "asbestos health damage relief"),
    (
        "job_training_benefit",
        "職業訓練受講給付金関係情報",
        "job training benefit for specified job seekers",
    ),
    ("child_allowance", "児童手当関係情報", "child allowance and special benefit"),
    (
        "local_public_servant_accident_compensation",
        "地方公務員災害補償関係情報",
        "local public servants' accident compensation",
    ),
    # categories the law describes without a defined term
    (
        "other_statutory_benefit",
        "他の法令による給付の支給に関する情報",
        "benefits under another law that the affair's law names",
    ),
    (
        "public_pension_benefit",
        "国民年金法その他の法令による年金である給付（公的年金給付）の支給に関する情報",
        "public pension benefits paid under any law",
    ),
    (
        "statutory_medical_benefit",
        "医療保険各法その他の法令による医療に関する給付の支給に関する情報",
        "medical benefits under the medical insurance acts or other laws",
    ),
    (
        "national_pension_benefit",
        "国民年金法による年金である給付の支給に関する情報",
        "national pension benefits",
    ),
    (
        "basic_disability_pension",
        "国民年金法による障害基礎年金の支給に関する情報",
        "basic disability pension",
    ),
    (
        "agricultural_mutual_aid_pension",
        "農林漁業団体職員共済組合法等を廃止する等の法律による年金である給付の支給に関する情報",
        "pensions of the former agricultural mutual aid system",
    ),
    (
        "special_disability_benefit",
        "特定障害者に対する特別障害給付金の支給に関する法律による特別障害給付金の支給に関する情報",
        "special disability benefit",
    ),
    (
        "pensioner_support_benefit",
        "年金生活者支援給付金の支給に関する法律による年金生活者支援給付金の支給に関する情報",
        "pensioner support benefit",
    ),
    (
        "seamen_insurance_benefit",
        "船員保険法による保険給付の支給に関する情報",
        "seamen's insurance benefits",
    ),
    (
        "disability_independence_support_benefit",
        "障害者の日常生活及び社会生活を総合的に支援するための法律による自立支援給付の支給に関する情報",
        "independence support benefits for persons with disabilities",
    ),
    (
        "disability_medical_care_service",
        "障害者の日常生活及び社会生活を総合的に支援するための法律による療養介護に関する情報",
        "medical care service for persons with disabilities",
    ),
    (
        "disability_facility_admission_support",
        "障害者の日常生活及び社会生活を総合的に支援するための法律による施設入所支援に関する情報",
        "facility admission support for persons with disabilities",
    ),
    (
        "disabled_child_residential_support",
        "児童福祉法による障害児入所支援（障害児入所給付費の支給を含む。）に関する情報",
        "residential support for disabled children",
    ),
    (
        "disabled_child_day_support",
        "児童福祉法による障害児通所支援に関する情報",
        "day support for disabled children",
    ),
    (
        "child_welfare_measure",
        "児童福祉法第二十七条第一項第三号等の措置に関する情報",
        "child welfare placement measures (the row's text says which)",
    ),
    (
        "child_independent_living_support",
        "児童福祉法による日常生活上の援助及び生活指導並びに就業の支援の実施に関する情報",
        "independent living support for children",
    ),
    (
        "maternal_child_living_support_facility",
        "児童福祉法による母子生活支援施設における保護の実施に関する情報",
        "protection in a maternal and child living support facility",
    ),
    (
        "pediatric_chronic_disease_medical_expense",
        "児童福祉法による小児慢性特定疾病医療費の支給に関する情報",
        "medical expenses for pediatric chronic specified diseases",
    ),
    (
        "child_medical_care_benefit",
        "児童福祉法による療育の給付に関する情報",
        "medical care for children with tuberculosis (療育の給付)",
    ),
    (
        "disaster_relief",
        "災害救助法による救助又は扶助金の支給に関する情報",
        "disaster relief and relief money",
    ),
    (
        "single_parent_welfare_loan",
        "母子及び父子並びに寡婦福祉法による資金の貸付けに関する情報",
        "welfare loans for single parents and widows",
    ),
    (
        "single_parent_family_benefit",
        "母子及び父子並びに寡婦福祉法による給付金の支給に関する情報",
        "benefits for single-parent families",
    ),
    (
        "intractable_disease_medical_expense",
        "難病の患者に対する医療等に関する法律による特定医療費の支給に関する情報",
        "specified medical expenses for intractable diseases",
    ),
    (
        "psychiatric_involuntary_admission",
        "精神保健及び精神障害者福祉に関する法律による入院措置に関する情報",
        "involuntary psychiatric admission",
    ),
    (
        "disabled_child_welfare_allowance",
        "特別児童扶養手当等の支給に関する法律による障害児福祉手当の支給に関する情報",
        "welfare allowance for disabled children",
    ),
    (
        "special_disability_allowance",
        "特別児童扶養手当等の支給に関する法律による特別障害者手当の支給に関する情報",
        "special disability allowance",
    ),
    (
        "transitional_welfare_allowance",
        "昭和六十年法律第三十四号附則第九十七条第一項の福祉手当の支給に関する情報",
        "transitional welfare allowance (1985 act)",
    ),
    (
        "disability_allowance",
        "特別児童扶養手当等の支給に関する法律その他の法令による障害を有する者に対する手当の支給に関する情報",
        "allowances for persons with disabilities under any law",
    ),
    (
        "disability_based_benefit",
        "障害を支給事由とする給付の支給に関する情報",
        "benefits paid because of a disability (1985 act, 附則第九十七条第二項)",
    ),
    (
        "premature_infant_medical_care",
        "母子保健法による養育医療の給付又は養育医療に要する費用の支給に関する情報",
        "medical care for premature infants",
    ),
    ("pregnancy_notification", "母子保健法による妊娠の届出に関する情報", "pregnancy notifications"),
    (
        "welfare_fund_loan",
        "社会福祉法による生計困難者に対して無利子又は低利で資金を融通する事業の実施に関する情報",
        "interest-free or low-interest welfare fund loans",
    ),
    (
        "special_needs_school_attendance_aid",
        "特別支援学校への就学奨励に関する法律による特別支援学校への就学のため必要な経費の支弁に関する情報",
        "school attendance aid for special needs schools",
    ),
    (
        "school_health_medical_aid",
        "学校保健安全法による医療に要する費用についての援助に関する情報",
        "school health medical expense aid",
    ),
    (
        "high_school_tuition_support",
        "高等学校等就学支援金の支給に関する法律による就学支援金の支給に関する情報",
        "high school tuition support",
    ),
    (
        "job_change_benefit",
        "雇用対策法による職業転換給付金の支給に関する情報",
        "job change benefit",
    ),
    (
        "education_training_benefit",
        "雇用保険法による教育訓練給付金の支給に関する情報",
        "education and training benefit",
    ),
    (
        "employment_insurance_basic_allowance",
        "雇用保険法による基本手当の支給に関する情報",
        "employment insurance basic allowance",
    ),
    (
        "elderly_employment_continuation_benefit",
        "雇用保険法による高年齢雇用継続基本給付金の支給に関する情報",
        "basic benefit for continued employment of older persons",
    ),
    (
        "war_victims_pension",
        "戦傷病者戦没者遺族等援護法による年金である給付の支給に関する情報",
        "pensions for war invalids and bereaved families",
    ),
    (
        "atomic_bomb_general_medical_expense",
        "原子爆弾被爆者に対する援護に関する法律による一般疾病医療費の支給に関する情報",
        "general medical expenses of atomic bomb survivors",
    ),
    (
        "atomic_bomb_survivor_allowance",
        "原子爆弾被爆者に対する援護に関する法律による手当等の支給に関する情報",
        "allowances for atomic bomb survivors",
    ),
    (
        "atomic_bomb_survivor_care_allowance",
        "原子爆弾被爆者に対する援護に関する法律による介護手当の支給に関する情報",
        "nursing care allowance for atomic bomb survivors",
    ),
    (
        "china_returnee_repatriation_benefit",
        "中国残留邦人等の円滑な帰国の促進並びに永住帰国した中国残留邦人等及び特定配偶者の自立の支援に関する法律による永住帰国旅費、自立支度金、一時金又は一時帰国旅費の支給に関する情報",
        "repatriation travel, settlement and lump-sum payments for returnees from China",
    ),
    (
        "farmers_pension_insured",
        "独立行政法人農業者年金基金法による農業者年金の被保険者に関する情報",
        "farmers' pension insured persons",
    ),
    (
        "national_pension_fund_member",
        "国民年金基金の加入員に関する情報",
        "national pension fund members",
    ),
    (
        "national_pension_facility_resident",
        "国民年金法第八十九条第一項第三号の施設に入所する者に関する情報",
        "residents of facilities under 国民年金法第八十九条第一項第三号",
    ),
    (
        "nhi_special_collection_notice",
        "国民健康保険法第七十六条の四において準用する介護保険法第百三十六条第一項等の規定により通知することとされている事項に関する情報",
        "special collection notices for national health insurance premiums",
    ),
    (
        "ltc_special_collection_notice",
        "介護保険法第百三十六条第一項等の規定により通知することとされている事項に関する情報",
        "special collection notices for long-term care premiums",
    ),
)

# Items defined by the law itself: 「…（以下「<term>」という。）」. The converter checks that each
# term is defined in the text before it is used bare, and maps the term to its id here.
for _term_id in (
    "medical_insurance_benefit",
    "local_tax",
    "resident_record",
    "long_term_care_benefit",
    "pension_benefit",
    "workers_accident_compensation",
    "public_assistance",
    "china_returnee_support",
    "child_rearing_allowance",
    "disability_status",
    "special_child_rearing_allowance",
    "war_victims_relief",
    "employment_insurance_benefit",
    "asbestos_relief",
    "job_training_benefit",
    "child_allowance",
    "local_public_servant_accident_compensation",
):
    _item = ITEMS[_term_id]
    ITEMS[_term_id] = ItemCategory(_item.id, _item.label, _item.english, defined_term=True)

ITEM_TERMS: Final[dict[str, str]] = {i.label: i.id for i in ITEMS.values() if i.defined_term}

# --- phrases of the law → capacity ids (used only by the converter) ---------------------------

# Atomic names: a requester/provider cell is split on 、 又は 若しくは and each part looked up here.
CAPACITY_NAMES: Final[dict[str, str]] = {
    c.label: c.id
    for c in CAPACITIES.values()
    if c.id
    not in ("other_statutory_payer", "public_pension_payer", "child_allowance_public_employer")
}

# Whole cells whose words qualify every name in them, so they must not be split.
CAPACITY_PHRASES: Final[dict[str, tuple[str, ...]]] = {
    # The qualifier says which governors/mayors (those running public housing / improvement
    # projects); the affair already confines the flow to that work, so the capacity is plain.
    "公営住宅法第二条第十六号に規定する事業主体である都道府県知事又は市町村長": (
        "prefectural_governor",
        "municipality",
    ),
    "住宅地区改良法第二条第二項に規定する施行者である都道府県知事又は市町村長": (
        "prefectural_governor",
        "municipality",
    ),
    # Row 74: the parenthesis widens 市町村長 to the public employers of 児童手当法第十七条.
    "市町村長（児童手当法第十七条第一項の表の下欄に掲げる者を含む。）": (
        "municipality",
        "child_allowance_public_employer",
    ),
    # 「医療保険者その他の…者」: medical insurers and anyone else paying medical benefits by law.
    "医療保険者その他の法令による医療に関する給付の支給を行うこととされている者": (
        "medical_insurer",
        "other_statutory_payer",
    ),
    "国民年金法その他の法令による年金である給付の支給を行うこととされている者": (
        "public_pension_payer",
    ),
    "児童扶養手当法第三条第二項に規定する公的年金給付の支給を行うこととされている者": (
        "public_pension_payer",
    ),
    "国民年金法その他の法令による給付の支給を行うこととされている者": ("other_statutory_payer",),
    "特別児童扶養手当等の支給に関する法律その他の法令による障害を有する者について支給される手当を支給することとされている者": (
        "other_statutory_payer",
    ),
    "昭和六十年法律第三十四号附則第九十七条第二項において準用する特別児童扶養手当等の支給に関する法律第十七条第一号の障害を支給事由とする給付の支給を行うこととされている者": (
        "other_statutory_payer",
    ),
}

# 「<law and article>に規定する他の法令による給付の支給を行うこととされている者」: the payers
# whose benefit comes first (給付調整). One capacity for all; the reference stays in the text.
OTHER_PAYER_PATTERN: Final = re.compile(
    r"^[^、。（）]+に規定する他の(?:法令|法律)(?:による|により行われる)(?:医療に関する)?"
    r"給付の支給を行うこととされている者$"
)

# --- phrases of the law → item ids (used only by the converter) -------------------------------

# One phrase may name several categories (「A若しくはBに関する情報」); order is kept.
ITEM_PHRASES: Final[dict[str, tuple[str, ...]]] = {
    # FIXED by the brief (rows 82 and 83)
    "高齢者の医療の確保に関する法律による保険料の徴収に関する情報": ("late_stage_medical_premium",),
    "高齢者の医療の確保に関する法律第百十条において準用する介護保険法第百三十六条第一項（同法第百四十条第三項において準用する場合を含む。）、第百三十八条第一項又は第百四十一条第一項の規定により通知することとされている事項に関する情報": (
        "special_collection_notice",
    ),
    "国民健康保険法第七十六条の四において準用する介護保険法第百三十六条第一項（同法第百四十条第三項において準用する場合を含む。）、第百三十八条第一項又は第百四十一条第一項の規定により通知することとされている事項に関する情報": (
        "nhi_special_collection_notice",
    ),
    "介護保険法第百三十六条第一項（同法第百四十条第三項において準用する場合を含む。）、第百三十八条第一項又は第百四十一条第一項の規定により通知することとされている事項に関する情報": (
        "ltc_special_collection_notice",
    ),
    # pensions
    "国民年金法その他の法令による年金である給付の支給に関する情報": ("public_pension_benefit",),
    "児童扶養手当法第三条第二項に規定する公的年金給付の支給に関する情報": (
        "public_pension_benefit",
    ),
    "国民年金法による年金である給付の支給に関する情報": ("national_pension_benefit",),
    "国民年金法による障害基礎年金の支給に関する情報": ("basic_disability_pension",),
    "厚生年金保険制度及び農林漁業団体職員共済組合制度の統合を図るための農林漁業団体職員共済組合法等を廃止する等の法律による年金である給付の支給に関する情報": (
        "agricultural_mutual_aid_pension",
    ),
    "厚生年金保険制度及び農林漁業団体職員共済組合制度の統合を図るための農林漁業団体職員共済組合法等を廃止する等の法律による年金である給付若しくは特定障害者に対する特別障害給付金の支給に関する法律による特別障害給付金の支給に関する情報": (
        "agricultural_mutual_aid_pension",
        "special_disability_benefit",
    ),
    "厚生年金保険制度及び農林漁業団体職員共済組合制度の統合を図るための農林漁業団体職員共済組合法等を廃止する等の法律による年金である給付、特定障害者に対する特別障害給付金の支給に関する法律による特別障害給付金若しくは年金生活者支援給付金の支給に関する法律による年金生活者支援給付金の支給に関する情報": (
        "agricultural_mutual_aid_pension",
        "special_disability_benefit",
        "pensioner_support_benefit",
    ),
    "独立行政法人農業者年金基金法による農業者年金の被保険者に関する情報": (
        "farmers_pension_insured",
    ),
    "国民年金基金の加入員に関する情報": ("national_pension_fund_member",),
    "国民年金法第八十九条第一項第三号の施設に入所する者に関する情報": (
        "national_pension_facility_resident",
    ),
    # medical and other statutory benefits
    "医療保険各法その他の法令による医療に関する給付の支給に関する情報": (
        "statutory_medical_benefit",
    ),
    "国民年金法その他の法令による給付の支給に関する情報": ("other_statutory_benefit",),
    "特別児童扶養手当等の支給に関する法律その他の法令による障害を有する者に対する手当の支給に関する情報": (
        "disability_allowance",
    ),
    "昭和六十年法律第三十四号附則第九十七条第二項において準用する特別児童扶養手当等の支給に関する法律第十七条第一号の障害を支給事由とする給付の支給に関する情報": (
        "disability_based_benefit",
    ),
    "船員保険法による保険給付の支給に関する情報": ("seamen_insurance_benefit",),
    # disability and child welfare
    "障害者の日常生活及び社会生活を総合的に支援するための法律による自立支援給付の支給に関する情報": (
        "disability_independence_support_benefit",
    ),
    "障害者の日常生活及び社会生活を総合的に支援するための法律による療養介護若しくは施設入所支援に関する情報": (
        "disability_medical_care_service",
        "disability_facility_admission_support",
    ),
    "児童福祉法による障害児入所支援若しくは措置（同法第二十七条第一項第三号の措置をいう。）に関する情報": (
        "disabled_child_residential_support",
        "child_welfare_measure",
    ),
    "児童福祉法による障害児入所支援、措置（同法第二十七条第一項第三号若しくは第二項又は第二十七条の二第一項の措置をいう。）若しくは日常生活上の援助及び生活指導並びに就業の支援の実施に関する情報": (
        "disabled_child_residential_support",
        "child_welfare_measure",
        "child_independent_living_support",
    ),
    "災害救助法による救助若しくは児童福祉法による障害児入所支援、小児慢性特定疾病医療費の支給若しくは措置（同法第二十七条第一項第三号又は第二項の措置をいう。）に関する情報": (
        "disaster_relief",
        "disabled_child_residential_support",
        "pediatric_chronic_disease_medical_expense",
        "child_welfare_measure",
    ),
    "児童福祉法による障害児通所支援に関する情報": ("disabled_child_day_support",),
    "児童福祉法による障害児通所支援若しくは母子保健法による妊娠の届出に関する情報": (
        "disabled_child_day_support",
        "pregnancy_notification",
    ),
    "児童福祉法による母子生活支援施設における保護の実施に関する情報": (
        "maternal_child_living_support_facility",
    ),
    "精神保健及び精神障害者福祉に関する法律による入院措置若しくは難病の患者に対する医療等に関する法律による特定医療費の支給に関する情報": (
        "psychiatric_involuntary_admission",
        "intractable_disease_medical_expense",
    ),
    # 障害児入所給付費 is what is paid for 障害児入所支援: one category for both.
    "災害救助法による救助若しくは扶助金の支給、児童福祉法による小児慢性特定疾病医療費、療育の給付若しくは障害児入所給付費の支給、母子及び父子並びに寡婦福祉法による資金の貸付け又は難病の患者に対する医療等に関する法律による特定医療費の支給に関する情報": (
        "disaster_relief",
        "pediatric_chronic_disease_medical_expense",
        "child_medical_care_benefit",
        "disabled_child_residential_support",
        "single_parent_welfare_loan",
        "intractable_disease_medical_expense",
    ),
    "特別児童扶養手当等の支給に関する法律による障害児福祉手当若しくは特別障害者手当又は昭和六十年法律第三十四号附則第九十七条第一項の福祉手当の支給に関する情報": (
        "disabled_child_welfare_allowance",
        "special_disability_allowance",
        "transitional_welfare_allowance",
    ),
    "母子及び父子並びに寡婦福祉法による給付金、特別児童扶養手当等の支給に関する法律による障害児福祉手当、特別障害者手当若しくは昭和六十年法律第三十四号附則第九十七条第一項の福祉手当の支給に関する情報": (
        "single_parent_family_benefit",
        "disabled_child_welfare_allowance",
        "special_disability_allowance",
        "transitional_welfare_allowance",
    ),
    "母子及び父子並びに寡婦福祉法による給付金の支給に関する情報": ("single_parent_family_benefit",),
    "母子及び父子並びに寡婦福祉法による資金の貸付けに関する情報": ("single_parent_welfare_loan",),
    "母子保健法による養育医療の給付若しくは養育医療に要する費用の支給に関する情報": (
        "premature_infant_medical_care",
    ),
    "社会福祉法による生計困難者に対して無利子又は低利で資金を融通する事業の実施に関する情報": (
        "welfare_fund_loan",
    ),
    # education
    "特別支援学校への就学奨励に関する法律による特別支援学校への就学のため必要な経費の支弁に関する情報": (
        "special_needs_school_attendance_aid",
    ),
    "学校保健安全法による医療に要する費用についての援助に関する情報": (
        "school_health_medical_aid",
    ),
    "高等学校等就学支援金の支給に関する法律による就学支援金の支給に関する情報": (
        "high_school_tuition_support",
    ),
    # employment
    "雇用対策法による職業転換給付金の支給に関する情報": ("job_change_benefit",),
    "雇用保険法による教育訓練給付金の支給に関する情報": ("education_training_benefit",),
    "戦傷病者戦没者遺族等援護法による年金である給付若しくは雇用保険法による基本手当若しくは高年齢雇用継続基本給付金の支給に関する情報": (
        "war_victims_pension",
        "employment_insurance_basic_allowance",
        "elderly_employment_continuation_benefit",
    ),
    "戦傷病者戦没者遺族等援護法による年金である給付の支給に関する情報": ("war_victims_pension",),
    # atomic bomb survivors
    "原子爆弾被爆者に対する援護に関する法律による一般疾病医療費の支給に関する情報": (
        "atomic_bomb_general_medical_expense",
    ),
    "原子爆弾被爆者に対する援護に関する法律による手当等の支給に関する情報": (
        "atomic_bomb_survivor_allowance",
    ),
    "原子爆弾被爆者に対する援護に関する法律による介護手当の支給に関する情報": (
        "atomic_bomb_survivor_care_allowance",
    ),
    # returnees from China. Row 26 says 「…支援給付等の支給」 and row 87 「…支援給付の支給」;
    # both name the same law's benefits, so both map to the same categories.
    "中国残留邦人等の円滑な帰国の促進並びに永住帰国した中国残留邦人等及び特定配偶者の自立の支援に関する法律による永住帰国旅費、自立支度金、一時金、一時帰国旅費又は中国残留邦人等支援給付等の支給に関する情報": (
        "china_returnee_repatriation_benefit",
        "china_returnee_support",
    ),
    "中国残留邦人等の円滑な帰国の促進並びに永住帰国した中国残留邦人等及び特定配偶者の自立の支援に関する法律による永住帰国旅費、自立支度金、一時金、一時帰国旅費又は中国残留邦人等支援給付の支給に関する情報": (
        "china_returnee_repatriation_benefit",
        "china_returnee_support",
    ),
}

# 「<law and article>に規定する他の法令による給付の支給に関する情報」 (the 給付調整 counterpart of
# OTHER_PAYER_PATTERN).
OTHER_BENEFIT_PATTERN: Final = re.compile(
    r"^[^、。（）]+に規定する他の(?:法令|法律)(?:による|により行われる)(?:医療に関する)?"
    r"給付の支給に関する情報$"
)


def capacity_label(capacity_id: str) -> str:
    """Japanese label of a capacity id (the id itself when unknown, for messages)."""
    found = CAPACITIES.get(capacity_id)
    return found.label if found else capacity_id


def item_label(item_id: str) -> str:
    """Japanese label of an item id (the id itself when unknown, for messages)."""
    found = ITEMS.get(item_id)
    return found.label if found else item_id
