"""The Redis fast path for budgeted batches: claim new entries only while their weights fit.

:meth:`RedisConsumer.fetch_budget(budget, weight_header, max_items, timeout, allow_oversize)
<eventbus.adapters.redis_streams._consumer.RedisConsumer.fetch_budget>`, used by
:mod:`eventbus.batching` (capability flag ``budget_fetch``), does what
``RedisConsumer.fetch`` does (heartbeat, due nacks, sweeps of dead or late members' entries,
in that order and under the consumer's lock), except for new entries: instead of
``XREADGROUP ... >`` with a count, one Lua script per topic (``CLAIM_BUDGET`` in
``_scripts.py``, run by :func:`claim_budget`) runs, atomically on the server:

- for each stream this member owns (rotated between calls, so no partition starves), read the
  group's last-delivered id (``XINFO GROUPS``), peek at the entries after it (``XRANGE``), and
  add up their weights (the ``h:<weight_header>`` field; missing or not a number counts as 0)
  while they fit the budget left; stop at the first entry that does not fit (a stream is never
  read past an entry it leaves, so per-key order holds);
- claim exactly the fitting entries with ``XREADGROUP GROUP g me COUNT n STREAMS key >``, so
  they sit in this member's PEL like any read, and nothing that does not fit is claimed;
- when ``allow_oversize`` and nothing was claimed yet, the first entry of a stream is claimed
  alone even if heavier than the budget (it could never fit; it must not get stuck);
- report whether an entry was left because it did not fit (``saturated``), so the caller
  returns its batch at once instead of waiting for more.

Exclusivity comes from ownership, as for ``fetch``: only streams this member owns are read.
When nothing is due and nothing new fits, it waits for new entries with ``XREAD BLOCK`` on the
owned streams from their last-delivered ids (in slices of ``poll_interval``, heartbeating each
time), so an idle worker does not poll the script.

This module takes what it needs as arguments (the connection, the group, the member's name,
the streams it owns, a decoder) and keeps no state; the consumer owns the loop and its state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from eventbus.adapters.redis_streams import _layout as layout
from eventbus.adapters.redis_streams._connection import RedisConnection
from eventbus.transport import Record

__all__ = ["Claim", "OwnedStream", "claim_budget", "wait_for_new"]


class OwnedStream(Protocol):
    """A partition stream this member owns (``_membership.Owned``)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def key(self) -> str: ...


@dataclass(slots=True)
class Claim:
    """What one topic's script call claimed."""

    left: float
    """The budget left after the claimed entries' weights (never below 0)."""
    saturated: bool = False
    """An entry was left because it did not fit."""
    records: list[Record] = field(default_factory=list)
    last: dict[str, str] = field(default_factory=dict)
    """The group's last-delivered id per stream key (after the claims), for :func:`wait_for_new`."""
    seen: dict[tuple[str, int], str] = field(default_factory=dict)
    """The last id claimed per (topic, partition)."""


async def claim_budget(
    conn: RedisConnection,
    group: str,
    name: str,
    topic: str,
    streams: Sequence[OwnedStream],
    decode: Callable[..., Record],
    *,
    left: float,
    header: str,
    room: int,
    solo: bool,
) -> Claim:
    """Run ``CLAIM_BUDGET`` on ``streams`` (one topic's, in the order to read them): claim new
    entries while their ``header`` weights fit ``left``, at most ``room``; ``solo`` allows one
    oversize entry. Raises GroupNotFoundError when the group is gone from a stream."""
    with conn.edge(f"claim a budgeted batch in group {group!r}"):
        claims, lasts, full = await conn.script("CLAIM_BUDGET")(
            keys=[o.key for o in streams],
            args=[group, name, repr(float(left)), f"h:{header}", room, "1" if solo else "0"],
        )
    out = Claim(left=left, saturated=bool(int(full)))
    for owned, last_id in zip(streams, lasts, strict=True):
        out.last[owned.key] = layout.text(last_id)
    for index, entries in claims:
        owned = streams[int(index) - 1]
        for entry_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            record = decode(topic, owned.partition, entry_id, fields, 1)
            out.records.append(record)
            out.left -= _weight(record, header)
        if entries:
            out.seen[(topic, owned.partition)] = layout.text(entries[-1][0])
    out.left = max(0.0, out.left)
    return out


def _weight(record: Record, header: str) -> float:
    try:
        value = float(record.headers.get(header, b"0"))
    except ValueError:
        return 0.0
    return value if value == value and value >= 0 else 0.0


async def wait_for_new(
    conn: RedisConnection, group: str, last: dict[str, str], wait: float
) -> None:
    """Block until an owned stream has entries after the group's last-delivered id."""
    block_ms = int(wait * 1000)
    if block_ms < 1:
        return
    if not last:
        await asyncio.sleep(wait)  # nothing owned yet: wait for the next heartbeat
        return
    # one topic's streams share a slot; with several topics, wait on the first topic's only
    keys = list(last)
    if conn.settings.cluster:
        keys = [k for k in keys if conn.same_slot(keys[0], k)]
    with conn.edge(f"wait for entries in group {group!r}"):
        await conn.client.xread({k: last[k] for k in keys}, count=1, block=block_ms)
