"""The dual-write journal: copies that could not go to the secondary wait in a topic on the
primary (``__eb_migration.NAME.journal.TOPIC``) and are replayed in order by a group of
replayers (``__eb_migration.NAME.replayer``): :class:`JournalReplayer` (one member),
:func:`replay_journal` (drain it now), :func:`journal_backlog` (what still waits).

The replayer writes to the secondary through a fenced writer per journal partition (on Kafka:
transactions, see ``_fenced``): a failed batch leaves nothing behind that could land later, and
no gap; the replayer keeps it and tries it again before anything newer, after a check of what
the secondary holds. What a member of the migration transport journals, and when it writes
copies directly again, is in ``journaling``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import UTC, datetime

from eventbus.errors import EventBusError, TopicNotFoundError
from eventbus.migration._fenced import FencedWriter, open_fenced_writer, transactional_id
from eventbus.migration.control import now_ms
from eventbus.migration.marks import H_MAYBE
from eventbus.transport import (
    ConsumerOptions,
    Offset,
    Outgoing,
    Record,
    Transport,
    TransportConsumer,
    TrimsFinished,
    offset_key,
)

__all__ = [
    "JOURNAL_LIMIT",
    "JournalFullError",
    "JournalReplayer",
    "journal_backlog",
    "journal_topic",
    "replay_journal",
    "replayer_group",
]

log = logging.getLogger("eventbus.migration")

REPLAYER_SESSION = 120.0
"""Seconds a journal replayer may retry a failed batch in place before it leaves the group
(and how long a crashed replayer's partitions wait for a new owner)."""

CHECK_DELAY = 2.0
"""Seconds after a copy write failed before the secondary is checked for what it may have
written anyway: a request already on the wire when the client gave up can still be appended.
(Records still queued in the client expire with the write, see ``copy_writer``.)"""

TRIM_EVERY = 5.0
"""Seconds between deletions of replayed copies from a journal (where the primary can)."""


def check_after(delay: float = CHECK_DELAY) -> bytes:
    """The ``H_MAYBE`` value: when (epoch ms) the secondary may be checked for the copy."""
    return str(now_ms() + int(delay * 1000)).encode()


def journal_topic(name: str, topic: str) -> str:
    """The journal of secondary writes for ``topic``; it lives on the primary side."""
    return f"__eb_migration.{name}.journal.{topic}"


def replayer_group(name: str) -> str:
    return f"__eb_migration.{name}.replayer"


JOURNAL_LIMIT = 1_000_000
"""Copies that may wait in a topic's journal before publishes of the topic are refused."""


class JournalFullError(EventBusError):
    """The dual-write journal of a topic is full: the secondary has been away too long."""


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
