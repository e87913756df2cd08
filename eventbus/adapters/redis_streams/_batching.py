"""The Redis fast path for budgeted batches: claim new entries only while their weights fit.

:func:`fetch_budget` is the body of the optional consumer method
``RedisConsumer.fetch_budget(budget, weight_header, max_items, timeout, allow_oversize)`` used
by :mod:`eventbus.batching` (capability flag ``budget_fetch``). It does what
``RedisConsumer.fetch`` does (heartbeat, due nacks, sweeps of dead or late members' entries,
in that order and under the consumer's lock), except for new entries: instead of
``XREADGROUP ... >`` with a count, one Lua script per topic (:data:`CLAIM_BUDGET`) runs,
atomically on the server:

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

This module reaches into :class:`~eventbus.adapters.redis_streams._consumer.RedisConsumer`'s
internals (its lock, heartbeat, nack and sweep steps) on purpose: it is the same member's code,
kept apart only so that the fast path is one reviewable unit.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from eventbus.adapters.redis_streams import _layout as layout
from eventbus.errors import ClosedError, GroupNotFoundError
from eventbus.transport import Record

if TYPE_CHECKING:
    from eventbus.adapters.redis_streams._consumer import RedisConsumer

__all__ = ["CLAIM_BUDGET", "fetch_budget"]

# KEYS: owned partition streams of one topic (one hash slot). ARGV[1] group, ARGV[2] member,
# ARGV[3] budget, ARGV[4] weight field ("h:<header>"), ARGV[5] max entries, ARGV[6] "1" to allow
# one oversize entry when nothing else was claimed. Returns {claims, last_ids, saturated}:
# claims is a list of {stream index, entries as XREADGROUP returns them}; last_ids the group's
# last-delivered id per stream (after the claims), for a blocking XREAD; saturated 1 when an
# entry was left because it did not fit the budget.
CLAIM_BUDGET = """
local group, me = ARGV[1], ARGV[2]
local left = tonumber(ARGV[3])
local field = ARGV[4]
local room = tonumber(ARGV[5])
local solo = ARGV[6] == '1'
local claims = {}
local last = {}
local claimed = 0
local saturated = 0
for i = 1, #KEYS do
  local key = KEYS[i]
  local lastid = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local name, ld = nil, nil
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] end
      if g[j] == 'last-delivered-id' then ld = g[j + 1] end
    end
    if name == group then lastid = ld end
  end
  if not lastid then
    return redis.error_reply('NOGROUP no group ' .. group .. ' on ' .. key)
  end
  local take = 0
  if room > 0 then
    local entries = redis.call('XRANGE', key, '(' .. lastid, '+', 'COUNT', room)
    for _, e in ipairs(entries) do
      local fields = e[2]
      local w = 0
      for j = 1, #fields, 2 do
        if fields[j] == field then w = tonumber(fields[j + 1]) or 0 end
      end
      if w ~= w or w < 0 or w == math.huge then w = 0 end
      if w <= left then
        left = left - w
        take = take + 1
      elseif solo and claimed == 0 and take == 0 then
        take = 1
        left = 0
        break
      else
        saturated = 1
        break
      end
    end
  end
  if take > 0 then
    local got = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', take, 'STREAMS', key, '>')
    local entries = got[1][2]
    claims[#claims + 1] = {i, entries}
    claimed = claimed + #entries
    room = room - #entries
    lastid = entries[#entries][1]
  end
  last[#last + 1] = lastid
end
return {claims, last, saturated}
"""


async def fetch_budget(
    consumer: RedisConsumer,
    budget: float,
    weight_header: str,
    max_items: int,
    timeout: float,
    allow_oversize: bool = True,
) -> tuple[list[Record], bool]:
    """See the module docstring. Returns within about ``timeout`` s (plus a round trip)."""
    c = consumer
    if c._closed:
        raise ClosedError("this Redis consumer is closed; open a new one")
    max_items = max(1, max_items)
    deadline = time.monotonic() + max(0.0, timeout)
    async with c._lock:
        while not c._closed:
            await c._heartbeat()
            out = await c._due_nacks(max_items)
            if len(out) < max_items:
                out += await c._sweeps(max_items - len(out))
            if out:
                return out, False
            claimed, last, saturated = await _claim_new(
                c, budget, weight_header, max_items, allow_oversize
            )
            if claimed or saturated:
                return claimed, saturated
            wait = c._block_for(deadline)
            if wait <= 0 or time.monotonic() >= deadline:
                return [], False
            await _wait_for_new(c, last, wait)
    return [], False


async def _claim_new(
    c: RedisConsumer, budget: float, header: str, max_items: int, allow_oversize: bool
) -> tuple[list[Record], dict[str, str], bool]:
    by_topic: dict[str, list[Any]] = {}
    for owned in await c._readable():  # not streams held back by a previous owner's entries
        by_topic.setdefault(owned.topic, []).append(owned)
    out: list[Record] = []
    last: dict[str, str] = {}
    left = budget
    saturated = False
    for topic, streams in by_topic.items():
        if len(out) >= max_items:
            break
        c._rotation += 1
        shift = c._rotation % len(streams)
        streams = streams[shift:] + streams[:shift]
        script = _script(c)
        try:
            with c._t.edge(f"claim a budgeted batch in group {c._group!r}"):
                claims, lasts, full = await script(
                    keys=[o.key for o in streams],
                    args=[
                        c._group,
                        c._name,
                        repr(float(left)),
                        f"h:{header}",
                        max_items - len(out),
                        "1" if allow_oversize and not out else "0",
                    ],
                )
        except GroupNotFoundError:
            await c._regroup(topic)
            continue
        saturated = saturated or bool(int(full))
        for owned, last_id in zip(streams, lasts, strict=True):
            last[owned.key] = layout.text(last_id)
        decode = c._t.decoder(topic)
        for index, entries in claims:
            owned = streams[int(index) - 1]
            for entry_id, flat in entries:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                record = decode(topic, owned.partition, entry_id, fields, 1)
                out.append(record)
                left -= _weight(record, header)
            if entries:
                c._seen[(topic, owned.partition)] = layout.text(entries[-1][0])
        left = max(0.0, left)
    return out, last, saturated


def _weight(record: Record, header: str) -> float:
    try:
        value = float(record.headers.get(header, b"0"))
    except ValueError:
        return 0.0
    return value if value == value and value >= 0 else 0.0


_SCRIPTS: dict[int, tuple[Any, Any]] = {}
"""Registered scripts by client (the client is kept to check identity, not reused ids)."""


def _script(c: RedisConsumer) -> Any:
    """CLAIM_BUDGET registered on this consumer's client (EVALSHA, EVAL on NOSCRIPT)."""
    client = c._t.client
    found = _SCRIPTS.get(id(client))
    if found is None or found[0] is not client:
        found = _SCRIPTS[id(client)] = (client, client.register_script(CLAIM_BUDGET))
    return found[1]


async def _wait_for_new(c: RedisConsumer, last: dict[str, str], wait: float) -> None:
    """Block until an owned stream has entries after the group's last-delivered id."""
    block_ms = int(wait * 1000)
    if block_ms < 1:
        return
    if not last:
        await asyncio.sleep(wait)  # nothing owned yet: wait for the next heartbeat
        return
    # one topic's streams share a slot; with several topics, wait on the first topic's only
    keys = list(last)
    if c._t.settings.cluster:
        keys = [k for k in keys if c._t.same_slot(keys[0], k)]
    with c._t.edge(f"wait for entries in group {c._group!r}"):
        await c._t.client.xread({k: last[k] for k in keys}, count=1, block=block_ms)
