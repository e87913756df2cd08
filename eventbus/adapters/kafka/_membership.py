"""Group membership of a Kafka consumer: the state a member keeps about its partitions, the
rebalance callbacks that change it, and the commits of its acked prefixes. Every method here
runs on the member's thread (inside a poll, or a job); :class:`KafkaConsumer` in
``_consumer.py`` builds the application-facing side (fetch, leases, acks) on this base.

Commit strategy (at-least-once): ``enable.auto.commit=false``. Per partition the member tracks
the offsets it handed to the application and has not acked yet (``outstanding``: leased, waiting
in the delay queue, or released) and the next offset after the last one handed out (``high``).
Records librdkafka fetched but ``fetch`` has not returned yet sit in the local buffer and count
for nothing: they are not delivered. The committable position is ``min(outstanding)``, or
``high`` when nothing is outstanding: only the contiguous acked prefix, whatever order acks
arrive in, and offset gaps (compaction, transaction markers) never stall it. Commits go out from
the member's thread: after acks (one queued commit job covers every ack before it runs) and at
the end of every ``fetch`` that changed something (to record deliveries), asynchronously and
at most once per 5 ms (one due sooner is sent by the keepalive tick; a fetch per event at
1,000 events/s sent 1,000 commits/s before), and synchronously on revoke and on ``close``.
A failed commit (say, ``REBALANCE_IN_PROGRESS`` during a rebalance) is sent again with the
next one while the partition is still ours. At most
``_MAX_UNANSWERED`` asynchronous commits are in flight: the next waits for an answer
(``_on_commit``) and then carries every ack made meanwhile. Without that bound a busy runner
sent commits faster than the coordinator answered (8,459 sent, 2,369 answered after 14 s at
1,000 events/s), and the heartbeats queued behind them until the session timed out and the
partitions were lost.

Commit metadata, ``"eb1 <high> <offset>:<count>,... <gap>+<length>,..."`` (at most
``METADATA_BUDGET`` characters after the high offset): every offset in ``[committed, high)``
was delivered at least once; the listed counts say how often where that is not once (0 for a
record released before it ran); the last field lists the offsets in that range already done
(acked, or nonexistent), as ranges: the first ``gap`` is the absolute start offset, each later
one the distance from the end of the range before it. The next owner reads it back on
assignment: a record redelivered after a crash or rebalance comes with ``attempt`` =
deliveries so far + 1 (the last fetch before a crash may be counted once short, since its
commit may not have reached the broker), and done offsets are skipped (never handed out), so
a record released or nacked below acked ones does not make the next owner handle those twice.
The done field came later: readers without it ignore it (and deliver those records again);
metadata without it reads as "nothing known done". When the done ranges do not all fit, the
lowest ones are kept, the rest are delivered again as before, and a warning is logged once per
partition.

Rebalances (cooperative-sticky): partitions the member keeps are untouched. For each partition
it gives up, the revoke callback (member thread, inside a poll of ``fetch`` or of the keepalive)
1. marks the partition as revoking (``holds`` is false for its records from then on, so the
application releases what it has not started), 2. drops buffered records of it that were never
handed out, 3. waits until every record of it the application holds is acked, nacked or
released, or its ``max_lease`` has passed, at most ``min(max_lease, 0.8 * max.poll.interval)``
(past that librdkafka would drop the member; records still held then are logged at WARNING:
the next owner delivers them again) — so the next owner never reads past a record still being
worked on, and per-key order holds — 4. commits the acked prefix with its metadata
synchronously (always sent, even if an asynchronous commit of the same offset may still be in
flight; retried briefly on ``REBALANCE_IN_PROGRESS``), 5. forgets the partition: later acks of
its records are ignored. ``fetch`` never returns a record of a partition that was revoked
during that call. Records waiting in the nack delay queue or released are not waited for.
``kill`` lets commit jobs of acks made before it run, then closes the client without
committing anything more.

"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from datetime import datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from eventbus.adapters.kafka._errors import kafka_error, translate
from eventbus.adapters.kafka._metadata import encode_metadata, parse_metadata, to_ms
from eventbus.adapters.kafka._partition import PartitionState
from eventbus.transport import ConsumerOptions, Record

__all__ = ["GroupMembership"]

log = logging.getLogger("eventbus.kafka")

_MAX_UNANSWERED = 4
"""Asynchronous commits in flight at most (a heartbeat waits behind at most these few)."""
_ANSWER_WAIT = 60.0
"""Seconds unanswered asynchronous commits hold back the next (librdkafka answers every
commit, with an error at the latest when its request times out, 60 s by default)."""

_RETRY_ON_REVOKE = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TIMED_OUT,
}
"""Commit errors that may clear up within a revoke callback (the group is syncing)."""
_RETRY_ON_ASSIGN = _RETRY_ON_REVOKE | {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError._TRANSPORT,
}
"""Errors reading positions at assignment that clear up once a leader or coordinator moved."""
_RETRY_ON_CLOSE = _RETRY_ON_REVOKE | {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
}
"""Commit errors the final commit waits out: the group moved to a new generation (another
member left) and this member rejoins while it polls; partitions it no longer owns after that
are dropped by the rebalance callbacks those polls serve, so the retry commits only its own."""


class GroupMembership:
    """The partitions a group member owns and what it tracks for each, kept by its rebalance
    callbacks and commits (see the module docstring). Subclassed by KafkaConsumer."""

    def __init__(self, config: dict[str, Any], options: ConsumerOptions, where: str) -> None:
        self._config = config
        self._options = options
        self._where = where
        self._lock = threading.Lock()
        self._parts: dict[tuple[str, int], PartitionState] = {}
        self._changed = threading.Condition(self._lock)
        """Notified (with the lock held) when an ack, nack, release, lease end or stop may end
        a revoke's wait."""
        self._delayed: list[tuple[float, int, tuple[str, int], PartitionState, Record]] = []
        """Outstanding records to hand out again when due: nacked, released, lease ended."""
        self._seq = itertools.count()
        self._buffer: deque[tuple[PartitionState, Record]] = deque()
        """Fetched from librdkafka, not handed out yet (not delivered: tracked nowhere)."""
        self._revoking: set[tuple[str, int]] = set()
        """Partitions whose revoke callback runs: ``holds`` is false for their records."""
        self.lease_epoch = 0
        """Grows when a held lease may have ended (see LeasedConsumer.lease_epoch)."""
        self._max_poll_interval = float(config.get("max.poll.interval.ms", 300_000)) / 1000
        self._last_poll = time.monotonic()
        self._paused = False
        """The assigned partitions are paused (member thread only): the buffer is full."""
        self._assigned_once = threading.Event()
        self._stopping = False
        """Set at once by close/kill: a revoke callback stops waiting for acks."""
        self._killing = False
        """Set at once by kill: a revoke callback commits nothing."""
        self._in_close = False
        """Set on the member thread just before the client's close()."""
        self._error: BaseException | None = None
        self._consumer: Any = None
        """The librdkafka Consumer, created on the member thread by the subclass."""
        self._unanswered = 0
        """Asynchronous commits sent and not answered yet (see the module docstring)."""
        self._last_async_commit = 0.0

    # -- commits ----------------------------------------------------------------------------

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
            self._last_poll = time.monotonic()

    # -- rebalance callbacks (worker thread) --------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        # reading committed offsets and watermarks may meet a leader or coordinator that is
        # moving: retried briefly (inside the callback) before the member gives up
        deadline = time.monotonic() + min(10.0, self._options.session_timeout)
        delay = 0.05
        try:
            while True:
                try:
                    self._assign(consumer, partitions)
                    return
                except KafkaException as exc:
                    err = kafka_error(exc)
                    code = err.code() if err is not None else None
                    if code not in _RETRY_ON_ASSIGN or time.monotonic() + delay > deadline:
                        self._error = translate(exc, "taking over partitions", where=self._where)
                        consumer.incremental_assign(partitions)
                        return
                    log.info("taking over partitions: %s; trying again", exc)
                time.sleep(delay)  # retry backoff inside the rebalance callback
                delay = min(delay * 2, 1.0)
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
                    state = PartitionState(key, committed=tp.offset, high=tp.offset)
                    state.prior = parse_metadata(tp.metadata)
                    state.sent = (tp.offset, tp.metadata or "")
                    offset = tp.offset
                else:
                    offset = starts[key]
                    state = PartitionState(key, committed=offset, high=offset)
                    state.sent = (offset, encode_metadata(offset, {}))
                    initial.append(TopicPartition(tp.topic, tp.partition, offset, state.sent[1]))
                self._parts[key] = state
                assign.append(TopicPartition(tp.topic, tp.partition, offset))
        consumer.incremental_assign(assign)
        log.info("assigned %s", [(tp.topic, tp.partition, tp.offset) for tp in assign])
        if self._paused:  # the buffer is full: these wait for the next fetch too
            consumer.pause(assign)
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
        if keys:
            log.info("revoked %s", keys)
        with self._lock:  # from now on holds() says no: the application releases what waits
            self._revoking.update(keys)
            self.lease_epoch += 1
        self._unpause(consumer, partitions)
        # inside close(), which committed just before (a commit now fails and can wedge the
        # close); after kill(), nothing more is committed
        if not self._killing and not self._in_close:
            self._await_held(keys)
            self._commit_on_revoke(keys)
        self._drop(keys)

    def _unpause(self, consumer: Any, partitions: list[Any]) -> None:
        """Resume partitions that leave while paused, so that none is still paused should it
        come back (librdkafka keeps the flag on the partition)."""
        if self._paused and partitions:
            try:
                consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in partitions])
            except KafkaException as exc:
                log.info("resuming partitions that leave failed: %s", exc)

    def _await_held(self, keys: list[tuple[str, int]]) -> None:
        """Wait until the application acked, nacked or released every record of ``keys`` it
        holds, or each one's lease ended (``max_lease`` from its delivery), so the next owner
        does not read past them. At most ``min(max_lease, 0.8 * max.poll.interval)`` (past that
        librdkafka drops the member); records still held then are logged, since the next
        owner delivers them again. close/kill end the wait at once."""
        max_lease = self._options.max_lease
        started = time.monotonic()
        cap = started + self._max_wait()
        waited = False
        with self._changed:
            while not self._stopping:
                states = [self._parts[k] for k in keys if k in self._parts]
                ends = [e for e in (s.held_until(max_lease) for s in states) if e is not None]
                now = time.monotonic()
                until = min(max(ends), cap) if ends else now
                if until <= now:
                    break
                if not waited:
                    waited = True
                    log.info(
                        "partitions %s move to another member: waiting up to %.1f s until "
                        "the records this member still holds are acked or released",
                        keys,
                        until - now,
                    )
                self._changed.wait(until - now)
            if self._stopping:
                return
            still = {
                k: sorted(self._parts[k].leases)
                for k in keys
                if k in self._parts and self._parts[k].leases
            }
        if still:
            log.warning(
                "partitions move to another member while this member still holds records "
                "(waited %.1f s; the cap is min(max_lease, 80%% of max.poll.interval.ms)); "
                "the next owner delivers them again, so they may be handled twice: %s",
                time.monotonic() - started,
                "; ".join(f"{t}/{p} offsets {offs}" for (t, p), offs in still.items()),
            )

    def _max_wait(self) -> float:
        """The longest a revoke may wait: ``max_lease``, and safely below max.poll.interval.ms
        (librdkafka drops a member that does not poll for that long)."""
        return max(0.0, min(self._options.max_lease, self._max_poll_interval * 0.8))

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
        self._unpause(consumer, partitions)
        self._drop([(tp.topic, tp.partition) for tp in partitions])

    def _drop(self, keys: list[tuple[str, int]]) -> None:
        """Forget partitions (revoked or lost): later acks of their records are ignored."""
        with self._lock:
            self._revoking.difference_update(keys)
            gone = {id(self._parts.pop(key)) for key in keys if key in self._parts}
            self.lease_epoch += 1
            self._delayed = [d for d in self._delayed if self._parts.get(d[2]) is d[3]]
            heapq.heapify(self._delayed)
            if gone:
                self._buffer = deque(e for e in self._buffer if id(e[0]) not in gone)

    def _commits_backed_up(self) -> bool:
        """``_MAX_UNANSWERED`` asynchronous commits wait for their answers: the next waits."""
        return (
            self._unanswered >= _MAX_UNANSWERED
            and time.monotonic() - self._last_async_commit < _ANSWER_WAIT
        )

    def _commit(
        self, keys: list[tuple[str, int]], *, asynchronous: bool, force: bool = False
    ) -> bool:
        """Commit the acked prefixes of ``keys``. Returns False when an asynchronous commit
        is held back by those in flight (the caller sends it again later)."""
        if asynchronous and not force and self._commits_backed_up():
            return False
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
            return True
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException:
            self._commit_failed(offsets)
            raise
        if asynchronous:
            now = time.monotonic()
            if now - self._last_async_commit >= _ANSWER_WAIT:
                self._unanswered = 0  # long unanswered: counted as lost, not blocking
            self._unanswered += 1
            self._last_async_commit = now
        return True

    def _on_commit(self, err: Any, partitions: list[Any]) -> None:
        """Commit result (worker thread, inside poll): a failed commit is sent again later."""
        self._unanswered = max(0, self._unanswered - 1)
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
