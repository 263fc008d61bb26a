"""DeliverLateAnswers: answers released after review reach the requester's platform."""

from __future__ import annotations

from network_support import (
    Net,
    OrgKeys,
    network_records,
    open_answers,
    people,
    remote,
    requester_key,
)

from linkage.v1 import common_pb2, network_pb2, payloads_pb2

HELD = common_pb2.QUERY_STATUS_HELD_FOR_REVIEW
PROVIDED = common_pb2.QUERY_STATUS_PROVIDED


async def _held_query(
    net: Net, query_id: str = "q-held"
) -> tuple[payloads_pb2.Permit, payloads_pb2.RequesterKey, str]:
    """Submit one query the provider holds for review; (permit, requester key, sakai code)."""
    [(_, sakai_code, _)] = await people(net, 1)
    net.provider_platform.hold = True
    response = await net.submit([net.query(query_id, sakai_code)])
    [batch] = response.answer_batches
    [answer] = payloads_pb2.AnswerBatch.FromString(batch.body).answers
    assert answer.status == HELD
    received = net.provider_platform.received[-1]
    return received.batch.permits[0], received.requester_key, sakai_code


def _deliver(envelope: common_pb2.SignedEnvelope) -> network_pb2.DeliverLateAnswersRequest:
    return network_pb2.DeliverLateAnswersRequest(answer_batch=envelope)


async def test_a_late_answer_is_routed_to_the_requesters_platform_unchanged(
    net: Net, network_url: str
) -> None:
    permit, key, _ = await _held_query(net)
    late = net.provider_platform.answer(net.keys["jps"], key, [permit], status=PROVIDED)
    response = await net.stub("org.jps").DeliverLateAnswers(_deliver(late))
    assert response.delivered == 1
    [routed] = net.requester_platform.late
    assert routed.SerializeToString() == late.SerializeToString()

    records = network_records(network_url)
    events = [(r.event, r.reason) for r in records if r.permit_id == permit.permit_id]
    assert events[-2:] == [("ANSWER_RECEIVED", "LATE_ANSWER"), ("ANSWER_DELIVERED", "")]


async def test_a_retried_query_id_also_returns_the_late_answer(net: Net) -> None:
    permit, key, sakai_code = await _held_query(net)
    late = net.provider_platform.answer(net.keys["jps"], key, [permit], status=PROVIDED)
    await net.stub("org.jps").DeliverLateAnswers(_deliver(late))
    again = await net.submit([net.query("q-held", sakai_code)])
    statuses = [
        [a.status for a in payloads_pb2.AnswerBatch.FromString(b.body).answers]
        for b in again.answer_batches
    ]
    assert statuses == [[HELD], [PROVIDED]]
    assert len(net.provider_platform.received) == 1


async def test_a_redelivery_of_the_same_bytes_is_accepted_and_other_bytes_are_refused(
    net: Net,
) -> None:
    permit, key, _ = await _held_query(net)
    late = net.provider_platform.answer(net.keys["jps"], key, [permit], status=PROVIDED)
    jps = net.stub("org.jps")
    await jps.DeliverLateAnswers(_deliver(late))
    assert (await jps.DeliverLateAnswers(_deliver(late))).delivered == 1
    other = net.provider_platform.answer(net.keys["jps"], key, [permit], status=PROVIDED)
    error = await remote(jps.DeliverLateAnswers(_deliver(other)))
    assert (error.code, error.reason) == ("ALREADY_EXISTS", "LATE_ANSWER_ALREADY_DELIVERED")


async def test_only_the_permits_provider_may_deliver_its_late_answer(net: Net) -> None:
    permit, key, _ = await _held_query(net)
    osaka = OrgKeys("osaka")
    net.provider_platform.tenants["osaka"] = osaka
    await net.register(osaka, ["pension_service"], net.provider_platform.address)

    by_osaka = net.provider_platform.answer(osaka, key, [permit], status=PROVIDED)
    error = await remote(net.stub("org.osaka").DeliverLateAnswers(_deliver(by_osaka)))
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "NOT_THE_PERMIT_PROVIDER")

    signed_by_jps = net.provider_platform.answer(net.keys["jps"], key, [permit], status=PROVIDED)
    error = await remote(net.stub("org.osaka").DeliverLateAnswers(_deliver(signed_by_jps)))
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "NOT_THE_SIGNER")
    assert net.requester_platform.late == []


async def test_a_late_answer_for_an_unknown_permit_is_not_found(net: Net) -> None:
    permit, key, _ = await _held_query(net)
    unknown = payloads_pb2.Permit()
    unknown.CopyFrom(permit)
    unknown.permit_id = "0" * 32
    late = net.provider_platform.answer(net.keys["jps"], key, [unknown], status=PROVIDED)
    error = await remote(net.stub("org.jps").DeliverLateAnswers(_deliver(late)))
    assert (error.code, error.reason) == ("NOT_FOUND", "PERMIT_NOT_FOUND")


async def test_a_late_answer_with_a_bad_signature_is_invalid_argument(net: Net) -> None:
    permit, key, _ = await _held_query(net)
    late = net.provider_platform.answer(net.keys["jps"], key, [permit], status=PROVIDED)
    late.signature = bytes(64)
    error = await remote(net.stub("org.jps").DeliverLateAnswers(_deliver(late)))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "BAD_SIGNATURE")
    nothing = _deliver(common_pb2.SignedEnvelope())
    empty = await remote(net.stub("org.jps").DeliverLateAnswers(nothing))
    assert empty.code == "INVALID_ARGUMENT"
    assert {v.field for v in empty.violations} >= {"answer_batch.body", "answer_batch.signature"}


async def test_an_unreachable_requester_is_unavailable_so_the_provider_retries(
    net: Net, network_url: str
) -> None:
    permit, key, _ = await _held_query(net)
    await net.requester_platform.stop()
    late = net.provider_platform.answer(net.keys["jps"], key, [permit], status=PROVIDED)
    error = await remote(net.stub("org.jps").DeliverLateAnswers(_deliver(late)))
    assert (error.code, error.reason) == ("UNAVAILABLE", "REQUESTER_UNAVAILABLE")
    failures = [r for r in network_records(network_url) if r.event == "FAILED"]
    assert [(r.permit_id, r.reason) for r in failures] == [
        (permit.permit_id, "REQUESTER_UNAVAILABLE")
    ]


async def test_the_requester_reads_the_late_answer_with_its_key(net: Net) -> None:
    [(_, sakai_code, _)] = await people(net, 1)
    net.provider_platform.hold = True
    key = requester_key(net.keys["sakai"])
    await net.submit([net.query("q-read", sakai_code)], key=key)
    received = net.provider_platform.received[-1]
    [permit] = received.batch.permits
    late = net.provider_platform.answer(
        net.keys["jps"], received.requester_key, [permit], status=PROVIDED
    )
    await net.stub("org.jps").DeliverLateAnswers(_deliver(late))
    [routed] = net.requester_platform.late
    contents = open_answers(routed, key.private)
    assert contents[permit.permit_id].values[0].data_item == "pension_benefit"
