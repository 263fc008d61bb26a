"""What the intermediate server needs from the network, as a protocol the domain can call.

Owns the ``NetworkPort`` protocol (one call per NetworkService method the server uses, each
acting as a named tenant) and the ``Clock`` type. The gRPC implementation lives in
``server.network_client``; tests may pass a fake.

Must never: import grpc (the domain depends on this module), or let a call act for a tenant
other than the one named in it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from linkage.v1 import common_pb2, network_pb2

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


class NetworkPort(Protocol):
    """The Information Provision Network as the intermediate server calls it.

    Failures are ``linkage.errors.LinkageError`` subclasses (``Unavailable`` when the network
    cannot be reached; otherwise the network's own code and reason).
    """

    async def obtain_linkage_code(self, tenant: str, processing_serial: str) -> str:
        """ObtainLinkageCode as ``org.<tenant>``."""
        ...

    async def submit_queries(
        self, tenant: str, request: network_pb2.SubmitQueriesRequest
    ) -> network_pb2.SubmitQueriesResponse:
        """SubmitQueries as ``org.<tenant>``."""
        ...

    async def deliver_late_answers(
        self, tenant: str, answer_batch: common_pb2.SignedEnvelope
    ) -> int:
        """DeliverLateAnswers as ``org.<tenant>``; the number the requester accepted."""
        ...

    async def network_keys(self) -> network_pb2.GetNetworkKeysResponse:
        """GetNetworkKeys (any tenant's identity will do)."""
        ...

    async def organization(self, code: str) -> network_pb2.Organization:
        """GetOrganization (directory read)."""
        ...
