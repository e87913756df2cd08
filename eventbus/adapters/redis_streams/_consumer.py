"""RedisConsumer: one member of a consumer group, with Kafka-like partition ownership.

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

Leases (the contract's "a record handed to a member is leased to it"):

- Every entry ``fetch`` returns is held until acked, nacked, dead-lettered or released. A
  background task heartbeats (so membership does not depend on the application calling
  ``fetch``) and renews held entries: the LEASE script XCLAIMs each to this member with JUSTID
  (idle time reset, delivery count unchanged) if it is still pending here. An entry claimed by
  another member meanwhile is never taken back; it is dropped from the held set (``holds`` turns
  false, so the core does not start it).
- This member's own sweeps skip held entries, so prefetched entries waiting locally are never
  delivered a second time. Another member claims them only once renewals stop (the member died
  or hangs) and the visibility timeout passes, or the member released them.
- ``release`` sets a held entry's idle time past the visibility timeout (and its delivery count
  one lower), so the partition's owner claims it on its next sweep with the same ``attempt``.
- An entry held past ``max_lease`` is no longer renewed (logged): it is delivered again after
  the visibility timeout, to this member or the partition's new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventbus.adapters.redis_streams import _batching as batching
from eventbus.adapters.redis_streams import _layout as layout
from eventbus.adapters.redis_streams._groups import ensure_group
from eventbus.errors import ClosedError, GroupNotFoundError
from eventbus.transport import ConsumerOptions, Outgoing, Record

if TYPE_CHECKING:
    from eventbus.adapters.redis_streams._transport import RedisTransport

__all__ = ["RedisConsumer"]

log = logging.getLogger("eventbus.redis")

HOLD_RECHECK = 0.05
"""Seconds between checks of a partition held back by another member's pending entries."""
HOLD_SCAN = 1000
"""Past this many entries pending at one member, the partition is held without counting."""

TP = tuple[str, int]
Entry = tuple[str, int, str]
"""(topic, partition, entry id)"""


@dataclass(slots=True)
class _Lease:
    since: float
    """When the application got the record (monotonic s): ``max_lease`` counts from here."""
    renewed: float
    """When the server last saw this member's claim on it (delivery or renewal)."""


@dataclass
class _Owned:
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


class RedisConsumer:
    """A group member over one or more topics. Open with :meth:`open`."""

    def __init__(
        self,
        transport: RedisTransport,
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
        self._owned: dict[TP, _Owned] = {}
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
        self._leases: dict[Entry, _Lease] = {}
        """Entries handed to the application and not settled: renewed in the background."""
        self._beat_at = 0.0
        self._renew_every = max(0.05, min(options.visibility_timeout / 3, 10.0))
        self._keepalive: asyncio.Task[None] | None = None
        self.lease_epoch = 0
        """Grows when a held lease may have ended (see LeasedConsumer.lease_epoch)."""

    @classmethod
    async def open(
        cls,
        transport: RedisTransport,
        topics: Sequence[str],
        group: str,
        name: str,
        options: ConsumerOptions,
    ) -> RedisConsumer:
        """Create the group where missing (at ``options.start``) and join it."""
        for topic in topics:
            await ensure_group(transport, await transport.meta(topic, fresh=True), group, options)
        consumer = cls(transport, topics, group, name, options)
        await consumer._heartbeat()
        consumer._keepalive = asyncio.create_task(consumer._keep_alive())
        return consumer

    # membership ------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        self._beat_at = time.monotonic()
        replies = await asyncio.gather(*(self._beat(topic) for topic in self._topics))
        for topic, (mine, live) in zip(self._topics, replies, strict=True):
            self._live[topic] = live
            for p in mine:
                if (topic, p) not in self._owned:
                    self._owned[(topic, p)] = _Owned(topic, p, layout.stream_key(topic, p))
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

    # fetch -----------------------------------------------------------------------------------
    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        """Due nacks first, then claimed entries (older), then new entries of owned streams.
        Waits in slices of ``poll_interval``, heartbeating each time; returns within about
        ``timeout`` (plus one server round trip)."""
        if self._closed:
            raise ClosedError("this Redis consumer is closed; open a new one")
        max_records = max(1, max_records)
        deadline = time.monotonic() + max(0.0, timeout)
        async with self._lock:
            while not self._closed:
                await self._heartbeat()
                out = await self._due_nacks(max_records)
                if len(out) < max_records:
                    out += await self._sweeps(max_records - len(out))
                if not out:
                    out = await self._read_new(max_records, self._block_for(deadline))
                if out or time.monotonic() >= deadline:
                    return self._hold(out)
        return []

    async def fetch_budget(
        self,
        budget: float,
        weight_header: str,
        max_items: int,
        timeout: float,
        allow_oversize: bool = True,
    ) -> tuple[list[Record], bool]:
        """Like :meth:`fetch`, but new entries are claimed only while the sum of their
        ``weight_header`` values fits ``budget`` (atomically on the server). Returns the
        records and whether an entry was left because it did not fit. See
        :mod:`eventbus.adapters.redis_streams._batching`."""
        records, left = await batching.fetch_budget(
            self, budget, weight_header, max_items, timeout, allow_oversize
        )
        return self._hold(records), left

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

    async def _sweep(self, owned: _Owned, budget: int) -> list[Record]:
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
        self, owned: _Owned, ids: Mapping[str, int], min_idle: int, skip: set[str], budget: int
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

    async def _readable(self) -> list[_Owned]:
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

    async def _held(self, streams: Sequence[_Owned]) -> set[str]:
        """Keys of ``streams`` where another live member holds entries not yet due."""
        summaries = await self._t.pipeline(
            lambda p: [p.xpending(o.key, self._group) for o in streams],
            f"check pending entries of group {self._group!r}",
        )
        held: set[str] = set()
        counts: list[tuple[_Owned, str, int]] = []
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

    async def _read_new(self, budget: int, block: float) -> list[Record]:
        by_topic: dict[str, list[_Owned]] = {}
        for owned in await self._readable():
            by_topic.setdefault(owned.topic, []).append(owned)
        if not by_topic:
            if block > 0:
                # nothing owned yet, or held back: wait for the next heartbeat and check
                await asyncio.sleep(block)
            return []
        out: list[Record] = []
        for topic, streams in by_topic.items():
            if len(out) < budget:
                out += await self._xreadgroup(topic, streams, budget - len(out), None)
        block_ms = int(block * 1000)
        if out or block_ms < 1:
            return out
        share = max(1, budget // len(by_topic))
        replies = await asyncio.gather(
            *(self._xreadgroup(t, s, share, block_ms) for t, s in by_topic.items())
        )
        return [r for reply in replies for r in reply]

    async def _xreadgroup(
        self, topic: str, streams: list[_Owned], budget: int, block_ms: int | None
    ) -> list[Record]:
        self._rotation += 1
        shift = self._rotation % len(streams)
        streams = (streams[shift:] + streams[:shift])[:budget]
        count = max(1, budget // len(streams))
        keys = {o.key: o for o in streams}
        try:
            with self._t.edge(f"read group {self._group!r}"):
                reply = await self._t.client.xreadgroup(
                    self._group, self._name, dict.fromkeys(keys, ">"), count=count, block=block_ms
                )
        except GroupNotFoundError:
            await self._regroup(topic)
            return []
        items = reply.items() if isinstance(reply, dict) else reply or []
        out: list[Record] = []
        decode = self._t.decoder(topic)
        for key, entries in items:
            owned = keys[layout.text(key)]
            if entries and isinstance(entries[0], list) and len(entries) == 1:
                entries = entries[0]  # RESP3 shape: [[entries]]
            out += [decode(topic, owned.partition, i, f, 1) for i, f in entries]
            if entries:
                self._seen[(topic, owned.partition)] = layout.text(entries[-1][0])
        return out

    async def _regroup(self, topic: str) -> None:
        """The group (or a partition's group) vanished, or the topic grew: create it again."""
        meta = await self._t.meta(topic, fresh=True)
        seen = {p: i for (t, p), i in self._seen.items() if t == topic}
        await ensure_group(self._t, meta, self._group, self._options, seen)

    # leases ----------------------------------------------------------------------------------
    def _hold(self, records: list[Record]) -> list[Record]:
        if not records:
            return records
        now = time.monotonic()
        lease = _Lease(now, now)  # one per fetch: its records are renewed together
        leases = self._leases
        for record in records:
            # ids read here are complete "<ms>-<seq>" strings
            leases[(record.topic, record.partition, str(record.offset))] = lease
        return records

    def holds(self, record: Record) -> bool:
        """True while this member holds the record's lease and owns its partition."""
        lease = self._leases.get((record.topic, record.partition, str(record.offset)))
        return (
            lease is not None
            and (record.topic, record.partition) in self._owned
            and time.monotonic() - lease.since < self._options.max_lease
        )

    async def release(self, records: Sequence[Record]) -> None:
        """Give back held records not started: the partition's owner claims them at its next
        sweep, with the same ``attempt``. Records not held here are ignored."""
        by_key: dict[str, list[str]] = {}
        for record in records:
            entry = (record.topic, record.partition, str(record.offset))
            if self._leases.pop(entry, None) is not None:
                key = layout.stream_key(record.topic, record.partition)
                by_key.setdefault(key, []).extend((entry[2], str(record.attempt)))
        idle = str(self._vis_ms * 2 + 1000)
        await self._lease_calls(
            {k: ["release", idle, *ids] for k, ids in by_key.items()}, "release records"
        )

    async def _keep_alive(self) -> None:
        """Heartbeat and renew held entries whether or not the application fetches."""
        beat_every = max(0.05, min(self._options.session_timeout / 3, 1.0))
        tick = min(beat_every, self._renew_every)
        while not self._closed:
            await asyncio.sleep(tick)  # the keepalive's period, not a wait for a condition
            try:
                if time.monotonic() - self._beat_at >= beat_every:
                    await self._heartbeat()
                await self._renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next tick tries again; fetch reports hard errors
                log.warning("lease keepalive of %r failed (retrying): %r", self._name, exc)

    async def _renew(self) -> None:
        now = time.monotonic()
        due: dict[str, list[str]] = {}
        where: dict[str, tuple[str, int]] = {}
        for entry, lease in list(self._leases.items()):
            # a lease is shared by the records of one fetch: once stamped in this pass, the
            # rest of its records are renewed too
            if lease.renewed == now:
                pass
            elif now - lease.renewed < self._renew_every:
                continue
            if now - lease.since >= self._options.max_lease:
                del self._leases[entry]
                self.lease_epoch += 1
                log.warning(
                    "%s/%s/%s held by %r for more than max_lease (%.0f s): no longer renewed, "
                    "it will be delivered again",
                    *entry,
                    self._name,
                    self._options.max_lease,
                )
                continue
            key = layout.stream_key(entry[0], entry[1])
            due.setdefault(key, []).append(entry[2])
            where[key] = entry[:2]
            lease.renewed = now
        lost = await self._lease_calls({k: ["renew", *ids] for k, ids in due.items()}, "renew")
        for key, ids in lost.items():
            self.lease_epoch += 1
            for entry_id in ids:
                self._leases.pop((*where[key], entry_id), None)

    async def _lease_calls(
        self, args_by_key: Mapping[str, list[str]], action: str
    ) -> dict[str, list[str]]:
        """Run the LEASE script once per stream; returns the ids no longer this member's."""
        if not args_by_key:
            return {}
        script = self._t.script("LEASE")
        keys = list(args_by_key)
        with self._t.edge(f"{action} in group {self._group!r}"):
            replies = await asyncio.gather(
                *(script(keys=[k], args=[self._group, self._name, *args_by_key[k]]) for k in keys)
            )
        return {k: [layout.text(i) for i in r] for k, r in zip(keys, replies, strict=True) if r}

    async def _stop_keepalive(self) -> None:
        task, self._keepalive = self._keepalive, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # settle ----------------------------------------------------------------------------------
    async def ack(self, records: Sequence[Record]) -> None:
        """XACK, one call per partition in one round trip. Acking twice is harmless."""
        by_key: dict[str, list[str]] = {}
        by_part: dict[tuple[str, int], list[str]] = {}
        nacked, leases = self._nacked, self._leases
        for record in records:
            offset = record.offset
            # ids this consumer read are complete "<ms>-<seq>" strings: validate others only
            entry_id = offset if offset.__class__ is str else layout.id_of(offset, record.topic)
            part = (record.topic, record.partition)
            ids = by_part.get(part)
            if ids is None:
                ids = by_part[part] = by_key.setdefault(layout.stream_key(*part), [])
            ids.append(entry_id)
            if nacked:
                nacked.pop((record.topic, record.partition, entry_id), None)
            leases.pop((record.topic, record.partition, entry_id), None)
        if by_key:
            await self._t.pipeline(
                lambda p: [p.xack(k, self._group, *ids) for k, ids in by_key.items()],
                f"ack in group {self._group!r}",
            )

    async def nack(self, record: Record, delay: float = 0.0) -> None:
        """Redeliver no sooner than ``delay`` s (the entry stays pending here meanwhile)."""
        entry = (record.topic, record.partition, layout.id_of(record.offset, record.topic))
        self._leases.pop(entry, None)
        self._nacked[entry] = (time.monotonic() + max(0.0, delay), record.attempt + 1)

    async def dead_letter(self, record: Record, topic: str, headers: Mapping[str, bytes]) -> None:
        """XADD the copy to ``topic`` and XACK the original: one Lua script when both streams
        share a hash slot (always outside Cluster), otherwise add then ack."""
        t = self._t
        meta = await t.meta(topic, create=t.settings.auto_create)
        copy = Outgoing(value=record.value, key=record.key, headers={**record.headers, **headers})
        t.check_sizes(meta, [copy])
        target = layout.stream_key(topic, t.partition_of(meta, copy))
        source = layout.stream_key(record.topic, record.partition)
        entry_id = layout.id_of(record.offset, record.topic)
        self._nacked.pop((record.topic, record.partition, entry_id), None)
        self._leases.pop((record.topic, record.partition, entry_id), None)
        if not t.same_slot(target, source):
            await t.publish(topic, [copy], timeout=t.settings.socket_timeout)
            await self.ack([record])
            return
        try:
            with t.edge(f"dead-letter to {topic!r}"):
                await t.script("DEAD_LETTER")(
                    keys=[target, source],
                    args=[self._group, entry_id, meta.minid(), *layout.encode_fields(copy)],
                )
        except Exception as exc:
            t.raise_if_missing(topic, exc)
            raise

    async def close(self) -> None:
        """Leave the group at once: partitions move on the others' next heartbeat; what this
        member did not ack stays pending and is claimed by the new owners right away."""
        if self._closed:
            return
        self._closed = True
        await self._stop_keepalive()
        self._leases.clear()
        async with self._lock:  # let a running fetch finish its slice first
            for topic in self._topics:
                with self._t.edge(f"leave group {self._group!r}"):
                    await self._t.script("LEAVE")(
                        keys=[
                            layout.members_key(topic, self._group),
                            layout.owners_key(topic, self._group),
                        ],
                        args=[self._name],
                    )
            self._owned.clear()

    async def kill(self) -> None:
        """Stop without a goodbye: others take over after the session timeout."""
        self._closed = True
        await self._stop_keepalive()
        self._leases.clear()
        self._owned.clear()


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
