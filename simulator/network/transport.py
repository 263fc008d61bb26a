"""The gRPC transport from the network to the platforms' InboundService.

Owns the outbound channels (one per endpoint, mutual TLS as ``network``, reused across calls
and closed on shutdown) and the translation of call failures into ``RouteError``: unreachable
or too slow is ``PROVIDER_UNAVAILABLE`` (the requester sees a per-query FAILED, never a hang),
anything the platform refused carries the platform's own reason.

An endpoint may be a comma-separated list of ``ip:port`` (the replicas of one platform,
checked by ``parse``): ``Security.channel`` opens it as one ``ipv4:``/``ipv6:`` target balanced
round robin, so each call goes to the next replica that is up.

The channels name no server identity (any certificate of the CA is accepted): the directory
knows an organization's endpoint, not which ``platform.<name>`` serves it. That hop is still
safe against a server that holds another identity's certificate at the endpoint's address: the
provider's answers are verified against the provider's own signing keys from the directory
(``routing.check_answer_signature``), so it cannot forge or alter an answer, only withhold it
(the query FAILs); and the permits it would receive are the network's, signed by the network's
key, single use and short lived, naming a provider's linkage code and never an individual
number, so it cannot mint or widen one. (Binding it would need the platform identity in the
directory entry.)

A platform that restarts is waited for, briefly: a call finds its channel connected, or waits
up to ``wait`` seconds (within the deadline) for it to connect before it is sent, and the
channels retry a lost connection at most ``RECONNECT_BACKOFF_MAX_MS`` apart (gRPC's default
backoff grows to 120 s, and a call made meanwhile would fail at once, its query for good). A
platform still unreachable after ``wait`` is PROVIDER_UNAVAILABLE then, never later than the
deadline. Only the connection is waited for: a call that was sent is never sent again (the
platform may have used the permits' nonces), so a platform that dies mid-call is
PROVIDER_UNAVAILABLE at once.

Must never: call without a deadline, send one call twice, or keep a channel after ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from linkage.errors import remote_error
from linkage.rpc import Security
from linkage.v1 import common_pb2, inbound_pb2, inbound_pb2_grpc
from simulator.network.routing import PROVIDER_UNAVAILABLE, RouteError

_UNREACHABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_REASON_RE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
DEFAULT_WAIT = 2.0
"""Seconds a call waits for a platform that is not connected (a restart takes about that)."""
RECONNECT_BACKOFF_INITIAL_MS = 200
RECONNECT_BACKOFF_MAX_MS = 1000
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_INITIAL_MS),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
)
_READY = grpc.ChannelConnectivity.READY
T = TypeVar("T")


class GrpcTransport:
    """Calls InboundService on platforms; one cached channel per endpoint.

    ``wait`` is how long (seconds, within each call's deadline) a call waits for a platform
    that is not connected; 0 fails such a call at once.
    """

    def __init__(self, security: Security, *, wait: float = DEFAULT_WAIT) -> None:
        if wait < 0:
            raise ValueError("wait must not be negative")
        self._security = security
        self._wait = wait
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._lock = asyncio.Lock()

    async def _channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            async with self._lock:
                channel = self._channels.get(endpoint)
                if channel is None:
                    # Unbound on purpose (``server=None``): see the module docstring.
                    channel = self._security.channel(endpoint, options=_CHANNEL_OPTIONS)
                    self._channels[endpoint] = channel
        return channel

    async def _call(
        self,
        endpoint: str,
        deadline: float,
        invoke: Callable[[inbound_pb2_grpc.InboundServiceAsyncStub, float], Awaitable[T]],
    ) -> T:
        """``invoke(stub, timeout)`` once the channel is connected, or once ``wait`` (at most
        the deadline) has passed without it; the call gets what is left of the deadline."""
        channel = await self._channel(endpoint)
        loop = asyncio.get_running_loop()
        started = loop.time()
        patience = min(self._wait, deadline)
        if patience > 0 and channel.get_state(try_to_connect=True) != _READY:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(channel.channel_ready(), patience)
        remaining = deadline - (loop.time() - started)
        # Not connected by now: the call fails at once (UNAVAILABLE), it does not wait on.
        return await invoke(inbound_pb2_grpc.InboundServiceStub(channel), max(remaining, 0.001))

    async def provide_answers(
        self, endpoint: str, permit_batch: common_pb2.SignedEnvelope, *, deadline: float
    ) -> common_pb2.SignedEnvelope:
        request = inbound_pb2.ProvideAnswersRequest(permit_batch=permit_batch)
        try:
            response = await self._call(
                endpoint,
                deadline,
                lambda stub, timeout: stub.ProvideAnswers(request, timeout=timeout),
            )
        except grpc.aio.AioRpcError as error:
            raise _failure(error, PROVIDER_UNAVAILABLE, "PROVIDER_ERROR") from None
        if not response.HasField("answer_batch") or not response.answer_batch.body:
            raise RouteError("PROVIDER_ERROR", unavailable=False)
        return response.answer_batch

    async def accept_late_answers(
        self, endpoint: str, answer_batch: common_pb2.SignedEnvelope, *, deadline: float
    ) -> int:
        request = inbound_pb2.AcceptLateAnswersRequest(answer_batch=answer_batch)
        try:
            response = await self._call(
                endpoint,
                deadline,
                lambda stub, timeout: stub.AcceptLateAnswers(request, timeout=timeout),
            )
        except grpc.aio.AioRpcError as error:
            raise _failure(error, "REQUESTER_UNAVAILABLE", "REQUESTER_ERROR") from None
        return response.accepted

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(channel.close(None) for channel in channels))


def _failure(error: grpc.aio.AioRpcError, unavailable: str, refused: str) -> RouteError:
    if error.code() in _UNREACHABLE:
        return RouteError(unavailable, unavailable=True)
    reason = remote_error(error).reason
    # The platform's own reason (e.g. UNKNOWN_PERMISSION_LIST_VERSION) tells the requester
    # most; anything not shaped like a reason is reported generically.
    return RouteError(reason if _REASON_RE.fullmatch(reason) else refused, unavailable=False)
