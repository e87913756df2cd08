"""A group member over librdkafka's Consumer: one dedicated thread, acks, nacks, commits.

Threading: every call into the librdkafka consumer (subscribe, poll, commit, rebalance
callbacks, close) happens on one thread owned by the member (:class:`_Worker`). Coroutines send
it small jobs and await their results through ``loop.call_soon_threadsafe``; the event loop is
never blocked. ``ack`` and ``nack`` only update in-memory state (under a lock).

Commit strategy (at-least-once): ``enable.auto.commit=false``. Per partition the member tracks
the offsets it fetched and has not acked yet (``outstanding``) and the next offset after the
last fetched record (``high``). The committable position is ``min(outstanding)``, or ``high``
when nothing is outstanding: only the contiguous acked prefix, whatever order acks arrive in,
and offset gaps (compaction, transaction markers) never stall it. Commits go out from the
member's thread: after acks (one queued commit job covers every ack before it runs), at the end
of every ``fetch`` that changed something (asynchronously, to record deliveries), synchronously
on revoke and on ``close``. A failed commit (say, during a rebalance) is sent again with the
next one. ``kill`` closes the client without committing anything more.

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
from eventbus.adapters.kafka._errors import translate
from eventbus.errors import ClosedError, ConfigurationError, OperationTimeoutError
from eventbus.transport import ConsumerOptions, Outgoing, Position, Record

__all__ = ["KafkaConsumer", "decode_metadata", "encode_metadata", "to_record"]

log = logging.getLogger("eventbus.kafka")
T = TypeVar("T")
PublishFn = Callable[[str, Sequence[Outgoing]], Awaitable[list[Position]]]

_METADATA_BUDGET = 3500
"""Characters of commit metadata we use (Kafka's offset.metadata.max.bytes defaults to 4096)."""
_IGNORED = {KafkaError._PARTITION_EOF, KafkaError._NO_OFFSET}


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
    headers = {k: (v if v is not None else b"") for k, v in (msg.headers() or [])}
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

    def first_attempt(self, offset: int) -> int:
        if self.committed <= offset < self.prior_high:
            return self.prior_counts.get(offset, 1) + 1
        return 1

    def position(self) -> tuple[int, str] | None:
        """The commit to send now, or None when nothing changed."""
        if self.high < 0:
            return None
        offset = min(self.outstanding) if self.outstanding else self.high
        # keep what the previous owner recorded for offsets we have not fetched again yet
        counts = {o: c for o, c in self.prior_counts.items() if o >= self.high}
        counts.update((o, c) for o, c in self.counts.items() if o >= offset)
        commit = (offset, encode_metadata(max(self.high, self.prior_high), counts))
        return None if commit == self.sent else commit


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
        self._delayed: list[tuple[float, int, tuple[str, int], _Partition, Record]] = []
        self._seq = itertools.count()
        self._buffer: list[Record] = []
        self._assigned_once = threading.Event()
        self._killed = False
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
            self._error = translate(err, "consuming", where=self._where)

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def close(self) -> None:
        """Commit the acked prefix of every partition, leave the group, stop the thread."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._worker.run(self._close_blocking)
        finally:
            self._worker.stop()

    def _close_blocking(self) -> None:
        if self._consumer is None:
            return
        try:
            self._commit(list(self._parts), asynchronous=False)
        except KafkaException as exc:
            log.warning("final commit failed: %s", exc)
        self._consumer.close()

    async def kill(self) -> None:
        """Stop without committing. The client still says goodbye to the broker (librdkafka
        cannot vanish silently), so the group gets the partitions back at once, at the last
        committed offsets; what this member had not committed is delivered again."""
        if self._closed:
            return
        self._closed = True
        self._killed = True
        try:
            await self._worker.run(lambda: self._consumer and self._consumer.close())
        finally:
            self._worker.stop()

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
        if not self._killed:
            try:
                self._commit(keys, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke failed: %s", exc)
        self._drop(keys)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        log.warning(
            "partitions lost without a chance to commit (records not committed will be "
            "delivered again): %s",
            [(tp.topic, tp.partition) for tp in partitions],
        )
        self._drop([(tp.topic, tp.partition) for tp in partitions])

    def _drop(self, keys: list[tuple[str, int]]) -> None:
        with self._lock:
            for key in keys:
                self._parts.pop(key, None)
            self._delayed = [d for d in self._delayed if self._parts.get(d[2]) is d[3]]
            heapq.heapify(self._delayed)

    def _commit(self, keys: list[tuple[str, int]], *, asynchronous: bool) -> None:
        offsets: list[Any] = []
        with self._lock:
            for key in keys:
                state = self._parts.get(key)
                commit = state.position() if state is not None else None
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
        out = self._take_buffer(max_records)
        while True:
            out.extend(self._due(max_records - len(out)))
            if len(out) >= max_records or self._error is not None:
                break
            now = time.monotonic()
            wait = 0.0 if out else max(0.0, deadline - now)
            if self._delayed:
                wait = min(wait, max(0.0, self._delayed[0][0] - now))
            self._poll_into_buffer(wait, max_records - len(out))
            out.extend(self._take_buffer(max_records - len(out)))
            if out or time.monotonic() >= deadline:
                break
        self._commit(list(self._parts), asynchronous=True)
        return out

    def _poll_into_buffer(self, wait: float, limit: int = 500) -> None:
        first = self._consumer.poll(wait)
        if first is None:
            return
        msgs = [first]
        if limit > 1:
            msgs.extend(self._consumer.consume(num_messages=limit - 1, timeout=0))
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self._on_message_error(err)
                continue
            record = self._track(msg)
            if record is not None:
                self._buffer.append(record)

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

    def _track(self, msg: Any) -> Record | None:
        key = (msg.topic(), msg.partition())
        offset = msg.offset()
        with self._lock:
            state = self._parts.get(key)
            if state is None:
                return None  # not ours any more
            attempt = state.first_attempt(offset)
            state.outstanding.add(offset)
            state.counts[offset] = attempt
            state.high = max(state.high, offset + 1)
        return to_record(msg, attempt)

    def _take_buffer(self, limit: int) -> list[Record]:
        taken, self._buffer = self._buffer[:limit], self._buffer[limit:]
        return taken

    def _due(self, limit: int) -> list[Record]:
        out: list[Record] = []
        now = time.monotonic()
        with self._lock:
            while self._delayed and len(out) < limit and self._delayed[0][0] <= now:
                _, _, key, state, record = heapq.heappop(self._delayed)
                if self._parts.get(key) is not state or record.offset not in state.outstanding:
                    continue
                assert isinstance(record.offset, int)
                state.counts[record.offset] = state.counts.get(record.offset, 1) + 1
                out.append(replace(record, attempt=state.counts[record.offset]))
        return out

    # -- acks -------------------------------------------------------------------------------

    async def ack(self, records: Sequence[Record]) -> None:
        """Mark records done. Idempotent. The member's thread commits the new prefix as soon
        as it is free (one commit job queued at a time, covering every ack before it runs);
        ack does not wait for it. Acks of records this member no longer owns are ignored."""
        with self._lock:
            for record in records:
                state = self._parts.get((record.topic, record.partition))
                if state is not None and isinstance(record.offset, int):
                    state.outstanding.discard(record.offset)
                    state.counts.pop(record.offset, None)
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
                log.warning("commit after ack failed (retried with the next one): %s", exc)

    async def nack(self, record: Record, delay: float = 0.0) -> None:
        """Deliver ``record`` again to this member after ``delay`` s (if it still owns it)."""
        if self._closed:
            raise ClosedError("this consumer is closed; open a new one")
        key = (record.topic, record.partition)
        with self._lock:
            state = self._parts.get(key)
            if state is None or record.offset not in state.outstanding:
                return
            due = time.monotonic() + max(0.0, delay)
            heapq.heappush(self._delayed, (due, next(self._seq), key, state, record))

    async def dead_letter(self, record: Record, topic: str, headers: Mapping[str, bytes]) -> None:
        """Publish a copy to ``topic`` and wait for the broker, then ack (not atomic)."""
        copy = Outgoing(
            value=record.value,
            key=record.key,
            headers={**record.headers, **headers},
        )
        await self._publish(topic, [copy])
        await self.ack([record])
