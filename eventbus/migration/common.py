"""What the operator's steps share: saving the control record with retries, waiting for
producers and for an empty journal, and the family of a topic (it and its dead-letter topic,
which move stage together). Functions over a
:class:`~eventbus.migration._context.MigrationContext` (the facade ``Migration`` is one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from eventbus.errors import ConfigurationError
from eventbus.migration._context import MigrationContext
from eventbus.migration.control import (
    ControlConflictError,
    GroupStatus,
    Heartbeat,
    MigrationState,
    TopicMigration,
)
from eventbus.migration.journal import journal_backlog
from eventbus.migration.marks import DLQ_SUFFIX, dead_letter_topic
from eventbus.transport import Transport

COPY_TIMEOUT = 5.0
"""Seconds a copy write of ``drain`` may take (its records expire then, see ``copy_writer``)."""


async def update(m: MigrationContext, change: Callable[[MigrationState], None]) -> MigrationState:
    """Apply ``change`` to the current state and save it; on a concurrent change, read
    again and apply it again (for changes that do not depend on what else changed)."""
    for attempt in range(5):
        state = await m.control.require()
        version = state.version
        change(state)
        try:
            return await m.control.save(state, expected_version=version)
        except ControlConflictError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


async def set_group_status(m: MigrationContext, group: str, status: GroupStatus) -> None:
    def change(s: MigrationState) -> None:
        if group in s.groups:
            s.groups[group].status = status

    await update(m, change)


async def await_members(
    m: MigrationContext,
    lagging: Callable[[dict[str, Heartbeat]], list[str]],
    wait: float,
    refusal: Callable[[list[str]], str],
    *,
    window: float,
) -> None:
    """Poll the members' heartbeats (those seen in the last ``window`` s) until ``lagging``
    names none of them; after ``wait`` s raise ConfigurationError with ``refusal(names)``."""
    deadline = time.monotonic() + wait
    while True:
        behind = sorted(lagging(await m.control.live_members(window)))
        if not behind:
            return
        if time.monotonic() > deadline:
            raise ConfigurationError(refusal(behind))
        await asyncio.sleep(0.2)  # poll heartbeats


async def await_producers(m: MigrationContext, topic: str, generation: int, wait: float) -> None:
    """Wait until every live producer of ``topic`` reported ``generation`` (or later) in a
    heartbeat sent after the last change of the control record."""
    changed = (await m.control.require()).updated

    def behind(live: dict[str, Heartbeat]) -> list[str]:
        return [
            name
            for name, beat in live.items()
            if beat.role == "producer"
            and topic in beat.topics
            and (beat.topics[topic] < generation or beat.time < changed)
        ]

    await await_members(
        m,
        behind,
        wait,
        lambda names: (
            f"{topic}: producers {', '.join(names)} have not acknowledged the "
            "current stage yet; check they run with the migrate:// URL, then retry"
        ),
        window=10.0,
    )


async def require_empty_journal(
    m: MigrationContext, topic: str, primary: Transport, wait: float = 30.0
) -> None:
    """Wait (up to ``wait`` s) until no copy of ``topic`` waits in the journal."""
    deadline = time.monotonic() + wait
    while backlog := await journal_backlog(m.name, topic, primary):
        if time.monotonic() > deadline:
            raise ConfigurationError(
                f"{topic}: {backlog} dual-write copies still wait in the journal; wait "
                "until 'eventbus migrate status' shows a backlog of 0 (is the secondary "
                "up? is a producer or 'eventbus migrate drain' replaying it?)"
            )
        await asyncio.sleep(0.2)  # poll the backlog


def family(state: MigrationState, topic: str) -> list[str]:
    """``topic`` and its dead-letter topic when that is migrated along (same stage)."""
    dlq = dead_letter_topic(topic)
    mig, companion = state.topics.get(topic), state.topics.get(dlq)
    if mig is None or companion is None or companion.stage != mig.stage:
        return [topic]
    return [topic, dlq]


def refuse_companion(state: MigrationState, topic: str) -> None:
    if topic.endswith(DLQ_SUFFIX):
        parent = topic[: -len(DLQ_SUFFIX)]
        if parent in state.topics and family(state, parent) == [parent, topic]:
            raise ConfigurationError(
                f"{topic} is the dead-letter topic of {parent} and moves with it: run the "
                f"command for {parent}"
            )


def require_no_reverse_backfill(topic: str, mig: TopicMigration) -> None:
    if mig.reverse_pending:
        raise ConfigurationError(
            f"{topic}: the events written while it was target-only are not on the source "
            "yet, and copies to the source wait behind them in the journal; run "
            "'eventbus migrate backfill' (it copies them back) first"
        )
