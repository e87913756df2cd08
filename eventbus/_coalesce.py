"""Single publishes issued in the same event-loop turn go to the transport as one call.

Many tasks each awaiting ``bus.publish`` (an agent workflow fanning out, a web handler per
request) would otherwise cost one transport call each: one script call or round trip on Redis,
one delivery wait on Kafka. The first publish of a turn (the leader) yields once; publishes to
the same topic with the same timeout that run meanwhile join its batch, and the leader sends
the batch in one ``transport.publish``. A publish alone (a task awaiting its publishes one by
one) pays only that one yield and goes out as before.

What holds, as without coalescing: each publish returns once the server holds its event, with
its own position; a record another task sent in the same batch never delays it past the batch's
own round trip. Errors: ``EventTooLargeError`` guarantees that nothing of the call was written,
so the batch is sent again one record at a time and only the too-large event's publish raises;
any other error (a timeout, a lost connection, an unknown topic) is raised by every publish of
the batch, each of which may or may not have been written (the same as for a lone publish that
raises). A publish cancelled before its batch is sent is not sent.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from eventbus.errors import EventTooLargeError

if TYPE_CHECKING:
    from eventbus.transport import Outgoing, Position, Transport

__all__ = ["Coalescer"]

_Key = tuple[str, float]
_Item = tuple["Outgoing", "asyncio.Future[Position] | None"]


class Coalescer:
    """Batches concurrent single publishes of one bus (see the module docstring)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._open: dict[_Key, list[_Item]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def publish(self, topic: str, record: Outgoing, timeout: float) -> Position:
        """Publish ``record`` (possibly with others of this turn); its position once held."""
        key = (topic, timeout)
        batch = self._open.get(key)
        if batch is not None:  # a leader is collecting this turn's publishes: join it
            future: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
            batch.append((record, future))
            return await future
        batch = self._open[key] = [(record, None)]
        try:
            await asyncio.sleep(0)  # one turn: publishes already scheduled join the batch
        except asyncio.CancelledError:
            self._close_batch(key, batch)
            if len(batch) > 1:  # the others still go out
                self._spawn(topic, batch[1:], timeout)
            raise
        self._close_batch(key, batch)
        if len(batch) == 1:
            positions = await self._transport.publish(topic, [record], timeout=timeout)
            return positions[0]
        mine: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        batch[0] = (record, mine)
        # a task of its own, so the others' publishes complete even if this one is cancelled
        try:
            await asyncio.shield(self._spawn(topic, batch, timeout))
        except asyncio.CancelledError:
            mine.cancel()  # nobody will read its outcome
            raise
        return mine.result()

    def _close_batch(self, key: _Key, batch: list[_Item]) -> None:
        if self._open.get(key) is batch:
            del self._open[key]

    def _spawn(self, topic: str, batch: list[_Item], timeout: float) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._send(topic, batch, timeout))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        return task

    async def _send(self, topic: str, batch: list[_Item], timeout: float) -> None:
        live = [(r, f) for r, f in batch if f is not None and not f.done()]
        if not live:
            return
        try:
            positions = await self._transport.publish(topic, [r for r, _ in live], timeout=timeout)
        except EventTooLargeError as exc:
            if len(live) == 1:
                _settle(live, exc)
                return
            # nothing of the call was written: again one by one, so only the culprit fails
            for item in live:
                await self._send(topic, [item], timeout)
            return
        except Exception as exc:
            _settle(live, exc)
            return
        except BaseException:  # this task was cancelled (the loop is going away)
            for _, future in live:
                future.cancel()
            raise
        for (_, future), position in zip(live, positions, strict=True):
            if not future.done():
                future.set_result(position)

    async def drain(self) -> None:
        """Wait for batches being sent (before the transport closes)."""
        while self._sending:
            await asyncio.wait(set(self._sending))


def _settle(live: list[tuple[Outgoing, asyncio.Future[Position]]], exc: Exception) -> None:
    for _, future in live:
        if not future.done():
            future.set_exception(_copy(exc))


def _copy(exc: Exception) -> Exception:
    """An error of the same kind for each waiting publish (one exception object raised in
    several tasks would collect all their tracebacks)."""
    try:
        clone = type(exc)(*exc.args)
    except Exception:
        return exc
    clone.__cause__ = exc.__cause__
    return clone
