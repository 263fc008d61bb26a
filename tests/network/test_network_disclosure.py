"""DiscloseNetworkAccessRecords: a person sees the network's records about them, and only theirs."""

from __future__ import annotations

from network_support import Net, people, remote

from linkage.v1 import network_pb2


def _disclose(org: str, code: str) -> network_pb2.DiscloseNetworkAccessRecordsRequest:
    return network_pb2.DiscloseNetworkAccessRecordsRequest(organization=org, linkage_code=code)


async def test_a_person_sees_every_network_record_about_them_from_either_side(net: Net) -> None:
    (_, sakai_code, jps_code), (_, other_code, _) = await people(net, 2)
    await net.submit(
        [
            net.query("q-ok", sakai_code),
            net.query("q-denied", sakai_code, items=["local_tax"]),
            net.query("q-someone-else", other_code),
        ]
    )
    by_sakai = await net.stub("org.sakai").DiscloseNetworkAccessRecords(
        _disclose("sakai", sakai_code)
    )
    by_jps = await net.stub("org.jps").DiscloseNetworkAccessRecords(_disclose("jps", jps_code))
    assert list(by_sakai.records) == list(by_jps.records)

    events = [(r.event, r.outcome, r.reason) for r in by_sakai.records]
    assert events == [
        ("CODE_ISSUED", "OK", ""),
        ("CODE_ISSUED", "OK", ""),
        ("QUERY_REQUESTED", "OK", ""),
        ("PERMIT_ISSUED", "OK", ""),
        ("QUERY_REQUESTED", "OK", ""),
        ("QUERY_DENIED", "DENIED", "ITEM_NOT_ALLOWED"),
        ("QUERY_ROUTED", "OK", ""),
    ]
    routed = by_sakai.records[-1]
    assert (routed.ledger, routed.requester, routed.provider, routed.procedure) == (
        "network",
        "sakai",
        "jps",
        "table2:82",
    )
    assert list(routed.data_items) == ["pension_benefit"]
    times = [r.occurred_at.ToDatetime() for r in by_sakai.records]
    assert times == sorted(times)
    # No organization's code is disclosed: the person learns who asked, not the pseudonyms.
    raw = by_sakai.SerializeToString()
    assert sakai_code.encode() not in raw
    assert jps_code.encode() not in raw


async def test_disclosure_for_an_unknown_code_is_not_found(net: Net) -> None:
    error = await remote(
        net.stub("org.sakai").DiscloseNetworkAccessRecords(_disclose("sakai", "A" * 20))
    )
    assert (error.code, error.reason) == ("NOT_FOUND", "UNKNOWN_LINKAGE_CODE")


async def test_an_organization_cannot_ask_for_disclosure_as_another(net: Net) -> None:
    [(_, sakai_code, jps_code)] = await people(net, 1)
    error = await remote(
        net.stub("org.jps").DiscloseNetworkAccessRecords(_disclose("sakai", sakai_code))
    )
    assert (error.code, error.reason) == ("PERMISSION_DENIED", "NOT_THIS_ORGANIZATION")
    # Its own code of the person does not open another organization's name space either.
    error = await remote(
        net.stub("org.sakai").DiscloseNetworkAccessRecords(_disclose("sakai", jps_code))
    )
    assert (error.code, error.reason) == ("NOT_FOUND", "UNKNOWN_LINKAGE_CODE")
