"""A group member over librdkafka's Consumer: one dedicated thread, leases, acks, commits.

Threading: every call into the librdkafka consumer (subscribe, poll, pause, commit, rebalance
callbacks, close) happens on one thread owned by the member (:class:`Worker`). Coroutines send
it small jobs and await their results through ``loop.call_soon_threadsafe``; the event loop is
never blocked. ``ack``, ``nack``, ``release`` and ``holds`` only touch in-memory state (under a
lock) and never wait for that thread.

Keepalive: between jobs the member thread polls librdkafka whenever no poll happened for
``min(1 s, max.poll.interval.ms / 4)``, whether or not the application calls ``fetch``. That
serves rebalance callbacks and resets librdkafka's max.poll.interval timer, so a member whose
handlers run for minutes stays in its group. What such a poll returns goes to the local buffer
of records not handed out yet; once that holds ``_BUFFER_CAP`` records the member pauses its
assigned partitions (librdkafka then returns no more messages and drops what it prefetched, to
fetch it again from the same position on resume), and the next ``fetch`` that makes room
resumes them. Partitions assigned while paused are paused too.

Leases: a record ``fetch`` returns is leased to the application until it is acked, nacked,
released, its partition leaves this member, or it was held for ``max_lease`` seconds. While
the partition stays here a live member keeps every lease (``redelivery_on_timeout`` is false;
``visibility_timeout`` is not used: the group notices a member that died or hangs after the
session timeout or ``max.poll.interval.ms``, and its partitions move).
:meth:`KafkaConsumer.holds` tells whether a record's lease is still on;
:meth:`KafkaConsumer.release` gives back records the application did not start: they stay
outstanding (nothing is committed past them) and ``fetch`` hands them out again at once
with the same ``attempt``. A record held past ``max_lease`` is logged at WARNING and treated as
nacked with delay 0: it is handed out again (``attempt`` + 1) while its old handler may still
run, and the old copy's ack still counts (its nack or release is ignored).

Commits, their metadata and rebalances: see :mod:`eventbus.adapters.kafka._membership`, the
base class that owns the per-partition state and the rebalance callbacks.

Nacks: a nacked record stays outstanding and waits in a local delay queue; ``fetch`` hands it
out again once its delay is over, with ``attempt`` + 1, while later records of the partition
keep flowing.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
)

from eventbus.adapters.kafka._errors import translate
from eventbus.adapters.kafka._membership import GroupMembership
from eventbus.adapters.kafka._partition import Lease, PartitionState, to_record
from eventbus.adapters.kafka._worker import Worker
from eventbus.errors import (
    AuthenticationError,
    ClosedError,
    ConfigurationError,
    OperationTimeoutError,
)
from eventbus.transport import ConsumerOptions, Outgoing, Position, Record, offset_key

__all__ = ["KafkaConsumer"]

log = logging.getLogger("eventbus.kafka")
T = TypeVar("T")
PublishFn = Callable[[str, Sequence[Outgoing]], Awaitable[list[Position]]]

_BUFFER_CAP = 500
"""Records fetched but not handed out above which the keepalive pauses the partitions."""
_ACK_COMMIT_EVERY = 0.005
"""Seconds between asynchronous commits after acks: one covers every ack before it, and a
synchronous one held the member thread (and so the next fetch) for up to hundreds of ms."""
_IGNORED = {KafkaError._PARTITION_EOF, KafkaError._NO_OFFSET}


class KafkaConsumer(GroupMembership):
    """A TransportConsumer: one member of a Kafka consumer group (see the module docstring)."""

    def __init__(
        self,
        config: dict[str, Any],
        topics: Sequence[str],
        options: ConsumerOptions,
        publish: PublishFn,
        where: str,
    ) -> None:
        super().__init__(config, options, where)
        self._topics = list(topics)
        self._publish = publish
        self._keepalive_every = max(0.05, min(1.0, self._max_poll_interval / 4))
        self._next_lease_check = 0.0
        self._last_ack_commit = 0.0
        self._last_fetch_commit = 0.0
        self._ack_commit_due = False
        """Acks wait for a commit that ``_tick`` sends once ``_ACK_COMMIT_EVERY`` has passed."""
        self._client_open = False
        """The librdkafka client exists and is not closed (set on the member thread)."""
        self._killed = False
        self._closed = False
        self._commit_queued = False
        self._worker = Worker(
            f"eventbus-kafka-consumer-{config.get('client.id', '')}", tick=self._tick
        )

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
            self._client_open = True
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
        self._client_open = False
        self._consumer.close()

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
        self._client_open = False
        if self._consumer is not None:
            self._consumer.close()

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
        if self._paused and len(self._buffer) - max_records < _BUFFER_CAP:
            self._set_paused(False)
        while True:
            self._poll_for(max_records, deadline)
            # hand out only now, after the last poll: a revoke inside a poll (which waits for
            # the records the application holds) can never concern records this call returns
            out = self._hand_out(max_records)
            # all skipped (done before) or dropped (revoked): wait on for others
            if out or self._error is not None or time.monotonic() >= deadline:
                break
        # record the deliveries in the commit metadata, at most once per _ACK_COMMIT_EVERY (a
        # fetch per event at 1,000 events/s sent 1,000 commits/s); one due sooner: _tick
        now = time.monotonic()
        if now - self._last_fetch_commit < _ACK_COMMIT_EVERY:
            self._ack_commit_due = True
        else:
            self._last_fetch_commit = now
            if not self._commit(list(self._parts), asynchronous=True):
                self._ack_commit_due = True  # held back by those in flight: _tick sends it
        return out

    def _poll_for(self, max_records: int, deadline: float) -> None:
        """Poll until ``max_records`` are buffered or due, or some are and no more come at
        once, or ``deadline`` passes."""
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

    def _poll_into_buffer(self, wait: float, limit: int = 500) -> None:
        try:
            first = self._consumer.poll(wait)
        finally:
            self._last_poll = time.monotonic()
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
        """Deliver up to ``limit`` records: due redeliveries first (nacked, released, lease
        ended), then buffered ones, each only if its partition is still ours (in the same
        assignment). Buffered records the previous owner recorded as done are skipped."""
        out: list[Record] = []
        now = time.monotonic()
        with self._lock:
            parts = self._parts
            while self._delayed and len(out) < limit and self._delayed[0][0] <= now:
                _, _, key, state, record = heapq.heappop(self._delayed)
                offset = record.offset
                if (
                    parts.get(key) is not state
                    or offset not in state.outstanding
                    or offset in state.leases  # handed out again already
                ):
                    continue
                out.append(state.deliver(record, now))
            buffer = self._buffer
            while buffer and len(out) < limit:
                state, record = buffer.popleft()
                if parts.get((record.topic, record.partition)) is not state:
                    continue
                offset = record.offset
                assert isinstance(offset, int)
                if offset < state.high:  # fetched again after a pause: handed out already
                    continue
                if state.committed <= offset < state.prior.high and state.prior.is_done(offset):
                    state.skip(offset)
                    continue
                out.append(state.deliver(record, now))
        return out

    # -- keepalive and leases (member thread) -------------------------------------------------

    def _tick(self) -> float | None:
        """Run between jobs on the member thread: end leases held past ``max_lease`` and poll
        when no poll happened for ``_keepalive_every`` s. Returns the seconds until the next
        tick is due (None while there is no open client)."""
        if not self._client_open:
            return None
        now = time.monotonic()
        if now >= self._next_lease_check:
            self._next_lease_check = now + self._keepalive_every
            self._end_expired_leases(now)
        if now - self._last_poll >= self._keepalive_every:
            self._keepalive()
            now = time.monotonic()
        due = min(self._last_poll + self._keepalive_every, self._next_lease_check)
        if self._ack_commit_due and not self._commits_backed_up():
            self._commit_after_acks(now)
            if self._ack_commit_due:
                due = min(due, self._last_ack_commit + _ACK_COMMIT_EVERY)
        return max(0.001, due - now)

    def _keepalive(self) -> None:
        """Poll without handing anything out: serves rebalance callbacks and resets the
        max.poll.interval timer. Pauses the partitions while the buffer is at its cap."""
        room = _BUFFER_CAP - len(self._buffer)
        if room <= 0 and not self._paused:
            self._set_paused(True)
        self._poll_into_buffer(0.0, max(1, room))
        if len(self._buffer) >= _BUFFER_CAP and not self._paused:
            self._set_paused(True)

    def _set_paused(self, paused: bool) -> None:
        """Pause (or resume) every assigned partition. Pausing makes librdkafka drop what it
        prefetched; it fetches again from after the last record polled when resumed."""
        assigned = self._consumer.assignment()
        if assigned:
            (self._consumer.pause if paused else self._consumer.resume)(assigned)
        self._paused = paused
        log.debug(
            "%s %d partitions (%d records fetched, not handed out)",
            "paused" if paused else "resumed",
            len(assigned),
            len(self._buffer),
        )

    def _end_expired_leases(self, now: float) -> None:
        """Treat records held past ``max_lease`` as nacked with delay 0: handed out again to
        this member (``attempt`` + 1) while their old handler may still run."""
        max_lease = self._options.max_lease
        expired: list[tuple[tuple[str, int], int, int, float]] = []
        with self._changed:
            for key, state in self._parts.items():
                if key in self._revoking:  # its revoke callback stops waiting by itself
                    continue
                for offset, lease in list(state.leases.items()):
                    if now - lease.since >= max_lease:
                        del state.leases[offset]
                        entry = (now, next(self._seq), key, state, lease.record)
                        heapq.heappush(self._delayed, entry)
                        expired.append((key, offset, lease.attempt, now - lease.since))
            if expired:
                self.lease_epoch += 1
                self._changed.notify_all()
        for (topic, partition), offset, attempt, held in expired:
            log.warning(
                "%s/%d/%d held for %.0f s, past max_lease=%.0f s (attempt %d): delivered "
                "again although its handler may still run",
                topic,
                partition,
                offset,
                held,
                max_lease,
                attempt,
            )

    # -- leases -------------------------------------------------------------------------------

    def _lease_of(self, record: Record) -> tuple[PartitionState, Lease] | None:
        """The partition and the lease ``record`` is for, if the application holds it (lock
        held by the caller)."""
        state = self._parts.get((record.topic, record.partition))
        offset = record.offset
        if state is None or not isinstance(offset, int):
            return None
        lease = state.leases.get(offset)
        return (state, lease) if lease is not None and lease.matches(record) else None

    def holds(self, record: Record) -> bool:
        """True while this member holds ``record``'s lease: handed out by ``fetch`` (this
        copy, not an earlier delivery of the same offset), not acked, nacked or released,
        its partition still this member's and not being revoked, and ``max_lease`` not
        passed. Cheap: a look-up under the lock, no thread hop."""
        with self._lock:
            held = self._lease_of(record)
            if held is None or (record.topic, record.partition) in self._revoking:
                return False
            return time.monotonic() - held[1].since < self._options.max_lease

    async def release(self, records: Sequence[Record]) -> None:
        """Give back records handed out that the application has not started. They stay
        outstanding (nothing is committed past them) and their delivery does not count: if
        the partition stays ours ``fetch`` hands them out again at once with the same
        ``attempt``; if it is being revoked, the next owner gets them with that attempt.
        A revoke stops waiting for them. Records this member does not hold are ignored."""
        if self._closed:
            return
        now = time.monotonic()
        with self._changed:
            # in offset order, so that they come back in order
            for record in sorted(
                records, key=lambda r: (r.topic, r.partition, offset_key(r.offset))
            ):
                held = self._lease_of(record)
                if held is None:
                    continue
                state, lease = held
                state.release(lease.offset)
                if state.key not in self._revoking:
                    entry = (now, next(self._seq), state.key, state, lease.record)
                    heapq.heappush(self._delayed, entry)
            self._changed.notify_all()

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
        # queued at the end of this loop turn: acks made one after another (ack each of a
        # fetched batch) share one job instead of waking the member's thread for each
        asyncio.get_running_loop().call_soon(self._worker.submit, self._commit_acked)

    def _commit_acked(self) -> None:
        with self._lock:
            self._commit_queued = False
        self._commit_after_acks(time.monotonic())

    def _commit_after_acks(self, now: float) -> None:
        """Commit what acks completed, asynchronously (its result comes back through
        ``_on_commit``, which resends a failure), at most every ``_ACK_COMMIT_EVERY`` s; a
        commit due sooner is left to ``_tick``. Revoke and close commit synchronously."""
        if self._consumer is None or self._killed:
            self._ack_commit_due = False
            return
        if now - self._last_ack_commit < _ACK_COMMIT_EVERY:
            self._ack_commit_due = True
            return
        self._ack_commit_due = False
        self._last_ack_commit = now
        try:
            if not self._commit(list(self._parts), asynchronous=True):
                self._ack_commit_due = True  # sent once a commit in flight is answered
        except KafkaException as exc:
            log.info("commit after ack failed (sent again with the next one): %s", exc)

    async def nack(self, record: Record, delay: float = 0.0) -> None:
        """Deliver ``record`` again to this member after ``delay`` s (if it still owns it)."""
        if self._closed:
            raise ClosedError("this consumer is closed; open a new one")
        with self._changed:
            held = self._lease_of(record)
            if held is None:
                return  # not held: settled already, or its lease ended (handed out again)
            state, lease = held
            del state.leases[lease.offset]
            due = time.monotonic() + max(0.0, delay)
            heapq.heappush(self._delayed, (due, next(self._seq), state.key, state, record))
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
