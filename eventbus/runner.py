"""The consumer runner: handlers with concurrency, per-key order, retries and dead letters.

Guarantees:

- An event is acked only after its handler returned; a crash at any point redelivers it.
- Two events with the same key (in the same partition) are never handled at the same time,
  and are handled in position order. Events without a key are handled in parallel.
- A failing handler is retried in place with exponential backoff (so the key's order holds)
  until ``max_attempts`` deliveries; the last failure goes to the dead-letter topic with the
  reason and the attempt count in headers, and consumption goes on. With no dead-letter topic
  the event is nacked instead (it comes back later), never dropped.
- An event that cannot be decoded (or does not validate as ``model``) is dead-lettered at once.
- ``stop()`` (thread-safe) stops fetching, lets in-flight handlers finish (up to
  ``shutdown_timeout``), commits acks and leaves the group.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from eventbus.aio import AsyncDelivery, AsyncEventBus, AsyncSubscription, call_handler
from eventbus.errors import SerializationError
from eventbus.event import decode_record
from eventbus.observability import instruments
from eventbus.transport import Record

__all__ = ["AsyncRunner", "RunnerStats", "backoff_delay"]

log = logging.getLogger("eventbus.runner")


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Delay before retry number ``attempt`` (1-based): base * 2**(attempt-1), capped."""
    return float(min(cap, base * (2 ** max(attempt - 1, 0))))


@dataclass
class RunnerStats:
    """Counts since the runner started."""

    handled: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    nacked: int = 0
    in_flight: int = 0


class AsyncRunner:
    """Runs ``handler`` over a group subscription until :meth:`stop` (see module docstring)."""

    def __init__(
        self,
        bus: AsyncEventBus,
        handler: Callable[[Any], Any],
        topics: str | tuple[str, ...],
        *,
        group: str,
        consumer: str | None = None,
        concurrency: int = 1,
        max_attempts: int = 5,
        backoff: float = 0.1,
        max_backoff: float = 10.0,
        dead_letter: str | bool = True,
        model: type[BaseModel] | None = None,
        start: Literal["earliest", "latest"] = "earliest",
        batch_size: int = 100,
        shutdown_timeout: float = 30.0,
        visibility_timeout: float = 30.0,
        session_timeout: float = 10.0,
        options: Mapping[str, str] | None = None,
        wrap: Callable[[AsyncDelivery], Any] | None = None,
    ) -> None:
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be at least 1")
        self.bus = bus
        self.handler = handler
        self._handler_is_async = asyncio.iscoroutinefunction(handler)
        self.topics = (topics,) if isinstance(topics, str) else topics
        self.group = group
        self.consumer = consumer
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.dead_letter = dead_letter
        self.model = model
        self.start = start
        self.batch_size = batch_size
        self.shutdown_timeout = shutdown_timeout
        self.visibility_timeout = visibility_timeout
        self.session_timeout = session_timeout
        self.options = options
        self._wrap = wrap
        self.stats = RunnerStats()
        self._stop_flag = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.started = threading.Event()

    def stop(self) -> None:
        """Ask the runner to stop gracefully; safe from any thread, before or during run."""
        self._stop_flag.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    async def _run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None
        ctx = contextvars.copy_context()  # so the handler sees the current span as its parent
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: ctx.run(fn, *args)
        )

    async def run(self) -> RunnerStats:
        """Consume until :meth:`stop`; returns the stats. Errors from the transport raise."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="eventbus-handler"
        )
        sub = await self.bus.subscribe(
            self.topics,
            group=self.group,
            consumer=self.consumer,
            model=self.model,
            start=self.start,
            dead_letter=self.dead_letter,
            visibility_timeout=self.visibility_timeout,
            session_timeout=self.session_timeout,
            batch_size=self.batch_size,
            options=self.options,
        )
        try:
            await self._loop_until_stopped(sub)
        finally:
            await sub.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
        return self.stats

    async def _loop_until_stopped(self, sub: AsyncSubscription) -> None:
        assert self._wake is not None
        lanes: dict[object, deque[Record]] = {}
        tasks: set[asyncio.Task[None]] = set()
        acks: list[Record] = []
        room = asyncio.Event()
        # up to two batches held: the next batch is fetched while this one is handled (with
        # one, every handled event made room for a fetch of one: a round trip per event)
        limit = max(2 * self.batch_size, self.concurrency * 2)
        refill = max(1, min(self.batch_size, limit // 2))
        ack_ready = self._ack_ready = asyncio.Event()
        self._flusher_done = False
        self.started.set()

        flusher = asyncio.create_task(self._ack_flusher(sub, acks, ack_ready))

        async def lane_worker(lane: object) -> None:
            queue = lanes[lane]
            try:
                while queue:
                    await self._process(sub, queue[0], acks)
                    queue.popleft()
                    self.stats.in_flight -= 1
                    if self.stats.in_flight <= limit - refill:
                        room.set()
            finally:
                del lanes[lane]

        while not self._stop_flag.is_set():
            if flusher.done():  # an ack failed: surface the transport's error
                flusher.result()
            if self.stats.in_flight > limit - refill:  # fetch when a useful batch fits
                room.clear()
                await _wait_any(room, self._wake, 0.5)
                continue
            records = await sub.consumer.fetch(
                min(self.batch_size, limit - self.stats.in_flight), 0.25
            )
            sub.note_fetched(records)
            for record in records:
                lane: object = (
                    (record.topic, record.partition, record.key)
                    if record.key is not None
                    else (record.topic, record.partition, record.offset)
                )
                self.stats.in_flight += 1
                if lane in lanes:
                    lanes[lane].append(record)
                else:
                    lanes[lane] = deque([record])
                    task = asyncio.create_task(lane_worker(lane))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        await self._finish(sub, tasks, flusher, acks)

    async def _ack_flusher(
        self, sub: AsyncSubscription, acks: list[Record], ready: asyncio.Event
    ) -> None:
        """Send acks as handlers finish (batched while one is in flight), not only between
        fetches: a transport may wait inside fetch for them (a Kafka revoke does)."""
        while True:
            await ready.wait()
            ready.clear()
            if acks:
                batch, acks[:] = list(acks), []
                await self._ack(sub, batch)
            if self._flusher_done:
                return

    async def _finish(
        self,
        sub: AsyncSubscription,
        tasks: set[asyncio.Task[None]],
        flusher: asyncio.Task[None],
        acks: list[Record],
    ) -> None:
        """Let in-flight handlers finish (up to shutdown_timeout), then send the last acks."""
        if tasks:
            _, late = await asyncio.wait(set(tasks), timeout=self.shutdown_timeout)
            for task in late:  # their events stay un-acked and come back to the group
                task.cancel()
            if late:
                await asyncio.wait(late)
        # never cancel the flusher mid-ack (that batch would be lost): let it finish and end
        self._flusher_done = True
        if self._ack_ready is not None:
            self._ack_ready.set()
        await flusher
        if acks:
            await self._ack(sub, list(acks))

    async def _ack(self, sub: AsyncSubscription, records: list[Record]) -> None:
        await sub.consumer.ack(records)
        sub.count_records("acked", records)

    async def _process(self, sub: AsyncSubscription, record: Record, acks: list[Record]) -> None:
        try:
            event = decode_record(record, self.bus.codec, self.model)
        except SerializationError as exc:
            await sub.send_to_dead_letter(record, exc, record.attempt)
            self.stats.dead_lettered += 1
            return
        delivery = AsyncDelivery(sub, record, event)
        attempt = record.attempt
        sem = self._semaphore()
        obs = instruments()
        system = self.bus.transport.capabilities.transport
        while True:
            try:
                async with sem:
                    target = self._wrap(delivery) if self._wrap is not None else delivery
                    if obs.process_active():
                        with obs.process_span(system, self.group, record):
                            await call_handler(
                                self.handler, target, self._run_sync, self._handler_is_async
                            )
                    else:
                        await call_handler(
                            self.handler, target, self._run_sync, self._handler_is_async
                        )
            except Exception as exc:  # the handler's failure, whatever it is
                self.stats.failed_attempts += 1
                if attempt >= self.max_attempts:
                    await self._give_up(sub, record, exc, attempt)
                    return
                log.warning(
                    "handler failed on %s/%s/%s (attempt %d of %d): %r",
                    record.topic,
                    record.partition,
                    record.offset,
                    attempt,
                    self.max_attempts,
                    exc,
                    extra=_fields(record, self.group, event.id, attempt),
                )
                if await self._sleep_or_stop(
                    backoff_delay(attempt, self.backoff, self.max_backoff)
                ):
                    return  # stopping: leave it un-acked, it comes back
                attempt += 1
                record.attempt = attempt
                continue
            if not delivery._acked:
                delivery._acked = True
                acks.append(record)
                if self._ack_ready is not None:
                    self._ack_ready.set()
            self.stats.handled += 1
            return

    async def _give_up(
        self, sub: AsyncSubscription, record: Record, exc: Exception, attempt: int
    ) -> None:
        if sub.dead_letter_topic is None:
            await sub.consumer.nack(record, self.max_backoff)
            sub.count("nacked", 1, record.topic)
            self.stats.nacked += 1
            return
        await sub.send_to_dead_letter(record, exc, attempt)
        self.stats.dead_lettered += 1
        event_id = record.headers.get("eb-id", b"").decode(errors="replace")
        log.error(
            "dead-lettered %s/%s/%s to %s after %d attempts: %r",
            record.topic,
            record.partition,
            record.offset,
            sub.dead_letter_topic,
            attempt,
            exc,
            extra=_fields(record, self.group, event_id, attempt),
        )

    async def _sleep_or_stop(self, seconds: float) -> bool:
        assert self._wake is not None
        await _wait_any(self._wake, self._wake, seconds)
        return self._stop_flag.is_set()

    _sem: asyncio.Semaphore | None = None
    _ack_ready: asyncio.Event | None = None
    _flusher_done = False

    def _semaphore(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        return self._sem


def _fields(record: Record, group: str, event_id: str, attempt: int) -> dict[str, object]:
    """Structured log fields (``extra=``): where the event is and which attempt failed."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "position": str(record.position),
        "event_id": event_id,
        "group": group,
        "attempt": attempt,
    }


async def _wait_any(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    waiters = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
