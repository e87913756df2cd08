"""Topics and groups through librdkafka's AdminClient, as coroutines.

The AdminClient has no asyncio API: its calls return ``concurrent.futures.Future`` objects,
which are awaited with ``asyncio.wrap_future``; its one blocking call (``list_topics``) runs in
a worker thread. Every call carries a timeout, and every error is translated at this edge.

Refused logins: librdkafka retries a refused SASL login in the background and reports it only
through ``error_cb`` (served by ``poll()``), while the request waiting for a connection runs
into its timeout with a generic "transport failure". So the admin client's error events go to
the transport's :class:`CredentialWatch`, every wait here polls the client, and a refusal ends
the wait at once with AuthenticationError. Metadata is asked for in short slices while no
broker is usable, so the blocking ``list_topics`` never outlives a refusal by more than one.

Topic size limits: Kafka's ``max.message.bytes`` bounds a whole record *batch* (batch header,
record framing, headers), while ``TopicSpec.max_event_bytes`` bounds one event's key + value +
headers on every transport. A topic created here gets ``max.message.bytes = max_event_bytes +
RECORD_OVERHEAD`` so that an event of exactly ``max_event_bytes`` fits, and reading a topic back
reports ``max.message.bytes - RECORD_OVERHEAD``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import confluent_kafka.admin as _kafka_admin
from confluent_kafka import (
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from eventbus.adapters.kafka._errors import CredentialWatch, kafka_error, translate
from eventbus.adapters.kafka._metadata import decode_metadata, to_ms
from eventbus.errors import (
    ConnectionFailedError,
    EventBusError,
    GroupActiveError,
    GroupNotFoundError,
    InvalidPositionError,
    OperationTimeoutError,
    TopicNotFoundError,
    UnsupportedError,
)
from eventbus.topics import TopicSpec
from eventbus.transport import (
    GroupInfo,
    GroupMember,
    GroupPartition,
    Offset,
    PartitionInfo,
    ResetTarget,
    TopicInfo,
)

__all__ = ["RECORD_OVERHEAD", "KafkaAdmin", "TopicMeta", "to_ms"]

RECORD_OVERHEAD = 512
"""Bytes of batch and record framing a topic's ``max.message.bytes`` allows beyond one event."""
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
"""Kafka's default ``max.message.bytes`` (used when the config cannot be read)."""
_MAPPED = {"retention.ms", "retention.bytes", "cleanup.policy", "max.message.bytes"}

_LEADERLESS = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    # metadata of a partition just created (or just moved) still settling on the broker
    KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.FENCED_LEADER_EPOCH,
}
_SLICE = 0.25
"""Seconds one ``list_topics`` call waits for a usable broker before the watch is checked."""
T = TypeVar("T")
K: Any = _kafka_admin
"""confluent_kafka.admin, untyped: its re-exports carry no type information."""


class TopicMeta:
    """What publish needs to know about a topic: partition count and batch limit."""

    __slots__ = ("fetched", "max_message_bytes", "partitions")

    def __init__(self, partitions: int, max_message_bytes: int) -> None:
        self.partitions = partitions
        self.max_message_bytes = max_message_bytes
        self.fetched = time.monotonic()

    @property
    def max_event_bytes(self) -> int:
        return max(1, self.max_message_bytes - RECORD_OVERHEAD)


def topic_configs(spec: TopicSpec) -> dict[str, str]:
    """The Kafka topic configs that express ``spec`` (``spec.config`` passes through last)."""
    configs = {
        "max.message.bytes": str(spec.max_event_bytes + RECORD_OVERHEAD),
        "cleanup.policy": spec.cleanup_policy,
    }
    if spec.retention_ms is not None:
        configs["retention.ms"] = str(spec.retention_ms)
    if spec.retention_bytes is not None:
        configs["retention.bytes"] = str(spec.retention_bytes)
    configs.update(spec.config)
    return configs


def spec_from_configs(name: str, partitions: int, entries: Mapping[str, Any]) -> TopicSpec:
    """Read a topic's configs back into a TopicSpec; ``config`` holds the other overrides."""

    def value(key: str) -> str | None:
        entry = entries.get(key)
        return None if entry is None else entry.value

    def positive(key: str) -> int | None:
        text = value(key)
        number = int(text) if text not in (None, "") else -1
        return number if number > 0 else None

    policy = value("cleanup.policy") or "delete"
    extra = {
        key: entry.value
        for key, entry in entries.items()
        if key not in _MAPPED and entry.source == K.ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    }
    if policy not in ("delete", "compact"):
        extra["cleanup.policy"] = policy
    mmb = int(value("max.message.bytes") or DEFAULT_MAX_MESSAGE_BYTES)
    return TopicSpec(
        name=name,
        partitions=partitions,
        retention_ms=positive("retention.ms"),
        retention_bytes=positive("retention.bytes"),
        max_event_bytes=max(1, mmb - RECORD_OVERHEAD),
        cleanup_policy="compact" if "compact" in policy else "delete",
        config=extra,
    )


def _committed(offset: int) -> int | None:
    return offset if offset >= 0 else None


def _backlog(committed: int | None, marks: tuple[int, int] | None) -> int:
    """Records from where the group goes on to the end offset: from its committed offset (the
    lowest record it has not acked), from the earliest retained offset where it has no commit
    (a new group's default start) or where retention deleted records past its commit. 0 when
    the partition is gone (no watermarks): nothing there is left to do. An upper bound where
    compaction or transaction markers left offset gaps."""
    if marks is None:
        return 0
    low, high = marks
    start = low if committed is None else max(committed, low)
    return max(0, high - start)


def _group_partition(
    topic: str,
    partition: int,
    committed: int | None,
    metadata: str | None,
    marks: tuple[int, int] | None,
) -> GroupPartition:
    """A GroupPartition from the committed offset and the partition's ``(low, high)``
    watermarks (None when unknown). ``lag`` = high - committed (None without a commit),
    ``backlog`` see :func:`_backlog`; ``delivered`` / ``lowest_pending`` come from eventbus
    commit metadata (``eb1 <high> ...``: offsets below ``high`` were delivered; ``committed``
    is the lowest not done). Conservative: acked records above the lowest un-acked one do not
    count as done."""
    lag = None if committed is None or marks is None else max(0, marks[1] - committed)
    backlog = _backlog(committed, marks)
    if committed is None:
        return GroupPartition(topic, partition, None, lag, backlog=backlog)
    high, _ = decode_metadata(metadata)
    if high > committed:
        return GroupPartition(
            topic,
            partition,
            committed,
            lag,
            delivered=high - 1,
            lowest_pending=committed,
            backlog=backlog,
        )
    delivered = committed - 1 if committed > 0 else None
    return GroupPartition(topic, partition, committed, lag, delivered=delivered, backlog=backlog)


class KafkaAdmin:
    """Admin operations over one AdminClient. All methods are coroutines with timeouts."""

    def __init__(
        self, config: dict[str, Any], where: str, timeout: float, watch: CredentialWatch
    ) -> None:
        settings: dict[str, Any] = {**config, "error_cb": watch}
        try:
            self._client = AdminClient(settings)
        except KafkaException as exc:
            raise translate(exc, "creating the Kafka admin client", where=where) from None
        self._watch = watch
        self._where = where
        self.timeout = timeout
        self._meta: dict[str, TopicMeta] = {}

    # -- plumbing -------------------------------------------------------------------------

    async def _result(self, future: concurrent.futures.Future[T], what: str) -> T:
        """The result of an admin future, within ``timeout`` + 5 s; AuthenticationError as
        soon as the login is refused meanwhile. Raises KafkaException and TimeoutError."""
        return await asyncio.wait_for(
            self._watch.guard(asyncio.wrap_future(future), what, poll=self._client.poll),
            self.timeout + 5.0,
        )

    async def _wait(self, future: concurrent.futures.Future[T], what: str) -> T:
        try:
            return await self._result(future, what)
        except TimeoutError:
            raise OperationTimeoutError(f"{what} timed out at {self._where}") from None
        except KafkaException as exc:
            raise translate(exc, what, where=self._where) from None

    async def metadata(
        self,
        topic: str | None = None,
        timeout: float | None = None,
        *,
        mark: int | None = None,
        what: str = "reading cluster metadata",
    ) -> Any:
        """Cluster metadata (for one topic, or all) from a worker thread.

        AuthenticationError as soon as a login refused after ``mark`` (a
        :meth:`CredentialWatch.mark`; by default, taken now) is reported."""
        wait = self.timeout if timeout is None else timeout
        if mark is None:
            self._client.poll(0)  # events queued before now do not count as new
            mark = self._watch.mark()
        return await asyncio.to_thread(self._metadata_blocking, topic, wait, mark, what)

    def _metadata_blocking(self, topic: str | None, timeout: float, mark: int, what: str) -> Any:
        deadline = time.monotonic() + timeout
        wait = min(timeout, _SLICE)
        while True:
            try:
                return self._client.list_topics(topic, wait)
            except KafkaException as exc:
                self._client.poll(0)  # serve error_cb
                failure = self._watch.failure(mark, what)
                if failure is not None:
                    raise failure from None
                left = deadline - time.monotonic()
                err = kafka_error(exc)
                if err is None or left <= 0:
                    raise translate(exc, what, where=self._where) from None
                if err.code() == KafkaError._TRANSPORT:
                    wait = min(left, _SLICE)  # no broker usable yet: look again shortly
                elif err.code() == KafkaError._TIMED_OUT:
                    wait = left  # a broker took the request: give it the time that is left
                else:
                    raise translate(exc, what, where=self._where) from None

    async def partition_count(self, topic: str) -> int:
        """The partition count; raises TopicNotFoundError."""
        md = await self.metadata(topic)
        info = md.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise TopicNotFoundError(
                f"topic {topic!r} does not exist at {self._where}; create it first "
                "(eventbus topics create, or auto_create=true in the URL)"
            )
        return len(info.partitions)

    async def _configs(self, topic: str) -> dict[str, Any]:
        resource = K.ConfigResource(K.ResourceType.TOPIC, topic)
        futures = self._client.describe_configs([resource], request_timeout=self.timeout)
        result: dict[str, Any] = await self._wait(futures[resource], f"describe topic {topic!r}")
        return result

    async def topic_meta(
        self, topic: str, max_age: float = 30.0, stale_wait: float = 1.0
    ) -> TopicMeta:
        """Partition count and limit for publish, cached ``max_age`` s. TopicNotFoundError.

        An expired entry is refreshed for at most ``stale_wait`` s: if the cluster cannot
        answer by then (a broker restarting), the old entry serves, so a publish is bounded
        by its own timeout, not the admin timeout (the producer has its own metadata)."""
        cached = self._meta.get(topic)
        if cached is None:
            return await self._fetch_meta(topic)
        if time.monotonic() - cached.fetched < max_age:
            return cached
        try:
            return await asyncio.wait_for(self._fetch_meta(topic), max(0.05, stale_wait))
        except (TimeoutError, OperationTimeoutError, ConnectionFailedError):
            cached.fetched = time.monotonic() - max_age + 5.0  # next try in 5 s, not each call
            return cached

    async def _fetch_meta(self, topic: str) -> TopicMeta:
        count = await self.partition_count(topic)
        entries = await self._configs(topic)
        entry = entries.get("max.message.bytes")
        mmb = int(entry.value) if entry is not None else DEFAULT_MAX_MESSAGE_BYTES
        meta = self._meta[topic] = TopicMeta(count, mmb)
        return meta

    def forget(self, topic: str) -> None:
        """Drop cached metadata of ``topic`` (after it changed)."""
        self._meta.pop(topic, None)

    async def _until(self, check: Any, what: str, timeout: float = 15.0) -> None:
        """Poll the coroutine function ``check`` until it returns True, or time out."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while not await check():
            if time.monotonic() > deadline:
                raise OperationTimeoutError(f"{what}: not visible in metadata after {timeout} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # -- topics ---------------------------------------------------------------------------

    async def create_topic(self, spec: TopicSpec) -> None:
        """Create and wait until metadata shows every partition. TopicExistsError."""
        new = K.NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=-1,
            config=topic_configs(spec),
        )
        futures = self._client.create_topics([new], request_timeout=self.timeout)
        await self._wait(futures[spec.name], f"create topic {spec.name!r}")
        self.forget(spec.name)
        await self._until(
            lambda: self._has_partitions(spec.name, spec.partitions), f"topic {spec.name!r}"
        )

    async def _has_partitions(self, topic: str, count: int) -> bool:
        md = await self.metadata(topic)
        info = md.topics.get(topic)
        if info is None or info.error is not None or len(info.partitions) < count:
            return False
        return all(p.leader >= 0 and p.error is None for p in info.partitions.values())

    async def _gone(self, topic: str) -> bool:
        md = await self.metadata(None)
        return topic not in md.topics

    async def list_topics(self) -> list[str]:
        md = await self.metadata(None)
        return sorted(name for name in md.topics if not name.startswith("__"))

    async def watermarks(self, topic: str, partitions: Iterable[int]) -> dict[int, tuple[int, int]]:
        """``{partition: (low, high)}``: the first offset held and the next offset written."""
        parts = list(partitions)
        low = await self.list_offsets(topic, parts, K.OffsetSpec.earliest())
        high = await self.list_offsets(topic, parts, K.OffsetSpec.latest())
        return {p: (low[p], high[p]) for p in parts}

    async def list_offsets(
        self, topic: str, partitions: Iterable[int], spec: Any
    ) -> dict[int, int]:
        """Offsets per partition for an ``OffsetSpec`` (``-1`` when a time is past the end)."""
        request = {TopicPartition(topic, p): spec for p in partitions}
        if not request:
            return {}
        deadline = time.monotonic() + self.timeout
        while True:
            futures = self._client.list_offsets(request, request_timeout=self.timeout)
            try:
                out: dict[int, int] = {}
                for tp, future in futures.items():
                    info = await self._result(future, f"list offsets of {topic!r}")
                    out[tp.partition] = info.offset
                return out
            except KafkaException as exc:
                # a partition just created may have no leader yet: retry briefly
                err = kafka_error(exc)
                if err is None or err.code() not in _LEADERLESS or time.monotonic() > deadline:
                    raise translate(exc, f"list offsets of {topic!r}", where=self._where) from None
            except TimeoutError:
                raise OperationTimeoutError(f"list offsets of {topic!r} timed out") from None
            await asyncio.sleep(0.1)
            # after a leader change the client may keep asking with the epoch it cached
            # (FENCED_LEADER_EPOCH every time): ask the cluster for the topic's metadata again
            with contextlib.suppress(EventBusError):
                await self.metadata(topic, max(0.1, min(1.0, deadline - time.monotonic())))

    async def describe_topic(self, name: str) -> TopicInfo:
        count = await self.partition_count(name)
        entries = await self._configs(name)
        marks = await self.watermarks(name, range(count))
        parts = [
            PartitionInfo(
                partition=p,
                first=low if high > low else None,
                last=high - 1 if high > low else None,
                count=max(0, high - low),
            )
            for p, (low, high) in sorted(marks.items())
        ]
        return TopicInfo(spec=spec_from_configs(name, count, entries), partitions=parts)

    async def alter_topic(self, spec: TopicSpec) -> None:
        """Grow partitions and set configs incrementally (never the old alter_configs)."""
        current = await self.partition_count(spec.name)
        if spec.partitions < current:
            raise UnsupportedError(
                f"topic {spec.name!r} has {current} partitions; Kafka cannot shrink it to "
                f"{spec.partitions} (capability partitions_can_grow: only growth). Recreate the "
                "topic to change this."
            )
        entries = [
            K.ConfigEntry(key, value, incremental_operation=K.AlterConfigOpType.SET)
            for key, value in topic_configs(spec).items()
        ]
        resource = K.ConfigResource(K.ResourceType.TOPIC, spec.name, incremental_configs=entries)
        futures = self._client.incremental_alter_configs([resource], request_timeout=self.timeout)
        await self._wait(futures[resource], f"alter topic {spec.name!r}")
        if spec.partitions > current:
            grow = K.NewPartitions(spec.name, spec.partitions)
            parts = self._client.create_partitions([grow], request_timeout=self.timeout)
            await self._wait(parts[spec.name], f"add partitions to {spec.name!r}")
            await self._until(
                lambda: self._has_partitions(spec.name, spec.partitions), f"topic {spec.name!r}"
            )
        self.forget(spec.name)

    async def delete_topic(self, name: str) -> None:
        futures = self._client.delete_topics([name], request_timeout=self.timeout)
        await self._wait(futures[name], f"delete topic {name!r}")
        self.forget(name)
        await self._until(lambda: self._gone(name), f"deletion of topic {name!r}")

    # -- groups ---------------------------------------------------------------------------

    async def list_groups(self) -> list[str]:
        future = self._client.list_consumer_groups(request_timeout=self.timeout)
        result = await self._wait(future, "list consumer groups")
        return sorted(g.group_id for g in result.valid)

    async def _describe(self, group: str) -> Any:
        """The ConsumerGroupDescription, retrying while the coordinator is still loading."""
        deadline = time.monotonic() + self.timeout
        while True:
            futures = self._client.describe_consumer_groups([group], request_timeout=self.timeout)
            try:
                return await self._result(futures[group], f"describe group {group!r}")
            except KafkaException as exc:
                err = kafka_error(exc)
                retriable = err is not None and err.code() in (
                    KafkaError.NOT_COORDINATOR,
                    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                    KafkaError.COORDINATOR_NOT_AVAILABLE,
                )
                if not retriable or time.monotonic() > deadline:
                    raise translate(exc, f"describe group {group!r}", where=self._where) from None
            except TimeoutError:
                raise OperationTimeoutError(f"describe group {group!r} timed out") from None
            await asyncio.sleep(0.1)

    async def committed(self, group: str, partitions: list[TopicPartition] | None) -> list[Any]:
        """The group's committed TopicPartitions (all of them when ``partitions`` is None)."""
        request = ConsumerGroupTopicPartitions(group, partitions)
        futures = self._client.list_consumer_group_offsets([request], request_timeout=self.timeout)
        result = await self._wait(futures[group], f"read offsets of group {group!r}")
        return list(result.topic_partitions or [])

    async def trim_finished(self, topic: str, group: str, partitions: Iterable[int]) -> int:
        """DeleteRecords below the group's committed offsets (see TrimsFinished): the
        committed offset is the group's lowest record not yet acked."""
        wanted = [TopicPartition(topic, p) for p in partitions]
        if not wanted:
            return 0
        marks = await self.watermarks(topic, [tp.partition for tp in wanted])
        cuts = [
            (tp.partition, tp.offset)
            for tp in await self.committed(group, wanted)
            if tp.topic == topic and tp.offset > marks.get(tp.partition, (0, 0))[0]
        ]
        if not cuts:
            return 0
        # a list of its own: confluent-kafka 2.6 empties (and frees) the list it is given
        request = [TopicPartition(topic, p, offset) for p, offset in cuts]
        futures = self._client.delete_records(request, request_timeout=self.timeout)
        for future in list(futures.values()):
            await self._wait(future, f"delete records of {topic!r}")
        return sum(offset - marks[p][0] for p, offset in cuts)

    async def describe_group(self, group: str) -> GroupInfo:
        desc = await self._describe(group)
        offsets = await self.committed(group, None)
        members = [
            GroupMember(
                name=m.client_id or m.member_id,
                assignments=sorted(
                    (tp.topic, tp.partition) for tp in (m.assignment.topic_partitions or [])
                ),
            )
            for m in desc.members
        ]
        if desc.state == ConsumerGroupState.DEAD and not offsets and not members:
            raise GroupNotFoundError(f"consumer group {group!r} does not exist at {self._where}")
        wanted: dict[tuple[str, int], tuple[int | None, str | None]] = {
            (tp.topic, tp.partition): (_committed(tp.offset), tp.metadata) for tp in offsets
        }
        for member in members:
            for key in member.assignments:
                wanted.setdefault(key, (None, None))
        partitions = await self._group_partitions(wanted)
        state = desc.state.name.lower() if desc.state is not None else "unknown"
        return GroupInfo(group=group, state=state, members=members, partitions=partitions)

    async def _group_partitions(
        self, wanted: Mapping[tuple[str, int], tuple[int | None, str | None]]
    ) -> list[GroupPartition]:
        by_topic: dict[str, list[int]] = {}
        for topic, partition in wanted:
            by_topic.setdefault(topic, []).append(partition)
        out: list[GroupPartition] = []
        for topic, parts in sorted(by_topic.items()):
            try:
                marks = await self.watermarks(topic, parts)
            except TopicNotFoundError:
                marks = {}
            for p in sorted(parts):
                committed, metadata = wanted[(topic, p)]
                out.append(_group_partition(topic, p, committed, metadata, marks.get(p)))
        return out

    async def reset_group(
        self, group: str, topic: str, to: ResetTarget
    ) -> dict[int, tuple[Offset | None, Offset | None]]:
        """Move an idle group's offsets; GroupActiveError while it has members."""
        desc = await self._describe(group)
        if desc.members:
            names = ", ".join(sorted(m.client_id or m.member_id for m in desc.members))
            raise GroupActiveError(
                f"consumer group {group!r} has {len(desc.members)} live member(s) ({names}); "
                "Kafka moves a group's offsets only while it has no members: stop (close) its "
                "consumers and retry (capability reset_active_group is false)"
            )
        count = await self.partition_count(topic)
        targets = await self._targets(topic, count, to)
        before_tps = await self.committed(group, [TopicPartition(topic, p) for p in range(count)])
        before = {tp.partition: _committed(tp.offset) for tp in before_tps}
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p, off, metadata="") for p, off in targets.items()]
        )
        futures = self._client.alter_consumer_group_offsets([request], request_timeout=self.timeout)
        await self._wait(futures[group], f"reset group {group!r} on {topic!r}")
        result: dict[int, tuple[Offset | None, Offset | None]] = {}
        for p, off in sorted(targets.items()):
            result[p] = (before.get(p), off)
        return result

    async def _targets(self, topic: str, count: int, to: ResetTarget) -> dict[int, int]:
        parts = range(count)
        if to == "earliest":
            return await self.list_offsets(topic, parts, K.OffsetSpec.earliest())
        if to == "latest":
            return await self.list_offsets(topic, parts, K.OffsetSpec.latest())
        if isinstance(to, datetime):
            found = await self.list_offsets(topic, parts, K.OffsetSpec.for_timestamp(to_ms(to)))
            latest = await self.list_offsets(topic, parts, K.OffsetSpec.latest())
            return {p: off if off >= 0 else latest[p] for p, off in found.items()}
        if isinstance(to, Mapping):
            out: dict[int, int] = {}
            for p, off in to.items():
                if not 0 <= p < count or not isinstance(off, int) or off < 0:
                    raise InvalidPositionError(
                        f"cannot reset to {p}:{off}: topic {topic!r} has partitions 0-{count - 1}"
                        " and Kafka offsets are non-negative integers"
                    )
                out[p] = off
            return out
        raise InvalidPositionError(
            f"reset target {to!r} is not earliest, latest, a datetime or {{partition: offset}}"
        )
