"""MemoryConsumer: one group member of the in-memory broker, with leases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from eventbus.adapters.memory._broker import (
    TP,
    Broker,
    GroupState,
    Member,
    Pending,
    as_int,
    to_record,
)
from eventbus.errors import (
    ClosedError,
)
from eventbus.transport import (
    ConsumerOptions,
    Outgoing,
    Position,
    Record,
)

log = logging.getLogger("eventbus.memory")


_Lease = tuple[float, int]
"""(since, count): when the application got the record (monotonic s; ``max_lease`` counts from
here), and the delivery it belongs to (a later delivery of the same record is another lease)."""


class MemoryConsumer:
    """A member of a group on the memory broker."""

    def __init__(
        self,
        broker: Broker,
        append: Callable[[str, Sequence[Outgoing]], list[Position]],
        group: str,
        name: str,
        topics: tuple[str, ...],
        options: ConsumerOptions,
    ) -> None:
        self._broker = broker
        self._append = append
        """The transport's append, called with the broker's lock held (for dead letters)."""
        self._group = group
        self._name = name
        self._topics = topics
        self._options = options
        self._closed = False
        self._leases: dict[tuple[str, int, int], _Lease] = {}
        self._assigned_version: tuple[int, int] = (0, -1)
        self._lost = 0
        """Leases the keepalive dropped (taken by another member, or past max_lease)."""
        self._assigned_set: set[TP] = set()
        self._keepalive: asyncio.Task[None] | None = None

    def _state(self) -> GroupState:
        state = self._broker.groups.get(self._group)
        if state is None:  # deleted under us: start again
            state = self._broker.groups[self._group] = GroupState()
        return state

    def _collect(self, max_records: int, now: float) -> tuple[list[Record], float | None]:
        """Under the lock: take what is due for this member; also say when more falls due."""
        broker = self._broker
        state = self._state()
        member = state.members.get(self._name)
        if member is None or not member.alive:
            # we were dropped (silent past the session timeout): rejoin as a new member
            member = state.members[self._name] = Member(
                self._topics, now, self._options.session_timeout, self._options.visibility_timeout
            )
        member.last_seen = now
        broker.rebalance(self._group, state, now)
        out: list[Record] = []
        next_due: float | None = None
        for tp in state.assignment.get(self._name, []):
            topic = broker.topics.get(tp[0])
            if topic is None or len(out) >= max_records:
                continue
            part = topic.partitions[tp[1]]
            pending = state.pending.setdefault(tp, {})
            if any(
                self._due(e, state, now) is not None
                for e in pending.values()
                if e.member != self._name
            ):
                # the partition just moved here and its last owner still works on records of
                # it: wait until it acks them (or times out), so per-key order holds
                continue
            for offset in sorted(pending):
                if len(out) >= max_records:
                    break
                entry = pending[offset]
                due = self._due(entry, state, now)
                if due is not None:
                    next_due = due if next_due is None else min(next_due, due)
                    continue
                stored = part.get(offset)
                if stored is None:  # removed by retention while pending
                    del pending[offset]
                    continue
                entry.member, entry.delivered_at, entry.not_before = self._name, now, None
                entry.count += 1
                out.append(to_record(tp[0], tp[1], stored, entry.count))
            position = max(state.positions.get(tp, 0), part.first_offset)
            while len(out) < max_records and position < part.next_offset:
                stored = part.get(position)
                position += 1
                if stored is None:
                    continue
                pending[stored.offset] = Pending(self._name, now, 1)
                out.append(to_record(tp[0], tp[1], stored, 1))
            state.positions[tp] = position
        return out, next_due

    def _due(self, entry: Pending, state: GroupState, now: float) -> float | None:
        """None if the pending entry may be delivered now, else when it may."""
        if entry.not_before is not None:
            return None if now >= entry.not_before else entry.not_before
        holder = state.members.get(entry.member)
        if holder is None or not holder.alive:
            return None  # its member left or died
        expires = entry.delivered_at + holder.visibility_timeout
        return None if now >= expires else expires

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                raise ClosedError("this consumer is closed; open a new one")
            now = time.monotonic()
            with self._broker.lock:
                records, next_due = self._collect(max_records, now)
            if records:
                if self._keepalive is None:
                    self._keepalive = asyncio.create_task(self._keep_alive())
                leases = self._leases
                for record in records:
                    leases[(record.topic, record.partition, as_int(record.offset))] = (
                        now,
                        record.attempt,
                    )
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait = remaining if next_due is None else min(remaining, next_due - now)
            # also wake up in time to notice members whose session ran out
            await self._broker.wait(min(wait, max(self._options.session_timeout / 4, 0.05)))

    async def ack(self, records: Sequence[Record]) -> None:
        with self._broker.lock:
            state = self._state()
            for record in records:
                self._leases.pop((record.topic, record.partition, as_int(record.offset)), None)
                pending = state.pending.get((record.topic, record.partition))
                if pending is not None:
                    pending.pop(as_int(record.offset), None)
            self._broker.notify()

    async def nack(self, record: Record, delay: float = 0.0) -> None:
        self._leases.pop((record.topic, record.partition, as_int(record.offset)), None)
        with self._broker.lock:
            pending = self._state().pending.get((record.topic, record.partition), {})
            entry = pending.get(as_int(record.offset))
            if entry is not None:
                entry.not_before = time.monotonic() + max(delay, 0.0)
            self._broker.notify()

    async def dead_letter(self, record: Record, topic: str, headers: Mapping[str, bytes]) -> None:
        copy = Outgoing(
            value=record.value,
            key=record.key,
            headers={**record.headers, **headers},
            timestamp_ms=record.timestamp_ms,
        )
        self._leases.pop((record.topic, record.partition, as_int(record.offset)), None)
        with self._broker.lock:  # one lock: the copy and the ack happen together or not at all
            self._append(topic, [copy])
            pending = self._state().pending.get((record.topic, record.partition))
            if pending is not None:
                pending.pop(as_int(record.offset), None)
            self._broker.notify()

    # leases ----------------------------------------------------------------------------------
    def _entry(self, key: tuple[str, int, int], lease: _Lease) -> Pending | None:
        """The broker's pending entry for a lease, if this member still holds that delivery."""
        state = self._broker.groups.get(self._group)
        pending = state.pending.get(key[:2]) if state is not None else None
        entry = pending.get(key[2]) if pending is not None else None
        if entry is None or entry.member != self._name or entry.count != lease[1]:
            return None
        return entry if entry.not_before is None else None

    @property
    def lease_epoch(self) -> object:
        """Changes with the group's assignment and when the keepalive drops a lease."""
        state = self._broker.groups.get(self._group)
        return (id(state), state.generation if state is not None else -1, self._lost)

    def holds(self, record: Record) -> bool:
        """True while this member holds the record's lease and owns its partition."""
        key = (record.topic, record.partition, as_int(record.offset))
        lease = self._leases.get(key)
        if lease is None or time.monotonic() - lease[0] >= self._options.max_lease:
            return False
        # the broker hands a member's records to another only through its pending entry, and
        # moves partitions only through the assignment: both are checked
        return self._entry(key, lease) is not None and key[:2] in self._assigned()

    def _assigned(self) -> set[TP]:
        """This member's partitions (recomputed only when the group's assignment changed)."""
        state = self._broker.groups.get(self._group)
        if state is None:
            return set()
        version = (id(state), state.generation)
        if version != self._assigned_version:
            self._assigned_version = version
            self._assigned_set = set(state.assignment.get(self._name, ()))
        return self._assigned_set

    async def release(self, records: Sequence[Record]) -> None:
        """Make held records due at once, for whoever owns their partition, same attempt."""
        with self._broker.lock:
            for record in records:
                key = (record.topic, record.partition, as_int(record.offset))
                lease = self._leases.pop(key, None)
                entry = self._entry(key, lease) if lease is not None else None
                if entry is not None:
                    entry.not_before = time.monotonic()
                    entry.count -= 1
            self._broker.notify()

    async def _keep_alive(self) -> None:
        """Heartbeat and renew held entries whether or not the application fetches."""
        opts = self._options
        tick = max(0.02, min(opts.session_timeout / 3, opts.visibility_timeout / 3, 1.0))
        while not self._closed:
            await asyncio.sleep(tick)  # the keepalive's period, not a wait for a condition
            now = time.monotonic()
            with self._broker.lock:
                member = self._state().members.get(self._name)
                if member is not None and member.alive:
                    member.last_seen = now
                for key, lease in list(self._leases.items()):
                    entry = self._entry(key, lease)
                    if entry is None:
                        del self._leases[key]  # settled elsewhere or redelivered: not ours
                        self._lost += 1
                    elif now - lease[0] >= opts.max_lease:
                        del self._leases[key]
                        self._lost += 1
                        log.warning(
                            "%s/%s/%s held by %r for more than max_lease (%.0f s): no longer "
                            "renewed, it will be delivered again",
                            *key,
                            self._name,
                            opts.max_lease,
                        )
                    else:
                        entry.delivered_at = now

    async def _stop_keepalive(self) -> None:
        task, self._keepalive = self._keepalive, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop_keepalive()
        self._leases.clear()
        with self._broker.lock:
            state = self._state()
            state.members.pop(self._name, None)
            self._broker.rebalance(self._group, state, time.monotonic())
            self._broker.notify()

    async def kill(self) -> None:
        self._closed = True
        await self._stop_keepalive()
        self._leases.clear()
