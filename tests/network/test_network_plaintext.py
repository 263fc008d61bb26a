"""The network never holds plaintext: it routes sealed answers it cannot read.

The provider seals a known personal value. Every byte that enters or leaves the network is
captured: what its clients send and receive (a client interceptor on every channel to it), and
what it sends to and receives from the platforms (recorded by the fake platforms). The value
must appear in none of them, nor anywhere in the network's database, while the requester, with
its private key, does read it: so the capture saw the very answers that carried it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from network_support import (
    FakePlatform,
    Net,
    OrgKeys,
    open_answers,
    requester_key,
    stored_bytes,
)

from linkage import pki
from linkage.rpc import Security
from linkage.v1 import common_pb2, network_pb2, network_pb2_grpc, payloads_pb2
from simulator.network import app as network_app

SECRET = "秘密の世帯-7f3a9c41-PLAINTEXT"
SECRET_BYTES = SECRET.encode("utf-8")


def _secret_content(permit: payloads_pb2.Permit) -> list[common_pb2.DuplicateValue]:
    return [
        common_pb2.DuplicateValue(
            data_item=item,
            content=common_pb2.DataItemContent(
                resident_record=common_pb2.ResidentRecord(
                    municipality="sakai", household_code=SECRET, household_size=3
                )
            ),
            effective_from="2026-01-01",
            version=1,
        )
        for item in permit.data_items
    ]


class Capture(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Keeps the serialized bytes of every request and response on a channel."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: Any,
        request: Any,
    ) -> Any:
        self.seen.append(request.SerializeToString())
        call = await continuation(client_call_details, request)
        response = await call
        self.seen.append(response.SerializeToString())
        return response


async def test_no_byte_in_or_out_of_the_network_nor_its_database_holds_the_plaintext(
    pki_dir: Path,
    tmp_path: Path,
    platforms: list[FakePlatform],
    network_url: str,
) -> None:
    app = await network_app.start(
        network_app.Config(
            database_url=network_url,
            security=Security(pki_dir, "network"),
            data_dir=tmp_path / "keys",
            migrate=False,
        )
    )
    capture = Capture()
    channels: list[grpc.aio.Channel] = []

    def connect(identity: str, address: str) -> Any:
        channel = grpc.aio.secure_channel(
            address, pki.channel_credentials(pki_dir, identity), interceptors=[capture]
        )
        channels.append(channel)
        return network_pb2_grpc.NetworkServiceStub(channel)

    def network_keys() -> dict[str, bytes]:
        return {k.key_id: k.key for k in app.permit_public_keys()}

    try:
        keys = {"sakai": OrgKeys("sakai"), "jps": OrgKeys("jps")}
        provider = await FakePlatform(
            {"jps": keys["jps"]}, network_keys, content=_secret_content
        ).start(pki_dir, "platform.test")
        requester = await FakePlatform({"sakai": keys["sakai"]}, network_keys).start(
            pki_dir, "platform.requester"
        )
        platforms.extend([provider, requester])
        net = Net(app, connect, provider, requester, {})
        await net.register(keys["sakai"], ["municipality"], requester.address)
        await net.register(keys["jps"], ["pension_service"], provider.address)
        codes = [await net.issue_code(f"{i:011d}", "sakai") for i in (1, 2)]
        for i in (1, 2):
            await net.issue_code(f"{i:011d}", "jps")

        # One answer provided at once, one held and released late: both paths carry it.
        key = requester_key(keys["sakai"])
        first = await net.submit([net.query("q-now", codes[0])], key=key)
        provider.hold = True
        await net.submit([net.query("q-later", codes[1])], key=key)
        held = provider.received[-1]
        provider.hold = False
        late = provider.answer(
            keys["jps"],
            held.requester_key,
            held.batch.permits,
            status=common_pb2.QUERY_STATUS_PROVIDED,
        )
        await net.stub("org.jps").DeliverLateAnswers(
            network_pb2.DeliverLateAnswersRequest(answer_batch=late)
        )
    finally:
        for channel in channels:
            await channel.close(None)
        await app.close(grace=0)

    # The requester reads the value, so it did travel through the network...
    read = [open_answers(batch, key.private) for batch in first.answer_batches]
    read.append(open_answers(requester.late[0], key.private))
    values = [v for contents in read for content in contents.values() for v in content.values]
    assert [v.content.resident_record.household_code for v in values] == [SECRET, SECRET]

    # ...and yet no byte the network received or sent, or wrote to disk, contains it.
    wire = [*capture.seen]
    for received in provider.received:
        wire += [received.request_bytes, received.response_bytes]
    wire += requester.late_bytes
    assert len(wire) >= 20
    assert not [b for b in wire if SECRET_BYTES in b]
    stored = stored_bytes(network_url)
    assert SECRET_BYTES not in stored
    assert b"7f3a9c41" not in stored
