"""Lua scripts. Each touches keys of one topic only (one hash slot), except DEAD_LETTER,
which is used as one script only when both topics share a slot (always, outside Cluster)."""

from __future__ import annotations

__all__ = [
    "CLAIM_BUDGET",
    "CREATE_TOPIC",
    "DEAD_LETTER",
    "HEARTBEAT",
    "LEASE",
    "LEAVE",
    "NOW",
    "PUBLISH",
]

# KEYS[1] meta, KEYS[2..] partition streams to make exist. ARGV[1] mode: "create" fails when
# the topic exists (as eventbus topic or as any key named like partition 0); "alter" requires
# nothing. ARGV[2..] meta field/value pairs.
CREATE_TOPIC = """
if ARGV[1] == 'create' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 'EXISTS' end
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'KEY' end
end
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('XGROUP', 'CREATE', KEYS[i], 'eb-init', '$', 'MKSTREAM')
    redis.call('XGROUP', 'DESTROY', KEYS[i], 'eb-init')
  end
end
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
return 'OK'
"""

# KEYS: the partition streams written. ARGV[1] MINID threshold or '' (no trim); then per record:
# key index (1-based), number of field/value pairs, the pairs. Checks every stream exists before
# writing anything (a deleted topic must not be recreated by a stale publisher).
PUBLISH = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    return redis.error_reply('EBNOSTREAM ' .. KEYS[i])
  end
end
local call = redis.call
local out = {}
local count = 0
local i = 2
local n = #ARGV
local minid = ARGV[1]
local trim = minid ~= ''
while i <= n do
  local key = KEYS[tonumber(ARGV[i])]
  local last = i + 1 + 2 * tonumber(ARGV[i + 1])
  count = count + 1
  if trim then
    out[count] = call('XADD', key, 'MINID', '~', minid, '*', unpack(ARGV, i + 2, last))
  else
    out[count] = call('XADD', key, '*', unpack(ARGV, i + 2, last))
  end
  i = last + 1
end
return out
"""

# Heartbeat and assignment of one member on one topic, atomically.
# KEYS[1] members hash, KEYS[2] owners hash, KEYS[3] meta hash.
# ARGV[1] member, ARGV[2] session timeout ms, ARGV[3] partitions when there is no meta (1).
# Members live while their deadline (server ms) is ahead. Partition p is wanted by the member at
# index p mod n of the sorted live members. A member releases what it no longer wants and takes
# what it wants once free, so no partition has two owners: a new owner waits until the old
# one's next heartbeat (or its death).
# Returns {now_ms, partitions, {owned partitions}, {live members}}.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local parts = tonumber(redis.call('HGET', KEYS[3], 'partitions') or ARGV[3])
redis.call('HSET', KEYS[1], me, now + tonumber(ARGV[2]))
local all = redis.call('HGETALL', KEYS[1])
local live = {}
local alive = {}
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) > now then
    live[#live + 1] = all[i]
    alive[all[i]] = true
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
table.sort(live)
local mine = {}
for p = 0, parts - 1 do
  local want = live[(p % #live) + 1]
  local owner = redis.call('HGET', KEYS[2], p)
  if owner and not alive[owner] then
    redis.call('HDEL', KEYS[2], p)
    owner = false
  end
  if owner == me and want ~= me then
    redis.call('HDEL', KEYS[2], p)
    owner = false
  end
  if not owner and want == me then
    redis.call('HSET', KEYS[2], p, me)
    owner = me
  end
  if owner == me then mine[#mine + 1] = p end
end
-- membership of an abandoned group (or a deleted topic) expires instead of lingering
local keep = tonumber(ARGV[2]) * 10 + 60000
redis.call('PEXPIRE', KEYS[1], keep)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], keep) end
return {now, parts, mine, live}
"""

# Leave a group on one topic: KEYS[1] members, KEYS[2] owners; ARGV[1] member.
LEAVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
local owners = redis.call('HGETALL', KEYS[2])
for i = 1, #owners, 2 do
  if owners[i + 1] == ARGV[1] then redis.call('HDEL', KEYS[2], owners[i]) end
end
return 1
"""

# Copy to the dead-letter stream and ack the original, atomically.
# KEYS[1] dead-letter stream, KEYS[2] source stream; ARGV[1] group, ARGV[2] entry id,
# ARGV[3] MINID threshold or '', ARGV[4..] field/value pairs.
DEAD_LETTER = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('EBNOSTREAM ' .. KEYS[1])
end
local id
if ARGV[3] ~= '' then
  id = redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[3], '*', unpack(ARGV, 4))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
return id
"""

# The server clock in ms, on the node holding KEYS[1] (TIME cannot be pipelined in Cluster).
NOW = """
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Renew or give back leases. KEYS[1] a partition stream. ARGV[1] group, ARGV[2] this member,
# ARGV[3] mode: "renew" resets the idle time of each id (XCLAIM to itself, JUSTID: the delivery
# count stays); "release" sets it to ARGV[4] ms (so the partition's owner claims it at once) and
# its delivery count to ARGV[5 + 2k] - 1 (the claim adds one back). Only ids still pending at
# this member are touched: one claimed by another member meanwhile is never taken back.
# Returns the ids that are no longer this member's.
LEASE = """
local group, me, mode = ARGV[1], ARGV[2], ARGV[3]
local lost = {}
local first, step = 4, 1
if mode == 'release' then first, step = 5, 2 end
for i = first, #ARGV, step do
  local id = ARGV[i]
  local row = redis.call('XPENDING', KEYS[1], group, id, id, 1)[1]
  if row and row[2] == me then
    if mode == 'release' then
      redis.call('XCLAIM', KEYS[1], group, me, 0, id, 'IDLE', ARGV[4],
        'RETRYCOUNT', math.max(0, tonumber(ARGV[i + 1]) - 1), 'JUSTID')
    else
      redis.call('XCLAIM', KEYS[1], group, me, 0, id, 'JUSTID')
    end
  else
    lost[#lost + 1] = id
  end
end
return lost
"""

# Compare-and-set append (the migration's control record).
# KEYS[1] stream; ARGV[1] the id its last entry must have ('' for empty); ARGV[2..] fields.
# Returns the new id, or false (nil) when the last entry is another one.
APPEND_IF_LAST = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('EBNOSTREAM ' .. KEYS[1])
end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last = ''
if #top > 0 then last = top[1][1] end
if last ~= ARGV[1] then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""

# The Redis fast path of budgeted batches (see _batching.py).
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
