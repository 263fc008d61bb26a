"""The gRPC client of the network: one mutual-TLS channel per tenant, as ``org.<code>``.

Owns the ``NetworkPort`` implementation: each tenant calls the network with its own
certificate (so the network can check that an organization acts only as itself), with a
deadline on every call, and network failures are translated into ``linkage.errors`` so the
domain never sees a grpc exception.

Must never: call the network for one tenant with another tenant's identity, or retry a call
that is not idempotent on its own (SubmitQueries and ObtainLinkageCode are idempotent at the
network; DeliverLateAnswers is retried by the review queue, not here).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import TypeVar

import grpc

from linkage.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LinkageError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    remote_error,
)
from linkage.keys import PublicKeys
from linkage.logs import get_logger
from linkage.rpc import Security
from linkage.v1 import common_pb2, network_pb2, network_pb2_grpc

log = get_logger(__name__)
T = TypeVar("T")

_ERRORS: dict[str, type[LinkageError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "PERMISSION_DENIED": PermissionDenied,
    "UNAUTHENTICATED": Unauthenticated,
    "FAILED_PRECONDITION": FailedPrecondition,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "DEADLINE_EXCEEDED": Unavailable,  # for our caller: the network did not answer in time
    "UNAVAILABLE": Unavailable,
}


def translate(error: grpc.RpcError) -> LinkageError:
    """A network failure as a domain error, keeping the network's reason."""
    remote = remote_error(error)
    kind = _ERRORS.get(remote.code, Internal)
    if kind is Unavailable:
        return Unavailable("NETWORK_UNAVAILABLE", "the network could not be reached")
    if kind is Internal:
        return Internal("NETWORK_ERROR", f"the network failed with {remote.code}")
    return kind(remote.reason or f"NETWORK_{remote.code}", remote.message)


class GrpcNetwork:
    """``NetworkPort`` over gRPC with one channel per tenant identity."""

    def __init__(
        self,
        pki_dir: Path | None,
        address: str,
        tenant_codes: Iterable[str],
        *,
        timeout: float = 30.0,
    ) -> None:
        self._timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, network_pb2_grpc.NetworkServiceAsyncStub] = {}
        for code in tenant_codes:
            channel = Security(pki_dir, f"org.{code}").channel(address, server="network")
            self._channels[code] = channel
            self._stubs[code] = network_pb2_grpc.NetworkServiceStub(channel)
        if not self._stubs:
            raise ValueError("a platform needs at least one tenant to talk to the network")
        # Directory reads may use any tenant's identity; the first one is as good as any.
        self._reader = next(iter(self._stubs.values()))

    def _stub(self, tenant: str) -> network_pb2_grpc.NetworkServiceAsyncStub:
        stub = self._stubs.get(tenant)
        if stub is None:
            raise Internal("TENANT_NOT_HOSTED", "no network identity for this tenant")
        return stub

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise translate(error) from None

    async def obtain_linkage_code(self, tenant: str, processing_serial: str) -> str:
        request = network_pb2.ObtainLinkageCodeRequest(
            organization=tenant, processing_serial=processing_serial
        )
        response = await self._call(
            self._stub(tenant).ObtainLinkageCode(request, timeout=self._timeout)
        )
        return response.linkage_code

    async def submit_queries(
        self, tenant: str, request: network_pb2.SubmitQueriesRequest
    ) -> network_pb2.SubmitQueriesResponse:
        return await self._call(self._stub(tenant).SubmitQueries(request, timeout=self._timeout))

    async def deliver_late_answers(
        self, tenant: str, answer_batch: common_pb2.SignedEnvelope
    ) -> int:
        request = network_pb2.DeliverLateAnswersRequest(answer_batch=answer_batch)
        response = await self._call(
            self._stub(tenant).DeliverLateAnswers(request, timeout=self._timeout)
        )
        return response.delivered

    async def collect(
        self, tenant: str, linkage_code: str, *, seconds: float
    ) -> network_pb2.CollectPersonAccessRecordsResponse:
        """``server.disclosure.NetworkRecords``: the network's and the other organizations'
        records about the person ``linkage_code`` names at ``tenant``, waiting ``seconds``."""
        request = network_pb2.CollectPersonAccessRecordsRequest(
            organization=tenant, linkage_code=linkage_code
        )
        return await self._call(
            self._stub(tenant).CollectPersonAccessRecords(request, timeout=seconds)
        )

    async def network_keys(self) -> network_pb2.GetNetworkKeysResponse:
        return await self._call(
            self._reader.GetNetworkKeys(network_pb2.GetNetworkKeysRequest(), timeout=self._timeout)
        )

    async def organization(self, code: str) -> network_pb2.Organization:
        request = network_pb2.GetOrganizationRequest(name=f"organizations/{code}")
        response = await self._call(self._reader.GetOrganization(request, timeout=self._timeout))
        return response.organization

    async def rotate_signing_key(self, tenant: str, key: PublicKeys) -> network_pb2.Organization:
        """Publish ``key`` as ``tenant``'s current signing key (idempotent at the network: a key
        it already holds changes nothing); the directory entry as it now stands."""
        request = network_pb2.RotateOrganizationKeysRequest(
            name=f"organizations/{tenant}",
            signing_key=common_pb2.PublicKey(key_id=key.key_id, key=key.verify_key),
        )
        response = await self._call(
            self._stub(tenant).RotateOrganizationKeys(request, timeout=self._timeout)
        )
        return response.organization

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
