"""Attacks on permits (情報提供許可証) between the network and the provider, over real gRPC.

The provider (jps, on its own platform) is reached through a man in the middle that the tests
arm: it captures permit batches, changes them in flight, re-signs them with keys it has or has
stolen, and replays them. Every attack must fail closed at the provider and leave no partial
state (no nonce consumed, nothing held, no value stored at the requester), and be recorded: a
permit refused on its own by the provider in its ledger; a batch refused whole (its signature or
requester key does not hold, so nothing in it can be trusted to name a person) by the network,
with the provider's reason, and by the requester, whose query fails with that reason.

The world is shared by the module (starting one takes seconds); every test asks about its own
query ids and compares the databases before and after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import grpc
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from nacl.public import PrivateKey

from linkage import crypto
from linkage.v1 import common_pb2, payloads_pb2

from .attack_support import (
    PROVIDE_ANSWERS,
    AttackWorld,
    Clock,
    Databases,
    Exchange,
    Hook,
    Person,
    Refusal,
    answer_batch_of,
    assert_refused_whole_by_the_provider,
    attacker_signer,
    flip_bit,
    for_query,
    mutate,
    new_query_id,
    permit_batch,
    permit_fields,
    provide_request,
    raw_call,
    resign,
    snapshot,
    start_attack_world,
    status,
    stored_query,
    with_body,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

SIGNATURE_INVALID = "PERMIT_BATCH_SIGNATURE_INVALID"
PLATFORM_REFRESH_SECONDS = 1.1  # server.directory.Directory: min_refresh of one second, and a bit


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AttackWorld]:
    """One world for the module, a proxy in front of jps's platform, a movable network clock."""
    root = tmp_path_factory.mktemp("attacks-permits")
    databases = Databases(root / "db")
    world = await start_attack_world(root / "world", databases, network={"clock": Clock()})
    try:
        yield world
    finally:
        await world.close()
        databases.drop()


@pytest_asyncio.fixture(loop_scope="module")
async def arena(shared: AttackWorld) -> AsyncIterator[AttackWorld]:
    """The module's world with its proxies disarmed and the network clock on real time (and
    checked after the test: a hook that broke is a bug in the test, not a refused attack)."""
    clock = shared.network.config.clock
    assert isinstance(clock, Clock)
    shared.reset()
    clock.reset()
    yield shared
    clock.reset()
    shared.reset()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def person(shared: AttackWorld) -> Person:
    """A pensioner jps holds a pension for, registered at sakai: what the queries ask about."""
    return await shared.pensioner()


async def _captured(arena: AttackWorld, person: Person) -> bytes:
    """A genuine ProvideAnswers request, taken by the proxy and never delivered (its nonce is
    unused): the query it belongs to fails PROVIDER_UNAVAILABLE at the requester."""

    async def swallow(exchange: Exchange) -> bytes:
        raise Refusal(grpc.StatusCode.UNAVAILABLE)

    arena.inbound["jps"].respond = swallow
    result = await arena.ask(new_query_id(), person)
    assert status(result) == ("QUERY_STATUS_FAILED", "PROVIDER_UNAVAILABLE")
    [exchange] = arena.inbound["jps"].calls(PROVIDE_ANSWERS)
    arena.reset()
    return exchange.request


async def _send_as_network(arena: AttackWorld, request: bytes) -> payloads_pb2.AnswerBatch:
    """ProvideAnswers straight to jps's platform, as the network (its certificate, stolen)."""
    channel = arena.channel("network", arena.platform("jps").address)
    return answer_batch_of(await raw_call(channel, PROVIDE_ANSWERS, request))


Change = Callable[[common_pb2.SignedEnvelope, payloads_pb2.PermitBatch], common_pb2.SignedEnvelope]


def _tamper(change: Change) -> Hook:
    """An ``on_request`` hook sending on ``change(envelope, batch)`` instead of the batch."""

    async def hook(exchange: Exchange) -> bytes:
        envelope, batch = permit_batch(exchange.request)
        return provide_request(change(envelope, batch))

    return hook


# --- 1. signed by something other than the network ---------------------------------------------


@pytest.mark.parametrize(
    "forger",
    ["the-requester-organization", "an-unknown-key-as-network", "a-wrong-key-under-networks-id"],
)
async def test_a_permit_batch_signed_by_anyone_but_the_network_is_refused_whole(
    arena: AttackWorld, person: Person, forger: str
) -> None:
    network_id = arena.network_signer().key_id
    signer = {
        "the-requester-organization": arena.tenant_signer("sakai"),
        "an-unknown-key-as-network": attacker_signer("network"),
        "a-wrong-key-under-networks-id": attacker_signer("network", key_id=network_id),
    }[forger]

    async def forge(exchange: Exchange) -> bytes:
        envelope, _ = permit_batch(exchange.request)
        return provide_request(resign(envelope, signer))

    arena.inbound["jps"].on_request = forge
    before = await snapshot(arena)
    query_id = new_query_id()

    result = await arena.ask(query_id, person)

    await assert_refused_whole_by_the_provider(arena, before, query_id, result, SIGNATURE_INVALID)


# --- 3. replay ---------------------------------------------------------------------------------


async def test_a_replayed_permit_batch_is_refused_per_permit_and_consumes_nothing(
    arena: AttackWorld, person: Person
) -> None:
    query_id = new_query_id()
    answered = await arena.ask(query_id, person)
    assert status(answered) == ("QUERY_STATUS_PROVIDED", "")
    [captured] = arena.inbound["jps"].calls(PROVIDE_ANSWERS)
    _, batch = permit_batch(captured.request)
    before = await snapshot(arena)

    replayed = await _send_as_network(arena, captured.request)

    [answer] = replayed.answers
    assert status(answer) == ("QUERY_STATUS_FAILED", "PERMIT_REPLAYED")
    assert (answer.ciphertext, list(answer.data_items)) == (b"", [])
    after = await snapshot(arena)
    assert after.provider_nonces == before.provider_nonces
    assert after.provider_held == before.provider_held
    assert [(r.event, r.reason, r.permit_id) for r in after.new(before, "provider_records")] == [
        ("FAILED", "PERMIT_REPLAYED", batch.permits[0].permit_id)
    ]
    # The requester kept its answer; nothing reached it or the network.
    assert after.requester_queries == before.requester_queries
    assert after.network_records == before.network_records


async def test_a_permit_repeated_inside_one_signed_batch_is_answered_once(
    arena: AttackWorld, person: Person
) -> None:
    request = await _captured(arena, person)
    _, batch = permit_batch(request)
    batch.permits.append(batch.permits[0])
    forged = arena.network_signer().sign(batch.SerializeToString())
    before = await snapshot(arena)

    answered = await _send_as_network(arena, provide_request(forged))

    assert [status(a) for a in answered.answers] == [
        ("QUERY_STATUS_PROVIDED", ""),
        ("QUERY_STATUS_FAILED", "PERMIT_REPLAYED"),
    ]
    after = await snapshot(arena)
    assert len(after.new(before, "provider_nonces")) == 1


# --- 4. expired --------------------------------------------------------------------------------


async def test_an_expired_permit_is_refused_and_its_nonce_stays_unused(
    arena: AttackWorld, person: Person
) -> None:
    request = await _captured(arena, person)
    _, batch = permit_batch(request)
    permit = batch.permits[0]
    expired = Timestamp()
    expired.FromDatetime(permit.issued_at.ToDatetime() - timedelta(seconds=1))
    permit.expires_at.CopyFrom(expired)
    forged = arena.network_signer().sign(batch.SerializeToString())
    before = await snapshot(arena)

    answered = await _send_as_network(arena, provide_request(forged))

    assert [status(a) for a in answered.answers] == [("QUERY_STATUS_FAILED", "PERMIT_EXPIRED")]
    after = await snapshot(arena)
    assert after.provider_nonces == before.provider_nonces
    assert [(r.event, r.reason) for r in after.new(before, "provider_records")] == [
        ("FAILED", "PERMIT_EXPIRED")
    ]
    # The same permit, not expired, is still good: it was refused for its expiry alone.
    genuine = await _send_as_network(arena, request)
    assert [status(a) for a in genuine.answers] == [("QUERY_STATUS_PROVIDED", "")]


# --- 5. any field changed ----------------------------------------------------------------------


@pytest.mark.parametrize("field", permit_fields())
async def test_a_permit_with_any_field_changed_in_flight_fails_the_network_signature(
    arena: AttackWorld, person: Person, field: str
) -> None:
    def change(
        envelope: common_pb2.SignedEnvelope, batch: payloads_pb2.PermitBatch
    ) -> common_pb2.SignedEnvelope:
        before_change = batch.permits[0].SerializeToString()
        mutate(batch.permits[0], field)
        assert batch.permits[0].SerializeToString() != before_change
        return with_body(envelope, batch)

    arena.inbound["jps"].on_request = _tamper(change)
    before = await snapshot(arena)
    query_id = new_query_id()

    result = await arena.ask(query_id, person)

    await assert_refused_whole_by_the_provider(arena, before, query_id, result, SIGNATURE_INVALID)


def _flip_signature(
    env: common_pb2.SignedEnvelope, _: payloads_pb2.PermitBatch
) -> common_pb2.SignedEnvelope:
    env.signature = flip_bit(env.signature, 7)
    return env


def _other_key_id(
    env: common_pb2.SignedEnvelope, _: payloads_pb2.PermitBatch
) -> common_pb2.SignedEnvelope:
    env.key_id = "0" * 16
    return env


def _other_signer(
    env: common_pb2.SignedEnvelope, _: payloads_pb2.PermitBatch
) -> common_pb2.SignedEnvelope:
    env.signer = "jps"
    return env


def _flip_digest(
    env: common_pb2.SignedEnvelope, batch: payloads_pb2.PermitBatch
) -> common_pb2.SignedEnvelope:
    batch.requester_key_digest = flip_bit(batch.requester_key_digest)
    return with_body(env, batch)


def _add_a_permit(
    env: common_pb2.SignedEnvelope, batch: payloads_pb2.PermitBatch
) -> common_pb2.SignedEnvelope:
    batch.permits.append(batch.permits[0])
    return with_body(env, batch)


@pytest.mark.parametrize(
    "change",
    [_flip_signature, _other_key_id, _other_signer, _flip_digest, _add_a_permit],
    ids=["signature-bit", "key-id", "signer", "requester-key-digest", "permit-added"],
)
async def test_a_permit_batch_with_its_envelope_or_batch_changed_in_flight_is_refused_whole(
    arena: AttackWorld, person: Person, change: Change
) -> None:
    arena.inbound["jps"].on_request = _tamper(change)
    before = await snapshot(arena)
    query_id = new_query_id()

    result = await arena.ask(query_id, person)

    await assert_refused_whole_by_the_provider(arena, before, query_id, result, SIGNATURE_INVALID)


# --- 7. swapped requester key ------------------------------------------------------------------


def _forged_requester_key(org: str) -> common_pb2.SignedEnvelope:
    """A RequesterKey naming ``org`` whose private half the attacker holds, signed by the
    attacker under ``org``'s name."""
    public = bytes(PrivateKey.generate().public_key)
    body = payloads_pb2.RequesterKey(
        organization=org, key_id=crypto.key_id(public), public_key=public
    )
    body.not_after.GetCurrentTime()
    body.not_after.seconds += 3600
    return attacker_signer(org).sign(body.SerializeToString())


@pytest.mark.parametrize(
    ("swap", "reason"),
    [
        ("not-re-signed", SIGNATURE_INVALID),
        ("re-signed-digest-kept", "REQUESTER_KEY_DIGEST_MISMATCH"),
        ("re-signed-digest-updated", "REQUESTER_KEY_SIGNATURE_INVALID"),
    ],
)
async def test_a_swapped_requester_key_is_refused_whole_by_the_provider(
    arena: AttackWorld, person: Person, swap: str, reason: str
) -> None:
    forged_key = _forged_requester_key("sakai")
    network = arena.network_signer()  # the network itself swaps the key (or stole its key)

    def change(
        envelope: common_pb2.SignedEnvelope, batch: payloads_pb2.PermitBatch
    ) -> common_pb2.SignedEnvelope:
        batch.requester_key.CopyFrom(forged_key)
        if swap == "re-signed-digest-updated":
            batch.requester_key_digest = crypto.digest(forged_key.body)
        if swap == "not-re-signed":
            return with_body(envelope, batch)
        return network.sign(batch.SerializeToString())

    arena.inbound["jps"].on_request = _tamper(change)
    before = await snapshot(arena)
    query_id = new_query_id()

    result = await arena.ask(query_id, person)

    await assert_refused_whole_by_the_provider(arena, before, query_id, result, reason)


async def test_another_organizations_genuine_requester_key_swapped_in_gets_nothing_sealed(
    arena: AttackWorld, person: Person
) -> None:
    osaka_key = await arena.requester_key("osaka")  # genuine, signed by osaka
    network = arena.network_signer()

    def change(
        envelope: common_pb2.SignedEnvelope, batch: payloads_pb2.PermitBatch
    ) -> common_pb2.SignedEnvelope:
        batch.requester_key.CopyFrom(osaka_key)
        batch.requester_key_digest = crypto.digest(osaka_key.body)
        return network.sign(batch.SerializeToString())

    arena.inbound["jps"].on_request = _tamper(change)
    before = await snapshot(arena)
    query_id = new_query_id()

    result = await arena.ask(query_id, person)

    [exchange] = arena.inbound["jps"].calls(PROVIDE_ANSWERS)
    assert exchange.response is not None
    [answer] = answer_batch_of(exchange.response).answers
    assert status(answer) == ("QUERY_STATUS_FAILED", "REQUESTER_KEY_MISMATCH")
    assert answer.ciphertext == b""
    after = await snapshot(arena)
    assert after.provider_nonces == before.provider_nonces
    assert for_query(after.new(before, "provider_records"), query_id) == [
        ("FAILED", "REQUESTER_KEY_MISMATCH")
    ]
    # The answers were addressed to osaka: sakai does not take them.
    assert status(result) == ("QUERY_STATUS_FAILED", "ANSWER_BATCH_MISADDRESSED")
    state, _, _, value = stored_query(arena, query_id)
    assert (state, value) == (common_pb2.QUERY_STATUS_FAILED, None)


# --- rotation of the network's permit key -----------------------------------------------------


@pytest.mark.parametrize("provider_cache", ["warm", "cold"])
async def test_rotating_the_permit_key_while_a_batch_is_in_flight_fails_no_query(
    arena: AttackWorld, person: Person, provider_cache: str
) -> None:
    rotated: list[str] = []

    async def rotate_then_deliver(exchange: Exchange) -> bytes:
        rotated.append((await arena.network.rotate_permit_key()).key_id)
        if provider_cache == "cold":
            arena.platform("jps").directory.forget("network")
        return exchange.request

    arena.inbound["jps"].on_request = rotate_then_deliver
    result = await arena.ask(new_query_id(), person)

    assert status(result) == ("QUERY_STATUS_PROVIDED", "")
    [exchange] = arena.inbound["jps"].calls(PROVIDE_ANSWERS)
    signed_with = permit_batch(exchange.request)[0].key_id
    published = [k.key_id for k in arena.network.permit_public_keys()]
    assert published[0] == rotated[0] != signed_with
    assert signed_with in published  # the previous key stays published for the overlap


async def test_a_rotated_permit_key_is_announced_before_it_signs_so_no_query_fails(
    arena: AttackWorld, person: Person
) -> None:
    arena.platform("jps").directory.forget("network")
    first = await arena.ask(new_query_id(), person)  # the provider has just read the keys
    assert status(first) == ("QUERY_STATUS_PROVIDED", "")
    new = await arena.network.rotate_permit_key()

    right_after = await arena.ask(new_query_id(), person)
    # Once the key is active (the network's clock moved past the activation) and a platform may
    # read the keys again (real time: it refreshes on an unknown key id at most once a second).
    clock = arena.network.config.clock
    assert isinstance(clock, Clock)
    clock.offset = arena.network.config.permit_key_activation + timedelta(seconds=1)
    await asyncio.sleep(PLATFORM_REFRESH_SECONDS)
    once_active = await arena.ask(new_query_id(), person)

    assert status(right_after) == status(once_active) == ("QUERY_STATUS_PROVIDED", "")
    signed = [
        permit_batch(e.request)[0].key_id for e in arena.inbound["jps"].calls(PROVIDE_ANSWERS)
    ]
    assert signed[1] != new.key_id  # announced, not yet signing
    assert signed[2] == new.key_id
