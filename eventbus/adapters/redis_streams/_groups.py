"""Consumer group admin over XGROUP / XINFO / XPENDING: create, describe, reset.

A group's position on a partition is its last-delivered id (``GroupPartition.committed``).
Resets set it with XGROUP SETID ... ENTRIESREAD n, computing n so that Redis keeps reporting a
correct lag; when Redis reports no lag (after a foreign SETID or deletions), describe counts
the entries after the last-delivered id instead, and where a trim removed entries the group
had not read yet, it reports the stream's length (see :func:`_undelivered`). ``lag`` is that
count of undelivered entries, ``pending`` the group's PEL size, ``backlog`` their sum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from eventbus.adapters.redis_streams import _layout as layout
from eventbus.adapters.redis_streams._admin import TopicAdmin, TopicMeta
from eventbus.adapters.redis_streams._errors import is_busygroup
from eventbus.errors import GroupNotFoundError, InvalidPositionError, TopicNotFoundError
from eventbus.transport import (
    ConsumerOptions,
    GroupInfo,
    GroupMember,
    GroupPartition,
    Offset,
    ResetTarget,
)

__all__ = [
    "count_after",
    "describe_group",
    "ensure_group",
    "reset_group",
    "start_id",
    "trim_finished",
]

COUNT_PAGE = 10_000
# GroupPartition.delivered / lowest_pending are new in the contract: fill them where present.
_HAS_DELIVERED = "delivered" in {f.name for f in dataclasses.fields(GroupPartition)}


def start_id(start: str | datetime) -> str:
    """The last-delivered id that makes a new group start at ``start``."""
    if isinstance(start, datetime):
        return layout.id_before(layout.time_id(start))
    if start == "earliest":
        return "0"
    if start == "latest":
        return "$"
    raise InvalidPositionError(f"unknown start {start!r}: use earliest, latest or a datetime")


async def ensure_group(
    t: TopicAdmin,
    meta: TopicMeta,
    group: str,
    options: ConsumerOptions,
    seen: Mapping[int, str] | None = None,
) -> None:
    """Create ``group`` on every partition stream where it is missing. A brand-new group
    starts at ``options.start``; partitions added to an existing group start at their
    beginning (they are younger than the group). ``seen`` (partition -> last id a member
    read) wins: a group destroyed under a running member is re-created where it was."""
    seen = seen or {}
    first, *rest = meta.streams()
    begin = start_id(options.start)
    created = True
    try:
        with t.edge(f"create group {group!r}"):
            await t.client.xgroup_create(first, group, seen.get(0, begin), mkstream=True)
    except Exception as exc:
        if not is_busygroup(exc.__cause__ or exc):
            raise
        created = False
    if not rest:
        return
    with t.edge(f"create group {group!r}"):
        pipe = t.client.pipeline(transaction=False)
        for p, key in enumerate(rest, start=1):
            default = begin if created else "0"
            pipe.xgroup_create(key, group, seen.get(p, default), mkstream=True)
        replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and not is_busygroup(reply):
                raise reply


async def count_after(t: TopicAdmin, key: str, low: str) -> int:
    """Entries with ids from ``low`` (inclusive; prefix ``(`` for exclusive) to the end."""
    total = 0
    while True:
        with t.edge("count entries"):
            page = await t.client.xrange(key, low, "+", count=COUNT_PAGE)
        total += len(page)
        if len(page) < COUNT_PAGE:
            return total
        low = "(" + layout.text(page[-1][0])


def _find(groups: list[Mapping[str, Any]], group: str) -> Mapping[str, Any] | None:
    for info in groups:
        if layout.text(info["name"]) == group:
            return info
    return None


async def _topic_state(
    t: TopicAdmin, meta: TopicMeta, group: str
) -> tuple[list[GroupPartition], dict[str, GroupMember]]:
    keys = meta.streams()
    replies = await t.xinfo_groups(keys, f"describe group {group!r}")
    partitions: list[GroupPartition] = []
    present: list[str] = []
    found = [
        (p, key, _find(groups, group))
        for p, (key, groups) in enumerate(zip(keys, replies, strict=True))
    ]
    lengths = await _lengths(t, [key for _, key, info in found if info and info.get("lag")])
    for p, key, info in found:
        if info is None:
            continue
        present.append(key)
        committed = layout.text(info["last-delivered-id"])
        lag = await _undelivered(t, key, committed, info.get("lag"), lengths.get(key))
        pending = int(info.get("pending", 0))
        extra: dict[str, Any] = {}
        if _HAS_DELIVERED:
            extra["delivered"] = None if committed == "0-0" else committed
            extra["lowest_pending"] = await _lowest_pending(t, key, group) if pending else None
        partitions.append(
            GroupPartition(meta.name, p, committed, lag, pending, backlog=lag + pending, **extra)
        )
    if not partitions:
        return [], {}
    return partitions, await _members(t, meta, group, present)


async def _lengths(t: TopicAdmin, keys: list[str]) -> dict[str, int]:
    """XLEN of each stream, in one round trip."""
    if not keys:
        return {}

    def build(pipe: Any) -> None:
        for key in keys:
            pipe.xlen(key)

    replies = await t.pipeline(build, "count entries")
    return {key: int(n) for key, n in zip(keys, replies, strict=True)}


async def _undelivered(
    t: TopicAdmin, key: str, last_delivered: str, lag: Any, length: int | None
) -> int:
    """Entries of the stream after the group's last-delivered id, exactly.

    Redis's ``lag`` (entries added minus entries read) is nil when it cannot tell (deletions
    after the group's position, a SETID without ENTRIESREAD): then the entries are counted.
    When it is known it still counts entries trimmed away before the group read them. A trim
    removes the oldest entries, so once it removed one after the last-delivered id it removed
    everything up to that id, and every entry left is undelivered: the exact count is then
    the stream's length, and otherwise ``lag`` itself, which is at most the length."""
    if lag is None:
        return await count_after(t, key, "(" + last_delivered)
    if length is None:  # lag is 0: nothing to correct
        return int(lag)
    return min(int(lag), length)


async def _lowest_pending(t: TopicAdmin, key: str, group: str) -> str | None:
    with t.edge(f"describe group {group!r}"):
        summary = await t.client.xpending(key, group)
    low = summary.get("min") if isinstance(summary, Mapping) else None
    return layout.text(low) if low else None


async def _members(
    t: TopicAdmin, meta: TopicMeta, group: str, keys: list[str]
) -> dict[str, GroupMember]:
    with t.edge(f"describe group {group!r}"):
        now_ms = int(await t.script("NOW")(keys=[layout.meta_key(meta.name)]))

    def build(pipe: Any) -> None:
        pipe.hgetall(layout.members_key(meta.name, group))
        pipe.hgetall(layout.owners_key(meta.name, group))
        for key in keys:
            pipe.xinfo_consumers(key, group)

    deadlines, owners, *consumers = await t.pipeline(build, f"describe group {group!r}")
    idle: dict[str, int] = {}
    pending: dict[str, int] = {}
    for reply in consumers:
        for info in reply:
            name = layout.text(info["name"])
            idle[name] = min(idle.get(name, 1 << 62), int(info["idle"]))
            pending[name] = pending.get(name, 0) + int(info["pending"])
    members: dict[str, GroupMember] = {}
    for raw_name, deadline in deadlines.items():
        name = layout.text(raw_name)
        if int(deadline) <= now_ms:
            continue  # past its session: not a live member
        owned = sorted(
            (meta.name, int(p)) for p, owner in owners.items() if layout.text(owner) == name
        )
        members[name] = GroupMember(name, tuple(owned), idle.get(name), pending.get(name, 0))
    return members


async def describe_group(t: TopicAdmin, group: str) -> GroupInfo:
    """The group on every topic where it exists; raises GroupNotFoundError."""
    partitions: list[GroupPartition] = []
    members: dict[str, GroupMember] = {}
    for topic in await t.list_topics():
        try:
            meta = await t.meta(topic, fresh=True)
        except TopicNotFoundError:
            continue
        found, topic_members = await _topic_state(t, meta, group)
        partitions += found
        for name, member in topic_members.items():
            seen = members.get(name)
            if seen is None:
                members[name] = member
                continue
            members[name] = GroupMember(
                name,
                (*seen.assignments, *member.assignments),
                min(x for x in (seen.idle_ms, member.idle_ms, 1 << 62) if x is not None),
                seen.pending + member.pending,
            )
    if not partitions:
        raise GroupNotFoundError(f"consumer group {group!r} does not exist on {t.settings.url}")
    ordered = [members[n] for n in sorted(members)]
    return GroupInfo(group, "stable" if ordered else "empty", ordered, partitions)


async def _target(
    t: TopicAdmin, key: str, to: ResetTarget, p: int, topic: str, stream: Mapping[str, Any]
) -> tuple[str, int]:
    """(last-delivered id, entries after it) for one partition."""
    if to == "earliest":
        return "0-0", int(stream["length"])
    if to == "latest":
        return layout.text(stream["last-generated-id"]), 0
    if isinstance(to, datetime):
        first = layout.time_id(to)
    elif isinstance(to, Mapping):
        offset: Offset = to[p]
        first = layout.id_of(offset, topic)
    else:
        raise InvalidPositionError(f"cannot reset to {to!r}: use earliest, latest, a time or ids")
    return layout.id_before(first), await count_after(t, key, first)


async def reset_group(
    t: TopicAdmin, group: str, topic: str, to: ResetTarget
) -> dict[int, tuple[Offset | None, Offset | None]]:
    """XGROUP SETID (or CREATE) per partition with ENTRIESREAD kept consistent, then ack the
    group's pending entries there. Works while members are active (they read on from the new
    position at their next read)."""
    meta = await t.meta(topic, fresh=True)
    out: dict[int, tuple[Offset | None, Offset | None]] = {}
    for p, key in enumerate(meta.streams()):
        if isinstance(to, Mapping) and p not in to:
            continue
        stream, groups = await t.pipeline(
            lambda pipe, key=key: (pipe.xinfo_stream(key), pipe.xinfo_groups(key)),  # type: ignore[misc]
            f"reset group {group!r}",
        )
        info = _find(groups, group)
        before = layout.text(info["last-delivered-id"]) if info is not None else None
        after, tail = await _target(t, key, to, p, topic, stream)
        entries_read = max(0, int(stream.get("entries-added", 0)) - tail)
        with t.edge(f"reset group {group!r}"):
            if info is None:
                await t.client.xgroup_create(key, group, after, entries_read=entries_read)
            else:
                await t.client.xgroup_setid(key, group, after, entries_read=entries_read)
            await _drop_pending(t, key, group)
        out[p] = (before, after)
    return out


async def _drop_pending(t: TopicAdmin, key: str, group: str) -> None:
    while True:
        rows = await t.client.xpending_range(key, group, "-", "+", 1000)
        if not rows:
            return
        await t.client.xack(key, group, *(r["message_id"] for r in rows))


def _id_after(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    m, n = int(ms), int(seq or 0)
    return f"{m}-{n + 1}" if n < layout.MAX_SEQ else f"{m + 1}-0"


async def trim_finished(t: TopicAdmin, topic: str, group: str, partitions: Sequence[int]) -> int:
    """XTRIM MINID each partition stream at the group's first unfinished entry: its lowest
    pending id, else the entry after its last-delivered id (see TrimsFinished). Not atomic,
    and it need not be: that bound only moves forward while the group runs."""
    meta = await t.meta(topic)
    parts = [p for p in partitions if 0 <= p < meta.partitions]
    keys = [layout.stream_key(topic, p) for p in parts]
    infos = await t.xinfo_groups(keys, f"trim {topic!r}")
    bounds: dict[str, str] = {}
    for key, reply in zip(keys, infos, strict=True):
        found = next((g for g in reply if layout.text(g["name"]) == group), None)
        if found is None:
            continue
        bounds[key] = _id_after(layout.text(found["last-delivered-id"]))
        if int(found.get("pending") or 0):
            with t.edge(f"trim {topic!r}"):
                summary = await t.client.xpending(key, group)
            lowest = summary.get("min")
            if lowest is not None:
                bounds[key] = layout.text(lowest)
    if not bounds:
        return 0
    with t.edge(f"trim {topic!r}"):
        pipe = t.client.pipeline(transaction=False)
        for key, bound in bounds.items():
            pipe.xtrim(key, minid=bound, approximate=False)
        return sum(int(n) for n in await pipe.execute())
