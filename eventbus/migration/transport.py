"""The migration transport: services use it in place of their source URL during a migration.

Connection string::

    migrate://NAME?source=<url-encoded source URL>&target=<url-encoded target URL>

(or ``MigrationTransport.create(name, source_url, target_url)``). Options: ``poll_interval``
(seconds between control-record reads and heartbeats, default 1), ``secondary_timeout``
(seconds a secondary write may take before it goes to the journal, default 5).

It follows the stage of each topic from the control record while running:

- ``source-only`` / ``target-only``: publish to that side alone.
- ``dual-source-primary`` / ``dual-target-primary``: publish to the primary; publish succeeds
  when the primary has the events. Then copy them to the secondary with the same event id,
  key, partition index, headers and timestamp. A copy that fails (or while earlier ones wait)
  goes to a journal topic on the primary, replayed in order by a background task, so after an
  outage of the secondary both sides hold every event.
- Consumers read from the side their group is on. When an operator switches a group
  (``eventbus migrate cutover``), members finish and ack what they hold, leave the old side,
  report themselves paused, and once the group's positions have been translated they join on
  the new side, skipping the records the control record lists as already handled.

Events written by a producer in a dual stage carry ``eb-mig-gen``; copies carry ``eb-copy``
(``dual`` or ``backfill``) and ``eb-copy-of`` (the primary offset). Backfill copies only source
records without ``eb-mig-gen``, which is how it joins the dual-written tail without overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote

from eventbus._registry import open_transport
from eventbus._urls import query_options, redact, split
from eventbus.errors import (
    ConfigurationError,
    ConnectionFailedError,
    EventBusError,
    GroupNotFoundError,
    OperationTimeoutError,
    TopicExistsError,
    TopicNotFoundError,
)
from eventbus.migration.control import ControlStore, Heartbeat, MigrationState, TopicMigration
from eventbus.observability import instruments
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
    Transport,
    TransportConsumer,
    offset_key,
)

__all__ = ["MigrationTransport", "journal_topic", "replayer_group"]

log = logging.getLogger("eventbus.migration")

H_GEN = "eb-mig-gen"
H_COPY = "eb-copy"
H_COPY_OF = "eb-copy-of"
H_MAYBE = "eb-maybe-copied"


def journal_topic(name: str, topic: str) -> str:
    """The journal of secondary writes for ``topic``; it lives on the primary side."""
    return f"__eb_migration.{name}.journal.{topic}"


def replayer_group(name: str) -> str:
    return f"__eb_migration.{name}.replayer"


def _combine(a: Capabilities, b: Capabilities) -> Capabilities:
    """What holds on both sides: a flag is true only if it is true on each."""
    flags = {
        f.name: getattr(a, f.name) and getattr(b, f.name)
        for f in dataclasses.fields(Capabilities)
        if f.type in ("bool", bool)
    }
    return dataclasses.replace(
        a,
        transport=f"migrate({a.transport}->{b.transport})",
        max_event_bytes=min(a.max_event_bytes, b.max_event_bytes),
        **flags,
    )


class MigrationTransport:
    """A transport over a source and a target that follows the migration's control record."""

    capabilities: Capabilities

    def __init__(
        self,
        name: str,
        source: Transport,
        target: Transport,
        *,
        source_url: str = "",
        target_url: str = "",
        poll_interval: float = 1.0,
        secondary_timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.source = source
        self.target = target
        self.source_url = redact(source_url)
        self.target_url = redact(target_url)
        self.poll_interval = poll_interval
        self.secondary_timeout = secondary_timeout
        self.control = ControlStore(source, name)
        self.capabilities = _combine(source.capabilities, target.capabilities)
        self.state: MigrationState | None = None
        self.member = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self._published: set[str] = set()
        self._inflight: Counter[tuple[str, int]] = Counter()
        self._consumers: set[MigrationConsumer] = set()
        self._journaling: set[str] = set()
        """Topics whose copies this member sends to the journal (until its own are replayed)."""
        self._marks: dict[str, dict[int, Offset]] = {}
        """Per topic and journal partition, the last journal offset this member wrote."""
        self._backlog: dict[str, int] = {}
        self._leaving: dict[str, asyncio.Lock] = {}
        self._replay_healthy: dict[str, bool] = {}
        self._next_leave_try: dict[str, float] = {}
        self._replayers: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._changed = asyncio.Event()

    # construction ---------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> MigrationTransport:
        parts = split(url)
        opts = {**query_options(parts), **options}
        name = parts.netloc or parts.path.strip("/")
        source_url = unquote(str(opts.get("source", "")))
        target_url = unquote(str(opts.get("target", "")))
        if not name or not source_url or not target_url:
            raise ConfigurationError(
                "migrate:// needs a name, a source and a target: "
                "migrate://NAME?source=<url-encoded URL>&target=<url-encoded URL>"
            )
        return cls.create(
            name,
            source_url,
            target_url,
            poll_interval=float(opts.get("poll_interval", 1.0)),
            secondary_timeout=float(opts.get("secondary_timeout", 5.0)),
        )

    @classmethod
    def create(
        cls, name: str, source_url: str, target_url: str, **settings: Any
    ) -> MigrationTransport:
        return cls(
            name,
            open_transport(source_url),
            open_transport(target_url),
            source_url=source_url,
            target_url=target_url,
            **settings,
        )

    # lifecycle -----------------------------------------------------------------------------
    async def connect(self) -> None:
        await self.source.connect()
        await self.target.connect()
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._poll_loop()))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            await consumer.close()
        tasks = [*self._tasks, *self._replayers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, EventBusError):
                await task
        await self.source.close()
        await self.target.close()

    async def refresh(self) -> None:
        """Read the control record now (the poller does this every poll interval)."""
        state = await self.control.load()
        if state is not None and (self.state is None or state.version != self.state.version):
            self.state = state
            self._changed.set()
            self._changed = asyncio.Event()

    async def _poll_loop(self) -> None:
        while not self._closed:
            try:
                await self.refresh()
                await self._heartbeat()
                self._ensure_replayers()
                await self._measure_backlog()
            except EventBusError as exc:  # a side is down: keep going, the next round retries
                log.warning("migration %s: control loop: %s", self.name, exc)
            except Exception:  # never let the follower die silently: say why, keep going
                log.exception("migration %s: control loop failed", self.name)
            await asyncio.sleep(self.poll_interval)  # the poll period itself, not a settle wait

    async def _heartbeat(self) -> None:
        if not self._published and not self._consumers:
            return
        state = self.state
        topics: dict[str, int] = {}
        for t in self._published:
            mig = state.topics.get(t) if state is not None else None
            # -1: this member does not follow the migration of t yet; publishes still under
            # way report the generation they started with, so nobody moves on under them
            generation = mig.generation if mig is not None else -1
            inflight = [g for (topic, g), n in self._inflight.items() if topic == t and n]
            topics[t] = min([generation, *inflight])
        groups: dict[str, str] = {}
        for consumer in self._consumers:
            groups[consumer.group] = consumer.status()
        role: Literal["producer", "consumer"] = (
            "consumer" if self._consumers and not self._published else "producer"
        )
        beat = Heartbeat(
            member=self.member, role=role, time=datetime.now(UTC), topics=topics, groups=groups
        )
        await self.control.heartbeat(beat)

    def changed(self) -> asyncio.Event:
        """An event set at the next change of the control record."""
        return self._changed

    def stage_of(self, topic: str) -> TopicMigration | None:
        state = self.state
        return state.topics.get(topic) if state is not None else None

    # publish -------------------------------------------------------------------------------
    async def publish(
        self, topic: str, records: Sequence[Outgoing], *, timeout: float
    ) -> list[Position]:
        if topic not in self._published:
            # announce this producer before its first write, so an operator waiting for
            # producers to follow a stage change cannot miss it
            self._published.add(topic)
            await self._heartbeat()
        mig = self.stage_of(topic)
        slot = (topic, mig.generation if mig is not None else -1)
        self._inflight[slot] += 1
        try:
            return await self._publish(topic, records, mig, timeout)
        finally:
            self._inflight[slot] -= 1

    async def _publish(
        self,
        topic: str,
        records: Sequence[Outgoing],
        mig: TopicMigration | None,
        timeout: float,
    ) -> list[Position]:
        if mig is None or mig.stage == "source-only":
            return await self.source.publish(topic, records, timeout=timeout)
        if mig.stage == "target-only":
            return await self.target.publish(topic, records, timeout=timeout)
        source_primary = mig.stage == "dual-source-primary"
        primary, secondary = (
            (self.source, self.target) if source_primary else (self.target, self.source)
        )
        marked = [
            dataclasses.replace(r, headers={**r.headers, H_GEN: str(mig.generation).encode()})
            for r in records
        ]
        positions = await primary.publish(topic, marked, timeout=timeout)
        copies = [
            dataclasses.replace(
                r,
                partition=pos.partition,
                headers={**r.headers, H_COPY: b"dual", H_COPY_OF: str(pos.offset).encode()},
            )
            for r, pos in zip(marked, positions, strict=True)
        ]
        # Until the backfill has copied the history, copies wait in the journal, so the target
        # receives history first and the dual-written tail after it, in source order.
        history_pending = source_primary and not mig.backfill_done
        if not history_pending and topic in self._journaling:
            await self._try_leave_journal(topic, primary)
        if history_pending or topic in self._journaling:
            await self._journal(primary, topic, copies)
            return positions
        try:
            await secondary.publish(topic, copies, timeout=self.secondary_timeout)
        except (ConnectionFailedError, OperationTimeoutError) as exc:
            log.warning(
                "migration %s: secondary write to %s failed (%s); journaling %d events",
                self.name,
                topic,
                exc,
                len(copies),
            )
            # the write may have landed anyway (a timeout): the replayer checks before copying
            maybe = [dataclasses.replace(c, headers={**c.headers, H_MAYBE: b"1"}) for c in copies]
            await self._journal(primary, topic, maybe)
        return positions

    async def _journal(self, primary: Transport, topic: str, copies: list[Outgoing]) -> None:
        self._journaling.add(topic)
        name = journal_topic(self.name, topic)
        try:
            positions = await primary.publish(name, copies, timeout=30.0)
        except TopicNotFoundError:
            mig = self.stage_of(topic)
            with contextlib.suppress(TopicExistsError):
                await primary.create_topic(
                    TopicSpec(name=name, partitions=mig.partitions if mig else 1)
                )
            positions = await primary.publish(name, copies, timeout=30.0)
        marks = self._marks.setdefault(topic, {})
        for pos in positions:
            marks[pos.partition] = pos.offset

    def _ensure_replayers(self) -> None:
        """One background replayer per journaling topic (the poll loop must never block)."""
        for topic in self._journaling | {t for t, n in self._backlog.items() if n}:
            task = self._replayers.get(topic)
            if task is None or task.done():
                self._replayers[topic] = asyncio.create_task(self._replayer(topic))

    def _journal_sides(self, topic: str) -> tuple[Transport, Transport] | None:
        """(primary, secondary) while the journal of ``topic`` may be replayed, else None."""
        mig = self.stage_of(topic)
        if mig is None or not mig.stage.startswith("dual"):
            return None
        if mig.stage == "dual-source-primary":
            # until the backfill has copied the history, the tail waits its turn
            return (self.source, self.target) if mig.backfill_done else None
        return (self.target, self.source)

    async def _replayer(self, topic: str) -> None:
        """Replays one topic's journal with one long-lived group member, so ownership of
        journal partitions (and with it their order) stays put while producers run."""
        replayer: JournalReplayer | None = None
        try:
            while not self._closed and (topic in self._journaling or self._backlog.get(topic)):
                sides = self._journal_sides(topic)
                if replayer is not None and (replayer.primary, replayer.secondary) != sides:
                    await replayer.close()
                    replayer = None
                if sides is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed().wait(), self.poll_interval * 5)
                    continue
                if replayer is None:
                    replayer = JournalReplayer(self.name, topic, *sides, member=self.member)
                try:
                    moved = await replayer.step(0.5)
                    self._replay_healthy[topic] = True
                except EventBusError as exc:  # the secondary is still down: try again later
                    log.warning("migration %s: journal replay of %s: %s", self.name, topic, exc)
                    self._replay_healthy[topic] = False
                    moved = 0
                if not moved:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed().wait(), self.poll_interval)
        finally:
            if replayer is not None:
                await replayer.close()

    async def _measure_backlog(self) -> None:
        """Update the journal backlog of each dual-stage topic this member writes, and stop
        journaling once this member's own journaled copies have all been replayed (its copies
        then go straight to the secondary without overtaking its earlier ones)."""
        state = self.state
        if state is None:
            return
        for topic in self._published | self._journaling:
            sides = self._journal_sides(topic)
            mig = state.topics.get(topic)
            if mig is None or not mig.stage.startswith("dual"):
                continue
            primary = self.source if mig.stage == "dual-source-primary" else self.target
            self._backlog[topic] = backlog = await journal_backlog(self.name, topic, primary)
            instruments().observe_backlog(topic, backlog)
            replayed = topic in self._journaling and sides is not None
            if replayed and await self._own_copies_replayed(topic, primary):
                self._journaling.discard(topic)
                self._marks.pop(topic, None)

    async def _try_leave_journal(self, topic: str, primary: Transport) -> None:
        """Once replay runs, pause this member's publishes of ``topic`` briefly until its own
        journaled copies are on the secondary, then write copies directly again. Without the
        pause a busy producer would keep adding to the journal faster than it can see it empty.
        Gives up (keeps journaling) after a few seconds, e.g. while the secondary is down."""
        loop = asyncio.get_running_loop()
        if self._journal_sides(topic) is None or not self._replay_healthy.get(topic, False):
            return  # nothing replays now (history first, or the secondary is down)
        if loop.time() < self._next_leave_try.get(topic, 0.0):
            return
        lock = self._leaving.setdefault(topic, asyncio.Lock())
        async with lock:
            deadline = loop.time() + 2.0
            while topic in self._journaling:
                if await self._own_copies_replayed(topic, primary):
                    self._journaling.discard(topic)
                    self._marks.pop(topic, None)
                    return
                if loop.time() > deadline or not self._replay_healthy.get(topic, False):
                    self._next_leave_try[topic] = loop.time() + 1.0  # do not stall every publish
                    return
                await asyncio.sleep(0.05)  # poll the replayer's progress

    async def _own_copies_replayed(self, topic: str, primary: Transport) -> bool:
        marks = self._marks.get(topic, {})
        if not marks:
            return True
        try:
            info = await primary.describe_group(replayer_group(self.name))
        except GroupNotFoundError:
            return False
        jt = journal_topic(self.name, topic)
        parts = {p.partition: p for p in info.partitions if p.topic == jt}
        for partition, mark in marks.items():
            part = parts.get(partition)
            if part is None or part.delivered is None:
                return False
            if offset_key(part.delivered) < offset_key(mark):
                return False
            if part.pending and (
                part.lowest_pending is None or offset_key(part.lowest_pending) <= offset_key(mark)
            ):
                return False
        return True

    # reading -------------------------------------------------------------------------------
    def _reading_side(self, topic: str) -> Transport:
        mig = self.stage_of(topic)
        if mig is None or mig.stage in ("source-only", "dual-source-primary"):
            return self.source
        return self.target

    async def read(
        self,
        topic: str,
        partition: int,
        start: Offset | datetime | None,
        *,
        inclusive: bool = True,
        limit: int = 1000,
    ) -> list[Record]:
        return await self._reading_side(topic).read(
            topic, partition, start, inclusive=inclusive, limit=limit
        )

    async def open_consumer(
        self, topics: Sequence[str], group: str, consumer: str, options: ConsumerOptions
    ) -> MigrationConsumer:
        member = MigrationConsumer(self, tuple(topics), group, consumer, options)
        # Announce the member, then read the control record, then join a side. An operator's
        # cutover saves "pausing" and then reads heartbeats: either it sees this member's
        # announcement (and waits for it to pause) or this member's read comes after the
        # save (and it stays paused). Joining on a stale state without announcing could let
        # a cutover translate positions while this member still reads the old side.
        # Until it has joined, its heartbeats say "joining" (never "paused").
        member.announcing = True
        self._consumers.add(member)
        try:
            await self._heartbeat()
            await self.refresh()
            await member.switch_if_needed()
        except BaseException:
            self._consumers.discard(member)
            raise
        finally:
            member.announcing = False
        return member

    def group_side(self, group: str) -> str:
        state = self.state
        status = state.groups[group].status if state and group in state.groups else "source"
        return {"source": "source", "target": "target"}.get(status, "paused")

    # admin: topics are created on every side the migration writes to -----------------------
    async def create_topic(self, spec: TopicSpec) -> None:
        await self.source.create_topic(spec)
        mig = self.stage_of(spec.name)
        if mig is not None and mig.stage != "source-only":
            with contextlib.suppress(TopicExistsError):
                await self.target.create_topic(spec)

    async def describe_topic(self, name: str) -> TopicInfo:
        return await self._reading_side(name).describe_topic(name)

    async def list_topics(self) -> list[str]:
        return sorted(set(await self.source.list_topics()) | set(await self.target.list_topics()))

    async def alter_topic(self, spec: TopicSpec) -> None:
        await self.source.alter_topic(spec)
        mig = self.stage_of(spec.name)
        if mig is not None and mig.stage != "source-only":
            await self.target.alter_topic(spec)

    async def delete_topic(self, name: str) -> None:
        await self._reading_side(name).delete_topic(name)

    async def list_groups(self) -> list[str]:
        return sorted(set(await self.source.list_groups()) | set(await self.target.list_groups()))

    def _group_transport(self, group: str) -> Transport:
        return self.target if self.group_side(group) == "target" else self.source

    async def describe_group(self, group: str) -> GroupInfo:
        return await self._group_transport(group).describe_group(group)

    async def reset_group(
        self, group: str, topic: str, to: ResetTarget
    ) -> dict[int, tuple[Offset | None, Offset | None]]:
        return await self._group_transport(group).reset_group(group, topic, to)


async def journal_backlog(name: str, topic: str, primary: Transport) -> int:
    """Journaled copies not yet replayed to the secondary (0 when there is no journal)."""
    try:
        info = await primary.describe_group(replayer_group(name))
    except EventBusError:
        try:
            journal = await primary.describe_topic(journal_topic(name, topic))
        except EventBusError:
            return 0
        return journal.count
    jt = journal_topic(name, topic)
    return sum((p.lag or 0) + p.pending for p in info.partitions if p.topic == jt)


class JournalReplayer:
    """One member of the replayer group: moves journaled copies to the secondary in order."""

    def __init__(
        self, name: str, topic: str, primary: Transport, secondary: Transport, *, member: str
    ) -> None:
        self.name = name
        self.topic = topic
        self.primary = primary
        self.secondary = secondary
        self.member = member
        self._consumer: TransportConsumer | None = None

    async def step(self, timeout: float) -> int:
        """Move one batch; returns how many events moved (0 when the journal is empty)."""
        if self._consumer is None:
            try:
                self._consumer = await self.primary.open_consumer(
                    [journal_topic(self.name, self.topic)],
                    replayer_group(self.name),
                    f"replayer-{self.member}",
                    # a stuck or dead replayer's copies come back to another one soon
                    ConsumerOptions(visibility_timeout=5.0, session_timeout=5.0),
                )
            except TopicNotFoundError:
                return 0
        batch = await self._consumer.fetch(500, timeout)
        if not batch:
            return 0
        todo = batch
        if any(r.attempt > 1 or H_MAYBE in r.headers for r in batch):
            todo = await _not_yet_copied(self.secondary, self.topic, batch)
        if todo:
            copies = [
                Outgoing(
                    value=r.value,
                    key=r.key,
                    headers={k: v for k, v in r.headers.items() if k != H_MAYBE},
                    timestamp_ms=r.timestamp_ms,
                    partition=r.partition,
                )
                for r in todo
            ]
            await self.secondary.publish(self.topic, copies, timeout=30.0)
        await self._consumer.ack(batch)
        return len(batch)

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.close()


async def replay_journal(
    name: str, topic: str, primary: Transport, secondary: Transport, *, timeout: float = 2.0
) -> int:
    """Drain the journal of ``topic`` to the secondary now; returns how many events moved."""
    replayer = JournalReplayer(name, topic, primary, secondary, member=f"drain-{os.getpid()}")
    moved = 0
    try:
        while n := await replayer.step(timeout):
            moved += n
    finally:
        await replayer.close()
    return moved


async def _not_yet_copied(secondary: Transport, topic: str, batch: list[Record]) -> list[Record]:
    """The journal records of ``batch`` whose events the secondary does not hold yet."""
    present: set[bytes] = set()
    since = datetime.fromtimestamp(min(r.timestamp_ms for r in batch) / 1000 - 60, UTC)
    for p in {r.partition for r in batch}:
        start: Offset | datetime | None = since
        inclusive = True
        while True:
            page = await secondary.read(topic, p, start, inclusive=inclusive, limit=1000)
            present.update(r.headers.get("eb-id", b"") for r in page)
            if len(page) < 1000:
                break
            start, inclusive = page[-1].offset, False
    keep = [r for r in batch if r.headers.get("eb-id") not in present]
    return keep


class MigrationConsumer:
    """A group member that reads from the side its group is on and switches when told."""

    def __init__(
        self,
        transport: MigrationTransport,
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
        state = self.transport.state
        if state is None or self.group not in state.groups:
            return False
        mig = state.groups[self.group]
        skip = mig.skip.get(record.partition)
        return skip is not None and str(record.offset) in skip

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

    async def dead_letter(self, record: Record, topic: str, headers: Mapping[str, bytes]) -> None:
        if self.inner is not None:
            await self.inner.dead_letter(record, topic, headers)
        self._done([record])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.transport._consumers.discard(self)
        if self.inner is not None:
            await self.inner.close()

    async def kill(self) -> None:
        self._closed = True
        self.transport._consumers.discard(self)
        if self.inner is not None:
            await self.inner.kill()
