"""What ``status`` shows, and the look-ups it shares with ``advance`` and ``cutover``: the
groups seen reading a topic, the topics a group reads, a group's backlog on one side.
Nothing here changes anything."""

from __future__ import annotations

from typing import Any

from eventbus.errors import EventBusError
from eventbus.migration._context import MigrationContext
from eventbus.migration.control import MigrationState, TopicMigration
from eventbus.migration.journal import journal_backlog
from eventbus.transport import TopicGroups, Transport


async def status(m: MigrationContext) -> dict[str, Any]:
    """The work of :meth:`Migration.status` (documented there)."""
    state = await m.control.require()
    live = await m.control.live_members(10.0)
    topics: dict[str, Any] = {}
    for name, mig in state.topics.items():
        primary = m.side(mig.primary) if mig.dual else m.source
        backlog = await journal_backlog(m.name, name, primary)
        seen = await groups_reading(m, name)
        seen.update({g: "recorded" for g, gm in state.groups.items() if gm.reads(name)})
        readers: dict[str, Any] = {}
        for group in sorted(seen):
            gm = state.groups.get(group)
            readers[group] = {
                "side": gm.status if gm is not None and gm.reads(name) else "source",
                "source_backlog": await lag(m, m.source, group, name),
                "target_backlog": await lag(m, m.target, group, name),
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
            "blocks": blocks(mig, backlog, readers),
        }
    groups: dict[str, Any] = {}
    for group, gm in state.groups.items():
        groups[group] = {
            "topic": gm.topic,
            "topics": gm.topics or [gm.topic],
            "status": gm.status,
            "source_lag": sum(
                [await lag(m, m.source, group, t) or 0 for t in gm.topics or [gm.topic]]
            ),
            "target_lag": sum(
                [await lag(m, m.target, group, t) or 0 for t in gm.topics or [gm.topic]]
            ),
        }
    return {"name": state.name, "version": state.version, "topics": topics, "groups": groups}


async def lag(m: MigrationContext, side: Transport, group: str, topic: str) -> int | None:
    """The group's backlog on one topic of ``side`` (None: no positions there)."""
    try:
        info = await side.describe_group(group)
    except EventBusError:
        return None
    parts = [p for p in info.partitions if p.topic == topic]
    if not parts:
        return None
    return sum(p.backlog if p.backlog is not None else (p.lag or 0) for p in parts)


async def groups_reading(m: MigrationContext, topic: str) -> dict[str, str]:
    """The work of :meth:`Migration.groups_reading` (documented there)."""
    seen: dict[str, str] = {}
    for beat in (await m.control.live_members(10.0)).values():
        for group, topics in beat.reads.items():
            if topic in topics:
                seen[group] = f"live member {beat.member}"
    source = m.source
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


async def group_topics(
    m: MigrationContext, group: str, state: MigrationState | None = None, *, side: str | None = None
) -> list[str]:
    """The work of :meth:`Migration.group_topics` (documented there)."""
    state = state or await m.control.require()
    gm = state.groups.get(group)
    found: set[str] = set(gm.topics if gm is not None else [])
    for beat in (await m.control.live_members(10.0)).values():
        found.update(beat.reads.get(group, []))
    if side is None:
        side = "target" if gm is not None and gm.status == "target" else "source"
    if side == "none":  # recorded and live only
        return sorted(t for t in found if not t.startswith("__eb_migration."))
    transport = m.target if side == "target" else m.source
    try:
        info = await transport.describe_group(group)
    except EventBusError:
        info = None
    if info is not None:
        found.update(p.topic for p in info.partitions)
    return sorted(t for t in found if not t.startswith("__eb_migration."))


def blocks(mig: TopicMigration, backlog: int, readers: dict[str, Any]) -> list[str]:
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
