"""The registry's client of ``NetworkService.RegisterProcessingSerial`` (as ``registry``).

Owns one channel to the network (mutual TLS, closed with the app), the deadline of every call,
and the mapping of the network's answers to the registry's errors: unreachable or slow is
UNAVAILABLE (the unified address server may retry), a serial taken is a collision (the desk
draws another), an unregistered organization is NOT_FOUND.

Must never: call without a deadline, or put the resident code into an error or a log line.
"""

from __future__ import annotations

import grpc

from linkage.errors import Internal, NotFound, Unavailable, remote_error
from linkage.logs import get_logger
from linkage.rpc import Security
from linkage.v1 import network_pb2, network_pb2_grpc
from simulator.registry.residents import SerialCollisionError

log = get_logger(__name__)

_UNREACHABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class NetworkClient:
    """RegisterProcessingSerial with a deadline; implements ``residents.NetworkPort``."""

    def __init__(self, security: Security, endpoint: str, *, deadline: float) -> None:
        self._channel = security.channel(endpoint, server="network")
        self._stub: network_pb2_grpc.NetworkServiceAsyncStub = network_pb2_grpc.NetworkServiceStub(
            self._channel
        )
        self._deadline = deadline

    async def register_serial(self, serial: str, resident_code: str, organization: str) -> None:
        request = network_pb2.RegisterProcessingSerialRequest(
            processing_serial=serial, resident_code=resident_code, organization=organization
        )
        try:
            await self._stub.RegisterProcessingSerial(request, timeout=self._deadline)
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None

    async def close(self) -> None:
        await self._channel.close(None)


def _translate(error: grpc.aio.AioRpcError) -> Exception:
    code = error.code()
    if code in _UNREACHABLE:
        return Unavailable("NETWORK_UNAVAILABLE", "the network is unreachable; retry later")
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return SerialCollisionError()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(
            "ORGANIZATION_NOT_REGISTERED", "the organization is not in the network directory"
        )
    log.error("network_refused_serial", code=code.name, reason=remote_error(error).reason)
    return Internal("NETWORK_REFUSED", "the network refused the processing serial")
