"""A TCP proxy the tests control, between a client and a server: cut, delay, black-hole.

It runs an asyncio loop on its own thread. Modes (switchable at any time):

* ``normal()``: bytes flow both ways.
* ``delay(seconds)``: every chunk is held ``seconds`` before it is passed on (order kept).
* ``blackhole()``: connections stay open but bytes are dropped (both ways); new connections
  are accepted and get nothing: what a dead network path looks like to a client.
* ``cut()``: every open connection is reset now; ``refuse(True)`` also resets new ones at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._delay = 0.0
        self._blackhole = False
        self._refuse = False
        self._conns: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # control --------------------------------------------------------------------------------
    def start(self) -> Proxy:
        self._thread.start()
        self._call(self._start())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def normal(self) -> None:
        self._delay, self._blackhole, self._refuse = 0.0, False, False

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    def blackhole(self, on: bool = True) -> None:
        self._blackhole = on

    def refuse(self, on: bool = True) -> None:
        self._refuse = on

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut."""
        return int(self._call(self._cut()))

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # inside the loop ------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _cut(self) -> int:
        conns = list(self._conns)
        for writer in conns:
            _reset(writer)
        self._conns.clear()
        return len(conns)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refuse:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self.connections += 1
        self._conns.update((writer, up_writer))
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            self._conns.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                if self._delay:
                    await asyncio.sleep(self._delay)  # allowed: the injected network delay
                if self._blackhole:
                    continue  # dropped on the floor
                writer.write(chunk)
                await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), like a broken network path or a killed peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
