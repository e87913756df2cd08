"""The migration transport: services use it in place of their source URL during a migration.

Connection string::

    migrate://NAME?source=<url-encoded source URL>&target=<url-encoded target URL>

(or ``MigrationTransport.create(name, source_url, target_url)``). Options: ``poll_interval``
(seconds between control-record reads and heartbeats, default 1), ``secondary_timeout``
(seconds a secondary write may take before it goes to the journal, default 5),
``journal_limit`` (copies that may wait in a topic's journal before its publishes are
refused with JournalFullError, default 1,000,000).

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

A copy interrupted after the primary write (a cancel, an error that is not transient) is
journaled anyway, and reported in the member's heartbeat (``advance`` then wants a newer
verification). A member that starts while copies wait in the journal journals behind them; a
journal of ``journal_limit`` copies refuses publishes (JournalFullError). Dead letters to a
migrated ``<topic>.dlq`` are published through this transport (dual-written), then the record
is acked. An event that cannot fit a side with the migration's headers is refused before it is
written (EventTooLargeError naming it).

Events written by a producer in a dual stage carry ``eb-mig-gen``; copies carry ``eb-copy``
(``dual`` or ``backfill``) and ``eb-copy-of`` (the primary offset). Backfill copies only source
records without ``eb-mig-gen``, which is how it joins the dual-written tail without overlap.

A copy the client gave up on must not land later, after its replacement from the journal (a
duplicate, and out of order). So direct copies go to a Kafka secondary through a client of
their own whose records expire after ``secondary_timeout`` (librdkafka ``message.timeout.ms``):
when a copy write fails, nothing of it is still queued. A copy that timed out is journaled
marked "maybe copied" with a time after which the secondary is checked for it (``CHECK_DELAY``
later, for a request that was already on the wire). The journal replayer writes to a Kafka
secondary in transactions, fenced per journal partition (``_fenced``): a failed batch leaves
nothing behind that could land later, and no gap; the replayer keeps it and tries it again
before anything newer, after a check of what the secondary holds.

Modules: this one (publish, reading, admin, the control-record follower), ``_room`` (the
size check before a publish), ``consumer`` (:class:`MigrationConsumer`), ``journaling`` (a
member's journal), ``journal`` (the replayer).
Kafka-specific clients (the copy client, fenced writers) come from the sides themselves
(``CopyClients``, ``FencedWrites`` in ``eventbus.transport``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from eventbus._registry import open_transport
from eventbus._urls import redact
from eventbus.errors import (
    ConnectionFailedError,
    EventBusError,
    GroupNotFoundError,
    TopicExistsError,
)
from eventbus.migration._fenced import copy_writer
from eventbus.migration._room import RoomCheck
from eventbus.migration.consumer import MigrationConsumer
from eventbus.migration.control import (
    ControlStore,
    Heartbeat,
    MigrationState,
    Side,
    TopicMigration,
)
from eventbus.migration.journal import (
    CHECK_DELAY,
    JOURNAL_LIMIT,
    REPLAYER_SESSION,
    TRIM_EVERY,
    JournalFullError,
    JournalReplayer,
    journal_backlog,
    journal_topic,
    replay_journal,
    replayer_group,
)
from eventbus.migration.journaling import MemberJournal
from eventbus.migration.marks import (
    DLQ_SUFFIX,
    H_COPY,
    H_COPY_OF,
    H_GEN,
    H_MAYBE,
    MIGRATION_HEADERS,
    MIGRATION_ROOM,
    dead_letter_topic,
)
from eventbus.migration.options import combine, parse_url
from eventbus.topics import TopicSpec
from eventbus.transport import (
    Capabilities,
    ConsumerOptions,
    DescribesGroups,
    GroupInfo,
    Offset,
    Outgoing,
    Position,
    Record,
    ResetTarget,
    TopicInfo,
    Transport,
)

__all__ = [
    "CHECK_DELAY",
    "DLQ_SUFFIX",
    "H_COPY",
    "H_COPY_OF",
    "H_GEN",
    "H_MAYBE",
    "JOURNAL_LIMIT",
    "MIGRATION_HEADERS",
    "MIGRATION_ROOM",
    "REPLAYER_SESSION",
    "TRIM_EVERY",
    "JournalFullError",
    "JournalReplayer",
    "MigrationConsumer",
    "MigrationTransport",
    "copy_writer",
    "dead_letter_topic",
    "journal_backlog",
    "journal_topic",
    "replay_journal",
    "replayer_group",
]
"""Names of the journal (``journal``), the records' marks (``marks``) and the copy client
(``_fenced``) stay importable from here, where they lived before the split."""

log = logging.getLogger("eventbus.migration")


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
        source_writer: Transport | None = None,
        target_writer: Transport | None = None,
        journal_limit: int = JOURNAL_LIMIT,
    ) -> None:
        self.name = name
        self.journal_limit = journal_limit
        self.source = source
        self.target = target
        self.source_writer = source_writer or source
        """Writes copies to the source (see ``copy_writer``)."""
        self.target_writer = target_writer or target
        self.source_url = redact(source_url)
        self.target_url = redact(target_url)
        self.poll_interval = poll_interval
        self.secondary_timeout = secondary_timeout
        self.control = ControlStore(source, name)
        self.capabilities = combine(source.capabilities, target.capabilities)
        self.state: MigrationState | None = None
        self.member = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self._published: set[str] = set()
        self._inflight: Counter[tuple[str, int]] = Counter()
        self._consumers: set[MigrationConsumer] = set()
        self.journal = MemberJournal(self)
        """This member's side of the journal (what it journals, its replayers)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._changed = asyncio.Event()
        self._room = RoomCheck()
        self._copy_failures: dict[str, datetime] = {}
        """Per topic, when a copy last failed in a way the journal had to rescue."""

    # construction ---------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> MigrationTransport:
        name, source_url, target_url, settings = parse_url(url, options)
        return cls.create(name, source_url, target_url, **settings)

    @classmethod
    def create(
        cls, name: str, source_url: str, target_url: str, **settings: Any
    ) -> MigrationTransport:
        source, target = open_transport(source_url), open_transport(target_url)
        timeout = float(settings.get("secondary_timeout", 5.0))
        return cls(
            name,
            source,
            target,
            source_url=source_url,
            target_url=target_url,
            source_writer=copy_writer(source, timeout),
            target_writer=copy_writer(target, timeout),
            **settings,
        )

    def _own_writers(self) -> list[Transport]:
        """The copy writers that are clients of their own (to connect and close)."""
        return [
            w
            for w, side in ((self.source_writer, self.source), (self.target_writer, self.target))
            if w is not side
        ]

    def writer_for(self, side: Transport) -> Transport:
        """What writes copies to ``side`` (the source or the target)."""
        return self.source_writer if side is self.source else self.target_writer

    def side(self, name: Side) -> Transport:
        """The source or the target, by name."""
        return self.source if name == "source" else self.target

    def sides(self, primary: Side) -> tuple[Transport, Transport]:
        """(primary, secondary) when ``primary`` is the primary side."""
        return (self.source, self.target) if primary == "source" else (self.target, self.source)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def published(self) -> set[str]:
        """The topics this member has published to (it heartbeats as their producer)."""
        return self._published

    @property
    def _journaling(self) -> set[str]:
        """Topics whose copies this member sends to the journal (see ``journaling``)."""
        return self.journal.topics

    # lifecycle -----------------------------------------------------------------------------
    async def connect(self) -> None:
        await self.source.connect()
        await self.target.connect()
        for writer in self._own_writers():
            await writer.connect()
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._poll_loop()))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            await consumer.close()
        tasks: list[asyncio.Future[Any]] = [
            *self._tasks,
            *self.journal.replayers.values(),
            *self._room.lookups.values(),
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, EventBusError):
                await task
        for writer in self._own_writers():
            await writer.close()
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
                self.journal.ensure_replayers()
                await self.journal.measure_backlog()
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
        reads: dict[str, list[str]] = {}
        for consumer in self._consumers:
            groups[consumer.group] = consumer.status()
            reads.setdefault(consumer.group, [])
            reads[consumer.group] = sorted({*reads[consumer.group], *consumer.topics})
        role: Literal["producer", "consumer"] = (
            "consumer" if self._consumers and not self._published else "producer"
        )
        beat = Heartbeat(
            member=self.member,
            role=role,
            time=datetime.now(UTC),
            topics=topics,
            groups=groups,
            reads=reads,
            copy_failures=dict(self._copy_failures),
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
            await self.journal.join(topic)
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
        self.journal.check_limit(topic)
        source_primary = mig.primary == "source"
        primary, secondary = self.sides(mig.primary)
        # Outgoing(...) directly: dataclasses.replace costs ~0.9 us a record, twice per event
        gen = str(mig.generation).encode()
        marked = [
            Outgoing(r.value, r.key, {**r.headers, H_GEN: gen}, r.timestamp_ms, r.partition)
            for r in records
        ]
        await self._room.check(topic, marked, primary, secondary)
        positions = await primary.publish(topic, marked, timeout=timeout)
        copies = [
            Outgoing(
                r.value,
                r.key,
                {**r.headers, H_COPY: b"dual", H_COPY_OF: str(pos.offset).encode()},
                r.timestamp_ms,
                pos.partition,
            )
            for r, pos in zip(marked, positions, strict=True)
        ]
        # Until the backfill has copied the history, copies wait in the journal, so the target
        # receives history first and the dual-written tail after it, in source order. The same
        # after a rollback from target-only, until the backfill has copied that era back.
        history_pending = (source_primary and not mig.backfill_done) or (
            not source_primary and mig.reverse_pending
        )
        try:
            await self._copy(topic, primary, secondary, copies, history_pending)
        except BaseException as exc:
            # the primary has the events: whatever stopped the copy (a caller's cancel or
            # timeout, a shutdown, an error that is not transient), journal it
            await self._rescue(topic, primary, copies, exc)
            if not isinstance(exc, EventBusError):
                raise  # a cancel: the caller goes on cancelling (the events are written)
            log.error(
                "migration %s: copy of %d events of %s to the secondary failed (%s); they "
                "wait in the journal, which replays them once that works (see the journal "
                "backlog in 'eventbus migrate status')",
                self.name,
                len(copies),
                topic,
                exc,
            )
        return positions

    async def _rescue(
        self, topic: str, primary: Transport, copies: list[Outgoing], exc: BaseException
    ) -> None:
        """Journal copies whose direct write (or journaling) was interrupted, marked "maybe
        copied" with a check time after anything still queued in the copy client has expired,
        and remember the time for the heartbeat (a verification older than it is not
        accepted by ``advance``). Runs to its end even if the caller is cancelled again."""
        self._copy_failures[topic] = datetime.now(UTC)
        await self.journal.rescue(topic, primary, copies)

    async def _copy(
        self,
        topic: str,
        primary: Transport,
        secondary: Transport,
        copies: list[Outgoing],
        history_pending: bool,
    ) -> None:
        """Write the copies of events the primary has: to the journal while copies wait
        there, else directly (to the journal when that fails transiently)."""
        journal = self.journal
        if not history_pending and topic in journal.topics:
            await journal.try_leave(topic, primary)
        if history_pending or topic in journal.topics:
            await journal.write(primary, topic, copies)
            return
        try:
            # bounded as a whole: a client that first has to look the topic up (its metadata
            # forgotten while the secondary is down) must not hold the publish longer
            await asyncio.wait_for(
                self.writer_for(secondary).publish(topic, copies, timeout=self.secondary_timeout),
                self.secondary_timeout,
            )
        except (ConnectionFailedError, TimeoutError) as exc:
            log.warning(
                "migration %s: secondary write to %s failed (%s); journaling %d events",
                self.name,
                topic,
                str(exc) or f"no answer within {self.secondary_timeout} s",
                len(copies),
            )
            # the write may have landed anyway (a timeout): the replayer checks before copying,
            # once a request still on the wire can no longer land
            await journal.write_maybe(primary, topic, copies)

    # reading -------------------------------------------------------------------------------
    def _reading_side(self, topic: str) -> Transport:
        """Where reads without a group go: the primary (the source before the migration)."""
        mig = self.stage_of(topic)
        return self.source if mig is None else self.side(mig.primary)

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

    def forget(self, member: MigrationConsumer) -> None:
        """``member`` is closed: no more heartbeats for it."""
        self._consumers.discard(member)

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

    async def describe_groups(self) -> list[GroupInfo]:
        """Every group of either side, described by the side it reads from (as
        ``describe_group``), sorted by name; one pass per side where the side can (a Redis
        side: ``describe_group`` of each group would scan every topic once per group). A group
        its side does not know (deleted, or not created there yet) is left out."""
        wanted: dict[int, tuple[Transport, list[str]]] = {}
        for name in await self.list_groups():
            side = self._group_transport(name)
            wanted.setdefault(id(side), (side, []))[1].append(name)
        out: list[GroupInfo] = []
        for side, names in wanted.values():
            if isinstance(side, DescribesGroups):
                found = {info.group: info for info in await side.describe_groups()}
                out.extend(found[name] for name in names if name in found)
                continue
            for name in names:
                with contextlib.suppress(GroupNotFoundError):
                    out.append(await side.describe_group(name))
        return sorted(out, key=lambda info: info.group)

    async def reset_group(
        self, group: str, topic: str, to: ResetTarget
    ) -> dict[int, tuple[Offset | None, Offset | None]]:
        return await self._group_transport(group).reset_group(group, topic, to)
