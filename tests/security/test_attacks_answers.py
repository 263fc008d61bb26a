"""Attacks on answers between the provider and the requester, over real gRPC.

A man in the middle sits where the requester platform (sakai's) reaches the network: a malicious
network that re-seals answers to the requester key, re-signs them, or flips a bit. Another sits
in front of jps's platform and plays a malicious provider with jps's real signing key, answering
items it was not asked or sealing a corrupt ciphertext. The requester must refuse every one:
the query ends FAILED with a reason, recorded in its ledger, and no value is stored.

Also: an organization's signing key rotated while an answer signed with the previous key is on
its way; within the overlap the answer still verifies.

The world is shared by the module; every test asks its own query ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from nacl.public import PrivateKey

from linkage import crypto
from linkage.errors import InvalidArgument
from linkage.v1 import common_pb2, inbound_pb2, network_pb2, network_pb2_grpc, payloads_pb2

from .attack_support import (
    PROVIDE_ANSWERS,
    SUBMIT_QUERIES,
    AttackWorld,
    Databases,
    Exchange,
    Person,
    assert_failed_and_nothing_stored,
    attacker_signer,
    flip_bit,
    local_tax_value,
    new_query_id,
    pension_value,
    permit_batch,
    sealed_answers,
    snapshot,
    start_attack_world,
    status,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

Rewrite = Callable[
    [common_pb2.SignedEnvelope, payloads_pb2.RequesterKey], common_pb2.SignedEnvelope
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AttackWorld]:
    """One world for the module, with a man in the middle on each side of the network."""
    root = tmp_path_factory.mktemp("attacks-answers")
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


def _rewrite_answers(arena: AttackWorld, rewrite: Rewrite) -> None:
    """Arm the proxy between sakai's platform and the network: every answer batch coming back
    from SubmitQueries is replaced by ``rewrite(batch, the requester key sakai sent)``."""

    async def hook(exchange: Exchange) -> bytes:
        assert exchange.response is not None
        if exchange.method != SUBMIT_QUERIES:
            return exchange.response
        request = network_pb2.SubmitQueriesRequest.FromString(exchange.request)
        key = payloads_pb2.RequesterKey.FromString(request.requester_key.body)
        response = network_pb2.SubmitQueriesResponse.FromString(exchange.response)
        rewritten = [rewrite(batch, key) for batch in response.answer_batches]
        del response.answer_batches[:]
        response.answer_batches.extend(rewritten)
        return response.SerializeToString()

    arena.upstream["municipal"].on_response = hook


def _resealed(
    envelope: common_pb2.SignedEnvelope, key: payloads_pb2.RequesterKey
) -> payloads_pb2.AnswerBatch:
    """The batch with every answer's content replaced by the attacker's, sealed to ``key``."""
    batch = payloads_pb2.AnswerBatch.FromString(envelope.body)
    sealer = crypto.BatchSealer(key.public_key)
    batch.ephemeral_public_key = sealer.ephemeral_public_key
    for answer in batch.answers:
        forged = common_pb2.DuplicateValue()
        forged.CopyFrom(pension_value())
        forged.content.pension_benefit.annual_amount = 99_999_999
        content = payloads_pb2.SealedContent(permit_id=answer.permit_id, values=[forged])
        answer.nonce, answer.ciphertext = sealer.seal(content.SerializeToString())
    return batch


async def _refused(
    arena: AttackWorld, person: Person, reason: str, *, provider_reached: bool
) -> None:
    """Ask once with the proxies armed: the query must end FAILED with ``reason``, recorded,
    with no value kept (and, when the genuine provider was not reached, nothing there)."""
    before = await snapshot(arena)
    query_id = new_query_id()
    result = await arena.ask(query_id, person)
    assert status(result) == ("QUERY_STATUS_FAILED", reason)
    assert not result.values
    await assert_failed_and_nothing_stored(
        arena, before, query_id, reason, provider_reached=provider_reached
    )


# --- 6. re-encrypted by the network -------------------------------------------------------------


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        ("providers-signature-kept", "ANSWER_SIGNATURE_INVALID"),
        ("re-signed-as-the-provider-with-another-key", "ANSWER_SIGNATURE_INVALID"),
        ("re-signed-by-the-network-with-its-permit-key", "ANSWER_MISSING"),
    ],
)
async def test_an_answer_resealed_by_the_network_is_refused_by_the_requester(
    arena: AttackWorld, person: Person, signature: str, reason: str
) -> None:
    network_key = arena.network_signer()  # the malicious network holds its own key
    impostor = attacker_signer("jps")

    def reseal(
        envelope: common_pb2.SignedEnvelope, key: payloads_pb2.RequesterKey
    ) -> common_pb2.SignedEnvelope:
        body = _resealed(envelope, key).SerializeToString()
        if signature == "providers-signature-kept":
            forged = common_pb2.SignedEnvelope()
            forged.CopyFrom(envelope)
            forged.body = body
            return forged
        signer = impostor if signature.startswith("re-signed-as-the-provider") else network_key
        return signer.sign(body)

    _rewrite_answers(arena, reseal)

    await _refused(arena, person, reason, provider_reached=True)


# --- 8. one bit flipped ---------------------------------------------------------------------------


async def test_an_answer_with_one_ciphertext_bit_flipped_in_flight_fails_the_provider_signature(
    arena: AttackWorld, person: Person
) -> None:
    def flip(
        envelope: common_pb2.SignedEnvelope, key: payloads_pb2.RequesterKey
    ) -> common_pb2.SignedEnvelope:
        [answer] = payloads_pb2.AnswerBatch.FromString(envelope.body).answers
        at = envelope.body.index(answer.ciphertext) + len(answer.ciphertext) // 2
        flipped = common_pb2.SignedEnvelope()
        flipped.CopyFrom(envelope)
        flipped.body = flip_bit(envelope.body, at, 3)  # one bit of the signed bytes
        return flipped

    _rewrite_answers(arena, flip)

    await _refused(arena, person, "ANSWER_SIGNATURE_INVALID", provider_reached=True)


@pytest.mark.parametrize("where", ["mac", "middle", "last", "nonce"])
async def test_a_sealed_answer_with_one_bit_flipped_does_not_open(where: str) -> None:
    requester = PrivateKey.generate()
    sealer = crypto.BatchSealer(bytes(requester.public_key))
    nonce, ciphertext = sealer.seal(b"the pension of one person")
    index = {"mac": 0, "middle": len(ciphertext) // 2, "last": len(ciphertext) - 1}
    if where == "nonce":
        nonce = flip_bit(nonce)
    else:
        ciphertext = flip_bit(ciphertext, index[where])
    opener = crypto.BatchOpener(requester, sealer.ephemeral_public_key)

    with pytest.raises(InvalidArgument) as raised:
        opener.open(nonce, ciphertext)

    assert raised.value.reason == "CIPHERTEXT_INVALID"


def _act_as_provider(arena: AttackWorld, make: Callable[[payloads_pb2.PermitBatch], bytes]) -> None:
    """Arm the proxy in front of jps's platform to answer in its place (jps's key, stolen)."""

    async def respond(exchange: Exchange) -> bytes:
        _, batch = permit_batch(exchange.request)
        return make(batch)

    arena.inbound["jps"].respond = respond


async def test_a_provider_sealing_a_ciphertext_with_a_bit_flipped_gets_its_answer_refused(
    arena: AttackWorld, person: Person
) -> None:
    jps = arena.tenant_signer("jps")

    def corrupt(answer: payloads_pb2.Answer) -> None:
        answer.ciphertext = flip_bit(answer.ciphertext, len(answer.ciphertext) - 1)

    def answers(batch: payloads_pb2.PermitBatch) -> bytes:
        envelope = sealed_answers(
            batch, jps, lambda p: (list(p.data_items), [pension_value()]), tamper=corrupt
        )
        return inbound_pb2.ProvideAnswersResponse(answer_batch=envelope).SerializeToString()

    _act_as_provider(arena, answers)

    await _refused(arena, person, "CIPHERTEXT_INVALID", provider_reached=False)


# --- 9. a provider answering what it was not asked ------------------------------------------------


@pytest.mark.parametrize("listed", [True, False], ids=["item-listed", "item-only-sealed"])
async def test_a_provider_answering_an_item_it_was_not_asked_gets_a_failed_query(
    arena: AttackWorld, person: Person, listed: bool
) -> None:
    jps = arena.tenant_signer("jps")  # a provider that is what it claims, and misbehaves

    def values(
        permit: payloads_pb2.Permit,
    ) -> tuple[list[str], list[common_pb2.DuplicateValue]]:
        items = [*permit.data_items, "local_tax"] if listed else list(permit.data_items)
        return items, [pension_value(), local_tax_value()]

    def answers(batch: payloads_pb2.PermitBatch) -> bytes:
        envelope = sealed_answers(batch, jps, values)
        return inbound_pb2.ProvideAnswersResponse(answer_batch=envelope).SerializeToString()

    _act_as_provider(arena, answers)

    await _refused(arena, person, "ANSWER_ITEMS_NOT_ASKED", provider_reached=False)
    [exchange] = arena.inbound["jps"].calls(PROVIDE_ANSWERS)
    assert exchange.response is not None  # the network passed the signed batch on, unread


# --- rotation of an organization's signing key -------------------------------------------------


async def test_an_answer_signed_with_the_providers_previous_key_verifies_within_the_overlap(
    arena: AttackWorld, person: Person
) -> None:
    tenant = arena.platform("jps").tenants.get("jps")
    previous = tenant.keyring.current.key_id
    rotated: list[str] = []

    async def rotate_on_the_way(exchange: Exchange) -> bytes:
        """The answer (signed with the previous key) is on its way when jps rotates its key;
        the requester's cache of jps's keys is then dropped, so it reads them after."""
        assert exchange.response is not None
        if exchange.method != SUBMIT_QUERIES:
            return exchange.response
        new = await asyncio.to_thread(tenant.keyring.rotate)
        stub = network_pb2_grpc.NetworkServiceStub(arena.channel("org.jps", arena.network.address))
        await stub.RotateOrganizationKeys(
            network_pb2.RotateOrganizationKeysRequest(
                name="organizations/jps",
                signing_key=common_pb2.PublicKey(
                    key_id=new.key_id, key=bytes(new.signing_key.verify_key)
                ),
            )
        )
        arena.platform("sakai").directory.forget("jps")
        rotated.append(new.key_id)
        return exchange.response

    arena.upstream["municipal"].on_response = rotate_on_the_way

    result = await arena.ask(new_query_id(), person)

    assert status(result) == ("QUERY_STATUS_PROVIDED", "")
    assert [v.content.pension_benefit.annual_amount for v in result.values] == [1_234_567]
    submitted = arena.upstream["municipal"].calls(SUBMIT_QUERIES)
    assert submitted[-1].response is not None
    [batch] = network_pb2.SubmitQueriesResponse.FromString(submitted[-1].response).answer_batches
    assert batch.key_id == previous != rotated[0]
    stub = network_pb2_grpc.NetworkServiceStub(arena.channel("org.sakai", arena.network.address))
    published = await stub.GetOrganization(
        network_pb2.GetOrganizationRequest(name="organizations/jps")
    )
    windows = {k.key_id: k.HasField("not_after") for k in published.organization.signing_keys}
    assert windows == {rotated[0]: False, previous: True}  # the previous one until the overlap
