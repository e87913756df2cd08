"""In-memory transport: the reference implementation of the transport contract.

Features: partitions with int offsets, consumer groups whose members own partitions (assigned
round-robin over live members, as Kafka's group coordinator would), pending records with
delivery counts, redelivery after nack delay, visibility timeout or member death, replay by
offset and time, retention by time and size, lag, atomic dead-lettering.

Leases as the contract states them: each member's background task heartbeats and renews the
pending entries it holds (their ``delivered_at``, from which the visibility timeout counts), so
a record waiting in the application or in a slow handler is never due for redelivery while its
member lives; renewal stops at ``max_lease``. ``release`` makes an entry due at once with its
delivery count one lower, so the next delivery has the same ``attempt``.

Connection string: ``memory://`` (the default broker of this process) or ``memory://NAME`` (a
named one). Every connection to the same URL in one process shares one broker, so two buses
see each other's events, as two clients of one server would. Options (query string or
``options``): ``auto_create=true`` creates unknown topics (1 partition) on publish.

Safe under threads and asyncio: the broker is guarded by one lock, and waiting consumers on any
event loop are woken with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventbus._urls import query_options, split
from eventbus.errors import (
    ClosedError,
    EventTooLargeError,
    GroupNotFoundError,
    InvalidPositionError,
    TopicExistsError,
    TopicNotFoundError,
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

__all__ = ["MemoryTransport"]

CAPABILITIES = Capabilities(
    transport="memory",
    native_delivery_count=True,
    redelivery_on_timeout=True,
    timestamp_replay=True,
    retention_by_time=True,
    retention_by_size=True,
    compaction=False,
    transactions=False,
    reset_active_group=True,
    auto_create_topics=False,
    atomic_dead_letter=True,
    stream_layout=True,  # kept in the spec (no foreign writers to read)
)

TP = tuple[str, int]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Stored:
    offset: int
    value: bytes
    key: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int
    size: int


@dataclass
class _Partition:
    records: list[_Stored] = field(default_factory=list)
    next_offset: int = 0
    bytes: int = 0

    @property
    def first_offset(self) -> int:
        return self.records[0].offset if self.records else self.next_offset

    def get(self, offset: int) -> _Stored | None:
        if not self.records:
            return None
        index = offset - self.records[0].offset
        return self.records[index] if 0 <= index < len(self.records) else None

    def offset_for_time(self, ms: int) -> int:
        for stored in self.records:
            if stored.timestamp_ms >= ms:
                return stored.offset
        return self.next_offset


@dataclass
class _Topic:
    spec: TopicSpec
    partitions: list[_Partition]
    round_robin: int = 0


@dataclass
class _Pending:
    member: str
    delivered_at: float
    count: int
    not_before: float | None = None


@dataclass
class _Member:
    topics: tuple[str, ...]
    last_seen: float
    session_timeout: float
    visibility_timeout: float
    alive: bool = True


@dataclass
class _Group:
    positions: dict[TP, int] = field(default_factory=dict)
    pending: dict[TP, dict[int, _Pending]] = field(default_factory=dict)
    members: dict[str, _Member] = field(default_factory=dict)
    assignment: dict[str, list[TP]] = field(default_factory=dict)
    generation: int = 0


class _Broker:
    """One in-memory server. All state changes happen under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.topics: dict[str, _Topic] = {}
        self.groups: dict[str, _Group] = {}
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    # waking consumers -------------------------------------------------------------------
    def notify(self) -> None:
        """Wake every waiting fetch; called with the lock held after any change."""
        for loop, event in list(self._waiters):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed; its waiter is gone with it
                self._waiters.discard((loop, event))

    async def wait(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiter = (loop, event)
        with self.lock:
            self._waiters.add(waiter)
        try:
            await asyncio.wait_for(event.wait(), max(seconds, 0.0))
        except TimeoutError:
            pass
        finally:
            with self.lock:
                self._waiters.discard(waiter)

    # topics --------------------------------------------------------------------------------
    def topic(self, name: str) -> _Topic:
        try:
            return self.topics[name]
        except KeyError:
            raise TopicNotFoundError(
                f"topic {name!r} does not exist on this memory broker: create it first "
                "(bus.create_topic(TopicSpec(name=...))) or open memory://?auto_create=true"
            ) from None

    def apply_retention(self, topic: _Topic) -> None:
        spec = topic.spec
        cutoff = _now_ms() - spec.retention_ms if spec.retention_ms else None
        for part in topic.partitions:
            drop = 0
            size = part.bytes
            for stored in part.records:
                too_old = cutoff is not None and stored.timestamp_ms < cutoff
                too_big = spec.retention_bytes is not None and size > spec.retention_bytes
                if not (too_old or too_big):
                    break
                size -= stored.size
                drop += 1
            if drop:
                del part.records[:drop]
                part.bytes = size

    # groups --------------------------------------------------------------------------------
    def rebalance(self, name: str, group: _Group, now: float) -> None:
        """Drop dead members and reassign partitions round-robin over the live ones."""
        for member_name, member in list(group.members.items()):
            if now - member.last_seen > member.session_timeout:
                member.alive = False
                del group.members[member_name]
        wanted: dict[str, list[TP]] = {m: [] for m in sorted(group.members)}
        topics = sorted({t for m in group.members.values() for t in m.topics})
        for topic_name in topics:
            topic = self.topics.get(topic_name)
            if topic is None:
                continue
            readers = sorted(m for m, mem in group.members.items() if topic_name in mem.topics)
            for p in range(len(topic.partitions)):
                wanted[readers[p % len(readers)]].append((topic_name, p))
        if wanted != group.assignment:
            group.assignment = wanted
            group.generation += 1

    def start_offset(self, topic: _Topic, p: int, start: str | datetime) -> int:
        part = topic.partitions[p]
        if start == "earliest":
            return part.first_offset
        if start == "latest":
            return part.next_offset
        if isinstance(start, datetime):
            return part.offset_for_time(int(start.timestamp() * 1000))
        raise InvalidPositionError(f"unknown start {start!r}: use earliest, latest or a datetime")


def _to_record(topic: str, p: int, stored: _Stored, attempt: int) -> Record:
    return Record(
        topic=topic,
        partition=p,
        offset=stored.offset,
        value=stored.value,
        key=stored.key,
        headers=dict(stored.headers),
        timestamp_ms=stored.timestamp_ms,
        attempt=attempt,
    )


_BROKERS: dict[str, _Broker] = {}
_BROKERS_LOCK = threading.Lock()


def _broker(name: str) -> _Broker:
    with _BROKERS_LOCK:
        broker = _BROKERS.get(name)
        if broker is None:
            broker = _BROKERS[name] = _Broker()
        return broker


def _as_int(offset: Offset) -> int:
    if isinstance(offset, int):
        return offset
    if offset.isdigit():
        return int(offset)
    raise InvalidPositionError(f"{offset!r} is not a memory offset: memory offsets are integers")


class MemoryTransport:
    """The in-memory transport (see the module docstring)."""

    capabilities: Capabilities

    def __init__(self, name: str = "", *, auto_create: bool = False) -> None:
        self.name = name
        self._broker = _broker(name)
        self._auto_create = auto_create
        self._closed = False
        self.capabilities = dataclasses.replace(CAPABILITIES, auto_create_topics=auto_create)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> MemoryTransport:
        parts = split(url)
        opts = {**query_options(parts), **options}
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
            broker.topics[topic] = _Topic(TopicSpec(name=topic), [_Partition()])
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
        now = _now_ms()
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
            stored = _Stored(
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
                first = _as_int(start) + (0 if inclusive else 1)
            first = max(first, part.first_offset)
            out: list[Record] = []
            for offset in range(first, min(first + limit, part.next_offset)):
                stored = part.get(offset)
                if stored is not None:
                    out.append(_to_record(topic, partition, stored, 1))
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
            state = broker.groups.setdefault(group, _Group())
            for topic_name, target in zip(topics, targets, strict=True):
                for p in range(len(target.partitions)):
                    if (topic_name, p) not in state.positions:
                        state.positions[(topic_name, p)] = broker.start_offset(
                            target, p, options.start
                        )
            state.members[consumer] = _Member(
                tuple(topics), now, options.session_timeout, options.visibility_timeout
            )
            broker.rebalance(group, state, now)
            broker.notify()
        return MemoryConsumer(self, group, consumer, tuple(topics), options)

    # admin ---------------------------------------------------------------------------------
    async def create_topic(self, spec: TopicSpec) -> None:
        self._check()
        with self._broker.lock:
            if spec.name in self._broker.topics:
                raise TopicExistsError(f"topic {spec.name!r} already exists")
            self._broker.topics[spec.name] = _Topic(
                spec, [_Partition() for _ in range(spec.partitions)]
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
            target.partitions.extend(_Partition() for _ in range(spec.partitions - have))
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
            state = broker.groups.setdefault(group, _Group())
            out: dict[int, tuple[Offset | None, Offset | None]] = {}
            for p in range(len(target.partitions)):
                before = state.positions.get((topic, p))
                if isinstance(to, Mapping):
                    if p not in to:
                        continue
                    after = _as_int(to[p])
                else:
                    after = broker.start_offset(target, p, to)
                state.positions[(topic, p)] = after
                state.pending.pop((topic, p), None)
                out[p] = (before, after)
            broker.notify()
            return out


log = logging.getLogger("eventbus.memory")


_Lease = tuple[float, int]
"""(since, count): when the application got the record (monotonic s; ``max_lease`` counts from
here), and the delivery it belongs to (a later delivery of the same record is another lease)."""


class MemoryConsumer:
    """A member of a group on the memory broker."""

    def __init__(
        self,
        transport: MemoryTransport,
        group: str,
        name: str,
        topics: tuple[str, ...],
        options: ConsumerOptions,
    ) -> None:
        self._transport = transport
        self._broker = transport._broker
        self._group = group
        self._name = name
        self._topics = topics
        self._options = options
        self._closed = False
        self._leases: dict[tuple[str, int, int], _Lease] = {}
        self._assigned_version: tuple[int, int] = (0, -1)
        self._lost = 0
        """Leases the keepalive dropped (taken by another member, or past max_lease)."""
        self._assigned_set: set[TP] = set()
        self._keepalive: asyncio.Task[None] | None = None

    def _state(self) -> _Group:
        state = self._broker.groups.get(self._group)
        if state is None:  # deleted under us: start again
            state = self._broker.groups[self._group] = _Group()
        return state

    def _collect(self, max_records: int, now: float) -> tuple[list[Record], float | None]:
        """Under the lock: take what is due for this member; also say when more falls due."""
        broker = self._broker
        state = self._state()
        member = state.members.get(self._name)
        if member is None or not member.alive:
            # we were dropped (silent past the session timeout): rejoin as a new member
            member = state.members[self._name] = _Member(
                self._topics, now, self._options.session_timeout, self._options.visibility_timeout
            )
        member.last_seen = now
        broker.rebalance(self._group, state, now)
        out: list[Record] = []
        next_due: float | None = None
        for tp in state.assignment.get(self._name, []):
            topic = broker.topics.get(tp[0])
            if topic is None or len(out) >= max_records:
                continue
            part = topic.partitions[tp[1]]
            pending = state.pending.setdefault(tp, {})
            if any(
                self._due(e, state, now) is not None
                for e in pending.values()
                if e.member != self._name
            ):
                # the partition just moved here and its last owner still works on records of
                # it: wait until it acks them (or times out), so per-key order holds
                continue
            for offset in sorted(pending):
                if len(out) >= max_records:
                    break
                entry = pending[offset]
                due = self._due(entry, state, now)
                if due is not None:
                    next_due = due if next_due is None else min(next_due, due)
                    continue
                stored = part.get(offset)
                if stored is None:  # removed by retention while pending
                    del pending[offset]
                    continue
                entry.member, entry.delivered_at, entry.not_before = self._name, now, None
                entry.count += 1
                out.append(_to_record(tp[0], tp[1], stored, entry.count))
            position = max(state.positions.get(tp, 0), part.first_offset)
            while len(out) < max_records and position < part.next_offset:
                stored = part.get(position)
                position += 1
                if stored is None:
                    continue
                pending[stored.offset] = _Pending(self._name, now, 1)
                out.append(_to_record(tp[0], tp[1], stored, 1))
            state.positions[tp] = position
        return out, next_due

    def _due(self, entry: _Pending, state: _Group, now: float) -> float | None:
        """None if the pending entry may be delivered now, else when it may."""
        if entry.not_before is not None:
            return None if now >= entry.not_before else entry.not_before
        holder = state.members.get(entry.member)
        if holder is None or not holder.alive:
            return None  # its member left or died
        expires = entry.delivered_at + holder.visibility_timeout
        return None if now >= expires else expires

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                raise ClosedError("this consumer is closed; open a new one")
            now = time.monotonic()
            with self._broker.lock:
                records, next_due = self._collect(max_records, now)
            if records:
                if self._keepalive is None:
                    self._keepalive = asyncio.create_task(self._keep_alive())
                leases = self._leases
                for record in records:
                    leases[(record.topic, record.partition, _as_int(record.offset))] = (
                        now,
                        record.attempt,
                    )
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait = remaining if next_due is None else min(remaining, next_due - now)
            # also wake up in time to notice members whose session ran out
            await self._broker.wait(min(wait, max(self._options.session_timeout / 4, 0.05)))

    async def ack(self, records: Sequence[Record]) -> None:
        with self._broker.lock:
            state = self._state()
            for record in records:
                self._leases.pop((record.topic, record.partition, _as_int(record.offset)), None)
                pending = state.pending.get((record.topic, record.partition))
                if pending is not None:
                    pending.pop(_as_int(record.offset), None)
            self._broker.notify()

    async def nack(self, record: Record, delay: float = 0.0) -> None:
        self._leases.pop((record.topic, record.partition, _as_int(record.offset)), None)
        with self._broker.lock:
            pending = self._state().pending.get((record.topic, record.partition), {})
            entry = pending.get(_as_int(record.offset))
            if entry is not None:
                entry.not_before = time.monotonic() + max(delay, 0.0)
            self._broker.notify()

    async def dead_letter(self, record: Record, topic: str, headers: Mapping[str, bytes]) -> None:
        copy = Outgoing(
            value=record.value,
            key=record.key,
            headers={**record.headers, **headers},
            timestamp_ms=record.timestamp_ms,
        )
        self._leases.pop((record.topic, record.partition, _as_int(record.offset)), None)
        with self._broker.lock:  # one lock: the copy and the ack happen together or not at all
            self._transport._append(topic, [copy])
            pending = self._state().pending.get((record.topic, record.partition))
            if pending is not None:
                pending.pop(_as_int(record.offset), None)
            self._broker.notify()

    # leases ----------------------------------------------------------------------------------
    def _entry(self, key: tuple[str, int, int], lease: _Lease) -> _Pending | None:
        """The broker's pending entry for a lease, if this member still holds that delivery."""
        state = self._broker.groups.get(self._group)
        pending = state.pending.get(key[:2]) if state is not None else None
        entry = pending.get(key[2]) if pending is not None else None
        if entry is None or entry.member != self._name or entry.count != lease[1]:
            return None
        return entry if entry.not_before is None else None

    @property
    def lease_epoch(self) -> object:
        """Changes with the group's assignment and when the keepalive drops a lease."""
        state = self._broker.groups.get(self._group)
        return (id(state), state.generation if state is not None else -1, self._lost)

    def holds(self, record: Record) -> bool:
        """True while this member holds the record's lease and owns its partition."""
        key = (record.topic, record.partition, _as_int(record.offset))
        lease = self._leases.get(key)
        if lease is None or time.monotonic() - lease[0] >= self._options.max_lease:
            return False
        # the broker hands a member's records to another only through its pending entry, and
        # moves partitions only through the assignment: both are checked
        return self._entry(key, lease) is not None and key[:2] in self._assigned()

    def _assigned(self) -> set[TP]:
        """This member's partitions (recomputed only when the group's assignment changed)."""
        state = self._broker.groups.get(self._group)
        if state is None:
            return set()
        version = (id(state), state.generation)
        if version != self._assigned_version:
            self._assigned_version = version
            self._assigned_set = set(state.assignment.get(self._name, ()))
        return self._assigned_set

    async def release(self, records: Sequence[Record]) -> None:
        """Make held records due at once, for whoever owns their partition, same attempt."""
        with self._broker.lock:
            for record in records:
                key = (record.topic, record.partition, _as_int(record.offset))
                lease = self._leases.pop(key, None)
                entry = self._entry(key, lease) if lease is not None else None
                if entry is not None:
                    entry.not_before = time.monotonic()
                    entry.count -= 1
            self._broker.notify()

    async def _keep_alive(self) -> None:
        """Heartbeat and renew held entries whether or not the application fetches."""
        opts = self._options
        tick = max(0.02, min(opts.session_timeout / 3, opts.visibility_timeout / 3, 1.0))
        while not self._closed:
            await asyncio.sleep(tick)  # the keepalive's period, not a wait for a condition
            now = time.monotonic()
            with self._broker.lock:
                member = self._state().members.get(self._name)
                if member is not None and member.alive:
                    member.last_seen = now
                for key, lease in list(self._leases.items()):
                    entry = self._entry(key, lease)
                    if entry is None:
                        del self._leases[key]  # settled elsewhere or redelivered: not ours
                        self._lost += 1
                    elif now - lease[0] >= opts.max_lease:
                        del self._leases[key]
                        self._lost += 1
                        log.warning(
                            "%s/%s/%s held by %r for more than max_lease (%.0f s): no longer "
                            "renewed, it will be delivered again",
                            *key,
                            self._name,
                            opts.max_lease,
                        )
                    else:
                        entry.delivered_at = now

    async def _stop_keepalive(self) -> None:
        task, self._keepalive = self._keepalive, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop_keepalive()
        self._leases.clear()
        with self._broker.lock:
            state = self._state()
            state.members.pop(self._name, None)
            self._broker.rebalance(self._group, state, time.monotonic())
            self._broker.notify()

    async def kill(self) -> None:
        self._closed = True
        await self._stop_keepalive()
        self._leases.clear()
