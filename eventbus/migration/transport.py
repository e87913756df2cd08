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
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import logging
import math
import os
import socket
import time
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
    EventTooLargeError,
    GroupNotFoundError,
    TopicExistsError,
    TopicNotFoundError,
)
from eventbus.migration._fenced import FencedWriter, open_fenced_writer, transactional_id
from eventbus.migration.control import (
    ControlStore,
    Heartbeat,
    MigrationState,
    TopicMigration,
    now_ms,
)
from eventbus.observability import instruments
from eventbus.topics import TopicSpec
from eventbus.transport import (
    Capabilities,
    ConsumerOptions,
    GroupInfo,
    LeasedConsumer,
    Offset,
    Outgoing,
    Position,
    Record,
    ResetTarget,
    TopicInfo,
    Transport,
    TransportConsumer,
    TrimsFinished,
    offset_key,
    record_size,
)

__all__ = [
    "DLQ_SUFFIX",
    "JournalFullError",
    "MigrationTransport",
    "copy_writer",
    "dead_letter_topic",
    "journal_topic",
    "replayer_group",
]

log = logging.getLogger("eventbus.migration")

H_GEN = "eb-mig-gen"
H_COPY = "eb-copy"
H_COPY_OF = "eb-copy-of"
H_MAYBE = "eb-maybe-copied"


REPLAYER_SESSION = 120.0
"""Seconds a journal replayer may retry a failed batch in place before it leaves the group
(and how long a crashed replayer's partitions wait for a new owner)."""

CHECK_DELAY = 2.0
"""Seconds after a copy write failed before the secondary is checked for what it may have
written anyway: a request already on the wire when the client gave up can still be appended.
(Records still queued in the client expire with the write, see ``copy_writer``.)"""

TRIM_EVERY = 5.0
"""Seconds between deletions of replayed copies from a journal (where the primary can)."""


def copy_writer(url: str, transport: Transport, timeout: float) -> Transport:
    """What writes copies to the side at ``url``: on Kafka a client of its own whose records
    expire after ``timeout`` s (``message.timeout.ms``), so a copy write that failed leaves
    nothing queued that could land after its replacement; elsewhere ``transport`` itself
    (memory writes are synchronous; a Redis command that timed out is not sent again)."""
    if split(url).scheme.lower() not in ("kafka", "redpanda"):
        return transport
    expire_ms = str(max(1000, int(timeout * 1000)))
    return open_transport(url, {"config": {"message.timeout.ms": expire_ms}})


def _check_after(delay: float = CHECK_DELAY) -> bytes:
    """The ``H_MAYBE`` value: when (epoch ms) the secondary may be checked for the copy."""
    return str(now_ms() + int(delay * 1000)).encode()


DLQ_SUFFIX = ".dlq"


def dead_letter_topic(topic: str) -> str:
    """The dead-letter topic of ``topic`` (the runner's default name); it is migrated with
    ``topic`` (see ``Migration.init``)."""
    return f"{topic}{DLQ_SUFFIX}"


MIGRATION_HEADERS = (H_GEN, H_COPY, H_COPY_OF, H_MAYBE)
MIGRATION_ROOM = 256
"""Bytes the migration's headers may add to an event (names and values of ``eb-mig-gen``,
``eb-copy``, ``eb-copy-of``, ``eb-maybe-copied``, and ``eb-id`` for raw records, with room
to spare). Target topics are created with this much more max event bytes than the source."""
LIMIT_TTL = 30.0
"""Seconds a side's max event bytes of a topic is cached for the publish check."""
"""Headers the migration adds to records; a dead letter made from a record drops them (it is
a new event of its own topic, dual-written and copied like any other)."""


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


_OPTIONS = {
    "source",
    "target",
    "poll_interval",
    "secondary_timeout",
    "auto_create",
    "journal_limit",
}
JOURNAL_LIMIT = 1_000_000
"""Copies that may wait in a topic's journal before publishes of the topic are refused."""


class JournalFullError(EventBusError):
    """The dual-write journal of a topic is full: the secondary has been away too long."""


def _with(url: str, name: str, value: str) -> str:
    """``url`` with one more query option."""
    return f"{url}{'&' if '?' in url else '?'}{name}={value}"


def _seconds(opts: Mapping[str, Any], name: str, default: float) -> float:
    """A positive, finite number of seconds from the URL's options; ConfigurationError else."""
    value = opts.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (0 < number < math.inf):
        raise ConfigurationError(f"migrate:// option {name}={value!r}: give seconds > 0")
    return number


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
        self._limits: dict[tuple[int, str], tuple[int | None, float]] = {}
        self._limit_lookups: dict[tuple[int, str], asyncio.Future[int | None]] = {}
        self._copy_failures: dict[str, datetime] = {}
        """Per topic, when a copy last failed in a way the journal had to rescue."""
        self._rescues: set[asyncio.Task[None]] = set()

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
        unknown = sorted(set(opts) - _OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"migrate:// does not know the option(s) {', '.join(unknown)}; its options are "
                f"{', '.join(sorted(_OPTIONS))} (a side's own options go in its URL)"
            )
        if "auto_create" in opts:  # a setting of both sides, as if given in each side's URL
            flag = str(opts["auto_create"])
            source_url, target_url = (
                _with(u, "auto_create", flag) for u in (source_url, target_url)
            )
        return cls.create(
            name,
            source_url,
            target_url,
            poll_interval=_seconds(opts, "poll_interval", 1.0),
            secondary_timeout=_seconds(opts, "secondary_timeout", 5.0),
            journal_limit=int(_seconds(opts, "journal_limit", JOURNAL_LIMIT)),
        )

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
            source_writer=copy_writer(source_url, source, timeout),
            target_writer=copy_writer(target_url, target, timeout),
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
            *self._replayers.values(),
            *self._limit_lookups.values(),
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
            await self._join_journal(topic)
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
        self._check_journal_limit(topic)
        source_primary = mig.stage == "dual-source-primary"
        primary, secondary = (
            (self.source, self.target) if source_primary else (self.target, self.source)
        )
        # Outgoing(...) directly: dataclasses.replace costs ~0.9 us a record, twice per event
        gen = str(mig.generation).encode()
        marked = [
            Outgoing(r.value, r.key, {**r.headers, H_GEN: gen}, r.timestamp_ms, r.partition)
            for r in records
        ]
        await self._check_room(topic, marked, primary, secondary)
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
        after = _check_after(self.secondary_timeout + CHECK_DELAY)
        maybe = [dataclasses.replace(c, headers={**c.headers, H_MAYBE: after}) for c in copies]
        task = asyncio.ensure_future(self._journal(primary, topic, maybe))
        self._rescues.add(task)
        task.add_done_callback(self._rescued)
        with contextlib.suppress(asyncio.CancelledError, EventBusError):
            await asyncio.shield(task)  # its failure is logged by _rescued

    def _rescued(self, task: asyncio.Task[None]) -> None:
        self._rescues.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "migration %s: could not journal interrupted copies (%s): those events are "
                "on the primary only; 'eventbus migrate verify' lists them",
                self.name,
                task.exception(),
            )

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
        if not history_pending and topic in self._journaling:
            await self._try_leave_journal(topic, primary)
        if history_pending or topic in self._journaling:
            await self._journal(primary, topic, copies)
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
            after = _check_after()
            maybe = [dataclasses.replace(c, headers={**c.headers, H_MAYBE: after}) for c in copies]
            await self._journal(primary, topic, maybe)

    async def _limit(self, side: Transport, topic: str) -> int | None:
        """``topic``'s max event bytes on ``side`` (None: unknown). Never holds a publish
        for a side that is down: a known value is returned even when stale (refreshed in the
        background after ``LIMIT_TTL`` s); the first lookup waits at most 1 s."""
        key = (id(side), topic)
        now = time.monotonic()
        cached = self._limits.get(key)
        if cached is not None:
            if cached[1] <= now and key not in self._limit_lookups:
                task = asyncio.ensure_future(self._look_up_limit(side, topic))
                self._limit_lookups[key] = task
                task.add_done_callback(lambda _: self._limit_lookups.pop(key, None))
            return cached[0]
        try:
            return await asyncio.wait_for(self._look_up_limit(side, topic), 1.0)
        except TimeoutError:
            self._limits[key] = (None, now + LIMIT_TTL)  # the write itself will tell
            return None

    async def _look_up_limit(self, side: Transport, topic: str) -> int | None:
        try:
            limit: int | None = (await side.describe_topic(topic)).spec.max_event_bytes
        except EventBusError:
            limit = None  # the write itself will say what is wrong
        self._limits[(id(side), topic)] = (limit, time.monotonic() + LIMIT_TTL)
        return limit

    async def _check_room(
        self, topic: str, marked: Sequence[Outgoing], primary: Transport, secondary: Transport
    ) -> None:
        """Refuse, before anything is written, an event that fits neither the primary with
        its ``eb-mig-gen`` header nor the secondary with its copy headers (a copy that can
        never be written would hold the journal back forever), naming it and the way out."""
        copy_extra = len(H_COPY) + len(b"dual") + len(H_COPY_OF) + 24  # an offset's digits
        for side, extra, role in ((primary, 0, "primary"), (secondary, copy_extra, "secondary")):
            limit = await self._limit(side, topic)
            if limit is None:
                continue
            for record in marked:
                size = record_size(record) + extra
                if size > limit:
                    eid = record.headers.get("eb-id", b"?").decode(errors="replace")
                    raise EventTooLargeError(
                        f"event {eid} is {size} bytes with the migration's headers, over "
                        f"{topic!r}'s limit of {limit} on the {role} side; nothing was "
                        f"written. Raise {topic!r}'s max_event_bytes on that side to "
                        f"{limit + MIGRATION_ROOM} (alter_topic, or 'eventbus topics apply' "
                        "with its spec), or make the event smaller"
                    )

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
        # after a rollback from target-only: until that era is copied back to the source
        return None if mig.reverse_pending else (self.target, self.source)

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
                    replayer = JournalReplayer(
                        self.name,
                        topic,
                        *sides,
                        member=self.member,
                        writer=self.writer_for(sides[1]),
                        copy_timeout=self.secondary_timeout,
                    )
                try:
                    moved = await replayer.step(0.5)
                    self._replay_healthy[topic] = True
                except EventBusError as exc:  # the secondary is still down: try again later
                    log.warning("migration %s: journal replay of %s: %s", self.name, topic, exc)
                    self._replay_healthy[topic] = False
                    moved = 0
                except Exception:  # never let the replayer die silently: say why, go on
                    log.exception("migration %s: journal replay of %s failed", self.name, topic)
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

    async def _join_journal(self, topic: str) -> None:
        """On this member's first publish of ``topic`` in a dual stage: while copies wait in
        the journal (another member's, or this service's before a restart), write copies to
        the journal too, behind them, instead of directly ahead of them."""
        mig = self.stage_of(topic)
        if mig is None or not mig.stage.startswith("dual"):
            return
        primary = self.source if mig.stage == "dual-source-primary" else self.target
        with contextlib.suppress(EventBusError):  # unknown: the first copy write will say
            if await journal_backlog(self.name, topic, primary):
                # leave only once everything journaled so far is replayed (as if its own)
                info = await primary.describe_topic(journal_topic(self.name, topic))
                marks = self._marks.setdefault(topic, {})
                for part in info.partitions:
                    if part.last is not None:
                        marks[part.partition] = part.last
                self._journaling.add(topic)

    def _check_journal_limit(self, topic: str) -> None:
        """Refuse a publish while the journal of ``topic`` holds ``journal_limit`` copies or
        more (as last measured): it would grow without bound while the secondary is away."""
        backlog = self._backlog.get(topic, 0)
        if backlog >= self.journal_limit:
            raise JournalFullError(
                f"migration {self.name}: {backlog} copies of {topic!r} wait in the journal "
                f"(limit {self.journal_limit}, migrate:// option journal_limit); the "
                "secondary is down or slow. Bring it back (services replay the journal, or "
                "'eventbus migrate drain'), or roll the topic back to a single side"
            )

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
        if lock.locked():
            return  # another publish is waiting already: journal this one, do not queue
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
    """One member of the replayer group: moves journaled copies to the secondary in order.

    Copies go out through ``writer`` (see :func:`copy_writer`; default the secondary itself),
    reads that check the secondary through ``secondary``. On a Kafka secondary each journal
    partition's copies are written in transactions under one transactional id per partition
    (see ``_fenced``): whoever replays a partition first fences its previous replayer, so
    nothing a failed or stalled replayer had on its way can land later, and a batch lands
    whole or not at all (no gaps to fill out of order). A batch whose copy fails is kept and
    tried again before anything newer is fetched, after a check of what the secondary holds.
    (Handing it back to the group instead let newer entries of its partitions overtake it.)"""

    def __init__(
        self,
        name: str,
        topic: str,
        primary: Transport,
        secondary: Transport,
        *,
        member: str,
        writer: Transport | None = None,
        copy_timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.topic = topic
        self.primary = primary
        self.secondary = secondary
        self.writer = writer or secondary
        self.member = member
        self.copy_timeout = copy_timeout
        self._consumer: TransportConsumer | None = None
        self._writers: dict[int, FencedWriter] = {}
        self._held: list[Record] | None = None
        """A fetched batch whose copy failed: tried again before anything else."""
        self._to_trim: set[int] = set()
        """Journal partitions with replayed copies not yet deleted."""
        self._trimmed_at = 0.0
        self._acked_at = 0.0
        self._held_since = 0.0

    def _hold(self) -> float:
        """Session and visibility timeout of a replayer: a member retries a failed batch in
        place (without fetching, so without heartbeats) through an outage of the secondary
        up to most of this long; a crashed member's partitions wait this long for a new
        owner."""
        return max(REPLAYER_SESSION, 4 * (self.copy_timeout + 2.0) + CHECK_DELAY + 10.0)

    def _options(self) -> ConsumerOptions:
        hold = self._hold()
        return ConsumerOptions(visibility_timeout=hold, session_timeout=hold)

    async def step(self, timeout: float) -> int:
        """Move one batch; returns how many events moved (0 when the journal is empty)."""
        if self._consumer is None:
            try:
                self._consumer = await self.primary.open_consumer(
                    [journal_topic(self.name, self.topic)],
                    replayer_group(self.name),
                    f"replayer-{self.member}",
                    self._options(),
                )
            except TopicNotFoundError:
                return 0
        retry = self._held is not None
        if self._held is not None:
            if time.monotonic() - self._held_since > 0.8 * self._hold():
                # our session is about to lapse: leave, and the group hands the batch on
                self._held = None
                await self.close()
                return 0
            batch = self._held
        else:
            batch = await self._consumer.fetch(500, timeout)
            if not batch:
                await self._trim()
                return 0
            self._held_since = time.monotonic()
        try:
            parts: dict[int, list[Record]] = {}
            for record in sorted(batch, key=lambda r: offset_key(r.offset)):
                parts.setdefault(record.partition, []).append(record)
            for partition, records in sorted(parts.items()):
                await self._copy(partition, records, retry=retry)
            await self._consumer.ack(batch)
            self._to_trim.update(parts)
            self._acked_at = time.monotonic()
        except BaseException:
            # keep the batch and try it again, before anything newer (handing it back to
            # the group could let newer entries of its partitions overtake it)
            self._held = batch
            raise
        self._held = None
        await self._trim()
        return len(batch)

    async def _trim(self, *, closing: bool = False) -> None:
        """Delete replayed copies from the journal partitions this member replayed, at most
        every ``TRIM_EVERY`` s and once more when it closes (only what the replayer group has
        finished goes; see TrimsFinished). A failure only delays it, to the next try."""
        primary = self.primary
        now = time.monotonic()
        if not self._to_trim or not isinstance(primary, TrimsFinished):
            return
        if not closing and now - self._trimmed_at < TRIM_EVERY:
            return
        self._trimmed_at = now
        parts = sorted(self._to_trim)
        if closing or now - self._acked_at > 1.0:  # else a Kafka commit may still be on its way
            self._to_trim.clear()
        name = journal_topic(self.name, self.topic)
        try:
            await asyncio.wait_for(
                primary.trim_finished(name, replayer_group(self.name), parts), 30.0
            )
        except (EventBusError, TimeoutError) as exc:
            if not closing:
                self._to_trim.update(parts)
            log.warning("migration %s: could not trim the journal %s: %s", self.name, name, exc)

    async def _writer_for(self, partition: int) -> FencedWriter:
        writer = self._writers.get(partition)
        if writer is None:
            tid = transactional_id("replay", self.name, self.topic, partition)
            writer = await open_fenced_writer(
                self.writer, tid, topic=self.topic, timeout=self.copy_timeout + 5.0
            )
            self._writers[partition] = writer
        return writer

    async def _copy(self, partition: int, records: list[Record], *, retry: bool) -> None:
        """Copy one journal partition's records (they all go to the same partition).
        ``retry``: an earlier attempt of this batch failed here."""
        writer = await self._writer_for(partition)  # fences this partition's earlier replayer
        todo = records
        unsure = [r for r in records if retry or r.attempt > 1 or H_MAYBE in r.headers]
        if unsure:
            # an earlier attempt may have written some: once what it had on the wire has
            # landed or never will, copy only what the secondary lacks
            now = now_ms()
            due = max(_maybe_due(r, now, writer.fenced, retry) for r in unsure)
            if due > now:
                await asyncio.sleep((due - now) / 1000)  # the bound for a write on the wire
            todo = await _not_yet_copied(self.secondary, self.topic, records)
        if not todo:
            return
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
        try:
            await writer.write(self.topic, copies, timeout=self.copy_timeout + 1.0)
        except BaseException:
            # a fresh writer fences this one (and aborts what it left open) before the retry
            self._writers.pop(partition, None)
            with contextlib.suppress(EventBusError):
                await writer.close()
            raise

    async def close(self) -> None:
        self._held = None
        writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            with contextlib.suppress(EventBusError):
                await writer.close()
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.close()  # commits what was acked, so the trim can delete it
            await self._trim(closing=True)


def _maybe_due(record: Record, now: int, fenced: bool, retry: bool = False) -> int:
    """When (epoch ms) the secondary may be checked for ``record``'s copy: the time in its
    ``H_MAYBE`` header (a direct copy that timed out); for a redelivery, now if the writer is
    fenced (nothing of the failed attempt can land any more), else ``CHECK_DELAY`` from now
    (its attempt gave the batch back only after its write had failed or expired; only a
    request on the wire may remain)."""
    value = record.headers.get(H_MAYBE)
    if value is not None and value.isdigit():
        return int(value)
    if (retry or record.attempt > 1) and not fenced:
        return now + int(CHECK_DELAY * 1000)
    return now


async def replay_journal(
    name: str,
    topic: str,
    primary: Transport,
    secondary: Transport,
    *,
    timeout: float = 2.0,
    writer: Transport | None = None,
    copy_timeout: float = 5.0,
) -> int:
    """Drain the journal of ``topic`` to the secondary now; returns how many events moved."""
    replayer = JournalReplayer(
        name,
        topic,
        primary,
        secondary,
        member=f"drain-{os.getpid()}",
        writer=writer,
        copy_timeout=copy_timeout,
    )
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
        self.transport._consumers.discard(self)
        if self.inner is not None:
            await self.inner.close()

    async def kill(self) -> None:
        self._closed = True
        self.transport._consumers.discard(self)
        if self.inner is not None:
            await self.inner.kill()
