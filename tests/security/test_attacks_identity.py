"""Attacks on identity and on the servers themselves, over real gRPC with mutual TLS.

Who may act for whom is bound to the certificate: a certificate of organization A cannot act as
B at the network, a unified address server cannot act for another tenant of a platform, a
business system reaches only its own organization's unified address server, only the network
calls a platform's inbound side, and a certificate from another CA opens no server at all. A
query whose requester key another organization signed is refused by the network. Every refusal
is recorded where it happens (``ACCESS_DENIED``) and changes nothing else.

Then the servers themselves: random bytes sent to every method of every server, and a 40 MB
request, are refused without a crash, and every server still answers its health check.

The world is shared by the module; every test compares the databases before and after.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import linkage.v1
from linkage import crypto, pki
from linkage.errors import Unavailable
from linkage.keys import read_private_file
from linkage.rpc import Security
from linkage.v1 import (
    common_pb2,
    intermediate_server_pb2,
    intermediate_server_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    payloads_pb2,
    registry_pb2,
    registry_pb2_grpc,
    unified_address_pb2,
    unified_address_pb2_grpc,
)
from server.network_client import GrpcNetwork

from .attack_support import (
    PROVIDE_ANSWERS,
    AttackWorld,
    Databases,
    Person,
    Proxy,
    attacker_signer,
    new_query_id,
    raw_call,
    records,
    refused,
    rows,
    snapshot,
    start_attack_world,
    status,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

pb = intermediate_server_pb2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AttackWorld]:
    """One world for the module (sakai and osaka on one platform, jps on another)."""
    root = tmp_path_factory.mktemp("attacks-identity")
    databases = Databases(root / "db")
    world = await start_attack_world(root / "world", databases)
    try:
        yield world
    finally:
        await world.close()
        databases.drop()


@pytest_asyncio.fixture(loop_scope="module")
async def arena(shared: AttackWorld) -> AsyncIterator[AttackWorld]:
    """The module's world with its proxies disarmed (and checked after the test: a hook that
    broke is a bug in the test, not a refused attack)."""
    shared.reset()
    yield shared
    shared.reset()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def person(shared: AttackWorld) -> Person:
    """A pensioner known to jps and sakai."""
    return await shared.pensioner()


def _servers(arena: AttackWorld) -> dict[str, tuple[str, str]]:
    """Every server of the world: name → (address, the identity that legitimately calls it)."""
    world = arena.world
    servers = {
        "network": (world.network.address, "org.sakai"),
        "registry": (world.registry.address, "ua.sakai"),
    }
    for name, platform in world.platforms.items():
        servers[f"platform-{name}"] = (platform.address, "network")
    for code, ua in world.unified_address.items():
        system = world.organization(code).systems[0].system
        servers[f"ua-{code}"] = (ua.address, f"bs.{code}.{system}")
    return servers


async def _healthy(arena: AttackWorld, address: str, identity: str) -> bool:
    stub = health_pb2_grpc.HealthStub(arena.channel(identity, address))
    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def _network_state(arena: AttackWorld) -> dict[str, list[Any]]:
    url = arena.url("network")
    tables = ("network_organizations", "network_organization_keys", "network_permits")
    state = {table: rows(url, table) for table in tables}
    state["codes"] = rows(url, "network_issued_codes") + rows(url, "network_processing_serials")
    return state


# --- another CA ----------------------------------------------------------------------------------


async def test_a_client_certificate_from_another_ca_is_refused_by_every_server(
    arena: AttackWorld, tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign-pki"
    servers = _servers(arena)
    pki.init_pki(foreign, sorted({identity for _, identity in servers.values()}))
    ca = (arena.pki_dir / "ca.pem").read_bytes()

    for name, (address, identity) in servers.items():
        # The client trusts the world's CA (so the server is verified) but presents a
        # certificate with the right name from another CA.
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=read_private_file(foreign / f"{identity}.key"),
            certificate_chain=(foreign / f"{identity}.pem").read_bytes(),
        )
        async with grpc.aio.secure_channel(address, credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            error = await refused(stub.Check(health_pb2.HealthCheckRequest(), timeout=10))
        assert error.code == "UNAVAILABLE", name
        assert await _healthy(arena, address, identity), name


# --- a certificate of A acting as B -----------------------------------------------------------


async def _as_jps(arena: AttackWorld, method: str) -> Awaitable[Any]:
    """``method`` of NetworkService called by org.sakai on jps's behalf."""
    stub = network_pb2_grpc.NetworkServiceStub(arena.channel("org.sakai", arena.network.address))
    if method == "SubmitQueries":
        return stub.SubmitQueries(
            network_pb2.SubmitQueriesRequest(
                requester="jps",
                requester_capacity="pension_service",
                requester_key=await arena.requester_key("jps"),
                queries=[_query("A" * 20)],
            )
        )
    if method == "ObtainLinkageCode":
        return stub.ObtainLinkageCode(
            network_pb2.ObtainLinkageCodeRequest(organization="jps", processing_serial="s" * 24)
        )
    if method == "RotateOrganizationKeys":
        key = attacker_signer("jps")
        return stub.RotateOrganizationKeys(
            network_pb2.RotateOrganizationKeysRequest(
                name="organizations/jps",
                signing_key=common_pb2.PublicKey(key_id=key.key_id, key=bytes(key.key.verify_key)),
            )
        )
    assert method == "DiscloseNetworkAccessRecords"
    return stub.DiscloseNetworkAccessRecords(
        network_pb2.DiscloseNetworkAccessRecordsRequest(organization="jps", linkage_code="A" * 20)
    )


def _query(code: str) -> network_pb2.QuerySubmission:
    return network_pb2.QuerySubmission(
        query_id=new_query_id(),
        procedure="table2:80",
        provider="osaka",
        data_items=["local_tax"],
        linkage_code=code,
        on_date="2026-06-01",
    )


@pytest.mark.parametrize(
    "method",
    [
        "SubmitQueries",
        "ObtainLinkageCode",
        "RotateOrganizationKeys",
        "DiscloseNetworkAccessRecords",
    ],
)
async def test_an_organization_certificate_cannot_act_as_another_organization_at_the_network(
    arena: AttackWorld, method: str
) -> None:
    before = _network_state(arena)
    ledger = records(arena.url("network"), "network")

    error = await refused(await _as_jps(arena, method))

    assert (error.code, error.reason) == ("PERMISSION_DENIED", "NOT_THIS_ORGANIZATION")
    assert _network_state(arena) == before
    new = records(arena.url("network"), "network")[len(ledger) :]
    assert [(r.event, r.actor, r.requester, r.reason) for r in new] == [
        ("ACCESS_DENIED", "org.sakai", "jps", "NOT_THIS_ORGANIZATION")
    ]
    assert arena.inbound["jps"].exchanges == []


@pytest.mark.parametrize(
    ("identity", "method"),
    [
        ("org.sakai", "RegisterOrganization"),
        ("ua.sakai", "RegisterProcessingSerial"),
        ("ua.sakai", "DeliverLateAnswers"),
    ],
)
async def test_a_certificate_cannot_call_a_network_method_that_is_not_its_own(
    arena: AttackWorld, identity: str, method: str
) -> None:
    stub = network_pb2_grpc.NetworkServiceStub(arena.channel(identity, arena.network.address))
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "RegisterOrganization": lambda: stub.RegisterOrganization(
            network_pb2.RegisterOrganizationRequest(
                organization=network_pb2.Organization(code="rogue")
            )
        ),
        "RegisterProcessingSerial": lambda: stub.RegisterProcessingSerial(
            network_pb2.RegisterProcessingSerialRequest(
                processing_serial="s" * 24, resident_code="1" * 11, organization="sakai"
            )
        ),
        "DeliverLateAnswers": lambda: stub.DeliverLateAnswers(
            network_pb2.DeliverLateAnswersRequest()
        ),
    }
    before = _network_state(arena)
    ledger = records(arena.url("network"), "network")

    error = await refused(calls[method]())

    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED")
    assert _network_state(arena) == before
    new = records(arena.url("network"), "network")[len(ledger) :]
    assert [(r.event, r.actor, r.reason) for r in new] == [
        ("ACCESS_DENIED", identity, "CALLER_NOT_ALLOWED")
    ]


# --- a query signed by the wrong organization --------------------------------------------------


@pytest.mark.parametrize("forgery", ["jps-genuine-key", "jps-signature-under-sakais-name"])
async def test_a_requester_key_signed_by_another_organization_is_refused_by_the_network(
    arena: AttackWorld, person: Person, forgery: str
) -> None:
    if forgery == "jps-genuine-key":
        key = await arena.requester_key("jps")  # signer "jps": not the requester
    else:
        genuine = payloads_pb2.RequesterKey.FromString((await arena.requester_key("jps")).body)
        genuine.organization = "sakai"
        jps = arena.tenant_signer("jps")
        key = crypto.Signer("sakai", jps.key_id, jps.key).sign(genuine.SerializeToString())
    stub = network_pb2_grpc.NetworkServiceStub(arena.channel("org.sakai", arena.network.address))
    before = _network_state(arena)
    ledger = records(arena.url("network"), "network")

    error = await refused(
        stub.SubmitQueries(
            network_pb2.SubmitQueriesRequest(
                requester="sakai",
                requester_capacity="municipality",
                requester_key=key,
                queries=[_query("A" * 20)],
            )
        )
    )

    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "BAD_REQUESTER_KEY")
    assert _network_state(arena) == before
    new = records(arena.url("network"), "network")[len(ledger) :]
    assert [(r.event, r.actor, r.requester, r.reason) for r in new] == [
        ("ACCESS_DENIED", "org.sakai", "sakai", "BAD_REQUESTER_KEY")
    ]
    assert arena.inbound["jps"].exchanges == []  # nothing was routed


# --- a unified address server acting for another tenant ----------------------------------------


def _platform_state(arena: AttackWorld) -> dict[str, list[Any]]:
    # Business state only: the refusal itself is an ACCESS_DENIED record, pinned by the next test.
    state: dict[str, list[Any]] = {}
    for name, platform in arena.world.platforms.items():
        url = platform.config.database_url
        for table in ("server_queries", "server_linkage_codes"):
            state[f"{name}.{table}"] = rows(url, table)
    return state


@pytest.mark.parametrize(
    ("platform_of", "tenant"),
    [("sakai", "osaka"), ("jps", "jps"), ("jps", "sakai")],
    ids=["same-platform", "other-platform", "own-code-on-a-platform-not-hosting-it"],
)
@pytest.mark.parametrize("method", ["SubmitQuery", "AcquireLinkageCode"])
async def test_a_unified_address_server_cannot_act_for_another_tenant(
    arena: AttackWorld, person: Person, platform_of: str, tenant: str, method: str
) -> None:
    channel = arena.channel("ua.sakai", arena.platform(platform_of).address)
    stub = intermediate_server_pb2_grpc.IntermediateServerServiceStub(channel)
    parent = f"organizations/{tenant}"
    call: Awaitable[Any]
    if method == "SubmitQuery":
        spec = pb.QuerySpec(
            query_id=new_query_id(),
            requester_capacity="municipality",
            procedure="table2:82",
            provider="jps",
            data_items=["pension_benefit"],
            unified_number="U-1",
        )
        call = stub.SubmitQuery(pb.SubmitQueryRequest(parent=parent, query=spec))
    else:
        call = stub.AcquireLinkageCode(
            pb.AcquireLinkageCodeRequest(
                parent=parent, unified_number="U-1", processing_serial="s" * 24
            )
        )
    before = _platform_state(arena)

    error = await refused(call)

    assert (error.code, error.reason) == ("PERMISSION_DENIED", "TENANT_MISMATCH")
    assert _platform_state(arena) == before


async def test_the_platform_records_a_unified_address_server_acting_for_another_tenant(
    arena: AttackWorld,
) -> None:
    channel = arena.channel("ua.sakai", arena.platform("osaka").address)
    stub = intermediate_server_pb2_grpc.IntermediateServerServiceStub(channel)
    url = arena.platform_url("osaka")
    ledgers = {ledger: records(url, ledger) for ledger in ("server:osaka", "server:sakai")}

    await refused(
        stub.AcquireLinkageCode(
            pb.AcquireLinkageCodeRequest(
                parent="organizations/osaka", unified_number="U-1", processing_serial="s" * 24
            )
        )
    )

    new = [r for ledger, old in ledgers.items() for r in records(url, ledger)[len(old) :]]
    assert [(r.event, r.actor, r.reason) for r in new] == [
        ("ACCESS_DENIED", "ua.sakai", "TENANT_MISMATCH")
    ]


# --- business systems at a unified address server ----------------------------------------------


async def test_a_business_system_reaches_only_its_own_organizations_unified_address_server(
    arena: AttackWorld, person: Person
) -> None:
    ua = arena.world.unified_address["sakai"]
    query = unified_address_pb2.QueryPersonRequest(
        query_id=new_query_id(),
        procedure="table2:82",
        provider="jps",
        data_items=["pension_benefit"],
        address_number=person.at_sakai,
        on_date="2026-06-01",
    )
    own = unified_address_pb2_grpc.UnifiedAddressServiceStub(
        arena.channel("bs.sakai.kouki", ua.address)
    )
    answered = await own.QueryPerson(query)
    assert status(answered.result) == ("QUERY_STATUS_PROVIDED", "")
    ua_url = arena.url("ua-sakai")
    ledger = records(ua_url, "ua:sakai")
    before = await snapshot(arena)
    other = unified_address_pb2_grpc.UnifiedAddressServiceStub(
        arena.channel("bs.jps.nenkin", ua.address)
    )

    query.query_id = new_query_id()
    error = await refused(other.QueryPerson(query))

    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED")
    new = records(ua_url, "ua:sakai")[len(ledger) :]
    assert [(r.event, r.actor, r.reason) for r in new] == [
        ("ACCESS_DENIED", "bs.jps.nenkin", "CALLER_NOT_ALLOWED")
    ]
    assert await snapshot(arena) == before


# --- the inbound side and the registry ---------------------------------------------------------


@pytest.mark.parametrize("identity", ["org.sakai", "platform.municipal", "ua.jps", "registry"])
async def test_only_the_network_may_deliver_a_permit_batch_to_a_provider(
    arena: AttackWorld, person: Person, identity: str
) -> None:
    answered = await arena.ask(new_query_id(), person)
    assert status(answered) == ("QUERY_STATUS_PROVIDED", "")
    [captured] = arena.inbound["jps"].calls(PROVIDE_ANSWERS)
    before = await snapshot(arena)
    channel = arena.channel(identity, arena.platform("jps").address)

    error = await refused(raw_call(channel, PROVIDE_ANSWERS, captured.request))

    assert (error.code, error.reason) == ("PERMISSION_DENIED", "CALLER_NOT_NETWORK")
    assert await snapshot(arena) == before


async def test_a_unified_address_server_cannot_ask_the_registry_for_another_organization(
    arena: AttackWorld, person: Person
) -> None:
    stub = registry_pb2_grpc.ResidentRegistryServiceStub(
        arena.channel("ua.sakai", arena.world.registry.address)
    )
    url = arena.url("registry")
    ledger = records(url, "registry")
    serials = rows(arena.url("network"), "network_processing_serials")

    error = await refused(
        stub.IssueProcessingSerial(
            registry_pb2.IssueProcessingSerialRequest(
                organization="osaka", individual_number=person.number
            )
        )
    )

    assert (error.code, error.reason) == ("PERMISSION_DENIED", "NOT_THIS_ORGANIZATION")
    assert rows(arena.url("network"), "network_processing_serials") == serials
    new = records(url, "registry")[len(ledger) :]
    assert [(r.event, r.actor, r.requester, r.reason) for r in new] == [
        ("ACCESS_DENIED", "ua.sakai", "osaka", "NOT_THIS_ORGANIZATION")
    ]


# --- a server with another identity's certificate ---------------------------------------------


async def test_a_platform_refuses_a_network_impostor_with_another_identitys_certificate(
    arena: AttackWorld,
) -> None:
    # Any certificate of the CA (here a unified address server's) serves a fake network.
    impostor = await Proxy(
        arena.pki_dir, serve_as="ua.sakai", upstream=arena.network.address, call_as="org.sakai"
    ).start()
    client = GrpcNetwork(arena.pki_dir, impostor.address, ["sakai"], timeout=5)
    try:
        # The client names the network: ua.sakai's certificate fails the handshake, which the
        # platform's network client reports as NETWORK_UNAVAILABLE.
        with pytest.raises(Unavailable) as caught:
            await client.network_keys()
    finally:
        await client.close()
        await impostor.close()
    assert caught.value.reason == "NETWORK_UNAVAILABLE"
    assert impostor.exchanges == []  # no call reached the impostor


async def test_a_client_naming_the_network_refuses_a_server_with_a_ua_certificate(
    arena: AttackWorld,
) -> None:
    # The unified address server of sakai presents ua.sakai's certificate: the handshake fails.
    ua = arena.world.unified_address["sakai"].address
    security = Security(arena.pki_dir, "org.sakai")
    async with security.channel(ua, server="network") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # Naming the identity it does hold, and the real network by name, both work.
    for address, name in ((ua, "ua.sakai"), (arena.network.address, "network")):
        async with security.channel(address, server=name) as channel:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    # And the platform's own client, which names the network, still reaches it.
    client = GrpcNetwork(arena.pki_dir, arena.network.address, ["sakai"], timeout=5)
    try:
        assert (await client.network_keys()).permit_keys
    finally:
        await client.close()


# --- malformed and oversized requests ----------------------------------------------------------


def _methods(service: str) -> list[tuple[str, bool, bool]]:
    """(path, client streaming, server streaming) of every method of ``service``."""
    for module in pkgutil.iter_modules(linkage.v1.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"linkage.v1.{module.name}")
    descriptor = descriptor_pool.Default().FindServiceByName(service)
    return [
        (f"/{service}/{m.name}", m.client_streaming, m.server_streaming) for m in descriptor.methods
    ]


async def _served(channel: grpc.aio.Channel) -> list[str]:
    """The services a server offers (from its reflection), without health and reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    async for response in call:
        names = [s.name for s in response.list_services_response.service]
        return [n for n in names if n.startswith("linkage.")]
    raise AssertionError("no reflection answer")


GARBAGE = [
    b"\xff" * 16,  # a field with wire type 7: never a message
    b"\x0a\xff\xff\xff\xff\x0f",  # a length far beyond the message
    *(random.Random(seed).randbytes(size) for seed, size in ((1, 64), (2, 512), (3, 4096))),
]


async def _call_raw(
    channel: grpc.aio.Channel, path: str, streams: tuple[bool, bool], payload: bytes
) -> str:
    """The status code of one raw call of ``path`` with ``payload`` ("OK" if it succeeded)."""
    client_streaming, server_streaming = streams
    try:
        if client_streaming and server_streaming:
            async for _ in channel.stream_stream(path, None, None)(iter([payload]), timeout=10):
                pass
        elif client_streaming:
            await channel.stream_unary(path, None, None)(iter([payload]), timeout=10)
        elif server_streaming:
            async for _ in channel.unary_stream(path, None, None)(payload, timeout=10):
                pass
        else:
            await channel.unary_unary(path, None, None)(payload, timeout=10)
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)
    return "OK"


async def _random_bytes_everywhere(arena: AttackWorld) -> dict[str, set[str]]:
    """Send every garbage payload to every method of every server; the codes seen per path."""
    seen: dict[str, set[str]] = {}
    for address, identity in _servers(arena).values():
        channel = arena.channel(identity, address)
        for service in await _served(channel):
            for path, *streams in _methods(service):
                for payload in GARBAGE:
                    code = await _call_raw(channel, path, (streams[0], streams[1]), payload)
                    seen.setdefault(path, set()).add(code)
        assert await _healthy(arena, address, identity)
    return seen


async def test_random_bytes_to_every_method_of_every_server_are_invalid_argument_and_harmless(
    arena: AttackWorld, person: Person
) -> None:
    seen = await _random_bytes_everywhere(arena)

    assert len(seen) >= 26  # every method of every kind of server was reached
    assert {path: codes for path, codes in seen.items() if codes != {"INVALID_ARGUMENT"}} == {}
    # Every server still reports SERVING (checked per server), and the world still answers.
    assert status(await arena.ask(new_query_id(), person)) == ("QUERY_STATUS_PROVIDED", "")


async def test_a_40_mb_request_is_resource_exhausted_and_every_server_stays_healthy(
    arena: AttackWorld,
) -> None:
    payload = b"\x0a" + _varint(40 << 20) + b"a" * (40 << 20)  # one 40 MB string field
    targets = {
        "network": "/linkage.v1.NetworkService/SubmitQueries",
        "registry": "/linkage.v1.ResidentRegistryService/IssueProcessingSerial",
        "platform-municipal": "/linkage.v1.IntermediateServerService/SubmitQuery",
        "platform-jps": PROVIDE_ANSWERS,
        "ua-sakai": "/linkage.v1.UnifiedAddressService/QueryPerson",
    }
    servers = _servers(arena)
    for name, path in targets.items():
        address, identity = servers[name]
        # The client lifts its own limit, so the server is the one that refuses.
        channel = Security(arena.pki_dir, identity).channel(
            address, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        try:
            error = await refused(channel.unary_unary(path, None, None)(payload, timeout=30))
        finally:
            await channel.close(None)
        assert error.code == "RESOURCE_EXHAUSTED", name
        assert await _healthy(arena, address, identity), name


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
