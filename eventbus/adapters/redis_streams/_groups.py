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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventbus.adapters.redis_streams import _layout as layout
from eventbus.adapters.redis_streams._admin import TOPIC_PAGE, TopicAdmin, TopicMeta
from eventbus.adapters.redis_streams._errors import is_busygroup
from eventbus.errors import GroupNotFoundError, InvalidPositionError
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
    "describe_groups",
    "ensure_group",
    "group_names",
    "reset_group",
    "start_id",
    "trim_finished",
]

COUNT_PAGE = 10_000
STATE_PAGE = 200
"""(group, topic) pairs whose lag, pending and members one pipeline reads."""
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


@dataclass(slots=True)
class _OnTopic:
    """One group on one topic: the partitions holding it, with their XINFO GROUPS entry."""

    meta: TopicMeta
    parts: list[tuple[int, str, Mapping[str, Any]]] = field(default_factory=list)


async def _scan(t: TopicAdmin, group: str | None, action: str) -> dict[str, list[_OnTopic]]:
    """Per group (only ``group`` when given), the topics holding it in ``list_topics`` order:
    two round trips per TOPIC_PAGE topics (their metadata, then XINFO GROUPS of their
    streams), however many topics and groups the server holds."""
    out: dict[str, list[_OnTopic]] = {}
    names = await t.list_topics()
    for start in range(0, len(names), TOPIC_PAGE):
        streams = [
            (meta, p, key)
            for meta in await t.metas(names[start : start + TOPIC_PAGE])
            for p, key in enumerate(meta.streams())
        ]
        replies = await t.xinfo_groups([key for _, _, key in streams], action)
        for (meta, p, key), groups in zip(streams, replies, strict=True):
            for info in groups:
                name = layout.text(info["name"])
                if group is not None and name != group:
                    continue
                topics = out.setdefault(name, [])
                if not topics or topics[-1].meta is not meta:
                    topics.append(_OnTopic(meta))
                topics[-1].parts.append((p, key, info))
    return out


async def group_names(t: TopicAdmin) -> list[str]:
    """Names of the groups on any topic, sorted."""
    return sorted(await _scan(t, None, "list groups"))


def _missing(reply: Any) -> bool:
    """A reply that is the error of a stream or group deleted since the scan."""
    return isinstance(reply, Exception) and "no such" in str(reply).lower()


async def _states(
    t: TopicAdmin, found: list[tuple[str, _OnTopic]], action: str
) -> list[tuple[list[GroupPartition], dict[str, GroupMember]]]:
    """Partitions and live members of each (group, topic) of ``found``: two round trips (the
    server's time, then one pipeline) per STATE_PAGE of them, plus a count of entries where
    Redis reports no lag (see :func:`_undelivered`)."""
    out = []
    for start in range(0, len(found), STATE_PAGE):
        page = found[start : start + STATE_PAGE]
        with t.edge(action):
            now_ms = int(await t.script("NOW")(keys=[layout.meta_key(page[0][1].meta.name)]))
            pipe = t.client.pipeline(transaction=False)
            for group, on in page:
                _queue_state(pipe, group, on)
            replies = await pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception) and not _missing(reply):
                    raise reply
        each = iter(replies)
        for _, on in page:
            out.append(await _read_state(t, on, now_ms, each))
    return out


def _queue_state(pipe: Any, group: str, on: _OnTopic) -> None:
    """The commands :func:`_read_state` reads the replies of, in its order."""
    for _, key, info in on.parts:
        if info.get("lag"):
            pipe.xlen(key)
        if _HAS_DELIVERED and int(info.get("pending", 0)):
            pipe.xpending(key, group)
    pipe.hgetall(layout.members_key(on.meta.name, group))
    pipe.hgetall(layout.owners_key(on.meta.name, group))
    for _, key, _ in on.parts:
        pipe.xinfo_consumers(key, group)


async def _read_state(
    t: TopicAdmin, on: _OnTopic, now_ms: int, replies: Iterator[Any]
) -> tuple[list[GroupPartition], dict[str, GroupMember]]:
    """A group's partitions and live members on one topic, from the replies to the commands
    of :func:`_queue_state` (an error reply is a stream or group deleted since the scan)."""
    partitions = []
    for p, key, info in on.parts:
        committed = layout.text(info["last-delivered-id"])
        length = None
        if info.get("lag"):
            reply = next(replies)
            length = 0 if _missing(reply) else int(reply)
        lag = await _undelivered(t, key, committed, info.get("lag"), length)
        pending = int(info.get("pending", 0))
        extra: dict[str, Any] = {}
        if _HAS_DELIVERED:
            summary = next(replies) if pending else None
            low = summary.get("min") if isinstance(summary, Mapping) else None
            extra["delivered"] = None if committed == "0-0" else committed
            extra["lowest_pending"] = layout.text(low) if low else None
        partitions.append(
            GroupPartition(on.meta.name, p, committed, lag, pending, backlog=lag + pending, **extra)
        )
    deadlines, owners = next(replies), next(replies)
    consumers = [next(replies) for _ in on.parts]
    members = _members(
        on.meta.name,
        now_ms,
        {} if _missing(deadlines) else deadlines,
        {} if _missing(owners) else owners,
        [[] if _missing(c) else c for c in consumers],
    )
    return partitions, members


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


def _members(
    topic: str,
    now_ms: int,
    deadlines: Mapping[bytes, bytes],
    owners: Mapping[bytes, bytes],
    consumers: list[list[Mapping[str, Any]]],
) -> dict[str, GroupMember]:
    """The live members of a group on a topic: its members hash (name -> session deadline),
    owners hash (partition -> member) and XINFO CONSUMERS of its streams."""
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
        owned = sorted((topic, int(p)) for p, owner in owners.items() if layout.text(owner) == name)
        members[name] = GroupMember(name, tuple(owned), idle.get(name), pending.get(name, 0))
    return members


def _group_info(
    group: str, states: list[tuple[list[GroupPartition], dict[str, GroupMember]]]
) -> GroupInfo:
    """One GroupInfo from the group's state on each of its topics (in topic order)."""
    partitions: list[GroupPartition] = []
    members: dict[str, GroupMember] = {}
    for found, topic_members in states:
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
    ordered = [members[n] for n in sorted(members)]
    return GroupInfo(group, "stable" if ordered else "empty", ordered, partitions)


async def describe_groups(t: TopicAdmin, group: str | None = None) -> list[GroupInfo]:
    """Every group (only ``group`` when given) on every topic where it exists, sorted by
    name, in one pass over the topics: its cost does not grow with the number of groups
    times the number of topics, as describing each group of a listing would."""
    found = await _scan(t, group, f"describe group {group!r}" if group else "describe groups")
    pairs = [(name, on) for name in sorted(found) for on in found[name]]
    states = await _states(t, pairs, f"describe group {group!r}" if group else "describe groups")
    each = iter(states)
    return [_group_info(name, [next(each) for _ in found[name]]) for name in sorted(found)]


async def describe_group(t: TopicAdmin, group: str) -> GroupInfo:
    """The group on every topic where it exists; raises GroupNotFoundError."""
    found = await describe_groups(t, group)
    if not found:
        raise GroupNotFoundError(f"consumer group {group!r} does not exist on {t.settings.url}")
    return found[0]


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
