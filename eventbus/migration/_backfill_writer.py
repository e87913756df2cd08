"""Where the backfill writes its copies: a fenced, transactional producer on Kafka.

The hazard. The backfill resumes after the last copy it finds on the target. A backfill that was
killed, or that stalls (a paused VM, a long GC pause, a partitioned host) and is presumed dead,
can still have copies on their way to the broker: they land after the next run's resume scan
has read the target, and that run copies the same events again. A stalled run that wakes up
goes on copying its whole remaining range.

The fence, on Kafka. Every backfill of one (migration, topic) uses the same
``transactional.id`` (:func:`transactional_id`) and writes each batch (at most one page of one
partition) in one transaction:

- :meth:`KafkaBackfillWriter.open` calls ``init_transactions`` before the resume scan. The
  broker bumps the producer epoch of that id, aborts the transaction an earlier run left open
  (what it had written of its unfinished batch), and from then on rejects every write and
  commit of the earlier run (it stops with :class:`BackfillFencedError`).
- The resume scan reads the target ``read_committed`` (librdkafka's default isolation level,
  which eventbus keeps; a URL that sets ``isolation_level=read_uncommitted`` is refused), so
  it sees whole committed batches, and nothing of an aborted one ever becomes visible: not to
  the scan, not to ``verify``, not to consumers.

So each event is on the target exactly once whatever the timing of a kill. Costs: one commit
per batch of up to 1000 copies; an abandoned open transaction holds ``read_committed`` readers
of its partition back until the next backfill fences it or the broker aborts it after
``transaction.timeout.ms`` (60 s); the principal needs WRITE (and DESCRIBE) on the
transactional id when ACLs are on.

Other targets (memory, Redis) get :class:`PublishWriter`: their writes are single commands that
either landed or not before the writing process died (memory: in-process, Redis: one pipeline
that Redis executes as soon as it is read), so there is nothing in flight to fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from eventbus.errors import ConfigurationError, EventBusError, OperationTimeoutError
from eventbus.transport import Outgoing, Position, Transport

if TYPE_CHECKING:
    from eventbus.adapters.kafka._settings import KafkaSettings

__all__ = [
    "BackfillFencedError",
    "BackfillWriter",
    "KafkaBackfillWriter",
    "PublishWriter",
    "open_backfill_writer",
    "transactional_id",
]

TRANSACTION_TIMEOUT_MS = 60_000
"""How long the broker keeps a backfill transaction open before it aborts it by itself."""


class BackfillFencedError(EventBusError):
    """Another backfill of the same topic started: this one was fenced and stopped. Nothing of
    its unfinished batch is visible on the target; let the other run finish (or run the
    backfill again)."""


class BackfillWriter(Protocol):
    async def write(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> list[Position]:
        """Write ``records`` atomically where the target allows; their positions, in order."""
        ...

    async def close(self) -> None: ...


def transactional_id(migration: str, topic: str) -> str:
    """The ``transactional.id`` every backfill of ``topic`` in ``migration`` uses."""
    return f"eventbus-backfill.{migration}.{topic}"


async def open_backfill_writer(
    target: Transport, migration: str, topic: str, *, timeout: float = 60.0
) -> BackfillWriter:
    """The writer for a backfill of ``topic`` into ``target``. On Kafka it fences every
    earlier backfill of the topic before it returns (call it before the resume scan)."""
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
    writer = KafkaBackfillWriter(
        settings, transactional_id(migration, topic), batch_bytes=spec.max_event_bytes
    )
    try:
        await writer.open(timeout)
    except BaseException:
        await writer.close()
        raise
    return writer


def _kafka_settings(target: Transport) -> KafkaSettings | None:
    """The target's Kafka settings, or None when it is not a Kafka transport (without
    importing the Kafka adapter, and with it confluent-kafka, when none was ever opened)."""
    if "eventbus.adapters.kafka._transport" not in sys.modules:
        return None
    from eventbus.adapters.kafka._transport import KafkaTransport

    return target.settings if isinstance(target, KafkaTransport) else None


class PublishWriter:
    """Plain publishes to the target (no transactions needed, see the module docstring)."""

    def __init__(self, target: Transport) -> None:
        self.target = target

    async def write(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> list[Position]:
        return await self.target.publish(topic, records, timeout=timeout)

    async def close(self) -> None:
        return None


class KafkaBackfillWriter:
    """A transactional librdkafka producer: one transaction per :meth:`write`."""

    def __init__(self, settings: KafkaSettings, transactional_id: str, *, batch_bytes: int) -> None:
        from confluent_kafka import KafkaException, Producer

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
        self._lock = threading.Lock()
        """Held by the thread that runs a producer call; close waits for it."""
        self._closed = False
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise self._error(exc, "create the backfill's transactional producer") from None

    async def open(self, timeout: float) -> None:
        """Register the transactional id with the broker, fencing earlier users of it."""
        await asyncio.to_thread(self._run, self._init, timeout)

    async def write(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> list[Position]:
        """Write ``records`` in one transaction; committed when this returns, aborted (and
        invisible to committed reads) when it raises."""
        if not records:
            return []
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
            raise self._error(exc, "fence earlier backfills (init_transactions)") from None

    def _write(self, topic: str, records: list[Outgoing], timeout: float) -> list[Position]:
        from confluent_kafka import KafkaError, KafkaException

        deadline = time.monotonic() + timeout
        positions: list[Position | None] = [None] * len(records)
        failures: list[KafkaError] = []

        def report(index: int, err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                failures.append(err)
            else:
                positions[index] = Position(msg.partition(), msg.offset())

        producer = self._producer
        what = f"backfill to {topic!r}"
        try:
            producer.begin_transaction()
            for index, record in enumerate(records):
                self._produce(topic, record, functools.partial(report, index), deadline)
            left = producer.flush(max(0.0, deadline - time.monotonic()))
            if left:
                self._abort()
                raise OperationTimeoutError(
                    f"{what}: {left} of {len(records)} copies were not confirmed within "
                    f"{timeout} s; the batch was aborted (run the backfill again)"
                )
            if failures:
                self._abort()
                raise self._error(KafkaException(failures[0]), what)
            self._commit(deadline)
        except KafkaException as exc:
            inner = exc.args[0] if exc.args else None
            if isinstance(inner, KafkaError) and inner.txn_requires_abort():
                self._abort()
            raise self._error(exc, what) from None
        return [p for p in positions if p is not None]

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
                        f"backfill to {topic!r}: the producer queue stayed full; the batch was "
                        "aborted (run the backfill again)"
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
            self._producer.abort_transaction(30.0)

    def _close(self) -> None:
        self._closed = True
        self._producer.purge()  # nothing should be queued: every write commits or aborts
        self._producer.flush(0)
        self._producer.close()

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
            return BackfillFencedError(
                f"{what}: another backfill of this topic started (transactional id "
                f"{self._id!r}), so this one was fenced and stopped; nothing of its unfinished "
                "batch is visible on the target. Let the other run finish, or run "
                "'eventbus migrate backfill' again"
            )
        if inner is not None and inner.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
            return ConfigurationError(
                f"{what}: the Kafka cluster at {self._where} denied this user the transactional "
                f"id {self._id!r}; grant WRITE and DESCRIBE on transactional ids starting with "
                "'eventbus-backfill.' (the backfill writes each batch in a transaction)"
            )
        return translate(exc, what, where=self._where)
