"""One member's side of the journal (:class:`MemberJournal`, owned by a MigrationTransport,
which it sees as a :class:`JournalOwner`): which topics it sends copies to the journal for,
writing them there, rescuing copies whose direct write was interrupted, its background
replayers, and when it may write copies directly again.

A member journals a topic's copies while copies wait in the journal before its own (another
member's, or history the backfill has not copied yet), and after a direct copy failed; it
writes directly again once its own journaled copies have been replayed, so its copies never
overtake each other on the secondary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Protocol

from eventbus.errors import (
    EventBusError,
    GroupNotFoundError,
    TopicExistsError,
    TopicNotFoundError,
)
from eventbus.migration.control import MigrationState, Side, TopicMigration
from eventbus.migration.journal import (
    CHECK_DELAY,
    JournalFullError,
    JournalReplayer,
    check_after,
    journal_backlog,
    journal_topic,
    replayer_group,
)
from eventbus.migration.marks import H_MAYBE
from eventbus.observability import instruments
from eventbus.topics import TopicSpec
from eventbus.transport import Offset, Outgoing, Transport, offset_key

__all__ = ["JournalOwner", "MemberJournal"]

log = logging.getLogger("eventbus.migration")


class JournalOwner(Protocol):
    """What a member's journal needs of the member (a ``MigrationTransport``, which satisfies
    this structurally, so this module does not import it)."""

    name: str
    """The migration's name."""
    member: str
    """This member's id (its heartbeats' and the replayers' name)."""
    state: MigrationState | None
    """The control record as last read."""
    poll_interval: float
    secondary_timeout: float
    journal_limit: int

    @property
    def closed(self) -> bool: ...

    @property
    def published(self) -> set[str]:
        """The topics this member has published to."""
        ...

    def changed(self) -> asyncio.Event:
        """An event set at the next change of the control record."""
        ...

    def stage_of(self, topic: str) -> TopicMigration | None: ...

    def side(self, name: Side) -> Transport:
        """The source or the target, by name."""
        ...

    def sides(self, primary: Side) -> tuple[Transport, Transport]:
        """(primary, secondary) when ``primary`` is the primary side."""
        ...

    def writer_for(self, side: Transport) -> Transport:
        """What writes copies to ``side`` (the source or the target)."""
        ...


class MemberJournal:
    """The journal as one member of the migration transport writes and replays it."""

    def __init__(self, owner: JournalOwner) -> None:
        self.owner = owner
        self.topics: set[str] = set()
        """Topics whose copies this member sends to the journal (until its own are replayed)."""
        self.marks: dict[str, dict[int, Offset]] = {}
        """Per topic and journal partition, the last journal offset this member wrote."""
        self.backlog: dict[str, int] = {}
        """Per topic, the journal backlog as last measured."""
        self.replayers: dict[str, asyncio.Task[None]] = {}
        self._leaving: dict[str, asyncio.Lock] = {}
        self._healthy: dict[str, bool] = {}
        self._next_leave_try: dict[str, float] = {}
        self._rescues: set[asyncio.Task[None]] = set()

    # writing -------------------------------------------------------------------------------
    async def write(self, primary: Transport, topic: str, copies: list[Outgoing]) -> None:
        """Append ``copies`` to the journal of ``topic`` on ``primary`` (created on first use)
        and journal this topic's copies from now on."""
        owner = self.owner
        self.topics.add(topic)
        name = journal_topic(owner.name, topic)
        try:
            positions = await primary.publish(name, copies, timeout=30.0)
        except TopicNotFoundError:
            mig = owner.stage_of(topic)
            with contextlib.suppress(TopicExistsError):
                await primary.create_topic(
                    TopicSpec(name=name, partitions=mig.partitions if mig else 1)
                )
            positions = await primary.publish(name, copies, timeout=30.0)
        marks = self.marks.setdefault(topic, {})
        for pos in positions:
            marks[pos.partition] = pos.offset

    async def write_maybe(self, primary: Transport, topic: str, copies: list[Outgoing]) -> None:
        """Journal copies whose direct write failed transiently: they may have landed anyway
        (a timeout), so the replayer checks the secondary for them before copying, once a
        request still on the wire can no longer land."""
        after = check_after()
        maybe = [dataclasses.replace(c, headers={**c.headers, H_MAYBE: after}) for c in copies]
        await self.write(primary, topic, maybe)

    async def rescue(self, topic: str, primary: Transport, copies: list[Outgoing]) -> None:
        """Journal copies whose direct write (or journaling) was interrupted, marked "maybe
        copied" with a check time after anything still queued in the copy client has expired.
        Runs to its end even if the caller is cancelled again."""
        after = check_after(self.owner.secondary_timeout + CHECK_DELAY)
        maybe = [dataclasses.replace(c, headers={**c.headers, H_MAYBE: after}) for c in copies]
        task = asyncio.ensure_future(self.write(primary, topic, maybe))
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
                self.owner.name,
                task.exception(),
            )

    def check_limit(self, topic: str) -> None:
        """Refuse a publish while the journal of ``topic`` holds ``journal_limit`` copies or
        more (as last measured): it would grow without bound while the secondary is away."""
        backlog = self.backlog.get(topic, 0)
        limit = self.owner.journal_limit
        if backlog >= limit:
            raise JournalFullError(
                f"migration {self.owner.name}: {backlog} copies of {topic!r} wait in the "
                f"journal (limit {limit}, migrate:// option journal_limit); the "
                "secondary is down or slow. Bring it back (services replay the journal, or "
                "'eventbus migrate drain'), or roll the topic back to a single side"
            )

    # replaying -----------------------------------------------------------------------------
    def sides(self, topic: str) -> tuple[Transport, Transport] | None:
        """(primary, secondary) while the journal of ``topic`` may be replayed, else None:
        until the backfill has copied the history (source primary), or until the era
        written in target-only is copied back after a rollback (target primary), the tail
        waits its turn."""
        mig = self.owner.stage_of(topic)
        if mig is None or not mig.dual:
            return None
        waiting = not mig.backfill_done if mig.primary == "source" else mig.reverse_pending
        return None if waiting else self.owner.sides(mig.primary)

    def ensure_replayers(self) -> None:
        """One background replayer per journaling topic (the poll loop must never block)."""
        for topic in self.topics | {t for t, n in self.backlog.items() if n}:
            task = self.replayers.get(topic)
            if task is None or task.done():
                self.replayers[topic] = asyncio.create_task(self._replayer(topic))

    async def _replayer(self, topic: str) -> None:
        """Replays one topic's journal with one long-lived group member, so ownership of
        journal partitions (and with it their order) stays put while producers run."""
        owner = self.owner
        replayer: JournalReplayer | None = None
        try:
            while not owner.closed and (topic in self.topics or self.backlog.get(topic)):
                sides = self.sides(topic)
                if replayer is not None and (replayer.primary, replayer.secondary) != sides:
                    await replayer.close()
                    replayer = None
                if sides is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(owner.changed().wait(), owner.poll_interval * 5)
                    continue
                if replayer is None:
                    replayer = JournalReplayer(
                        owner.name,
                        topic,
                        *sides,
                        member=owner.member,
                        writer=owner.writer_for(sides[1]),
                        copy_timeout=owner.secondary_timeout,
                    )
                moved = await self._step(replayer, topic)
                if not moved:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(owner.changed().wait(), owner.poll_interval)
        finally:
            if replayer is not None:
                await replayer.close()

    async def _step(self, replayer: JournalReplayer, topic: str) -> int:
        """One step of a replayer; 0 (and unhealthy) when it failed."""
        name = self.owner.name
        try:
            moved = await replayer.step(0.5)
            self._healthy[topic] = True
            return moved
        except EventBusError as exc:  # the secondary is still down: try again later
            log.warning("migration %s: journal replay of %s: %s", name, topic, exc)
        except Exception:  # never let the replayer die silently: say why, go on
            log.exception("migration %s: journal replay of %s failed", name, topic)
        self._healthy[topic] = False
        return 0

    async def measure_backlog(self) -> None:
        """Update the journal backlog of each dual-stage topic this member writes, and stop
        journaling once this member's own journaled copies have all been replayed (its copies
        then go straight to the secondary without overtaking its earlier ones)."""
        owner = self.owner
        state = owner.state
        if state is None:
            return
        for topic in owner.published | self.topics:
            sides = self.sides(topic)
            mig = state.topics.get(topic)
            if mig is None or not mig.dual:
                continue
            primary = owner.side(mig.primary)
            self.backlog[topic] = backlog = await journal_backlog(owner.name, topic, primary)
            instruments().observe_backlog(topic, backlog)
            replayed = topic in self.topics and sides is not None
            if replayed and await self._own_copies_replayed(topic, primary):
                self.topics.discard(topic)
                self.marks.pop(topic, None)

    # joining and leaving -------------------------------------------------------------------
    async def join(self, topic: str) -> None:
        """On this member's first publish of ``topic`` in a dual stage: while copies wait in
        the journal (another member's, or this service's before a restart), write copies to
        the journal too, behind them, instead of directly ahead of them."""
        owner = self.owner
        mig = owner.stage_of(topic)
        if mig is None or not mig.dual:
            return
        primary = owner.side(mig.primary)
        with contextlib.suppress(EventBusError):  # unknown: the first copy write will say
            if await journal_backlog(owner.name, topic, primary):
                # leave only once everything journaled so far is replayed (as if its own)
                info = await primary.describe_topic(journal_topic(owner.name, topic))
                marks = self.marks.setdefault(topic, {})
                for part in info.partitions:
                    if part.last is not None:
                        marks[part.partition] = part.last
                self.topics.add(topic)

    async def try_leave(self, topic: str, primary: Transport) -> None:
        """Once replay runs, pause this member's publishes of ``topic`` briefly until its own
        journaled copies are on the secondary, then write copies directly again. Without the
        pause a busy producer would keep adding to the journal faster than it can see it empty.
        Gives up (keeps journaling) after a few seconds, e.g. while the secondary is down."""
        loop = asyncio.get_running_loop()
        if self.sides(topic) is None or not self._healthy.get(topic, False):
            return  # nothing replays now (history first, or the secondary is down)
        if loop.time() < self._next_leave_try.get(topic, 0.0):
            return
        lock = self._leaving.setdefault(topic, asyncio.Lock())
        if lock.locked():
            return  # another publish is waiting already: journal this one, do not queue
        async with lock:
            deadline = loop.time() + 2.0
            while topic in self.topics:
                if await self._own_copies_replayed(topic, primary):
                    self.topics.discard(topic)
                    self.marks.pop(topic, None)
                    return
                if loop.time() > deadline or not self._healthy.get(topic, False):
                    self._next_leave_try[topic] = loop.time() + 1.0  # do not stall every publish
                    return
                await asyncio.sleep(0.05)  # poll the replayer's progress

    async def _own_copies_replayed(self, topic: str, primary: Transport) -> bool:
        marks = self.marks.get(topic, {})
        if not marks:
            return True
        name = self.owner.name
        try:
            info = await primary.describe_group(replayer_group(name))
        except GroupNotFoundError:
            return False
        jt = journal_topic(name, topic)
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
