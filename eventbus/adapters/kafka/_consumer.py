"""A group member over librdkafka's Consumer: one dedicated thread, acks, nacks, commits.

Threading: every call into the librdkafka consumer (subscribe, poll, commit, rebalance
callbacks, close) happens on one thread owned by the member (:class:`_Worker`). Coroutines send
it small jobs and await their results through ``loop.call_soon_threadsafe``; the event loop is
never blocked. ``ack`` and ``nack`` only update in-memory state (under a lock).

Commit strategy (at-least-once): ``enable.auto.commit=false``. Per partition the member tracks
the offsets it handed to the application and has not acked yet (``outstanding``) and the next
offset after the last one handed out (``high``). Records librdkafka fetched but ``fetch`` has
not returned yet sit in a local buffer and count for nothing: they are not delivered. The
committable position is ``min(outstanding)``, or ``high`` when nothing is outstanding: only the
contiguous acked prefix, whatever order acks arrive in, and offset gaps (compaction,
transaction markers) never stall it. Commits go out from the member's thread: after acks (one
queued commit job covers every ack before it runs), at the end of every ``fetch`` that changed
something (asynchronously, to record deliveries), synchronously on revoke and on ``close``. A
failed commit (say, ``REBALANCE_IN_PROGRESS`` during a rebalance) is sent again with the next
one while the partition is still ours. ``ack`` itself only records offsets (under a lock) and
queues a commit job: it never waits for the member's thread, which may be inside a rebalance
callback waiting for that very ack.

Rebalances (cooperative-sticky): partitions the member keeps are untouched. For each partition
it gives up, the revoke callback (member thread, inside ``poll``) 1. drops buffered records of
it that were never handed out, 2. waits until every record of it that the application holds is
acked, or its visibility timeout (counted from its delivery) has passed — so the next owner
never reads past a record still being worked on, and per-key order holds — 3. commits the acked
prefix synchronously (always sent, even if an asynchronous commit of the same offset may still
be in flight; retried briefly on ``REBALANCE_IN_PROGRESS``), 4. forgets the partition: later
acks of its records are ignored. ``fetch`` never returns a record of a partition that was
revoked during that call. Records waiting in the nack delay queue are not waited for.
``kill`` lets commit jobs of acks made before it run, then closes the client without
committing anything more.

Nacks and delivery counts: a nacked record stays outstanding (nothing is committed past it)
and waits in a local delay queue; ``fetch`` hands it out again once its delay is over, with
``attempt`` + 1, while later records of the partition keep flowing. Delivery counts survive a
restart or rebalance in the commit's metadata string, ``"eb1 <high> <offset>:<count>,..."``:
every offset in ``[committed, high)`` was delivered at least once, and the listed ones that many
times. The next owner reads it back on assignment, so a record redelivered after a crash comes
with ``attempt`` = deliveries so far + 1 (the last fetch before a crash may be counted once
short, since its commit may not have reached the broker).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from eventbus.adapters.kafka._admin import to_ms
from eventbus.adapters.kafka._errors import kafka_error, translate
from eventbus.errors import (
    AuthenticationError,
    ClosedError,
    ConfigurationError,
    OperationTimeoutError,
)
from eventbus.transport import ConsumerOptions, Outgoing, Position, Record

__all__ = ["KafkaConsumer", "decode_metadata", "encode_metadata", "to_record"]

log = logging.getLogger("eventbus.kafka")
T = TypeVar("T")
PublishFn = Callable[[str, Sequence[Outgoing]], Awaitable[list[Position]]]

_METADATA_BUDGET = 3500
"""Characters of commit metadata we use (Kafka's offset.metadata.max.bytes defaults to 4096)."""
_IGNORED = {KafkaError._PARTITION_EOF, KafkaError._NO_OFFSET}
_RETRY_ON_REVOKE = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TIMED_OUT,
}
"""Commit errors that may clear up within a revoke callback (the group is syncing)."""
_RETRY_ON_CLOSE = _RETRY_ON_REVOKE | {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
}
"""Commit errors the final commit waits out: the group moved to a new generation (another
member left) and this member rejoins while it polls; partitions it no longer owns after that
are dropped by the rebalance callbacks those polls serve, so the retry commits only its own."""


def encode_metadata(high: int, counts: Mapping[int, int]) -> str:
    """Commit metadata recording delivery counts above the committed offset."""
    parts: list[str] = []
    used = 0
    for offset in sorted(o for o, c in counts.items() if c > 1):
        item = f"{offset}:{counts[offset]}"
        used += len(item) + 1
        if used > _METADATA_BUDGET:
            break
        parts.append(item)
    return f"eb1 {high} {','.join(parts)}".rstrip()


def decode_metadata(text: str | None) -> tuple[int, dict[int, int]]:
    """``(high, counts)`` from commit metadata; ``(-1, {})`` for anything not ours."""
    if not text or not text.startswith("eb1 "):
        return -1, {}
    fields = text.split(" ")
    try:
        high = int(fields[1])
        counts = {}
        for item in fields[2].split(",") if len(fields) > 2 and fields[2] else []:
            offset, _, count = item.partition(":")
            counts[int(offset)] = int(count)
    except (ValueError, IndexError):
        return -1, {}
    return high, counts


def to_record(msg: Any, attempt: int = 1) -> Record:
    """A Record from a librdkafka message (tombstones read as empty bytes)."""
    raw = msg.headers()
    headers = dict(raw) if raw else {}
    if None in headers.values():  # a header without a value (allowed by Kafka)
        headers = {k: (v if v is not None else b"") for k, v in headers.items()}
    _, timestamp = msg.timestamp()
    return Record(
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        value=msg.value() or b"",
        key=msg.key(),
        headers=headers,
        timestamp_ms=max(0, timestamp),
        attempt=attempt,
    )


@dataclass(eq=False)
class _Partition:
    """What one member knows about one of its partitions."""

    committed: int
    """The offset the group has committed (next to read), or -1."""
    high: int = -1
    """Next offset after the last record fetched, or -1 before the first fetch."""
    outstanding: set[int] = field(default_factory=set)
    counts: dict[int, int] = field(default_factory=dict)
    """Deliveries so far of outstanding offsets."""
    prior_high: int = -1
    prior_counts: dict[int, int] = field(default_factory=dict)
    """Delivery counts read back from the commit metadata at assignment."""
    sent: tuple[int, str] | None = None
    """The last (offset, metadata) committed."""
    delivered_at: dict[int, float] = field(default_factory=dict)
    """When each outstanding offset was last handed out (monotonic seconds)."""
    nacked: set[int] = field(default_factory=set)
    """Outstanding offsets waiting in the delay queue (the application does not hold them)."""

    def deliver(self, offset: int, now: float) -> int:
        """Record a hand-out of ``offset`` and return its attempt number."""
        if offset in self.outstanding:
            attempt = self.counts.get(offset, 1) + 1
        else:
            attempt = self.first_attempt(offset)
            self.outstanding.add(offset)
            self.high = max(self.high, offset + 1)
        self.counts[offset] = attempt
        self.delivered_at[offset] = now
        self.nacked.discard(offset)
        return attempt

    def done(self, offset: int) -> None:
        self.outstanding.discard(offset)
        self.counts.pop(offset, None)
        self.delivered_at.pop(offset, None)
        self.nacked.discard(offset)

    def held_until(self, visibility_timeout: float) -> float | None:
        """When the last record the application holds times out, or None if it holds none."""
        held = [self.delivered_at[o] for o in self.outstanding if o not in self.nacked]
        return max(held) + visibility_timeout if held else None

    def first_attempt(self, offset: int) -> int:
        if self.committed <= offset < self.prior_high:
            return self.prior_counts.get(offset, 1) + 1
        return 1

    def position(self, force: bool = False) -> tuple[int, str] | None:
        """The commit to send now, or None when nothing changed (unless ``force``)."""
        if self.high < 0:
            return None
        offset = min(self.outstanding) if self.outstanding else self.high
        # keep what the previous owner recorded for offsets we have not fetched again yet
        counts = {o: c for o, c in self.prior_counts.items() if o >= self.high}
        counts.update((o, c) for o, c in self.counts.items() if o >= offset)
        commit = (offset, encode_metadata(max(self.high, self.prior_high), counts))
        return None if commit == self.sent and not force else commit


class _Worker:
    """One thread running jobs in order; results come back as asyncio futures."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[
            tuple[Callable[[], Any], asyncio.Future[Any] | concurrent.futures.Future[Any]] | None
        ] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            try:
                result = fn()
            except BaseException as exc:
                self._settle(future, None, exc)
            else:
                self._settle(future, result, None)

    @staticmethod
    def _settle(
        future: asyncio.Future[Any] | concurrent.futures.Future[Any],
        result: Any,
        exc: BaseException | None,
    ) -> None:
        if isinstance(future, concurrent.futures.Future):  # fire and forget
            if exc is not None:
                log.warning("background job failed: %r", exc)
            return

        def settle() -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            future.get_loop().call_soon_threadsafe(settle)

    def submit(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the thread without waiting for it (errors are logged)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fn, future))

    async def run(self, fn: Callable[[], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, future))
        return await future

    def stop(self) -> None:
        self._jobs.put(None)


class KafkaConsumer:
    """A TransportConsumer: one member of a Kafka consumer group (see the module docstring)."""

    def __init__(
        self,
        config: dict[str, Any],
        topics: Sequence[str],
        options: ConsumerOptions,
        publish: PublishFn,
        where: str,
    ) -> None:
        self._config = config
        self._topics = list(topics)
        self._options = options
        self._publish = publish
        self._where = where
        self._lock = threading.Lock()
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._changed = threading.Condition(self._lock)
        """Notified (with the lock held) when an ack, nack or stop may end a revoke's wait."""
        self._delayed: list[tuple[float, int, tuple[str, int], _Partition, Record]] = []
        self._seq = itertools.count()
        self._buffer: deque[tuple[_Partition, Record]] = deque()
        """Fetched from librdkafka, not handed out yet (not delivered: tracked nowhere)."""
        self._assigned_once = threading.Event()
        self._killed = False
        self._stopping = False
        """Set at once by close/kill: a revoke callback stops waiting for acks."""
        self._killing = False
        """Set at once by kill: a revoke callback commits nothing."""
        self._in_close = False
        """Set on the member thread just before the client's close()."""
        self._closed = False
        self._commit_queued = False
        self._error: BaseException | None = None
        self._worker = _Worker(f"eventbus-kafka-consumer-{config.get('client.id', '')}")
        self._consumer: Any = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        """Create the client, subscribe, and wait until the group assigned us (maybe nothing)."""
        await self._worker.run(self._start_blocking)
        deadline = time.monotonic() + timeout
        while not self._assigned_once.is_set():
            if time.monotonic() > deadline:
                await self.kill()
                raise OperationTimeoutError(
                    f"joining consumer group {self._config['group.id']!r} at {self._where} "
                    f"took longer than {timeout} s; is the group coordinator available?"
                )
            await self._worker.run(lambda: self._poll_into_buffer(0.2))
            self._raise_pending()

    def _start_blocking(self) -> None:
        try:
            self._consumer = Consumer(
                {**self._config, "on_commit": self._on_commit}, error_cb=self._on_error
            )
            self._consumer.subscribe(
                self._topics,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except KafkaException as exc:
            raise translate(exc, "joining the consumer group", where=self._where) from None

    def _on_error(self, err: Any) -> None:
        if err.fatal() or err.code() in (KafkaError._AUTHENTICATION, KafkaError._ALL_BROKERS_DOWN):
            error = translate(err, "consuming", where=self._where)
            # librdkafka follows a refused login at once with "all brokers down": keep the cause
            if not isinstance(self._error, AuthenticationError):
                self._error = error

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def close(self) -> None:
        """Commit the acked prefix of every partition, leave the group, stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._stop_waiting()
        try:
            await self._worker.run(self._close_blocking)
        finally:
            self._worker.stop()

    def _stop_waiting(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def _close_blocking(self) -> None:
        if self._consumer is None:
            return
        self._final_commit()
        self._in_close = True
        self._consumer.close()

    def _final_commit(self) -> None:
        """Commit the acked prefix before leaving. While the group completes a rebalance the
        broker answers REBALANCE_IN_PROGRESS (or ILLEGAL_GENERATION once the new generation
        formed) until this member has rejoined and synced, which happens only while it polls:
        so poll briefly and send again, up to a deadline. What such a poll fetches is never
        handed out (and never committed)."""
        deadline = time.monotonic() + min(10.0, self._options.session_timeout)
        while True:
            try:
                self._commit(list(self._parts), asynchronous=False, force=True)
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                code = err.code() if err is not None else None
                if code not in _RETRY_ON_CLOSE or time.monotonic() > deadline:
                    log.warning(
                        "final commit failed (records after the last commit will be "
                        "delivered again): %s",
                        exc,
                    )
                    return
                log.info("final commit deferred until the group settles: %s", exc)
            self._consumer.poll(0.1)

    async def kill(self) -> None:
        """Stop without committing anything more. Commit jobs already queued for acks made
        before ``kill`` still run first (those acks returned: they count). The client still
        says goodbye to the broker (librdkafka cannot vanish silently), so the group gets the
        partitions back at once, at the last committed offsets; what this member had not
        acked is delivered again."""
        if self._closed:
            return
        self._closed = True
        self._killing = True
        self._stop_waiting()
        try:
            await self._worker.run(self._kill_blocking)
        finally:
            self._worker.stop()

    def _kill_blocking(self) -> None:
        self._killed = True
        if self._consumer is not None:
            self._consumer.close()

    # -- rebalance callbacks (worker thread) --------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        try:
            self._assign(consumer, partitions)
        except KafkaException as exc:
            self._error = translate(exc, "taking over partitions", where=self._where)
            consumer.incremental_assign(partitions)
        finally:
            self._assigned_once.set()

    def _assign(self, consumer: Any, partitions: list[Any]) -> None:
        if not partitions:
            consumer.incremental_assign(partitions)
            return
        committed = consumer.committed(partitions, timeout=self._options.session_timeout)
        starts = self._start_offsets(consumer, [tp for tp in committed if tp.offset < 0])
        assign: list[Any] = []
        initial: list[Any] = []
        with self._lock:
            for tp in committed:
                key = (tp.topic, tp.partition)
                if tp.offset >= 0:
                    state = _Partition(committed=tp.offset, high=tp.offset)
                    state.prior_high, state.prior_counts = decode_metadata(tp.metadata)
                    state.sent = (tp.offset, tp.metadata or "")
                    offset = tp.offset
                else:
                    offset = starts[key]
                    state = _Partition(committed=offset, high=offset)
                    state.sent = (offset, encode_metadata(offset, {}))
                    initial.append(TopicPartition(tp.topic, tp.partition, offset, state.sent[1]))
                self._parts[key] = state
                assign.append(TopicPartition(tp.topic, tp.partition, offset))
        consumer.incremental_assign(assign)
        if initial:  # the group now exists at options.start, even if we never fetch
            consumer.commit(offsets=initial, asynchronous=True)

    def _start_offsets(self, consumer: Any, fresh: list[Any]) -> dict[tuple[str, int], int]:
        """Where a new group starts in each partition, resolved now (no race with publishers)."""
        start = self._options.start
        out: dict[tuple[str, int], int] = {}
        timeout = self._options.session_timeout
        by_time: dict[tuple[str, int], int] = {}
        if isinstance(start, datetime) and fresh:
            ms = to_ms(start)
            query = [TopicPartition(tp.topic, tp.partition, ms) for tp in fresh]
            for tp in consumer.offsets_for_times(query, timeout=timeout):
                by_time[(tp.topic, tp.partition)] = tp.offset
        for tp in fresh:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=timeout, cached=False
            )
            key = (tp.topic, tp.partition)
            if start == "earliest":
                out[key] = low
            elif start == "latest":
                out[key] = high
            else:
                found = by_time.get(key, -1)
                out[key] = found if found >= 0 else high
        return out

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        # inside close(), which committed just before (a commit now fails and can wedge the
        # close); after kill(), nothing more is committed
        if not self._killing and not self._in_close:
            self._await_held(keys)
            self._commit_on_revoke(keys)
        self._drop(keys)

    def _await_held(self, keys: list[tuple[str, int]]) -> None:
        """Wait until the application acked every record of ``keys`` it holds, or each timed
        out (visibility timeout from its delivery), so the next owner does not read past
        them. Bounded below librdkafka's max.poll.interval.ms; close/kill end it at once."""
        cap = time.monotonic() + self._max_wait()
        waited = False
        with self._changed:
            while not self._stopping:
                states = [self._parts[k] for k in keys if k in self._parts]
                ends = [
                    e
                    for e in (s.held_until(self._options.visibility_timeout) for s in states)
                    if e is not None
                ]
                now = time.monotonic()
                until = min(max(ends), cap) if ends else now
                if until <= now:
                    break
                if not waited:
                    waited = True
                    log.info(
                        "partitions %s move to another member: waiting up to %.1f s for acks "
                        "of the records this member still holds",
                        keys,
                        until - now,
                    )
                self._changed.wait(until - now)

    def _max_wait(self) -> float:
        """The longest a revoke may wait: the visibility timeout, and safely below
        max.poll.interval.ms (librdkafka drops a member that does not poll for that long)."""
        interval = float(self._config.get("max.poll.interval.ms", 300_000)) / 1000
        return max(0.0, min(self._options.visibility_timeout, interval * 0.8))

    def _commit_on_revoke(self, keys: list[tuple[str, int]]) -> None:
        """Commit the acked prefix of partitions being given up, synchronously and always
        (an asynchronous commit of the same offset may still be in flight and fail); retried
        briefly while the group is still syncing."""
        deadline = time.monotonic() + min(5.0, self._options.session_timeout)
        delay = 0.05
        while True:
            try:
                self._commit(keys, asynchronous=False, force=True)
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                code = err.code() if err is not None else None
                if code not in _RETRY_ON_REVOKE or time.monotonic() + delay > deadline:
                    log.warning(
                        "commit on revoke failed (records after the last commit will be "
                        "delivered again): %s",
                        exc,
                    )
                    return
            time.sleep(delay)  # retry backoff inside the rebalance callback
            delay = min(delay * 2, 0.5)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        log.warning(
            "partitions lost without a chance to commit (records not committed will be "
            "delivered again): %s",
            [(tp.topic, tp.partition) for tp in partitions],
        )
        self._drop([(tp.topic, tp.partition) for tp in partitions])

    def _drop(self, keys: list[tuple[str, int]]) -> None:
        """Forget partitions (revoked or lost): later acks of their records are ignored."""
        with self._lock:
            gone = {id(self._parts.pop(key)) for key in keys if key in self._parts}
            self._delayed = [d for d in self._delayed if self._parts.get(d[2]) is d[3]]
            heapq.heapify(self._delayed)
            if gone:
                self._buffer = deque(e for e in self._buffer if id(e[0]) not in gone)

    def _commit(
        self, keys: list[tuple[str, int]], *, asynchronous: bool, force: bool = False
    ) -> None:
        offsets: list[Any] = []
        with self._lock:
            for key in keys:
                state = self._parts.get(key)
                commit = state.position(force) if state is not None else None
                if state is not None and commit is not None:
                    offsets.append(TopicPartition(key[0], key[1], commit[0], commit[1]))
                    state.sent = commit
                    state.committed = commit[0]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException:
            self._commit_failed(offsets)
            raise

    def _on_commit(self, err: Any, partitions: list[Any]) -> None:
        """Commit result (worker thread, inside poll): a failed commit is sent again later."""
        failed = [tp for tp in partitions if err is not None or tp.error is not None]
        if failed:
            log.info("commit failed, will retry: %s", err or failed[0].error)
            self._commit_failed(failed)

    def _commit_failed(self, partitions: list[Any]) -> None:
        with self._lock:
            for tp in partitions:
                state = self._parts.get((tp.topic, tp.partition))
                if state is not None:
                    state.sent = None

    # -- fetching ---------------------------------------------------------------------------

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` records: due redeliveries first, then new ones from Kafka."""
        if self._closed:
            raise ClosedError("this consumer is closed; open a new one")
        if max_records < 1:
            return []
        records = await self._worker.run(lambda: self._fetch_blocking(max_records, timeout))
        self._raise_pending()
        return records

    def _fetch_blocking(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + max(0.0, timeout)
        while self._error is None:
            now = time.monotonic()
            ready = len(self._buffer) + self._due_count(now, max_records)
            if ready >= max_records:
                break
            wait = 0.0 if ready else max(0.0, deadline - now)
            if self._delayed:
                wait = min(wait, max(0.0, self._delayed[0][0] - now))
            self._poll_into_buffer(wait, max_records - ready)
            if ready or self._buffer or self._due_count(time.monotonic(), 1):
                break
            if time.monotonic() >= deadline:
                break
        # hand out only now, after the last poll: a revoke inside a poll (which waits for the
        # records the application holds) can never concern records this call returns
        out = self._hand_out(max_records)
        self._commit(list(self._parts), asynchronous=True)
        return out

    def _poll_into_buffer(self, wait: float, limit: int = 500) -> None:
        first = self._consumer.poll(wait)
        if first is None:
            return
        msgs = [first]
        if limit > 1:
            msgs.extend(self._consumer.consume(num_messages=limit - 1, timeout=0))
        with self._lock:
            parts = self._parts
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    self._on_message_error(err)
                    continue
                state = parts.get((msg.topic(), msg.partition()))
                if state is not None:  # else: not ours any more
                    self._buffer.append((state, to_record(msg)))

    def _on_message_error(self, err: Any) -> None:
        if err.code() in _IGNORED:
            return
        if err.code() == KafkaError.INVALID_SESSION_TIMEOUT:
            self._error = ConfigurationError(
                f"the broker refused session_timeout={self._options.session_timeout} s: it must "
                "lie within the broker's group.min/max.session.timeout.ms"
            )
        elif err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART,):
            self._error = translate(err, "consuming", where=self._where)
        else:
            log.warning("consumer error (librdkafka retries): %s", err.str())

    def _due_count(self, now: float, limit: int) -> int:
        count = 0
        for due, *_ in self._delayed:
            if due <= now:
                count += 1
                if count >= limit:
                    break
        return count

    def _hand_out(self, limit: int) -> list[Record]:
        """Deliver up to ``limit`` records: due redeliveries first, then buffered ones, each
        only if its partition is still ours (in the same assignment)."""
        out: list[Record] = []
        now = time.monotonic()
        with self._lock:
            parts = self._parts
            while self._delayed and len(out) < limit and self._delayed[0][0] <= now:
                _, _, key, state, record = heapq.heappop(self._delayed)
                offset = record.offset
                if parts.get(key) is not state or offset not in state.outstanding:
                    continue
                assert isinstance(offset, int)
                out.append(replace(record, attempt=state.deliver(offset, now)))
            buffer = self._buffer
            while buffer and len(out) < limit:
                state, record = buffer.popleft()
                if parts.get((record.topic, record.partition)) is not state:
                    continue
                assert isinstance(record.offset, int)
                attempt = state.deliver(record.offset, now)
                if attempt != 1:
                    record.attempt = attempt
                out.append(record)
        return out

    # -- acks -------------------------------------------------------------------------------

    async def ack(self, records: Sequence[Record]) -> None:
        """Mark records done. Idempotent. The member's thread commits the new prefix as soon
        as it is free (one commit job queued at a time, covering every ack before it runs);
        ack does not wait for it. Acks of records this member no longer owns are ignored."""
        with self._changed:
            for record in records:
                state = self._parts.get((record.topic, record.partition))
                if state is not None and isinstance(record.offset, int):
                    state.done(record.offset)
            self._changed.notify_all()
            if self._commit_queued or self._closed:
                return
            self._commit_queued = True
        self._worker.submit(self._commit_acked)

    def _commit_acked(self) -> None:
        with self._lock:
            self._commit_queued = False
        if self._consumer is not None and not self._killed:
            try:
                self._commit(list(self._parts), asynchronous=False)
            except KafkaException as exc:
                log.info("commit after ack failed (sent again with the next one): %s", exc)

    async def nack(self, record: Record, delay: float = 0.0) -> None:
        """Deliver ``record`` again to this member after ``delay`` s (if it still owns it)."""
        if self._closed:
            raise ClosedError("this consumer is closed; open a new one")
        key = (record.topic, record.partition)
        with self._changed:
            state = self._parts.get(key)
            if state is None or record.offset not in state.outstanding:
                return
            assert isinstance(record.offset, int)
            state.nacked.add(record.offset)
            due = time.monotonic() + max(0.0, delay)
            heapq.heappush(self._delayed, (due, next(self._seq), key, state, record))
            self._changed.notify_all()

    async def dead_letter(self, record: Record, topic: str, headers: Mapping[str, bytes]) -> None:
        """Publish a copy to ``topic`` and wait for the broker, then ack (not atomic)."""
        copy = Outgoing(
            value=record.value,
            key=record.key,
            headers={**record.headers, **headers},
        )
        await self._publish(topic, [copy])
        await self.ack([record])
