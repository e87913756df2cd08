"""Moving topics between stages: ``init``, ``advance`` and ``rollback``, and the checks
that stand before each move (live producers, backfill, verification, journal, groups, legacy
writers). A topic's dead-letter topic moves with it, in the same write of the control
record."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from eventbus.errors import ConfigurationError, TopicExistsError
from eventbus.migration._context import MigrationContext
from eventbus.migration.backfill import catch_up, finish_reverse_backfill
from eventbus.migration.common import (
    await_producers,
    family,
    refuse_companion,
    require_empty_journal,
)
from eventbus.migration.control import STAGES, MigrationState, Stage, TopicMigration
from eventbus.migration.copying import pages
from eventbus.migration.marks import (
    DLQ_SUFFIX,
    H_COPY,
    H_GEN,
    MIGRATION_ROOM,
    dead_letter_topic,
    event_id,
)
from eventbus.migration.status import groups_reading
from eventbus.topics import TopicSpec

LEGACY_QUIET = 60.0
"""Seconds without writes from services outside eventbus that advancing a topic with a
stream layout to target-only wants (see ``Migration.advance``)."""


async def init(m: MigrationContext, topics: list[str]) -> MigrationState:
    """The work of :meth:`Migration.init` (documented there)."""
    await m.control.ensure()
    state = await m.control.load()
    version = state.version if state is not None else None
    state = state or MigrationState(name=m.name)
    state.source, state.target = m.source_url, m.target_url
    wanted: list[str] = []
    for topic in topics:
        wanted.append(topic)
        dlq = dead_letter_topic(topic)
        if topic in state.topics or topic.endswith(DLQ_SUFFIX) or dlq in topics:
            continue
        with contextlib.suppress(TopicExistsError):
            await m.source.create_topic(TopicSpec(name=dlq))
        wanted.append(dlq)
    for topic in wanted:
        spec = (await m.source.describe_topic(topic)).spec
        # room for the migration's headers: every copy of an event that fits the source
        # fits the target
        roomy = spec.model_copy(update={"max_event_bytes": spec.max_event_bytes + MIGRATION_ROOM})
        with contextlib.suppress(TopicExistsError):
            await m.target.create_topic(roomy)
        target_spec = (await m.target.describe_topic(topic)).spec
        if target_spec.partitions != spec.partitions:
            raise ConfigurationError(
                f"topic {topic!r} has {spec.partitions} partitions on the source but "
                f"{target_spec.partitions} on the target; keys would land elsewhere. "
                "Make them equal first"
            )
        state.topics.setdefault(topic, TopicMigration(partitions=spec.partitions))
    return await m.control.save(state, expected_version=version)


async def advance(
    m: MigrationContext,
    topic: str,
    *,
    wait: float = 30.0,
    abandon: Sequence[str] = (),
    dry_run: bool = False,
    ignore_legacy_writers: bool = False,
) -> MigrationState:
    """The work of :meth:`Migration.advance` (documented there)."""
    state = await m.control.require()
    refuse_companion(state, topic)
    mig = state.topic(topic)
    index = STAGES.index(mig.stage)
    if index == len(STAGES) - 1:
        raise ConfigurationError(f"{topic} is already {mig.stage}; nothing to advance")
    nxt = STAGES[index + 1]
    members = family(state, topic)
    if nxt == "target-only":
        for t in members:
            await require_no_group_left(m, state, t, abandon)
            if not ignore_legacy_writers:
                await require_legacy_writers_gone(m, t)
    if dry_run:
        return state
    for t in members:
        await await_producers(m, t, state.topic(t).generation, wait)
    for t in members:
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
            await require_verify_after_copy_failures(m, t, mig.verify.checked_at)
            await require_empty_journal(m, t, m.source)
        if nxt == "target-only":
            state, mig = await finish_reverse_backfill(m, t, state, mig)
            await require_groups_on(m, state, t, "target")
            await require_empty_journal(m, t, m.target)
            await catch_up(m, [t])  # the last of what legacy producers wrote
            state = await m.control.require()
    return await set_stage(m, state, topic, nxt)


async def rollback(
    m: MigrationContext, topic: str, *, wait: float = 30.0, dry_run: bool = False
) -> MigrationState:
    """The work of :meth:`Migration.rollback` (documented there)."""
    state = await m.control.require()
    refuse_companion(state, topic)
    mig = state.topic(topic)
    index = STAGES.index(mig.stage)
    if index == 0:
        raise ConfigurationError(f"{topic} is already source-only; nothing to roll back")
    members = family(state, topic)
    if dry_run:
        if STAGES[index - 1] == "source-only":
            for t in members:
                await require_groups_on(m, state, t, "source")
        return state
    for t in members:
        await await_producers(m, t, state.topic(t).generation, wait)
    prev = STAGES[index - 1]
    for t in members:
        mig = state.topic(t)
        if prev == "source-only":
            await require_groups_on(m, state, t, "source")
        if prev == "dual-source-primary":
            state, mig = await finish_reverse_backfill(m, t, state, mig)
            await require_empty_journal(m, t, m.target)
    return await set_stage(m, state, topic, prev)


async def set_stage(
    m: MigrationContext, state: MigrationState, topic: str, stage: Stage
) -> MigrationState:
    """Move ``topic`` and its dead-letter topic (see ``_family``) to ``stage``, in one
    write of the control record."""
    version = state.version
    for t in family(state, topic):
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
    return await m.control.save(state, expected_version=version)


async def require_verify_after_copy_failures(
    m: MigrationContext, topic: str, verified: datetime
) -> None:
    """Refuse when a member reported (in the last hour of heartbeats) a copy of ``topic``
    that failed after ``verified`` and was journaled after the fact."""
    late = sorted(
        (beat.copy_failures[topic], member)
        for member, beat in (await m.control.live_members(3600.0)).items()
        if topic in beat.copy_failures and beat.copy_failures[topic] > verified
    )
    if late:
        at, member = late[-1]
        raise ConfigurationError(
            f"{topic}: a copy failed at {at:%H:%M:%S} UTC on {member}, after the last "
            f"verification ({verified:%H:%M:%S} UTC); wait for the journal to drain, then "
            "run 'eventbus migrate verify' again"
        )


async def require_no_group_left(
    m: MigrationContext, state: MigrationState, topic: str, abandon: Sequence[str]
) -> None:
    """Refuse target-only while a group that reads ``topic`` was not cut over."""
    left = {
        group: where
        for group, where in (await groups_reading(m, topic)).items()
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


async def require_groups_on(
    m: MigrationContext, state: MigrationState, topic: str, side: str
) -> None:
    wrong = sorted(g for g, gm in state.groups.items() if gm.reads(topic) and gm.status != side)
    if wrong:
        raise ConfigurationError(
            f"{topic}: groups {', '.join(wrong)} are not on the {side}; move them with "
            f"'eventbus migrate cutover --group G --to {side}' first"
        )


async def require_legacy_writers_gone(m: MigrationContext, topic: str) -> None:
    """To target-only, for a topic with a stream layout (a stream shared with services
    outside eventbus): refuse while such a service still writes to the source, that is
    while one of the last ``LEGACY_QUIET`` seconds' entries lacks the migration's marks
    (after target-only nobody would copy what it writes)."""
    if (await m.source.describe_topic(topic)).spec.layout is None:
        return
    since = datetime.now(UTC) - timedelta(seconds=LEGACY_QUIET)
    info = await m.source.describe_topic(topic)
    for part in info.partitions:
        async with contextlib.aclosing(
            pages(m.source, topic, part.partition, since, True)
        ) as reading:
            async for page in reading:
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
