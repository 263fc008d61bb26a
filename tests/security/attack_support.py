"""The attacker's kit for the attack tests (issue 8): a world with men in the middle, forgeries,
and a look into every database.

- ``start_attack_world``: the world of ``simulator.world`` (network, registry, intermediate
  server platforms, unified address servers, all over gRPC with mutual TLS) with a ``Proxy``
  wherever the tests need a man in the middle: between the network and a provider platform
  (``inbound``: the network calls the proxy, which calls the platform as ``network``) and
  between a requester platform and the network (``upstream``: the platform calls the proxy, which
  calls the network as whichever ``org.<code>`` called it). A proxy passes everything through
  and records it until a test gives it hooks.
- Forgeries: the network's permit signer read from its key ring file (the attacker who stole
  that one file), a tenant's signing key read from its platform's key ring, an attacker's own
  key, re-signing, field mutation, bit flips, sealing answers to a requester key.
- ``Snapshot``: the rows an attack could have changed, at each place, read through SQLAlchemy,
  so a test asserts that a refused attack left no partial state.
- ``Person`` and ``ask``: a pensioner known to jps (with a pension duplicate) and to sakai, and
  sakai's 後期高齢者医療 system asking jps about them through its unified address server.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from nacl.signing import SigningKey
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine

from linkage import crypto, pki
from linkage.db import make_engine, migrate, sqlite_url
from linkage.errors import RemoteError, remote_error
from linkage.keys import KeyRing
from linkage.records.models import AccessRecordRow
from linkage.rpc import Security
from linkage.v1 import (
    common_pb2,
    inbound_pb2,
    intermediate_server_pb2,
    network_pb2,
    payloads_pb2,
    unified_address_pb2,
    unified_address_pb2_grpc,
)
from server import app as server_app
from server.tenancy import TenantConfig
from simulator.network import app as network_app
from simulator.network.keystore import PermitKeys
from simulator.registry import app as registry_app
from simulator.world import (
    PENSION_SERVICE,
    SAKAI,
    OrganizationSpec,
    SystemSpec,
    World,
    WorldConfig,
    init_pki,
)
from unified_address import app as ua_app
from unified_address.individual_number import complete

QS = common_pb2.QueryStatus
PROVIDE_ANSWERS = "/linkage.v1.InboundService/ProvideAnswers"
SUBMIT_QUERIES = "/linkage.v1.NetworkService/SubmitQueries"
ON_DATE = "2026-06-01"

OSAKA = OrganizationSpec(
    code="osaka",
    display_name="大阪市",
    capacities=("municipality", "medical_insurer"),
    platform="municipal",
    local_government_code="271004",
    systems=(SystemSpec("zeimu", "municipality", push_items=frozenset({"local_tax"})),),
)
# sakai and osaka share the municipal platform; jps has a platform of its own.
CAST: tuple[OrganizationSpec, ...] = (SAKAI, OSAKA, PENSION_SERVICE)


class Clock:
    """Real time, moved by ``offset``, or frozen at an instant; ``reset`` goes back to real time."""

    def __init__(self) -> None:
        self.offset = timedelta(0)
        self.frozen: datetime | None = None

    def __call__(self) -> datetime:
        return self.frozen if self.frozen is not None else datetime.now(UTC) + self.offset

    def freeze(self) -> None:
        self.frozen = self()

    def reset(self) -> None:
        self.offset, self.frozen = timedelta(0), None


# --- a man in the middle ---------------------------------------------------------------------


class Refusal(Exception):
    """Raised by a proxy hook: the proxy fails the call with this status instead."""

    def __init__(self, code: grpc.StatusCode, details: str = "refused by the proxy") -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass
class Exchange:
    """One call through a proxy: what came in, what went on, what came back."""

    method: str
    caller: str
    request: bytes
    forwarded: bytes = b""
    response: bytes | None = None
    error: RemoteError | None = None  # the upstream's refusal, if it refused


Hook = Callable[[Exchange], Awaitable[bytes]]


class Proxy:
    """A gRPC man in the middle for unary calls, with mutual TLS on both sides.

    It serves with the certificate of the party it stands in for (``serve_as``) and calls
    ``upstream`` as ``call_as`` (or, when that is None, as whoever called it). Hooks, all
    optional, run in order: ``on_request`` returns the bytes to send on, ``respond`` answers in
    place of the upstream, ``on_response`` returns the bytes to give back. A hook may raise
    ``Refusal``. Upstream failures are passed back with their status details (reason).
    """

    def __init__(
        self, pki_dir: Path, *, serve_as: str, upstream: str, call_as: str | None = None
    ) -> None:
        self._pki_dir = pki_dir
        self._serve_as = serve_as
        self._upstream = upstream
        self._call_as = call_as
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.exchanges: list[Exchange] = []
        self.failures: list[Exception] = []  # hooks that broke (a test bug, not an attack)
        self.on_request: Hook | None = None
        self.respond: Hook | None = None
        self.on_response: Hook | None = None
        self.delay = 0.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Back to a silent pass-through that has seen nothing."""
        self.exchanges.clear()
        self.failures.clear()
        self.on_request = self.respond = self.on_response = None
        self.delay = 0.0

    def calls(self, method: str) -> list[Exchange]:
        return [exchange for exchange in self.exchanges if exchange.method == method]

    async def start(self) -> Proxy:
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers([_ProxyHandler(self)])
        credentials = pki.server_credentials(self._pki_dir, self._serve_as)
        self.port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        self._server = server
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
        for channel in self._channels.values():
            await channel.close(None)

    def _channel(self, identity: str) -> grpc.aio.Channel:
        channel = self._channels.get(identity)
        if channel is None:
            channel = Security(self._pki_dir, identity).channel(self._upstream)
            self._channels[identity] = channel
        return channel

    async def handle(
        self, method: str, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        exchange = Exchange(method, pki.peer_identity(context) or "", request)
        self.exchanges.append(exchange)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            exchange.forwarded = await self.on_request(exchange) if self.on_request else request
            if self.respond is not None:
                exchange.response = await self.respond(exchange)
            else:
                exchange.response = await self._forward(exchange, context)
            return await self.on_response(exchange) if self.on_response else exchange.response
        except Refusal as refusal:
            await context.abort(refusal.code, refusal.details)
            raise  # abort raises; this line only tells the type checker
        except grpc.aio.AbortError:
            raise
        except Exception as failure:
            self.failures.append(failure)
            raise

    async def _forward(
        self, exchange: Exchange, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        channel = self._channel(self._call_as or exchange.caller)
        call = channel.unary_unary(exchange.method, None, None)
        remaining = context.time_remaining()
        try:
            response: bytes = await call(exchange.forwarded, timeout=remaining)
        except grpc.aio.AioRpcError as error:
            exchange.error = remote_error(error)
            # The status details (reason) travel in the trailers; abort wants them as a tuple
            # of pairs (the stubs type them otherwise).
            trailing: Any = tuple(error.trailing_metadata() or ())
            await context.abort(error.code(), error.details() or "", trailing)
            raise
        return response


class _ProxyHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Every method, as raw bytes, to ``Proxy.handle``."""

    def __init__(self, proxy: Proxy) -> None:
        self._proxy = proxy

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        method: str = handler_call_details.method
        proxy = self._proxy

        async def behavior(
            request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> bytes:
            return await proxy.handle(method, request, context)

        return grpc.unary_unary_rpc_method_handler(behavior)


# --- the world, with proxies --------------------------------------------------------------------


PENSION = common_pb2.PensionBenefit(
    fiscal_year=2026,
    pension_kind=common_pb2.PENSION_KIND_OLD_AGE_EMPLOYEES,
    annual_amount=1_234_567,
    payer="jps",
)


@dataclass(frozen=True)
class Person:
    """A resident as the registry, jps and sakai know them."""

    resident_code: str
    number: str
    at_sakai: str  # sakai's address number
    at_jps: str  # jps's address number


@dataclass
class AttackWorld:
    """A running world, its proxies, and where each part keeps its data."""

    world: World
    inbound: dict[str, Proxy]  # org code → the proxy the network calls instead of its platform
    upstream: dict[str, Proxy]  # platform name → the proxy it calls instead of the network
    _people: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def pki_dir(self) -> Path:
        assert self.world.config.pki_dir is not None
        return self.world.config.pki_dir

    @property
    def network(self) -> network_app.App:
        return self.world.network

    def platform(self, org: str) -> server_app.App:
        return self.world.platform_of(org)

    def url(self, component: str) -> str:
        return self.world.config.url(component)

    def platform_url(self, org: str) -> str:
        return self.url(f"platform-{self.world.organization(org).platform}")

    def channel(self, identity: str, address: str) -> grpc.aio.Channel:
        return self.world.channel(identity, address)

    def proxies(self) -> list[Proxy]:
        return [*self.inbound.values(), *self.upstream.values()]

    def reset(self) -> None:
        """Disarm every proxy; first fail if a hook of the last test broke (a bug in the test
        that would otherwise look like a refused attack)."""
        failures = [failure for proxy in self.proxies() for failure in proxy.failures]
        for proxy in self.proxies():
            proxy.reset()
        if failures:
            raise AssertionError(f"a proxy hook failed: {failures[0]!r}") from failures[0]

    async def close(self) -> None:
        await self.world.close()
        for proxy in self.proxies():
            await proxy.close()
        config = self.world.config
        components = ["network", "registry", *(f"platform-{p}" for p in config.platforms())]
        dispose_engines(config.url(c) for c in [*components, *self._uas()])

    def _uas(self) -> list[str]:
        return [f"ua-{org.code}" for org in self.world.config.organizations]

    # --- stolen and forged keys ----------------------------------------------------------------

    def network_signer(self) -> crypto.Signer:
        """The permit signer the network uses now, from its key ring file (stolen): the thief
        signs with the key the network signs with, which every platform knows."""
        config = self.network.config
        keys = PermitKeys(config.data_dir, config.permit_key_overlap, config.permit_key_activation)
        return keys.signer(config.clock())

    def tenant_signer(self, org: str) -> crypto.Signer:
        """``org``'s current signing key, read from its platform's key ring file."""
        ring = KeyRing.load(self.platform(org).config.data_dir / "keys", f"org-{org}")
        return crypto.Signer(org, ring.current.key_id, ring.current.signing_key)

    async def requester_key(self, org: str) -> common_pb2.SignedEnvelope:
        """``org``'s genuine current RequesterKey envelope (signed by ``org``)."""
        key = await asyncio.to_thread(self.platform(org).query_keys.current, org)
        return key.envelope

    # --- people and queries --------------------------------------------------------------------

    def business_system(
        self, org: str, system: str
    ) -> unified_address_pb2_grpc.UnifiedAddressServiceAsyncStub:
        """A stub for business system ``system`` of ``org`` at its unified address server."""
        address = self.world.unified_address[org].address
        return unified_address_pb2_grpc.UnifiedAddressServiceStub(
            self.channel(f"bs.{org}.{system}", address)
        )

    async def pensioner(self) -> Person:
        """A new person with a pension at jps, registered at sakai and jps (codes acquired)."""
        n = next(self._people)
        person = Person(
            resident_code=f"{20_000_000_000 + n:011d}",
            number=complete(f"{30_000_000_000 + n:011d}"),
            at_sakai=f"K-{n}",
            at_jps=f"N-{n}",
        )
        await self.world.registry.load_residents([(person.resident_code, person.number, "sakai")])
        jps = self.business_system("jps", "nenkin")
        registered = await jps.RegisterPerson(
            unified_address_pb2.RegisterPersonRequest(
                address_number=person.at_jps, individual_number=person.number
            )
        )
        assert registered.code_status == unified_address_pb2.CODE_STATUS_ACQUIRED
        await jps.PushDuplicates(
            unified_address_pb2.PushDuplicatesRequest(
                import_id=f"pensions-{n}",
                duplicates=[
                    unified_address_pb2.AddressedDuplicate(
                        address_number=person.at_jps,
                        value=common_pb2.DuplicateValue(
                            data_item="pension_benefit",
                            effective_from="2026-04-01",
                            content=common_pb2.DataItemContent(pension_benefit=PENSION),
                        ),
                    )
                ],
            )
        )
        sakai = self.business_system("sakai", "kouki")
        registered = await sakai.RegisterPerson(
            unified_address_pb2.RegisterPersonRequest(
                address_number=person.at_sakai, individual_number=person.number
            )
        )
        assert registered.code_status == unified_address_pb2.CODE_STATUS_ACQUIRED
        return person

    async def ask(
        self, query_id: str, person: Person, items: Sequence[str] = ("pension_benefit",)
    ) -> intermediate_server_pb2.QueryResult:
        """sakai's kouki system asks jps about ``person`` (table2:82) and waits for the result."""
        sakai = self.business_system("sakai", "kouki")
        response = await sakai.QueryPerson(
            unified_address_pb2.QueryPersonRequest(
                query_id=query_id,
                procedure="table2:82",
                provider="jps",
                data_items=list(items),
                address_number=person.at_sakai,
                on_date=ON_DATE,
            )
        )
        return response.result


async def start_attack_world(
    root: Path,
    database_url: Callable[[str], str],
    *,
    organizations: Sequence[OrganizationSpec] = CAST,
    network: dict[str, Any] | None = None,
    platforms: dict[str, dict[str, Any]] | None = None,
    inbound: Sequence[str] = ("jps",),
    upstream: Sequence[str] = ("municipal",),
) -> AttackWorld:
    """Start the world in ``simulator.world``'s order, with proxies in front of the providers
    named in ``inbound`` and behind the platforms named in ``upstream``.

    ``network`` overrides fields of the network's ``Config`` (``permit_ttl``, ``rate_limit``,
    ``clock``), ``platforms[name]`` those of a platform's. Databases come migrated from
    ``database_url``, so no part migrates again.
    """
    config = WorldConfig(root=root, organizations=organizations, database_url=database_url)
    await asyncio.to_thread(init_pki, config)
    pki_dir = config.pki_dir
    assert pki_dir is not None
    proxies: list[Proxy] = []
    started: list[Any] = []
    try:
        net_config = network_app.Config(
            database_url=config.url("network"),
            security=Security(pki_dir, "network"),
            data_dir=root / "keys" / "network",
            migrate=False,
        )
        for name, value in (network or {}).items():
            setattr(net_config, name, value)
        net = await network_app.start(net_config)
        started.append(net)
        registry = await registry_app.start(
            registry_app.Config(
                database_url=config.url("registry"),
                security=Security(pki_dir, "registry"),
                data_dir=root / "keys" / "registry",
                network_address=net.address,
                migrate=False,
            )
        )
        started.append(registry)
        upstream_proxies: dict[str, Proxy] = {}
        running: dict[str, server_app.App] = {}
        for name in config.platforms():
            address = net.address
            if name in upstream:
                proxy = Proxy(pki_dir, serve_as="network", upstream=net.address)
                proxies.append(await proxy.start())
                upstream_proxies[name] = proxy
                address = proxy.address
            platform_config = server_app.Config(
                platform=name,
                database_url=config.url(f"platform-{name}"),
                security=Security(pki_dir, f"platform.{name}"),
                data_dir=root / "keys" / f"platform-{name}",
                network_address=address,
                tenants=[
                    TenantConfig(org.code, org.capacities)
                    for org in organizations
                    if org.platform == name
                ],
                migrate=False,
            )
            for key, value in (platforms or {}).get(name, {}).items():
                setattr(platform_config, key, value)
            running[name] = await server_app.start(platform_config)
            started.append(running[name])
        inbound_proxies: dict[str, Proxy] = {}
        for org in organizations:
            platform = running[org.platform]
            endpoint = platform.address
            if org.code in inbound:
                proxy = Proxy(
                    pki_dir,
                    serve_as=f"platform.{org.platform}",
                    upstream=platform.address,
                    call_as="network",
                )
                proxies.append(await proxy.start())
                inbound_proxies[org.code] = proxy
                endpoint = proxy.address
            await net.register_organization(
                network_pb2.Organization(
                    code=org.code,
                    display_name=org.display_name,
                    capacities=list(org.capacities),
                    endpoint=endpoint,
                    signing_keys=[
                        common_pb2.PublicKey(key_id=k.key_id, key=k.verify_key)
                        for k in platform.tenant_public_keys(org.code)
                    ],
                    local_government_code=org.local_government_code,
                )
            )
        uas: dict[str, ua_app.App] = {}
        for org in organizations:
            uas[org.code] = await ua_app.start(
                ua_app.Config(
                    organization=org.code,
                    database_url=config.url(f"ua-{org.code}"),
                    security=Security(pki_dir, f"ua.{org.code}"),
                    data_dir=root / "keys" / f"ua-{org.code}",
                    server_address=running[org.platform].address,
                    registry_address=registry.address,
                    business_systems=[s.scope() for s in org.systems],
                    migrate=False,
                )
            )
            started.append(uas[org.code])
    except BaseException:
        for app in reversed(started):
            await app.close()
        for proxy in proxies:
            await proxy.close()
        raise
    world = World(config, net, registry, running, uas)
    return AttackWorld(world, inbound_proxies, upstream_proxies)


# --- forgeries ---------------------------------------------------------------------------------


def attacker_signer(holder: str, key_id: str | None = None) -> crypto.Signer:
    """A fresh Ed25519 key nobody published, signing as ``holder`` (under ``key_id`` if given:
    a published id with the wrong key)."""
    key = SigningKey.generate()
    return crypto.Signer(holder, key_id or crypto.key_id(bytes(key.verify_key)), key)


def resign(envelope: common_pb2.SignedEnvelope, signer: crypto.Signer) -> common_pb2.SignedEnvelope:
    """The same body, signed by ``signer``."""
    return signer.sign(envelope.body)


def permit_batch(request: bytes) -> tuple[common_pb2.SignedEnvelope, payloads_pb2.PermitBatch]:
    """The signed envelope and the PermitBatch inside a ProvideAnswers request."""
    envelope = inbound_pb2.ProvideAnswersRequest.FromString(request).permit_batch
    return envelope, payloads_pb2.PermitBatch.FromString(envelope.body)


def provide_request(envelope: common_pb2.SignedEnvelope) -> bytes:
    return inbound_pb2.ProvideAnswersRequest(permit_batch=envelope).SerializeToString()


def with_body(envelope: common_pb2.SignedEnvelope, body: Message) -> common_pb2.SignedEnvelope:
    """``envelope`` with another body and the old signature (a tampered envelope)."""
    tampered = common_pb2.SignedEnvelope()
    tampered.CopyFrom(envelope)
    tampered.body = body.SerializeToString()
    return tampered


def flip_bit(data: bytes, index: int = 0, bit: int = 0) -> bytes:
    flipped = bytearray(data)
    flipped[index] ^= 1 << bit
    return bytes(flipped)


def mutate(message: Message, name: str) -> None:
    """Change field ``name`` of ``message`` in a way that matters: text gets another last
    character, bytes a flipped bit, a list one more entry, a time one hour more."""
    descriptor = message.DESCRIPTOR.fields_by_name[name]
    value: Any = getattr(message, name)
    if descriptor.message_type is not None and descriptor.message_type.name == "Timestamp":
        value.seconds += 3600
    elif descriptor.is_repeated:
        value.append("local_tax")
    elif descriptor.type == descriptor.TYPE_BYTES:
        setattr(message, name, flip_bit(value))
    elif descriptor.type == descriptor.TYPE_STRING:
        setattr(message, name, value[:-1] + ("x" if value[-1:] != "x" else "y"))
    else:
        raise AssertionError(f"no mutation for field {name}")


def permit_fields() -> list[str]:
    return [f.name for f in payloads_pb2.Permit.DESCRIPTOR.fields]


def requester_key_of(batch: payloads_pb2.PermitBatch) -> payloads_pb2.RequesterKey:
    return payloads_pb2.RequesterKey.FromString(batch.requester_key.body)


Values = Callable[[payloads_pb2.Permit], tuple[list[str], list[common_pb2.DuplicateValue]]]


def sealed_answers(
    batch: payloads_pb2.PermitBatch,
    signer: crypto.Signer,
    values: Values,
    *,
    provider: str = "jps",
    tamper: Callable[[payloads_pb2.Answer], None] | None = None,
) -> common_pb2.SignedEnvelope:
    """An AnswerBatch answering every permit PROVIDED with ``values(permit)`` (the listed data
    items and the sealed values), sealed to the batch's requester key, signed by ``signer``."""
    key = requester_key_of(batch)
    sealer = crypto.BatchSealer(key.public_key)
    answers = []
    for permit in batch.permits:
        items, content = values(permit)
        answer = payloads_pb2.Answer(
            permit_id=permit.permit_id,
            query_id=permit.query_id,
            status=QS.QUERY_STATUS_PROVIDED,
            data_items=items,
        )
        sealed = payloads_pb2.SealedContent(permit_id=permit.permit_id, values=content)
        answer.nonce, answer.ciphertext = sealer.seal(sealed.SerializeToString())
        if tamper is not None:
            tamper(answer)
        answers.append(answer)
    body = payloads_pb2.AnswerBatch(
        provider=provider,
        requester=key.organization,
        requester_key_id=key.key_id,
        ephemeral_public_key=sealer.ephemeral_public_key,
        answers=answers,
    )
    return signer.sign(body.SerializeToString())


def pension_value(item: str = "pension_benefit") -> common_pb2.DuplicateValue:
    return common_pb2.DuplicateValue(
        data_item=item,
        effective_from="2026-04-01",
        content=common_pb2.DataItemContent(pension_benefit=PENSION),
    )


def local_tax_value() -> common_pb2.DuplicateValue:
    return common_pb2.DuplicateValue(
        data_item="local_tax",
        effective_from="2026-04-01",
        content=common_pb2.DataItemContent(
            local_tax=common_pb2.LocalTax(fiscal_year=2026, total_income=9_999_999)
        ),
    )


# --- raw calls -------------------------------------------------------------------------------


async def raw_call(channel: grpc.aio.Channel, method: str, request: bytes) -> bytes:
    """A unary call with raw bytes (no stub, no parsing on our side)."""
    response: bytes = await channel.unary_unary(method, None, None)(request, timeout=10)
    return response


async def refused(call: Awaitable[Any]) -> RemoteError:
    """Await a call that must fail; its code, reason and field violations."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return remote_error(error)
    raise AssertionError("the call succeeded")


def answer_batch_of(response: bytes) -> payloads_pb2.AnswerBatch:
    envelope = inbound_pb2.ProvideAnswersResponse.FromString(response).answer_batch
    return payloads_pb2.AnswerBatch.FromString(envelope.body)


# --- what the databases hold ---------------------------------------------------------------------

Row = tuple[Any, ...]


_ENGINES: dict[str, Engine] = {}


def engine_of(url: str) -> Engine:
    """One engine per database for the tests' reads (a connection per read is slow on
    PostgreSQL); ``dispose_engines`` closes them with the world."""
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = make_engine(url)
    return engine


def dispose_engines(urls: Iterable[str]) -> None:
    for url in urls:
        engine = _ENGINES.pop(url, None)
        if engine is not None:
            engine.dispose()


def rows(url: str, table: str, where: str = "", **params: Any) -> list[Row]:
    """Every row of ``table`` (optionally filtered), as sorted tuples of plain values."""
    with engine_of(url).connect() as connection:
        sql = f'SELECT * FROM "{table}"' + (f" WHERE {where}" if where else "")  # noqa: S608
        found = [tuple(row) for row in connection.execute(text(sql), params)]
    return sorted(found, key=repr)


@dataclass(frozen=True)
class Record:
    """One access record, as the tests compare them."""

    event: str
    outcome: str
    reason: str
    actor: str
    requester: str
    provider: str
    query_id: str
    permit_id: str


def records(url: str, ledger: str) -> list[Record]:
    """The records of ``ledger``, in chain order."""
    with engine_of(url).connect() as connection:
        found = connection.execute(
            select(AccessRecordRow.__table__)
            .where(AccessRecordRow.ledger == ledger)
            .order_by(AccessRecordRow.seq)
        )
        return [
            Record(
                r.event,
                r.outcome,
                r.reason,
                r.actor_id,
                r.requester,
                r.provider,
                r.query_id,
                r.permit_id,
            )
            for r in found
        ]


@dataclass(frozen=True)
class Snapshot:
    """Everything an attack on a sakai → jps query could have changed, at each place."""

    provider_nonces: list[Row]
    provider_held: list[Row]
    provider_records: list[Record]
    requester_queries: list[Row]
    requester_records: list[Record]
    network_permits: list[Row]
    network_batches: list[Row]
    network_records: list[Record]

    def new(self, before: Snapshot, name: str) -> list[Any]:
        """What ``name`` holds now and did not hold in ``before``."""
        old: list[Any] = getattr(before, name)
        return [item for item in getattr(self, name) if item not in old]


async def snapshot(world: AttackWorld, requester: str = "sakai", provider: str = "jps") -> Snapshot:
    def read() -> Snapshot:
        prov, req, net = (
            world.platform_url(provider),
            world.platform_url(requester),
            world.url("network"),
        )
        return Snapshot(
            provider_nonces=rows(prov, "server_permit_nonces", "tenant = :t", t=provider),
            provider_held=rows(prov, "server_held_provisions", "tenant = :t", t=provider),
            provider_records=records(prov, f"server:{provider}"),
            requester_queries=rows(req, "server_queries", "tenant = :t", t=requester),
            requester_records=records(req, f"server:{requester}"),
            network_permits=rows(net, "network_permits"),
            network_batches=rows(net, "network_answer_batches"),
            network_records=records(net, "network"),
        )

    return await asyncio.to_thread(read)


def stored_query(world: AttackWorld, query_id: str, tenant: str = "sakai") -> Row:
    """The requester's row of ``kouki:<query_id>`` as (status, reason, permit_id, result)."""
    with engine_of(world.platform_url(tenant)).connect() as connection:
        found = connection.execute(
            text(
                "SELECT status, reason, permit_id, result FROM server_queries"
                " WHERE tenant = :t AND query_id = :q"
            ),
            {"t": tenant, "q": f"kouki:{query_id}"},
        ).one()
    return tuple(found)


class Databases:
    """Fresh, migrated databases per component for a world shared by a module's tests.

    The same choice as the ``database_url`` fixture of tests/conftest.py (which is per test):
    SQLite files under ``directory``, or with ``LINKAGE_TEST_DATABASE=postgresql`` one schema
    per component on the server of ``LINKAGE_TEST_POSTGRES_URL``, dropped by ``drop``.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._schemas: list[str] = []
        self._postgres = os.environ.get("LINKAGE_TEST_DATABASE", "sqlite") == "postgresql"
        self._base = os.environ.get(
            "LINKAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        )

    def __call__(self, component: str) -> str:
        if self._postgres:
            schema = f"t_{uuid.uuid4().hex[:12]}_{component.replace('-', '_')}"[:60]
            engine = create_engine(self._base)
            with engine.begin() as connection:
                connection.execute(text(f'CREATE SCHEMA "{schema}"'))
            engine.dispose()
            self._schemas.append(schema)
            url = f"{self._base}?options=-csearch_path%3D{schema}"
        else:
            self._directory.mkdir(parents=True, exist_ok=True)
            url = sqlite_url(self._directory / f"{component}.sqlite")
        migrate(url)
        return url

    def drop(self) -> None:
        if not self._schemas:
            return
        engine = create_engine(self._base)
        with engine.begin() as connection:
            for schema in self._schemas:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


# --- verdicts ----------------------------------------------------------------------------------


def new_query_id() -> str:
    return f"q-{uuid.uuid4().hex[:16]}"


def status(result: intermediate_server_pb2.QueryResult | payloads_pb2.Answer) -> tuple[str, str]:
    return QS.Name(result.status), result.reason


def for_query(found: Sequence[Record], query_id: str) -> list[tuple[str, str]]:
    """(event, reason) of the records about ``kouki:<query_id>``."""
    return [(r.event, r.reason) for r in found if r.query_id == f"kouki:{query_id}"]


async def assert_failed_and_nothing_stored(
    arena: AttackWorld,
    before: Snapshot,
    query_id: str,
    reason: str,
    *,
    provider_reached: bool = False,
) -> Snapshot:
    """The requester settled ``query_id`` FAILED with ``reason``, recorded that, and kept no
    value. Unless the genuine provider was reached (and answered: the attack came after), it
    consumed no nonce and held nothing. Returns the state after."""
    after = await snapshot(arena)
    state, stored_reason, _, value = stored_query(arena, query_id)
    assert (QS.Name(state), stored_reason, value) == ("QUERY_STATUS_FAILED", reason, None)
    assert for_query(after.new(before, "requester_records"), query_id) == [("FAILED", reason)]
    if not provider_reached:
        assert after.provider_nonces == before.provider_nonces
        assert after.provider_held == before.provider_held
    return after


async def assert_refused_whole_by_the_provider(
    arena: AttackWorld,
    before: Snapshot,
    query_id: str,
    result: intermediate_server_pb2.QueryResult,
    reason: str,
) -> None:
    """The provider refused the permit batch as a whole (INVALID_ARGUMENT ``reason``) before
    reading a permit: nothing changed there; the network recorded the failure with the provider's
    reason and stored no answer; the requester got FAILED with it and stored no value."""
    assert status(result) == ("QUERY_STATUS_FAILED", reason)
    assert not result.values
    [exchange] = arena.inbound["jps"].calls(PROVIDE_ANSWERS)
    assert exchange.error is not None
    assert (exchange.error.code, exchange.error.reason) == ("INVALID_ARGUMENT", reason)
    after = await assert_failed_and_nothing_stored(arena, before, query_id, reason)
    assert after.provider_records == before.provider_records
    assert for_query(after.new(before, "network_records"), query_id) == [
        ("QUERY_REQUESTED", ""),
        ("PERMIT_ISSUED", ""),
        ("FAILED", reason),
    ]
    assert after.network_batches == before.network_batches
