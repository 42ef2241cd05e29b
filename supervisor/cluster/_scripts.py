"""The Lua scripts the cluster runs in Redis/Valkey: each is one atomic step of the protocol.

Every key shares the hash tag of the prefix (``{tss}`` by default), so every script runs on a
single Redis and on Redis Cluster alike (all keys in one slot). ``ARGV[1]`` is always that
prefix. The keys (``P`` is the prefix):

``P:epoch``          who created the registry and until when admits wait for a reconcile
                     (``<node>:<until ms>``); gone after Redis lost its data
``P:nodes``          HASH node -> its JSON description (address, host, pid, started)
``P:lease:<node>``   the node's lease (PX): while it exists, the node is alive
``P:dead:<node>``    tombstone of a reaped node (PX), so it learns it was reaped
``P:held``           HASH node -> cluster slots the node holds (its sessions + its spare lease)
``P:ph:<principal>`` HASH node -> slots the node holds for that principal
``P:pn:<node>``      SET of principals the node holds slots for (to reap them)
``P:reg:<node>``     HASH session id -> JSON (principal, transport, created): the registry
``P:events``         STREAM of lifecycle events (MAXLEN ~)
``P:want``/``P:freed``  pub/sub hints: a node was refused / slots were given back

Time is always the server's (``TIME``), never a node's clock. The cap holds because the only
way to raise ``P:held`` or ``P:ph:*`` is `ADMIT`, which checks the sums first; a node spends
only what it holds.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ADMIT", "GIVE", "JOIN", "REAP", "RECONCILE", "RECORD", "RENEW", "SESSIONS", "VIEW"]

_PRELUDE: Final = """
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function sum(key)
  local s = 0
  for _, v in ipairs(redis.call('HVALS', key)) do s = s + tonumber(v) end
  return s
end
local function mine(key, node)
  return tonumber(redis.call('HGET', key, node) or '0')
end
local function event(maxlen, fields)
  redis.call('XADD', P .. ':events', 'MAXLEN', '~', maxlen, '*', unpack(fields))
end
"""

#: ARGV: P, node, info, lease_ms, epoch_seen ('' on a first start), reconcile_ms, maxlen.
#: Returns {epoch, reset (0/1)}; reset: the registry was lost since this node last saw it.
JOIN: Final = (
    _PRELUDE
    + """
local node = ARGV[2]
local seen = ARGV[5]
local epoch = redis.call('GET', P .. ':epoch')
local reset = 0
if not epoch then
  local until_ms = 0
  if seen ~= '' then
    until_ms = now_ms() + tonumber(ARGV[6])
    reset = 1
  end
  epoch = node .. ':' .. until_ms
  redis.call('SET', P .. ':epoch', epoch)
elseif seen ~= '' and epoch ~= seen then
  reset = 1
end
redis.call('HSET', P .. ':nodes', node, ARGV[3])
redis.call('SET', P .. ':lease:' .. node, '1', 'PX', ARGV[4])
event(ARGV[7], {'node', node, 'kind', 'node-joined', 'at', tostring(now_ms() / 1000)})
return {epoch, reset}
"""
)

#: ARGV: P, node, lease_ms, epoch, info ('' or the node's new description). Returns ok,
#: reaped (a tombstone: others reaped this node), reset (the registry was lost) or lapsed
#: (the lease ran out before this renewal).
RENEW: Final = (
    _PRELUDE
    + """
local node = ARGV[2]
if redis.call('EXISTS', P .. ':dead:' .. node) == 1 then return 'reaped' end
if redis.call('GET', P .. ':epoch') ~= ARGV[4] then return 'reset' end
local lease = P .. ':lease:' .. node
if redis.call('EXISTS', lease) == 0 or redis.call('HEXISTS', P .. ':nodes', node) == 0 then
  return 'lapsed'
end
redis.call('PEXPIRE', lease, ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', P .. ':nodes', node, ARGV[5]) end
return 'ok'
"""
)

#: ARGV: P, node, epoch, max, limit (-1: none), n, then n requests of 5 values: principal
#: ('' for none), need_total, need_principal, spare_total, spare_principal.
#: A request is granted whole or not at all: its needs, plus up to its spares where the room
#: left allows (at most room / (2 * nodes), so one node never takes what others need).
#: Returns {'ok', then per request: status, held for its principal, principal room;
#: then held total, room left, nodes} or {'reset'} / {'lapsed'}.
ADMIT: Final = (
    _PRELUDE
    + """
local node = ARGV[2]
local epoch = redis.call('GET', P .. ':epoch')
if epoch ~= ARGV[3] then return {'reset'} end
if redis.call('EXISTS', P .. ':lease:' .. node) == 0 then return {'lapsed'} end
local until_ms = tonumber(string.match(epoch, ':(%d+)$'))
local reconciling = until_ms > 0 and now_ms() < until_ms
local nodes = math.max(1, redis.call('HLEN', P .. ':nodes'))
local held_all = sum(P .. ':held')
local max = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local out = {'ok'}
local refused = false
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  local p = ARGV[i]
  local need_t, need_p = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local spare_t, spare_p = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  i = i + 5
  local pkey = P .. ':ph:' .. p
  local held_p = 0
  if p ~= '' then held_p = sum(pkey) end
  local status = 'ok'
  if reconciling and (need_t > 0 or need_p > 0) then
    status = 'reconciling'
  elseif held_all + need_t > max then
    status = 'full'
  elseif p ~= '' and limit >= 0 and held_p + need_p > limit then
    status = 'principal_full'
  else
    local room = max - held_all - need_t
    local grant_t = need_t + math.max(0, math.min(spare_t, math.floor(room / (2 * nodes))))
    if grant_t > 0 then
      redis.call('HINCRBY', P .. ':held', node, grant_t)
      held_all = held_all + grant_t
    end
    if p ~= '' and limit >= 0 then
      local room_p = limit - held_p - need_p
      local grant_p = need_p + math.max(0, math.min(spare_p, math.floor(room_p / (2 * nodes))))
      if grant_p > 0 then
        redis.call('HINCRBY', pkey, node, grant_p)
        redis.call('SADD', P .. ':pn:' .. node, p)
        held_p = held_p + grant_p
      end
    end
  end
  if status == 'full' or status == 'principal_full' then refused = true end
  local room_p = -1
  if p ~= '' and limit >= 0 then room_p = limit - held_p end
  local mine_p = 0
  if p ~= '' then mine_p = mine(pkey, node) end
  table.insert(out, status)
  table.insert(out, mine_p)
  table.insert(out, room_p)
end
if refused then redis.call('PUBLISH', P .. ':want', node) end
table.insert(out, mine(P .. ':held', node))
table.insert(out, max - held_all)
table.insert(out, nodes)
return out
"""
)

#: ARGV: P, node, total, then pairs principal, n: give back that many slots (never below 0).
#: Returns {held total, then held for each principal given}.
GIVE: Final = (
    _PRELUDE
    + """
local node = ARGV[2]
local function take(key, n)
  if n <= 0 then return mine(key, node) end
  local left = mine(key, node) - n
  if left > 0 then
    redis.call('HSET', key, node, left)
    return left
  end
  redis.call('HDEL', key, node)
  return 0
end
local out = {take(P .. ':held', tonumber(ARGV[3]))}
for i = 4, #ARGV, 2 do
  local p = ARGV[i]
  local left = take(P .. ':ph:' .. p, tonumber(ARGV[i + 1]))
  if left == 0 then redis.call('SREM', P .. ':pn:' .. node, p) end
  table.insert(out, left)
end
redis.call('PUBLISH', P .. ':freed', node)
return out
"""
)

#: ARGV: P, node, maxlen, then ops of 6 values: tag, session id, kind, a, b, at.
#:   c: created (a: registry JSON)   a: authenticated (a: registry JSON)
#:   e: ended (kind closed/expired/failed, a: reason)   x: another event (a: old, b: new)
#:   r: registered silently (a: registry JSON; after a reconcile)
#: An ended session's event is written only by whoever removes it from the registry (this
#: script or `REAP`), so each session gets exactly one terminal event in the stream. A node
#: reaped before its creations reached the store (it paused, or was cut off, right after
#: creating them) still writes them when it runs again: each such session gets its created
#: event and one terminal event, its own if its end is in the same call, else ``failed``
#: (``passivated`` for a durable one, which outlives its node) with reason ``node-lost`` (its
#: end, written later, finds it in no registry and is dropped).
#: Returns how many entries were written.
RECORD: Final = (
    _PRELUDE
    + """
local node = ARGV[2]
local maxlen = ARGV[3]
local reg = P .. ':reg:' .. node
local alive = redis.call('HEXISTS', P .. ':nodes', node) == 1
local reaped = not alive and redis.call('EXISTS', P .. ':dead:' .. node) == 1
local orphans = {}
local written = 0
for i = 4, #ARGV, 6 do
  local tag, sid, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local a, b, at = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local fields = nil
  if tag == 'c' then
    if alive then
      redis.call('HSET', reg, sid, a)
      fields = {'node', node, 'kind', kind, 'session', sid, 'at', at}
    elseif reaped then
      orphans[sid] = {at, string.find(a, '"durable": true', 1, true) and 'passivated' or 'failed'}
      fields = {'node', node, 'kind', kind, 'session', sid, 'at', at}
    end
  elseif tag == 'r' then
    if alive then redis.call('HSET', reg, sid, a) end
  elseif tag == 'a' then
    if orphans[sid] then
      fields = {'node', node, 'kind', kind, 'session', sid, 'at', at}
    elseif redis.call('HEXISTS', reg, sid) == 1 then
      redis.call('HSET', reg, sid, a)
      fields = {'node', node, 'kind', kind, 'session', sid, 'at', at}
    end
  elseif tag == 'e' then
    if orphans[sid] or redis.call('HDEL', reg, sid) == 1 then
      orphans[sid] = nil
      fields = {'node', node, 'kind', kind, 'session', sid, 'reason', a, 'at', at}
    end
  elseif orphans[sid] or redis.call('HEXISTS', reg, sid) == 1 then
    fields = {'node', node, 'kind', kind, 'session', sid, 'old', a, 'new', b, 'at', at}
  end
  if fields then
    event(maxlen, fields)
    written = written + 1
  end
end
for sid, orphan in pairs(orphans) do
  event(maxlen, {'node', node, 'kind', orphan[2], 'session', sid, 'reason', 'node-lost',
    'at', orphan[1]})
  written = written + 1
end
return written
"""
)

#: ARGV: P, node, maxlen, tomb_ms, reason, force ('1': the node leaves by itself).
#: Without force, does nothing while the node's lease exists. Writes one terminal event
#: (``failed``, the reason; ``passivated`` for a durable session, which is activated again
#: elsewhere) per session still registered, frees everything the node held,
#: and leaves a tombstone (also when the node leaves by itself: its id is never reused).
#: Returns the sessions reaped, or -1 (alive) / -2 (nothing to reap).
REAP: Final = (
    _PRELUDE
    + """
local node = ARGV[2]
local maxlen = ARGV[3]
local force = ARGV[6] == '1'
if not force and redis.call('EXISTS', P .. ':lease:' .. node) == 1 then return -1 end
local reg = P .. ':reg:' .. node
if redis.call('HEXISTS', P .. ':nodes', node) == 0 and redis.call('EXISTS', reg) == 0
    and redis.call('HEXISTS', P .. ':held', node) == 0 then
  return -2
end
local at = tostring(now_ms() / 1000)
local n = 0
local sessions = redis.call('HGETALL', reg)
for i = 1, #sessions, 2 do
  -- A durable session outlives its node (it is activated again elsewhere): passivated.
  local kind = 'failed'
  if string.find(sessions[i + 1], '"durable": true', 1, true) then kind = 'passivated' end
  event(maxlen, {'node', node, 'kind', kind, 'session', sessions[i], 'reason', ARGV[5], 'at', at})
  n = n + 1
end
redis.call('DEL', reg)
redis.call('HDEL', P .. ':held', node)
for _, p in ipairs(redis.call('SMEMBERS', P .. ':pn:' .. node)) do
  redis.call('HDEL', P .. ':ph:' .. p, node)
end
redis.call('DEL', P .. ':pn:' .. node)
redis.call('HDEL', P .. ':nodes', node)
redis.call('DEL', P .. ':lease:' .. node)
local kind = 'node-lost'
if force then kind = 'node-left' end
redis.call('SET', P .. ':dead:' .. node, '1', 'PX', ARGV[4])
event(maxlen, {'node', node, 'kind', kind, 'reason', ARGV[5], 'at', at})
redis.call('PUBLISH', P .. ':freed', node)
return n
"""
)

#: ARGV: P, node, epoch, max, limit, total, then pairs principal, n: after Redis lost its data,
#: the node claims the slots its live sessions use (even inside the reconcile window), as far
#: as the caps allow. Returns {granted total, granted per principal...} or {'reset'}.
RECONCILE: Final = (
    _PRELUDE
    + """
local node = ARGV[2]
if redis.call('GET', P .. ':epoch') ~= ARGV[3] then return {'reset'} end
local max, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local others = sum(P .. ':held') - mine(P .. ':held', node)
local grant = math.max(0, math.min(tonumber(ARGV[6]), max - others))
redis.call('HSET', P .. ':held', node, grant)
local out = {grant}
for i = 7, #ARGV, 2 do
  local p = ARGV[i]
  local key = P .. ':ph:' .. p
  local want = tonumber(ARGV[i + 1])
  local g = want
  if limit >= 0 then
    g = math.max(0, math.min(want, limit - (sum(key) - mine(key, node))))
  end
  redis.call('HSET', key, node, g)
  redis.call('SADD', P .. ':pn:' .. node, p)
  table.insert(out, g)
end
return out
"""
)

#: ARGV: P, events (how many of the newest). Read-only. Returns {epoch, nodes, events}:
#: nodes a flat list of {node, info, lease pttl, held, sessions}, events a list of
#: {id, {field, value...}}.
VIEW: Final = (
    _PRELUDE
    + """
local nodes = {}
local hash = redis.call('HGETALL', P .. ':nodes')
for i = 1, #hash, 2 do
  local node = hash[i]
  table.insert(nodes, {node, hash[i + 1], redis.call('PTTL', P .. ':lease:' .. node),
    mine(P .. ':held', node), redis.call('HLEN', P .. ':reg:' .. node)})
end
local events = {}
local count = tonumber(ARGV[2])
if count > 0 then
  events = redis.call('XREVRANGE', P .. ':events', '+', '-', 'COUNT', count)
end
return {redis.call('GET', P .. ':epoch') or '', nodes, events}
"""
)

#: ARGV: P, limit. Read-only. Returns a flat list of {node, session id, JSON} (at most limit).
SESSIONS: Final = (
    _PRELUDE
    + """
local out = {}
local left = tonumber(ARGV[2])
for _, node in ipairs(redis.call('HKEYS', P .. ':nodes')) do
  if left <= 0 then break end
  local reg = redis.call('HGETALL', P .. ':reg:' .. node)
  for i = 1, #reg, 2 do
    if left <= 0 then break end
    table.insert(out, node)
    table.insert(out, reg[i])
    table.insert(out, reg[i + 1])
    left = left - 1
  end
end
return out
"""
)
