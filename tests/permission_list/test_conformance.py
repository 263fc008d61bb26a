"""The conformance kit: its cases, its verdicts, its command line, and real runs over gRPC.

The plan and the judge are checked against the list alone. The runs start our own network
(``simulator.network.app.start``) in-process on port 0 with mutual TLS, and drive it with
``linkage conformance`` exactly as an operator would: the kit issues its own certificates from
the test CA, registers its organizations, runs its fake provider and judges. It must pass
against the network with the committed list and fail against one with a loosened list.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from permission_list_helpers import CsvRows, index_of

from permission_list import PermissionList, load
from permission_list.conformance import main, main_async, parse_args
from permission_list.conformance_cases import (
    ALLOWED,
    DATE,
    EXTRA_ITEM,
    ITEM,
    MUTATION_KINDS,
    PROCEDURE,
    PROVIDER_CAPACITY,
    REQUESTER_CAPACITY,
    Plan,
    Probe,
    build_plan,
)
from permission_list.conformance_report import (
    Disposition,
    OrganizationFacts,
    ReceivedPermit,
    judge,
    render_table,
    to_json,
)
from permission_list.conformance_session import organization_code
from permission_list.model import COLUMNS

ON = date(2026, 1, 5)
PENSION_82 = ("municipality", "table2:82", "pension_service", "pension_benefit")


@pytest.fixture(scope="module")
def plan(permissions: PermissionList) -> Plan:
    return build_plan(permissions, ON)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def allows(permissions: PermissionList, probe: Probe) -> bool:
    return all(
        permissions.check(
            probe.requester_capacity, probe.procedure, probe.provider_capacity, item, probe.on
        ).allowed
        for item in probe.items
    )


def changed_fields(probe: Probe) -> set[str]:
    requester, procedure, provider, item = probe.origin
    fields = {
        REQUESTER_CAPACITY: probe.requester_capacity != requester,
        PROCEDURE: probe.procedure != procedure,
        PROVIDER_CAPACITY: probe.provider_capacity != provider,
        ITEM: probe.items != (item,),
        DATE: probe.on != ON,
    }
    return {name for name, changed in fields.items() if changed}


# --- the plan ----------------------------------------------------------------------------------


def test_one_allowed_probe_per_allowed_tuple_in_force(
    plan: Plan, permissions: PermissionList
) -> None:
    in_force = {t for t in permissions.allowed_tuples() if permissions.check(*t, ON).allowed}
    assert len(plan.allowed) == len(in_force) == 667
    assert {p.origin for p in plan.allowed} == in_force
    for probe in plan.allowed:
        assert probe.kind == ALLOWED
        assert (probe.requester_capacity, probe.procedure, probe.provider_capacity) == (
            probe.origin[:3]
        )
        assert probe.items == (probe.origin[3],)
        assert probe.on == ON


def test_every_mutation_is_denied_by_the_list_and_changes_one_field(
    plan: Plan, permissions: PermissionList
) -> None:
    assert len(plan.mutations) > 5 * len(plan.allowed)
    for probe in plan.mutations:
        assert not allows(permissions, probe), probe
        changed = changed_fields(probe)
        if probe.kind == EXTRA_ITEM:
            assert changed == {ITEM}
            assert probe.items[0] == probe.origin[3]
            assert len(probe.items) == 2
        else:
            assert changed == {probe.kind}, probe


def test_every_allowed_probe_has_every_kind_of_mutation(plan: Plan) -> None:
    kinds: dict[tuple[str, str, str, str], set[str]] = {}
    for probe in plan.mutations:
        kinds.setdefault(probe.origin, set()).add(probe.kind)
    # Deduplication credits a shared mutation to the first origin, so count before it.
    full = {origin for origin, found in kinds.items() if found == set(MUTATION_KINDS)}
    assert len(full) > 0.9 * len(plan.allowed)
    assert {p.kind for p in plan.mutations} == set(MUTATION_KINDS)


def test_the_date_mutation_is_the_day_before_validity(plan: Plan) -> None:
    days = {p.on for p in plan.mutations if p.kind == DATE}
    assert days == {date(2017, 5, 29)}


def test_mutations_are_unique_and_per_field_bounded(plan: Plan) -> None:
    keys = [p.key() for p in plan.probes]
    assert len(keys) == len(set(keys))
    per_origin: dict[tuple[tuple[str, str, str, str], str], int] = {}
    for probe in plan.mutations:
        key = (probe.origin, probe.kind)
        per_origin[key] = per_origin.get(key, 0) + 1
    assert max(per_origin.values()) <= 3


def test_the_plan_is_deterministic(plan: Plan, permissions: PermissionList) -> None:
    assert build_plan(permissions, ON) == plan


def test_near_misses_come_first_for_row_82(permissions: PermissionList) -> None:
    # The other pair of row 82, and the rows either side, are the likeliest mistakes: each is
    # asked (from whichever origin produced it first; the plan asks a query once).
    plan = build_plan(permissions, ON, procedures=["table2:82"], per_field=1)
    keys = {(p.requester_capacity, p.procedure, p.provider_capacity, p.items) for p in plan.probes}
    for provider in ("mhlw", "pension_service", "mutual_aid_association"):
        assert ("municipality", "table2:82", provider, ("late_stage_medical_premium",)) in keys
    assert ("municipality", "table2:82", "regional_association", ("pension_benefit",)) in keys
    mhlw = [p for p in plan.mutations if p.origin[2] == "mhlw" and p.kind == PROCEDURE]
    assert [p.procedure for p in mhlw] in (["table2:81"], ["table2:83"])


def test_exhaustive_covers_every_single_field_change(permissions: PermissionList) -> None:
    small = build_plan(permissions, ON, procedures=["table2:82"])
    full = build_plan(permissions, ON, procedures=["table2:82"], exhaustive=True)
    assert {p.key() for p in small.probes} <= {p.key() for p in full.probes}
    items = {p.items[0] for p in full.mutations if p.origin == PENSION_82 and p.kind == ITEM}
    assert items == set(permissions.items()) - {"pension_benefit"}


def test_procedures_restrict_the_plan(permissions: PermissionList) -> None:
    restricted = build_plan(permissions, ON, procedures=["table2:83", "table2:82"])
    assert restricted.procedures == ("table2:82", "table2:83")
    assert {p.row for p in restricted.probes} == {"table2:82", "table2:83"}
    assert len(restricted.allowed) == 6
    with pytest.raises(ValueError, match="table2:999"):
        build_plan(permissions, ON, procedures=["table2:999"])


def test_before_the_list_takes_effect_nothing_is_allowed(permissions: PermissionList) -> None:
    assert build_plan(permissions, date(2017, 5, 29)).allowed == ()


def test_organization_codes_fit_the_directory_and_identity_grammar() -> None:
    from linkage.pki import validate_identity

    code = organization_code("a1b2c3", "local_public_servant_mutual_aid_association")
    assert code.startswith("cf-a1b2c3-")
    assert len(code) <= 32
    assert validate_identity(f"org.{code}")


# --- the judge ---------------------------------------------------------------------------------


ORGS = {
    "municipality": OrganizationFacts("municipality", "cf-x-muni", "REQCODE2345672345672"),
    "pension_service": OrganizationFacts("pension_service", "cf-x-jps", "PROVCODE234567234567"),
    "regional_association": OrganizationFacts(
        "regional_association", "cf-x-ra", "RACODE23456723456723"
    ),
}


def tiny_plan(permissions: PermissionList) -> tuple[Plan, Probe, Probe]:
    allowed = Probe(ALLOWED, PENSION_82, *PENSION_82[:3], (PENSION_82[3],), ON)
    mutation = Probe(
        PROVIDER_CAPACITY,
        PENSION_82,
        "municipality",
        "table2:82",
        "regional_association",
        ("pension_benefit",),
        ON,
    )
    return Plan(ON, ("table2:82",), (allowed,), (mutation,), 3, False), allowed, mutation


def permit_for(query_id: str, **changes: Any) -> ReceivedPermit:
    values: dict[str, Any] = {
        "query_id": query_id,
        "permit_id": "p1",
        "requester": "cf-x-muni",
        "requester_capacity": "municipality",
        "provider": "cf-x-jps",
        "provider_capacity": "pension_service",
        "procedure": "table2:82",
        "data_items": ("pension_benefit",),
        "on_date": ON.isoformat(),
        "provider_linkage_code": "PROVCODE234567234567",
        "permission_list_version": "v1",
    }
    values.update(changes)
    return ReceivedPermit(**values)


def run_judge(
    permissions: PermissionList,
    dispositions: dict[str, Disposition],
    received: list[ReceivedPermit],
) -> Any:
    plan, _allowed, _mutation = tiny_plan(permissions)
    return judge(
        plan=plan,
        query_ids=["q-allowed", "q-mutant"],
        organizations=ORGS,
        dispositions=dispositions,
        received=received,
        target="t:1",
        list_version="v1",
        target_list_version="v1",
    )


GOOD = {
    "q-allowed": Disposition("IN_FLIGHT", "", "p1"),
    "q-mutant": Disposition("DENIED", "PROVIDER_NOT_ALLOWED"),
}


def test_judge_passes_a_conforming_outcome(permissions: PermissionList) -> None:
    report = run_judge(permissions, GOOD, [permit_for("q-allowed")])
    assert report.ok
    assert (report.allowed_passed, report.allowed_total, report.refused) == (1, 1, 1)


@pytest.mark.parametrize(
    ("dispositions", "received", "problem"),
    [
        ({**GOOD, "q-allowed": Disposition("DENIED", "ITEM_NOT_ALLOWED")}, [], "not permitted"),
        (GOOD, [], "received no permit"),
        (GOOD, [permit_for("q-allowed"), permit_for("q-allowed")], "routed twice"),
        (GOOD, [permit_for("q-allowed", provider_capacity="mhlw")], "provider_capacity is"),
        (GOOD, [permit_for("q-allowed", data_items=("a", "b"))], "data_items is"),
        (GOOD, [permit_for("q-allowed", batch_problem="network signature: bad")], "rejected"),
        ({"q-mutant": GOOD["q-mutant"]}, [permit_for("q-allowed")], "no disposition"),
    ],
)
def test_judge_misses_a_wrong_allowed_case(
    permissions: PermissionList,
    dispositions: dict[str, Disposition],
    received: list[ReceivedPermit],
    problem: str,
) -> None:
    report = run_judge(permissions, dispositions, received)
    assert not report.ok
    assert [m.probe.kind for m in report.misses] == [ALLOWED]
    assert problem in report.misses[0].problem


@pytest.mark.parametrize(
    ("disposition", "received", "problem"),
    [
        (Disposition("IN_FLIGHT", "", "p2"), True, "not refused: IN_FLIGHT"),
        (Disposition("DENIED", ""), False, "DENIED without a reason"),
        (Disposition("DENIED", "X", "p2"), False, "permit p2 was issued"),
        (Disposition("DENIED", "X"), True, "the provider received a permit"),
        (Disposition("FAILED", "UNKNOWN_LINKAGE_CODE"), False, "not refused: FAILED"),
    ],
)
def test_judge_misses_a_mutation_let_through(
    permissions: PermissionList, disposition: Disposition, received: bool, problem: str
) -> None:
    permits = [permit_for("q-allowed")]
    if received:
        permits.append(permit_for("q-mutant", permit_id="p2"))
    report = run_judge(permissions, {**GOOD, "q-mutant": disposition}, permits)
    assert [m.probe.kind for m in report.misses] == [PROVIDER_CAPACITY]
    assert problem in report.misses[0].problem


def test_a_permit_nobody_asked_for_is_a_problem(permissions: PermissionList) -> None:
    report = run_judge(permissions, GOOD, [permit_for("q-allowed"), permit_for("q-other")])
    assert not report.ok
    assert not report.misses
    assert "no probe asked for" in report.problems[0]


def test_table_and_json_render_the_misses(permissions: PermissionList) -> None:
    report = run_judge(
        permissions,
        {**GOOD, "q-mutant": Disposition("IN_FLIGHT", "", "p2")},
        [permit_for("q-allowed")],
    )
    out = io.StringIO()
    render_table(report, out)
    text = out.getvalue()
    assert "table2:82" in text
    assert "1/1" in text
    assert "0/1" in text
    assert "[other provider capacity] municipality -[table2:82]-> regional_association" in text
    assert "DOES NOT CONFORM: 1 miss(es)" in text
    document = to_json(report)
    assert document["conforms"] is False
    assert document["mutations"] == {"refused": 0, "total": 1}
    assert document["misses"][0]["kind"] == PROVIDER_CAPACITY
    json.dumps(document)


# --- the command line without a target ---------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--target", "127.0.0.1:1"],  # neither --pki-dir nor --insecure
        ["--target", "127.0.0.1:1", "--insecure", "--pki-dir", "x"],
        ["--target", "nowhere", "--insecure"],
        ["--target", "127.0.0.1:1", "--insecure", "--on", "2026-13-01"],
        ["--target", "127.0.0.1:1", "--insecure", "--procedure", "table2:999"],
        ["--target", "127.0.0.1:1", "--insecure", "--procedure", "nonsense"],
        ["--target", "127.0.0.1:1", "--insecure", "--batch-size", "5001"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_procedures_are_read_as_a_person_types_them() -> None:
    options = parse_args(["--target", "h:1", "--insecure", "--procedure", "82", "56-2"])
    assert options.procedures == ("table2:82", "table2:56-2")
    assert options.on == date.today()


def test_an_unreachable_target_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--target", f"127.0.0.1:{free_port()}", "--insecure", "--procedure", "83"])
    assert code == 2
    assert "unreachable" in capsys.readouterr().err


def test_a_pki_dir_without_a_ca_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--target", "127.0.0.1:1", "--pki-dir", str(tmp_path), "--procedure", "83"])
    assert code == 2
    assert "no CA" in capsys.readouterr().err
    assert not (tmp_path / "ca.pem").exists()


# --- real runs over gRPC -----------------------------------------------------------------------

StartNetwork = Callable[..., Awaitable[str]]


@pytest.fixture(scope="module")
def target_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator's PKI: a CA and the network's certificate; the kit issues its own."""
    from linkage.pki import init_pki

    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, ["network"])
    return directory


def create_schema(url: str) -> None:
    """The network's tables and the ledger's (what the migrations will make)."""
    import simulator.network.models  # noqa: F401  (registers the tables)
    from linkage.db import Base, make_engine
    from linkage.records.models import TABLES

    engine = make_engine(url)
    tables = [t for name, t in Base.metadata.tables.items() if name.startswith("network_")]
    Base.metadata.create_all(engine, tables=[*tables, *TABLES])
    engine.dispose()


@pytest.fixture
async def start_network(tmp_path: Path, target_pki: Path) -> AsyncIterator[StartNetwork]:
    """``await start_network(permission_list=..., insecure=...)`` → the network's address."""
    from linkage.db import sqlite_url
    from linkage.rpc import Security
    from simulator.network import app as network_app

    apps: list[network_app.App] = []

    async def start(
        permission_list: PermissionList | None = None, *, insecure: bool = False
    ) -> str:
        url = sqlite_url(tmp_path / f"network-{len(apps)}.sqlite")
        create_schema(url)
        config = network_app.Config(
            database_url=url,
            security=Security(None if insecure else target_pki, "network"),
            data_dir=tmp_path / f"network-keys-{len(apps)}",
            permission_list=permission_list,
            migrate=False,
        )
        started = await network_app.start(config)
        apps.append(started)
        return started.address

    yield start
    for started in apps:
        await started.close(grace=0)


async def kit(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


async def test_the_kit_passes_our_network_on_a_few_procedures(
    start_network: StartNetwork, target_pki: Path
) -> None:
    address = await start_network()
    code, out, err = await kit(
        "--target", address, "--pki-dir", str(target_pki), "--procedure", "82", "83", "1"
    )
    assert code == 0, out + err
    assert "CONFORMS" in out
    assert "DOES NOT" not in out
    line_82 = next(line for line in out.splitlines() if line.startswith("table2:82 "))
    _procedure, allowed, mutations, misses = line_82.split()
    refused, total = mutations.split("/")
    assert allowed == "4/4"
    assert refused == total
    assert int(total) > 20
    assert misses == "0"
    assert (target_pki / "platform.conformance.pem").exists()


async def test_the_kit_passes_our_network_on_the_whole_list(
    start_network: StartNetwork, target_pki: Path, permissions: PermissionList
) -> None:
    address = await start_network()
    code, out, err = await kit("--target", address, "--pki-dir", str(target_pki), "--json")
    assert code == 0, out[-3000:] + err
    report = json.loads(out)
    plan = build_plan(permissions, date.today())
    assert report["conforms"] is True
    assert report["allowed"] == {"passed": len(plan.allowed), "total": len(plan.allowed)}
    assert report["mutations"] == {"refused": len(plan.mutations), "total": len(plan.mutations)}
    assert report["target_list_version"] == permissions.version
    assert report["stats"]["organizations"] == len(permissions.capacities())
    assert report["seconds"] < 60


def loosened(committed_rows: CsvRows, write_csv: Callable[[CsvRows], Path]) -> tuple[Path, str]:
    """The list with one more item in row 82's pension pair: the near miss the kit asks first."""
    extra = "late_stage_medical_premium"
    rows = [list(row) for row in committed_rows]
    line = rows[index_of(rows, "table2:82", 1)]
    items = COLUMNS.index("items")
    line[items] = f"{line[items]};{extra}"
    return write_csv(rows), extra


async def test_the_kit_fails_a_network_with_a_loosened_list(
    start_network: StartNetwork,
    target_pki: Path,
    committed_rows: CsvRows,
    write_csv: Callable[[CsvRows], Path],
) -> None:
    path, extra = loosened(committed_rows, write_csv)
    address = await start_network(load(path))
    code, out, err = await kit(
        "--target", address, "--pki-dir", str(target_pki), "--procedure", "82", "--on", "2025-04-01"
    )
    assert code == 1, out + err
    assert "target list: table2-2015+sha256:" in out
    assert "(differs)" in out
    assert "DOES NOT CONFORM" in out
    misses = [line for line in out.splitlines() if line.startswith("  table2:82 [")]
    assert misses
    for provider in ("mhlw", "pension_service", "mutual_aid_association"):
        assert any(
            f"-[table2:82]-> {provider}: {extra} on 2025-04-01: not refused: IN_FLIGHT" in line
            for line in misses
        ), out
    # Only the loosened tuples are let through: every other probe still conforms.
    assert all(extra in line for line in misses)


async def test_the_json_report_lists_each_miss(
    start_network: StartNetwork,
    target_pki: Path,
    committed_rows: CsvRows,
    write_csv: Callable[[CsvRows], Path],
) -> None:
    path, extra = loosened(committed_rows, write_csv)
    address = await start_network(load(path))
    code, out, _err = await kit(
        "--target", address, "--pki-dir", str(target_pki), "--procedure", "82", "--json"
    )
    assert code == 1
    report = json.loads(out)
    assert report["conforms"] is False
    row = next(r for r in report["rows"] if r["procedure"] == "table2:82")
    assert row["allowed_passed"] == row["allowed_total"] == 4
    assert row["misses"] == len(report["misses"]) > 0
    assert {m["kind"] for m in report["misses"]} <= {ITEM, EXTRA_ITEM}
    assert all(extra in m["items"] for m in report["misses"])


async def test_the_kit_runs_against_an_insecure_debug_network(
    start_network: StartNetwork,
) -> None:
    address = await start_network(insecure=True)
    code, out, err = await kit("--target", address, "--insecure", "--procedure", "83")
    assert code == 0, out + err


# --- the fake provider -------------------------------------------------------------------------


def provider_fixture() -> tuple[Any, Any, Any]:
    """A FakeProvider hosting one organization, trusting one network key; and that key."""
    from nacl.signing import SigningKey

    from linkage import crypto
    from permission_list.conformance_provider import FakeProvider, NetworkKeys

    network_key = SigningKey.generate()
    network = crypto.Signer("network", crypto.key_id(bytes(network_key.verify_key)), network_key)
    org_key = SigningKey.generate()
    org = crypto.Signer("cf-x-jps", crypto.key_id(bytes(org_key.verify_key)), org_key)

    async def fetch() -> dict[str, bytes]:
        return {network.key_id: bytes(network_key.verify_key)}

    return FakeProvider({org.holder: org}, NetworkKeys(fetch)), network, org


def permit_batch(signer: Any) -> Any:
    from nacl.public import PrivateKey

    from linkage import crypto
    from linkage.v1 import inbound_pb2, payloads_pb2

    public = bytes(PrivateKey.generate().public_key)
    key = payloads_pb2.RequesterKey(
        organization="cf-x-muni", key_id=crypto.key_id(public), public_key=public
    )
    envelope = signer.sign(key.SerializeToString())  # who signs it does not matter here
    permit = payloads_pb2.Permit(
        permit_id="p1", query_id="q1", requester="cf-x-muni", provider="cf-x-jps"
    )
    batch = payloads_pb2.PermitBatch(
        requester_key=envelope,
        requester_key_digest=crypto.digest(envelope.body),
        permits=[permit],
    )
    return inbound_pb2.ProvideAnswersRequest(permit_batch=signer.sign(batch.SerializeToString()))


async def provide(provider: Any, request: Any, identity: str = "network") -> Any:
    from linkage.rpc import CALLER

    CALLER.set(identity)
    return await provider.ProvideAnswers(request, None)


async def test_the_fake_provider_answers_no_data_signed_by_the_provider() -> None:
    from linkage import crypto
    from linkage.v1 import common_pb2, payloads_pb2

    provider, network, org = provider_fixture()
    response = await provide(provider, permit_batch(network))
    keys = {org.key_id: bytes(org.key.verify_key)}
    body = crypto.open_envelope(response.answer_batch, keys, expected_signer="cf-x-jps")
    answers = payloads_pb2.AnswerBatch.FromString(body).answers
    assert [(a.permit_id, a.status) for a in answers] == [("p1", common_pb2.QUERY_STATUS_NO_DATA)]
    assert [p.query_id for p in provider.record.permits] == ["q1"]
    assert provider.record.permits[0].batch_problem == ""


async def test_the_fake_provider_records_but_refuses_a_badly_signed_batch() -> None:
    from linkage import crypto
    from linkage.errors import InvalidArgument

    provider, _network, org = provider_fixture()
    rogue = crypto.Signer("network", org.key_id, org.key)  # not a network key
    with pytest.raises(InvalidArgument):
        await provide(provider, permit_batch(rogue))
    assert "network signature" in provider.record.permits[0].batch_problem


async def test_the_fake_provider_refuses_anyone_but_the_network() -> None:
    from linkage.errors import PermissionDenied

    provider, network, _org = provider_fixture()
    with pytest.raises(PermissionDenied):
        await provide(provider, permit_batch(network), identity="org.cf-x-muni")
    assert provider.record.permits == []
    assert "not 'network'" in provider.record.problems[0]
