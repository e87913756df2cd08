"""Kafka's fenced writer (``KafkaTransport.fenced_writer``): transactional, one transaction
per batch, so that nothing of a batch a writer gave up on can land later.

The hazard. The migration's backfill resumes after the last copy it finds on the target; its
journal replayer copies again what a failed attempt may not have written. A writer that died,
stalled (a paused VM, a long GC pause, a partitioned host) or gave up on a write can still
have copies on their way to the broker: they land after the next attempt has looked at the
target, and the same events are copied twice. A stalled backfill that wakes up goes on copying
its whole remaining range. And a multi-record write that fails half-way can leave a gap (some
records written, an earlier one not), so copying the missing ones afterwards breaks their
order.

The fence. Every writer of one job uses the same ``transactional.id`` (the job id) and writes
each batch in one transaction:

- :func:`open_transactional_writer` calls ``init_transactions`` before anything is read. The
  broker bumps the producer epoch of that id, aborts the transaction an earlier writer left
  open, and from then on rejects every write and commit of the earlier writer (it stops with
  :class:`~eventbus.errors.FencedError`).
- A batch is committed whole or not at all: no gaps, and nothing of a failed batch becomes
  visible later.
- Readers read ``read_committed`` (librdkafka's default isolation level, which eventbus keeps;
  a URL that sets ``isolation_level=read_uncommitted`` is refused here), so a scan sees whole
  committed batches only: not the scan, not ``verify``, not consumers ever see an aborted copy.

Costs: one commit per batch; an abandoned open transaction holds ``read_committed`` readers of
its partitions back until the next writer fences it or the broker aborts it after
``transaction.timeout.ms`` (60 s); the principal needs WRITE (and DESCRIBE) on transactional
ids starting with ``eventbus-`` when ACLs are on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from eventbus.adapters.kafka._cloudevents import writer
from eventbus.adapters.kafka._errors import kafka_error, translate
from eventbus.adapters.kafka._producer import close_producer
from eventbus.adapters.kafka._settings import KafkaSettings
from eventbus.errors import ConfigurationError, EventBusError, FencedError, OperationTimeoutError
from eventbus.transport import Outgoing, Position

__all__ = ["TransactionalWriter", "check_isolation", "open_transactional_writer"]

TRANSACTION_TIMEOUT_MS = 60_000
"""How long the broker keeps a transaction open before it aborts it by itself."""


async def open_transactional_writer(
    settings: KafkaSettings, job_id: str, *, batch_bytes: int, timeout: float
) -> TransactionalWriter:
    """A transactional writer for ``job_id`` that has fenced every earlier writer of the job
    (see the module docstring). ``batch_bytes``: the topic's max event bytes."""
    check_isolation(settings)
    fenced = TransactionalWriter(
        settings, job_id, batch_bytes=batch_bytes, abort_timeout=min(30.0, timeout)
    )
    try:
        await fenced.open(timeout)
    except BaseException:
        await fenced.close()
        raise
    return fenced


def check_isolation(settings: KafkaSettings) -> None:
    """Refuse settings whose readers would see what a fenced writer left unfinished."""
    isolation = settings.config.get("isolation.level", "read_committed")
    if isolation != "read_committed":
        raise ConfigurationError(
            f"the target URL sets isolation_level={isolation}; the backfill's resume scan must "
            "read committed records only: remove that option from the target URL"
        )


def _kafka_context(exc: BaseException) -> Any:
    """The KafkaException behind ``exc`` (its cause or context), else None."""
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, KafkaException):
            return seen
        seen = seen.__cause__ or seen.__context__
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
        try:
            self._producer.init_transactions(timeout)
        except KafkaException as exc:
            raise self._error(exc, "fence earlier writers (init_transactions)") from None

    def _write(self, topic: str, records: list[Outgoing], timeout: float) -> Position | None:
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
        # fenced or fatal: the broker aborts it (when fencing, or after the timeout)
        with contextlib.suppress(KafkaException):
            self._producer.abort_transaction(self._abort_timeout)

    def _close(self) -> None:
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
