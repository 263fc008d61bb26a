"""A person's access records from every place, as the national portal (マイナポータル) shows them.

Owns the client side of the person-level disclosure: one call to the asking organization's
intermediate server (``IntermediateServerService.DisclosePersonAccessRecords``, presenting the
organization's unified address identity ``ua.<code>``, with a deadline), which gathers its own
records and has the network collect its own and every other organization's; finding that server
in a world manifest (``world.json`` of ``linkage world up``); and the JSON form of one entry,
with the ``place`` that kept it. ``linkage records disclose --world`` and the demo both use it.

Must never: print or return anything but record fields (no data contents, no identifiers of the
person), or wait without a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from linkage.rpc import Security
from linkage.v1 import intermediate_server_pb2, intermediate_server_pb2_grpc, network_pb2

__all__ = [
    "DEFAULT_TIMEOUT",
    "Disclosure",
    "Target",
    "disclose_person",
    "entry_dict",
    "target_in_manifest",
]

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where an organization's intermediate server is and how to call it."""

    organization: str
    address: str  # host:port, or several comma-separated (the platform's replicas)
    security: Security  # presents ua.<organization>
    server: str | None = None  # the platform identity its certificate must name


@dataclass(frozen=True, slots=True)
class Disclosure:
    """What the person is shown: entries oldest first, and the places that did not answer."""

    entries: list[dict[str, Any]]
    unanswered: list[tuple[str, str]]

    def places(self) -> dict[str, int]:
        """Entries per place."""
        counts: dict[str, int] = {}
        for entry in self.entries:
            counts[entry["place"]] = counts.get(entry["place"], 0) + 1
        return counts


def entry_dict(placed: network_pb2.PlacedAccessRecord) -> dict[str, Any]:
    """One entry as a JSON-ready object; ``place`` first."""
    r = placed.record
    at = r.occurred_at.ToDatetime(tzinfo=UTC)
    return {
        "place": placed.place,
        "occurred_at": at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "ledger": r.ledger,
        "event": r.event,
        "actor": r.actor,
        "requester": r.requester,
        "provider": r.provider,
        "procedure": r.procedure,
        "data_items": list(r.data_items),
        "outcome": r.outcome,
        "reason": r.reason,
    }


def entry_line(entry: Mapping[str, Any]) -> str:
    """One entry as a JSON line."""
    return json.dumps(entry, ensure_ascii=False) + "\n"


async def disclose_person(
    target: Target, unified_number: str, *, deadline: float = DEFAULT_TIMEOUT
) -> Disclosure:
    """Ask ``target``'s intermediate server for everything recorded about the person its
    unified number ``unified_number`` names, waiting at most ``deadline`` seconds. gRPC errors
    propagate (``grpc.aio.AioRpcError``)."""
    channel = target.security.channel(target.address, server=target.server)
    try:
        stub = intermediate_server_pb2_grpc.IntermediateServerServiceStub(channel)
        response = await stub.DisclosePersonAccessRecords(
            intermediate_server_pb2.DisclosePersonAccessRecordsRequest(
                parent=f"organizations/{target.organization}", unified_number=unified_number
            ),
            timeout=deadline,
        )
    finally:
        await channel.close(None)
    return Disclosure(
        entries=[entry_dict(placed) for placed in response.records],
        unanswered=[(u.place, u.reason) for u in response.unanswered],
    )


def target_in_manifest(manifest_path: Path, organization: str) -> Target:
    """The organization's intermediate server as a ``world.json`` describes it; ``ValueError``
    when the manifest does not know the organization or its platform."""
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    orgs = {o.get("code"): o for o in manifest.get("organizations", [])}
    org = orgs.get(organization)
    if org is None:
        raise ValueError(f"organization {organization!r} is not in {manifest_path}")
    platform = org.get("platform")
    if not platform:
        raise ValueError(f"organization {organization!r} has no platform in {manifest_path}")
    name = f"platform-{platform}"
    addresses = manifest.get("addresses", {})
    replicas = [
        address
        for key, address in sorted(addresses.items())
        if key == name or key.startswith(f"{name}-r")
    ]
    if not replicas:
        raise ValueError(f"no address of {name} in {manifest_path}")
    pki_dir = manifest.get("pki_dir")
    return Target(
        organization=organization,
        address=",".join(replicas),
        security=Security(Path(pki_dir) if pki_dir else None, f"ua.{organization}"),
        server=f"platform.{platform}",
    )
