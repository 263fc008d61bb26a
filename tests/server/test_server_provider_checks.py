"""The provider's own checks (step 3), attacked directly: the test plays the network.

The test signs permit batches with the network's real permit key (from its data directory) and
calls platform alpha's InboundService as ``network``, so it can send what the real network
never would: replays, expired permits, permits altered after signing, swapped requester keys,
permits the permission list does not allow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from nacl.public import PrivateKey
from server_support import ALPHA, BETA, QS, World, pension, pension_query, remote

from linkage import crypto
from linkage.rpc import Security
from linkage.v1 import common_pb2, inbound_pb2, inbound_pb2_grpc, payloads_pb2
from permission_list import PermissionList, load_default
from server.querykeys import timestamp
from simulator.network.keystore import PermitKeys

RESIDENT = "12345678901"


@dataclass
class Attacker:
    """Plays the network against platform alpha."""

    world: World
    inbound: Any
    signer: crypto.Signer
    key_envelope: common_pb2.SignedEnvelope
    private: PrivateKey
    jps_code: str

    def permit(self, **overrides: Any) -> payloads_pb2.Permit:
        now = self.world.clock()
        fields: dict[str, Any] = {
            "permit_id": os.urandom(8).hex(),
            "query_id": f"q-{os.urandom(4).hex()}",
            "requester": "sakai",
            "requester_capacity": "municipality",
            "provider": "jps",
            "provider_capacity": "pension_service",
            "procedure": "table2:82",
            "data_items": ["pension_benefit"],
            "provider_linkage_code": self.jps_code,
            "on_date": "2026-07-01",
            "nonce": os.urandom(16),
            "issued_at": timestamp(now),
            "expires_at": timestamp(now + timedelta(minutes=5)),
            "permission_list_version": self.world.network.permission_list_version,
            "route": "sakai",
        }
        fields.update(overrides)
        return payloads_pb2.Permit(**fields)

    def batch(
        self,
        permits: list[payloads_pb2.Permit],
        *,
        key: common_pb2.SignedEnvelope | None = None,
        digest_of: common_pb2.SignedEnvelope | None = None,
    ) -> common_pb2.SignedEnvelope:
        envelope = key or self.key_envelope
        body = payloads_pb2.PermitBatch(
            requester_key=envelope,
            requester_key_digest=crypto.digest((digest_of or envelope).body),
            permits=permits,
        ).SerializeToString()
        return self.signer.sign(body)

    async def send(self, batch: common_pb2.SignedEnvelope) -> payloads_pb2.AnswerBatch:
        response = await self.inbound.ProvideAnswers(
            inbound_pb2.ProvideAnswersRequest(permit_batch=batch)
        )
        return payloads_pb2.AnswerBatch.FromString(response.answer_batch.body)

    def opened(self, batch: payloads_pb2.AnswerBatch, answer: payloads_pb2.Answer) -> Any:
        opener = crypto.BatchOpener(self.private, batch.ephemeral_public_key)
        return payloads_pb2.SealedContent.FromString(opener.open(answer.nonce, answer.ciphertext))


@pytest.fixture
async def attacker(world: World) -> Attacker:
    await world.enroll("jps", "J-1", RESIDENT)
    await world.import_records("jps", [pension("J-1", amount=777)])
    with world.engines["alpha"].connect() as connection:
        from sqlalchemy import text

        code = connection.execute(
            text("SELECT linkage_code FROM server_linkage_codes WHERE tenant = 'jps'")
        ).scalar_one()
    signer = PermitKeys(world.tmp_path / "network-keys", timedelta(hours=1)).signer()
    key = await world.platforms["alpha"].query_keys.current_async("sakai")
    channel = Security(world.pki_dir, "network").channel(world.platforms["alpha"].address)
    world.channels.append(channel)
    inbound = inbound_pb2_grpc.InboundServiceStub(channel)
    return Attacker(world, inbound, signer, key.envelope, key.private_key, code)


def _status(answer: payloads_pb2.Answer) -> tuple[str, str]:
    return QS.Name(answer.status), answer.reason


async def test_a_valid_permit_is_answered_sealed_to_the_requester(attacker: Attacker) -> None:
    permit = attacker.permit()
    batch = await attacker.send(attacker.batch([permit]))
    [answer] = batch.answers
    assert _status(answer) == ("QUERY_STATUS_PROVIDED", "")
    assert (batch.provider, batch.requester) == ("jps", "sakai")
    content = attacker.opened(batch, answer)
    assert content.permit_id == permit.permit_id
    assert content.values[0].content.pension_benefit.annual_amount == 777


async def test_a_replayed_permit_is_refused(attacker: Attacker) -> None:
    signed = attacker.batch([attacker.permit()])
    first = await attacker.send(signed)
    again = await attacker.send(signed)  # the very same signed bytes, sent twice
    assert _status(first.answers[0])[0] == "QUERY_STATUS_PROVIDED"
    assert _status(again.answers[0]) == ("QUERY_STATUS_FAILED", "PERMIT_REPLAYED")
    assert not again.answers[0].ciphertext
    assert len(attacker.world.records("jps", event="PROVIDED")) == 1


async def test_a_nonce_used_twice_in_one_batch_is_a_replay(attacker: Attacker) -> None:
    nonce = os.urandom(16)
    batch = await attacker.send(
        attacker.batch([attacker.permit(nonce=nonce), attacker.permit(nonce=nonce)])
    )
    assert [_status(a)[1] for a in batch.answers] == ["", "PERMIT_REPLAYED"]


async def test_an_expired_permit_is_refused(attacker: Attacker) -> None:
    now = attacker.world.clock()
    permit = attacker.permit(expires_at=timestamp(now - timedelta(seconds=1)))
    batch = await attacker.send(attacker.batch([permit]))
    assert _status(batch.answers[0]) == ("QUERY_STATUS_FAILED", "PERMIT_EXPIRED")
    assert attacker.world.count("alpha", "server_permit_nonces") == 0


async def test_a_permit_changed_after_signing_fails_the_whole_batch(attacker: Attacker) -> None:
    signed = attacker.batch([attacker.permit(), attacker.permit()])
    batch = payloads_pb2.PermitBatch.FromString(signed.body)
    batch.permits[1].data_items.append("local_tax")  # widen what may be read
    tampered = common_pb2.SignedEnvelope()
    tampered.CopyFrom(signed)
    tampered.body = batch.SerializeToString()
    before = attacker.world.table_counts("alpha")
    error = await remote(attacker.send(tampered))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "PERMIT_BATCH_SIGNATURE_INVALID")
    assert attacker.world.table_counts("alpha") == before


async def test_a_batch_signed_by_someone_else_is_refused(attacker: Attacker) -> None:
    from nacl.signing import SigningKey

    forger = crypto.Signer("network", attacker.signer.key_id, SigningKey.generate())
    body = payloads_pb2.PermitBatch(
        requester_key=attacker.key_envelope,
        requester_key_digest=crypto.digest(attacker.key_envelope.body),
        permits=[attacker.permit()],
    ).SerializeToString()
    error = await remote(attacker.send(forger.sign(body)))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "PERMIT_BATCH_SIGNATURE_INVALID")


async def test_a_swapped_requester_key_is_refused(attacker: Attacker) -> None:
    # A different key, even one sakai really signed, is not the key the network bound.
    tenant = attacker.world.platforms["alpha"].tenants.get("sakai")
    other = PrivateKey.generate()
    public = bytes(other.public_key)
    body = payloads_pb2.RequesterKey(
        organization="sakai",
        key_id=crypto.key_id(public),
        public_key=public,
        not_after=timestamp(attacker.world.clock() + timedelta(hours=1)),
    ).SerializeToString()
    swapped = tenant.signer.sign(body)
    batch = attacker.batch([attacker.permit()], key=swapped, digest_of=attacker.key_envelope)
    error = await remote(attacker.send(batch))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "REQUESTER_KEY_DIGEST_MISMATCH")
    assert attacker.world.count("alpha", "server_permit_nonces") == 0


async def test_a_requester_key_not_signed_by_the_requester_is_refused(attacker: Attacker) -> None:
    from nacl.signing import SigningKey

    other = PrivateKey.generate()
    public = bytes(other.public_key)
    body = payloads_pb2.RequesterKey(
        organization="sakai",
        key_id=crypto.key_id(public),
        public_key=public,
        not_after=timestamp(attacker.world.clock() + timedelta(hours=1)),
    ).SerializeToString()
    forged = crypto.Signer("sakai", "0" * 16, SigningKey.generate()).sign(body)
    error = await remote(attacker.send(attacker.batch([attacker.permit()], key=forged)))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "REQUESTER_KEY_SIGNATURE_INVALID")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"data_items": ["local_tax"]}, ("QUERY_STATUS_DENIED", "ITEM_NOT_ALLOWED")),
        ({"procedure": "table2:1"}, ("QUERY_STATUS_DENIED", "REQUESTER_NOT_ALLOWED")),
        (
            {"provider_capacity": "municipality"},
            ("QUERY_STATUS_DENIED", "PROVIDER_CAPACITY_NOT_HELD"),
        ),
        ({"on_date": "2010-01-01"}, ("QUERY_STATUS_DENIED", "OUTSIDE_VALIDITY")),
        (
            {"permission_list_version": "table2-1999"},
            ("QUERY_STATUS_FAILED", "UNKNOWN_PERMISSION_LIST_VERSION"),
        ),
        (
            {"requester": "osaka", "route": "osaka"},
            ("QUERY_STATUS_FAILED", "REQUESTER_KEY_MISMATCH"),
        ),
        ({"route": "kobe"}, ("QUERY_STATUS_FAILED", "ROUTE_MISMATCH")),
        ({"nonce": b"short"}, ("QUERY_STATUS_FAILED", "PERMIT_MALFORMED")),
        ({"provider_linkage_code": "A" * 20}, ("QUERY_STATUS_NO_DATA", "UNKNOWN_PERSON")),
    ],
)
async def test_the_provider_checks_every_permit_itself(
    attacker: Attacker, overrides: dict[str, Any], expected: tuple[str, str]
) -> None:
    batch = await attacker.send(attacker.batch([attacker.permit(**overrides)]))
    assert _status(batch.answers[0]) == expected
    assert not batch.answers[0].ciphertext
    assert attacker.world.records("jps", event="PROVIDED") == []


async def test_a_batch_for_a_provider_not_hosted_here_is_not_found(attacker: Attacker) -> None:
    error = await remote(attacker.send(attacker.batch([attacker.permit(provider="osaka")])))
    assert (error.code, error.reason) == ("NOT_FOUND", "TENANT_NOT_HOSTED")


async def test_a_provider_with_a_stricter_list_denies_what_the_network_allowed(
    bare_world: World,
) -> None:
    network_list = load_default()
    strict = PermissionList(
        [row for row in network_list.rows() if row.procedure != "table2:82"],
        network_list.version,
    )
    await bare_world.start_platform("alpha", ALPHA, permission_list=strict)
    await bare_world.start_platform("beta", BETA)
    await bare_world.enroll("sakai", "S-1", RESIDENT)
    await bare_world.enroll("jps", "J-1", RESIDENT)
    await bare_world.import_records("jps", [pension("J-1")])
    result = await bare_world.submit("sakai", **pension_query("q-1", "S-1"))
    assert (QS.Name(result.status), result.reason) == (
        "QUERY_STATUS_DENIED",
        "UNKNOWN_PROCEDURE",
    )
    assert result.permit_id  # the network did issue a permit: the provider refused it
    assert len(bare_world.records("jps", query_id="q-1", event="QUERY_DENIED")) == 1
