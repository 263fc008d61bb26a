"""The conformance kit's side of the wire: test organizations, setup and query batches.

Owns everything the kit does to a target through the ``NetworkService`` contract, and nothing
else (no back door, so any implementation can be judged):

* identities: with a PKI directory, client certificates for ``admin``, ``registry``,
  ``platform.conformance`` (the fake provider, also its client identity for
  ``GetNetworkKeys``) and ``org.<code>`` per test organization, issued into that directory with
  ``linkage.pki`` (the kit is run by the operator who holds the target's CA);
* one **test organization** per capacity the plan uses: code ``cf-<run>-<capacity hash>``,
  that one capacity, the fake provider as endpoint, signing keys from a ``KeyRing`` in a
  temporary directory; registered as ``admin``;
* one synthetic person (a random 11-digit resident code): as ``registry`` a processing serial
  per organization, then as each ``org.<code>`` its linkage code (``ObtainLinkageCode``);
* the probes as ``SubmitQueries`` batches (one requester organization and capacity per batch,
  at most ``batch_size`` queries), a few batches at a time.

Calls are retried on RESOURCE_EXHAUSTED (after the server's ``retryAfterMs``) and briefly on
UNAVAILABLE; ``SubmitQueries`` is idempotent by query id, so a retry never asks twice.
Must never: touch the target other than through its gRPC contract, or keep the keys it made.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import grpc

from linkage import crypto
from linkage.errors import remote_error
from linkage.keys import KeyRing
from linkage.rpc import Security
from linkage.v1 import common_pb2, network_pb2, network_pb2_grpc, payloads_pb2
from permission_list import vocabulary
from permission_list.conformance_cases import Probe
from permission_list.conformance_report import Disposition, OrganizationFacts

ADMIN = "admin"
REGISTRY = "registry"
PROVIDER_IDENTITY = "platform.conformance"
CODE_PREFIX = "cf"
MAX_BATCH = 5000
REQUESTER_KEY_LIFETIME = timedelta(hours=1)
KEY_SKEW = timedelta(minutes=5)
_STATUS_PREFIX = "QUERY_STATUS_"
_UNAVAILABLE_RETRIES = 2
_EXHAUSTED_RETRIES = 20
_MAX_BACKOFF = 5.0

Response = TypeVar("Response")


class SetupError(Exception):
    """The kit could not run against the target (nothing was judged)."""


class UnreachableError(SetupError):
    """The target did not answer at all (down, wrong address, or a certificate it refuses)."""


def new_run_id() -> str:
    """Six hex digits that keep one run's organizations apart from earlier runs'."""
    return secrets.token_hex(3)


def organization_code(run_id: str, capacity: str) -> str:
    """``cf-<run>-<first 8 hex of sha256(capacity)>``: within [a-z0-9-]{1,32}."""
    digest = hashlib.sha256(capacity.encode("utf-8")).hexdigest()[:8]
    return f"{CODE_PREFIX}-{run_id}-{digest}"


def org_identity(code: str) -> str:
    return f"org.{code}"


def identities(codes: Sequence[str]) -> list[str]:
    """Every certificate identity a run uses."""
    return [ADMIN, REGISTRY, PROVIDER_IDENTITY, *(org_identity(code) for code in codes)]


def issue_certificates(pki_dir: Path, names: Sequence[str]) -> None:
    """Issue what is missing into the target's PKI directory (blocking; the CA must exist)."""
    if not (pki_dir / "ca.pem").exists() or not (pki_dir / "ca.key").exists():
        raise SetupError(
            f"no CA in {pki_dir}: pass the PKI directory of the target's CA (ca.pem, ca.key)"
        )
    from linkage import pki

    pki.init_pki(pki_dir, names)


@dataclass
class KitOrganization:
    """A test organization: its capacity, code, keys and the person's code there."""

    capacity: str
    code: str
    ring: KeyRing
    serial: str
    linkage_code: str = ""

    @classmethod
    def create(cls, run_id: str, capacity: str, keys_dir: Path) -> KitOrganization:
        code = organization_code(run_id, capacity)
        ring = KeyRing.load_or_create(keys_dir, code)
        return cls(capacity, code, ring, f"{code}-{secrets.token_urlsafe(18)}")

    @property
    def signer(self) -> crypto.Signer:
        verify = bytes(self.ring.current.signing_key.verify_key)
        return crypto.Signer(self.code, crypto.key_id(verify), self.ring.current.signing_key)

    def message(self, endpoint: str, now: datetime) -> network_pb2.Organization:
        """The directory entry to register."""
        verify = bytes(self.ring.current.signing_key.verify_key)
        key = common_pb2.PublicKey(key_id=crypto.key_id(verify), key=verify)
        key.not_before.FromDatetime(now - KEY_SKEW)
        label = vocabulary.capacity_label(self.capacity)
        return network_pb2.Organization(
            code=self.code,
            display_name=f"適合性試験 {label} ({self.capacity})",
            capacities=[self.capacity],
            endpoint=endpoint,
            signing_keys=[key],
        )

    def requester_key(self, now: datetime) -> common_pb2.SignedEnvelope:
        """A RequesterKey for the kit's queries, signed by this organization."""
        public = bytes(self.ring.current.encryption_key.public_key)
        body = payloads_pb2.RequesterKey(
            organization=self.code, key_id=crypto.key_id(public), public_key=public
        )
        body.not_after.FromDatetime(now + REQUESTER_KEY_LIFETIME)
        return self.signer.sign(body.SerializeToString(deterministic=True))

    def facts(self) -> OrganizationFacts:
        return OrganizationFacts(self.capacity, self.code, self.linkage_code)


class Target:
    """Channels to the target's NetworkService, one per identity, opened on first use."""

    def __init__(self, address: str, pki_dir: Path | None, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._pki_dir = pki_dir
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, identity: str) -> network_pb2_grpc.NetworkServiceAsyncStub:
        channel = self._channels.get(identity)
        if channel is None:
            channel = Security(self._pki_dir, identity).channel(self.address)
            self._channels[identity] = channel
        return network_pb2_grpc.NetworkServiceStub(channel)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(channel.close(None) for channel in channels))


async def call(
    what: str, make: Callable[[], Awaitable[Response]], *, retry_unavailable: bool = True
) -> Response:
    """Run one RPC with the kit's retry policy; a failure raises ``grpc.aio.AioRpcError``."""
    unavailable = 0
    for attempt in range(_EXHAUSTED_RETRIES + 1):
        try:
            return await make()
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and attempt < _EXHAUSTED_RETRIES:
                await asyncio.sleep(_retry_after(error))
                continue
            if (
                code == grpc.StatusCode.UNAVAILABLE
                and retry_unavailable
                and unavailable < _UNAVAILABLE_RETRIES
            ):
                unavailable += 1
                await asyncio.sleep(0.5 * unavailable)
                continue
            raise
    raise AssertionError(f"{what}: unreachable")  # the loop returns or raises


def _retry_after(error: grpc.aio.AioRpcError) -> float:
    text = remote_error(error).metadata.get("retryAfterMs", "")
    millis = int(text) if text.isdigit() else 200
    return min(max(millis, 10) / 1000, _MAX_BACKOFF)


def describe(error: grpc.aio.AioRpcError) -> str:
    """``CODE REASON: message`` of a failed call."""
    remote = remote_error(error)
    reason = f" {remote.reason}" if remote.reason else ""
    return f"{remote.code}{reason}: {remote.message}"


# --- setup -------------------------------------------------------------------------------------


async def network_keys(target: Target, identity: str) -> tuple[dict[str, bytes], str]:
    """(permit key id → key, permission list version) from GetNetworkKeys."""
    response = await call(
        "GetNetworkKeys",
        lambda: target.stub(identity).GetNetworkKeys(
            network_pb2.GetNetworkKeysRequest(), timeout=target.timeout
        ),
    )
    return {key.key_id: bytes(key.key) for key in response.permit_keys}, (
        response.permission_list_version
    )


async def probe_target(target: Target) -> str:
    """The target's permission list version; ``UnreachableError`` if it does not answer."""
    try:
        _keys, version = await network_keys(target, ADMIN)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise UnreachableError(
                f"target {target.address} unreachable: {describe(error)}"
            ) from None
        raise SetupError(f"GetNetworkKeys as {ADMIN}: {describe(error)}") from None
    return version


async def register_all(
    target: Target, organizations: Sequence[KitOrganization], endpoint: str, limit: int = 8
) -> None:
    """As admin, register every test organization; then as registry, one processing serial
    each for one synthetic person; then as each organization, obtain its linkage code."""
    resident_code = f"{secrets.randbelow(10**11):011d}"
    now = datetime.now(UTC)
    gate = asyncio.Semaphore(limit)

    async def setup(org: KitOrganization) -> None:
        async with gate:
            await _step(
                f"RegisterOrganization {org.code} as {ADMIN}",
                lambda: target.stub(ADMIN).RegisterOrganization(
                    network_pb2.RegisterOrganizationRequest(
                        organization=org.message(endpoint, now)
                    ),
                    timeout=target.timeout,
                ),
            )
            await _step(
                f"RegisterProcessingSerial for {org.code} as {REGISTRY}",
                lambda: target.stub(REGISTRY).RegisterProcessingSerial(
                    network_pb2.RegisterProcessingSerialRequest(
                        processing_serial=org.serial,
                        resident_code=resident_code,
                        organization=org.code,
                    ),
                    timeout=target.timeout,
                ),
            )
            response = await _step(
                f"ObtainLinkageCode as {org_identity(org.code)}",
                lambda: target.stub(org_identity(org.code)).ObtainLinkageCode(
                    network_pb2.ObtainLinkageCodeRequest(
                        organization=org.code, processing_serial=org.serial
                    ),
                    timeout=target.timeout,
                ),
            )
            org.linkage_code = response.linkage_code

    await asyncio.gather(*(setup(org) for org in organizations))


async def _step(what: str, make: Callable[[], Awaitable[Response]]) -> Response:
    try:
        return await call(what, make)
    except grpc.aio.AioRpcError as error:
        raise SetupError(f"{what}: {describe(error)}") from None


# --- queries -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """One SubmitQueries call: a requester organization and its probes with their query ids."""

    requester: KitOrganization
    probes: tuple[tuple[Probe, str], ...]


def batches(
    probes: Sequence[tuple[Probe, str]],
    organizations: Mapping[str, KitOrganization],
    batch_size: int,
) -> list[Batch]:
    """Probes grouped by requester capacity (one per batch), then cut to ``batch_size``."""
    grouped: dict[str, list[tuple[Probe, str]]] = {}
    for probe, query_id in probes:
        grouped.setdefault(probe.requester_capacity, []).append((probe, query_id))
    result = []
    for capacity in sorted(grouped):
        members = grouped[capacity]
        for chunk in _chunks(members, batch_size):
            result.append(Batch(organizations[capacity], tuple(chunk)))
    return result


def _chunks(
    values: Sequence[tuple[Probe, str]], size: int
) -> Iterator[Sequence[tuple[Probe, str]]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def submission(
    batch: Batch, organizations: Mapping[str, KitOrganization]
) -> network_pb2.SubmitQueriesRequest:
    """The SubmitQueries request of one batch."""
    requester = batch.requester
    return network_pb2.SubmitQueriesRequest(
        requester=requester.code,
        requester_capacity=requester.capacity,
        requester_key=requester.requester_key(datetime.now(UTC)),
        queries=[
            network_pb2.QuerySubmission(
                query_id=query_id,
                procedure=probe.procedure,
                provider=organizations[probe.provider_capacity].code,
                data_items=probe.items,
                linkage_code=requester.linkage_code,
                on_date=probe.on.isoformat(),
            )
            for probe, query_id in batch.probes
        ],
    )


async def submit_all(
    target: Target,
    all_batches: Sequence[Batch],
    organizations: Mapping[str, KitOrganization],
    limit: int = 4,
) -> dict[str, Disposition]:
    """Send every batch (``limit`` at a time); query id → what the network said."""
    gate = asyncio.Semaphore(limit)
    results: dict[str, Disposition] = {}

    async def send(batch: Batch) -> None:
        async with gate:
            results.update(await _submit(target, batch, organizations))

    await asyncio.gather(*(send(batch) for batch in all_batches))
    return results


async def _submit(
    target: Target, batch: Batch, organizations: Mapping[str, KitOrganization]
) -> dict[str, Disposition]:
    request = submission(batch, organizations)
    identity = org_identity(batch.requester.code)
    try:
        response = await call(
            "SubmitQueries",
            lambda: target.stub(identity).SubmitQueries(request, timeout=target.timeout),
        )
    except grpc.aio.AioRpcError as error:
        failed = Disposition("CALL_FAILED", f"SubmitQueries failed: {describe(error)}")
        return {query_id: failed for _probe, query_id in batch.probes}
    return {
        d.query_id: Disposition(_status_name(d.status), d.reason, d.permit_id)
        for d in response.dispositions
    }


def _status_name(status: int) -> str:
    try:
        return common_pb2.QueryStatus.Name(status).removeprefix(_STATUS_PREFIX)  # type: ignore[arg-type]
    except ValueError:
        return f"STATUS_{status}"
