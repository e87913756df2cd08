"""The operator's side of a migration: init, advance, backfill, verify, cutover, rollback.

Every function here is idempotent or refuses clearly, so an on-call engineer can run any step
again after an interruption. See docs/migration.md for the runbook.

Position translation (cutover and its reverse) uses the event ids that every copy carries
instead of a separate ledger: for each topic and partition, the old side says which events the
group has finished (offset at most ``delivered`` and below ``lowest_pending``); on the new side
the group starts at the first record whose event is not finished there (so nothing is
skipped), and the finished records after that start are listed in the control record as
ranges keyed by topic and partition, where members skip them (so nothing is handled twice).
Records the old side does not have yet count as unfinished, unless the old side trims and they
are older than its oldest event (then finished: trimmed or handled there).

A group moves with every topic it reads, at once; a dead-letter topic ``<topic>.dlq`` moves
stage with its topic; the control record is written by compare-and-set (see
``ControlStore.save``). What is refused, and how to see it: docs/migration.md, "Topologies".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from eventbus._registry import open_transport
from eventbus._urls import redact
from eventbus.errors import (
    ConfigurationError,
    EventBusError,
    GroupNotFoundError,
    TopicExistsError,
)
from eventbus.event import H_ID
from eventbus.migration._fenced import (
    FencedError,
    FencedWriter,
    open_fenced_writer,
    transactional_id,
)
from eventbus.migration.control import (
    MAX_SKIP_RANGES,
    STAGES,
    ControlConflictError,
    ControlStore,
    GroupMigration,
    GroupStatus,
    GroupTopic,
    MigrationState,
    PartitionDiff,
    Stage,
    TopicMigration,
    VerifyReport,
)
from eventbus.migration.transport import (
    DLQ_SUFFIX,
    H_COPY,
    H_COPY_OF,
    H_GEN,
    MIGRATION_ROOM,
    copy_writer,
    dead_letter_topic,
    journal_backlog,
    replay_journal,
)
from eventbus.topics import TopicSpec
from eventbus.transport import (
    GroupPartition,
    Offset,
    Outgoing,
    Position,
    Record,
    TopicGroups,
    Transport,
    offset_key,
    record_size,
)

__all__ = ["Migration", "Progress"]

REVERSE_MARGIN = timedelta(seconds=60)
"""How far before ``target_only_at`` the reverse backfill starts reading (producer clocks)."""

COPY_TIMEOUT = 5.0
"""Seconds a copy write of ``drain`` may take (its records expire then, see ``copy_writer``)."""

Progress = Callable[[int], None]
"""Called with the number of records just processed (for progress bars)."""


def event_id(record: Record) -> str:
    """The identity of a record's event on both sides (raw records: their source place)."""
    value = record.headers.get(H_ID)
    if value is not None:
        return value.decode(errors="replace")
    return f"{record.topic}/{record.partition}/{record.offset}"


SCAN_PAGE = 5000
"""Records per read when scanning a partition (verify, cutover, the backfill's resume scan):
a Kafka read has a fixed cost of up to ``fetch.wait.max.ms`` whatever its size."""


async def scan(
    transport: Transport,
    topic: str,
    partition: int,
    *,
    page: int = SCAN_PAGE,
    start: datetime | None = None,
) -> AsyncIterator[Record]:
    """Every record of one partition (from ``start`` if given), in order."""
    inclusive = True
    at: Offset | datetime | None = start
    while True:
        batch = await transport.read(topic, partition, at, inclusive=inclusive, limit=page)
        for record in batch:
            yield record
        if len(batch) < page:
            return
        at, inclusive = batch[-1].offset, False


COPY_PAGE = 1000
"""Records per read of the backfill."""
COPY_BATCH_RECORDS = 5000
COPY_BATCH_BYTES = 8 * 1024 * 1024
"""A backfill batch (one transaction on Kafka) ends at whichever of these it reaches first: a
transaction's commit costs a round trip, so batches span several reads."""
CHECKPOINT_EVERY = 1.0
"""Seconds between backfill checkpoints (a lower bound for the resume scan, so rarer is safe)."""

LEGACY_QUIET = 60.0
"""Seconds without writes from services outside eventbus that advancing a topic with a
stream layout to target-only wants (see ``Migration.advance``)."""

log = logging.getLogger("eventbus.migration")

Written = Callable[[Offset, Offset], Awaitable[None]]
"""Called after each batch lands: (its last source offset, that copy's target offset)."""


async def _pages(
    side: Transport, topic: str, p: int, start: Offset | datetime | None, inclusive: bool
) -> AsyncGenerator[list[Record], None]:
    """Pages of one partition in order; the next page is read while the caller works."""

    def read(at: Offset | datetime | None, incl: bool) -> asyncio.Task[list[Record]]:
        task = asyncio.ensure_future(side.read(topic, p, at, inclusive=incl, limit=COPY_PAGE))
        task.add_done_callback(_retrieve)  # a read left behind by an error is not reported
        return task

    task = read(start, inclusive)
    try:
        while True:
            batch = await task
            full = len(batch) >= COPY_PAGE
            if full:
                task = read(batch[-1].offset, False)
            yield batch
            if not full:
                return
    finally:
        task.cancel()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _copy_partition(
    side: Transport,
    topic: str,
    p: int,
    start: Offset | datetime | None,
    *,
    inclusive: bool,
    keep: Callable[[Record], bool],
    kind: str,
    writer: FencedWriter,
    progress: Progress | None,
    written: Written | None = None,
    limit: int | None = None,
    reached: dict[int, Offset] | None = None,
) -> int:
    """Copy the records of one partition that ``keep`` selects, in order, through ``writer``.

    Batches are written one at a time, in order (the next starts only after the previous
    landed), while the next batch is read and built. A copy larger than ``limit`` (the
    receiving topic's max event bytes) stops the copy before its batch is written, naming the
    event and the way out. Returns how many records were copied; ``reached[p]`` is set to the
    last offset read once everything selected up to it has landed."""
    copier = _Copier(topic, kind, writer, progress, written, limit)
    last_read: Offset | None = None
    try:
        async with contextlib.aclosing(_pages(side, topic, p, start, inclusive)) as pages:
            async for page in pages:
                copier.add(page, keep)
                if page:
                    last_read = page[-1].offset
                if copier.full():
                    await copier.flush()
        await copier.flush()
        await copier.land()
    finally:
        copier.abandon()
    if reached is not None and last_read is not None:
        reached[p] = last_read
    return copier.copied


class _Copier:
    """The batch being built and the one being written (at most one at a time)."""

    def __init__(
        self,
        topic: str,
        kind: str,
        writer: FencedWriter,
        progress: Progress | None,
        written: Written | None,
        limit: int | None = None,
    ) -> None:
        self.topic, self.kind, self.writer, self.limit = topic, kind, writer, limit
        self.progress, self.written = progress, written
        self.copied = 0
        self.batch: list[Outgoing] = []
        self.size = self.seen = 0
        self.last: Offset | None = None
        self.write: asyncio.Task[Position | None] | None = None
        self.writing: tuple[int, int, Offset | None] = (0, 0, None)
        """(copies, records read, last source offset) of the batch being written."""

    def add(self, page: list[Record], keep: Callable[[Record], bool]) -> None:
        self.seen += len(page)
        for record in page:
            if keep(record):
                copy = _copy(record, self.kind)
                size = record_size(copy)
                if self.limit is not None and size > self.limit:
                    raise ConfigurationError(
                        f"{self.topic}: event {event_id(record)} (partition "
                        f"{record.partition}, offset {record.offset}) is {size} bytes with the "
                        f"migration's headers, over the receiving topic's limit of {self.limit};"
                        " nothing from it on was copied. Raise that topic's max_event_bytes "
                        f"to {size + MIGRATION_ROOM} or more on that side (alter_topic, or "
                        "'eventbus topics apply' with its spec) and run backfill again"
                    )
                self.batch.append(copy)
                self.size += len(record.value)
                self.last = record.offset

    def full(self) -> bool:
        return len(self.batch) >= COPY_BATCH_RECORDS or self.size >= COPY_BATCH_BYTES

    async def flush(self) -> None:
        """Wait for the batch being written, then start writing the one built."""
        await self.land()
        if self.batch:
            self.write = asyncio.ensure_future(
                self.writer.write(self.topic, self.batch, timeout=60.0)
            )
            self.write.add_done_callback(_retrieve)
            self.writing = (len(self.batch), self.seen, self.last)
        elif self.progress is not None and self.seen:
            self.progress(self.seen)
        self.batch, self.size, self.seen = [], 0, 0

    async def land(self) -> None:
        """Wait for the batch being written (raises what its write raised)."""
        if self.write is None:
            return
        task, self.write = self.write, None
        last = await task
        count, seen, source = self.writing
        self.copied += count
        if self.progress is not None:
            self.progress(seen)
        if self.written is not None and source is not None and last is not None:
            await self.written(source, last.offset)

    def abandon(self) -> None:
        if self.write is not None:
            self.write.cancel()  # its thread still ends the transaction; a resumed run sees how


def _finished(part: GroupPartition | None) -> Callable[[Offset], bool]:
    """Whether the group is done with an offset on the side ``part`` describes."""
    if part is None or part.delivered is None:
        return lambda offset: False
    delivered = offset_key(part.delivered)
    low = offset_key(part.lowest_pending) if part.lowest_pending is not None else None
    return lambda o: offset_key(o) <= delivered and (low is None or offset_key(o) < low)


class Migration:
    """One migration between a source and a target, addressed by name."""

    def __init__(
        self,
        name: str,
        source: Transport,
        target: Transport,
        *,
        source_writer: Transport | None = None,
        target_writer: Transport | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.target = target
        self.source_writer = source_writer or source
        """What ``drain`` writes copies to the source with (see ``copy_writer``)."""
        self.target_writer = target_writer or target
        self.control = ControlStore(source, name)

    @classmethod
    async def open(cls, name: str, source_url: str, target_url: str) -> Migration:
        source = open_transport(source_url)
        target = open_transport(target_url)
        migration = cls(
            name,
            source,
            target,
            source_writer=copy_writer(source_url, source, COPY_TIMEOUT),
            target_writer=copy_writer(target_url, target, COPY_TIMEOUT),
        )
        for transport in (source, target, *migration._own_writers()):
            await transport.connect()
        migration.source_url = redact(source_url)
        migration.target_url = redact(target_url)
        return migration

    source_url = ""
    target_url = ""

    def _own_writers(self) -> list[Transport]:
        return [
            w
            for w, side in ((self.source_writer, self.source), (self.target_writer, self.target))
            if w is not side
        ]

    async def close(self) -> None:
        for writer in self._own_writers():
            await writer.close()
        await self.source.close()
        await self.target.close()

    # init and status ---------------------------------------------------------------------
    async def init(self, topics: list[str]) -> MigrationState:
        """Start (or extend) the migration with ``topics``, all at ``source-only``; the
        target topics are created with the source's spec (partitions, retention, limits).

        Each new topic's dead-letter topic ``<topic>.dlq`` joins it (created on the source
        first if it does not exist yet): it is created on both sides, dual-written,
        backfilled and verified with its topic, and moves stage with it."""
        await self.control.ensure()
        state = await self.control.load()
        version = state.version if state is not None else None
        state = state or MigrationState(name=self.name)
        state.source, state.target = self.source_url, self.target_url
        wanted: list[str] = []
        for topic in topics:
            wanted.append(topic)
            dlq = dead_letter_topic(topic)
            if topic in state.topics or topic.endswith(DLQ_SUFFIX) or dlq in topics:
                continue
            with contextlib.suppress(TopicExistsError):
                await self.source.create_topic(TopicSpec(name=dlq))
            wanted.append(dlq)
        for topic in wanted:
            spec = (await self.source.describe_topic(topic)).spec
            # room for the migration's headers: every copy of an event that fits the source
            # fits the target
            roomy = spec.model_copy(
                update={"max_event_bytes": spec.max_event_bytes + MIGRATION_ROOM}
            )
            with contextlib.suppress(TopicExistsError):
                await self.target.create_topic(roomy)
            target_spec = (await self.target.describe_topic(topic)).spec
            if target_spec.partitions != spec.partitions:
                raise ConfigurationError(
                    f"topic {topic!r} has {spec.partitions} partitions on the source but "
                    f"{target_spec.partitions} on the target; keys would land elsewhere. "
                    "Make them equal first"
                )
            state.topics.setdefault(topic, TopicMigration(partitions=spec.partitions))
        return await self.control.save(state, expected_version=version)

    async def status(self) -> dict[str, Any]:
        """Per topic: stage, journal backlog, last verify, live producers, every group seen
        reading it (recorded, in heartbeats, or with positions on the source) with its side
        and its backlog on both sides, and what blocks the next stage. Per group: its side
        and topics."""
        state = await self.control.require()
        live = await self.control.live_members(10.0)
        topics: dict[str, Any] = {}
        for name, mig in state.topics.items():
            primary = self.target if mig.stage == "dual-target-primary" else self.source
            backlog = await journal_backlog(self.name, name, primary)
            seen = await self.groups_reading(name)
            seen.update({g: "recorded" for g, gm in state.groups.items() if gm.reads(name)})
            readers: dict[str, Any] = {}
            for group in sorted(seen):
                gm = state.groups.get(group)
                readers[group] = {
                    "side": gm.status if gm is not None and gm.reads(name) else "source",
                    "source_backlog": await self._lag(self.source, group, name),
                    "target_backlog": await self._lag(self.target, group, name),
                }
            topics[name] = {
                "stage": mig.stage,
                "generation": mig.generation,
                "backfill_done": mig.backfill_done,
                "reverse_backfill_pending": mig.reverse_pending,
                "backfilled": mig.backfilled,
                "journal_backlog": backlog,
                "verify": None
                if mig.verify is None
                else {"ok": mig.verify.ok, "checked_at": mig.verify.checked_at.isoformat()},
                "producers": sorted(
                    m for m, b in live.items() if b.role == "producer" and name in b.topics
                ),
                "groups": readers,
                "blocks": _blocks(mig, backlog, readers),
            }
        groups: dict[str, Any] = {}
        for group, gm in state.groups.items():
            groups[group] = {
                "topic": gm.topic,
                "topics": gm.topics or [gm.topic],
                "status": gm.status,
                "source_lag": sum(
                    [await self._lag(self.source, group, t) or 0 for t in gm.topics or [gm.topic]]
                ),
                "target_lag": sum(
                    [await self._lag(self.target, group, t) or 0 for t in gm.topics or [gm.topic]]
                ),
            }
        return {"name": state.name, "version": state.version, "topics": topics, "groups": groups}

    async def _lag(self, side: Transport, group: str, topic: str) -> int | None:
        """The group's backlog on one topic of ``side`` (None: no positions there)."""
        try:
            info = await side.describe_group(group)
        except EventBusError:
            return None
        parts = [p for p in info.partitions if p.topic == topic]
        if not parts:
            return None
        return sum(p.backlog if p.backlog is not None else (p.lag or 0) for p in parts)

    # stages ------------------------------------------------------------------------------
    async def advance(
        self,
        topic: str,
        *,
        wait: float = 30.0,
        abandon: Sequence[str] = (),
        dry_run: bool = False,
        ignore_legacy_writers: bool = False,
    ) -> MigrationState:
        """Move ``topic`` to its next stage, after every live producer follows the current
        one and the next stage's preconditions hold (raises ConfigurationError saying which
        does not). Waits up to ``wait`` s for producers to catch up.

        To ``target-only``: refused while a group seen reading ``topic`` (on the source's
        server, or in a live member's heartbeat) has not been cut over to the target, naming
        each, unless it is listed in ``abandon`` (it then gets nothing new: the source
        receives no more events of the topic). ``dry_run``: run the checks that change
        nothing and return the state unchanged.

        To ``target-only`` a topic with a stream layout (shared with services outside
        eventbus) is also refused while such a service wrote to the source within the last
        ``LEGACY_QUIET`` seconds, unless ``ignore_legacy_writers``; what they wrote before is
        copied to the target first."""
        state = await self.control.require()
        self._refuse_companion(state, topic)
        mig = state.topic(topic)
        index = STAGES.index(mig.stage)
        if index == len(STAGES) - 1:
            raise ConfigurationError(f"{topic} is already {mig.stage}; nothing to advance")
        nxt = STAGES[index + 1]
        family = self._family(state, topic)
        if nxt == "target-only":
            for t in family:
                await self._require_no_group_left(state, t, abandon)
                if not ignore_legacy_writers:
                    await self._require_legacy_writers_gone(t)
        if dry_run:
            return state
        for t in family:
            await self._await_producers(t, state.topic(t).generation, wait)
        for t in family:
            mig = state.topic(t)
            if nxt == "dual-target-primary":
                if not mig.backfill_done:
                    raise ConfigurationError(
                        f"{t}: backfill has not finished; run 'eventbus migrate backfill {topic}'"
                    )
                if mig.verify is None or not mig.verify.ok:
                    raise ConfigurationError(
                        f"{t}: the last verification did not pass; run 'eventbus migrate "
                        f"verify {topic}' and fix what it reports"
                    )
                await self._require_verify_after_copy_failures(t, mig.verify.checked_at)
                await self._require_empty_journal(t, self.source)
            if nxt == "target-only":
                state, mig = await self._finish_reverse_backfill(t, state, mig)
                await self._require_groups_on(state, t, "target")
                await self._require_empty_journal(t, self.target)
                await self._catch_up([t])  # the last of what legacy producers wrote
                state = await self.control.require()
        return await self._set_stage(state, topic, nxt)

    async def rollback(
        self, topic: str, *, wait: float = 30.0, dry_run: bool = False
    ) -> MigrationState:
        """Move ``topic`` back one stage. Going back to ``source-only`` needs every group on
        the source (move groups back with ``cutover --to-side source`` in dual-source-primary).

        From ``target-only`` the events written meanwhile are on the target only: the topic
        goes back to ``dual-target-primary`` with a reverse backfill pending (run
        ``backfill``: it copies them to the source; copies of newer events wait in the
        journal until it has). Moving on from there (either way) runs it first if needed.
        Its dead-letter topic moves with it. ``dry_run``: run the checks that change nothing
        and return the state unchanged."""
        state = await self.control.require()
        self._refuse_companion(state, topic)
        mig = state.topic(topic)
        index = STAGES.index(mig.stage)
        if index == 0:
            raise ConfigurationError(f"{topic} is already source-only; nothing to roll back")
        family = self._family(state, topic)
        if dry_run:
            if STAGES[index - 1] == "source-only":
                for t in family:
                    await self._require_groups_on(state, t, "source")
            return state
        for t in family:
            await self._await_producers(t, state.topic(t).generation, wait)
        prev = STAGES[index - 1]
        for t in family:
            mig = state.topic(t)
            if prev == "source-only":
                await self._require_groups_on(state, t, "source")
            if prev == "dual-source-primary":
                state, mig = await self._finish_reverse_backfill(t, state, mig)
                await self._require_empty_journal(t, self.target)
        return await self._set_stage(state, topic, prev)

    @staticmethod
    def _family(state: MigrationState, topic: str) -> list[str]:
        """``topic`` and its dead-letter topic when that is migrated along (same stage)."""
        dlq = dead_letter_topic(topic)
        mig, companion = state.topics.get(topic), state.topics.get(dlq)
        if mig is None or companion is None or companion.stage != mig.stage:
            return [topic]
        return [topic, dlq]

    @staticmethod
    def _refuse_companion(state: MigrationState, topic: str) -> None:
        if topic.endswith(DLQ_SUFFIX):
            parent = topic[: -len(DLQ_SUFFIX)]
            if parent in state.topics and Migration._family(state, parent) == [parent, topic]:
                raise ConfigurationError(
                    f"{topic} is the dead-letter topic of {parent} and moves with it: run the "
                    f"command for {parent}"
                )

    async def _finish_reverse_backfill(
        self, topic: str, state: MigrationState, mig: TopicMigration
    ) -> tuple[MigrationState, TopicMigration]:
        """Run the reverse backfill if a rollback from target-only left one pending (the
        operator should have run ``backfill``; moving on without it would leave those events
        off the source, and hold the journal). Returns the state read again."""
        if not mig.reverse_pending:
            return state, mig
        await self._backfill_reverse(topic, None)
        state = await self.control.require()
        return state, state.topic(topic)

    @staticmethod
    def _require_no_reverse_backfill(topic: str, mig: TopicMigration) -> None:
        if mig.reverse_pending:
            raise ConfigurationError(
                f"{topic}: the events written while it was target-only are not on the source "
                "yet, and copies to the source wait behind them in the journal; run "
                "'eventbus migrate backfill' (it copies them back) first"
            )

    async def _set_stage(self, state: MigrationState, topic: str, stage: Stage) -> MigrationState:
        """Move ``topic`` and its dead-letter topic (see ``_family``) to ``stage``, in one
        write of the control record."""
        version = state.version
        for t in self._family(state, topic):
            mig = state.topics[t]
            if mig.stage == "target-only" and stage == "dual-target-primary":
                mig.reverse_pending = True
            mig.stage = stage
            mig.generation += 1
            if stage == "source-only":
                mig.backfill_done = False
                mig.verify = None
            if stage == "target-only":
                mig.target_only_at = datetime.now(UTC)
        return await self.control.save(state, expected_version=version)

    async def _await_producers(self, topic: str, generation: int, wait: float) -> None:
        """Wait until every live producer of ``topic`` reported ``generation`` (or later) in a
        heartbeat sent after the last change of the control record."""
        deadline = time.monotonic() + wait
        changed = (await self.control.require()).updated
        while True:
            live = await self.control.live_members(10.0)
            behind = sorted(
                m
                for m, beat in live.items()
                if beat.role == "producer"
                and topic in beat.topics
                and (beat.topics[topic] < generation or beat.time < changed)
            )
            if not behind:
                return
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"{topic}: producers {', '.join(behind)} have not acknowledged the current "
                    "stage yet; check they run with the migrate:// URL, then retry"
                )
            await asyncio.sleep(0.2)  # poll heartbeats

    async def _require_empty_journal(
        self, topic: str, primary: Transport, wait: float = 30.0
    ) -> None:
        """Wait (up to ``wait`` s) until no copy of ``topic`` waits in the journal."""
        deadline = time.monotonic() + wait
        while backlog := await journal_backlog(self.name, topic, primary):
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"{topic}: {backlog} dual-write copies still wait in the journal; wait "
                    "until 'eventbus migrate status' shows a backlog of 0 (is the secondary "
                    "up? is a producer or 'eventbus migrate drain' replaying it?)"
                )
            await asyncio.sleep(0.2)  # poll the backlog

    async def _require_verify_after_copy_failures(self, topic: str, verified: datetime) -> None:
        """Refuse when a member reported (in the last hour of heartbeats) a copy of ``topic``
        that failed after ``verified`` and was journaled after the fact."""
        late = sorted(
            (beat.copy_failures[topic], member)
            for member, beat in (await self.control.live_members(3600.0)).items()
            if topic in beat.copy_failures and beat.copy_failures[topic] > verified
        )
        if late:
            at, member = late[-1]
            raise ConfigurationError(
                f"{topic}: a copy failed at {at:%H:%M:%S} UTC on {member}, after the last "
                f"verification ({verified:%H:%M:%S} UTC); wait for the journal to drain, then "
                "run 'eventbus migrate verify' again"
            )

    async def groups_reading(self, topic: str) -> dict[str, str]:
        """Groups seen reading ``topic`` and where they were seen: on the source's server
        (positions for the topic) or in a live member's heartbeat."""
        seen: dict[str, str] = {}
        for beat in (await self.control.live_members(10.0)).values():
            for group, topics in beat.reads.items():
                if topic in topics:
                    seen[group] = f"live member {beat.member}"
        source = self.source
        if isinstance(source, TopicGroups):  # one look at the topic, not at every group
            for group in await source.topic_groups(topic):
                seen.setdefault(group, "positions on the source")
            return seen
        for group in await source.list_groups():
            if group in seen or group.startswith("__eb_migration."):
                continue
            try:
                info = await source.describe_group(group)
            except EventBusError:
                continue
            if any(p.topic == topic for p in info.partitions):
                seen[group] = "positions on the source"
        return seen

    async def _require_no_group_left(
        self, state: MigrationState, topic: str, abandon: Sequence[str]
    ) -> None:
        """Refuse target-only while a group that reads ``topic`` was not cut over."""
        left = {
            group: where
            for group, where in (await self.groups_reading(topic)).items()
            if group not in abandon
            and not (
                group in state.groups
                and state.groups[group].status == "target"
                and state.groups[group].reads(topic)
            )
        }
        if left:
            names = ", ".join(f"{g} ({w})" for g, w in sorted(left.items()))
            raise ConfigurationError(
                f"{topic}: groups {names} read it and were not cut over to the target; after "
                "target-only the source gets nothing new, so they would wait forever. Run "
                f"'eventbus migrate cutover {topic} --group G' for each, or pass "
                "'--abandon-group G' to leave one behind on purpose"
            )

    async def _require_groups_on(self, state: MigrationState, topic: str, side: str) -> None:
        wrong = sorted(g for g, gm in state.groups.items() if gm.reads(topic) and gm.status != side)
        if wrong:
            raise ConfigurationError(
                f"{topic}: groups {', '.join(wrong)} are not on the {side}; move them with "
                f"'eventbus migrate cutover --group G --to {side}' first"
            )

    # backfill ----------------------------------------------------------------------------
    async def backfill(self, topic: str, *, progress: Progress | None = None) -> int:
        """Backfill ``topic`` and then its dead-letter topic (see :meth:`_backfill_one`).
        Returns how many events were copied."""
        state = await self.control.require()
        self._refuse_companion(state, topic)
        copied = 0
        for t in self._family(state, topic):
            copied += await self._backfill_one(t, progress=progress)
        return copied

    async def _backfill_one(self, topic: str, *, progress: Progress | None = None) -> int:
        """Copy the source's history (events not written by dual-write) into the target in
        order per partition, keys, ids, headers and timestamps kept. Resumable: it continues
        after the last copy found on the target, so running it again after a crash leaves
        each event on the target exactly once. On Kafka each batch is one transaction, and a
        new run first fences every earlier run of the same topic (see ``_fenced``),
        so copies a killed or stalled run still had on their way never show up twice.
        Returns how many events it copied."""
        state = await self.control.require()
        mig = state.topic(topic)
        if mig.stage == "dual-target-primary" and mig.reverse_pending:
            return await self._backfill_reverse(topic, progress)
        if mig.stage != "dual-source-primary":
            raise ConfigurationError(
                f"{topic} is {mig.stage}; backfill runs in dual-source-primary (advance first), "
                "or after a rollback from target-only"
            )
        await self._await_producers(topic, mig.generation, 30.0)
        # fence earlier runs before the resume scan reads the target
        tid = transactional_id("backfill", self.name, topic)
        writer = await open_fenced_writer(self.target, tid, topic=topic)
        copied = 0
        try:
            mig = (await self.control.require()).topic(topic)
            for p in range(mig.partitions):
                copied += await self._backfill_partition(topic, p, mig, writer, progress)
        finally:
            await writer.close()
        state = await self.control.require()
        version = state.version
        done = state.topic(topic)
        done.backfill_done = True
        done.backfilled += copied
        await self.control.save(state, expected_version=version)
        # the dual-written tail waited in the journal: the producers' replayers move it now
        # ('eventbus migrate drain' moves it when no producer is running)
        return copied

    async def follow(
        self,
        topic: str,
        *,
        interval: float = 1.0,
        stop: asyncio.Event | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Keep copying to the target what services outside eventbus write to the source (a
        legacy producer's ``XADD``): the events without the migration's marks, which neither
        dual-write nor the journal copies. It first runs the backfill where that has not
        finished, then looks for new such events every ``interval`` seconds, in
        ``dual-source-primary`` and ``dual-target-primary``, until ``stop`` is set or the
        topic leaves those stages. Copies land in source order per partition, exactly once
        (the same fenced writer and resume scan as the backfill, so a follow and a backfill
        never run at once). Returns how many events it copied.

        Per-key order between such an event and dual-written events of the same key may
        differ on the target (a copy lands up to ``interval`` later); keep legacy and
        eventbus producers on different keys where that matters. Raises ConfigurationError
        outside the dual stages."""
        copied = 0
        rounds = 0
        reached: dict[int, Offset] = {}
        writer: FencedWriter | None = None  # kept across rounds: each opening fences others
        try:
            while stop is None or not stop.is_set():
                mig = (await self.control.require()).topic(topic)
                if mig.stage == "dual-source-primary" and not mig.backfill_done:
                    copied += await self.backfill(topic, progress=progress)
                    continue
                if mig.stage != "dual-source-primary" and (
                    mig.stage != "dual-target-primary" or mig.reverse_pending
                ):
                    if rounds:
                        return copied  # the topic moved on: following ends with it
                    raise ConfigurationError(
                        f"{topic} is {mig.stage}; follow runs in dual-source-primary and "
                        "dual-target-primary (after the backfill)"
                    )
                try:
                    if writer is None:
                        tid = transactional_id("backfill", self.name, topic)
                        writer = await open_fenced_writer(self.target, tid, topic=topic)
                    copied += await self._follow_round(topic, reached, progress, writer=writer)
                except EventBusError as exc:  # fenced by a cutover's catch-up, a side away
                    log.warning("migration %s: follow of %s: %s; again", self.name, topic, exc)
                    reached.clear()  # resume from what the target holds
                    if writer is not None:
                        with contextlib.suppress(EventBusError):
                            await writer.close()
                    writer = None
                rounds += 1
                if stop is None:
                    await asyncio.sleep(interval)  # allowed: the pace of a poll loop
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
        finally:
            if writer is not None:
                await writer.close()
        return copied

    async def _follow_round(
        self,
        topic: str,
        reached: dict[int, Offset],
        progress: Progress | None,
        *,
        writer: FencedWriter,
        catch_up: bool = False,
    ) -> int:
        """One pass of :meth:`follow` over every partition, after what it read last.
        ``catch_up`` (a cutover's): every landed batch is checkpointed, so a running follow
        sees that it was copied. A follow saves nothing (its control-record writes would race
        the operator's commands), so a restarted follow's first resume scan starts at the last
        checkpoint of the backfill or of a catch-up."""
        copied = 0
        # a cutover's catch-up (another copier) may have copied past what this one
        # read last; its checkpoint says so (and it fenced this writer)
        mig = (await self.control.require()).topic(topic)
        limit = (await self.target.describe_topic(topic)).spec.max_event_bytes
        for p in range(mig.partitions):
            checkpoint = mig.backfill_checkpoint.get(p)
            if p in reached and (
                checkpoint is None or offset_key(_offset(checkpoint[0])) <= offset_key(reached[p])
            ):
                after: Offset | None = reached[p]
            else:
                after = await self._resume_point(topic, p, mig)

            async def written(source: Offset, target: Offset, p: int = p) -> None:
                # only a catch-up writes the control record: a follow's writes would
                # race the operator's commands, which expect the version they read
                if catch_up:
                    await self._checkpoint(topic, p, source, target)

            copied += await _copy_partition(
                self.source,
                topic,
                p,
                after,
                inclusive=after is None,
                keep=lambda r: H_GEN not in r.headers and H_COPY not in r.headers,
                kind="backfill",
                writer=writer,
                progress=progress,
                written=written,
                limit=limit,
                reached=reached,
            )
        return copied

    async def _require_legacy_writers_gone(self, topic: str) -> None:
        """To target-only, for a topic with a stream layout (a stream shared with services
        outside eventbus): refuse while such a service still writes to the source, that is
        while one of the last ``LEGACY_QUIET`` seconds' entries lacks the migration's marks
        (after target-only nobody would copy what it writes)."""
        if (await self.source.describe_topic(topic)).spec.layout is None:
            return
        since = datetime.now(UTC) - timedelta(seconds=LEGACY_QUIET)
        info = await self.source.describe_topic(topic)
        for part in info.partitions:
            async with contextlib.aclosing(
                _pages(self.source, topic, part.partition, since, True)
            ) as pages:
                async for page in pages:
                    for r in page:
                        if H_GEN not in r.headers and H_COPY not in r.headers:
                            raise ConfigurationError(
                                f"{topic}: a service outside eventbus still writes to the "
                                f"source (event {event_id(r)} at {r.offset}, within the last "
                                f"{LEGACY_QUIET:.0f} s); after target-only nobody copies what "
                                "it writes. Retire it (or move it onto eventbus), wait "
                                f"{LEGACY_QUIET:.0f} s and advance again, or pass "
                                "--ignore-legacy-writers to leave its events behind"
                            )

    async def _catch_up(self, topics: Sequence[str]) -> None:
        """Before a group's positions are translated to the target (its members paused):
        copy what services outside eventbus wrote to each topic that declares a stream
        layout (the shared streams :meth:`follow` serves), so every event the group handled
        on the source is on the target and is not handled there again."""
        state = await self.control.require()
        for t in topics:
            if (await self.source.describe_topic(t)).spec.layout is None:
                continue
            mig = state.topic(t)
            if not mig.stage.startswith("dual") or mig.reverse_pending:
                continue
            for attempt in range(5):  # a running follow may fence this writer once
                tid = transactional_id("backfill", self.name, t)
                writer = await open_fenced_writer(self.target, tid, topic=t)
                try:
                    await self._follow_round(t, {}, None, writer=writer, catch_up=True)
                    break
                except FencedError:
                    if attempt == 4:
                        raise
                finally:
                    await writer.close()

    async def _resume_point(self, topic: str, p: int, mig: TopicMigration) -> Offset | None:
        """The last source offset already copied to the target (None: nothing yet)."""
        checkpoint = mig.backfill_checkpoint.get(p)
        last: Offset | None = None
        start: Offset | None = None
        if checkpoint is not None:
            last = _offset(checkpoint[0])
            start = _offset(checkpoint[1])
        inclusive = True
        while True:
            batch = await self.target.read(topic, p, start, inclusive=inclusive, limit=SCAN_PAGE)
            for record in batch:
                if record.headers.get(H_COPY) == b"backfill":
                    last = _offset(record.headers[H_COPY_OF].decode())
            if len(batch) < SCAN_PAGE:
                return last
            start, inclusive = batch[-1].offset, False

    async def _backfill_partition(
        self,
        topic: str,
        p: int,
        mig: TopicMigration,
        writer: FencedWriter,
        progress: Progress | None,
    ) -> int:
        after = await self._resume_point(topic, p, mig)
        last_saved = time.monotonic()

        async def written(source: Offset, target: Offset) -> None:
            nonlocal last_saved
            if time.monotonic() - last_saved >= CHECKPOINT_EVERY:
                await self._checkpoint(topic, p, source, target)
                last_saved = time.monotonic()

        return await _copy_partition(
            self.source,
            topic,
            p,
            after,
            inclusive=after is None,
            keep=lambda r: H_GEN not in r.headers,
            kind="backfill",
            writer=writer,
            progress=progress,
            written=written,
            limit=(await self.target.describe_topic(topic)).spec.max_event_bytes,
        )

    async def _checkpoint(self, topic: str, p: int, source: Offset, target: Offset) -> None:
        """Record a lower bound for the resume scan. A fenced earlier run may still save one
        of its own meanwhile (older, so also a lower bound): on a version clash, read again
        and retry rather than fail the backfill."""
        for attempt in range(5):
            state = await self.control.require()
            version = state.version
            state.topic(topic).backfill_checkpoint[p] = (str(source), str(target))
            try:
                await self.control.save(state, expected_version=version)
                return
            except ConfigurationError:
                if attempt == 4:
                    raise

    async def _backfill_reverse(self, topic: str, progress: Progress | None) -> int:
        """After a rollback from target-only: copy the events written to the target alone
        (neither dual-written, ``eb-mig-gen``, nor copies, ``eb-copy``) to the source, in
        order per partition, then let the journal replay the newer copies after them.
        Resumable like the forward backfill (it continues after the last copy it finds on the
        source; on a Kafka source it is fenced the same way)."""
        mig = (await self.control.require()).topic(topic)
        await self._await_producers(topic, mig.generation, 30.0)
        since = (mig.target_only_at or datetime.fromtimestamp(0, UTC)) - REVERSE_MARGIN
        tid = transactional_id("rollback", self.name, topic)
        writer = await open_fenced_writer(self.source, tid, topic=topic)
        copied = 0
        try:
            for p in range(mig.partitions):
                copied += await self._reverse_partition(topic, p, since, writer, progress)
        finally:
            await writer.close()
        state = await self.control.require()
        version = state.version
        state.topic(topic).reverse_pending = False
        await self.control.save(state, expected_version=version)
        return copied

    async def _reverse_partition(
        self,
        topic: str,
        p: int,
        since: datetime,
        writer: FencedWriter,
        progress: Progress | None,
    ) -> int:
        after: Offset | None = None  # the last target offset already copied back
        async for record in scan(self.source, topic, p, start=since):
            if record.headers.get(H_COPY) == b"rollback":
                after = _offset(record.headers[H_COPY_OF].decode())
        return await _copy_partition(
            self.target,
            topic,
            p,
            since if after is None else after,
            inclusive=after is None,
            keep=lambda r: H_GEN not in r.headers and H_COPY not in r.headers,
            kind="rollback",
            writer=writer,
            progress=progress,
            limit=(await self.source.describe_topic(topic)).spec.max_event_bytes,
        )

    async def drain(self, topic: str) -> int:
        """Move what waits in the journals of ``topic`` and its dead-letter topic to the
        secondary now (for when no producer runs to do it). Returns how many events moved."""
        state = await self.control.require()
        moved = 0
        for t in self._family(state, topic):
            moved += await self._drain_one(t)
        return moved

    async def _drain_one(self, topic: str) -> int:
        mig = (await self.control.require()).topic(topic)
        if mig.stage == "dual-source-primary":
            if not mig.backfill_done:
                raise ConfigurationError(f"{topic}: backfill first; the journal waits for it")
            return await replay_journal(
                self.name,
                topic,
                self.source,
                self.target,
                timeout=0.5,
                writer=self.target_writer,
                copy_timeout=COPY_TIMEOUT,
            )
        if mig.stage == "dual-target-primary":
            self._require_no_reverse_backfill(topic, mig)
            # copies journaled on the source by producers that still followed the stage
            # before (nobody else replays that journal now), then the current journal
            moved = await replay_journal(
                self.name,
                topic,
                self.source,
                self.target,
                timeout=0.5,
                writer=self.target_writer,
                copy_timeout=COPY_TIMEOUT,
            )
            return moved + await replay_journal(
                self.name,
                topic,
                self.target,
                self.source,
                timeout=0.5,
                writer=self.source_writer,
                copy_timeout=COPY_TIMEOUT,
            )
        return 0

    # verify ------------------------------------------------------------------------------
    async def verify(
        self, topic: str, *, progress: Progress | None = None, grace: float = 5.0
    ) -> VerifyReport:
        """Compare both sides per partition: counts, event ids (missing, extra), order of
        events per key, and payload hashes. The report is stored in the control record.
        The dead-letter topic is verified too (its report is in ``related`` and counts for
        ``ok``).

        Services keep publishing while this runs, so the newest copies may still be on their
        way: ids missing on one side are looked for again for up to ``grace`` seconds before
        they are reported."""
        state = await self.control.require()
        self._refuse_companion(state, topic)
        family = self._family(state, topic)
        report = await self._verify_one(topic, progress, grace)
        for t in family[1:]:
            report.related.append(await self._verify_one(t, progress, grace))
        return report

    async def _verify_one(
        self, topic: str, progress: Progress | None, grace: float
    ) -> VerifyReport:
        state = await self.control.require()
        mig = state.topic(topic)
        partitions: dict[int, PartitionDiff] = {}
        for p in range(mig.partitions):
            s_trims = await _trims(self.source, topic, p)
            t_trims = await _trims(self.target, topic, p)
            src = await _digest(self.source, topic, p, progress)
            tgt = await _digest(self.target, topic, p, progress)
            diff = _compare(src, tgt, source_trims=s_trims, target_trims=t_trims)
            deadline = time.monotonic() + grace
            while not diff.ok and time.monotonic() < deadline:
                await asyncio.sleep(0.2)  # copies in flight: look again shortly
                src2 = await _digest(self.source, topic, p, None)
                tgt2 = await _digest(self.target, topic, p, None)
                diff = _compare(
                    src,
                    tgt,
                    later_source=src2,
                    later_target=tgt2,
                    source_trims=s_trims,
                    target_trims=t_trims,
                )
            partitions[p] = diff
        report = VerifyReport(topic=topic, checked_at=datetime.now(UTC), partitions=partitions)

        def store(s: MigrationState) -> None:
            s.topic(topic).verify = report

        await self._update(store)
        return report

    # cutover -----------------------------------------------------------------------------
    async def group_topics(
        self, group: str, state: MigrationState | None = None, *, side: str | None = None
    ) -> list[str]:
        """Every topic ``group`` is known to read: as recorded at its last switch, as its
        live members report (heartbeats), and as the server of ``side`` (default: the side
        the group is on) holds positions for it. Sorted; internal topics left out."""
        state = state or await self.control.require()
        gm = state.groups.get(group)
        found: set[str] = set(gm.topics if gm is not None else [])
        for beat in (await self.control.live_members(10.0)).values():
            found.update(beat.reads.get(group, []))
        if side is None:
            side = "target" if gm is not None and gm.status == "target" else "source"
        if side == "none":  # recorded and live only
            return sorted(t for t in found if not t.startswith("__eb_migration."))
        transport = self.target if side == "target" else self.source
        try:
            info = await transport.describe_group(group)
        except EventBusError:
            info = None
        if info is not None:
            found.update(p.topic for p in info.partitions)
        return sorted(t for t in found if not t.startswith("__eb_migration."))

    async def cutover(
        self,
        group: str,
        topic: str | None = None,
        *,
        to: str = "target",
        exact: bool = False,
        wait: float = 60.0,
        dry_run: bool = False,
        ignore: Sequence[str] = (),
    ) -> GroupMigration:
        """Move ``group`` to the ``to`` side (``target``, or ``source`` to roll back) with
        every topic it reads (``topic`` and those found by :meth:`group_topics`), at once:
        pause its members, translate its positions on each topic (never ahead of what it
        finished), set them on the new side (every partition explicitly), record what to
        skip, and let members resume there.

        Refuses (ConfigurationError, before anything changes) naming every topic of the group
        that is not ready: not part of the migration, not in a dual stage, or the ``to`` side
        not its primary. A group already on ``to`` is returned unchanged if that move covered
        every topic it reads now; else refused. With ``exact`` the group must have no pending
        events after pausing. Any failure after the pause puts the group back on its old side
        (positions there were never touched). ``dry_run`` checks and returns the plan (the
        group record as it would start) without changing anything. ``ignore``: topics the
        old side still holds positions of but the group no longer reads (refused for a topic
        a live member reports reading)."""
        if to not in ("target", "source"):
            raise ConfigurationError("cutover --to-side takes target or source")
        state = await self.control.require()
        back: GroupStatus = "source" if to == "target" else "target"
        gm = state.groups.get(group)
        topics = await self._cutover_topics(group, state, topic, back, ignore)
        if gm is None and to == "source":
            # never moved: a group reads the source until a cutover moves it
            return GroupMigration(topic=topics[0], topics=topics, status="source")
        if gm is not None and gm.status == to:
            untranslated = [t for t in topics if not gm.reads(t)]
            if untranslated:
                raise ConfigurationError(
                    f"group {group} already reads from the {to} (moved with "
                    f"{', '.join(gm.topics)}), but it also reads {', '.join(untranslated)}, "
                    "whose positions that move did not translate; move the group back "
                    f"('cutover --to-side {back}') and over again to take them along"
                )
            return gm
        self._require_ready(state, group, topics, to)
        plan = GroupMigration(
            topic=topics[0],
            topics=topics,
            status="pausing-to-target" if to == "target" else "pausing-to-source",
        )
        if dry_run:
            return plan
        for t in topics:
            await self._producer_barrier(t, to, state.topic(t).generation, wait)
        await self._update(lambda s: s.groups.__setitem__(group, plan))
        try:
            positions = await self._move_positions(group, topics, to, exact, wait)
        except BaseException:
            # the old side's positions are untouched: let the members resume there
            with contextlib.suppress(Exception):
                await asyncio.shield(self._set_group_status(group, back))
            raise

        def done(s: MigrationState) -> None:
            g = s.groups[group]
            g.status = "target" if to == "target" else "source"
            g.positions = positions
            g.switched_at = datetime.now(UTC)

        try:
            state = await self._update(done)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._set_group_status(group, back))
            raise ConfigurationError(
                f"group {group}: its positions are set on the {to} but the control record "
                f"could not be saved ({exc}); it stays on the {back}. Run the cutover again"
            ) from exc
        return state.groups[group]

    async def _cutover_topics(
        self,
        group: str,
        state: MigrationState,
        topic: str | None,
        old_side: str,
        ignore: Sequence[str],
    ) -> list[str]:
        """The topics a cutover of ``group`` moves (see :meth:`cutover`)."""
        topics = await self.group_topics(group, state, side=old_side)
        if ignore:
            live = await self.group_topics(group, state, side="none")
            still = sorted(set(ignore) & set(live))
            if still:
                raise ConfigurationError(
                    f"group {group}: live members still read {', '.join(still)}; it cannot be "
                    "ignored"
                )
            topics = [t for t in topics if t not in ignore]
        if topic is not None and topic not in topics:
            topics = sorted([*topics, topic])
        if not topics:
            raise ConfigurationError(
                f"group {group} reads no migrated topic that can be seen: no live member "
                "reports it and the old side has no positions for it; name a topic"
            )
        return topics

    async def _producer_barrier(self, topic: str, to: str, generation: int, wait: float) -> None:
        """Before a group moves to ``to``: every live producer follows the current stage
        (publishes still under way under an older one included), and the journal of the
        stage before, whose copies go to ``to`` and which nobody replays any more, is
        replayed now and empty. Else every event the group finished on the old side might not
        be on the new one yet. Raises ConfigurationError (nothing changed) after ``wait`` s."""
        await self._await_producers(topic, generation, wait)
        before, after = (self.source, self.target) if to == "target" else (self.target, self.source)
        await replay_journal(
            self.name,
            topic,
            before,
            after,
            timeout=0.5,
            writer=self.target_writer if to == "target" else self.source_writer,
            copy_timeout=COPY_TIMEOUT,
        )
        await self._require_empty_journal(topic, before, wait)

    def _require_ready(self, state: MigrationState, group: str, topics: list[str], to: str) -> None:
        """Refuse, naming each, when a topic of the group cannot move to ``to`` now."""
        stage = "dual-target-primary" if to == "target" else "dual-source-primary"
        problems: list[str] = []
        for t in topics:
            mig = state.topics.get(t)
            if mig is None:
                problems.append(f"{t} (not part of the migration: 'eventbus migrate init -t {t}')")
            elif mig.stage != stage:
                problems.append(f"{t} ({mig.stage}, needs {stage})")
            elif mig.reverse_pending and to == "source":
                problems.append(f"{t} (reverse backfill pending: 'eventbus migrate backfill')")
        if problems:
            raise ConfigurationError(
                f"group {group} reads {', '.join(topics)} and moves with all of them at once, "
                f"to the {to} while the {to} is the primary ({stage}); not ready: "
                + "; ".join(problems)
                + " (a topic it no longer reads: --ignore-topic T)"
            )

    async def _update(self, change: Callable[[MigrationState], None]) -> MigrationState:
        """Apply ``change`` to the current state and save it; on a concurrent change, read
        again and apply it again (for changes that do not depend on what else changed)."""
        for attempt in range(5):
            state = await self.control.require()
            version = state.version
            change(state)
            try:
                return await self.control.save(state, expected_version=version)
            except ControlConflictError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def _set_group_status(self, group: str, status: GroupStatus) -> None:
        def change(s: MigrationState) -> None:
            if group in s.groups:
                s.groups[group].status = status

        await self._update(change)

    async def _move_positions(
        self, group: str, topics: list[str], to: str, exact: bool, wait: float
    ) -> dict[str, GroupTopic]:
        """After the members paused: translate every topic's positions and set them on the
        new side. Raises before setting anything when a check fails."""
        await self._await_paused(group, wait)
        if to == "target":
            await self._catch_up(topics)
        old_side = "source" if to == "target" else "target"
        old, new = (self.source, self.target) if to == "target" else (self.target, self.source)
        try:
            info = await old.describe_group(group)
        except GroupNotFoundError:
            info = None
        parts = {(p.topic, p.partition): p for p in info.partitions} if info else {}
        if exact:
            # pending, or (Kafka, which counts no pending) delivered past the lowest un-acked
            pending = sorted(
                {
                    f"{t}/{n}"
                    for (t, n), p in parts.items()
                    if t in topics and (p.pending or p.lowest_pending is not None)
                }
            )
            if pending:
                raise ConfigurationError(
                    f"group {group} still has pending events on the {old_side} (partitions "
                    f"{', '.join(pending)}); wait for its members to ack them (or drop --exact "
                    "for a conservative cutover)"
                )
        positions: dict[str, GroupTopic] = {}
        state = await self.control.require()
        for t in topics:
            pos = GroupTopic()
            for p in range(state.topic(t).partitions):
                start, skip, skipped, last = await self._translate(
                    old, new, t, p, parts.get((t, p))
                )
                if start is not None:
                    pos.start[p] = str(start)
                    pos.skip[p] = skip
                    pos.skipped += skipped
                if last is not None:
                    pos.boundary[p] = str(last)
            positions[t] = pos
        ranges = sum(len(r) for pos in positions.values() for r in pos.skip.values())
        if ranges > MAX_SKIP_RANGES:
            raise ConfigurationError(
                f"group {group}: the records it finished out of order on the {old_side} make "
                f"{ranges} skip ranges (at most {MAX_SKIP_RANGES} fit the control record); let "
                "its members drain what they hold and retry, or use --exact"
            )
        for t, pos in positions.items():
            # every partition gets an explicit position (a group's own start, "latest" say,
            # would skip what lands on a partition that is empty now), then the translated ones
            await new.reset_group(group, t, "earliest")
            if pos.start:
                await new.reset_group(group, t, {p: _offset(o) for p, o in pos.start.items()})
        return positions

    async def _await_paused(self, group: str, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            live = await self.control.live_members(5.0)
            busy = sorted(
                m for m, beat in live.items() if beat.groups.get(group, "paused") != "paused"
            )
            if not busy:
                return
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"members {', '.join(busy)} of group {group} did not pause within {wait}s; "
                    "are they running with the migrate:// URL? Retry, or stop them"
                )
            await asyncio.sleep(0.2)  # poll heartbeats

    async def _translate(
        self,
        old: Transport,
        new: Transport,
        topic: str,
        p: int,
        part: GroupPartition | None,
    ) -> tuple[Offset | None, list[tuple[str, str]], int, Offset | None]:
        """(start on the new side, ranges of records to skip there, how many they cover,
        last offset there) for one partition. ``start`` is None when the new side's
        partition is empty. A range holds consecutive records of the scan, so every offset
        inside it is one of them (later records land after the boundary). When the old side
        trims (retention), the new side's records older than the oldest event the old side
        still holds count as finished (compared only what both sides retain)."""
        finished = _finished(part)
        trims = await _trims(old, topic, p)  # asked first: nothing between the two scans
        done: dict[str, bool] = {}
        oldest: int | None = None
        async for record in scan(old, topic, p):
            eid = event_id(record)
            done[eid] = done.get(eid, False) or finished(record.offset)
            if oldest is None or record.timestamp_ms < oldest:
                oldest = record.timestamp_ms
        # The old side trimmed what was older than its oldest event: such records of the new
        # side were either finished or trimmed before the group got to them; either way they
        # are not the group's to do (counted as finished).
        horizon: int | None = None
        if oldest is not None and trims:
            horizon = oldest + HORIZON_SLACK_MS
        start: Offset | None = None
        last: Offset | None = None
        ranges: list[tuple[str, str]] = []
        run: list[str] = []  # [first, last] of the current run of finished records
        skipped = 0
        async for record in scan(new, topic, p):
            last = record.offset
            eid = event_id(record)
            trimmed = horizon is not None and eid not in done and record.timestamp_ms <= horizon
            if done.get(eid, False) or trimmed:
                if start is not None:
                    skipped += 1
                    if run:
                        run[1] = str(record.offset)
                    else:
                        run = [str(record.offset), str(record.offset)]
                continue
            if start is None:
                start = record.offset
            if run:
                ranges.append((run[0], run[1]))
                run = []
        if start is None and last is not None:
            start = last  # everything there is finished: start at the last one and skip it
            run, skipped = [str(last), str(last)], 1
        if run:
            ranges.append((run[0], run[1]))
        return start, ranges, skipped, last


def _blocks(mig: TopicMigration, backlog: int, readers: dict[str, Any]) -> list[str]:
    """What stands between the topic and its next stage, as ``status`` can tell cheaply
    (``advance`` checks more: live producers, copy failures, the server's groups)."""
    out: list[str] = []
    if mig.reverse_pending:
        out.append("reverse backfill pending: run backfill")
    if mig.stage == "dual-source-primary":
        if not mig.backfill_done:
            out.append("backfill not done")
        if mig.verify is None or not mig.verify.ok:
            out.append("no passing verify")
    if mig.stage.startswith("dual") and backlog:
        out.append(f"journal backlog {backlog}")
    if mig.stage == "dual-target-primary":
        behind = sorted(g for g, r in readers.items() if r["side"] != "target")
        if behind:
            out.append(f"groups not cut over: {', '.join(behind)}")
    return out


def _offset(text: str) -> Offset:
    return int(text) if text.isdigit() else text


def _copy(record: Record, kind: str) -> Outgoing:
    headers = dict(record.headers)
    if H_ID not in headers:
        headers[H_ID] = event_id(record).encode()
    headers[H_COPY] = kind.encode()
    headers[H_COPY_OF] = str(record.offset).encode()
    return Outgoing(
        value=record.value,
        key=record.key,
        headers=headers,
        timestamp_ms=record.timestamp_ms,
        partition=record.partition,
    )


class _Digest:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.keys: dict[str, list[str]] = {}
        self.hashes: dict[str, str] = {}
        self.times: dict[str, int] = {}
        self.oldest: int | None = None
        """The oldest record timestamp held (ms), None when empty."""


async def _digest(side: Transport, topic: str, p: int, progress: Progress | None) -> _Digest:
    digest = _Digest()
    async for record in scan(side, topic, p):
        eid = event_id(record)
        digest.ids.append(eid)
        if record.key is not None:
            digest.keys.setdefault(record.key.decode(errors="replace"), []).append(eid)
        digest.hashes[eid] = hashlib.sha256(record.value).hexdigest()
        digest.times[eid] = record.timestamp_ms
        if digest.oldest is None or record.timestamp_ms < digest.oldest:
            digest.oldest = record.timestamp_ms
        if progress is not None:
            progress(1)
    return digest


HORIZON_SLACK_MS = 1000
"""How much newer than a trimming side's oldest event a record only the other side holds may
be and still count as trimmed: a copy's timestamp can trail its original's by the copy's
latency, and concurrent producers interleave the two sides differently."""


def _aged(ids: list[str], times: dict[str, int], other: _Digest) -> set[str]:
    """The ids ``other`` (a side that trims) does not hold and that are no newer than its
    oldest event (plus ``HORIZON_SLACK_MS``): trimmed there, not missing."""
    if other.oldest is None:
        return set()
    held = set(other.ids)
    horizon = other.oldest + HORIZON_SLACK_MS
    return {i for i in ids if i not in held and times[i] <= horizon}


async def _trims(side: Transport, topic: str, partition: int) -> bool:
    """Whether ``side`` removed old events of ``topic``'s ``partition`` (or may have): it has
    time or size retention and, where offsets are numbers (Kafka, memory), the partition no
    longer starts at 0. (Kafka reports its default retention for every topic; without the
    second condition a target missing its oldest events would pass verify.)"""
    info = await side.describe_topic(topic)
    spec = info.spec
    if spec.retention_ms is None and spec.retention_bytes is None:
        return False
    part = next((x for x in info.partitions if x.partition == partition), None)
    first = part.first if part is not None else None
    return not isinstance(first, int) or first > 0


def _compare(
    src: _Digest,
    tgt: _Digest,
    *,
    later_source: _Digest | None = None,
    later_target: _Digest | None = None,
    source_trims: bool = False,
    target_trims: bool = False,
) -> PartitionDiff:
    """The differences between one partition's digests. With later digests, an id counts as
    missing (extra) only if the later target (source) still lacks it. A side that trims
    (retention) is compared only from the oldest event it still holds: events of the other
    side older than that are counted apart, not as missing or extra."""
    src_ids, tgt_ids = set(src.ids), set(tgt.ids)
    seen_target = set(later_target.ids) if later_target is not None else tgt_ids
    seen_source = set(later_source.ids) if later_source is not None else src_ids
    aged_src = _aged(src.ids, src.times, tgt) if target_trims else set()
    aged_tgt = _aged(tgt.ids, tgt.times, src) if source_trims else set()
    missing = [
        i for i in src.ids if i not in tgt_ids and i not in seen_target and i not in aged_src
    ]
    extra = [i for i in tgt.ids if i not in src_ids and i not in seen_source and i not in aged_tgt]
    duplicates = len(tgt.ids) - len(tgt_ids)
    reordered = []
    for key, ids in src.keys.items():
        theirs = [i for i in tgt.keys.get(key, []) if i in src_ids]
        ours = [i for i in ids if i in tgt_ids]
        if theirs != ours:
            reordered.append(key)
    mismatch = [i for i in src_ids & tgt_ids if src.hashes[i] != tgt.hashes[i]]
    return PartitionDiff(
        source_count=len(src.ids),
        target_count=len(tgt.ids),
        missing=missing[:50],
        extra=extra[:50],
        missing_count=len(missing),
        extra_count=len(extra) + duplicates,
        reordered_keys=sorted(reordered)[:50],
        payload_mismatch=sorted(mismatch)[:50],
        beyond_source_retention=len(aged_tgt),
        beyond_target_retention=len(aged_src),
    )
