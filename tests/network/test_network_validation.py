"""Bad input on every RPC: INVALID_ARGUMENT naming the fields, never a crash, nothing written."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from network_support import Net, Stub, remote

from linkage.errors import LinkageError
from linkage.rpc import channel_target
from linkage.v1 import common_pb2, network_pb2
from simulator.network import parse

BAD_REQUESTS: list[tuple[str, str, Callable[[Stub], Any], set[str]]] = [
    (
        "GetOrganization",
        "org.sakai",
        lambda s: s.GetOrganization(network_pb2.GetOrganizationRequest(name="orgs/sakai")),
        {"name"},
    ),
    (
        "ListOrganizations",
        "org.sakai",
        lambda s: s.ListOrganizations(network_pb2.ListOrganizationsRequest(page_size=-1)),
        {"page_size"},
    ),
    (
        "RotateOrganizationKeys",
        "org.sakai",
        lambda s: s.RotateOrganizationKeys(
            network_pb2.RotateOrganizationKeysRequest(name="organizations/sakai")
        ),
        {"signing_key"},
    ),
    (
        "RotateOrganizationKeys",
        "org.sakai",
        lambda s: s.RotateOrganizationKeys(
            network_pb2.RotateOrganizationKeysRequest(
                name="organizations/sakai",
                signing_key=common_pb2.PublicKey(key_id="0123456789abcdef", key=b"\x01" * 31),
            )
        ),
        {"signing_key.key"},
    ),
    (
        "ObtainLinkageCode",
        "org.sakai",
        lambda s: s.ObtainLinkageCode(
            network_pb2.ObtainLinkageCodeRequest(organization="sakai", processing_serial="x")
        ),
        {"processing_serial"},
    ),
    (
        "ObtainLinkageCode",
        "org.sakai",
        lambda s: s.ObtainLinkageCode(network_pb2.ObtainLinkageCodeRequest()),
        {"organization"},
    ),
    (
        "DiscloseNetworkAccessRecords",
        "org.sakai",
        lambda s: s.DiscloseNetworkAccessRecords(
            network_pb2.DiscloseNetworkAccessRecordsRequest(
                organization="sakai", linkage_code="lower-case-is-no-code"
            )
        ),
        {"linkage_code"},
    ),
    (
        "SubmitQueries",
        "org.sakai",
        lambda s: s.SubmitQueries(
            network_pb2.SubmitQueriesRequest(requester="sakai", requester_capacity="")
        ),
        {"requester_capacity", "requester_key", "queries"},
    ),
    (
        "SubmitQueries",
        "org.sakai",
        lambda s: s.SubmitQueries(network_pb2.SubmitQueriesRequest()),
        {"requester"},
    ),
    (
        "DeliverLateAnswers",
        "org.jps",
        lambda s: s.DeliverLateAnswers(network_pb2.DeliverLateAnswersRequest()),
        {"answer_batch.body", "answer_batch.signature", "answer_batch.signer"},
    ),
]


@pytest.mark.parametrize(
    ("method", "identity", "call", "fields"),
    BAD_REQUESTS,
    ids=[f"{m}-{i}" for i, (m, *_) in enumerate(BAD_REQUESTS)],
)
async def test_every_rpc_rejects_bad_input_naming_the_fields(
    net: Net, method: str, identity: str, call: Callable[[Stub], Any], fields: set[str]
) -> None:
    error = await remote(call(net.stub(identity)))
    assert error.code == "INVALID_ARGUMENT", method
    assert {v.field for v in error.violations} == fields


async def test_a_caller_past_its_budget_of_queries_is_rate_limited(
    start_network: Callable[..., Any],
    connect: Callable[[str, str], Stub],
) -> None:
    from simulator.network.ratelimit import RateLimit

    app = await start_network(rate_limit=RateLimit(per_second=1, burst=10))
    request = network_pb2.SubmitQueriesRequest(
        requester="sakai",
        requester_capacity="municipality",
        queries=[network_pb2.QuerySubmission(query_id=f"q-{i}") for i in range(8)],
    )
    stub = connect("org.sakai", app.address)
    first = await remote(stub.SubmitQueries(request))
    assert first.code == "INVALID_ARGUMENT"  # admitted (8 of 10 tokens), then found malformed
    second = await remote(stub.SubmitQueries(request))
    assert (second.code, second.reason) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")


TEXT = st.text(max_size=40)
T = TypeVar("T")


def _attempt(parse_call: Callable[[], T]) -> T | LinkageError:
    """The parsed value, or the domain error; anything else escapes and fails the test."""
    try:
        return parse_call()
    except LinkageError as error:
        return error


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requester_capacity=TEXT,
    queries=st.lists(
        st.builds(
            network_pb2.QuerySubmission,
            query_id=TEXT,
            procedure=TEXT,
            provider=TEXT,
            data_items=st.lists(TEXT, max_size=4),
            linkage_code=st.one_of(TEXT, st.from_regex(r"[A-Z2-7]{20}", fullmatch=True)),
            on_date=st.one_of(TEXT, st.dates().map(str)),
        ),
        max_size=5,
    ),
)
def test_parsing_any_batch_either_succeeds_or_raises_a_domain_error(
    requester_capacity: str, queries: list[network_pb2.QuerySubmission]
) -> None:
    request = network_pb2.SubmitQueriesRequest(
        requester="sakai",
        requester_capacity=requester_capacity,
        requester_key=common_pb2.SignedEnvelope(body=b"x"),
        queries=queries,
    )
    outcome = _attempt(lambda: parse.submission(request))
    if isinstance(outcome, LinkageError):
        assert outcome.reason == "INVALID_FIELDS"
        assert outcome.violations
    else:
        assert len(outcome.queries) == len(queries)


@settings(max_examples=200, deadline=None)
@given(
    code=TEXT,
    display_name=TEXT,
    capacities=st.lists(st.sampled_from(["municipality", "pension_service", "nope", ""])),
    endpoint=TEXT,
    lgc=TEXT,
    key=st.binary(max_size=40),
    key_id=TEXT,
)
def test_parsing_any_registration_either_succeeds_or_raises_a_domain_error(
    code: str,
    display_name: str,
    capacities: list[str],
    endpoint: str,
    lgc: str,
    key: bytes,
    key_id: str,
) -> None:
    request = network_pb2.RegisterOrganizationRequest(
        organization=network_pb2.Organization(
            code=code,
            display_name=display_name,
            capacities=capacities,
            endpoint=endpoint,
            local_government_code=lgc,
            signing_keys=[common_pb2.PublicKey(key_id=key_id, key=key)],
        )
    )
    outcome = _attempt(lambda: parse.registration(request, datetime.now(UTC)))
    if isinstance(outcome, LinkageError):
        assert outcome.reason == "INVALID_FIELDS"
        assert outcome.violations
    else:
        assert outcome.code == code


def _registration(endpoint: str) -> network_pb2.RegisterOrganizationRequest:
    return network_pb2.RegisterOrganizationRequest(
        organization=network_pb2.Organization(
            code="sakai",
            display_name="堺市",
            capacities=["municipality"],
            endpoint=endpoint,
            signing_keys=[common_pb2.PublicKey(key_id="0123456789abcdef", key=b"\x01" * 32)],
        )
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "127.0.0.1:50052",
        "platform-municipal:50052",
        "[::1]:50052",
        "127.0.0.1:50052,127.0.0.1:50053",  # the replicas of one platform
        "10.0.0.1:50052,10.0.0.2:50052,10.0.0.3:50052",
        "[::1]:50052,[::1]:50053",
    ],
)
def test_an_endpoint_may_be_one_address_or_a_list_of_replicas(endpoint: str) -> None:
    entry = parse.registration(_registration(endpoint), datetime.now(UTC))
    assert entry.endpoint == endpoint
    # Whatever the directory accepts, the network's transport can open.
    target, options = channel_target(endpoint)
    if "," in endpoint:
        assert target == ("ipv6:" if "[" in endpoint else "ipv4:") + endpoint
        assert ("grpc.lb_policy_name", "round_robin") in options


@pytest.mark.parametrize(
    "endpoint",
    [
        "",
        "nowhere",
        "127.0.0.1:0",
        "127.0.0.1:50052,",  # an empty replica
        "127.0.0.1:50052, 127.0.0.1:50053",  # a space
        "a.example:50052,b.example:50052",  # a list must name IP addresses
        "127.0.0.1:50052,[::1]:50053",  # of one family
        "127.0.0.1:50052,127.0.0.1:70000",
        ",".join(["127.0.0.1:50052"] * 20),  # longer than the directory keeps
    ],
)
def test_a_bad_endpoint_is_refused(endpoint: str) -> None:
    with pytest.raises(LinkageError) as caught:
        parse.registration(_registration(endpoint), datetime.now(UTC))
    assert [v.field for v in caught.value.violations] == ["organization.endpoint"]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            st.from_regex(r"127\.0\.0\.[0-9]{1,3}:[0-9]{1,5}", fullmatch=True),
            st.from_regex(r"\[::[0-9]\]:[0-9]{1,5}", fullmatch=True),
            st.from_regex(r"[a-z][a-z0-9.-]{0,8}:[0-9]{1,5}", fullmatch=True),
            st.text(max_size=12),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_every_endpoint_the_directory_accepts_opens_as_a_channel_target(parts: list[str]) -> None:
    endpoint = ",".join(parts)
    outcome = _attempt(lambda: parse.registration(_registration(endpoint), datetime.now(UTC)))
    if not isinstance(outcome, LinkageError):
        channel_target(endpoint)  # never ValueError
