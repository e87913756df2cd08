"""Replay without a group: one partition, from the start, an offset or a time.

A reader is a librdkafka Consumer that never subscribes and never commits: it ``assign()``s the
one partition at the resolved offset and reads until it reaches the high watermark seen when
the read began (so it never waits for records that do not exist), or until ``limit`` records.
Its group id is random and unused. All its calls run on its own worker thread.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from eventbus.adapters.kafka._admin import to_ms
from eventbus.adapters.kafka._errors import translate
from eventbus.adapters.kafka._partition import to_record
from eventbus.adapters.kafka._worker import Worker
from eventbus.errors import InvalidPositionError, OperationTimeoutError
from eventbus.transport import Offset, Record

__all__ = ["KafkaReader"]

_FAIL = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError._AUTHENTICATION,
}

_UNREACHABLE = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT}
_SLICE = 0.25
"""Seconds per watermark request while no broker answers (see ``_watermarks``)."""


class KafkaReader:
    """Reads records of one partition at a time, without a consumer group."""

    def __init__(self, base: dict[str, Any], where: str, timeout: float) -> None:
        self._config = {
            **base,
            "group.id": f"eventbus-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            # it reads only records that exist (up to the high watermark seen at the start):
            # a fetch must not idle for new ones, or the next read's watermark request (and
            # assign) waits behind it, up to fetch.wait.max.ms (500 ms) per page
            "fetch.wait.max.ms": 10,
        }
        self._where = where
        self._timeout = timeout
        self._worker = Worker("eventbus-kafka-reader")
        self._consumer: Any = None
        self._closed = False

    async def read(
        self,
        topic: str,
        partition: int,
        start: Offset | datetime | None,
        *,
        inclusive: bool,
        limit: int,
    ) -> list[Record]:
        """Records in offset order; ``[]`` when none exist from ``start``."""
        if isinstance(start, str):
            raise InvalidPositionError(
                f"{start!r} is a Redis entry id; Kafka positions are integer offsets"
            )
        if limit < 1:
            return []
        return await self._worker.run(
            lambda: self._read_blocking(topic, partition, start, inclusive, limit)
        )

    def _client(self) -> Any:
        if self._consumer is None:
            self._consumer = Consumer(self._config)
        return self._consumer

    def _begin(
        self, consumer: Any, tp: Any, start: int | datetime | None, inclusive: bool
    ) -> tuple[int, int]:
        low, high = self._watermarks(consumer, tp)
        if start is None:
            first = low
        elif isinstance(start, datetime):
            query = TopicPartition(tp.topic, tp.partition, to_ms(start))
            found = consumer.offsets_for_times([query], timeout=self._timeout)[0].offset
            first = found if found >= 0 else high
        else:
            first = max(low, start if inclusive else start + 1)
        return first, high

    def _watermarks(self, consumer: Any, tp: Any) -> tuple[int, int]:
        """The partition's watermarks, asked in slices of _SLICE s while no broker answers,
        polling in between: a refused login reaches ``error_cb`` only inside ``poll``, and the
        read's guard then raises AuthenticationError instead of waiting out the timeout."""
        deadline = time.monotonic() + self._timeout
        while True:
            left = deadline - time.monotonic()
            try:
                low, high = consumer.get_watermark_offsets(
                    tp, timeout=max(0.01, min(_SLICE, left)), cached=False
                )
                return int(low), int(high)
            except KafkaException as exc:
                code = exc.args[0].code() if exc.args else None
                if code not in _UNREACHABLE or time.monotonic() >= deadline:
                    raise
                consumer.poll(0)  # nothing is assigned yet: this only serves error events

    def _read_blocking(
        self, topic: str, partition: int, start: int | datetime | None, inclusive: bool, limit: int
    ) -> list[Record]:
        consumer = self._client()
        tp = TopicPartition(topic, partition)
        try:
            first, high = self._begin(consumer, tp, start, inclusive)
            if first >= high:
                return []
            consumer.assign([TopicPartition(topic, partition, first)])
            try:
                return self._drain(consumer, tp, high, limit)
            finally:
                consumer.unassign()
        except KafkaException as exc:
            raise translate(
                exc, f"read {topic!r} partition {partition}", where=self._where
            ) from None

    def _drain(self, consumer: Any, tp: Any, high: int, limit: int) -> list[Record]:
        out: list[Record] = []
        stall = time.monotonic() + self._timeout + 10.0
        while len(out) < limit:
            msgs = consumer.consume(num_messages=min(limit - len(out), 1000), timeout=0.05)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.fatal() or err.code() in _FAIL:
                        raise KafkaException(err)
                    continue
                if msg.offset() < high and len(out) < limit:
                    out.append(to_record(msg))
            if msgs:
                stall = time.monotonic() + self._timeout + 10.0
            if (out and out[-1].offset == high - 1) or self._position(consumer, tp) >= high:
                break
            if time.monotonic() > stall:
                raise OperationTimeoutError(
                    f"read of {tp.topic!r} partition {tp.partition} made no progress towards "
                    f"offset {high} at {self._where}; {len(out)} records read"
                )
        return out

    @staticmethod
    def _position(consumer: Any, tp: Any) -> int:
        position: int = consumer.position([tp])[0].offset
        return position

    async def close(self) -> None:
        """Close the client and stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._worker.run(lambda: self._consumer and self._consumer.close())
        finally:
            self._consumer = None
            self._worker.stop()
