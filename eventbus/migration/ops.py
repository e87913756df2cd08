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

The steps live in modules of their own, each a set of functions over a
:class:`~eventbus.migration._context.MigrationContext` (what they need of a migration, which
:class:`Migration` is; they do not import this module):
``stages`` (init, advance, rollback and their checks), ``backfill`` (backfill, reverse
backfill, follow, catch-up, drain), ``verify``, ``cutover``, ``status`` (and the look-ups it
shares), ``common`` (saving the control record, waiting for producers and the journal) and
``copying`` (reading and copying partitions in order). :class:`Migration` is the facade.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from eventbus._registry import open_transport
from eventbus._urls import redact
from eventbus.migration import backfill as _backfill
from eventbus.migration import cutover as _cutover
from eventbus.migration import stages as _stages
from eventbus.migration import status as _status
from eventbus.migration import verify as _verify
from eventbus.migration._fenced import copy_writer
from eventbus.migration.common import COPY_TIMEOUT
from eventbus.migration.control import (
    ControlStore,
    GroupMigration,
    MigrationState,
    Side,
    VerifyReport,
)
from eventbus.migration.copying import SCAN_PAGE, Progress, scan
from eventbus.migration.marks import event_id
from eventbus.transport import Transport

__all__ = ["COPY_TIMEOUT", "SCAN_PAGE", "Migration", "Progress", "event_id", "scan"]
"""``event_id``, ``scan`` and the constants stay importable from here, as before the split."""


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
            source_writer=copy_writer(source, COPY_TIMEOUT),
            target_writer=copy_writer(target, COPY_TIMEOUT),
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

    def side(self, name: Side) -> Transport:
        """The source or the target, by name."""
        return self.source if name == "source" else self.target

    async def close(self) -> None:
        for writer in self._own_writers():
            await writer.close()
        await self.source.close()
        await self.target.close()

    async def init(self, topics: list[str]) -> MigrationState:
        """Start (or extend) the migration with ``topics``, all at ``source-only``; the
        target topics are created with the source's spec (partitions, retention, limits).

        Each new topic's dead-letter topic ``<topic>.dlq`` joins it (created on the source
        first if it does not exist yet): it is created on both sides, dual-written,
        backfilled and verified with its topic, and moves stage with it."""
        return await _stages.init(self, topics)

    async def status(self) -> dict[str, Any]:
        """Per topic: stage, journal backlog, last verify, live producers, every group seen
        reading it (recorded, in heartbeats, or with positions on the source) with its side
        and its backlog on both sides, and what blocks the next stage. Per group: its side
        and topics."""
        return await _status.status(self)

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
        return await _stages.advance(
            self,
            topic,
            wait=wait,
            abandon=abandon,
            dry_run=dry_run,
            ignore_legacy_writers=ignore_legacy_writers,
        )

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
        return await _stages.rollback(self, topic, wait=wait, dry_run=dry_run)

    async def backfill(self, topic: str, *, progress: Progress | None = None) -> int:
        """Backfill ``topic`` and then its dead-letter topic (see :meth:`_backfill_one`).
        Returns how many events were copied."""
        return await _backfill.backfill(self, topic, progress=progress)

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
        return await _backfill.follow(self, topic, interval=interval, stop=stop, progress=progress)

    async def drain(self, topic: str) -> int:
        """Move what waits in the journals of ``topic`` and its dead-letter topic to the
        secondary now (for when no producer runs to do it). Returns how many events moved."""
        return await _backfill.drain(self, topic)

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
        return await _verify.verify(self, topic, progress=progress, grace=grace)

    async def groups_reading(self, topic: str) -> dict[str, str]:
        """Groups seen reading ``topic`` and where they were seen: on the source's server
        (positions for the topic) or in a live member's heartbeat."""
        return await _status.groups_reading(self, topic)

    async def group_topics(
        self, group: str, state: MigrationState | None = None, *, side: str | None = None
    ) -> list[str]:
        """Every topic ``group`` is known to read: as recorded at its last switch, as its
        live members report (heartbeats), and as the server of ``side`` (default: the side
        the group is on) holds positions for it. Sorted; internal topics left out."""
        return await _status.group_topics(self, group, state, side=side)

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
        return await _cutover.cutover(
            self, group, topic, to=to, exact=exact, wait=wait, dry_run=dry_run, ignore=ignore
        )
