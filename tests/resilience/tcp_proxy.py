"""A TCP proxy on 127.0.0.1 that a test can cut and restore: a dependency going away.

Put it between a client and a server (a platform and the network, a server and PostgreSQL).
``cut("refuse")`` closes every open connection and stops listening, so new ones are refused
(a crashed host, a closed port: clients see the failure at once); ``cut("blackhole")`` closes
the open ones and accepts new ones without forwarding a byte (a dead route: clients wait until
their deadline).
``restore()`` forwards again. Events say when traffic arrives, so tests await them instead of
sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Mode = Literal["forward", "refuse", "blackhole"]
_CHUNK = 65536


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target`` (host:port) until told otherwise."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._upstream: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.mode: Mode = "forward"
        self.accepted = 0
        self.held = 0  # connections accepted while blackholed
        self.traffic = asyncio.Event()  # set when a client sends bytes (cleared by the test)
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        """Listen (on a free port the first time, on the same port after a refusal)."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def cut(self, mode: Literal["refuse", "blackhole"] = "refuse") -> None:
        """Drop every open connection; then refuse new ones, or accept and hold them."""
        self.mode = mode
        if mode == "refuse":
            await self._stop_listening()
        await self._drop_all()

    async def restore(self) -> None:
        """Forward new connections again (the dropped ones stay dead, as after an outage)."""
        self.mode = "forward"
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self._stop_listening()
        await self._drop_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def upstream_ports(self) -> list[int]:
        """The local ports of the open connections to the target (how the target sees them:
        PostgreSQL's ``pg_stat_activity.client_port``)."""
        return [
            int(writer.get_extra_info("sockname")[1])
            for writer in self._upstream
            if not writer.transport.is_closing()
        ]

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _drop_all(self) -> None:
        writers, self._connections = list(self._connections), set()
        self._upstream.clear()
        for writer in writers:
            _abort(writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._connections.add(writer)
        if self.mode == "blackhole":
            self.held += 1
            await self._swallow(reader)  # read and drop until the connection is cut
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            _abort(writer)
            return
        self._connections.add(up_writer)
        self._upstream.add(up_writer)
        for pipe in (self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False)):
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while await reader.read(_CHUNK):
                self.traffic.set()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if upstream:
                    self.traffic.set()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(writer)
            self._upstream.discard(writer)
            _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once with a reset (no lingering FIN handshake)."""
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
