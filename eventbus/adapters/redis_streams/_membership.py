"""The group-membership half of a Redis consumer: partition ownership, hand-over, sweeps and
nack redelivery (:class:`GroupMember`); :class:`RedisConsumer` (``_consumer.py``) adds reading,
leases and settling on top.

Redis hands a stream's entries to whichever consumer reads, so two readers of one stream break
per-key order. Here each partition stream has one owner at a time:

- Membership and ownership live in two hashes per topic and group (``layout``). The HEARTBEAT
  script (run at every fetch slice, so at least every ``poll_interval``) refreshes this
  member's session deadline, drops members past theirs, computes the wanted assignment (sorted
  live members, partition p to member p mod n) and moves ownership: a member releases what it
  no longer wants, and takes what it wants once free. A partition never has two owners.
- A member reads (XREADGROUP ``>``) only the streams it owns, all of one topic in one call.
- Sweeps, on a partition just acquired and then every ``sweep_interval``: entries pending at
  members that are no longer live (closed or dead) are claimed at once (XCLAIM, min idle 0);
  on acquisition this member's own leftover entries too (a restart re-reads its PEL first);
  entries idle past ``visibility_timeout`` at anyone are claimed with XCLAIM min-idle-time.
  ``Record.attempt`` is the PEL delivery count after the claim.
- Hand-over between live members: the new owner reads no new entries of a partition while
  another live member still holds entries of it that are younger than the visibility timeout
  (XPENDING summary, checked at most every ``HOLD_RECHECK`` s): they are the previous owner's
  records in flight, and reading on would break per-key order. It reads once they are acked,
  or claims them when their visibility timeout passes (as the memory transport does).
- nack(record, delay) keeps the entry in this member's PEL and notes a local due time; when
  due (and the partition is still ours) it is claimed again by id with XCLAIM RETRYCOUNT =
  attempt + 1. Later entries keep flowing meanwhile. Visibility sweeps skip nacked ids.

"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eventbus.adapters.redis_streams import _layout as layout
from eventbus.adapters.redis_streams._groups import ensure_group
from eventbus.adapters.redis_streams._publish import Publisher
from eventbus.errors import GroupNotFoundError
from eventbus.transport import ConsumerOptions, Record

__all__ = ["HOLD_RECHECK", "HOLD_SCAN", "TP", "Entry", "GroupMember", "Lease", "Owned"]

HOLD_RECHECK = 0.05
"""Seconds between checks of a partition held back by another member's pending entries."""
HOLD_SCAN = 1000
"""Past this many entries pending at one member, the partition is held without counting."""

TP = tuple[str, int]
Entry = tuple[str, int, str]
"""(topic, partition, entry id)"""


@dataclass(slots=True)
class Lease:
    since: float
    """When the application got the record (monotonic s): ``max_lease`` counts from here."""
    renewed: float
    """When the server last saw this member's claim on it (delivery or renewal)."""


@dataclass
class Owned:
    topic: str
    partition: int
    key: str
    swept_at: float = 0.0
    fresh: bool = True
    """Just acquired: the next sweep also claims this member's own leftover entries."""
    clear: bool = False
    """No other live member holds entries of it that are not yet due: new entries may be read.
    Stays true while this member owns the stream (no one else reads it meanwhile)."""
    held_until: float = 0.0
    """Held back (see ``RedisConsumer._readable``): do not check again before this time."""


class GroupMember:
    """A member's ownership of partition streams and the claims it makes as their owner."""

    def __init__(
        self,
        transport: Publisher,
        topics: Sequence[str],
        group: str,
        name: str,
        options: ConsumerOptions,
    ) -> None:
        self._t = transport
        self._topics = tuple(dict.fromkeys(topics))
        self._group = group
        self._name = name
        self._options = options
        self._owned: dict[TP, Owned] = {}
        self._live: dict[str, set[str]] = {}
        self._nacked: dict[Entry, tuple[float, int]] = {}
        self._seen: dict[TP, str] = {}
        """Last new id read per partition: where a vanished group is re-created."""
        self._lock = asyncio.Lock()
        self._closed = False
        self._rotation = 0
        self._vis_ms = max(1, int(options.visibility_timeout * 1000))
        self._sweep_interval = max(
            0.05, min(options.visibility_timeout / 4, options.session_timeout / 4, 1.0)
        )
        self._leases: dict[Entry, Lease] = {}
        """Entries handed to the application and not settled: renewed in the background."""
        self._beat_at = 0.0
        self._renew_every = max(0.05, min(options.visibility_timeout / 3, 10.0))
        self._keepalive: asyncio.Task[None] | None = None
        self._unsent: dict[str, list[str]] = {}
        """Acked ids not yet XACKed, per stream key (see RedisConsumer.ack)."""
        self._sending: asyncio.Task[None] | None = None
        self._killed = False
        self.lease_epoch = 0
        """Grows when a held lease may have ended (see LeasedConsumer.lease_epoch)."""

    # membership ------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        self._beat_at = time.monotonic()
        replies = await asyncio.gather(*(self._beat(topic) for topic in self._topics))
        for topic, (mine, live) in zip(self._topics, replies, strict=True):
            self._live[topic] = live
            for p in mine:
                if (topic, p) not in self._owned:
                    self._owned[(topic, p)] = Owned(topic, p, layout.stream_key(topic, p))
            for tp in [tp for tp in self._owned if tp[0] == topic and tp[1] not in mine]:
                del self._owned[tp]
                self.lease_epoch += 1

    async def _beat(self, topic: str) -> tuple[set[int], set[str]]:
        with self._t.edge(f"heartbeat of {self._name!r} in group {self._group!r}"):
            _now, _parts, mine, live = await self._t.script("HEARTBEAT")(
                keys=[
                    layout.members_key(topic, self._group),
                    layout.owners_key(topic, self._group),
                    layout.meta_key(topic),
                ],
                args=[self._name, int(self._options.session_timeout * 1000), 1],
            )
        return {int(p) for p in mine}, {layout.text(m) for m in live}

    def _block_for(self, deadline: float) -> float:
        now = time.monotonic()
        wait = min(deadline - now, self._t.settings.block_ms / 1000)
        if self._nacked:
            wait = min(wait, min(due for due, _ in self._nacked.values()) - now)
        return max(0.0, wait)

    async def _due_nacks(self, budget: int) -> list[Record]:
        now = time.monotonic()
        due = sorted((e for e, (when, _) in self._nacked.items() if when <= now), key=_entry_order)[
            :budget
        ]
        if not due:
            return []
        claims: list[tuple[Entry, int]] = []
        for entry in due:
            _, attempt = self._nacked.pop(entry)
            if (entry[0], entry[1]) in self._owned:
                claims.append((entry, attempt))
            # else: the partition moved; its new owner claims the entry after the
            # visibility timeout (it is still pending here)

        def build(pipe: Any) -> None:
            for (topic, p, entry_id), attempt in claims:
                pipe.xclaim(
                    layout.stream_key(topic, p), self._group, self._name, 0, [entry_id],
                    retrycount=attempt,
                )  # fmt: skip

        replies = await self._t.pipeline(build, "redeliver nacked entries") if claims else []
        out: list[Record] = []
        for ((topic, p, _), attempt), reply in zip(claims, replies, strict=True):
            decode = self._t.decoder(topic)
            out += [decode(topic, p, i, f, attempt) for i, f in reply if f]
        return out

    async def _sweeps(self, budget: int) -> list[Record]:
        now = time.monotonic()
        out: list[Record] = []
        for owned in list(self._owned.values()):
            if len(out) >= budget:
                break
            if owned.fresh or now - owned.swept_at >= self._sweep_interval:
                try:
                    out += await self._sweep(owned, budget - len(out))
                except GroupNotFoundError:
                    await self._regroup(owned.topic)
                    continue
                owned.swept_at, owned.fresh = now, False
        return out

    async def _sweep(self, owned: Owned, budget: int) -> list[Record]:
        """Claim what this partition's owner should redeliver now (see the module docstring)."""
        live = self._live.get(owned.topic, set())
        key, group = owned.key, self._group
        with self._t.edge(f"claim pending entries of group {group!r}"):
            consumers = await self._t.client.xinfo_consumers(key, group)
            now_ids: dict[str, int] = {}
            for info in consumers:
                name = layout.text(info["name"])
                mine = owned.fresh and name == self._name
                if int(info["pending"]) and (name not in live or mine):
                    rows = await self._t.client.xpending_range(
                        key, group, "-", "+", budget, consumername=name
                    )
                    now_ids.update(_rows(rows))
            late = await self._t.client.xpending_range(
                key, group, "-", "+", budget, idle=self._vis_ms
            )
            late_ids = {i: c for i, c in _rows(late).items() if i not in now_ids}
        tp = (owned.topic, owned.partition)
        skip = {e[2] for e in self._nacked if e[:2] == tp}
        skip.update(e[2] for e in self._leases if e[:2] == tp)
        out = await self._claim(owned, now_ids, 0, skip, budget)
        out += await self._claim(owned, late_ids, self._vis_ms, skip, budget - len(out))
        return sorted(out, key=lambda r: layout.offset_order(r.offset))

    async def _claim(
        self, owned: Owned, ids: Mapping[str, int], min_idle: int, skip: set[str], budget: int
    ) -> list[Record]:
        chosen = sorted((i for i in ids if i not in skip), key=layout.offset_order)[:budget]
        if not chosen:
            return []
        with self._t.edge(f"claim pending entries of group {self._group!r}"):
            claimed = await self._t.client.xclaim(
                owned.key, self._group, self._name, min_idle, chosen
            )
        out = []
        decode = self._t.decoder(owned.topic)
        for entry_id, fields in claimed:
            if not fields:  # trimmed while pending: nothing to deliver
                continue
            attempt = ids[layout.text(entry_id)] + 1
            out.append(decode(owned.topic, owned.partition, entry_id, fields, attempt))
        return out

    async def _readable(self) -> list[Owned]:
        """Owned streams whose new entries may be read now, sorted by (topic, partition).

        A stream is held back while another live member holds pending entries of it that are
        younger than the visibility timeout: the partition just moved here and its previous
        owner still works on records of it. Reading on would hand newer records of the same
        keys to this member while older ones are in flight there. Entries of members that are
        gone, and entries idle past the visibility timeout, do not hold it back: the sweeps
        claim them. Once clear, a stream stays clear while owned (no one else reads it)."""
        now = time.monotonic()
        owned = sorted(self._owned.values(), key=lambda o: (o.topic, o.partition))
        check = [o for o in owned if not o.clear and o.held_until <= now]
        if check:
            try:
                held = await self._held(check)
            except GroupNotFoundError:
                held = set()  # the read re-creates the group
            just_cleared: set[str] = set()
            for o in check:
                if o.key in held:
                    o.held_until = now + HOLD_RECHECK
                else:
                    o.clear = True
                    if o.held_until:
                        # it was held back: what the previous owner released is claimed by
                        # the next sweep, before any newer entry of the same keys is read
                        o.swept_at = 0.0
                        just_cleared.add(o.key)
            return [o for o in owned if o.clear and o.key not in just_cleared]
        return [o for o in owned if o.clear]

    async def _held(self, streams: Sequence[Owned]) -> set[str]:
        """Keys of ``streams`` where another live member holds entries not yet due."""
        summaries = await self._t.pipeline(
            lambda p: [p.xpending(o.key, self._group) for o in streams],
            f"check pending entries of group {self._group!r}",
        )
        held: set[str] = set()
        counts: list[tuple[Owned, str, int]] = []
        for o, summary in zip(streams, summaries, strict=True):
            live = self._live.get(o.topic, set())
            for name, pending in _holders(summary):
                if name == self._name or name not in live or not pending:
                    continue
                if pending > HOLD_SCAN:
                    held.add(o.key)
                else:
                    counts.append((o, name, pending))
        counts = [c for c in counts if c[0].key not in held]
        if not counts:
            return held

        def build(pipe: Any) -> None:
            for o, name, pending in counts:
                pipe.xpending_range(
                    o.key, self._group, "-", "+", pending, consumername=name, idle=self._vis_ms
                )

        lates = await self._t.pipeline(build, f"check pending entries of group {self._group!r}")
        for (o, _, pending), late in zip(counts, lates, strict=True):
            if len(late) < pending:  # some are younger than the visibility timeout
                held.add(o.key)
        return held

    async def _regroup(self, topic: str) -> None:
        """The group (or a partition's group) vanished, or the topic grew: create it again."""
        meta = await self._t.meta(topic, fresh=True)
        seen = {p: i for (t, p), i in self._seen.items() if t == topic}
        await ensure_group(self._t, meta, self._group, self._options, seen)

    def _rotate(self, streams: list[Owned]) -> list[Owned]:
        """``streams`` starting one further on each call, so that no partition starves."""
        self._rotation += 1
        shift = self._rotation % len(streams)
        return streams[shift:] + streams[:shift]


def _holders(summary: Any) -> list[tuple[str, int]]:
    """(consumer, pending count) pairs from an XPENDING summary reply."""
    if not isinstance(summary, Mapping):
        return []
    out: list[tuple[str, int]] = []
    for row in summary.get("consumers") or []:
        if isinstance(row, Mapping):
            out.append((layout.text(row["name"]), int(row["pending"])))
        else:
            out.append((layout.text(row[0]), int(row[1])))
    return out


def _rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """XPENDING rows as {entry id: times delivered}."""
    return {layout.text(r["message_id"]): int(r["times_delivered"]) for r in rows}


def _entry_order(entry: Entry) -> tuple[str, int, tuple[int, int]]:
    return (entry[0], entry[1], layout.offset_order(entry[2]))
