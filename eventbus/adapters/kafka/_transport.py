"""KafkaTransport: the Transport contract over confluent-kafka (see the package docstring)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from eventbus.adapters.kafka._admin import KafkaAdmin, TopicMeta
from eventbus.adapters.kafka._cloudevents import writer
from eventbus.adapters.kafka._consumer import KafkaConsumer
from eventbus.adapters.kafka._errors import CredentialWatch
from eventbus.adapters.kafka._producer import PolledProducer, producer_config
from eventbus.adapters.kafka._reader import KafkaReader
from eventbus.adapters.kafka._settings import KafkaSettings
from eventbus.adapters.kafka._transactional import (
    TransactionalWriter,
    check_isolation,
    open_transactional_writer,
)
from eventbus.errors import (
    AuthenticationError,
    ClosedError,
    ConnectionFailedError,
    EventBusError,
    EventTooLargeError,
    InvalidPositionError,
    TopicExistsError,
    TopicNotFoundError,
)
from eventbus.topics import TopicSpec
from eventbus.transport import (
    Capabilities,
    ConsumerOptions,
    GroupInfo,
    Offset,
    Outgoing,
    Position,
    Record,
    ResetTarget,
    TopicInfo,
    record_size,
)

__all__ = ["CAPABILITIES", "KafkaTransport"]

CAPABILITIES = Capabilities(
    transport="kafka",
    ordering_scope="partition",
    native_delivery_count=False,
    redelivery_on_timeout=False,
    timestamp_replay=True,
    retention_by_time=True,
    retention_by_size=True,
    compaction=True,
    transactions=False,
    reset_active_group=False,
    auto_create_topics=False,
    atomic_dead_letter=False,
    max_event_bytes=1_048_576,
    partitions_can_grow=True,
)

_MAIN_BATCH = 1_000_000
"""librdkafka's default ``batch.size``; topics whose limit is lower get a producer that batches
less, because the broker checks ``max.message.bytes`` against whole batches."""


class KafkaTransport:
    """A connection to one Kafka-API cluster (Apache Kafka or Redpanda)."""

    capabilities: Capabilities

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.capabilities = dataclasses.replace(
            CAPABILITIES, auto_create_topics=settings.auto_create
        )
        self._where = settings.display
        self._admin: KafkaAdmin | None = None
        self._producers: dict[int | None, PolledProducer] = {}
        self._reader: KafkaReader | None = None
        self._consumers: weakref.WeakSet[KafkaConsumer] = weakref.WeakSet()
        self._closed = False
        self._envelope = writer(settings.envelope, settings.ce_source)
        """Translates records to the CloudEvents binding (None: eventbus's own layout)."""
        self._watch = CredentialWatch(self._where)
        """``error_cb`` of the admin client, the producers and the reader: notices a refused
        login, which librdkafka reports nowhere else (consumers watch their own)."""

    @classmethod
    def from_url(cls, url: str, options: dict[str, Any]) -> KafkaTransport:
        """Build (not connect) a transport; raises ConfigurationError for a bad URL/option."""
        return cls(KafkaSettings.from_url(url, options))

    def __repr__(self) -> str:
        return f"KafkaTransport({self._where})"

    # -- connection -------------------------------------------------------------------------

    def _client_config(self) -> dict[str, Any]:
        """``base_config()`` plus the watch as ``error_cb`` (for every client but consumers)."""
        return {**self.settings.base_config(), "error_cb": self._watch}

    async def connect(self) -> None:
        """Reach the cluster within ``connect_timeout`` s; ConnectionFailedError or
        AuthenticationError (naming the redacted address and what to check) otherwise.

        A refused login (wrong user or password, a SASL mechanism the broker does not enable)
        raises AuthenticationError as soon as librdkafka reports it, well before the timeout."""
        if self._closed:
            raise ClosedError("this Kafka transport is closed; open a new bus")
        mark = self._watch.mark()
        admin = KafkaAdmin(
            self.settings.base_config(), self._where, self.settings.connect_timeout, self._watch
        )
        try:
            await admin.metadata(None, self.settings.connect_timeout, mark=mark, what="connect")
        except AuthenticationError:
            raise
        except EventBusError as exc:
            raise ConnectionFailedError(
                f"cannot reach the Kafka cluster at {self._where} within "
                f"{self.settings.connect_timeout} s ({exc}); check the host and port, that the "
                "broker is running, and security_protocol/sasl settings"
            ) from None
        self._admin = admin

    def _admin_client(self) -> KafkaAdmin:
        if self._closed:
            raise ClosedError("this Kafka transport is closed; open a new bus")
        if self._admin is None:
            raise ConnectionFailedError("the Kafka transport is not connected; call connect()")
        return self._admin

    async def close(self) -> None:
        """Flush producers, close consumers and the reader. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            with contextlib.suppress(EventBusError):
                await consumer.close()
        for producer in self._producers.values():
            await producer.close(max(5.0, self.settings.connect_timeout))
        if self._reader is not None:
            await self._reader.close()
        self._producers.clear()
        self._admin = None

    # -- publish ----------------------------------------------------------------------------

    def _producer_for(self, meta: TopicMeta) -> PolledProducer:
        limit = None if meta.max_message_bytes >= _MAIN_BATCH + 1024 else meta.max_message_bytes
        producer = self._producers.get(limit)
        if producer is None:
            batch = None if limit is None else max(1, limit - 256)
            config = producer_config(self._client_config(), batch)
            producer = self._producers[limit] = PolledProducer(config, self._where, self._watch)
        return producer

    async def _meta_for_publish(self, topic: str, deadline: float) -> TopicMeta:
        admin = self._admin_client()
        try:
            return await admin.topic_meta(topic, stale_wait=min(1.0, deadline - time.monotonic()))
        except TopicNotFoundError:
            if not self.settings.auto_create:
                raise
        with contextlib.suppress(TopicExistsError):
            await admin.create_topic(TopicSpec(name=topic, partitions=1))
        return await admin.topic_meta(topic)

    async def publish(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> list[Position]:
        """Produce all records; resolves when every delivery report has arrived."""
        deadline = time.monotonic() + timeout
        if not records:
            self._admin_client()
            return []
        if self._envelope is not None:  # before the size checks: they count what is written
            records = self._envelope(records)
        meta = await self._meta_for_publish(topic, deadline)
        limit = meta.max_event_bytes
        for record in records:
            size = record_size(record)
            if size > limit:
                raise EventTooLargeError(
                    f"event of {size} bytes exceeds topic {topic!r}'s limit of {limit} bytes; "
                    "nothing was written. Make it smaller, or raise the topic's max_event_bytes "
                    "(eventbus sets Kafka's max.message.bytes to it plus 512 bytes of framing)"
                )
            if record.partition is not None and not 0 <= record.partition < meta.partitions:
                raise InvalidPositionError(
                    f"topic {topic!r} has partitions 0..{meta.partitions - 1}, "
                    f"not {record.partition}"
                )
        producer = self._producer_for(meta)
        try:
            # a refused login leaves records queued until the deadline: the producer watches
            # for it while it waits (without a guard task per publish)
            return await producer.publish(topic, records, deadline)
        except TopicNotFoundError:
            self._admin_client().forget(topic)
            raise

    async def fenced_writer(
        self, job_id: str, topic: str, *, timeout: float
    ) -> TransactionalWriter:
        """A transactional writer for the job ``job_id`` (its ``transactional.id``): opening
        it fences every earlier writer of the job, and each write is one transaction (see
        ``_transactional`` and FencedWrites). Copies are laid out as this transport's
        publishes are (its envelope)."""
        check_isolation(self.settings)  # before anything is asked of the cluster
        spec = (await self.describe_topic(topic)).spec
        return await open_transactional_writer(
            self.settings, job_id, batch_bytes=spec.max_event_bytes, timeout=timeout
        )

    def copy_client(self, timeout: float) -> KafkaTransport:
        """A client of its own whose records expire after ``timeout`` s (librdkafka
        ``message.timeout.ms``): a write that failed leaves nothing queued that could land
        after its replacement (see CopyClients)."""
        expire_ms = str(max(1000, int(timeout * 1000)))
        config = {**self.settings.config, "message.timeout.ms": expire_ms}
        return KafkaTransport(dataclasses.replace(self.settings, config=config))

    # -- reading ----------------------------------------------------------------------------

    async def read(
        self,
        topic: str,
        partition: int,
        start: Offset | datetime | None,
        *,
        inclusive: bool = True,
        limit: int = 1000,
    ) -> list[Record]:
        """Replay one partition without a group (see ``_reader``)."""
        count = await self._admin_client().partition_count(topic)
        if not 0 <= partition < count:
            raise InvalidPositionError(f"topic {topic!r} has no partition {partition}")
        if self._reader is None:
            self._reader = KafkaReader(
                self._client_config(), self._where, self.settings.connect_timeout
            )
        return await self._watch.guard(
            self._reader.read(topic, partition, start, inclusive=inclusive, limit=limit),
            f"read {topic!r}",
        )

    async def open_consumer(
        self, topics: Sequence[str], group: str, consumer: str, options: ConsumerOptions
    ) -> KafkaConsumer:
        """Join ``group``; returns once the group has given this member its first assignment."""
        admin = self._admin_client()
        for topic in topics:
            await admin.partition_count(topic)
        session_ms = int(options.session_timeout * 1000)
        config: dict[str, Any] = {
            # librdkafka prefetches up to 100,000 records per partition by default (a 1M
            # backlog on 3 partitions peaked at 120 MB RSS); 20,000 keeps it under 80 MB, and
            # a 50 ms (not 1 s) backoff once the queue is full keeps the drain rate. Before
            # the URL's settings, so that a user's choice wins.
            "queued.min.messages": 20000,
            "fetch.queue.backoff.ms": 50,
            **self.settings.base_config(),
            "group.id": group,
            "client.id": consumer,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest" if options.start == "latest" else "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": max(100, min(3000, session_ms // 3)),
            "enable.partition.eof": False,
            **dict(options.options),
        }
        member = KafkaConsumer(config, topics, options, self._publish_for_dlq, self._where)
        try:
            await member.start(timeout=max(30.0, options.session_timeout * 3))
        except EventBusError:  # a refused login, say: do not leave the client retrying it
            with contextlib.suppress(EventBusError):
                await member.kill()
            raise
        self._consumers.add(member)
        return member

    async def _publish_for_dlq(self, topic: str, records: Sequence[Outgoing]) -> list[Position]:
        return await self.publish(topic, records, timeout=max(30.0, self.settings.connect_timeout))

    # -- admin ------------------------------------------------------------------------------

    async def create_topic(self, spec: TopicSpec) -> None:
        """Create and wait until metadata shows it; TopicExistsError if it exists."""
        await self._admin_client().create_topic(spec)

    async def describe_topic(self, name: str) -> TopicInfo:
        """Partitions with watermarks (count = high - low: an estimate, gaps exist) and the
        configs read back as a TopicSpec. TopicNotFoundError."""
        return await self._admin_client().describe_topic(name)

    async def list_topics(self) -> list[str]:
        return await self._admin_client().list_topics()

    async def alter_topic(self, spec: TopicSpec) -> None:
        await self._admin_client().alter_topic(spec)

    async def delete_topic(self, name: str) -> None:
        await self._admin_client().delete_topic(name)

    async def list_groups(self) -> list[str]:
        return await self._admin_client().list_groups()

    async def describe_group(self, group: str) -> GroupInfo:
        """State, members with assignments, committed offsets and lag (high watermark -
        committed). ``pending`` is 0: Kafka does not track delivered, un-acked records."""
        return await self._admin_client().describe_group(group)

    async def trim_finished(self, topic: str, group: str, partitions: Sequence[int]) -> int:
        """Delete the records below the group's committed offsets (see TrimsFinished)."""
        return await self._admin_client().trim_finished(topic, group, partitions)

    async def reset_group(
        self, group: str, topic: str, to: ResetTarget
    ) -> dict[int, tuple[Offset | None, Offset | None]]:
        """Move an idle group; GroupActiveError while it has members."""
        return await self._admin_client().reset_group(group, topic, to)
