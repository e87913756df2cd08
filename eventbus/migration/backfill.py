"""Copying history: the backfill (source to target, resumable, fenced on Kafka), its reverse
after a rollback from target-only, ``follow`` (what services outside eventbus keep writing to
the source) and a cutover's catch-up, and ``drain`` (the journal, now)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from eventbus.errors import ConfigurationError, EventBusError, FencedError
from eventbus.migration._context import MigrationContext
from eventbus.migration._fenced import FencedWriter, open_fenced_writer, transactional_id
from eventbus.migration.common import (
    COPY_TIMEOUT,
    await_producers,
    family,
    refuse_companion,
    require_no_reverse_backfill,
)
from eventbus.migration.control import MigrationState, TopicMigration
from eventbus.migration.copying import (
    SCAN_PAGE,
    Progress,
    copy_partition,
    offset_from,
    scan,
)
from eventbus.migration.journal import replay_journal
from eventbus.migration.marks import H_COPY, H_COPY_OF, H_GEN
from eventbus.transport import Offset, offset_key

REVERSE_MARGIN = timedelta(seconds=60)
"""How far before ``target_only_at`` the reverse backfill starts reading (producer clocks)."""

CHECKPOINT_EVERY = 1.0
"""Seconds between backfill checkpoints (a lower bound for the resume scan, so rarer is safe)."""


log = logging.getLogger("eventbus.migration")


async def backfill(m: MigrationContext, topic: str, *, progress: Progress | None = None) -> int:
    """The work of :meth:`Migration.backfill` (documented there)."""
    state = await m.control.require()
    refuse_companion(state, topic)
    copied = 0
    for t in family(state, topic):
        copied += await backfill_one(m, t, progress=progress)
    return copied


async def backfill_one(m: MigrationContext, topic: str, *, progress: Progress | None = None) -> int:
    """Copy the source's history (events not written by dual-write) into the target in
    order per partition, keys, ids, headers and timestamps kept. Resumable: it continues
    after the last copy found on the target, so running it again after a crash leaves
    each event on the target exactly once. On Kafka each batch is one transaction, and a
    new run first fences every earlier run of the same topic (see ``_fenced``),
    so copies a killed or stalled run still had on their way never show up twice.
    Returns how many events it copied."""
    state = await m.control.require()
    mig = state.topic(topic)
    if mig.stage == "dual-target-primary" and mig.reverse_pending:
        return await backfill_reverse(m, topic, progress)
    if mig.stage != "dual-source-primary":
        raise ConfigurationError(
            f"{topic} is {mig.stage}; backfill runs in dual-source-primary (advance first), "
            "or after a rollback from target-only"
        )
    await await_producers(m, topic, mig.generation, 30.0)
    # fence earlier runs before the resume scan reads the target
    tid = transactional_id("backfill", m.name, topic)
    writer = await open_fenced_writer(m.target, tid, topic=topic)
    copied = 0
    try:
        mig = (await m.control.require()).topic(topic)
        for p in range(mig.partitions):
            copied += await backfill_partition(m, topic, p, mig, writer, progress)
    finally:
        await writer.close()
    state = await m.control.require()
    version = state.version
    done = state.topic(topic)
    done.backfill_done = True
    done.backfilled += copied
    await m.control.save(state, expected_version=version)
    # the dual-written tail waited in the journal: the producers' replayers move it now
    # ('eventbus migrate drain' moves it when no producer is running)
    return copied


async def follow(
    m: MigrationContext,
    topic: str,
    *,
    interval: float = 1.0,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
) -> int:
    """The work of :meth:`Migration.follow` (documented there)."""
    copied = 0
    rounds = 0
    reached: dict[int, Offset] = {}
    writer: FencedWriter | None = None  # kept across rounds: each opening fences others
    try:
        while stop is None or not stop.is_set():
            mig = (await m.control.require()).topic(topic)
            if mig.stage == "dual-source-primary" and not mig.backfill_done:
                copied += await backfill(m, topic, progress=progress)
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
                    tid = transactional_id("backfill", m.name, topic)
                    writer = await open_fenced_writer(m.target, tid, topic=topic)
                copied += await follow_round(m, topic, reached, progress, writer=writer)
            except EventBusError as exc:  # fenced by a cutover's catch-up, a side away
                log.warning("migration %s: follow of %s: %s; again", m.name, topic, exc)
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


async def follow_round(
    m: MigrationContext,
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
    mig = (await m.control.require()).topic(topic)
    limit = (await m.target.describe_topic(topic)).spec.max_event_bytes
    for p in range(mig.partitions):
        checkpoint = mig.backfill_checkpoint.get(p)
        if p in reached and (
            checkpoint is None or offset_key(offset_from(checkpoint[0])) <= offset_key(reached[p])
        ):
            after: Offset | None = reached[p]
        else:
            after = await resume_point(m, topic, p, mig)

        async def written(source: Offset, target: Offset, p: int = p) -> None:
            # only a catch-up writes the control record: a follow's writes would
            # race the operator's commands, which expect the version they read
            if catch_up:
                await save_checkpoint(m, topic, p, source, target)

        copied += await copy_partition(
            m.source,
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


async def catch_up(m: MigrationContext, topics: Sequence[str]) -> None:
    """Before a group's positions are translated to the target (its members paused):
    copy what services outside eventbus wrote to each topic that declares a stream
    layout (the shared streams :meth:`follow` serves), so every event the group handled
    on the source is on the target and is not handled there again."""
    state = await m.control.require()
    for t in topics:
        if (await m.source.describe_topic(t)).spec.layout is None:
            continue
        mig = state.topic(t)
        if not mig.stage.startswith("dual") or mig.reverse_pending:
            continue
        for attempt in range(5):  # a running follow may fence this writer once
            tid = transactional_id("backfill", m.name, t)
            writer = await open_fenced_writer(m.target, tid, topic=t)
            try:
                await follow_round(m, t, {}, None, writer=writer, catch_up=True)
                break
            except FencedError:
                if attempt == 4:
                    raise
            finally:
                await writer.close()


async def resume_point(
    m: MigrationContext, topic: str, p: int, mig: TopicMigration
) -> Offset | None:
    """The last source offset already copied to the target (None: nothing yet)."""
    checkpoint = mig.backfill_checkpoint.get(p)
    last: Offset | None = None
    start: Offset | None = None
    if checkpoint is not None:
        last = offset_from(checkpoint[0])
        start = offset_from(checkpoint[1])
    inclusive = True
    while True:
        batch = await m.target.read(topic, p, start, inclusive=inclusive, limit=SCAN_PAGE)
        for record in batch:
            if record.headers.get(H_COPY) == b"backfill":
                last = offset_from(record.headers[H_COPY_OF].decode())
        if len(batch) < SCAN_PAGE:
            return last
        start, inclusive = batch[-1].offset, False


async def backfill_partition(
    m: MigrationContext,
    topic: str,
    p: int,
    mig: TopicMigration,
    writer: FencedWriter,
    progress: Progress | None,
) -> int:
    after = await resume_point(m, topic, p, mig)
    last_saved = time.monotonic()

    async def written(source: Offset, target: Offset) -> None:
        nonlocal last_saved
        if time.monotonic() - last_saved >= CHECKPOINT_EVERY:
            await save_checkpoint(m, topic, p, source, target)
            last_saved = time.monotonic()

    return await copy_partition(
        m.source,
        topic,
        p,
        after,
        inclusive=after is None,
        keep=lambda r: H_GEN not in r.headers,
        kind="backfill",
        writer=writer,
        progress=progress,
        written=written,
        limit=(await m.target.describe_topic(topic)).spec.max_event_bytes,
    )


async def save_checkpoint(
    m: MigrationContext, topic: str, p: int, source: Offset, target: Offset
) -> None:
    """Record a lower bound for the resume scan. A fenced earlier run may still save one
    of its own meanwhile (older, so also a lower bound): on a version clash, read again
    and retry rather than fail the backfill."""
    for attempt in range(5):
        state = await m.control.require()
        version = state.version
        state.topic(topic).backfill_checkpoint[p] = (str(source), str(target))
        try:
            await m.control.save(state, expected_version=version)
            return
        except ConfigurationError:
            if attempt == 4:
                raise


async def backfill_reverse(m: MigrationContext, topic: str, progress: Progress | None) -> int:
    """After a rollback from target-only: copy the events written to the target alone
    (neither dual-written, ``eb-mig-gen``, nor copies, ``eb-copy``) to the source, in
    order per partition, then let the journal replay the newer copies after them.
    Resumable like the forward backfill (it continues after the last copy it finds on the
    source; on a Kafka source it is fenced the same way)."""
    mig = (await m.control.require()).topic(topic)
    await await_producers(m, topic, mig.generation, 30.0)
    since = (mig.target_only_at or datetime.fromtimestamp(0, UTC)) - REVERSE_MARGIN
    tid = transactional_id("rollback", m.name, topic)
    writer = await open_fenced_writer(m.source, tid, topic=topic)
    copied = 0
    try:
        for p in range(mig.partitions):
            copied += await reverse_partition(m, topic, p, since, writer, progress)
    finally:
        await writer.close()
    state = await m.control.require()
    version = state.version
    state.topic(topic).reverse_pending = False
    await m.control.save(state, expected_version=version)
    return copied


async def reverse_partition(
    m: MigrationContext,
    topic: str,
    p: int,
    since: datetime,
    writer: FencedWriter,
    progress: Progress | None,
) -> int:
    after: Offset | None = None  # the last target offset already copied back
    async for record in scan(m.source, topic, p, start=since):
        if record.headers.get(H_COPY) == b"rollback":
            after = offset_from(record.headers[H_COPY_OF].decode())
    return await copy_partition(
        m.target,
        topic,
        p,
        since if after is None else after,
        inclusive=after is None,
        keep=lambda r: H_GEN not in r.headers and H_COPY not in r.headers,
        kind="rollback",
        writer=writer,
        progress=progress,
        limit=(await m.source.describe_topic(topic)).spec.max_event_bytes,
    )


async def drain(m: MigrationContext, topic: str) -> int:
    """The work of :meth:`Migration.drain` (documented there)."""
    state = await m.control.require()
    moved = 0
    for t in family(state, topic):
        moved += await drain_one(m, t)
    return moved


async def drain_one(m: MigrationContext, topic: str) -> int:
    mig = (await m.control.require()).topic(topic)
    if mig.stage == "dual-source-primary":
        if not mig.backfill_done:
            raise ConfigurationError(f"{topic}: backfill first; the journal waits for it")
        return await replay_journal(
            m.name,
            topic,
            m.source,
            m.target,
            timeout=0.5,
            writer=m.target_writer,
            copy_timeout=COPY_TIMEOUT,
        )
    if mig.stage == "dual-target-primary":
        require_no_reverse_backfill(topic, mig)
        # copies journaled on the source by producers that still followed the stage
        # before (nobody else replays that journal now), then the current journal
        moved = await replay_journal(
            m.name,
            topic,
            m.source,
            m.target,
            timeout=0.5,
            writer=m.target_writer,
            copy_timeout=COPY_TIMEOUT,
        )
        return moved + await replay_journal(
            m.name,
            topic,
            m.target,
            m.source,
            timeout=0.5,
            writer=m.source_writer,
            copy_timeout=COPY_TIMEOUT,
        )
    return 0


async def finish_reverse_backfill(
    m: MigrationContext, topic: str, state: MigrationState, mig: TopicMigration
) -> tuple[MigrationState, TopicMigration]:
    """Run the reverse backfill if a rollback from target-only left one pending (the
    operator should have run ``backfill``; moving on without it would leave those events
    off the source, and hold the journal). Returns the state read again."""
    if not mig.reverse_pending:
        return state, mig
    await backfill_reverse(m, topic, None)
    state = await m.control.require()
    return state, state.topic(topic)
