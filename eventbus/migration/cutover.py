"""Cutover of a consumer group, with every topic it reads, to the other side: pause its
members, translate its positions by event id (never ahead of what it finished), set them on
the new side, record what to skip there, and let the members resume; on any failure after
the pause, back to the old side, whose positions were never touched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from eventbus.errors import ConfigurationError, GroupNotFoundError
from eventbus.migration._context import MigrationContext
from eventbus.migration.backfill import catch_up
from eventbus.migration.common import (
    COPY_TIMEOUT,
    await_members,
    await_producers,
    require_empty_journal,
    set_group_status,
    update,
)
from eventbus.migration.control import (
    MAX_SKIP_RANGES,
    GroupMigration,
    GroupStatus,
    GroupTopic,
    Heartbeat,
    MigrationState,
)
from eventbus.migration.copying import offset_from, scan
from eventbus.migration.journal import replay_journal
from eventbus.migration.marks import event_id
from eventbus.migration.status import group_topics
from eventbus.migration.verify import HORIZON_SLACK_MS, trims
from eventbus.transport import GroupPartition, Offset, Transport, offset_key


async def cutover(
    m: MigrationContext,
    group: str,
    topic: str | None = None,
    *,
    to: str = "target",
    exact: bool = False,
    wait: float = 60.0,
    dry_run: bool = False,
    ignore: Sequence[str] = (),
) -> GroupMigration:
    """The work of :meth:`Migration.cutover` (documented there)."""
    if to not in ("target", "source"):
        raise ConfigurationError("cutover --to-side takes target or source")
    state = await m.control.require()
    back: GroupStatus = "source" if to == "target" else "target"
    gm = state.groups.get(group)
    topics = await cutover_topics(m, group, state, topic, back, ignore)
    if gm is None and to == "source":
        # never moved: a group reads the source until a cutover moves it
        return GroupMigration(topic=topics[0], topics=topics, status="source")
    if gm is not None and gm.status == to:
        _require_translated(gm, group, topics, to, back)
        return gm
    require_ready(m, state, group, topics, to)
    plan = GroupMigration(
        topic=topics[0],
        topics=topics,
        status="pausing-to-target" if to == "target" else "pausing-to-source",
    )
    if dry_run:
        return plan
    for t in topics:
        await producer_barrier(m, t, to, state.topic(t).generation, wait)
    await update(m, lambda s: s.groups.__setitem__(group, plan))
    try:
        positions = await move_positions(m, group, topics, to, exact, wait)
    except BaseException:
        # the old side's positions are untouched: let the members resume there
        with contextlib.suppress(Exception):
            await asyncio.shield(set_group_status(m, group, back))
        raise
    return await _record_move(m, group, positions, to, back)


def _require_translated(
    gm: GroupMigration, group: str, topics: list[str], to: str, back: str
) -> None:
    """A group already on ``to`` must have moved with every topic it reads now."""
    untranslated = [t for t in topics if not gm.reads(t)]
    if untranslated:
        raise ConfigurationError(
            f"group {group} already reads from the {to} (moved with "
            f"{', '.join(gm.topics)}), but it also reads {', '.join(untranslated)}, "
            "whose positions that move did not translate; move the group back "
            f"('cutover --to-side {back}') and over again to take them along"
        )


async def _record_move(
    m: MigrationContext, group: str, positions: dict[str, GroupTopic], to: str, back: GroupStatus
) -> GroupMigration:
    """Save the move in the control record (the members resume on ``to``); if it cannot be
    saved, the group stays on ``back``."""

    def done(s: MigrationState) -> None:
        g = s.groups[group]
        g.status = "target" if to == "target" else "source"
        g.positions = positions
        g.switched_at = datetime.now(UTC)

    try:
        state = await update(m, done)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await asyncio.shield(set_group_status(m, group, back))
        raise ConfigurationError(
            f"group {group}: its positions are set on the {to} but the control record "
            f"could not be saved ({exc}); it stays on the {back}. Run the cutover again"
        ) from exc
    return state.groups[group]


async def cutover_topics(
    m: MigrationContext,
    group: str,
    state: MigrationState,
    topic: str | None,
    old_side: str,
    ignore: Sequence[str],
) -> list[str]:
    """The topics a cutover of ``group`` moves (see :meth:`cutover`)."""
    topics = await group_topics(m, group, state, side=old_side)
    if ignore:
        live = await group_topics(m, group, state, side="none")
        still = sorted(set(ignore) & set(live))
        if still:
            raise ConfigurationError(
                f"group {group}: live members still read {', '.join(still)}; it cannot be ignored"
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


async def producer_barrier(
    m: MigrationContext, topic: str, to: str, generation: int, wait: float
) -> None:
    """Before a group moves to ``to``: every live producer follows the current stage
    (publishes still under way under an older one included), and the journal of the
    stage before, whose copies go to ``to`` and which nobody replays any more, is
    replayed now and empty. Else every event the group finished on the old side might not
    be on the new one yet. Raises ConfigurationError (nothing changed) after ``wait`` s."""
    await await_producers(m, topic, generation, wait)
    before, after = (m.source, m.target) if to == "target" else (m.target, m.source)
    await replay_journal(
        m.name,
        topic,
        before,
        after,
        timeout=0.5,
        writer=m.target_writer if to == "target" else m.source_writer,
        copy_timeout=COPY_TIMEOUT,
    )
    await require_empty_journal(m, topic, before, wait)


def require_ready(
    m: MigrationContext, state: MigrationState, group: str, topics: list[str], to: str
) -> None:
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


async def move_positions(
    m: MigrationContext, group: str, topics: list[str], to: str, exact: bool, wait: float
) -> dict[str, GroupTopic]:
    """After the members paused: translate every topic's positions and set them on the
    new side. Raises before setting anything when a check fails."""
    await await_paused(m, group, wait)
    if to == "target":
        await catch_up(m, topics)
    old_side = "source" if to == "target" else "target"
    old, new = (m.source, m.target) if to == "target" else (m.target, m.source)
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
    state = await m.control.require()
    for t in topics:
        pos = GroupTopic()
        for p in range(state.topic(t).partitions):
            start, skip, skipped, last = await translate(m, old, new, t, p, parts.get((t, p)))
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
            await new.reset_group(group, t, {p: offset_from(o) for p, o in pos.start.items()})
    return positions


async def await_paused(m: MigrationContext, group: str, wait: float) -> None:
    """Wait until every live member of ``group`` reports it paused."""

    def busy(live: dict[str, Heartbeat]) -> list[str]:
        return [n for n, beat in live.items() if beat.groups.get(group, "paused") != "paused"]

    await await_members(
        m,
        busy,
        wait,
        lambda names: (
            f"members {', '.join(names)} of group {group} did not pause within "
            f"{wait}s; are they running with the migrate:// URL? Retry, or stop them"
        ),
        window=5.0,
    )


async def translate(
    m: MigrationContext,
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
    finished = finished_on(part)
    old_trims = await trims(old, topic, p)  # asked first: nothing between the two scans
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
    if oldest is not None and old_trims:
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


def finished_on(part: GroupPartition | None) -> Callable[[Offset], bool]:
    """Whether the group is done with an offset on the side ``part`` describes."""
    if part is None or part.delivered is None:
        return lambda offset: False
    delivered = offset_key(part.delivered)
    low = offset_key(part.lowest_pending) if part.lowest_pending is not None else None
    return lambda o: offset_key(o) <= delivered and (low is None or offset_key(o) < low)
