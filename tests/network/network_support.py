"""Test doubles and helpers for the network's tests (imported by conftest and by tests).

- ``OrgKeys``: an organization's Ed25519 signing key as the directory publishes it.
- ``FakePlatform``: a real gRPC server (port 0, mutual TLS as ``platform.<name>``) playing the
  InboundService of an intermediate server. As a provider it verifies the network's signature
  on each PermitBatch and the requester key digest, then answers with an AnswerBatch sealed to
  the requester key and signed by the provider tenant; as a requester it accepts late answers.
  Every request and response byte it sees is kept for inspection.
- ``Clock``: a settable clock for expiry tests.
- ``requester_key``: a signed RequesterKey envelope with its private half.
- ``network_records``, ``count_rows``, ``stored_bytes``: what the network's database holds.
- ``Net``: a running network with registered organizations and helpers to drive it.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from sqlalchemy import inspect, make_url, select, text
from sqlalchemy.orm import Session

from linkage import crypto
from linkage.db import make_engine
from linkage.errors import InvalidArgument, PermissionDenied, RemoteError, remote_error
from linkage.records.models import AccessRecordRow
from linkage.rpc import RunningServer, Security, require_caller, start_server
from linkage.v1 import (
    common_pb2,
    inbound_pb2,
    inbound_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    payloads_pb2,
)
from simulator.network import app as network_app

if TYPE_CHECKING:
    Stub = network_pb2_grpc.NetworkServiceAsyncStub
else:
    Stub = Any


class Clock:
    """A clock the test moves by hand; starts at the real time."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class OrgKeys:
    """An organization's signing key and its directory entry."""

    code: str
    signing_key: SigningKey = field(default_factory=SigningKey.generate)

    @property
    def key_id(self) -> str:
        return crypto.key_id(bytes(self.signing_key.verify_key))

    def public_key(self) -> common_pb2.PublicKey:
        return common_pb2.PublicKey(key_id=self.key_id, key=bytes(self.signing_key.verify_key))

    def signer(self) -> crypto.Signer:
        return crypto.Signer(self.code, self.key_id, self.signing_key)

    def rotated(self) -> OrgKeys:
        return OrgKeys(self.code)


def organization(
    keys: OrgKeys, capacities: list[str], endpoint: str, display_name: str = ""
) -> network_pb2.Organization:
    return network_pb2.Organization(
        code=keys.code,
        display_name=display_name or keys.code.upper(),
        capacities=capacities,
        endpoint=endpoint,
        signing_keys=[keys.public_key()],
    )


@dataclass
class RequesterKey:
    """A requester's query key pair and its signed envelope."""

    private: PrivateKey
    envelope: common_pb2.SignedEnvelope

    @property
    def key_id(self) -> str:
        return crypto.key_id(bytes(self.private.public_key))


def requester_key(keys: OrgKeys, not_after: datetime | None = None) -> RequesterKey:
    private = PrivateKey.generate()
    public = bytes(private.public_key)
    body = payloads_pb2.RequesterKey(
        organization=keys.code, key_id=crypto.key_id(public), public_key=public
    )
    body.not_after.FromDatetime(not_after or datetime.now(UTC) + timedelta(hours=1))
    return RequesterKey(private, keys.signer().sign(body.SerializeToString()))


async def remote(call: Awaitable[Any]) -> RemoteError:
    """Await a call that must fail; its code, reason and field violations."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return remote_error(error)
    raise AssertionError("the call succeeded")


def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- a fake intermediate server platform --------------------------------------------------------

Content = Callable[[payloads_pb2.Permit], list[common_pb2.DuplicateValue]]


def pension_content(permit: payloads_pb2.Permit) -> list[common_pb2.DuplicateValue]:
    """A pension benefit for every item asked (the value itself does not matter)."""
    return [
        common_pb2.DuplicateValue(
            data_item=item,
            content=common_pb2.DataItemContent(
                pension_benefit=common_pb2.PensionBenefit(
                    fiscal_year=2026, annual_amount=1_234_567, payer=permit.provider
                )
            ),
            effective_from="2026-04-01",
            version=1,
        )
        for item in permit.data_items
    ]


@dataclass
class Received:
    """One ProvideAnswers call as the fake platform saw it, verified."""

    request_bytes: bytes
    response_bytes: bytes
    batch: payloads_pb2.PermitBatch
    requester_key: payloads_pb2.RequesterKey


class FakePlatform(inbound_pb2_grpc.InboundServiceServicer):
    """InboundService of a platform hosting ``tenants`` (code → OrgKeys).

    ``network_keys`` returns the network's permit keys (key id → raw key) for verification.
    ``hold`` makes every answer HELD_FOR_REVIEW; ``delay`` sleeps before answering.
    """

    def __init__(
        self,
        tenants: Mapping[str, OrgKeys],
        network_keys: Callable[[], dict[str, bytes]],
        *,
        content: Content = pension_content,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.tenants = dict(tenants)
        self._network_keys = network_keys
        self._content = content
        self._clock = clock
        self.hold = False
        self.delay = 0.0
        self.received: list[Received] = []
        self.late: list[common_pb2.SignedEnvelope] = []
        self.late_bytes: list[bytes] = []
        self.server: RunningServer | None = None

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    async def start(self, pki_dir: Path, identity: str) -> FakePlatform:
        self.server = await start_server(
            [
                (
                    lambda s: inbound_pb2_grpc.add_InboundServiceServicer_to_server(self, s),
                    "linkage.v1.InboundService",
                )
            ],
            security=Security(pki_dir, identity),
        )
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    async def ProvideAnswers(  # noqa: N802
        self, request: inbound_pb2.ProvideAnswersRequest, context: Any
    ) -> inbound_pb2.ProvideAnswersResponse:
        if require_caller() != "network":
            raise PermissionDenied("CALLER_NOT_ALLOWED", "only the network calls")
        if self.delay:
            await asyncio.sleep(self.delay)
        body = crypto.open_envelope(
            request.permit_batch, self._network_keys(), expected_signer="network"
        )
        batch = payloads_pb2.PermitBatch.FromString(body)
        if crypto.digest(batch.requester_key.body) != batch.requester_key_digest:
            raise InvalidArgument("REQUESTER_KEY_DIGEST", "digest does not match")
        key = payloads_pb2.RequesterKey.FromString(batch.requester_key.body)
        providers = {permit.provider for permit in batch.permits}
        assert len(providers) == 1, "one batch is for one provider"
        provider = self.tenants[providers.pop()]
        answer = self.answer(provider, key, batch.permits)
        response = inbound_pb2.ProvideAnswersResponse(answer_batch=answer)
        self.received.append(
            Received(request.SerializeToString(), response.SerializeToString(), batch, key)
        )
        return response

    def answer(
        self,
        provider: OrgKeys,
        key: payloads_pb2.RequesterKey,
        permits: Any,
        *,
        status: int | None = None,
    ) -> common_pb2.SignedEnvelope:
        """An AnswerBatch for ``permits``, sealed to ``key``, signed by ``provider``."""
        sealer = crypto.BatchSealer(key.public_key)
        status = status or (
            common_pb2.QUERY_STATUS_HELD_FOR_REVIEW
            if self.hold
            else common_pb2.QUERY_STATUS_PROVIDED
        )
        answers = []
        for permit in permits:
            answer = payloads_pb2.Answer(
                permit_id=permit.permit_id, query_id=permit.query_id, status=status
            )
            if status == common_pb2.QUERY_STATUS_PROVIDED:
                content = payloads_pb2.SealedContent(
                    permit_id=permit.permit_id, values=self._content(permit)
                )
                answer.nonce, answer.ciphertext = sealer.seal(content.SerializeToString())
                answer.data_items.extend(permit.data_items)
            else:
                answer.reason = "AUTO_RESPONSE_DISABLED"
            answers.append(answer)
        batch = payloads_pb2.AnswerBatch(
            provider=provider.code,
            requester=key.organization,
            requester_key_id=key.key_id,
            ephemeral_public_key=sealer.ephemeral_public_key,
            answers=answers,
        )
        batch.answered_at.FromDatetime(self._clock())
        return provider.signer().sign(batch.SerializeToString())

    async def AcceptLateAnswers(  # noqa: N802
        self, request: inbound_pb2.AcceptLateAnswersRequest, context: Any
    ) -> inbound_pb2.AcceptLateAnswersResponse:
        if require_caller() != "network":
            raise PermissionDenied("CALLER_NOT_ALLOWED", "only the network calls")
        self.late.append(request.answer_batch)
        response = inbound_pb2.AcceptLateAnswersResponse(
            accepted=len(payloads_pb2.AnswerBatch.FromString(request.answer_batch.body).answers)
        )
        self.late_bytes.append(request.SerializeToString() + response.SerializeToString())
        return response


def open_answers(
    envelope: common_pb2.SignedEnvelope, private: PrivateKey
) -> dict[str, payloads_pb2.SealedContent]:
    """What the requester reads: permit id → decrypted content (PROVIDED answers only)."""
    batch = payloads_pb2.AnswerBatch.FromString(envelope.body)
    opener = crypto.BatchOpener(private, batch.ephemeral_public_key)
    return {
        answer.permit_id: payloads_pb2.SealedContent.FromString(
            opener.open(answer.nonce, answer.ciphertext)
        )
        for answer in batch.answers
        if answer.status == common_pb2.QUERY_STATUS_PROVIDED
    }


@dataclass
class Net:
    """A network with two registered organizations on fake platforms.

    ``sakai`` (municipality) is hosted on ``requester_platform``; ``jps`` (pension_service) on
    ``provider_platform``. ``stub(identity)`` connects to the network as ``identity``.
    """

    app: network_app.App
    connect: Callable[[str, str], Stub]
    provider_platform: FakePlatform
    requester_platform: FakePlatform
    keys: dict[str, OrgKeys]
    _serials: Any = field(default_factory=lambda: itertools.count(1))

    def stub(self, identity: str) -> Stub:
        return self.connect(identity, self.app.address)

    async def register(self, keys: OrgKeys, capacities: list[str], endpoint: str) -> None:
        self.keys[keys.code] = keys
        await self.stub("admin").RegisterOrganization(
            network_pb2.RegisterOrganizationRequest(
                organization=organization(keys, capacities, endpoint)
            )
        )

    async def issue_code(self, resident_code: str, org: str) -> str:
        """The processing-serial flow: the registry hands over, ``org`` obtains its code."""
        serial = f"serial-{org}-{next(self._serials):06d}-{secrets.token_hex(6)}"
        await self.stub("registry").RegisterProcessingSerial(
            network_pb2.RegisterProcessingSerialRequest(
                processing_serial=serial, resident_code=resident_code, organization=org
            )
        )
        response = await self.stub(f"org.{org}").ObtainLinkageCode(
            network_pb2.ObtainLinkageCodeRequest(organization=org, processing_serial=serial)
        )
        return response.linkage_code

    def query(
        self,
        query_id: str,
        code: str,
        *,
        provider: str = "jps",
        procedure: str = "table2:82",
        items: Sequence[str] = ("pension_benefit",),
        on_date: str = "2026-04-01",
    ) -> network_pb2.QuerySubmission:
        return network_pb2.QuerySubmission(
            query_id=query_id,
            procedure=procedure,
            provider=provider,
            data_items=list(items),
            linkage_code=code,
            on_date=on_date,
        )

    async def submit(
        self,
        queries: Sequence[network_pb2.QuerySubmission],
        *,
        requester: str = "sakai",
        capacity: str = "municipality",
        key: RequesterKey | None = None,
    ) -> network_pb2.SubmitQueriesResponse:
        key = key or requester_key(self.keys[requester])
        request = network_pb2.SubmitQueriesRequest(
            requester=requester,
            requester_capacity=capacity,
            requester_key=key.envelope,
            queries=queries,
        )
        return await self.stub(f"org.{requester}").SubmitQueries(request)

    def network_keys(self) -> dict[str, bytes]:
        return {k.key_id: k.key for k in self.app.permit_public_keys()}


async def people(net: Net, count: int, *, start: int = 1) -> list[tuple[str, str, str]]:
    """``count`` residents with codes at sakai and jps: (resident code, sakai code, jps code)."""
    residents = [f"{start + i:011d}" for i in range(count)]

    async def both(resident: str) -> tuple[str, str, str]:
        sakai = await net.issue_code(resident, "sakai")
        return resident, sakai, await net.issue_code(resident, "jps")

    return list(await asyncio.gather(*(both(resident) for resident in residents)))


def network_records(url: str) -> list[AccessRecordRow]:
    """Every row of the ``network`` ledger, in chain order."""
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            query = (
                select(AccessRecordRow)
                .where(AccessRecordRow.ledger == "network")
                .order_by(AccessRecordRow.seq)
            )
            return list(session.scalars(query))
    finally:
        engine.dispose()


def count_rows(url: str, table: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            query = text(f"SELECT count(*) FROM {table}")  # noqa: S608 (a test's table name)
            return int(connection.execute(query).scalar_one())
    finally:
        engine.dispose()


def stored_bytes(url: str) -> bytes:
    """Everything a database holds, as bytes: every value of every row of every table, and for
    SQLite also the raw files (database and WAL), so nothing is missed by decoding."""
    chunks: list[bytes] = []
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            for table in inspect(connection).get_table_names():
                for row in connection.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608
                    for value in row:
                        chunks.append(value if isinstance(value, bytes) else str(value).encode())
    finally:
        engine.dispose()
    if url.startswith("sqlite"):
        path = Path(make_url(url).database or "")
        chunks += [p.read_bytes() for p in sorted(path.parent.glob(f"{path.name}*"))]
    return b"\x00".join(chunks)
