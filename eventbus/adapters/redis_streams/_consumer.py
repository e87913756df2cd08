"""RedisConsumer: one member of a consumer group, with Kafka-like partition ownership
(see ``_membership.py`` for ownership, hand-over, sweeps and nacks) and leases.

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

from eventbus.adapters.redis_streams import _batching as batching
from eventbus.adapters.redis_streams import _layout as layout
from eventbus.adapters.redis_streams._groups import ensure_group
from eventbus.adapters.redis_streams._membership import GroupMember, Lease, Owned
from eventbus.adapters.redis_streams._publish import Publisher
from eventbus.errors import ClosedError, GroupNotFoundError
from eventbus.transport import ConsumerOptions, Outgoing, Record

__all__ = ["RedisConsumer"]

log = logging.getLogger("eventbus.redis")


class RedisConsumer(GroupMember):
    """A group member over one or more topics. Open with :meth:`open`."""

    @classmethod
    async def open(
        cls,
        transport: Publisher,
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

    # fetch -----------------------------------------------------------------------------------
    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        """Due nacks first, then claimed entries (older), then new entries of owned streams.
        Waits in slices of ``poll_interval``, heartbeating each time; returns within about
        ``timeout`` (plus one server round trip)."""
        if self._closed:
            raise ClosedError("this Redis consumer is closed; open a new one")
        max_records = max(1, max_records)
        deadline = time.monotonic() + max(0.0, timeout)
        await self.flush_acks()  # acked entries must not come back from this member's sweeps
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
        :mod:`eventbus.adapters.redis_streams._batching`. Returns within about ``timeout``
        s (plus a round trip)."""
        if self._closed:
            raise ClosedError("this Redis consumer is closed; open a new one")
        max_items = max(1, max_items)
        deadline = time.monotonic() + max(0.0, timeout)
        await self.flush_acks()
        async with self._lock:
            while not self._closed:
                # as fetch: due nacks, then sweeps, then new entries (here: those that fit)
                await self._heartbeat()
                out = await self._due_nacks(max_items)
                if len(out) < max_items:
                    out += await self._sweeps(max_items - len(out))
                if out:
                    return self._hold(out), False
                claimed, last, saturated = await self._claim_budgeted(
                    budget, weight_header, max_items, allow_oversize
                )
                if claimed or saturated:
                    return self._hold(claimed), saturated
                wait = self._block_for(deadline)
                if wait <= 0 or time.monotonic() >= deadline:
                    return [], False
                await batching.wait_for_new(self._t, self._group, last, wait)
        return [], False

    async def _claim_budgeted(
        self, budget: float, header: str, max_items: int, allow_oversize: bool
    ) -> tuple[list[Record], dict[str, str], bool]:
        """Claim new entries that fit ``budget``, topic by topic, from the readable streams.
        Returns them, each stream's last-delivered id and whether one was left over."""
        by_topic: dict[str, list[Owned]] = {}
        for owned in await self._readable():  # not streams held back by a previous owner's
            by_topic.setdefault(owned.topic, []).append(owned)
        out: list[Record] = []
        last: dict[str, str] = {}
        left = budget
        saturated = False
        for topic, streams in by_topic.items():
            if len(out) >= max_items:
                break
            try:
                claim = await batching.claim_budget(
                    self._t,
                    self._group,
                    self._name,
                    topic,
                    self._rotate(streams),
                    self._t.decoder(topic),
                    left=left,
                    header=header,
                    room=max_items - len(out),
                    solo=allow_oversize and not out,
                )
            except GroupNotFoundError:
                await self._regroup(topic)
                continue
            saturated = saturated or claim.saturated
            last.update(claim.last)
            out += claim.records
            self._seen.update(claim.seen)
            left = claim.left
        return out, last, saturated

    async def _read_new(self, budget: int, block: float) -> list[Record]:
        by_topic: dict[str, list[Owned]] = {}
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
        self, topic: str, streams: list[Owned], budget: int, block_ms: int | None
    ) -> list[Record]:
        streams = self._rotate(streams)[:budget]
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

    # leases ----------------------------------------------------------------------------------
    def _hold(self, records: list[Record]) -> list[Record]:
        if not records:
            return records
        now = time.monotonic()
        lease = Lease(now, now)  # one per fetch: its records are renewed together
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
                if self._unsent and self._sending is None:  # acks whose sending failed
                    await self.flush_acks()
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
        """Mark records done; acking twice is harmless. The XACKs go out in the background,
        those of acks made close together in one round trip: as soon as the event loop is
        free, and at the latest before the next ``fetch`` reads and when the member closes.
        ``ack`` does not wait for them (as Kafka's commit after acks); a crash before they
        are sent delivers the records again (at least once)."""
        unsent = self._unsent
        nacked, leases = self._nacked, self._leases
        last: tuple[str, int] | None = None
        ids: list[str] = []
        for record in records:
            offset = record.offset
            # ids this consumer read are complete "<ms>-<seq>" strings: validate others only
            entry_id = offset if offset.__class__ is str else layout.id_of(offset, record.topic)
            part = (record.topic, record.partition)
            if part != last:
                last = part
                key = layout.stream_key(*part)
                ids = unsent.get(key) or unsent.setdefault(key, [])
            ids.append(entry_id)
            if nacked:
                nacked.pop((record.topic, record.partition, entry_id), None)
            leases.pop((record.topic, record.partition, entry_id), None)
        if unsent and self._sending is None and not self._killed:
            self._sending = asyncio.get_running_loop().create_task(self._send_acks())

    async def _send_acks(self) -> None:
        """Send the queued XACKs; on a failure they stay queued (the keepalive, the next
        ``fetch`` and ``close`` send them again; the latter two raise if they cannot)."""
        try:
            while self._unsent:
                await self._xack_queued()
        except Exception as exc:
            log.warning("acks of %r not sent yet (retried): %r", self._name, exc)
        finally:
            self._sending = None

    async def _xack_queued(self) -> None:
        batch, self._unsent = self._unsent, {}
        try:
            await self._t.pipeline(
                lambda p: [p.xack(k, self._group, *ids) for k, ids in batch.items()],
                f"ack in group {self._group!r}",
            )
        except BaseException:
            for key, ids in batch.items():
                self._unsent.setdefault(key, []).extend(ids)
            raise

    async def flush_acks(self) -> None:
        """Wait until every ack made so far is on the server. Raises what an unreachable
        server raises (the acks stay queued and are sent again)."""
        sending = self._sending
        if sending is not None:
            await asyncio.shield(sending)
        if self._unsent:
            await self._xack_queued()

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
        await self.flush_acks()  # what was acked is done: commit it before leaving
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
        self._closed = self._killed = True
        await self._stop_keepalive()
        sending, self._sending = self._sending, None
        if sending is not None:  # as a crash: acks not yet sent are lost (redelivered)
            sending.cancel()
        self._unsent.clear()
        self._leases.clear()
        self._owned.clear()
