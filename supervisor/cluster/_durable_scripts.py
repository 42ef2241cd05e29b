"""The Lua scripts of the cluster's durable store (`RedisSessionStore`): one per method.

Every key shares the cluster's hash tag (``{tss}`` by default), so the scripts run on a single
Redis and on Redis Cluster alike. ``KEYS[1]`` is the session's record (or, for `PURGE`, the
expiry index), ``KEYS[2]`` the expiry index; ``ARGV[1]`` is the prefix. The keys (``P`` is the
prefix):

``P:durable:<id>``     HASH of one durable session: ``epoch``, ``owner`` (a node id; ``''``
                       while passivated), ``expires`` (wall-clock seconds after which the
                       record goes unless a live node owns it: a passivation's retention, or
                       the retention counted from an active session's last save; ``''``: no
                       such bound) and ``data`` (the rest of the `DurableRecord` as JSON, which
                       the scripts never parse). A session that ended for good (or expired)
                       leaves a *tombstone* instead: ``gone`` and its last ``epoch``, for a
                       few minutes (``PX``), so that a stale activation's first-epoch save
                       cannot bring it back.
``P:durable-expiry``   ZSET of session ids by ``expires``: `PURGE` reads only the expired
                       ones (no SCAN); one whose owner is alive is looked at again later.
``P:lease:<node>``     the cluster's node leases (read only): an owner whose lease is gone is
                       dead, and its session may be activated elsewhere.

The fencing rule: `SAVE` writes only when the record holds the writer's epoch and owner (or
there is no record at all and the epoch is 1); `ACTIVATE` is the only step that raises the
epoch, and it refuses while another owner's lease exists. So one activation holds each epoch,
and a stale one's writes are refused. Times compared here are the caller's wall clock (the
`SessionStore` interface passes them), never Redis's.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACTIVATE", "DELETE", "OWNER", "PURGE", "SAVE"]

_PRELUDE: Final = """
local P = ARGV[1]
local function tomb(key, epoch, tomb_ms)
  redis.call('DEL', key)
  redis.call('HSET', key, 'gone', '1', 'epoch', epoch or '0')
  redis.call('PEXPIRE', key, tomb_ms)
end
"""

#: KEYS: record, expiry. ARGV: P, id, epoch, owner, data, expires ('' or a number), passivate
#: ('1': leave the record without an owner). Returns {'ok'}, {'gone', epoch or ''} (no record, or a
#: tombstone, and the epoch is above 1 / any epoch) or {'stale', stored epoch, stored owner}.
SAVE: Final = (
    _PRELUDE
    + """
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'owner', 'gone')
local epoch, owner = ARGV[3], ARGV[4]
if cur[3] then return {'gone', cur[1] or ''} end
if not cur[1] then
  if epoch ~= '1' then return {'gone', ''} end
elseif cur[1] ~= epoch or cur[2] ~= owner then
  return {'stale', cur[1], cur[2] or ''}
end
if ARGV[7] == '1' then owner = '' end
redis.call('HSET', KEYS[1], 'epoch', epoch, 'owner', owner, 'data', ARGV[5], 'expires', ARGV[6])
if ARGV[6] == '' then
  redis.call('ZREM', KEYS[2], ARGV[2])
else
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[2])
end
return {'ok'}
"""
)

#: KEYS: record, expiry. ARGV: P, id, caller, now, tomb_ms. Returns {'ok', new epoch, data,
#: expires}, {'missing'} (no record, a tombstone, or expired while no live node owns it: then
#: it becomes a tombstone) or {'elsewhere', owner} (another node owns it and its lease exists).
#: The expiry stays as it was: the activation's first save moves it.
ACTIVATE: Final = (
    _PRELUDE
    + """
local h = redis.call('HMGET', KEYS[1], 'epoch', 'owner', 'expires', 'data', 'gone')
if not h[1] or h[5] then return {'missing'} end
local owner = h[2] or ''
local alive = owner ~= '' and (owner == ARGV[3]
  or redis.call('EXISTS', P .. ':lease:' .. owner) == 1)
if alive and owner ~= ARGV[3] then return {'elsewhere', owner} end
if not alive and h[3] and h[3] ~= '' and tonumber(h[3]) < tonumber(ARGV[4]) then
  tomb(KEYS[1], h[1], ARGV[5])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return {'missing'}
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[3])
return {'ok', epoch, h[4], h[3] or ''}
"""
)

#: KEYS: record, expiry. ARGV: P, id, epoch, caller, tomb_ms. Leaves a tombstone if the record
#: is at that epoch and owned by the caller or by none (passivated). Returns 1 if it did, else 0.
DELETE: Final = (
    _PRELUDE
    + """
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'owner', 'gone')
if cur[3] or cur[1] ~= ARGV[3] or (cur[2] ~= ARGV[4] and cur[2] ~= '') then return 0 end
tomb(KEYS[1], cur[1], ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""
)

#: KEYS: expiry. ARGV: P, now, limit, tomb_ms, recheck (seconds). Turns up to ``limit``
#: records whose expiry is before ``now`` and that no live node owns (passivated, or left by a
#: dead node) into tombstones; one a live node owns is looked at again ``recheck`` seconds
#: later. Returns {purged, ids looked at} (the caller calls again while ids looked at == limit).
PURGE: Final = (
    _PRELUDE
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
local n = 0
for _, id in ipairs(ids) do
  local key = P .. ':durable:' .. id
  local h = redis.call('HMGET', key, 'epoch', 'owner', 'gone')
  local owner = h[2] or ''
  if h[1] and not h[3] and owner ~= '' and redis.call('EXISTS', P .. ':lease:' .. owner) == 1 then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[5]), id)
  else
    if h[1] and not h[3] then
      tomb(key, h[1], ARGV[4])
      n = n + 1
    end
    redis.call('ZREM', KEYS[1], id)
  end
end
return {n, #ids}
"""
)

#: KEYS: record. ARGV: P, id, now. Read only. Returns {'missing'} (no record, a tombstone, or
#: expired while no live node owns it), {'free'} (passivated), {'live', owner} (its lease
#: exists) or {'dead', owner}.
OWNER: Final = """
local P = ARGV[1]
local h = redis.call('HMGET', KEYS[1], 'epoch', 'owner', 'expires', 'gone')
if not h[1] or h[4] then return {'missing'} end
local owner = h[2] or ''
if owner ~= '' and redis.call('EXISTS', P .. ':lease:' .. owner) == 1 then
  return {'live', owner}
end
if h[3] and h[3] ~= '' and tonumber(h[3]) < tonumber(ARGV[3]) then return {'missing'} end
if owner == '' then return {'free'} end
return {'dead', owner}
"""
