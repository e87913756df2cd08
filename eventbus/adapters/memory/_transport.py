"""MemoryTransport: the transport contract over the in-memory broker."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from eventbus._urls import query_options, split
from eventbus.adapters.memory._broker import (
    CAPABILITIES,
    GroupState,
    Member,
    PartitionLog,
    Stored,
    TopicLog,
    as_int,
    broker_named,
    now_ms,
    to_record,
)
from eventbus.adapters.memory._consumer import MemoryConsumer
from eventbus.errors import (
    ClosedError,
    ConfigurationError,
    EventTooLargeError,
    GroupNotFoundError,
    InvalidPositionError,
    TopicExistsError,
    UnsupportedError,
)
from eventbus.topics import TopicSpec
from eventbus.transport import (
    Capabilities,
    ConsumerOptions,
    GroupInfo,
    GroupMember,
    GroupPartition,
    Offset,
    Outgoing,
    PartitionInfo,
    Position,
    Record,
    ResetTarget,
    TopicInfo,
    record_size,
)


class MemoryTransport:
    """The in-memory transport (see the module docstring)."""

    capabilities: Capabilities

    def __init__(self, name: str = "", *, auto_create: bool = False) -> None:
        self.name = name
        self._broker = broker_named(name)
        self._auto_create = auto_create
        self._closed = False
        self.capabilities = dataclasses.replace(CAPABILITIES, auto_create_topics=auto_create)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> MemoryTransport:
        parts = split(url)
        opts = {**query_options(parts), **options}
        unknown = sorted(set(opts) - {"auto_create"})
        if unknown:  # a typo would otherwise be ignored silently
            raise ConfigurationError(
                f"unknown memory:// option(s) {', '.join(map(repr, unknown))}; the only option "
                "is auto_create (true/false)"
            )
        auto = str(opts.get("auto_create", "false")).lower() in ("1", "true", "yes")
        return cls(parts.netloc + parts.path.rstrip("/"), auto_create=auto)

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        self._closed = True

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("this memory transport is closed; open a new bus")

    # publish -----------------------------------------------------------------------------------
    async def publish(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float = 10.0
    ) -> list[Position]:
        self._check()
        with self._broker.lock:
            return self._append(topic, records)

    def _append(self, topic: str, records: Sequence[Outgoing]) -> list[Position]:
        """Write records; the caller holds the broker lock."""
        from eventbus.partitioning import partition_for_key

        broker = self._broker
        if topic not in broker.topics and self._auto_create:
            broker.topics[topic] = TopicLog(TopicSpec(name=topic), [PartitionLog()])
        target = broker.topic(topic)
        limit = target.spec.max_event_bytes
        sizes = [record_size(r) for r in records]
        for size in sizes:
            if size > limit:
                raise EventTooLargeError(
                    f"event of {size} bytes exceeds topic {topic!r}'s limit of {limit} "
                    "bytes; nothing was written. Make it smaller, or raise the topic's "
                    "max_event_bytes"
                )
        count = len(target.partitions)
        positions: list[Position] = []
        now = now_ms()
        for record, size in zip(records, sizes, strict=True):
            if record.partition is not None:
                if not 0 <= record.partition < count:
                    raise InvalidPositionError(
                        f"topic {topic!r} has partitions 0..{count - 1}, not {record.partition}"
                    )
                p = record.partition
            elif record.key is not None:
                p = partition_for_key(record.key, count)
            else:
                p = target.round_robin % count
                target.round_robin += 1
            part = target.partitions[p]
            stored = Stored(
                part.next_offset,
                record.value,
                record.key,
                dict(record.headers),
                record.timestamp_ms if record.timestamp_ms is not None else now,
                size,
            )
            part.records.append(stored)
            part.next_offset += 1
            part.bytes += size
            positions.append(Position(p, stored.offset))
        broker.apply_retention(target)
        broker.notify()
        return positions

    # replay ---------------------------------------------------------------------------------
    async def read(
        self,
        topic: str,
        partition: int,
        start: Offset | datetime | None,
        *,
        inclusive: bool = True,
        limit: int = 1000,
    ) -> list[Record]:
        self._check()
        with self._broker.lock:
            target = self._broker.topic(topic)
            self._broker.apply_retention(target)
            if not 0 <= partition < len(target.partitions):
                raise InvalidPositionError(f"topic {topic!r} has no partition {partition}")
            part = target.partitions[partition]
            if start is None:
                first = part.first_offset
            elif isinstance(start, datetime):
                first = part.offset_for_time(int(start.timestamp() * 1000))
            else:
                first = as_int(start) + (0 if inclusive else 1)
            first = max(first, part.first_offset)
            out: list[Record] = []
            for offset in range(first, min(first + limit, part.next_offset)):
                stored = part.get(offset)
                if stored is not None:
                    out.append(to_record(topic, partition, stored, 1))
            return out

    # groups ---------------------------------------------------------------------------------
    async def open_consumer(
        self, topics: Sequence[str], group: str, consumer: str, options: ConsumerOptions
    ) -> MemoryConsumer:
        self._check()
        broker = self._broker
        now = time.monotonic()
        with broker.lock:
            targets = [broker.topic(t) for t in topics]
            state = broker.groups.setdefault(group, GroupState())
            for topic_name, target in zip(topics, targets, strict=True):
                for p in range(len(target.partitions)):
                    if (topic_name, p) not in state.positions:
                        state.positions[(topic_name, p)] = broker.start_offset(
                            target, p, options.start
                        )
            state.members[consumer] = Member(
                tuple(topics), now, options.session_timeout, options.visibility_timeout
            )
            broker.rebalance(group, state, now)
            broker.notify()
        return MemoryConsumer(self._broker, self._append, group, consumer, tuple(topics), options)

    # admin ---------------------------------------------------------------------------------
    async def create_topic(self, spec: TopicSpec) -> None:
        self._check()
        with self._broker.lock:
            if spec.name in self._broker.topics:
                raise TopicExistsError(f"topic {spec.name!r} already exists")
            self._broker.topics[spec.name] = TopicLog(
                spec, [PartitionLog() for _ in range(spec.partitions)]
            )

    async def describe_topic(self, name: str) -> TopicInfo:
        self._check()
        with self._broker.lock:
            target = self._broker.topic(name)
            self._broker.apply_retention(target)
            parts = [
                PartitionInfo(
                    p,
                    part.records[0].offset if part.records else None,
                    part.records[-1].offset if part.records else None,
                    len(part.records),
                )
                for p, part in enumerate(target.partitions)
            ]
            return TopicInfo(target.spec, parts)

    async def list_topics(self) -> list[str]:
        self._check()
        with self._broker.lock:
            return sorted(self._broker.topics)

    async def alter_topic(self, spec: TopicSpec) -> None:
        self._check()
        with self._broker.lock:
            target = self._broker.topic(spec.name)
            have = len(target.partitions)
            if spec.partitions < have:
                raise UnsupportedError(
                    f"topic {spec.name!r} has {have} partitions and cannot shrink to "
                    f"{spec.partitions} (capability partitions_can_shrink is false); delete "
                    "and recreate it instead"
                )
            target.partitions.extend(PartitionLog() for _ in range(spec.partitions - have))
            if spec.layout is None and target.spec.layout is not None:  # a spec without keeps it
                spec = spec.model_copy(update={"layout": target.spec.layout})
            target.spec = spec
            for state in self._broker.groups.values():
                if any(tp[0] == spec.name for tp in state.positions):
                    for p in range(have, spec.partitions):
                        state.positions.setdefault((spec.name, p), 0)
            self._broker.apply_retention(target)
            self._broker.notify()

    async def delete_topic(self, name: str) -> None:
        self._check()
        with self._broker.lock:
            self._broker.topic(name)
            del self._broker.topics[name]
            for state in self._broker.groups.values():
                for tp in [tp for tp in state.positions if tp[0] == name]:
                    del state.positions[tp]
                    state.pending.pop(tp, None)

    async def list_groups(self) -> list[str]:
        self._check()
        with self._broker.lock:
            return sorted(self._broker.groups)

    async def topic_groups(self, topic: str) -> list[str]:
        """Groups with positions on ``topic`` (see TopicGroups)."""
        self._check()
        with self._broker.lock:
            return sorted(
                g
                for g, state in self._broker.groups.items()
                if any(t == topic for t, _ in state.positions)
            )

    async def trim_finished(self, topic: str, group: str, partitions: Sequence[int]) -> int:
        """Drop records before the group's first unfinished one (see TrimsFinished)."""
        self._check()
        dropped = 0
        with self._broker.lock:
            target = self._broker.topic(topic)
            state = self._broker.groups.get(group)
            if state is None:
                return 0
            for p in partitions:
                position = state.positions.get((topic, p))
                if position is None or not 0 <= p < len(target.partitions):
                    continue
                pending = state.pending.get((topic, p))
                bound = min(position, min(pending)) if pending else position
                part = target.partitions[p]
                drop = sum(1 for stored in part.records if stored.offset < bound)
                if drop:
                    part.bytes -= sum(stored.size for stored in part.records[:drop])
                    del part.records[:drop]
                    dropped += drop
        return dropped

    async def append_if_last(
        self,
        topic: str,
        partition: int,
        last: Offset | None,
        record: Outgoing,
        *,
        timeout: float = 10.0,
    ) -> Position | None:
        """Compare-and-set append under the broker lock (see ConditionalAppend)."""
        self._check()
        with self._broker.lock:
            part = self._broker.topic(topic).partitions[partition]
            now = part.records[-1].offset if part.records else None
            if now != last:
                return None
            return self._append(topic, [dataclasses.replace(record, partition=partition)])[0]

    async def describe_group(self, group: str) -> GroupInfo:
        self._check()
        broker = self._broker
        now = time.monotonic()
        with broker.lock:
            state = broker.groups.get(group)
            if state is None:
                raise GroupNotFoundError(f"consumer group {group!r} does not exist")
            broker.rebalance(group, state, now)
            partitions: list[GroupPartition] = []
            for (topic_name, p), position in sorted(state.positions.items()):
                target = broker.topics.get(topic_name)
                if target is None:
                    continue
                part = target.partitions[p]
                pending = state.pending.get((topic_name, p), {})
                lag = sum(1 for s in part.records if s.offset >= position)
                partitions.append(
                    GroupPartition(
                        topic_name,
                        p,
                        position,
                        lag,
                        len(pending),
                        delivered=position - 1 if position > 0 else None,
                        lowest_pending=min(pending) if pending else None,
                        backlog=lag + len(pending),
                    )
                )
            members = [
                GroupMember(
                    name,
                    tuple(state.assignment.get(name, [])),
                    int((now - m.last_seen) * 1000),
                    sum(
                        1 for tp in state.pending.values() for e in tp.values() if e.member == name
                    ),
                )
                for name, m in sorted(state.members.items())
            ]
            status = "stable" if state.members else "empty"
            return GroupInfo(group, status, members, partitions)

    async def reset_group(
        self, group: str, topic: str, to: ResetTarget
    ) -> dict[int, tuple[Offset | None, Offset | None]]:
        self._check()
        broker = self._broker
        with broker.lock:
            target = broker.topic(topic)
            state = broker.groups.setdefault(group, GroupState())
            out: dict[int, tuple[Offset | None, Offset | None]] = {}
            for p in range(len(target.partitions)):
                before = state.positions.get((topic, p))
                if isinstance(to, Mapping):
                    if p not in to:
                        continue
                    after = as_int(to[p])
                else:
                    after = broker.start_offset(target, p, to)
                state.positions[(topic, p)] = after
                state.pending.pop((topic, p), None)
                out[p] = (before, after)
            broker.notify()
            return out
