"""Linkage codes: the keyed-hash derivation, issuance through processing serials, unlinkability."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from datetime import timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from network_support import Clock, Net, remote, stored_bytes

from linkage.codes import LINKAGE_CODE_RE
from linkage.v1 import network_pb2
from simulator.network.codes import CodeDeriver
from simulator.network.keystore import CodeSecrets

ORG_CODES = st.from_regex(r"[a-z0-9][a-z0-9-]{0,31}", fullmatch=True)
DERIVER = CodeDeriver(CodeSecrets(os.urandom(32), os.urandom(32)))


def _serial_request(
    serial: str, resident: str, org: str
) -> network_pb2.RegisterProcessingSerialRequest:
    return network_pb2.RegisterProcessingSerialRequest(
        processing_serial=serial, resident_code=resident, organization=org
    )


def _obtain(org: str, serial: str) -> network_pb2.ObtainLinkageCodeRequest:
    return network_pb2.ObtainLinkageCodeRequest(organization=org, processing_serial=serial)


async def test_codes_follow_the_documented_keyed_hash_derivation(net: Net, tmp_path: Path) -> None:
    code = await net.issue_code("12345678901", "sakai")
    secrets = CodeSecrets.load_or_create(tmp_path / "network-keys")
    person_key = hmac.new(secrets.k_person, b"12345678901", hashlib.sha256).digest()
    mac = hmac.new(secrets.k_code, person_key + b"sakai", hashlib.sha256).digest()
    assert code == base64.b32encode(mac).decode()[:20]


async def test_an_organization_obtains_its_code_with_the_serial_and_may_retry(net: Net) -> None:
    await net.stub("registry").RegisterProcessingSerial(
        _serial_request("serial-0000000000000001", "10000000001", "sakai")
    )
    sakai = net.stub("org.sakai")
    first = await sakai.ObtainLinkageCode(_obtain("sakai", "serial-0000000000000001"))
    again = await sakai.ObtainLinkageCode(_obtain("sakai", "serial-0000000000000001"))
    assert LINKAGE_CODE_RE.fullmatch(first.linkage_code)
    assert again.linkage_code == first.linkage_code
    # A second serial for the same person gives the same code: one code per person and org.
    assert await net.issue_code("10000000001", "sakai") == first.linkage_code


async def test_a_serial_issued_for_another_organization_is_not_found_like_an_unknown_one(
    net: Net,
) -> None:
    await net.stub("registry").RegisterProcessingSerial(
        _serial_request("serial-for-sakai-000001", "10000000001", "sakai")
    )
    jps = net.stub("org.jps")
    other = await remote(jps.ObtainLinkageCode(_obtain("jps", "serial-for-sakai-000001")))
    unknown = await remote(jps.ObtainLinkageCode(_obtain("jps", "serial-never-issued-01")))
    assert (other.code, other.reason) == ("NOT_FOUND", "SERIAL_NOT_FOUND")
    assert (other.code, other.reason, other.message) == (
        unknown.code,
        unknown.reason,
        unknown.message,
    )


async def test_an_expired_serial_is_failed_precondition(net: Net, clock: Clock) -> None:
    response = await net.stub("registry").RegisterProcessingSerial(
        _serial_request("serial-expiring-000001", "10000000001", "sakai")
    )
    assert response.expires_at.ToDatetime().timestamp() > clock.now.timestamp()
    clock.advance(net.app.config.serial_ttl + timedelta(seconds=1))
    error = await remote(
        net.stub("org.sakai").ObtainLinkageCode(_obtain("sakai", "serial-expiring-000001"))
    )
    assert (error.code, error.reason) == ("FAILED_PRECONDITION", "SERIAL_EXPIRED")


async def test_only_the_registry_hands_over_serials(net: Net) -> None:
    for caller in ("org.sakai", "admin", "ua.sakai"):
        error = await remote(
            net.stub(caller).RegisterProcessingSerial(
                _serial_request("serial-forged-0000001", "10000000001", "sakai")
            )
        )
        assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED")


async def test_a_serial_reused_for_another_resident_is_already_exists_and_a_retry_is_not(
    net: Net,
) -> None:
    registry = net.stub("registry")
    first = await registry.RegisterProcessingSerial(
        _serial_request("serial-reused-0000001", "10000000001", "sakai")
    )
    retry = await registry.RegisterProcessingSerial(
        _serial_request("serial-reused-0000001", "10000000001", "sakai")
    )
    assert retry.expires_at == first.expires_at
    for resident, org in (("10000000002", "sakai"), ("10000000001", "jps")):
        error = await remote(
            registry.RegisterProcessingSerial(
                _serial_request("serial-reused-0000001", resident, org)
            )
        )
        assert (error.code, error.reason) == ("ALREADY_EXISTS", "SERIAL_ALREADY_USED")


async def test_bad_serial_registration_names_the_fields_but_not_the_values(net: Net) -> None:
    error = await remote(
        net.stub("registry").RegisterProcessingSerial(_serial_request("short", "12345", "Sakai"))
    )
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "INVALID_FIELDS")
    assert {v.field for v in error.violations} == {
        "processing_serial",
        "resident_code",
        "organization",
    }
    assert "12345" not in error.message


async def test_a_serial_for_an_unregistered_organization_is_not_found(net: Net) -> None:
    error = await remote(
        net.stub("registry").RegisterProcessingSerial(
            _serial_request("serial-for-ghost-00001", "10000000001", "ghost")
        )
    )
    assert (error.code, error.reason) == ("NOT_FOUND", "ORGANIZATION_NOT_FOUND")


async def test_an_organization_cannot_obtain_a_code_as_another(net: Net) -> None:
    await net.stub("registry").RegisterProcessingSerial(
        _serial_request("serial-for-sakai-000002", "10000000001", "sakai")
    )
    error = await remote(
        net.stub("org.jps").ObtainLinkageCode(_obtain("sakai", "serial-for-sakai-000002"))
    )
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "NOT_THIS_ORGANIZATION")


async def test_one_persons_codes_at_two_organizations_differ(net: Net) -> None:
    sakai = await net.issue_code("10000000001", "sakai")
    jps = await net.issue_code("10000000001", "jps")
    assert sakai != jps
    assert _common_prefix(sakai, jps) < 4
    assert _common_prefix(sakai[::-1], jps[::-1]) < 4


async def test_the_network_database_never_holds_a_resident_code(net: Net, network_url: str) -> None:
    residents = [f"9{i:010d}" for i in range(1, 21)]
    for resident in residents:
        await net.issue_code(resident, "sakai")
    stored = stored_bytes(network_url)
    for resident in residents:
        assert resident.encode() not in stored


def _common_prefix(a: str, b: str) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


@settings(max_examples=300, deadline=None)
@given(
    resident=st.from_regex(r"[0-9]{11}", fullmatch=True),
    first=ORG_CODES,
    second=ORG_CODES,
)
def test_codes_of_one_person_at_two_organizations_share_no_prefix_or_suffix(
    resident: str, first: str, second: str
) -> None:
    """Unlinkability: without k_code two codes of one person look unrelated. Random base32
    strings share a 4-character prefix with probability 32**-4, so any systematic overlap (a
    code built from a common part plus an organization part) would show here at once."""
    if first == second:
        return
    person_key = DERIVER.person_key(resident)
    a, b = DERIVER.linkage_code(person_key, first), DERIVER.linkage_code(person_key, second)
    assert LINKAGE_CODE_RE.fullmatch(a)
    assert LINKAGE_CODE_RE.fullmatch(b)
    assert a != b
    assert _common_prefix(a, b) < 4
    assert _common_prefix(a[::-1], b[::-1]) < 4


def test_codes_agree_between_organizations_no_more_than_chance() -> None:
    """Across many people, characters at the same position of two organizations' codes agree
    about 1 time in 32, as for independent random strings."""
    people = [DERIVER.person_key(f"{i:011d}") for i in range(2000)]
    agree = sum(
        x == y
        for key in people
        for x, y in zip(
            DERIVER.linkage_code(key, "sakai"), DERIVER.linkage_code(key, "jps"), strict=True
        )
    )
    rate = agree / (len(people) * 20)
    assert abs(rate - 1 / 32) < 0.006


def test_distinct_people_get_distinct_codes_at_one_organization() -> None:
    codes = {DERIVER.linkage_code(DERIVER.person_key(f"{i:011d}"), "sakai") for i in range(20000)}
    assert len(codes) == 20000
