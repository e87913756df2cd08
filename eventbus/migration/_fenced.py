"""Writers that cannot leave a copy behind to land later: fenced, transactional on Kafka.

The hazard. The backfill resumes after the last copy it finds on the target; the journal
replayer copies again what a failed attempt may not have written. A writer that died, stalled
(a paused VM, a long GC pause, a partitioned host) or gave up on a write can still have copies
on their way to the broker: they land after the next attempt has looked at the target, and
the same events are copied twice. A stalled backfill that wakes up goes on copying its whole
remaining range. And a multi-record write that fails half-way can leave a gap (some records
written, an earlier one not), so copying the missing ones afterwards breaks their order.

The fence, on Kafka. Every writer of one job uses the same ``transactional.id``
(:func:`transactional_id`: per migration and topic for the backfill, per migration, topic and
partition for the journal replay) and writes each batch in one transaction:

- :func:`open_fenced_writer` calls ``init_transactions`` before anything is read. The broker
  bumps the producer epoch of that id, aborts the transaction an earlier writer left open, and
  from then on rejects every write and commit of the earlier writer (it stops with
  :class:`FencedError`).
- A batch is committed whole or not at all: no gaps, and nothing of a failed batch becomes
  visible later.
- The target is read ``read_committed`` (librdkafka's default isolation level, which eventbus
  keeps; a URL that sets ``isolation_level=read_uncommitted`` is refused), so a scan sees whole
  committed batches only: not the scan, not ``verify``, not consumers ever see an aborted copy.

Costs: one commit per batch; an abandoned open transaction holds ``read_committed`` readers of
its partitions back until the next writer fences it or the broker aborts it after
``transaction.timeout.ms`` (60 s); the principal needs WRITE (and DESCRIBE) on transactional
ids starting with ``eventbus-`` when ACLs are on.

Other sides (memory, Redis) get :class:`PublishWriter`: their writes are single commands that
either landed or not before the writer gave up (memory: in-process; Redis: one command that
Redis executes as soon as it reads it, never sent again), so there is nothing left to fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from eventbus.errors import ConfigurationError, EventBusError, OperationTimeoutError
from eventbus.transport import Outgoing, Position, Transport

if TYPE_CHECKING:
    from eventbus.adapters.kafka._settings import KafkaSettings

__all__ = [
    "FencedError",
    "FencedWriter",
    "PublishWriter",
    "TransactionalWriter",
    "open_fenced_writer",
    "transactional_id",
]

TRANSACTION_TIMEOUT_MS = 60_000
"""How long the broker keeps a backfill transaction open before it aborts it by itself."""


class FencedError(EventBusError):
    """Another writer of the same job started (another backfill of the topic, or another
    replayer of the journal partition): this one was fenced and stopped. Nothing of its
    unfinished batch is visible on the target."""


class FencedWriter(Protocol):
    fenced: bool
    """True when earlier writers are fenced and batches are atomic (Kafka)."""

    async def write(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> Position | None:
        """Write ``records`` atomically where the target allows; the position of the last
        one (None for no records)."""
        ...

    async def close(self) -> None: ...


def transactional_id(purpose: str, migration: str, topic: str, partition: int | None = None) -> str:
    """The ``transactional.id`` of one job: ``backfill`` (per migration and topic),
    ``rollback`` (the reverse backfill after a rollback from target-only), ``replay`` (the
    journal replay, per partition)."""
    tail = "" if partition is None else f".{partition}"
    return f"eventbus-{purpose}.{migration}.{topic}{tail}"


async def open_fenced_writer(
    target: Transport,
    tid: str,
    *,
    topic: str,
    timeout: float = 60.0,
) -> FencedWriter:
    """A writer into ``target`` for the job ``tid`` (see :func:`transactional_id`). On Kafka it
    fences every earlier writer of the job before it returns: open it before reading what is
    already there."""
    settings = _kafka_settings(target)
    if settings is None:
        return PublishWriter(target)
    isolation = settings.config.get("isolation.level", "read_committed")
    if isolation != "read_committed":
        raise ConfigurationError(
            f"the target URL sets isolation_level={isolation}; the backfill's resume scan must "
            "read committed records only: remove that option from the target URL"
        )
    spec = (await target.describe_topic(topic)).spec
    writer = TransactionalWriter(
        settings, tid, batch_bytes=spec.max_event_bytes, abort_timeout=min(30.0, timeout)
    )
    try:
        await writer.open(timeout)
    except BaseException:
        await writer.close()
        raise
    return writer


def _kafka_context(exc: BaseException) -> Any:
    """The KafkaException behind ``exc`` (its cause or context), else None."""
    from confluent_kafka import KafkaException

    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, KafkaException):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _kafka_settings(target: Transport) -> KafkaSettings | None:
    """The target's Kafka settings, or None when it is not a Kafka transport (without
    importing the Kafka adapter, and with it confluent-kafka, when none was ever opened)."""
    if "eventbus.adapters.kafka._transport" not in sys.modules:
        return None
    from eventbus.adapters.kafka._transport import KafkaTransport

    return target.settings if isinstance(target, KafkaTransport) else None


class PublishWriter:
    """Plain publishes to the target (no transactions needed, see the module docstring)."""

    fenced = False

    def __init__(self, target: Transport) -> None:
        self.target = target

    async def write(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> Position | None:
        if not records:
            return None
        positions = await self.target.publish(topic, records, timeout=timeout)
        return positions[-1]

    async def close(self) -> None:
        return None


class TransactionalWriter:
    """A transactional librdkafka producer: one transaction per :meth:`write`."""

    fenced = True

    def __init__(
        self,
        settings: KafkaSettings,
        transactional_id: str,
        *,
        batch_bytes: int,
        abort_timeout: float = 30.0,
    ) -> None:
        from confluent_kafka import KafkaException, Producer

        from eventbus.adapters.kafka._cloudevents import writer

        # copies are laid out as the target URL's publishes are (envelope=cloudevents...)
        self._envelope = writer(settings.envelope, settings.ce_source)
        config: dict[str, Any] = {
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "none",
            "message.max.bytes": 64 * 1024 * 1024,
            # the broker checks whole batches against the topic's max.message.bytes
            "batch.size": max(1, min(1_000_000, batch_bytes)),
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            **settings.base_config(),
            "enable.idempotence": True,
            "transactional.id": transactional_id,
        }
        self._where = settings.display
        self._id = transactional_id
        self._abort_timeout = abort_timeout
        self._lock = threading.Lock()
        """Held by the thread that runs a producer call; close waits for it."""
        self._closed = False
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise self._error(exc, "create a transactional producer") from None

    async def open(self, timeout: float) -> None:
        """Register the transactional id with the broker, fencing earlier users of it."""
        await asyncio.to_thread(self._run, self._init, timeout)

    async def write(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> Position | None:
        """Write ``records`` in one transaction; committed when this returns (with the last
        record's position), aborted (and invisible to committed reads) when it raises."""
        if not records:
            return None
        if self._envelope is not None:
            records = self._envelope(records)
        return await asyncio.to_thread(self._run, self._write, topic, list(records), timeout)

    async def close(self) -> None:
        """Close the producer (waiting for a write still running on its thread). Idempotent."""
        if not self._closed:
            await asyncio.to_thread(self._run, self._close)

    # on a worker thread -------------------------------------------------------------------
    def _run(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            if self._closed:
                raise EventBusError("the backfill writer is closed")
            return fn(*args)

    def _init(self, timeout: float) -> None:
        from confluent_kafka import KafkaException

        try:
            self._producer.init_transactions(timeout)
        except KafkaException as exc:
            raise self._error(exc, "fence earlier writers (init_transactions)") from None

    def _write(self, topic: str, records: list[Outgoing], timeout: float) -> Position | None:
        from confluent_kafka import KafkaError, KafkaException

        deadline = time.monotonic() + timeout
        last: list[Position] = []
        failures: list[KafkaError] = []

        def report(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                failures.append(err)

        def report_last(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                failures.append(err)
            else:
                last.append(Position(msg.partition(), msg.offset()))

        producer = self._producer
        what = f"transactional write to {topic!r}"
        final = len(records) - 1
        try:
            producer.begin_transaction()
            # one shared callback (no closure per record); the last record's has its position
            for index, record in enumerate(records):
                self._produce(topic, record, report_last if index == final else report, deadline)
            left = self._flush_until_failure(len(records), failures, deadline)
            if left and not failures:
                self._abort()
                raise OperationTimeoutError(
                    f"{what}: {left} of {len(records)} copies were not confirmed within "
                    f"{timeout} s; the batch was aborted"
                )
            if failures:
                self._abort()
                raise self._error(KafkaException(failures[0]), what)
            self._commit(deadline)
        except (KafkaException, SystemError) as exc:
            # a fatal error (fenced, say) can surface as a SystemError from inside a
            # delivery callback; the KafkaException is its context
            kafka_exc = exc if isinstance(exc, KafkaException) else _kafka_context(exc)
            if kafka_exc is None:
                raise
            inner = kafka_exc.args[0] if kafka_exc.args else None
            if isinstance(inner, KafkaError) and inner.txn_requires_abort():
                self._abort()
            raise self._error(kafka_exc, what) from None
        return last[0] if last else None

    def _flush_until_failure(self, left: int, failures: list[Any], deadline: float) -> int:
        """Flush in slices; returns how many records are still unconfirmed. Stops at the first
        failure: the transaction then holds the rest back until the deadline."""
        while left and not failures:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            left = self._producer.flush(min(0.1, remaining))
        return left

    def _produce(self, topic: str, record: Outgoing, on_delivery: Any, deadline: float) -> None:
        while True:
            try:
                self._producer.produce(
                    topic,
                    record.value,
                    record.key,
                    partition=-1 if record.partition is None else record.partition,
                    on_delivery=on_delivery,
                    timestamp=record.timestamp_ms or 0,
                    headers=dict(record.headers) or None,
                )
                return
            except BufferError:  # the local queue is full: serve reports, then retry
                if time.monotonic() > deadline:
                    self._abort()
                    raise OperationTimeoutError(
                        f"transactional write to {topic!r}: the producer queue stayed full; the "
                        "batch was aborted"
                    ) from None
                self._producer.poll(0.05)

    def _commit(self, deadline: float) -> None:
        from confluent_kafka import KafkaError, KafkaException

        while True:
            try:
                self._producer.commit_transaction(max(0.1, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                inner = exc.args[0] if exc.args else None
                retriable = isinstance(inner, KafkaError) and inner.retriable()
                if not retriable or time.monotonic() > deadline:
                    raise

    def _abort(self) -> None:
        """Abort the open transaction if the producer still can (a fenced one cannot: the
        broker has aborted it already)."""
        from confluent_kafka import KafkaException

        # fenced or fatal: the broker aborts it (when fencing, or after the timeout)
        with contextlib.suppress(KafkaException):
            self._producer.abort_transaction(self._abort_timeout)

    def _close(self) -> None:
        from confluent_kafka import KafkaException

        from eventbus.adapters.kafka._producer import close_producer

        self._closed = True
        # nothing should be queued (every write commits or aborts); a fenced or failed
        # producer may refuse even this: it is dropped either way
        with contextlib.suppress(KafkaException):
            self._producer.purge()
            self._producer.flush(0)
        with warnings.catch_warnings(), contextlib.suppress(KafkaException, SystemError):
            # closing with a commit still in progress (it timed out) warns that the abort
            # failed: expected here, the next writer of the job fences it anyway
            warnings.simplefilter("ignore", RuntimeWarning)
            close_producer(self._producer)

    def _error(self, exc: BaseException, what: str) -> EventBusError:
        from confluent_kafka import KafkaError

        from eventbus.adapters.kafka._errors import kafka_error, translate

        inner = kafka_error(exc)
        fenced = {
            KafkaError._FENCED,
            KafkaError.PRODUCER_FENCED,
            KafkaError.INVALID_PRODUCER_EPOCH,
        }
        if inner is not None and inner.code() in fenced:
            return FencedError(
                f"{what}: another writer of the same job started (transactional id "
                f"{self._id!r}: another backfill of this topic, or another replayer of this "
                "journal partition), so this one was fenced and stopped; nothing of its "
                "unfinished batch is visible on the target. For a backfill: let the other run "
                "finish, or run 'eventbus migrate backfill' again"
            )
        if inner is not None and inner.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
            return ConfigurationError(
                f"{what}: the Kafka cluster at {self._where} denied this user the transactional "
                f"id {self._id!r}; grant WRITE and DESCRIBE on transactional ids starting with "
                "'eventbus-' (the backfill and the journal replay write each batch in a "
                "transaction)"
            )
        return translate(exc, what, where=self._where)
