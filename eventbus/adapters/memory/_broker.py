"""The in-memory broker behind ``memory://``: topics, partitions, groups, pending records,
under one lock (see :mod:`eventbus.adapters.memory`)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from eventbus.errors import (
    InvalidPositionError,
    TopicNotFoundError,
)
from eventbus.topics import TopicSpec
from eventbus.transport import (
    Capabilities,
    Offset,
    Record,
)

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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Stored:
    offset: int
    value: bytes
    key: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int
    size: int


@dataclass
class PartitionLog:
    records: list[Stored] = field(default_factory=list)
    next_offset: int = 0
    bytes: int = 0

    @property
    def first_offset(self) -> int:
        return self.records[0].offset if self.records else self.next_offset

    def get(self, offset: int) -> Stored | None:
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
class TopicLog:
    spec: TopicSpec
    partitions: list[PartitionLog]
    round_robin: int = 0


@dataclass
class Pending:
    member: str
    delivered_at: float
    count: int
    not_before: float | None = None


@dataclass
class Member:
    topics: tuple[str, ...]
    last_seen: float
    session_timeout: float
    visibility_timeout: float
    alive: bool = True


@dataclass
class GroupState:
    positions: dict[TP, int] = field(default_factory=dict)
    pending: dict[TP, dict[int, Pending]] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    assignment: dict[str, list[TP]] = field(default_factory=dict)
    generation: int = 0


class Broker:
    """One in-memory server. All state changes happen under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.topics: dict[str, TopicLog] = {}
        self.groups: dict[str, GroupState] = {}
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
    def topic(self, name: str) -> TopicLog:
        try:
            return self.topics[name]
        except KeyError:
            raise TopicNotFoundError(
                f"topic {name!r} does not exist on this memory broker: create it first "
                "(bus.create_topic(TopicSpec(name=...))) or open memory://?auto_create=true"
            ) from None

    def apply_retention(self, topic: TopicLog) -> None:
        spec = topic.spec
        cutoff = now_ms() - spec.retention_ms if spec.retention_ms else None
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
    def rebalance(self, name: str, group: GroupState, now: float) -> None:
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

    def start_offset(self, topic: TopicLog, p: int, start: str | datetime) -> int:
        part = topic.partitions[p]
        if start == "earliest":
            return part.first_offset
        if start == "latest":
            return part.next_offset
        if isinstance(start, datetime):
            return part.offset_for_time(int(start.timestamp() * 1000))
        raise InvalidPositionError(f"unknown start {start!r}: use earliest, latest or a datetime")


def to_record(topic: str, p: int, stored: Stored, attempt: int) -> Record:
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


_BROKERS: dict[str, Broker] = {}
_BROKERS_LOCK = threading.Lock()


def broker_named(name: str) -> Broker:
    with _BROKERS_LOCK:
        broker = _BROKERS.get(name)
        if broker is None:
            broker = _BROKERS[name] = Broker()
        return broker


def as_int(offset: Offset) -> int:
    if isinstance(offset, int):
        return offset
    if offset.isdigit():
        return int(offset)
    raise InvalidPositionError(f"{offset!r} is not a memory offset: memory offsets are integers")
