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
  A dead-letter write that fails is logged and retried with backoff (the event stays un-acked
  meanwhile); the runner goes on with other events.
- Leases: every event the runner holds (queued locally or in a handler) stays leased to this
  member while it lives (the transport renews the leases in the background), so a slow handler
  or a deep local queue never causes a redelivery. Before an event that waited is started, the
  runner checks the member still holds it; events whose partition moved to another member
  while they waited are released to it unstarted. What the runner holds is bounded by
  ``max_outstanding`` events and ``max_outstanding_bytes``.
- ``stop()`` (thread-safe) stops fetching, lets in-flight handlers finish (up to
  ``shutdown_timeout``), commits acks and leaves the group.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from eventbus._handling import backoff_delay, call_handler, log_fields, wait_any
from eventbus.errors import SerializationError
from eventbus.observability import instruments
from eventbus.subscription import (
    AsyncDelivery,
    AsyncSubscription,
    Start,
    SubscribeOptions,
    SubscribingBus,
    lane_of,
)
from eventbus.transport import LeasedConsumer, Record

__all__ = ["AsyncRunner", "RunnerStats", "backoff_delay", "call_handler"]

log = logging.getLogger("eventbus.runner")


@dataclass
class RunnerStats:
    """Counts since the runner started."""

    handled: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    nacked: int = 0
    in_flight: int = 0
    released: int = 0
    """Events given back unstarted (their partition moved, or their lease ended)."""
    dead_letter_failures: int = 0
    """Dead-letter writes that failed (each is retried with backoff)."""
    in_flight_bytes: int = 0


class AsyncRunner:
    """Runs ``handler`` over a group subscription until :meth:`stop` (see module docstring)."""

    def __init__(
        self,
        bus: SubscribingBus,
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
        start: Start = "earliest",
        batch_size: int = 100,
        shutdown_timeout: float = 30.0,
        visibility_timeout: float = 30.0,
        session_timeout: float = 10.0,
        max_lease: float = 3600.0,
        options: Mapping[str, str] | None = None,
        wrap: Callable[[AsyncDelivery], Any] | None = None,
        max_outstanding: int | None = None,
        max_outstanding_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be at least 1")
        self.reading = SubscribeOptions.pick(locals())  # the keyword arguments above
        """How the runner's member reads (validated here, before it runs)."""
        if (max_outstanding is not None and max_outstanding < 1) or max_outstanding_bytes < 1:
            raise ValueError("max_outstanding and max_outstanding_bytes must be at least 1")
        self.bus = bus
        self.handler = handler
        self._handler_is_async = asyncio.iscoroutinefunction(handler)
        self.topics = (topics,) if isinstance(topics, str) else topics
        self.group = group
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self.shutdown_timeout = shutdown_timeout
        self._wrap = wrap
        # default: two batches (the next one is fetched while this one is handled; with one,
        # every handled event made room for a fetch of one: a round trip per event)
        self.max_outstanding = max_outstanding or max(2 * batch_size, 2 * concurrency)
        self.max_outstanding_bytes = max_outstanding_bytes
        self.stats = RunnerStats()
        self._leases: LeasedConsumer | None = None
        self._released: set[int] = set()
        """ids of queued records given back unstarted (already uncounted from in_flight)."""
        self._running: set[int] = set()
        """ids of records whose handling started (not to be released)."""
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
        sub = await self.bus.subscribe_with(self.topics, self.group, self.reading)
        try:
            await self._loop_until_stopped(sub)
        finally:
            await sub.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
        return self.stats

    async def _loop_until_stopped(self, sub: AsyncSubscription) -> None:
        assert self._wake is not None
        lanes: dict[object, deque[Record]] = {}
        free: deque[Record] = deque()  # keyless records, in no order among them
        self._free_workers = 0
        tasks: set[asyncio.Task[None]] = set()
        acks: list[Record] = []
        room = self._room = asyncio.Event()
        limit = self.max_outstanding
        refill = max(1, min(self.batch_size, limit // 2))
        max_bytes = self.max_outstanding_bytes
        stats = self.stats
        ack_ready = self._ack_ready = asyncio.Event()
        self._flusher_done = False
        consumer = sub.consumer
        self._refill_at = limit - refill
        scanner = self._watch_leases(consumer, lanes, free)
        self.started.set()

        flusher = asyncio.create_task(self._ack_flusher(sub, acks, ack_ready))

        while not self._stop_flag.is_set():
            if flusher.done():  # an ack failed: surface the transport's error
                flusher.result()
            # fetch when a useful batch fits
            if stats.in_flight > limit - refill or stats.in_flight_bytes >= max_bytes:
                room.clear()
                await wait_any(room, self._wake, 0.5)
                continue
            records = await consumer.fetch(min(self.batch_size, limit - stats.in_flight), 0.25)
            sub.note_fetched(records)
            self._enqueue(sub, records, (lanes, free), tasks, acks)
        if scanner is not None:
            scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scanner
        await self._finish(sub, tasks, flusher, acks)

    def _enqueue(
        self,
        sub: AsyncSubscription,
        records: list[Record],
        queues: tuple[dict[object, deque[Record]], deque[Record]],
        tasks: set[asyncio.Task[None]],
        acks: list[Record],
    ) -> None:
        """Count fetched records in flight and queue each on its lane; a new lane gets a
        worker task (one per lane keeps a key's records in order). Keyless records go to the
        free queue, which up to ``concurrency`` workers serve (a task per keyless record
        cost more than a fast handler's work)."""
        stats = self.stats
        lanes, free = queues
        for record in records:
            stats.in_flight += 1
            stats.in_flight_bytes += len(record.value)
            work: Coroutine[Any, Any, None] | None = None
            if record.key is None:
                free.append(record)
                if self._free_workers < self.concurrency:
                    self._free_workers += 1
                    work = self._free_worker(sub, free, acks)
            else:
                lane = lane_of(record)
                if lane in lanes:
                    lanes[lane].append(record)
                else:
                    lanes[lane] = deque([record])
                    work = self._lane_worker(sub, lanes, lane, acks)
            if work is not None:
                task = asyncio.create_task(work)
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def _lane_worker(
        self,
        sub: AsyncSubscription,
        lanes: dict[object, deque[Record]],
        lane: object,
        acks: list[Record],
    ) -> None:
        """Handle a lane's records one after another, until it is empty."""
        queue, released = lanes[lane], self._released
        try:
            while queue:
                record = queue[0]
                if not released or id(record) not in released:
                    await self._handle_head(sub, queue, acks)
                queue.popleft()
                self._leave(record)
        finally:
            del lanes[lane]

    async def _free_worker(
        self, sub: AsyncSubscription, free: deque[Record], acks: list[Record]
    ) -> None:
        """Handle keyless records in arrival order, until none is left."""
        released = self._released
        try:
            while free:
                record = free.popleft()
                if not released or id(record) not in released:
                    await self._settle(sub, record, acks)
                self._leave(record)
        finally:
            self._free_workers -= 1

    def _leave(self, record: Record) -> None:
        """A queued record is done with: uncount it (a released one was uncounted then)."""
        if self._released and id(record) in self._released:
            self._released.discard(id(record))
        else:
            self._uncount(record)

    def _watch_leases(
        self, consumer: object, lanes: dict[object, deque[Record]], free: deque[Record]
    ) -> asyncio.Task[None] | None:
        """Where the consumer keeps leases, start the scan that gives back queued records it
        no longer holds."""
        self._leases = consumer if isinstance(consumer, LeasedConsumer) else None
        if self._leases is None:
            return None
        self._epoch_checked = self._leases.lease_epoch
        return asyncio.create_task(self._release_moved(lanes, free))

    def _uncount(self, record: Record) -> None:
        """A held record is settled or given back: make room for the next fetch."""
        stats = self.stats
        stats.in_flight -= 1
        stats.in_flight_bytes -= len(record.value)
        if stats.in_flight <= self._refill_at:
            self._room.set()

    async def _release(self, records: list[Record]) -> None:
        """Give back records not started (see LeasedConsumer.release) and uncount them."""
        assert self._leases is not None
        for record in records:
            self._released.add(id(record))
            self._uncount(record)
        self.stats.released += len(records)
        await self._leases.release(records)

    async def _handle_head(
        self, sub: AsyncSubscription, queue: deque[Record], acks: list[Record]
    ) -> None:
        """Handle the first record of a lane; if it was given back instead, what waits behind
        it in the lane goes back too (it would otherwise run before the record comes again)."""
        record = queue[0]
        await self._settle(sub, record, acks)
        if self._released and id(record) in self._released:
            await self._release_rest(queue)

    async def _settle(self, sub: AsyncSubscription, record: Record, acks: list[Record]) -> None:
        """Handle one record; a transport failure settling it gives it back."""
        try:
            await self._process(sub, record, acks)
        except Exception as exc:  # a transport failure settling it
            await self._lost_in_lane(record, exc)

    async def _release_rest(self, queue: deque[Record]) -> None:
        """Give back the records behind the head of a lane (none of them started)."""
        rest = [r for r in itertools.islice(queue, 1, None) if id(r) not in self._released]
        if rest and self._leases is not None:
            with contextlib.suppress(Exception):  # they come back after the visibility timeout
                await self._release(rest)

    async def _lost_in_lane(self, record: Record, exc: Exception) -> None:
        """Settling ``record`` failed: log it and give it back, so the lane goes on and the
        record is delivered again (un-acked; not lost)."""
        self._running.discard(id(record))
        log.error(
            "settling %s/%s/%s failed; it will be delivered again: %r",
            record.topic,
            record.partition,
            record.offset,
            exc,
            extra=log_fields(record, self.group, "", record.attempt),
        )
        if self._leases is not None:
            with contextlib.suppress(Exception):  # it comes back after the visibility timeout
                await self._release([record])

    async def _release_moved(self, lanes: dict[object, deque[Record]], free: deque[Record]) -> None:
        """Every second, release queued records this member no longer holds (their partition
        moved while they waited), so the new owner need not wait for this member's queue."""
        leases = self._leases
        assert leases is not None
        running, released = self._running, self._released
        while True:
            await asyncio.sleep(1.0)  # the scan's period, not a wait for a condition
            epoch = leases.lease_epoch
            if epoch == self._epoch_checked:
                continue  # no lease can have ended since the last scan
            lost: list[Record] = []
            for queue in list(lanes.values()):
                for i, record in enumerate(queue):
                    rid = id(record)
                    if rid not in running and rid not in released and not leases.holds(record):
                        # this one and everything behind it in its lane, to keep key order
                        lost += [
                            r for r in itertools.islice(queue, i, None) if id(r) not in released
                        ]
                        break
            lost += [
                r
                for r in free
                if id(r) not in running and id(r) not in released and not leases.holds(r)
            ]
            if lost:
                log.info("releasing %d queued events this member no longer holds", len(lost))
                try:
                    await self._release(lost)
                except Exception as exc:  # scanned again next time
                    log.warning("releasing queued events failed: %r", exc)
                    continue
            # every record queued now was checked against this epoch (or fetched after it)
            self._epoch_checked = epoch

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
        delivery = sub.decode(record)
        if isinstance(delivery, SerializationError):
            await self._dead_letter(sub, record, delivery, record.attempt)
            return
        attempt = record.attempt
        sem = self._semaphore()
        obs = instruments()
        system = self.bus.transport.capabilities.transport
        rid = id(record)
        while True:
            try:
                async with sem:
                    if rid not in self._running:
                        if not self._may_start(record):
                            await self._give_back(record)
                            return
                        self._running.add(rid)
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
                    self._running.discard(rid)
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
                    extra=log_fields(record, self.group, delivery.event.id, attempt),
                )
                if await self._sleep_or_stop(
                    backoff_delay(attempt, self.backoff, self.max_backoff)
                ):
                    self._running.discard(rid)
                    return  # stopping: leave it un-acked, it comes back
                attempt += 1
                record.attempt = attempt
                continue
            self._running.discard(rid)
            if delivery.claim():
                acks.append(record)
                if self._ack_ready is not None:
                    self._ack_ready.set()
            self.stats.handled += 1
            return

    def _may_start(self, record: Record) -> bool:
        """After waiting for a slot: start ``record`` only if this member still holds it and
        the runner is not stopping. The lease is asked about only while some lease may have
        ended since the last scan of the queue (the epoch moved): the fast path asks nothing."""
        if self._stop_flag.is_set() or (self._released and id(record) in self._released):
            return False
        leases = self._leases
        return leases is None or leases.lease_epoch == self._epoch_checked or leases.holds(record)

    async def _give_back(self, record: Record) -> None:
        """A record not started goes back to the group unstarted (once)."""
        if self._leases is not None and id(record) not in self._released:
            await self._release([record])

    async def _give_up(
        self, sub: AsyncSubscription, record: Record, exc: Exception, attempt: int
    ) -> None:
        if sub.dead_letter_topic is None:
            await sub.consumer.nack(record, self.max_backoff)
            sub.count("nacked", 1, record.topic)
            self.stats.nacked += 1
            return
        if not await self._dead_letter(sub, record, exc, attempt):
            return
        event_id = record.headers.get("eb-id", b"").decode(errors="replace")
        log.error(
            "dead-lettered %s/%s/%s to %s after %d attempts: %r",
            record.topic,
            record.partition,
            record.offset,
            sub.dead_letter_topic,
            attempt,
            exc,
            extra=log_fields(record, self.group, event_id, attempt),
        )

    async def _dead_letter(
        self, sub: AsyncSubscription, record: Record, reason: Exception, attempt: int
    ) -> bool:
        """Dead-letter ``record``, retrying a failed write with backoff until it works or the
        runner stops (then it stays un-acked and comes back). True once written."""
        failures = 0
        while True:
            try:
                await sub.send_to_dead_letter(record, reason, attempt)
            except Exception as exc:  # the transport's failure: keep the record, try again
                failures += 1
                self.stats.dead_letter_failures += 1
                log.error(
                    "dead-letter write for %s/%s/%s failed (try %d, retrying): %r",
                    record.topic,
                    record.partition,
                    record.offset,
                    failures,
                    exc,
                    extra=log_fields(record, self.group, "", attempt),
                )
                if await self._sleep_or_stop(
                    backoff_delay(failures, self.backoff, self.max_backoff)
                ):
                    return False
                continue
            self.stats.dead_lettered += 1
            return True

    async def _sleep_or_stop(self, seconds: float) -> bool:
        assert self._wake is not None
        await wait_any(self._wake, self._wake, seconds)
        return self._stop_flag.is_set()

    _sem: asyncio.Semaphore | None = None
    _room: asyncio.Event
    _refill_at = 0
    """Fetch again once this few records are held."""
    _epoch_checked: object = None
    """The lease epoch every queued record was last checked against."""
    _ack_ready: asyncio.Event | None = None
    _flusher_done = False

    def _semaphore(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        return self._sem
