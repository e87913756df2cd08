"""A member of a consumer group over a migration: reads from the side its group is on and
switches sides when an operator's cutover tells it to (see ``MigrationTransport``)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Mapping, Sequence
from typing import Protocol

from eventbus.migration.control import MigrationState, TopicMigration
from eventbus.migration.marks import MIGRATION_HEADERS
from eventbus.transport import (
    ConsumerOptions,
    LeasedConsumer,
    Offset,
    Outgoing,
    Position,
    Record,
    Transport,
    TransportConsumer,
    offset_key,
)

__all__ = ["ConsumerHost", "MigrationConsumer"]


class ConsumerHost(Protocol):
    """What a member needs of the transport that opened it (a ``MigrationTransport``, which
    satisfies this structurally, so this module does not import it)."""

    source: Transport
    target: Transport
    state: MigrationState | None
    """The control record as last read."""

    def group_side(self, group: str) -> str:
        """``source``, ``target`` or ``paused``: where ``group`` reads now."""
        ...

    def changed(self) -> asyncio.Event:
        """An event set at the next change of the control record."""
        ...

    def stage_of(self, topic: str) -> TopicMigration | None: ...

    async def publish(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> list[Position]:
        """Publish as the migration does (dual-written per the topic's stage)."""
        ...

    def forget(self, member: MigrationConsumer) -> None:
        """``member`` is closed: no more heartbeats for it."""
        ...


class MigrationConsumer:
    """A group member that reads from the side its group is on and switches when told."""

    def __init__(
        self,
        transport: ConsumerHost,
        topics: tuple[str, ...],
        group: str,
        name: str,
        options: ConsumerOptions,
    ) -> None:
        self.transport = transport
        self.topics = topics
        self.group = group
        self.name = name
        self.options = options
        self.side: str | None = None
        self.inner: TransportConsumer | None = None
        self.outstanding: set[tuple[str, int, Offset]] = set()
        self.announcing = False
        """True while the member announces itself before it joins a side (never "paused")."""
        self._closed = False
        self._skips_for: MigrationState | None = None
        self._skips: dict[tuple[str, int], list[tuple[tuple[int, int], tuple[int, int]]]] = {}
        """Skip ranges by (topic, partition), sorted, for the state they were built from."""

    def status(self) -> str:
        """What the heartbeat says: the side being read, "joining" before the first join,
        or "paused" between sides."""
        if self.announcing:
            return "joining"
        return self.side if self.side is not None else "paused"

    async def switch_if_needed(self) -> None:
        wanted = self.transport.group_side(self.group)
        if wanted == self.side:
            return
        if self.inner is not None:
            if self.outstanding:
                return  # finish what was handed out first; acks go to the old side
            await self.inner.close()
            self.inner, self.side = None, None
        if wanted in ("source", "target"):
            side = self.transport.source if wanted == "source" else self.transport.target
            self.inner = await side.open_consumer(self.topics, self.group, self.name, self.options)
            self.side = wanted

    def _skip(self, record: Record) -> bool:
        """Whether the control record lists ``record`` (its topic, partition and offset) as
        already handled on the old side."""
        state = self.transport.state
        if state is None or self.group not in state.groups:
            return False
        if self._skips_for is not state:
            self._skips_for = state
            self._skips = {
                (topic, p): [(offset_key(a), offset_key(b)) for a, b in ranges]
                for topic, pos in state.groups[self.group].positions.items()
                for p, ranges in pos.skip.items()
            }
        ranges = self._skips.get((record.topic, record.partition))
        if not ranges:
            return False
        key = offset_key(record.offset)
        i = bisect.bisect_right(ranges, (key, (1 << 63, 0))) - 1
        return i >= 0 and ranges[i][0] <= key <= ranges[i][1]

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        await self.switch_if_needed()
        if self.inner is None or self.transport.group_side(self.group) != self.side:
            # paused between sides (or draining): wait for the control record to change
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.transport.changed().wait(), timeout)
            return []
        records = await self.inner.fetch(max_records, timeout)
        skipped = [r for r in records if self._skip(r)]
        if skipped:
            await self.inner.ack(skipped)
            records = [r for r in records if not self._skip(r)]
        for r in records:
            self.outstanding.add((r.topic, r.partition, r.offset))
        return records

    def _done(self, records: Sequence[Record]) -> None:
        for r in records:
            self.outstanding.discard((r.topic, r.partition, r.offset))

    async def ack(self, records: Sequence[Record]) -> None:
        if self.inner is not None:
            await self.inner.ack(records)
        self._done(records)

    async def nack(self, record: Record, delay: float = 0.0) -> None:
        if self.inner is not None:
            await self.inner.nack(record, delay)
        self._done([record])

    @property
    def lease_epoch(self) -> object:
        """The side read and its consumer's epoch (see LeasedConsumer.lease_epoch)."""
        inner = self.inner
        epoch = inner.lease_epoch if isinstance(inner, LeasedConsumer) else None
        return (self.side, id(inner), epoch)

    def holds(self, record: Record) -> bool:
        """True while the side being read holds the record's lease (see LeasedConsumer)."""
        inner = self.inner
        if inner is None or (record.topic, record.partition, record.offset) not in self.outstanding:
            return False
        return not isinstance(inner, LeasedConsumer) or inner.holds(record)

    async def release(self, records: Sequence[Record]) -> None:
        """Give back unstarted records to the side they came from."""
        mine = [r for r in records if (r.topic, r.partition, r.offset) in self.outstanding]
        if isinstance(self.inner, LeasedConsumer) and mine:
            await self.inner.release(mine)
            self._done(mine)

    async def dead_letter(self, record: Record, topic: str, headers: Mapping[str, bytes]) -> None:
        """A dead-letter topic that is part of the migration is written like any migrated
        topic (dual-written per its stage, so both sides get it), then the record is acked
        on the side being read. Others: the side being read writes it."""
        if self.inner is None:
            return
        if self.transport.stage_of(topic) is None:
            await self.inner.dead_letter(record, topic, headers)
        else:
            kept = {k: v for k, v in record.headers.items() if k not in MIGRATION_HEADERS}
            letter = Outgoing(value=record.value, key=record.key, headers={**kept, **headers})
            await self.transport.publish(topic, [letter], timeout=30.0)
            await self.inner.ack([record])
        self._done([record])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.transport.forget(self)
        if self.inner is not None:
            await self.inner.close()

    async def kill(self) -> None:
        self._closed = True
        self.transport.forget(self)
        if self.inner is not None:
            await self.inner.kill()
