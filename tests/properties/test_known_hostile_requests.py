"""Hostile requests the property tests found, kept as fixed examples (a regression corpus).

Each is sent as raw bytes, as the rightful caller, to the world of the session; the status must
be the precise one stated.
"""

from __future__ import annotations

import grpc
import pytest
from properties_support import HostileWorld

from linkage.errors import remote_error
from linkage.v1 import intermediate_server_pb2 as isp
from linkage.v1 import network_pb2
from linkage.v1 import unified_address_pb2 as uap

UNDECODABLE = b"\xff\xff\xff\xff"  # not a protobuf message: a field with a bad wire type
FAR_FUTURE = 2**63 - 1  # seconds: beyond datetime and timedelta


def _status(
    hostile: HostileWorld, service: str, method: str, identity: str, payloads: list[bytes]
) -> tuple[str, str]:
    channel = hostile.channel(identity, hostile.served[service])
    path = f"/{service}/{method}"
    try:
        if method == "ImportDuplicates":
            channel.stream_unary(path, None, None)(iter(payloads), timeout=5)
        elif method in ("StreamQueries", "StreamPersonQueries"):
            list(channel.stream_stream(path, None, None)(iter(payloads), timeout=5))
        else:
            channel.unary_unary(path, None, None)(payloads[0], timeout=5)
    except grpc.RpcError as error:
        remote = remote_error(error)
        return remote.code, remote.reason
    return "OK", ""


@pytest.mark.parametrize(
    ("service", "method", "identity"),
    [
        ("linkage.v1.NetworkService", "GetOrganization", "org.sakai"),
        ("linkage.v1.IntermediateServerService", "SubmitQuery", "ua.sakai"),
        ("linkage.v1.IntermediateServerService", "ImportDuplicates", "ua.sakai"),
        ("linkage.v1.IntermediateServerService", "StreamQueries", "ua.sakai"),
        ("linkage.v1.UnifiedAddressService", "StreamPersonQueries", "bs.sakai.kouki"),
        ("linkage.v1.InboundService", "ProvideAnswers", "network"),
    ],
)
def test_a_request_that_does_not_parse_is_invalid_argument(
    hostile_world: HostileWorld, service: str, method: str, identity: str
) -> None:
    """Was UNKNOWN (unary) or INTERNAL (streams): grpc's own answer to a deserializer error."""
    status = _status(hostile_world, service, method, identity, [UNDECODABLE])
    assert status == ("INVALID_ARGUMENT", "MALFORMED_REQUEST")


def test_a_wait_beyond_any_date_is_refused_by_the_intermediate_server(
    hostile_world: HostileWorld,
) -> None:
    request = isp.GetQueryResultRequest(name="organizations/sakai/queries/q-1")
    request.wait.seconds = FAR_FUTURE
    payload = request.SerializeToString()
    service = "linkage.v1.IntermediateServerService"
    code, _ = _status(hostile_world, service, "GetQueryResult", "ua.sakai", [payload])
    assert code == "NOT_FOUND"  # the wait is bounded; the query does not exist


def test_a_wait_beyond_any_date_is_refused_by_the_unified_address_server(
    hostile_world: HostileWorld,
) -> None:
    """Was INTERNAL: ``Duration.ToTimedelta()`` overflowed (found by the property test)."""
    request = uap.GetPersonQueryResultRequest(query_id="q-1")
    request.wait.seconds = FAR_FUTURE
    payload = request.SerializeToString()
    service = "linkage.v1.UnifiedAddressService"
    status = _status(hostile_world, service, "GetPersonQueryResult", "bs.sakai.kouki", [payload])
    assert status[0] == "INVALID_ARGUMENT", status


def test_an_organization_named_by_a_huge_string_is_refused(hostile_world: HostileWorld) -> None:
    request = network_pb2.GetOrganizationRequest(name="organizations/" + "a" * 300_000)
    service = "linkage.v1.NetworkService"
    code, _ = _status(
        hostile_world, service, "GetOrganization", "org.sakai", [request.SerializeToString()]
    )
    assert code in ("INVALID_ARGUMENT", "NOT_FOUND")
